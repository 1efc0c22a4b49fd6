/*
 * reply.c - incremental SMTP reply reader (see mailspool/reply.h).
 */
#include "mailspool/reply.h"

#include <stdlib.h>
#include <string.h>

void ms_reply_reader_init(ms_reply_reader *rr)
{
	memset(rr, 0, sizeof *rr);
	ms_buf_init(&rr->text, MS_REPLY_LINE_MAX * MS_REPLY_LINES_MAX);
	ms_buf_init(&rr->raw, (MS_REPLY_LINE_MAX + 1) * MS_REPLY_LINES_MAX);
}

void ms_reply_reader_free(ms_reply_reader *rr)
{
	ms_buf_free(&rr->text);
	ms_buf_free(&rr->raw);
}

void ms_reply_free(ms_reply *r)
{
	free(r->text);
	free(r->raw);
	r->text = r->raw = NULL;
}

int ms_reply_reader_busy(const ms_reply_reader *rr, const ms_buf *in)
{
	return rr->nlines > 0 || ms_buf_avail(in) > 0;
}

/* Digits d with 1-3 characters and no leading zero; returns count or 0. */
static size_t enh_part(const char *p)
{
	size_t n = 0;
	while (n < 4 && p[n] >= '0' && p[n] <= '9')
		n++;
	if (n == 0 || n > 3 || (n > 1 && p[0] == '0'))
		return 0;
	return n;
}

size_t ms_enh_parse(const char *text, char out[MS_ENH_MAX])
{
	const char *p = text;
	if (!(p[0] == '2' || p[0] == '4' || p[0] == '5') || p[1] != '.')
		return 0;
	p += 2;
	size_t a = enh_part(p);
	if (!a || p[a] != '.')
		return 0;
	p += a + 1;
	size_t b = enh_part(p);
	if (!b || (p[b] != ' ' && p[b] != '\0'))
		return 0;
	p += b;
	size_t len = (size_t)(p - text);
	memcpy(out, text, len);
	out[len] = '\0';
	return len;
}

static int valid_code(const char *p)
{
	/* R2: unknown codes are read by their first digit, so "299" is a
	 * success; only the first digit is restricted. */
	return p[0] >= '2' && p[0] <= '5' && p[1] >= '0' && p[1] <= '9' && p[2] >= '0' &&
	       p[2] <= '9';
}

static void reset(ms_reply_reader *rr)
{
	ms_buf_reset(&rr->text);
	ms_buf_reset(&rr->raw);
	rr->first_code = 0;
	rr->nlines = 0;
	rr->flags = 0;
}

ms_status ms_reply_read(ms_reply_reader *rr, ms_buf *in, ms_reply *out, int *done,
                        ms_error *err)
{
	*done = 0;
	for (;;) {
		const char *p = ms_buf_ptr(in);
		size_t avail = ms_buf_avail(in);
		const char *nl = memchr(p, '\n', avail);
		if (!nl) {
			if (avail > MS_REPLY_LINE_MAX)
				return ms_error_set(err, MS_ERR_PROTOCOL,
				                    "reply line longer than %d bytes", MS_REPLY_LINE_MAX);
			return MS_OK;
		}
		size_t linelen = (size_t)(nl - p);
		size_t consumed = linelen + 1;
		int bare_lf = !(linelen > 0 && p[linelen - 1] == '\r');
		if (!bare_lf)
			linelen--;
		if (linelen > MS_REPLY_LINE_MAX)
			return ms_error_set(err, MS_ERR_PROTOCOL, "reply line longer than %d bytes",
			                    MS_REPLY_LINE_MAX);
		if (linelen < 3 || !valid_code(p) ||
		    (linelen > 3 && p[3] != ' ' && p[3] != '-'))
			return ms_error_set(err, MS_ERR_PROTOCOL, "malformed reply line \"%.*s\"",
			                    (int)(linelen > 80 ? 80 : linelen), p);
		if (memchr(p, '\0', linelen))
			return ms_error_set(err, MS_ERR_PROTOCOL, "NUL byte in reply line");
		int code = (p[0] - '0') * 100 + (p[1] - '0') * 10 + (p[2] - '0');
		int last = linelen == 3 || p[3] == ' ';
		if (rr->nlines >= MS_REPLY_LINES_MAX)
			return ms_error_set(err, MS_ERR_PROTOCOL, "reply longer than %d lines",
			                    MS_REPLY_LINES_MAX);
		if (rr->nlines == 0)
			rr->first_code = code;
		else if (code != rr->first_code)
			rr->flags |= MS_REPLY_MIXED;
		if (bare_lf)
			rr->flags |= MS_REPLY_BARE_LF;
		if ((rr->nlines > 0 && (ms_buf_append(&rr->text, "\n", 1) != MS_OK ||
		                        ms_buf_append(&rr->raw, "\n", 1) != MS_OK)) ||
		    ms_buf_append(&rr->raw, p, linelen) != MS_OK ||
		    (linelen > 4 && ms_buf_append(&rr->text, p + 4, linelen - 4) != MS_OK))
			return ms_error_set(err, MS_ERR_NOMEM, "reply too large");
		rr->nlines++;
		ms_buf_consume(in, consumed);
		if (!last)
			continue;

		memset(out, 0, sizeof *out);
		out->code = code; /* R3: act on the final line */
		out->nlines = rr->nlines;
		out->flags = rr->flags;
		/* R36: enhanced codes only on 2xx/4xx/5xx, class must agree. */
		if (ms_reply_class(code) != 3) {
			char enh[MS_ENH_MAX];
			/* The code of the final line counts; look at its text. */
			const char *lt = strrchr(ms_buf_ptr(&rr->text), '\n');
			lt = lt ? lt + 1 : ms_buf_ptr(&rr->text);
			if (ms_enh_parse(lt, enh)) {
				if (enh[0] - '0' == ms_reply_class(code))
					memcpy(out->enh, enh, sizeof enh);
				else
					out->flags |= MS_REPLY_ENH_MISMATCH;
			}
		}
		out->text = ms_buf_steal(&rr->text);
		out->raw = ms_buf_steal(&rr->raw);
		reset(rr);
		if (!out->text || !out->raw) {
			ms_reply_free(out);
			return ms_error_set(err, MS_ERR_NOMEM, "out of memory");
		}
		*done = 1;
		return MS_OK;
	}
}
