/*
 * buf.c - capped growable byte buffer (see mailspool/buf.h).
 *
 * Sizes are checked before every addition so that no arithmetic wraps.
 */
#include "mailspool/buf.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MS_BUF_DEFAULT_LIMIT (SIZE_MAX / 2)

void ms_buf_init(ms_buf *b, size_t limit)
{
	memset(b, 0, sizeof *b);
	b->limit = limit ? limit : MS_BUF_DEFAULT_LIMIT;
}

void ms_buf_free(ms_buf *b)
{
	free(b->data);
	b->data = NULL;
	b->off = b->len = b->cap = 0;
}

ms_status ms_buf_reserve(ms_buf *b, size_t n)
{
	size_t used = b->len - b->off;
	if (n > b->limit || used > b->limit - n)
		return MS_ERR_NOMEM;
	if (b->cap - b->len >= n)
		return MS_OK;
	/* Compact first: a stream buffer usually has room at the front. */
	if (b->off > 0) {
		memmove(b->data, b->data + b->off, used);
		b->len = used;
		b->off = 0;
		b->data[b->len] = '\0';
		if (b->cap - b->len >= n)
			return MS_OK;
	}
	size_t want = used + n;
	size_t ncap = b->cap ? b->cap : 256;
	while (ncap < want)
		ncap = ncap > b->limit / 2 ? b->limit : ncap * 2;
	if (ncap > b->limit)
		ncap = b->limit;
	char *p = realloc(b->data, ncap + 1);
	if (!p)
		return MS_ERR_NOMEM;
	b->data = p;
	b->cap = ncap;
	b->data[b->len] = '\0';
	return MS_OK;
}

void ms_buf_commit(ms_buf *b, size_t n)
{
	b->len += n;
	b->data[b->len] = '\0';
}

ms_status ms_buf_append(ms_buf *b, const void *p, size_t n)
{
	if (n == 0)
		return MS_OK;
	if (ms_buf_reserve(b, n) != MS_OK)
		return MS_ERR_NOMEM;
	memcpy(b->data + b->len, p, n);
	ms_buf_commit(b, n);
	return MS_OK;
}

ms_status ms_buf_appendstr(ms_buf *b, const char *s)
{
	return ms_buf_append(b, s, strlen(s));
}

ms_status ms_buf_printf(ms_buf *b, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	if (n < 0 || ms_buf_reserve(b, (size_t)n + 1) != MS_OK)
		return MS_ERR_NOMEM;
	va_start(ap, fmt);
	vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
	va_end(ap);
	ms_buf_commit(b, (size_t)n);
	return MS_OK;
}

void ms_buf_consume(ms_buf *b, size_t n)
{
	size_t used = b->len - b->off;
	if (n >= used) {
		b->off = b->len = 0;
		if (b->data)
			b->data[0] = '\0';
	} else {
		b->off += n;
	}
}

void ms_buf_reset(ms_buf *b)
{
	b->off = b->len = 0;
	if (b->data)
		b->data[0] = '\0';
}

char *ms_buf_steal(ms_buf *b)
{
	if (!b->data) {
		char *s = malloc(1);
		if (s)
			*s = '\0';
		return s;
	}
	if (b->off > 0) {
		memmove(b->data, b->data + b->off, b->len - b->off);
		b->len -= b->off;
		b->off = 0;
		b->data[b->len] = '\0';
	}
	char *s = b->data;
	b->data = NULL;
	b->off = b->len = b->cap = 0;
	return s;
}
