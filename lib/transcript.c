/*
 * transcript.c - in-memory protocol transcript (see transcript.h).
 */
#include "mailspool/transcript.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct ms_transcript {
	ms_tx_event *ev;
	size_t n, cap;
	size_t bytes;
	size_t dropped;
	uint64_t writes;
	int full_bodies;
	int64_t start_us;
};

static int64_t now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

ms_transcript *ms_transcript_new(int full_bodies)
{
	ms_transcript *tx = calloc(1, sizeof *tx);
	if (tx) {
		tx->full_bodies = full_bodies;
		tx->start_us = now_us();
	}
	return tx;
}

void ms_transcript_free(ms_transcript *tx)
{
	if (!tx)
		return;
	for (size_t i = 0; i < tx->n; i++)
		free(tx->ev[i].text);
	free(tx->ev);
	free(tx);
}

int ms_transcript_full_bodies(const ms_transcript *tx)
{
	return tx && tx->full_bodies;
}

static ms_tx_event *push(ms_transcript *tx, ms_tx_kind kind, size_t textlen)
{
	if (tx->bytes + textlen + sizeof(ms_tx_event) > MS_TX_MAX_BYTES) {
		tx->dropped++;
		return NULL;
	}
	if (tx->n == tx->cap) {
		size_t ncap = tx->cap ? tx->cap * 2 : 64;
		ms_tx_event *p = realloc(tx->ev, ncap * sizeof *p);
		if (!p) {
			tx->dropped++;
			return NULL;
		}
		tx->ev = p;
		tx->cap = ncap;
	}
	ms_tx_event *e = &tx->ev[tx->n];
	memset(e, 0, sizeof *e);
	e->kind = kind;
	e->t_us = now_us() - tx->start_us;
	e->text = malloc(textlen + 1);
	if (!e->text) {
		tx->dropped++;
		return NULL;
	}
	e->len = textlen;
	e->text[textlen] = '\0';
	tx->bytes += textlen + sizeof *e;
	tx->n++;
	return e;
}

void ms_transcript_add(ms_transcript *tx, ms_tx_kind kind, const char *p, size_t n)
{
	if (!tx)
		return;
	/* Store lines without their line end. */
	while (n > 0 && (p[n - 1] == '\n' || p[n - 1] == '\r'))
		n--;
	ms_tx_event *e = push(tx, kind, n);
	if (e)
		memcpy(e->text, p, n);
}

void ms_transcript_addf(ms_transcript *tx, ms_tx_kind kind, const char *fmt, ...)
{
	if (!tx)
		return;
	char line[1024];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(line, sizeof line, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	ms_transcript_add(tx, kind, line, (size_t)n < sizeof line ? (size_t)n : sizeof line - 1);
}

void ms_transcript_write(ms_transcript *tx, uint64_t nbytes)
{
	if (!tx)
		return;
	ms_tx_event *e = push(tx, MS_TX_WRITE, 0);
	if (e) {
		e->nbytes = nbytes;
		tx->writes++;
	}
}

size_t ms_transcript_count(const ms_transcript *tx)
{
	return tx ? tx->n : 0;
}

const ms_tx_event *ms_transcript_event(const ms_transcript *tx, size_t i)
{
	return tx && i < tx->n ? &tx->ev[i] : NULL;
}

static const char kind_char[] = { 'C', 'S', 'W', 'N', 'E' };

/* Append with unprintable bytes escaped (Postfix printable() in spirit). */
static ms_status escaped(ms_buf *out, const char *p, size_t n, const char *prefix)
{
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)p[i];
		ms_status st;
		if (c == '\n')
			st = ms_buf_printf(out, "\n%s", prefix);
		else if (c == '\\')
			st = ms_buf_append(out, "\\\\", 2);
		else if (c < 0x20 || c >= 0x7f)
			st = ms_buf_printf(out, "\\x%02x", c);
		else
			st = ms_buf_append(out, &p[i], 1);
		if (st != MS_OK)
			return st;
	}
	return MS_OK;
}

ms_status ms_transcript_render(const ms_transcript *tx, ms_buf *out)
{
	uint64_t w = 0;
	for (size_t i = 0; tx && i < tx->n; i++) {
		const ms_tx_event *e = &tx->ev[i];
		char prefix[48];
		snprintf(prefix, sizeof prefix, "%4lld.%06lld %c: ", (long long)(e->t_us / 1000000),
		         (long long)(e->t_us % 1000000), kind_char[e->kind]);
		ms_status st;
		if (e->kind == MS_TX_WRITE)
			st = ms_buf_printf(out, "%s--- write #%llu: %llu octets ---\n", prefix,
			                   (unsigned long long)++w, (unsigned long long)e->nbytes);
		else if ((st = ms_buf_appendstr(out, prefix)) == MS_OK &&
		         (st = escaped(out, e->text, e->len, prefix)) == MS_OK)
			st = ms_buf_append(out, "\n", 1);
		if (st != MS_OK)
			return st;
	}
	if (tx && tx->dropped)
		return ms_buf_printf(out, "[transcript cap reached: %zu events dropped]\n",
		                     tx->dropped);
	return MS_OK;
}

/* Length of the well-formed UTF-8 sequence at p (max n bytes), or 0. */
static size_t utf8_seq(const unsigned char *p, size_t n)
{
	size_t k;
	unsigned cp, min;
	if (p[0] >= 0xc2 && p[0] <= 0xdf) { k = 2; cp = p[0] & 0x1f; min = 0x80; }
	else if (p[0] >= 0xe0 && p[0] <= 0xef) { k = 3; cp = p[0] & 0x0f; min = 0x800; }
	else if (p[0] >= 0xf0 && p[0] <= 0xf4) { k = 4; cp = p[0] & 0x07; min = 0x10000; }
	else return 0;
	if (k > n)
		return 0;
	for (size_t i = 1; i < k; i++) {
		if ((p[i] & 0xc0) != 0x80)
			return 0;
		cp = (cp << 6) | (p[i] & 0x3f);
	}
	if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
		return 0;
	return k;
}

ms_status ms_json_string(ms_buf *out, const char *s, size_t n)
{
	if (ms_buf_append(out, "\"", 1) != MS_OK)
		return MS_ERR_NOMEM;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		ms_status st;
		size_t k;
		if (c == '"' || c == '\\')
			st = ms_buf_printf(out, "\\%c", c);
		else if (c == '\n')
			st = ms_buf_append(out, "\\n", 2);
		else if (c < 0x20 || c == 0x7f)
			st = ms_buf_printf(out, "\\u%04x", c);
		else if (c < 0x80)
			st = ms_buf_append(out, &s[i], 1);
		else if ((k = utf8_seq((const unsigned char *)s + i, n - i)) > 0) {
			st = ms_buf_append(out, &s[i], k); /* valid UTF-8 passes through */
			i += k - 1;
		} else
			/* A peer's invalid bytes: keep the JSON valid. */
			st = ms_buf_append(out, "\\ufffd", 6);
		if (st != MS_OK)
			return st;
	}
	return ms_buf_append(out, "\"", 1);
}

ms_status ms_transcript_render_json(const ms_transcript *tx, ms_buf *out)
{
	if (ms_buf_append(out, "[", 1) != MS_OK)
		return MS_ERR_NOMEM;
	for (size_t i = 0; tx && i < tx->n; i++) {
		const ms_tx_event *e = &tx->ev[i];
		if (ms_buf_printf(out, "%s{\"t\":%lld.%06lld,\"dir\":\"%c\"", i ? "," : "",
		                  (long long)(e->t_us / 1000000), (long long)(e->t_us % 1000000),
		                  kind_char[e->kind]) != MS_OK)
			return MS_ERR_NOMEM;
		ms_status st;
		if (e->kind == MS_TX_WRITE)
			st = ms_buf_printf(out, ",\"bytes\":%llu}", (unsigned long long)e->nbytes);
		else if ((st = ms_buf_appendstr(out, ",\"text\":")) == MS_OK &&
		         (st = ms_json_string(out, e->text, e->len)) == MS_OK)
			st = ms_buf_append(out, "}", 1);
		if (st != MS_OK)
			return st;
	}
	return ms_buf_append(out, "]", 1);
}
