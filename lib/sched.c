/*
 * sched.c - retry tiers, final states, bounces and log lines for queued
 * messages (see mailspool/sched.h; RFC 5321 4.5.4.1, 6.1; RFC 3464).
 */
#include "mailspool/sched.h"
#include "mailspool/sts.h"
#include "mailspool/tlsrpt.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "mailspool/dsn.h"
#include "mailspool/dsnreq.h"
#include "mailspool/headers.h"
#include "mailspool/hmap.h"
#include "mailspool/printable.h"
#include "mailspool/submit.h"
#include "mailspool/transcript.h"
#include "mailspool/io.h"

int64_t ms_sched_retry_soon(const ms_conf *c, int64_t cap)
{
	int64_t t = c->ntiers > 1 ? c->retry_tiers[1] : cap;
	return t < 1 ? 1 : t > cap ? cap : t;
}

/* A bounce that could not be queued is tried again after the first retry
 * tier, at most five minutes. */
static int64_t bounce_retry(const ms_conf *c)
{
	return ms_sched_retry_soon(c, 300);
}

size_t ms_sched_due(const ms_envelope *e, int64_t now, size_t *idx)
{
	return ms_sched_due_skew(e, now, 0, idx);
}

size_t ms_sched_due_skew(const ms_envelope *e, int64_t now, int64_t skew, size_t *idx)
{
	size_t n = 0;
	if (e->flags & MS_ENV_HOLD)
		return 0;
	for (size_t i = 0; i < e->nrcpts; i++) {
		const ms_env_rcpt *r = &e->rcpts[i];
		int64_t at = r->attempts ? now : now + skew;
		if ((r->state == MS_ENV_PENDING || r->state == MS_ENV_DEFERRED) && r->next <= at)
			idx[n++] = i;
	}
	return n;
}

ms_status ms_sched_message(ms_spool *sp, const ms_envelope *e, const size_t *idx, size_t n,
                           ms_message **out, int *fd, ms_error *err)
{
	*out = NULL;
	*fd = -1;
	ms_message *m = ms_message_new(e->sender, err);
	if (!m)
		return err->status;
	ms_status st = ms_message_set_dsn(m, e->dsn_ret, e->dsn_envid, err);
	for (size_t i = 0; i < n && st == MS_OK; i++) {
		const ms_env_rcpt *r = &e->rcpts[idx[i]];
		st = ms_message_add_rcpt(m, r->addr, err);
		if (st == MS_OK && (r->notify || r->orcpt))
			st = ms_message_rcpt_dsn(m, i, r->notify, r->orcpt, err);
	}
	if (st == MS_OK)
		st = ms_spool_open_data(sp, e->id, fd, err);
	/* The signatures made at commit go first: they were computed over the
	 * data file as it is, so the pair is the signed message. */
	if (st == MS_OK && e->prefix)
		st = ms_message_add_mem(m, e->prefix, strlen(e->prefix), err);
	if (st == MS_OK)
		st = ms_message_add_fd(m, *fd, 0, e->size, err);
	if (st != MS_OK) {
		if (*fd >= 0)
			close(*fd);
		*fd = -1;
		ms_message_free(m);
		return st;
	}
	*out = m;
	return MS_OK;
}

void ms_sched_results(const ms_message *m, const size_t *idx, const char *relay,
                      ms_sched_result *out)
{
	for (size_t i = 0; i < m->nrcpts; i++) {
		const ms_rcpt *r = &m->rcpts[i];
		ms_sched_result *s = &out[i];
		memset(s, 0, sizeof *s);
		s->rcpt = idx[i];
		s->state = r->state == MS_RCPT_DELIVERED || r->state == MS_RCPT_FAILED ? r->state
		                                                                        : MS_RCPT_DEFERRED;
		s->code = r->out.code;
		snprintf(s->enh, sizeof s->enh, "%s", r->out.enh);
		snprintf(s->text, sizeof s->text, "%s", r->out.text ? r->out.text : "");
		snprintf(s->relay, sizeof s->relay, "%s", relay ? relay : "none");
		s->dsn_passed = r->state == MS_RCPT_DELIVERED && r->dsn_passed;
		snprintf(s->tls, sizeof s->tls, "%s", m->tls);
	}
}

/* "mx1.example.org" from "mx1.example.org[192.0.2.1]:25" (Remote-MTA). */
static void relay_host(const char *relay, char *out, size_t n)
{
	size_t k = strcspn(relay, "[");
	if (!relay[k] || k >= n)
		k = 0; /* "none", or a relay by name: no server name to give */
	snprintf(out, n, "%.*s", (int)k, relay);
}

/* "verified TLSv1.3 TLS_AES_256_GCM_SHA384" -> level "verified", the rest
 * protocol and cipher ("" when plain or unknown: level "none"). */
static void split_tls(const char *tls, char *level, size_t ln, char *proto, size_t pn,
                      char *cipher, size_t cn)
{
	char copy[MS_MESSAGE_TLS_MAX];
	snprintf(copy, sizeof copy, "%s", tls && *tls ? tls : "none");
	char *sv, *l = strtok_r(copy, " ", &sv), *p = strtok_r(NULL, " ", &sv),
	          *c = strtok_r(NULL, " ", &sv);
	snprintf(level, ln, "%s", l ? l : "none");
	snprintf(proto, pn, "%s", p ? p : "");
	snprintf(cipher, cn, "%s", c ? c : "");
}

/* log_format = json: the same record as one JSON object (the program
 * adds the time and pid).  Strings go through ms_json_string, which
 * escapes every control byte; the reply text is cut to 1000 octets so
 * that the record stays under MS_LOG_JSON_MAX. */
static void log_result_json(const ms_sched_opts *o, const ms_envelope *e, const ms_env_rcpt *r,
                            const ms_sched_result *s, const char *status, int64_t now,
                            const char *dsn)
{
	ms_buf b;
	ms_buf_init(&b, MS_LOG_JSON_MAX);
	ms_buf_printf(&b, "{\"id\":\"%s\",\"event\":\"delivery\",\"to\":", e->id);
	ms_json_string(&b, r->addr, strlen(r->addr));
	ms_buf_appendstr(&b, ",\"relay\":");
	ms_json_string(&b, s->relay, strnlen(s->relay, MS_RELAY_DESC_MAX));
	char level[16], proto[32], cipher[64];
	split_tls(s->tls, level, sizeof level, proto, sizeof proto, cipher, sizeof cipher);
	ms_buf_printf(&b, ",\"delay\":%lld,\"attempt\":%u,\"tls\":", (long long)(now - e->arrival),
	              r->attempts);
	ms_json_string(&b, level, strlen(level));
	if (proto[0]) {
		ms_buf_appendstr(&b, ",\"tls_protocol\":");
		ms_json_string(&b, proto, strlen(proto));
		ms_buf_appendstr(&b, ",\"tls_cipher\":");
		ms_json_string(&b, cipher, strlen(cipher));
	}
	ms_buf_printf(&b, ",\"dsn\":\"%s\",\"status\":\"%s\"", dsn, status);
	if (s->code)
		ms_buf_printf(&b, ",\"code\":%d", s->code);
	ms_buf_appendstr(&b, ",\"text\":");
	ms_json_string(&b, s->text, strnlen(s->text, 1000));
	if (ms_buf_appendstr(&b, "}") == MS_OK)
		o->log(o->log_ctx, ms_buf_ptr(&b));
	ms_buf_free(&b);
}

static void log_result(const ms_sched_opts *o, const ms_envelope *e, const ms_env_rcpt *r,
                       const ms_sched_result *s, const char *status, int64_t now)
{
	if (!o->log)
		return;
	char line[MS_LOG_LINE_MAX * 3], dsn[16], text[1501];
	ms_dsn_status(s->code ? s->code : (s->state == MS_RCPT_DELIVERED ? 250 : 450), s->enh,
	              r->state == MS_ENV_FAILED, dsn, sizeof dsn);
	if (s->state == MS_RCPT_DELIVERED)
		snprintf(dsn, sizeof dsn, "2%s", s->enh[0] == '2' ? s->enh + 1 : ".0.0");
	/* Every field from outside (address, relay, reply text) escaped:
	 * one line of printable ASCII, whatever the server sent. */
	char addr[MS_PRINTABLE_SIZE(256)], relay[MS_PRINTABLE_SIZE(MS_RELAY_DESC_MAX)];
	ms_printable_str(r->addr, addr, sizeof addr);
	ms_printable_str(s->relay, relay, sizeof relay);
	ms_printable(s->text, strnlen(s->text, sizeof text), text, sizeof text);
	char code[16] = "";
	if (s->code)
		snprintf(code, sizeof code, "%d ", s->code);
	if (o->conf->log_json) {
		log_result_json(o, e, r, s, status, now, dsn);
		return;
	}
	/* tls=none, or tls=verified (TLSv1.3 TLS_AES_256_GCM_SHA384): the
	 * engine's words (printable already; escaped once more anyway). */
	char level[16], proto[32], cipher[64], tls[MS_PRINTABLE_SIZE(MS_MESSAGE_TLS_MAX)];
	split_tls(s->tls, level, sizeof level, proto, sizeof proto, cipher, sizeof cipher);
	char tlsraw[MS_MESSAGE_TLS_MAX + 8];
	if (proto[0])
		snprintf(tlsraw, sizeof tlsraw, "%s (%s %s)", level, proto, cipher);
	else
		snprintf(tlsraw, sizeof tlsraw, "%s", level);
	ms_printable_str(tlsraw, tls, sizeof tls);
	snprintf(line, sizeof line,
	         "%s: to=<%s>, relay=%s, tls=%s, delay=%lld, attempt=%u, dsn=%s, status=%s (%s%s)",
	         e->id, addr, relay, tls, (long long)(now - e->arrival), r->attempts, dsn, status,
	         code, text);
	o->log(o->log_ctx, line);
}

/* B7: RET=FULL, the whole data, if it fits the report's cap. */
static void read_full(int fd, const ms_envelope *e, ms_buf *out)
{
	if (fd < 0 || e->size > MS_DSN_FULL_MAX || ms_buf_reserve(out, e->size) != MS_OK)
		return;
	ssize_t r = pread(fd, ms_buf_tail(out), e->size, 0);
	if (r == (ssize_t)e->size)
		out->len += e->size;
}

/* When the last tier of a message arriving at e->arrival runs out. */
static int64_t retry_until(const ms_conf *c, const ms_envelope *e)
{
	int64_t t = e->arrival;
	for (size_t i = 0; i < c->ntiers; i++)
		t += c->retry_tiers[i];
	return t;
}

/* One report for these recipients: a bounce for those that failed in this
 * attempt, or (success) a delivery report for NOTIFY=SUCCESS. */
static ms_status bounce(ms_spool *sp, const ms_sched_opts *o, const ms_envelope *e,
                        const ms_dsn_rcpt *fails, size_t n, int64_t now, int kind,
                        char *id_out, ms_error *err)
{
	const ms_conf *c = o->conf;
	ms_buf hdr, msg, full;
	ms_buf_init(&hdr, MS_HDR_MAX);
	ms_buf_init(&full, MS_DSN_FULL_MAX);
	ms_buf_init(&msg, MS_HDR_MAX + (64u << 10) + n * 4096 + MS_DSN_FULL_MAX);
	int dfd = -1, mfd = -1;
	uint64_t body_off;
	if (ms_spool_open_data(sp, e->id, &dfd, NULL) == MS_OK) {
		ms_hdr_read(dfd, &hdr, &body_off, NULL); /* without it, a bounce without headers */
		if (e->dsn_ret == MS_DSN_RET_FULL && kind != MS_DSN_DELAYED)
			read_full(dfd, e, &full); /* RFC 3461 4.3: RET is for failures */
	}
	ms_dsn d = { .reporting_mta = c->hostname, .queue_id = e->id, .sender = e->sender,
		         .arrival = e->arrival, .rcpts = fails, .nrcpts = n,
		         .headers = ms_buf_ptr(&hdr), .headers_len = ms_buf_avail(&hdr),
		         .full = ms_buf_avail(&full) ? ms_buf_ptr(&full) : NULL,
		         .full_len = ms_buf_avail(&full), .envid = e->dsn_envid, .kind = kind,
		         .retry_until = kind == MS_DSN_DELAYED ? retry_until(c, e) : 0,
		         .now = now };
	ms_status st = ms_dsn_build(&d, &msg, err);
	if (st == MS_OK && (mfd = memfd_create("mailspool-dsn", MFD_CLOEXEC)) < 0)
		st = ms_error_set(err, MS_ERR_IO, "cannot make the bounce: memfd_create failed");
	if (st == MS_OK) {
		if (ms_write_all(mfd, ms_buf_ptr(&msg), ms_buf_avail(&msg)) < 0)
			st = ms_error_set(err, MS_ERR_IO, "cannot make the bounce: write failed");
	}
	if (st == MS_OK && lseek(mfd, 0, SEEK_SET) != 0)
		st = ms_error_set(err, MS_ERR_IO, "cannot make the bounce: lseek failed");
	if (st == MS_OK) {
		const char *rcpt[1] = { e->sender };
		ms_submit_opts so = { .sender = "", .user = "MAILER-DAEMON", .rcpts = rcpt, .nrcpts = 1 };
		ms_submit_result res;
		st = ms_submit(sp, c, &so, mfd, &res, err);
		if (st == MS_OK)
			snprintf(id_out, MS_ENV_ID_MAX + 1, "%s", res.id);
	}
	if (dfd >= 0)
		close(dfd);
	if (mfd >= 0)
		close(mfd);
	ms_buf_free(&hdr);
	ms_buf_free(&full);
	ms_buf_free(&msg);
	return st;
}

/* Queue a report that is not a bounce (relayed, delayed) to the sender,
 * count it in sum and log what became of it. */
static ms_status queue_report(ms_spool *sp, const ms_sched_opts *o, const ms_envelope *e,
                              const ms_dsn_rcpt *rcpts, size_t n, int64_t now, int kind,
                              ms_sched_summary *sum)
{
	const char *what = kind == MS_DSN_DELAYED ? "delay" : "delivery";
	char id[MS_ENV_ID_MAX + 1] = "";
	ms_error err;
	ms_status st = bounce(sp, o, e, rcpts, n, now, kind, id, &err);
	if (st == MS_OK)
		sum->reports[kind == MS_DSN_DELAYED ? 1 : 2]++;
	else
		sum->report_failures++;
	if (o->log) {
		char line[MS_LOG_LINE_MAX], why[MS_PRINTABLE_SIZE(512)];
		if (st == MS_OK)
			snprintf(line, sizeof line, "%s: sender %s notification: %s", e->id, what, id);
		else
			snprintf(line, sizeof line, "%s: cannot queue the %s notification: %s", e->id, what,
			         ms_printable(err.msg, strnlen(err.msg, 512), why, sizeof why));
		o->log(o->log_ctx, line);
	}
	return st;
}

ms_status ms_sched_settle(ms_spool *sp, const ms_sched_opts *o, ms_envelope *e,
                          const ms_sched_result *res, size_t n, ms_sched_summary *sum,
                          ms_error *err)
{
	const ms_conf *c = o->conf;
	int64_t now = o->now ? o->now : (int64_t)time(NULL);
	memset(sum, 0, sizeof *sum);
	ms_dsn_rcpt *fails = calloc(n ? n : 1, sizeof *fails);
	char (*mta)[MS_RELAY_DESC_MAX] = calloc(n ? n : 1, sizeof *mta);
	if (!fails || !mta) {
		free(fails);
		free(mta);
		return ms_error_set(err, MS_ERR_NOMEM, "out of memory");
	}
	size_t nfail = 0, ngood = 0;
	ms_status st = MS_OK;
	const char **status = calloc(n ? n : 1, sizeof *status);
	/* Delivered recipients that asked to hear of it (NOTIFY=SUCCESS). */
	ms_dsn_rcpt *goods = calloc(n ? n : 1, sizeof *goods);
	char (*gmta)[MS_RELAY_DESC_MAX] = calloc(n ? n : 1, sizeof *gmta);
	if (!gmta) {
		free(goods);
		goods = NULL;
	}
	/* delay_warning: deferred recipients of a message this old that has
	 * not warned yet (one warning per message, like Postfix and Exim). */
	int late = c->delay_warning > 0 && e->sender[0] && !(e->flags & MS_ENV_WARNED) &&
	           now - e->arrival >= c->delay_warning;
	size_t nlate = 0;
	ms_dsn_rcpt *lates = late ? calloc(n ? n : 1, sizeof *lates) : NULL;
	char (*lmta)[MS_RELAY_DESC_MAX] = late ? calloc(n ? n : 1, sizeof *lmta) : NULL;
	if (!lates || !lmta)
		late = 0; /* out of memory: no warning this time, the next attempt tries */
		/* Bounces that could not be queued before come first: their
	 * recipients failed then; each keeps its last reply for the DSN. */
	int *was_bouncing = calloc(e->nrcpts ? e->nrcpts : 1, sizeof *was_bouncing);
	size_t fcap = n;
	for (size_t i = 0; i < e->nrcpts; i++)
		if (e->rcpts[i].state == MS_ENV_BOUNCING)
			fcap++;
	if (fcap > n) {
		ms_dsn_rcpt *f2 = realloc(fails, fcap * sizeof *f2);
		char (*m2)[MS_RELAY_DESC_MAX] = f2 ? realloc(mta, fcap * sizeof *m2) : NULL;
		if (f2)
			fails = f2;
		if (m2)
			mta = m2;
		if (!f2 || !m2)
			st = ms_error_set(err, MS_ERR_NOMEM, "out of memory");
	}
	for (size_t i = 0; st == MS_OK && was_bouncing && i < e->nrcpts; i++) {
		ms_env_rcpt *r = &e->rcpts[i];
		if (r->state != MS_ENV_BOUNCING)
			continue;
		was_bouncing[i] = 1;
		r->state = MS_ENV_FAILED;
		r->next = INT64_MAX;
		mta[nfail][0] = '\0';
		fails[nfail] = (ms_dsn_rcpt){ .addr = r->addr, .code = r->code, .enh = r->enh,
			                          .text = r->text ? r->text : "",
			                          .remote_mta = mta[nfail], .last_attempt = r->last,
			                          .orcpt = r->orcpt };
		nfail++;
	}
	if (!was_bouncing && st == MS_OK)
		st = ms_error_set(err, MS_ERR_NOMEM, "out of memory");
	for (size_t i = 0; i < n && st == MS_OK && status; i++) {
		const ms_sched_result *s = &res[i];
		if (s->rcpt >= e->nrcpts)
			continue;
		ms_env_rcpt *r = &e->rcpts[s->rcpt];
		if (r->state == MS_ENV_DELIVERED || r->state == MS_ENV_FAILED)
			continue; /* final states stay final */
		if ((st = ms_env_record_attempt(r, now, s->code, s->enh, s->text, s->tls, err)) != MS_OK)
			break;
		if (s->state == MS_RCPT_DELIVERED) {
			r->state = MS_ENV_DELIVERED;
			status[i] = "sent";
			sum->delivered++;
			/* B6: asked to hear of success, and the server took the
			 * mail without taking the request on: we report. */
			if (ms_dsn_wants(r->notify, MS_NOTIFY_SUCCESS) && !s->dsn_passed && goods) {
				size_t g = ngood++;
				relay_host(s->relay, gmta[g], sizeof gmta[g]);
				goods[g] = (ms_dsn_rcpt){ .addr = r->addr, .code = s->code, .enh = s->enh,
					                      .text = s->text, .remote_mta = gmta[g],
					                      .last_attempt = now, .orcpt = r->orcpt };
			}
			continue;
		}
		if (s->state != MS_RCPT_FAILED && r->tier + 1 < c->ntiers) {
			r->tier++;
			r->state = MS_ENV_DEFERRED;
			r->next = now + c->retry_tiers[r->tier];
			status[i] = "deferred";
			sum->deferred++;
			if (late && ms_dsn_wants(r->notify, MS_NOTIFY_DELAY)) {
				size_t k = nlate++;
				relay_host(s->relay, lmta[k], sizeof lmta[k]);
				lates[k] = (ms_dsn_rcpt){ .addr = r->addr, .code = s->code, .enh = s->enh,
					                      .text = s->text, .remote_mta = lmta[k],
					                      .last_attempt = now, .orcpt = r->orcpt };
			}
			continue;
		}
		/* Refused for good, or the last tier failed too. */
		r->state = MS_ENV_FAILED;
		r->next = INT64_MAX;
		sum->failed++;
		if (!ms_dsn_wants(r->notify, MS_NOTIFY_FAILURE)) {
			/* B5: NOTIFY=NEVER (or without FAILURE): failed, not reported. */
			status[i] = "failed";
			continue;
		}
		status[i] = "bounced";
		if (was_bouncing)
			was_bouncing[s->rcpt] = 2; /* failed in this call */
		relay_host(s->relay, mta[nfail], sizeof mta[nfail]);
		fails[nfail] = (ms_dsn_rcpt){ .addr = r->addr, .code = s->code, .enh = s->enh,
			                          .text = s->text, .remote_mta = mta[nfail],
			                          .last_attempt = now, .orcpt = r->orcpt };
		nfail++;
	}
	if (!status && st == MS_OK)
		st = ms_error_set(err, MS_ERR_NOMEM, "out of memory");
	/* A bounce that cannot be queued (its recipient, the sender, is
	 * unusable; the disk is full) is logged, never retried by keeping the
	 * envelope as it was: that would deliver the delivered recipients
	 * again (B1: a failed bounce is logged). */
	ms_error berr;
	ms_status bst = MS_OK;
	if (st == MS_OK && nfail && o->bounce && e->sender[0]) {
		/* Our own bounces may use the reserve under min_free_space. */
		ms_spool_reserve(sp, 1);
		bst = bounce(sp, o, e, fails, nfail, now, MS_DSN_FAILED, sum->bounce_id, &berr);
		ms_spool_reserve(sp, 0);
		if (bst == MS_OK)
			sum->reports[0]++;
		else
			sum->report_failures++;
	}
	/* A delivery report that cannot be queued is logged, not kept: the
	 * mail itself is delivered. */
	if (st == MS_OK && ngood && o->bounce && e->sender[0])
		queue_report(sp, o, e, goods, ngood, now, MS_DSN_RELAYED, sum);
	/* A delay warning that cannot be queued is tried again at the next
	 * deferral: the flag is set only once one is queued. */
	if (st == MS_OK && nlate && o->bounce &&
	    queue_report(sp, o, e, lates, nlate, now, MS_DSN_DELAYED, sum) == MS_OK)
		e->flags |= MS_ENV_WARNED;
	if (bst != MS_OK) {
		/* Not lost: the failed recipients wait, BOUNCING, and the message
		 * stays until their bounce is queued. */
		for (size_t i = 0; i < e->nrcpts; i++)
			if (e->rcpts[i].state == MS_ENV_FAILED &&
			    was_bouncing[i]) {
				e->rcpts[i].state = MS_ENV_BOUNCING;
				e->rcpts[i].next = now + bounce_retry(c);
			}
		if (o->log) {
			char line[MS_LOG_LINE_MAX], who[MS_PRINTABLE_SIZE(256)], why[MS_PRINTABLE_SIZE(512)];
			snprintf(line, sizeof line,
			         "%s: cannot queue the non-delivery notification to <%s>: %s; kept, tried "
			         "again in %llds",
			         e->id, ms_printable_str(e->sender, who, sizeof who),
			         ms_printable(berr.msg, strnlen(berr.msg, 512), why, sizeof why),
			         (long long)bounce_retry(c));
			o->log(o->log_ctx, line);
		}
	}
	if (st == MS_OK) {
		for (size_t i = 0; i < n; i++)
			if (status[i])
				log_result(o, e, &e->rcpts[res[i].rcpt], &res[i], status[i], now);
		char line[MS_LOG_LINE_MAX];
		if (nfail && o->bounce && o->log && (sum->bounce_id[0] || !e->sender[0])) {
			if (sum->bounce_id[0])
				snprintf(line, sizeof line, "%s: sender non-delivery notification: %s", e->id,
				         sum->bounce_id);
			else
				snprintf(line, sizeof line,
				         "%s: no non-delivery notification: the sender is <> (RFC 5321 6.1)",
				         e->id);
			o->log(o->log_ctx, line);
		}
		if (sum->delivered)
			ms_spool_usage(sp, "sent", e->size, e->id, NULL);
		sum->next_due = ms_env_next_due(e);
		if (sum->next_due == INT64_MAX) {
			st = ms_spool_remove(sp, e->id, err);
			sum->removed = st == MS_OK;
			if (sum->removed && o->log) {
				snprintf(line, sizeof line, "%s: removed", e->id);
				o->log(o->log_ctx, line);
			}
		} else {
			st = ms_spool_update(sp, e, err);
		}
	}
	free(status);
	free(was_bouncing);
	free(fails);
	free(goods);
	free(gmta);
	free(lates);
	free(lmta);
	free(mta);
	return st;
}

ms_status ms_sched_plan_make(const ms_conf *c, const ms_envelope *e, int64_t now,
                             ms_sched_plan *p, ms_error *err)
{
	memset(p, 0, sizeof *p);
	size_t cap = e->nrcpts ? e->nrcpts : 1;
	size_t *due = malloc(cap * sizeof *due);
	size_t *gof = malloc(cap * sizeof *gof); /* group of each due recipient */
	p->groups = calloc(cap, sizeof *p->groups);
	p->unroutable = calloc(cap, sizeof *p->unroutable);
	ms_hmap byname; /* key -> group index + 1: one lookup per recipient */
	ms_hmap_init(&byname);
	ms_status st = MS_OK;
	if (!due || !gof || !p->groups || !p->unroutable) {
		st = ms_error_set(err, MS_ERR_NOMEM, "out of memory");
		goto out;
	}
	for (size_t i = 0; i < e->nrcpts && !(e->flags & MS_ENV_HOLD); i++)
		if (e->rcpts[i].state == MS_ENV_BOUNCING && e->rcpts[i].next <= now)
			p->bounce_due = 1;
	/* A first attempt's time was set by the submitting host's clock,
	 * which may run ahead of ours: within clock_skew it is due now. */
	size_t ndue = ms_sched_due_skew(e, now, c->clock_skew, due);
	/* Pass 1: each recipient's key and group; pass 2: exact-size index
	 * arrays, so a message to 10,000 domains costs 10,000 lookups and one
	 * allocation per group. */
	for (size_t i = 0; i < ndue; i++) {
		char key[MS_DEST_MAX];
		ms_error kerr;
		gof[i] = SIZE_MAX;
		if (ms_dest_for(c, e->sender, e->rcpts[due[i]].addr, key, sizeof key, &kerr) != MS_OK) {
			ms_sched_result *r = &p->unroutable[p->nunroutable++];
			r->rcpt = due[i];
			r->state = MS_RCPT_DEFERRED;
			snprintf(r->enh, sizeof r->enh, "4.3.5");
			snprintf(r->text, sizeof r->text, "%s", kerr.msg);
			snprintf(r->relay, sizeof r->relay, "none");
			continue;
		}
		size_t g = (size_t)(uintptr_t)ms_hmap_get(&byname, key);
		if (g == 0) {
			g = p->ngroups;
			memcpy(p->groups[g].key, key, sizeof key);
			p->ngroups++;
			if (ms_hmap_put(&byname, key, (void *)(uintptr_t)(g + 1)) < 0) {
				st = ms_error_set(err, MS_ERR_NOMEM, "out of memory");
				goto out;
			}
		} else {
			g--;
		}
		gof[i] = g;
		p->groups[g].n++;
	}
	for (size_t g = 0; g < p->ngroups; g++) {
		if (!(p->groups[g].idx = malloc(p->groups[g].n * sizeof *p->groups[g].idx))) {
			st = ms_error_set(err, MS_ERR_NOMEM, "out of memory");
			goto out;
		}
		p->groups[g].n = 0;
	}
	for (size_t i = 0; i < ndue; i++)
		if (gof[i] != SIZE_MAX)
			p->groups[gof[i]].idx[p->groups[gof[i]].n++] = due[i];
out:
	ms_hmap_free(&byname);
	free(due);
	free(gof);
	if (st != MS_OK)
		ms_sched_plan_free(p);
	return st;
}

void ms_sched_plan_free(ms_sched_plan *p)
{
	for (size_t i = 0; p->groups && i < p->ngroups; i++)
		free(p->groups[i].idx);
	free(p->groups);
	free(p->unroutable);
	memset(p, 0, sizeof *p);
}

typedef struct attempt_ctx {
	const size_t *idx;
	ms_sched_result *out;
	size_t n;
} attempt_ctx;

static void collect(void *ctx, ms_message *m, const char *relay)
{
	attempt_ctx *a = ctx;
	ms_sched_results(m, a->idx, relay, a->out + a->n);
	a->n += m->nrcpts;
}

ms_status ms_sched_deliver_mode(ms_spool *sp, const ms_conf *c, const char *id,
                                ms_sched_mode mode, ms_envelope *e, ms_sched_result **res,
                                size_t *nres, int *busy, ms_error *err)
{
	ms_claim cl;
	*res = NULL;
	*nres = 0;
	*busy = 0;
	ms_env_init(e);
	if (ms_spool_claim(sp, id, c->hostname, &cl, NULL) != MS_OK) {
		*busy = 1; /* a daemon is delivering it: it is queued, that is all */
		return MS_OK;
	}
	ms_status st = ms_spool_read(sp, id, e, err);
	if (st == MS_OK) {
		e->flags &= ~(uint32_t)MS_ENV_HOLD;
		st = ms_sched_attempt(sp, c, e, NULL, res, nres, err);
	}
	if (st == MS_OK && mode == MS_MODE_NOW) {
		st = ms_spool_remove(sp, id, err);
	} else if (st == MS_OK) {
		/* No bounces: the caller tells the submitter, who is right here. */
		ms_sched_summary sum;
		ms_sched_opts so = { .conf = c, .bounce = 0 };
		st = ms_sched_settle(sp, &so, e, *res, *nres, &sum, err);
	} else if (mode == MS_MODE_NOW) {
		ms_spool_remove(sp, id, NULL); /* now queues nothing, even on failure */
	}
	ms_spool_release(sp, &cl, NULL);
	return st;
}

ms_status ms_sched_attempt(ms_spool *sp, const ms_conf *c, const ms_envelope *e,
                           ms_transcript *tx, ms_sched_result **res, size_t *nres, ms_error *err)
{
	*res = NULL;
	*nres = 0;
	ms_sched_plan plan;
	ms_status st = ms_sched_plan_make(c, e, (int64_t)time(NULL), &plan, err);
	if (st != MS_OK)
		return st;
	ms_sched_result *out = calloc(e->nrcpts ? e->nrcpts : 1, sizeof *out);
	if (!out) {
		ms_sched_plan_free(&plan);
		return ms_error_set(err, MS_ERR_NOMEM, "out of memory");
	}
	memcpy(out, plan.unroutable, plan.nunroutable * sizeof *out);
	size_t nout = plan.nunroutable;
	/* MTA-STS policies and TLS-RPT counts: the spool's, shared with the
	 * daemon's agents. */
	ms_sts_cache *sts = ms_sts_cache_new(sp);
	ms_tlsrpt *rpt = ms_tlsrpt_new(sp);
	/* One session per destination, for all of its recipients. */
	for (size_t g = 0; g < plan.ngroups && st == MS_OK; g++) {
		const ms_sched_group *gr = &plan.groups[g];
		ms_message *m;
		int fd;
		if ((st = ms_sched_message(sp, e, gr->idx, gr->n, &m, &fd, err)) != MS_OK)
			break;
		attempt_ctx a = { gr->idx, out, nout };
		ms_deliver_opts dopt = { .conf = c, .transcript = tx, .on_result = collect, .ctx = &a,
			                     .sts = sts, .tlsrpt = rpt };
		ms_deliver_report rep;
		st = ms_deliver(&dopt, gr->key, &m, 1, &rep, err);
		nout = a.n;
		ms_message_free(m);
		close(fd);
	}
	ms_sched_plan_free(&plan);
	ms_sts_cache_free(sts);
	ms_tlsrpt_free(rpt);
	if (st != MS_OK) {
		free(out);
		return st;
	}
	*res = out;
	*nres = nout;
	return MS_OK;
}
