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

size_t ms_enc_feed(ms_enc *e, const char *in, size_t n, char *out)
{
	size_t o = 0;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)in[i];
		if (e->pending_cr) {
			/* A CR ends a line whatever follows; CRLF is one ending. */
			e->pending_cr = 0;
			o += eol(e, out ? out + o : NULL);
			if (c == '\n')
				continue;
		}
		if (c == '\r') {
			e->pending_cr = 1;
			continue;
		}
		if (c == '\n') {
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
		o += eol(e, out ? out + o : NULL);
	}
	if (!e->at_bol)
		o += eol(e, out ? out + o : NULL); /* R15: add the missing CRLF */
	if (e->line_len > e->max_line)
		e->max_line = e->line_len;
	if (terminator) {
		if (out)
			memcpy(out + o, ".\r\n", 3);
		o += 3;
	}
	return o;
}
