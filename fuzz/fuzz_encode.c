/* fuzz_encode - the DATA encoder on arbitrary bytes in arbitrary splits.
 * Invariants (R13-R15): every CR is followed by LF and every LF preceded by
 * CR; the output ends with the terminator and contains no other
 * "\r\n.\r\n"; the split does not change the output. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mailspool/encode.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char *encode(const uint8_t *data, size_t size, size_t split, size_t *outlen)
{
	char *out = malloc(MS_ENC_MAX_OUT(size) + 8);
	ms_enc e;
	size_t o = 0;
	ms_enc_init(&e, 1);
	for (size_t off = 0; off < size;) {
		size_t n = split && split < size - off ? split : size - off;
		o += ms_enc_feed(&e, (const char *)data + off, n, out + o);
		off += n;
	}
	o += ms_enc_finish(&e, out + o, 1);
	*outlen = o;
	return out;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	size_t a, b;
	char *x = encode(data, size, 0, &a);
	char *y = encode(data, size, 1 + size % 5, &b);
	if (a != b || memcmp(x, y, a) != 0)
		abort();
	if (a < 3 || memcmp(x + a - 3, ".\r\n", 3) != 0)
		abort();
	for (size_t i = 0; i < a; i++) {
		if (x[i] == '\r' && (i + 1 >= a || x[i + 1] != '\n'))
			abort();
		if (x[i] == '\n' && (i == 0 || x[i - 1] != '\r'))
			abort();
	}
	for (size_t i = 0; i + 5 < a; i++)
		if (!memcmp(x + i, "\r\n.\r\n", 5))
			abort();
	if (a > 3 && !memcmp(x, ".\r\n", 3))
		abort();
	free(x);
	free(y);
	return 0;
}
