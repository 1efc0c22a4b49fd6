/*
 * encode.c - streaming CRLF normaliser and dot-stuffer (see encode.h).
 */
#include "mailspool/encode.h"

#include <string.h>

void ms_enc_init(ms_enc *e, int dot_stuff)
{
	memset(e, 0, sizeof *e);
	e->stuff = dot_stuff;
	e->at_bol = 1;
}

/* Emit CRLF: the end of a line. */
static size_t eol(ms_enc *e, char *out)
{
	if (e->line_len > e->max_line)
		e->max_line = e->line_len;
	e->line_len = 0;
	e->at_bol = 1;
	e->lines++;
	e->size += 2;
	if (out) {
		out[0] = '\r';
		out[1] = '\n';
	}
	return 2;
}

/* Bytes before the first CR or LF in p[0..n). */
static size_t plain_run(const char *p, size_t n)
{
	const char *lf = memchr(p, '\n', n);
	size_t end = lf ? (size_t)(lf - p) : n;
	const char *cr = memchr(p, '\r', end);
	return cr ? (size_t)(cr - p) : end;
}

/* Does p[0..n) hold a byte with the high bit set?  Eight bytes at a time. */
static int any_8bit(const unsigned char *p, size_t n)
{
	uint64_t acc = 0;
	size_t i = 0;
	for (; i + 8 <= n; i += 8) {
		uint64_t w;
		memcpy(&w, p + i, 8);
		acc |= w;
	}
	for (; i < n; i++)
		acc |= p[i];
	return (acc & 0x8080808080808080ull) != 0;
}

size_t ms_enc_feed(ms_enc *e, const char *in, size_t n, char *out)
{
	size_t o = 0;
	size_t i = 0;
	e->raw += n;
	while (i < n) {
		/* Fast path: inside a line, copy everything up to the next CR or
		 * LF at once.  Line ends and line starts take the slow path. */
		if (!e->pending_cr && !e->at_bol) {
			size_t run = plain_run(in + i, n - i);
			if (run > 0) {
				if (!e->has_8bit && any_8bit((const unsigned char *)in + i, run))
					e->has_8bit = 1;
				if (!e->has_nul && memchr(in + i, '\0', run))
					e->has_nul = 1;
				if (out)
					memcpy(out + o, in + i, run);
				o += run;
				i += run;
				e->line_len += run;
				e->size += run;
				if (i == n)
					break;
			}
		}
		unsigned char c = (unsigned char)in[i++];
		if (e->pending_cr) {
			/* A CR ends a line whatever follows; CRLF is one ending. */
			e->pending_cr = 0;
			o += eol(e, out ? out + o : NULL);
			if (c == '\n') {
				e->crlf++;
				continue;
			}
			e->bare_cr++;
		}
		if (c == '\r') {
			e->pending_cr = 1;
			continue;
		}
		if (c == '\n') {
			e->bare_lf++;
			o += eol(e, out ? out + o : NULL);
			continue;
		}
		if (e->at_bol) {
			e->at_bol = 0;
			if (c == '.' && e->stuff) {
				if (out)
					out[o] = '.';
				o++;
			}
		}
		if (c >= 0x80)
			e->has_8bit = 1;
		else if (c == 0)
			e->has_nul = 1;
		if (out)
			out[o] = (char)c;
		o++;
		e->line_len++;
		e->size++;
	}
	return o;
}

size_t ms_enc_finish(ms_enc *e, char *out, int terminator)
{
	size_t o = 0;
	if (e->pending_cr) {
		e->pending_cr = 0;
		e->bare_cr++;
		o += eol(e, out ? out + o : NULL);
	}
	if (!e->at_bol)
		o += eol(e, out ? out + o : NULL); /* R15: add the missing CRLF */
	if (terminator) {
		if (out)
			memcpy(out + o, ".\r\n", 3);
		o += 3;
	}
	return o;
}
