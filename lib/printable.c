/*
 * printable.c - one escaping for text from outside (see mailspool/printable.h).
 */
#include "mailspool/printable.h"

#include <string.h>

char *ms_printable(const char *in, size_t len, char *out, size_t n)
{
	static const char hex[] = "0123456789abcdef";
	size_t k = 0;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)in[i];
		char esc[4];
		size_t el;
		if (c == '\\') {
			esc[0] = esc[1] = '\\';
			el = 2;
		} else if (c < 0x20 || c > 0x7e) {
			esc[0] = '\\', esc[1] = 'x', esc[2] = hex[c >> 4], esc[3] = hex[c & 15];
			el = 4;
		} else {
			esc[0] = (char)c;
			el = 1;
		}
		if (k + el + 1 > n)
			break; /* cut, but never inside an escape */
		memcpy(out + k, esc, el);
		k += el;
	}
	out[k] = '\0';
	return out;
}

char *ms_printable_str(const char *in, char *out, size_t n)
{
	return ms_printable(in, strlen(in), out, n);
}
