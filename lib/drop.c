/*
 * drop.c - the queue side of a submission and the hand-off to the set-id
 * helper (see mailspool/drop.h).
 *
 * Nothing the submitter sends is believed: the data is checked byte by
 * byte as it is stored (the same invariants the submitting side
 * established, so an honest submitter never meets a refusal here), the
 * envelope's addresses are parsed again, and every field the queue owns
 * (id, uid, arrival, states, history) is set here.
 */
#include "mailspool/drop.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/uio.h>
#include <unistd.h>

#include "mailspool/addr.h"
#include "mailspool/dkim.h"
#include "mailspool/dsnreq.h"
#include "mailspool/encode.h"
#include "mailspool/headers.h"
#include "mailspool/netstring.h"
#include "mailspool/printable.h"

struct ms_drop {
	ms_spool *sp;
	const ms_conf *conf;
	uint32_t uid;
	ms_spool_tx *tx;
	/* The checker's state. */
	int after_cr;       /* the last byte was CR: LF must follow */
	size_t line_len;    /* octets of the current line, line end not counted */
	uint64_t size;      /* octets stored, Received included */
	int failed;
};

static ms_status drop_fail(ms_drop *d, ms_error *err, const char *why)
{
	d->failed = 1;
	return ms_error_set(err, MS_ERR_DATA, "refused by the queue: %s", why);
}

ms_status ms_drop_begin(ms_spool *sp, const ms_conf *conf, uint32_t uid, ms_drop **out,
                        ms_error *err)
{
	ms_status st = ms_spool_space_ok(sp, 0, err);
	if (st != MS_OK)
		return st;
	ms_drop *d = calloc(1, sizeof *d);
	if (!d)
		return ms_error_set(err, MS_ERR_NOMEM, "out of memory");
	d->sp = sp;
	d->conf = conf;
	d->uid = uid;
	if ((st = ms_spool_begin(sp, &d->tx, err)) != MS_OK) {
		free(d);
		return st;
	}
	/* Our own trace field first, as Postfix's pickup writes "from userid
	 * N": whatever the message says of its sender, this line says who
	 * submitted it (RFC 5321 4.4: a trace field is added, never changed). */
	char date[64];
	ms_hdr_date((int64_t)time(NULL), date, sizeof date);
	ms_buf b;
	ms_buf_init(&b, 1024);
	if (ms_buf_printf(&b, "Received: by %s (mailspool, from userid %u)\r\n\tid %s; %s\r\n",
	                  conf->hostname, (unsigned)uid, ms_spool_tx_id(d->tx), date) != MS_OK ||
	    ms_spool_tx_write(d->tx, ms_buf_ptr(&b), ms_buf_avail(&b), err) != MS_OK) {
		ms_buf_free(&b);
		ms_drop_abort(d);
		return ms_error_set(err, MS_ERR_IO, "cannot write the spool file");
	}
	d->size = ms_buf_avail(&b);
	ms_buf_free(&b);
	*out = d;
	return MS_OK;
}

ms_status ms_drop_write(ms_drop *d, const void *p, size_t n, ms_error *err)
{
	if (d->failed)
		return ms_error_set(err, MS_ERR_DATA, "refused by the queue");
	const unsigned char *s = p;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = s[i];
		if (d->after_cr && c != '\n')
			return drop_fail(d, err, "a bare CR in the data");
		if (c == '\r') {
			d->after_cr = 1;
		} else if (c == '\n') {
			if (!d->after_cr)
				return drop_fail(d, err, "a bare LF in the data");
			d->after_cr = 0;
			d->line_len = 0;
		} else if (c == '\0') {
			return drop_fail(d, err, "a NUL byte in the data");
		} else if (++d->line_len > MS_SMTP_LINE_MAX) {
			return drop_fail(d, err, "a line longer than 998 octets");
		}
	}
	d->size += n;
	if (d->conf->max_message_size && d->size > d->conf->max_message_size + 1024) {
		/* (+1024: room for our Received field, which the submitter's own
		 * size check could not count) */
		d->failed = 1;
		return ms_error_set(err, MS_ERR_DATA,
		                    "message larger than the limit of %llu octets (max_message_size)",
		                    (unsigned long long)d->conf->max_message_size);
	}
	ms_status st = ms_spool_tx_write(d->tx, p, n, err);
	if (st != MS_OK)
		d->failed = 1;
	return st;
}

void ms_drop_abort(ms_drop *d)
{
	if (!d)
		return;
	ms_spool_abort(d->tx);
	free(d);
}

/* The address as the queue would store it, or an error. */
static ms_status canonical(const char *a, ms_addr_role kind, char *wire, ms_error *err)
{
	return ms_addr_parse(a, strlen(a), kind, wire, NULL, err);
}

ms_status ms_drop_commit(ms_drop *d, const ms_envelope *in, ms_submit_result *res,
                         ms_error *err)
{
	memset(res, 0, sizeof *res);
	ms_status st = MS_OK;
	if (d->failed)
		st = ms_error_set(err, MS_ERR_DATA, "refused by the queue");
	else if (d->after_cr || d->line_len)
		st = drop_fail(d, err, "the data does not end with a line end");
	else if (in->nrcpts == 0 || in->nrcpts > MS_ENV_MAX_RCPTS)
		st = ms_error_set(err, MS_ERR_USAGE, "no recipients, or more than %d",
		                  MS_ENV_MAX_RCPTS);
	/* A fresh envelope: only sender, recipients and the hold flag are the
	 * submitter's to choose. */
	ms_envelope env;
	ms_env_init(&env);
	int64_t now = (int64_t)time(NULL);
	env.arrival = now;
	env.uid = d->uid;
	env.flags = in->flags & MS_ENV_HOLD;
	char wire[MS_ADDR_MAX + 1];
	if (st == MS_OK && (st = canonical(in->sender, MS_ADDR_SENDER, wire, err)) == MS_OK)
		st = ms_env_set_sender(&env, wire, err);
	/* The DSN request (RFC 3461) is the submitter's too, checked again. */
	if (st == MS_OK && (in->dsn_ret < 0 || in->dsn_ret > MS_DSN_RET_HDRS))
		st = ms_error_set(err, MS_ERR_USAGE, "bad DSN RET");
	if (st == MS_OK && in->dsn_envid && (st = ms_dsn_envid_check(in->dsn_envid, err)) == MS_OK &&
	    !(env.dsn_envid = strdup(in->dsn_envid)))
		st = ms_error_set(err, MS_ERR_NOMEM, "out of memory");
	env.dsn_ret = in->dsn_ret;
	for (size_t i = 0; i < in->nrcpts && st == MS_OK; i++) {
		const ms_env_rcpt *ir = &in->rcpts[i];
		if ((st = canonical(ir->addr, MS_ADDR_RECIPIENT, wire, err)) != MS_OK)
			break;
		if ((st = ms_env_add_rcpt(&env, wire, now + d->conf->retry_tiers[0], err)) != MS_OK)
			break;
		ms_env_rcpt *r = &env.rcpts[env.nrcpts - 1];
		if (!ms_dsn_notify_ok(ir->notify))
			st = ms_error_set(err, MS_ERR_USAGE, "bad DSN NOTIFY");
		else if (ir->orcpt && (st = ms_dsn_orcpt_check(ir->orcpt, err)) == MS_OK &&
		         !(r->orcpt = strdup(ir->orcpt)))
			st = ms_error_set(err, MS_ERR_NOMEM, "out of memory");
		r->notify = ir->notify;
	}
	if (st == MS_OK)
		st = ms_spool_space_ok(d->sp, d->size, err);
	/* Signed here, once: the queue's owner alone can read the keys, and
	 * the data file is final.  A signer that fails keeps the message out
	 * (temporary) rather than let it go unsigned. */
	int data_fd = -1;
	if (st == MS_OK && d->conf->ndkim && (st = ms_spool_tx_data(d->tx, &data_fd, err)) == MS_OK)
		st = ms_dkim_sign(d->conf, data_fd, d->size, env.sender, &env.prefix, err);
	if (st != MS_OK) {
		ms_env_free(&env);
		ms_drop_abort(d);
		return st;
	}
	st = ms_spool_commit(d->tx, &env, err);
	d->tx = NULL; /* finished either way */
	if (st == MS_OK) {
		memcpy(res->id, env.id, sizeof res->id);
		res->size = env.size;
		res->nrcpts = env.nrcpts;
		/* The message is safe; a usage line that cannot be written does
		 * not undo that.  The uid goes with it: who submitted what. */
		ms_spool_usage_uid(d->sp, "spooled", env.size, env.id, d->uid, NULL);
		ms_spool_wake_id(d->sp, env.id);
	}
	ms_env_free(&env);
	free(d);
	return st;
}

/* ---- the in-process sink ------------------------------------------------ */

static ms_status local_begin(void *ctx, ms_error *err)
{
	ms_drop_local *l = ctx;
	return ms_drop_begin(l->sp, l->conf, l->uid, &l->d, err);
}

static ms_status local_write(void *ctx, const void *p, size_t n, ms_error *err)
{
	return ms_drop_write(((ms_drop_local *)ctx)->d, p, n, err);
}

static ms_status local_commit(void *ctx, const ms_envelope *env, ms_submit_result *res,
                              ms_error *err)
{
	ms_drop_local *l = ctx;
	ms_status st = ms_drop_commit(l->d, env, res, err);
	l->d = NULL;
	return st;
}

static void local_abort(void *ctx)
{
	ms_drop_local *l = ctx;
	ms_drop_abort(l->d);
	l->d = NULL;
}

ms_submit_sink ms_drop_local_sink(ms_drop_local *l)
{
	l->d = NULL;
	return (ms_submit_sink){ local_begin, local_write, local_commit, local_abort, l };
}

/* ---- the helper's side of the hand-off ------------------------------- */

typedef struct reader {
	int fd;
	char buf[65536];
	size_t pos, len;
	int eof;
} reader;

/* Exactly n bytes, or MS_ERR_DATA: the stream was cut. */
static ms_status read_exact(reader *r, char *out, size_t n, ms_error *err)
{
	while (n > 0) {
		if (r->pos == r->len) {
			ssize_t k = read(r->fd, r->buf, sizeof r->buf);
			if (k < 0 && errno == EINTR)
				continue;
			if (k < 0)
				return ms_error_set(err, MS_ERR_IO, "cannot read the submission: %s",
				                    strerror(errno));
			if (k == 0)
				return ms_error_set(err, MS_ERR_DATA,
				                    "the submission ended early (the submitter died?)");
			r->pos = 0;
			r->len = (size_t)k;
		}
		size_t take = r->len - r->pos < n ? r->len - r->pos : n;
		memcpy(out, r->buf + r->pos, take);
		r->pos += take;
		out += take;
		n -= take;
	}
	return MS_OK;
}

/* A netstring's length: digits up to ':' (no leading zeros, at most cap). */
static ms_status read_len(reader *r, size_t cap, size_t *len, ms_error *err)
{
	size_t v = 0, digits = 0;
	for (;;) {
		char c;
		ms_status st = read_exact(r, &c, 1, err);
		if (st != MS_OK)
			return st;
		if (c == ':' && digits > 0) {
			*len = v;
			return MS_OK;
		}
		if (c < '0' || c > '9' || (digits == 1 && v == 0) || digits >= 9)
			return ms_error_set(err, MS_ERR_DATA, "malformed submission (netstring length)");
		v = v * 10 + (size_t)(c - '0');
		digits++;
		if (v > cap)
			return ms_error_set(err, MS_ERR_DATA, "malformed submission (a netstring over %zu)",
			                    cap);
	}
}

static ms_status read_comma(reader *r, ms_error *err)
{
	char c;
	ms_status st = read_exact(r, &c, 1, err);
	if (st == MS_OK && c != ',')
		st = ms_error_set(err, MS_ERR_DATA, "malformed submission (no comma)");
	return st;
}

ms_status ms_drop_serve(ms_spool *sp, const ms_conf *conf, uint32_t uid, int in_fd,
                        ms_submit_result *res, ms_error *err)
{
	memset(res, 0, sizeof *res);
	reader *r = calloc(1, sizeof *r);
	char *chunk = malloc(MS_DROP_CHUNK_MAX);
	ms_drop *d = NULL;
	ms_envelope env;
	ms_env_init(&env);
	ms_status st = MS_OK;
	if (!r || !chunk) {
		st = ms_error_set(err, MS_ERR_NOMEM, "out of memory");
		goto out;
	}
	r->fd = in_fd;
	char magic[sizeof MS_DROP_MAGIC - 1];
	if ((st = read_exact(r, magic, sizeof magic, err)) != MS_OK)
		goto out;
	if (memcmp(magic, MS_DROP_MAGIC, sizeof magic)) {
		st = ms_error_set(err, MS_ERR_USAGE, "not a mailspool submission");
		goto out;
	}
	if ((st = ms_drop_begin(sp, conf, uid, &d, err)) != MS_OK)
		goto out;
	for (;;) {
		size_t n;
		if ((st = read_len(r, MS_DROP_CHUNK_MAX, &n, err)) != MS_OK ||
		    (st = read_exact(r, chunk, n, err)) != MS_OK || (st = read_comma(r, err)) != MS_OK)
			goto out;
		if (n == 0)
			break;
		if ((st = ms_drop_write(d, chunk, n, err)) != MS_OK)
			goto out;
	}
	/* The envelope, in the spool's own checked format. */
	size_t elen;
	if ((st = read_len(r, MS_ENV_FILE_MAX, &elen, err)) != MS_OK)
		goto out;
	char *eb = malloc(elen ? elen : 1);
	if (!eb) {
		st = ms_error_set(err, MS_ERR_NOMEM, "out of memory");
		goto out;
	}
	st = read_exact(r, eb, elen, err);
	if (st == MS_OK)
		st = read_comma(r, err);
	if (st == MS_OK && ms_env_parse(eb, elen, &env, err) != MS_OK)
		st = ms_error_set(err, MS_ERR_USAGE, "malformed submission (envelope): %s", err->msg);
	free(eb);
	if (st != MS_OK)
		goto out;
	st = ms_drop_commit(d, &env, res, err);
	d = NULL;
out:
	ms_drop_abort(d);
	ms_env_free(&env);
	free(chunk);
	free(r);
	return st;
}

static const char *class_name(ms_status st)
{
	switch (st) {
	case MS_ERR_USAGE: return "usage";
	case MS_ERR_DATA: return "data";
	case MS_ERR_TEMP: return "temp";
	case MS_ERR_DENIED: return "denied";
	default: return "io";
	}
}

void ms_drop_reply(ms_status st, const ms_submit_result *res, const ms_error *err, char *out,
                   size_t n)
{
	if (st == MS_OK) {
		snprintf(out, n, "ok %s %llu %zu\n", res->id, (unsigned long long)res->size,
		         res->nrcpts);
		return;
	}
	char text[MS_PRINTABLE_SIZE(256)];
	ms_printable(err->msg, strnlen(err->msg, 256), text, sizeof text);
	snprintf(out, n, "error %s %s\n", class_name(st), text);
}

/* ---- the submitter's side ---------------------------------------------- */

static ms_status put_all(int fd, const char *p, size_t n, ms_error *err)
{
	while (n > 0) {
		ssize_t w = write(fd, p, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0)
			return ms_error_set(err, MS_ERR_IO, "cannot hand the message to the queue: %s",
			                    strerror(errno));
		p += w;
		n -= (size_t)w;
	}
	return MS_OK;
}

/* One full chunk as one write: "65536:" data ",". */
static ms_status pipe_flush(ms_drop_pipe *p, ms_error *err)
{
	char pre[MS_NS_PREFIX_MAX];
	size_t pl = ms_ns_prefix(pre, p->len);
	struct iovec iov[3] = { { pre, pl }, { p->buf, p->len }, { ",", 1 } };
	size_t total = pl + p->len + 1;
	p->len = 0;
	ssize_t w;
	while ((w = writev(p->to_fd, iov, 3)) < 0 && errno == EINTR)
		;
	if (w == (ssize_t)total)
		return MS_OK;
	if (w < 0)
		return ms_error_set(err, MS_ERR_IO, "cannot hand the message to the queue: %s",
		                    strerror(errno));
	/* A short write (a full pipe): the rest the slow way. */
	for (int i = 0; i < 3; i++) {
		if ((size_t)w >= iov[i].iov_len) {
			w -= (ssize_t)iov[i].iov_len;
			continue;
		}
		ms_status st = put_all(p->to_fd, (const char *)iov[i].iov_base + w,
		                       iov[i].iov_len - (size_t)w, err);
		if (st != MS_OK)
			return st;
		w = 0;
	}
	return MS_OK;
}

static ms_status pipe_begin(void *ctx, ms_error *err)
{
	ms_drop_pipe *p = ctx;
	if (!p->buf && !(p->buf = malloc(MS_DROP_CHUNK_MAX)))
		return ms_error_set(err, MS_ERR_NOMEM, "out of memory");
	p->len = 0;
	return put_all(p->to_fd, MS_DROP_MAGIC, sizeof MS_DROP_MAGIC - 1, err);
}

static ms_status pipe_write(void *ctx, const void *data, size_t n, ms_error *err)
{
	ms_drop_pipe *p = ctx;
	const char *s = data;
	while (n > 0) {
		size_t take = MS_DROP_CHUNK_MAX - p->len < n ? MS_DROP_CHUNK_MAX - p->len : n;
		memcpy(p->buf + p->len, s, take);
		p->len += take;
		s += take;
		n -= take;
		if (p->len == MS_DROP_CHUNK_MAX) {
			ms_status st = pipe_flush(p, err);
			if (st != MS_OK)
				return st;
		}
	}
	return MS_OK;
}

/* The helper's answer: one line, bounded. */
static ms_status read_reply(ms_drop_pipe *p, ms_submit_result *res, ms_error *err)
{
	char line[MS_DROP_REPLY_MAX];
	size_t n = 0;
	while (n + 1 < sizeof line) {
		ssize_t k = read(p->from_fd, line + n, 1);
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			break;
		if (line[n++] == '\n')
			break;
	}
	line[n] = '\0';
	if (n == 0)
		return ms_error_set(err, MS_ERR_IO, "the queue program ended without an answer");
	return ms_drop_parse_reply(line, res, err);
}

static ms_status pipe_commit(void *ctx, const ms_envelope *env, ms_submit_result *res,
                             ms_error *err)
{
	ms_drop_pipe *p = ctx;
	ms_buf b;
	ms_buf_init(&b, MS_ENV_FILE_MAX);
	ms_envelope e = *env;
	snprintf(e.id, sizeof e.id, "submission"); /* the queue names it */
	/* The last chunk, the end marker and the envelope in one write: the
	 * helper wakes once for all of it. */
	ms_buf tail;
	ms_buf_init(&tail, MS_ENV_FILE_MAX + MS_DROP_CHUNK_MAX + 64);
	ms_status st = ms_env_serialize(&e, &b, err);
	if (st == MS_OK && p->len)
		st = ms_ns_append(&tail, p->buf, p->len);
	if (st == MS_OK)
		st = ms_buf_append(&tail, "0:,", 3);
	if (st == MS_OK)
		st = ms_ns_append(&tail, ms_buf_ptr(&b), ms_buf_avail(&b));
	if (st == MS_OK)
		st = put_all(p->to_fd, ms_buf_ptr(&tail), ms_buf_avail(&tail), err);
	else if (err && st != MS_ERR_IO)
		ms_error_set(err, MS_ERR_NOMEM, "out of memory");
	p->len = 0;
	ms_buf_free(&tail);
	ms_buf_free(&b);
	close(p->to_fd); /* end of the request: the helper must not wait for more */
	p->to_fd = -1;
	/* Even when writing failed (the helper refused and left), its answer
	 * says why. */
	ms_error rerr;
	ms_status rst = read_reply(p, res, &rerr);
	if (rst != MS_OK || st == MS_OK) {
		if (err && rst != MS_OK)
			*err = rerr;
		st = rst;
	}
	free(p->buf);
	p->buf = NULL;
	return st;
}

static void pipe_abort(void *ctx)
{
	ms_drop_pipe *p = ctx;
	/* Closing without the end marker: the helper commits nothing. */
	if (p->to_fd >= 0)
		close(p->to_fd);
	p->to_fd = -1;
	free(p->buf);
	p->buf = NULL;
}

ms_submit_sink ms_drop_pipe_sink(ms_drop_pipe *p, int to_fd, int from_fd)
{
	p->to_fd = to_fd;
	p->from_fd = from_fd;
	p->buf = NULL;
	p->len = 0;
	return (ms_submit_sink){ pipe_begin, pipe_write, pipe_commit, pipe_abort, p };
}

ms_status ms_drop_parse_reply(const char *line, ms_submit_result *res, ms_error *err)
{
	memset(res, 0, sizeof *res);
	char id[MS_ENV_ID_MAX + 2];
	unsigned long long size;
	size_t nr;
	if (sscanf(line, "ok %33s %llu %zu", id, &size, &nr) == 3 && ms_env_id_ok(id)) {
		snprintf(res->id, sizeof res->id, "%.32s", id);
		res->size = size;
		res->nrcpts = nr;
		return MS_OK;
	}
	static const struct {
		const char *name;
		ms_status st;
	} classes[] = { { "usage ", MS_ERR_USAGE }, { "data ", MS_ERR_DATA },
		            { "temp ", MS_ERR_TEMP },   { "denied ", MS_ERR_DENIED },
		            { "io ", MS_ERR_IO } };
	if (!strncmp(line, "error ", 6)) {
		const char *rest = line + 6;
		for (size_t i = 0; i < sizeof classes / sizeof classes[0]; i++) {
			size_t k = strlen(classes[i].name);
			if (!strncmp(rest, classes[i].name, k)) {
				char text[MS_ERROR_MSG_MAX];
				snprintf(text, sizeof text, "%.500s", rest + k);
				text[strcspn(text, "\r\n")] = '\0';
				return ms_error_set(err, classes[i].st, "%s", text);
			}
		}
	}
	char text[MS_PRINTABLE_SIZE(100)];
	ms_printable(line, strnlen(line, 100), text, sizeof text);
	return ms_error_set(err, MS_ERR_IO, "the queue program answered \"%s\"", text);
}
