/*
 * submit.c - putting a message into the spool (see mailspool/submit.h).
 *
 * One pass over the input: lines are read from the descriptor into a
 * bounded line buffer (a line over 998 octets is refused there, so nothing
 * unbounded is ever held), the header block is collected (at most
 * MS_HDR_MAX), rewritten, and the rest streams through the CRLF normaliser
 * into the spool file.
 */
#include "mailspool/submit.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "mailspool/addr.h"
#include "mailspool/aliases.h"
#include "mailspool/dsnreq.h"
#include "mailspool/hmap.h"
#include "mailspool/drop.h"
#include "mailspool/encode.h"
#include "mailspool/headers.h"
#include "mailspool/printable.h"

#define IN_BUF (64u * 1024)
/* A line's octets before its line end; one more byte than allowed is
 * enough to know it is too long. */
#define LINE_CAP (MS_SMTP_LINE_MAX + 2)

typedef struct input {
	int fd;
	char buf[IN_BUF];
	size_t pos, len;
	int eof;
} input;

/* Next line (through its LF, or to EOF) into line[0..*n); 0 at EOF, -1 on a
 * read error, -2 when the line is longer than LINE_CAP (what was read of it
 * is in line). */
static int next_line(input *in, char *line, size_t *n)
{
	*n = 0;
	for (;;) {
		if (in->pos == in->len) {
			if (in->eof)
				return *n ? 1 : 0;
			ssize_t r = read(in->fd, in->buf, sizeof in->buf);
			if (r < 0 && errno == EINTR)
				continue;
			if (r < 0)
				return -1;
			if (r == 0) {
				in->eof = 1;
				continue;
			}
			in->pos = 0;
			in->len = (size_t)r;
		}
		const char *p = in->buf + in->pos;
		size_t avail = in->len - in->pos;
		const char *lf = memchr(p, '\n', avail);
		size_t take = lf ? (size_t)(lf - p) + 1 : avail;
		/* LINE_CAP octets plus CR LF fit; anything longer is refused. */
		if (*n + take > LINE_CAP + 2)
			return -2;
		memcpy(line + *n, p, take);
		*n += take;
		in->pos += take;
		if (lf)
			return 1;
	}
}

/* Octets of text on a line, without its line end. */
static size_t text_len(const char *line, size_t n)
{
	if (n && line[n - 1] == '\n')
		n--;
	if (n && line[n - 1] == '\r')
		n--;
	return n;
}

static int is_dot_line(const char *line, size_t n)
{
	return text_len(line, n) == 1 && line[0] == '.' && (n == 1 || line[1] == '\r' || line[1] == '\n');
}

/* A header field line: a name of printable ASCII (no space, no colon) and
 * a colon - or a continuation line after one. */
static int is_field_start(const char *line, size_t n)
{
	size_t i = 0;
	while (i < n && line[i] > 0x20 && line[i] < 0x7f && line[i] != ':')
		i++;
	return i > 0 && i < n && line[i] == ':';
}

/* A bare local name ("root", as cron gives it) gets @hostname, as
 * sendmail and Postfix qualify it with the local domain. */
/* <> and <address>: what is inside the brackets (into inner, n octets),
 * else addr itself.  The brackets are not part of a name ("<>" became
 * "<>"@HOST, a recipient that exists nowhere).  Too long to fit, the
 * brackets stay, and the address is refused whole rather than cut. */
static const char *unbracket(const char *addr, char *inner, size_t n)
{
	size_t len = strlen(addr);
	if (len < 2 || addr[0] != '<' || addr[len - 1] != '>' || len - 2 >= n)
		return addr;
	snprintf(inner, n, "%.*s", (int)(len - 2), addr + 1);
	return inner;
}

static const char *qualify(const char *addr, const char *host, char *buf, size_t n)
{
	char inner[MS_ADDR_MAX + 1];
	const char *a = unbracket(addr, inner, sizeof inner);
	if (!*a || strchr(a, '@') || strlen(a) > MS_ADDR_LOCAL_MAX) {
		if (a == addr)
			return addr;
		snprintf(buf, n, "%s", inner);
		return buf;
	}
	snprintf(buf, n, "%s@%s", a, host);
	return buf;
}

typedef struct rcpt_ctx {
	ms_envelope *env;
	const ms_conf *conf;
	ms_aliases aliases;  /* read at the first local recipient */
	int aliases_read;
	const char *host;
	int64_t now;
	unsigned notify; /* RFC 3461 NOTIFY for each, with ORCPT */
	ms_hmap seen;    /* the addresses added, for one copy of each in O(1) */
	ms_error *err;
	int bad;
} rcpt_ctx;

/* Add a final recipient once (sendmail keeps one copy per address). */
static int add_final(void *ctx, const char *addr)
{
	rcpt_ctx *c = ctx;
	char wire[MS_ADDR_MAX + 1], full[MS_ADDR_LOCAL_MAX + MS_CONF_HOST_MAX + 2];
	addr = qualify(addr, c->host, full, sizeof full);
	if (ms_addr_parse(addr, strlen(addr), MS_ADDR_RECIPIENT, wire, NULL, c->err) != MS_OK) {
		c->bad = 1;
		return 1;
	}
	if (ms_hmap_get(&c->seen, wire))
		return 0;
	if (ms_hmap_put(&c->seen, wire, c) != 0) {
		ms_error_set(c->err, MS_ERR_NOMEM, "out of memory");
		c->bad = 1;
		return 1;
	}
	if (ms_env_add_rcpt(c->env, wire, c->now, c->err) != MS_OK) {
		c->bad = 1;
		return 1;
	}
	if (c->notify) {
		/* With a DSN request goes the address as the sender gave it
		 * (RFC 3461 4.2), for the reports of later hops and ours. */
		ms_env_rcpt *r = &c->env->rcpts[c->env->nrcpts - 1];
		size_t n = strlen(wire) + 8;
		r->notify = c->notify;
		if (!(r->orcpt = malloc(n))) {
			ms_error_set(c->err, MS_ERR_NOMEM, "out of memory");
			c->bad = 1;
			return 1;
		}
		snprintf(r->orcpt, n, "rfc822;%s", wire);
	}
	return 0;
}

/* A recipient as given: a local name goes through the aliases and
 * admin_address when either is configured (mailspool/aliases.h), the rest
 * is final. */
static int add_rcpt(void *ctx, const char *addr)
{
	rcpt_ctx *c = ctx;
	const ms_conf *conf = c->conf;
	if (!conf->aliases[0] && !conf->admin_address[0])
		return add_final(c, addr);
	char inner[MS_ADDR_MAX + 1];
	addr = unbracket(addr, inner, sizeof inner);
	/* "" and "@x" are no local names: left to add_final to refuse. */
	if (!*addr || *addr == '@' || !ms_aliases_is_local(addr, c->host))
		return add_final(c, addr);
	if (conf->aliases[0] && !c->aliases_read) {
		ms_error aerr;
		if (ms_aliases_load(&c->aliases, conf->aliases, NULL, NULL, &aerr) != MS_OK) {
			/* Worth trying again once the administrator mended it. */
			ms_error_set(c->err, MS_ERR_TEMP, "%s", aerr.msg);
			c->bad = 1;
			return 1;
		}
		c->aliases_read = 1;
	}
	int r = ms_aliases_expand(c->aliases_read ? &c->aliases : NULL, addr, c->host,
	                          conf->admin_address, add_final, c);
	if (r == -2) {
		char safe[MS_PRINTABLE_SIZE(MS_ADDR_MAX)];
		ms_error_set(c->err, MS_ERR_TEMP, "the aliases of %s reach more than %d addresses",
		             ms_printable_str(addr, safe, sizeof safe), MS_ALIASES_STEPS_MAX);
		c->bad = 1;
	}
	return r;
}

/* Is there a field called `name` in the header block? */
static int has_field(const char *hdr, size_t len, const char *name)
{
	size_t nl = strlen(name);
	for (size_t i = 0; i < len;) {
		if ((i == 0 || hdr[i - 1] == '\n') && len - i > nl && hdr[i + nl] == ':' &&
		    !strncasecmp(hdr + i, name, nl))
			return 1;
		const char *lf = memchr(hdr + i, '\n', len - i);
		if (!lf)
			break;
		i = (size_t)(lf - hdr) + 1;
	}
	return 0;
}

/* A display name as an RFC 5322 phrase: atoms as they are, anything else
 * as a quoted string. */
static ms_status put_phrase(ms_buf *b, const char *name)
{
	int plain = *name != '\0';
	for (const char *p = name; *p && plain; p++)
		plain = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
		        (*p >= '0' && *p <= '9') || strchr(" !#$%&'*+-/=?^_`{|}~", *p);
	if (plain)
		return ms_buf_appendstr(b, name);
	ms_status st = ms_buf_append(b, "\"", 1);
	for (const char *p = name; *p && st == MS_OK; p++) {
		if (*p == '"' || *p == '\\')
			st = ms_buf_append(b, "\\", 1);
		if (st == MS_OK)
			st = ms_buf_append(b, p, 1);
	}
	return st == MS_OK ? ms_buf_append(b, "\"", 1) : st;
}

/* The fields RFC 5322 wants and the message lacks: From, Date, Message-ID. */
static ms_status add_missing(ms_buf *hdr, const ms_submit_opts *o, const ms_conf *conf,
                             const char *sender, const char *id, ms_error *err)
{
	const char *h = ms_buf_ptr(hdr);
	size_t len = ms_buf_avail(hdr);
	ms_status st = MS_OK;
	if (!has_field(h, len, "From")) {
		char self[MS_CONF_HOST_MAX + 80];
		const char *addr = sender;
		if (!*addr) {
			snprintf(self, sizeof self, "%.64s@%s", o->user && *o->user ? o->user : "root",
			         conf->hostname);
			addr = self;
		}
		st = ms_buf_appendstr(hdr, "From: ");
		if (st == MS_OK && o->full_name && *o->full_name) {
			/* -F comes from a command line: no line breaks allowed. */
			if (strpbrk(o->full_name, "\r\n"))
				return ms_error_set(err, MS_ERR_USAGE, "full name (-F) contains a line break");
			st = put_phrase(hdr, o->full_name);
			if (st == MS_OK)
				st = ms_buf_printf(hdr, " <%s>\r\n", addr);
		} else if (st == MS_OK) {
			st = ms_buf_printf(hdr, "%s\r\n", addr);
		}
	}
	if (st == MS_OK && !has_field(ms_buf_ptr(hdr), ms_buf_avail(hdr), "Date")) {
		char date[64];
		ms_hdr_date((int64_t)time(NULL), date, sizeof date);
		st = ms_buf_printf(hdr, "Date: %s\r\n", date);
	}
	if (st == MS_OK && !has_field(ms_buf_ptr(hdr), ms_buf_avail(hdr), "Message-ID"))
		st = ms_buf_printf(hdr, "Message-ID: <%s@%s>\r\n", id, conf->hostname);
	if (st != MS_OK)
		return ms_error_set(err, MS_ERR_NOMEM, "out of memory");
	return MS_OK;
}

typedef struct writer {
	const ms_submit_sink *sink;
	ms_enc enc;
	char *out;
	uint64_t max_size;
} writer;

/* Normalise and store bytes; checks size and line length as it goes.
 * Fed in pieces of at most IN_BUF: w->out has room for one piece's worst
 * case, and a header block may be up to MS_HDR_MAX. */
static ms_status put_piece(writer *w, const char *p, size_t n, ms_error *err);
static ms_status put(writer *w, const char *p, size_t n, ms_error *err)
{
	while (n > 0) {
		size_t take = n < IN_BUF ? n : IN_BUF;
		ms_status st = put_piece(w, p, take, err);
		if (st != MS_OK)
			return st;
		p += take;
		n -= take;
	}
	return MS_OK;
}

static ms_status put_piece(writer *w, const char *p, size_t n, ms_error *err)
{
	size_t k = ms_enc_feed(&w->enc, p, n, w->out);
	if (w->enc.line_len > MS_SMTP_LINE_MAX || w->enc.max_line > MS_SMTP_LINE_MAX)
		return ms_error_set(err, MS_ERR_DATA, "a line is longer than %d octets (RFC 5322 2.1.1)",
		                    MS_SMTP_LINE_MAX);
	if (w->enc.has_nul)
		return ms_error_set(err, MS_ERR_DATA, "the message contains NUL bytes");
	if (w->max_size && w->enc.size > w->max_size)
		return ms_error_set(err, MS_ERR_DATA,
		                    "message larger than the limit of %llu octets (max_message_size)",
		                    (unsigned long long)w->max_size);
	return w->sink->write(w->sink->ctx, w->out, k, err);
}

ms_status ms_submit(ms_spool *sp, const ms_conf *conf, const ms_submit_opts *o, int in_fd,
                    ms_submit_result *res, ms_error *err)
{
	ms_drop_local l = { .sp = sp, .conf = conf, .uid = o->uid };
	ms_submit_sink sink = ms_drop_local_sink(&l);
	return ms_submit_to(&sink, conf, o, in_fd, res, err);
}

ms_status ms_submit_to(const ms_submit_sink *sink, const ms_conf *conf, const ms_submit_opts *o,
                       int in_fd, ms_submit_result *res, ms_error *err)
{
	memset(res, 0, sizeof *res);
	ms_status st = MS_OK;
	int begun = 0;
	int64_t now = (int64_t)time(NULL);
	ms_envelope env;
	ms_env_init(&env);
	env.arrival = now;
	env.uid = o->uid;
	env.flags = o->flags;
	/* The sender. */
	char wire[MS_ADDR_MAX + 1], defsender[MS_CONF_HOST_MAX + 80];
	const char *sender = o->sender;
	if (!sender) {
		snprintf(defsender, sizeof defsender, "%.64s@%s", o->user && *o->user ? o->user : "root",
		         conf->hostname);
		sender = defsender;
	}
	char qsender[MS_ADDR_LOCAL_MAX + MS_CONF_HOST_MAX + 2];
	sender = qualify(sender, conf->hostname, qsender, sizeof qsender);
	if (ms_addr_parse(sender, strlen(sender), MS_ADDR_SENDER, wire, NULL, err) != MS_OK ||
	    ms_env_set_sender(&env, wire, err) != MS_OK) {
		ms_env_free(&env);
		return MS_ERR_USAGE;
	}
	if (!ms_dsn_notify_ok(o->dsn_notify) || o->dsn_ret < 0 || o->dsn_ret > MS_DSN_RET_HDRS ||
	    (o->dsn_envid && ms_dsn_envid_check(o->dsn_envid, err) != MS_OK)) {
		if (!o->dsn_envid || ms_dsn_envid_check(o->dsn_envid, NULL) == MS_OK)
			ms_error_set(err, MS_ERR_USAGE, "bad DSN request");
		ms_env_free(&env);
		return MS_ERR_USAGE;
	}
	env.dsn_ret = o->dsn_ret;
	if (o->dsn_envid && !(env.dsn_envid = strdup(o->dsn_envid))) {
		ms_env_free(&env);
		return ms_error_set(err, MS_ERR_NOMEM, "out of memory");
	}
	rcpt_ctx rc = { .env = &env, .conf = conf, .host = conf->hostname, .now = now + conf->retry_tiers[0],
		            .notify = o->dsn_notify, .err = err };
	ms_hmap_init(&rc.seen);
	for (size_t i = 0; i < o->nrcpts && !rc.bad; i++)
		add_rcpt(&rc, o->rcpts[i]);
	if (rc.bad) {
		ms_hmap_free(&rc.seen);
		if (rc.aliases_read)
			ms_aliases_free(&rc.aliases);
		ms_env_free(&env);
		return err ? err->status : MS_ERR_USAGE;
	}

	input *in = malloc(sizeof *in);
	char *line = malloc(LINE_CAP + 3);
	writer w = { .sink = sink, .max_size = conf->max_message_size,
		         .out = malloc(MS_ENC_MAX_OUT(LINE_CAP + 2) + MS_ENC_MAX_OUT(IN_BUF)) };
	ms_buf hdr;
	ms_buf_init(&hdr, MS_HDR_MAX);
	if (!in || !line || !w.out) {
		st = ms_error_set(err, MS_ERR_NOMEM, "out of memory");
		goto out;
	}
	memset(in, 0, sizeof *in);
	in->fd = in_fd;
	ms_enc_init(&w.enc, 0);

	/* 1. The header block: up to an empty line, a line that is not a
	 * field, the "." line, or the end. */
	size_t n = 0, rest = 0;
	int r, ended = 0, blank = 0, body_first = 0, stop = 0;
	while (!stop && (r = next_line(in, line, &n)) > 0) {
		/* One physical line may hold several logical ones (bare CRs). */
		for (size_t off = 0; off < n;) {
			const char *pc = line + off;
			size_t pl = ms_hdr_line_len(pc, n - off); /* the one line rule */
			if (o->dot_ends && off == 0 && is_dot_line(line, n)) {
				ended = stop = 1;
				break;
			}
			if (text_len(pc, pl) == 0) {
				blank = stop = 1;
				rest = off + pl;
				break;
			}
			int cont = (pc[0] == ' ' || pc[0] == '\t') && ms_buf_avail(&hdr) > 0;
			if (!cont && !is_field_start(pc, pl)) {
				body_first = stop = 1; /* the body starts here: keep it */
				rest = off;
				break;
			}
			/* Stored as the text and CRLF: the block holds no other CR or LF. */
			if (ms_buf_append(&hdr, pc, text_len(pc, pl)) != MS_OK ||
			    ms_buf_append(&hdr, "\r\n", 2) != MS_OK) {
				st = ms_error_set(err, MS_ERR_DATA, "header block longer than %u octets",
				                  MS_HDR_MAX);
				goto out;
			}
			off += pl;
		}
	}
	if (stop)
		r = 1;
	if (r == -1) {
		st = ms_error_set(err, MS_ERR_IO, "cannot read the message: %s", strerror(errno));
		goto out;
	}
	if (r == -2) {
		st = ms_error_set(err, MS_ERR_DATA, "a line is longer than %d octets (RFC 5322 2.1.1)",
		                  MS_SMTP_LINE_MAX);
		goto out;
	}
	/* A last header line without a line end gets one. */
	if (ms_buf_avail(&hdr) && ms_buf_ptr(&hdr)[ms_buf_avail(&hdr) - 1] != '\n' &&
	    ms_buf_append(&hdr, "\r\n", 2) != MS_OK) {
		st = ms_error_set(err, MS_ERR_DATA, "header block longer than %u octets", MS_HDR_MAX);
		goto out;
	}

	/* 2. Recipients from the header, then the header rewritten. */
	if (o->from_headers) {
		static const char *const fields[] = { "To", "Cc", "Bcc" };
		for (size_t i = 0; i < 3 && !rc.bad; i++) {
			int hr = ms_hdr_addresses(ms_buf_ptr(&hdr), ms_buf_avail(&hdr), fields[i],
			                          add_rcpt, &rc);
			if (hr == MS_HDR_MALFORMED && !rc.bad)
				ms_error_set(err, MS_ERR_DATA,
				             "a %s: field holds no valid address list (an unclosed <, or "
				             "words apart without an <address>)",
				             fields[i]);
			if (hr < 0)
				rc.bad = 1;
		}
		if (rc.bad) {
			st = err ? err->status : MS_ERR_USAGE;
			goto out;
		}
	}
	if (env.nrcpts == 0) {
		st = ms_error_set(err, MS_ERR_USAGE,
		                  o->from_headers ? "no recipients: none given and none in To, Cc or Bcc"
		                                  : "no recipients given");
		goto out;
	}
	hdr.len = hdr.off + ms_hdr_remove(hdr.data + hdr.off, ms_buf_avail(&hdr), "Bcc");
	if ((st = sink->begin(sink->ctx, err)) != MS_OK)
		goto out;
	begun = 1;
	/* Message-ID: a fresh id of the queue's kind (unique without
	 * coordination); the queue's own id is not known on this side. */
	char mid[MS_ENV_ID_MAX + 1];
	ms_spool_new_id(mid);
	if ((st = add_missing(&hdr, o, conf, env.sender, mid, err)) != MS_OK)
		goto out;
	if ((st = put(&w, ms_buf_ptr(&hdr), ms_buf_avail(&hdr), err)) != MS_OK)
		goto out;
	if (!ended && (blank || body_first || !in->eof || in->pos < in->len))
		st = put(&w, "\r\n", 2, err);
	if (st == MS_OK && (blank || body_first) && rest < n)
		st = put(&w, line + rest, n - rest, err);
	if (st != MS_OK)
		goto out;

	/* 3. The body, line by line (the "." line is looked for only
	 * without -i; otherwise whole buffers go through). */
	while (!ended) {
		if (o->dot_ends) {
			r = next_line(in, line, &n);
			if (r == 0)
				break;
			if (r < 0) {
				st = r == -1 ? ms_error_set(err, MS_ERR_IO, "cannot read the message: %s",
				                            strerror(errno))
				             : ms_error_set(err, MS_ERR_DATA,
				                            "a line is longer than %d octets (RFC 5322 2.1.1)",
				                            MS_SMTP_LINE_MAX);
				goto out;
			}
			if (is_dot_line(line, n))
				break;
			if ((st = put(&w, line, n, err)) != MS_OK)
				goto out;
			continue;
		}
		if (in->pos < in->len) {
			st = put(&w, in->buf + in->pos, in->len - in->pos, err);
			in->pos = in->len;
			if (st != MS_OK)
				goto out;
		}
		if (in->eof)
			break;
		ssize_t k = read(in->fd, in->buf, sizeof in->buf);
		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0) {
			st = ms_error_set(err, MS_ERR_IO, "cannot read the message: %s", strerror(errno));
			goto out;
		}
		if (k == 0)
			in->eof = 1;
		in->pos = 0;
		in->len = (size_t)k;
	}
	size_t k = ms_enc_finish(&w.enc, w.out, 0);
	if (w.enc.max_line > MS_SMTP_LINE_MAX) {
		st = ms_error_set(err, MS_ERR_DATA, "a line is longer than %d octets (RFC 5322 2.1.1)",
		                  MS_SMTP_LINE_MAX);
		goto out;
	}
	if ((st = sink->write(sink->ctx, w.out, k, err)) != MS_OK)
		goto out;
	/* 4. The queue side checks it all again and commits. */
	begun = 0;
	st = sink->commit(sink->ctx, &env, res, err);
out:
	if (begun)
		sink->abort(sink->ctx);
	ms_hmap_free(&rc.seen);
	if (rc.aliases_read)
		ms_aliases_free(&rc.aliases);
	ms_buf_free(&hdr);
	ms_env_free(&env);
	free(w.out);
	free(line);
	free(in);
	return st;
}
