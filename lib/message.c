/*
 * message.c - message envelope, data segments and outcomes (see message.h).
 */
#include "mailspool/message.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mailspool/dsnreq.h"

ms_message *ms_message_new(const char *sender, ms_error *err)
{
	char wire[MS_ADDR_MAX + 1];
	unsigned fl = 0;
	if (ms_addr_parse(sender, strlen(sender), MS_ADDR_SENDER, wire, &fl, err) != MS_OK)
		return NULL;
	ms_message *m = calloc(1, sizeof *m);
	if (!m || !(m->sender = strdup(wire))) {
		free(m);
		ms_error_set(err, MS_ERR_NOMEM, "out of memory");
		return NULL;
	}
	m->sender_flags = fl;
	return m;
}

void ms_outcome_free(ms_outcome *o)
{
	free(o->text);
	o->text = NULL;
}

ms_status ms_outcome_set(ms_outcome *o, ms_stage stage, int code, const char *enh,
                         const char *text)
{
	char *t = strdup(text ? text : "");
	if (!t)
		return MS_ERR_NOMEM;
	free(o->text);
	o->text = t;
	o->stage = stage;
	o->code = code;
	o->enh[0] = '\0';
	if (enh) {
		size_t n = strlen(enh);
		if (n < sizeof o->enh)
			memcpy(o->enh, enh, n + 1);
	}
	return MS_OK;
}

void ms_message_free(ms_message *m)
{
	if (!m)
		return;
	for (size_t i = 0; i < m->nrcpts; i++) {
		free(m->rcpts[i].addr);
		free(m->rcpts[i].orcpt);
		ms_outcome_free(&m->rcpts[i].out);
	}
	free(m->dsn_envid);
	for (size_t i = 0; i < m->nsegs; i++)
		free(m->segs[i].mem);
	ms_outcome_free(&m->out);
	free(m->rcpts);
	free(m->segs);
	free(m->sender);
	free(m);
}

ms_status ms_message_add_rcpt(ms_message *m, const char *addr, ms_error *err)
{
	char wire[MS_ADDR_MAX + 1];
	unsigned fl = 0;
	ms_status st = ms_addr_parse(addr, strlen(addr), MS_ADDR_RECIPIENT, wire, &fl, err);
	if (st != MS_OK)
		return st;
	if (m->nrcpts == m->rcap) {
		size_t ncap = m->rcap ? m->rcap * 2 : 4;
		ms_rcpt *p = realloc(m->rcpts, ncap * sizeof *p);
		if (!p)
			return ms_error_set(err, MS_ERR_NOMEM, "out of memory");
		m->rcpts = p;
		m->rcap = ncap;
	}
	ms_rcpt *r = &m->rcpts[m->nrcpts];
	memset(r, 0, sizeof *r);
	if (!(r->addr = strdup(wire)))
		return ms_error_set(err, MS_ERR_NOMEM, "out of memory");
	r->flags = fl;
	m->nrcpts++;
	return MS_OK;
}

static ms_status add_seg(ms_message *m, ms_segment s, ms_error *err)
{
	ms_segment *p = realloc(m->segs, (m->nsegs + 1) * sizeof *p);
	if (!p)
		return ms_error_set(err, MS_ERR_NOMEM, "out of memory");
	m->segs = p;
	m->segs[m->nsegs++] = s;
	m->scanned = 0;
	return MS_OK;
}

ms_status ms_message_add_mem(ms_message *m, const void *data, size_t n, ms_error *err)
{
	ms_segment s = { .fd = -1, .len = n, .mem = malloc(n ? n : 1) };
	if (!s.mem)
		return ms_error_set(err, MS_ERR_NOMEM, "out of memory");
	memcpy(s.mem, data, n);
	ms_status st = add_seg(m, s, err);
	if (st != MS_OK)
		free(s.mem);
	return st;
}

ms_status ms_message_add_fd(ms_message *m, int fd, off_t off, uint64_t len, ms_error *err)
{
	if (fd < 0 || off < 0)
		return ms_error_set(err, MS_ERR_USAGE, "invalid file segment");
	ms_segment s = { .fd = fd, .off = off, .len = len };
	return add_seg(m, s, err);
}

void ms_reader_init(ms_reader *r, const ms_message *m)
{
	r->m = m;
	r->seg = 0;
	r->pos = 0;
}

ssize_t ms_reader_read(ms_reader *r, char *buf, size_t n, ms_error *err)
{
	while (r->seg < r->m->nsegs) {
		const ms_segment *s = &r->m->segs[r->seg];
		uint64_t left = s->len - r->pos;
		if (left == 0) {
			r->seg++;
			r->pos = 0;
			continue;
		}
		size_t want = left < n ? (size_t)left : n;
		if (s->fd < 0) {
			memcpy(buf, s->mem + r->pos, want);
			r->pos += want;
			return (ssize_t)want;
		}
		ssize_t got;
		do
			got = pread(s->fd, buf, want, s->off + (off_t)r->pos);
		while (got < 0 && errno == EINTR);
		if (got < 0) {
			ms_error_set(err, MS_ERR_IO, "cannot read message data: %s", strerror(errno));
			return -1;
		}
		if (got == 0) {
			if (s->len != UINT64_MAX) {
				ms_error_set(err, MS_ERR_IO, "message file shrank while being sent");
				return -1;
			}
			r->seg++;
			r->pos = 0;
			continue;
		}
		r->pos += (uint64_t)got;
		return got;
	}
	return 0;
}

ms_status ms_message_scan(ms_message *m, ms_error *err)
{
	enum { CHUNK = 65536 };
	char *buf = malloc(CHUNK);
	if (!buf)
		return ms_error_set(err, MS_ERR_NOMEM, "out of memory");
	ms_reader rd;
	ms_reader_init(&rd, m);
	ms_enc_init(&m->stats, 0);
	ssize_t n;
	while ((n = ms_reader_read(&rd, buf, CHUNK, err)) > 0)
		ms_enc_feed(&m->stats, buf, (size_t)n, NULL);
	free(buf);
	if (n < 0)
		return MS_ERR_IO;
	ms_enc_finish(&m->stats, NULL, 0);
	m->scanned = 1;
	return MS_OK;
}

void ms_message_settle(ms_message *m, ms_rcpt_state state, ms_stage stage, int code,
                       const char *enh, const char *text)
{
	for (size_t i = 0; i < m->nrcpts; i++) {
		ms_rcpt *r = &m->rcpts[i];
		if (r->state == MS_RCPT_DELIVERED || r->state == MS_RCPT_FAILED)
			continue;
		r->state = state;
		ms_outcome_set(&r->out, stage, code, enh, text);
	}
	ms_outcome_set(&m->out, stage, code, enh, text);
	m->done = 1;
}

int ms_message_untried(const ms_message *m)
{
	if (m->engaged)
		return 0;
	int open = 0;
	for (size_t i = 0; i < m->nrcpts; i++) {
		const ms_rcpt *r = &m->rcpts[i];
		if (r->state == MS_RCPT_DELIVERED || r->state == MS_RCPT_FAILED)
			return 0; /* a server decided part of it: it was attempted */
		if (r->out.stage != MS_STAGE_SESSION)
			return 0;
		open = 1;
	}
	return open;
}

ms_status ms_message_set_dsn(ms_message *m, int ret, const char *envid, ms_error *err)
{
	if (ret < MS_DSN_RET_NONE || ret > MS_DSN_RET_HDRS)
		return ms_error_set(err, MS_ERR_USAGE, "bad DSN RET");
	if (envid && ms_dsn_envid_check(envid, err) != MS_OK)
		return MS_ERR_USAGE;
	char *d = envid ? strdup(envid) : NULL;
	if (envid && !d)
		return ms_error_set(err, MS_ERR_NOMEM, "out of memory");
	free(m->dsn_envid);
	m->dsn_envid = d;
	m->dsn_ret = ret;
	return MS_OK;
}

ms_status ms_message_rcpt_dsn(ms_message *m, size_t i, unsigned notify, const char *orcpt,
                              ms_error *err)
{
	if (i >= m->nrcpts || !ms_dsn_notify_ok(notify))
		return ms_error_set(err, MS_ERR_USAGE, "bad DSN NOTIFY");
	if (orcpt && ms_dsn_orcpt_check(orcpt, err) != MS_OK)
		return MS_ERR_USAGE;
	char *d = orcpt ? strdup(orcpt) : NULL;
	if (orcpt && !d)
		return ms_error_set(err, MS_ERR_NOMEM, "out of memory");
	free(m->rcpts[i].orcpt);
	m->rcpts[i].orcpt = d;
	m->rcpts[i].notify = notify;
	return MS_OK;
}

void ms_message_reset(ms_message *m)
{
	for (size_t i = 0; i < m->nrcpts; i++) {
		ms_rcpt *r = &m->rcpts[i];
		r->state = MS_RCPT_PENDING;
		ms_outcome_free(&r->out);
		memset(&r->out, 0, sizeof r->out);
		r->rcpt_code = 0;
		r->busy = r->retry = 0;
		r->dsn_passed = 0;
	}
	ms_outcome_free(&m->out);
	memset(&m->out, 0, sizeof m->out);
	m->done = 0;
	m->engaged = 0;
	m->solo = 0;
}

const char *ms_rcpt_state_name(ms_rcpt_state s)
{
	switch (s) {
	case MS_RCPT_PENDING: return "pending";
	case MS_RCPT_ACCEPTED: return "accepted";
	case MS_RCPT_DELIVERED: return "delivered";
	case MS_RCPT_DEFERRED: return "deferred";
	case MS_RCPT_FAILED: return "failed";
	}
	return "?";
}

const char *ms_stage_name(ms_stage s)
{
	static const char *names[] = { "none", "local", "connect", "greeting", "ehlo", "mail",
	                               "rcpt", "data", "dot", "rset", "session", "package" };
	return (unsigned)s < sizeof names / sizeof names[0] ? names[s] : "?";
}

ms_counts ms_message_counts(const ms_message *m)
{
	ms_counts c = { 0 };
	for (size_t i = 0; i < m->nrcpts; i++) {
		switch (m->rcpts[i].state) {
		case MS_RCPT_PENDING: c.pending++; break;
		case MS_RCPT_ACCEPTED: c.accepted++; break;
		case MS_RCPT_DELIVERED: c.delivered++; break;
		case MS_RCPT_DEFERRED: c.deferred++; break;
		case MS_RCPT_FAILED: c.failed++; break;
		}
	}
	return c;
}
