/*
 * agent.c - the delivery agent's grammars and its serve loop (see
 * mailspool/agent.h).
 *
 * Threads: the caller's thread reads the work and starts one detached
 * thread per unit; a reaper thread closes parked sessions that have been
 * idle too long.  Shared state is the token count (mutex + condition),
 * the output pipe (a mutex per line, so lines of different units never
 * interleave), the DNS cache and the session pool (each locks itself).
 *
 * Why threads and not one event loop: the SMTP and QMTP engines are
 * written as blocking calls with a deadline on every wait (mailspool/io.h
 * ms_io_pump), which keeps each protocol's state machine readable; a
 * thread per session keeps them as they are and still costs little - the
 * stack is MS_AGENT_STACK of address space, of which a session touches a
 * few pages, and the engines' buffers grow only with what is in flight.
 */
#include "mailspool/agent.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "mailspool/deliver.h"
#include "mailspool/dnscache.h"
#include "mailspool/message.h"
#include "mailspool/dsnreq.h"
#include "mailspool/pool.h"
#include "mailspool/quirks.h"
#include "mailspool/sts.h"
#include "mailspool/tlsrpt.h"
#include "mailspool/io.h"

/* ---- the scheduler's side ------------------------------------------------ */

static ms_status put_field(ms_buf *b, const char *s)
{
	ms_status st = ms_buf_append(b, "=", 1);
	return st == MS_OK ? ms_env_escape(b, s, strlen(s)) : st;
}

ms_status ms_agent_work_begin(ms_buf *b, uint64_t unit, int64_t deadline, size_t conn_messages,
                              const char *key)
{
	ms_status st = ms_buf_printf(b, "K %llu %lld %zu ", (unsigned long long)unit,
	                             (long long)deadline, conn_messages);
	if (st == MS_OK)
		st = put_field(b, key);
	return st == MS_OK ? ms_buf_append(b, "\n", 1) : st;
}

ms_status ms_agent_work_message(ms_buf *b, size_t item, const ms_envelope *e, const size_t *idx,
                                size_t n, const char *dest)
{
	ms_status st = ms_buf_printf(b, "M %zu %s %llu ", item, e->id, (unsigned long long)e->size);
	if (st == MS_OK)
		st = put_field(b, e->sender);
	if (st == MS_OK)
		st = ms_buf_printf(b, " %zu ", n);
	if (st == MS_OK)
		st = put_field(b, dest);
	if (st == MS_OK)
		st = ms_buf_printf(b, " %d ", e->dsn_ret);
	if (st == MS_OK)
		st = put_field(b, e->dsn_envid ? e->dsn_envid : "");
	if (st == MS_OK)
		st = ms_buf_append(b, "\n", 1);
	if (st == MS_OK && e->prefix) {
		st = ms_buf_append(b, "P ", 2);
		if (st == MS_OK)
			st = put_field(b, e->prefix);
		if (st == MS_OK)
			st = ms_buf_append(b, "\n", 1);
	}
	for (size_t i = 0; i < n && st == MS_OK; i++) {
		const ms_env_rcpt *r = &e->rcpts[idx[i]];
		st = ms_buf_printf(b, "T %zu ", idx[i]);
		if (st == MS_OK)
			st = put_field(b, r->addr);
		if (st == MS_OK)
			st = ms_buf_printf(b, " %u ", r->notify);
		if (st == MS_OK)
			st = put_field(b, r->orcpt ? r->orcpt : "");
		if (st == MS_OK)
			st = ms_buf_append(b, "\n", 1);
	}
	return st;
}

ms_status ms_agent_work_end(ms_buf *b)
{
	return ms_buf_append(b, "E\n", 2);
}

/* "=escaped" at p up to a space or the end: a new string, or NULL. */
static char *field(const char *p, const char **end, size_t max)
{
	if (*p != '=')
		return NULL;
	const char *e = p + 1 + strcspn(p + 1, " ");
	if (end)
		*end = e;
	return ms_env_unescape(p + 1, (size_t)(e - p - 1), max);
}

void ms_agent_parse_result(const char *line, ms_agent_result *out)
{
	memset(out, 0, sizeof *out);
	unsigned long long unit;
	int off = 0;
	char k = line[0];
	if (!k || line[1] != ' ' || sscanf(line + 2, "%llu%n", &unit, &off) != 1)
		return;
	out->unit = unit;
	const char *p = line + 2 + off;
	switch (k) {
	case 'U': case 'H': case 'X':
		if (!*p)
			out->kind = k;
		return;
	case 'C': {
		ms_metrics_conn *c = &out->conn;
		unsigned long long v[9];
		int used = 0;
		if (sscanf(p, " %llu %llu %llu %llu %llu %llu %llu %llu %llu%n", &v[0], &v[1], &v[2],
		           &v[3], &v[4], &v[5], &v[6], &v[7], &v[8], &used) == 9 && !p[used]) {
			c->connections = v[0], c->reused = v[1], c->tls_verified = v[2];
			c->tls_unverified = v[3], c->plain = v[4], c->dns_ok = v[5];
			c->dns_temp = v[6], c->dns_perm = v[7], c->dns_cached = v[8];
			out->kind = 'C';
		}
		return;
	}
	case 'S': {
		char *site = *p == ' ' ? field(p + 1, NULL, MS_DEST_MAX - 1) : NULL;
		if (site) {
			snprintf(out->site, sizeof out->site, "%s", site);
			out->kind = 'S';
		}
		free(site);
		return;
	}
	case 'D': case 'N': {
		int used = 0;
		if (sscanf(p, " %zu %d%n", &out->item, &out->token, &used) == 2 && !p[used] &&
		    (out->token == 0 || out->token == 1))
			out->kind = k;
		return;
	}
	case 'R': {
		ms_sched_result *r = &out->r;
		int state, dsn, used = 0;
		char enh[32];
		if (sscanf(p, " %zu %zu %d %d %d %31s %n", &out->item, &r->rcpt, &state, &r->code, &dsn,
		           enh, &used) < 6 ||
		    !used || state < 0 || state > MS_RCPT_FAILED || (dsn != 0 && dsn != 1))
			return;
		r->dsn_passed = dsn;
		const char *q = p + used, *end;
		char *relay = field(q, &end, MS_RELAY_DESC_MAX - 1);
		const char *tend = NULL;
		char *text = relay && *end == ' ' ? field(end + 1, &tend, MS_ENV_TEXT_MAX - 1) : NULL;
		char *tls = text && *tend == ' ' ? field(tend + 1, NULL, MS_MESSAGE_TLS_MAX - 1) : NULL;
		snprintf(r->tls, sizeof r->tls, "%s", tls ? tls : "");
		free(tls);
		r->state = (ms_rcpt_state)state;
		snprintf(r->enh, sizeof r->enh, "%.15s", strcmp(enh, "-") ? enh : "");
		snprintf(r->relay, sizeof r->relay, "%s", relay ? relay : "none");
		snprintf(r->text, sizeof r->text, "%s", text ? text : "(unreadable result)");
		free(relay);
		free(text);
		out->kind = 'R';
		return;
	}
	default:
		return;
	}
}

/* ---- the agent's side ---------------------------------------------------- */

typedef struct agent agent;

typedef struct work_msg {
	size_t item;
	ms_envelope env;  /* id, size, sender and just this unit's recipients */
	size_t *idx;      /* their indexes in the queued envelope */
	char *dest;       /* its destination key (a domain's, within a site) */
	int fd;
	int token;        /* its result holds one of the agent's tokens */
} work_msg;

typedef struct unit {
	agent *a;
	uint64_t id;
	int64_t deadline;     /* wall clock: start nothing after it */
	size_t conn_messages;
	char *key;
	work_msg *msgs;
	size_t n, cap;
} unit;

struct agent {
	const ms_conf *conf;
	ms_spool *sp;
	int out_fd;
	pthread_mutex_t out_mu;
	int broken;           /* the scheduler stopped reading */
	pthread_mutex_t mu;   /* tokens, running, stopping */
	pthread_cond_t cv;    /* running, stopping, the lease (the reaper, the end) */
	pthread_cond_t token_cv; /* a token came back, or stopping */
	size_t token_waiters; /* sessions waiting in take_token */
	size_t tokens;        /* free */
	size_t running;       /* unit threads alive */
	int64_t lease_until;  /* wall clock: the scheduler's claims hold until then (L) */
	int stopping;
	ms_pool *pool;
	ms_dns_cache *dns;
	ms_quirks *quirks; /* what servers cannot take, for all units */
	ms_sts_cache *sts; /* MTA-STS policies, kept in the spool's sts/ */
	ms_tlsrpt *tlsrpt; /* TLS-RPT counts, appended to the spool's tlsrpt/ */
};

static void say(agent *a, const char *p, size_t n)
{
	pthread_mutex_lock(&a->out_mu);
	if (!a->broken && ms_write_all(a->out_fd, p, n) < 0)
		a->broken = 1;
	pthread_mutex_unlock(&a->out_mu);
}

static void sayf(agent *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sayf(agent *a, const char *fmt, ...)
{
	char line[256];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(line, sizeof line, fmt, ap);
	va_end(ap);
	if (n > 0 && (size_t)n < sizeof line)
		say(a, line, (size_t)n);
}

/* ---- tokens ---- */

/* The scheduler renews its claims and says so (L); a unit's own deadline
 * is the first such promise.  Past both, nothing more is started. */
#define UNTIL(a, u) ((a)->lease_until > (u)->deadline ? (a)->lease_until : (u)->deadline)

static int past_deadline(unit *u)
{
	agent *a = u->a;
	pthread_mutex_lock(&a->mu);
	int64_t until = UNTIL(a, u);
	pthread_mutex_unlock(&a->mu);
	return (int64_t)time(NULL) >= until;
}

/* Context of one ms_deliver call: the unit and the messages it carries. */
typedef struct call {
	unit *u;
	work_msg **w;   /* w[m->id] */
} call;

/* Before each message goes to its session: the deadline. */
static int admit(void *ctx)
{
	call *c = ctx;
	return !past_deadline(c->u);
}

/* A result is known: a token before it is reported, waiting (and so not
 * reading this session's further replies) while the agent already has
 * `tokens` results the scheduler has not committed.  The scheduler commits
 * every round and gives tokens back (A), so the wait is short unless the
 * scheduler has stopped - which is the point. */
static int take_token(agent *a)
{
	pthread_mutex_lock(&a->mu);
	a->token_waiters++;
	while (a->tokens == 0 && !a->stopping)
		pthread_cond_wait(&a->token_cv, &a->mu);
	a->token_waiters--;
	int ok = a->tokens > 0;
	if (ok)
		a->tokens--;
	pthread_mutex_unlock(&a->mu);
	return ok;
}

/* n tokens back: n waiters woken, not all of them (with a thousand
 * sessions waiting, a broadcast per A line was a thundering herd). */
static void give_back(agent *a, size_t n)
{
	if (!n)
		return;
	pthread_mutex_lock(&a->mu);
	a->tokens += n;
	for (size_t i = 0; i < n && i < a->token_waiters; i++)
		pthread_cond_signal(&a->token_cv);
	pthread_mutex_unlock(&a->mu);
}

static void report(unit *u, work_msg *w, const ms_message *m, const char *relay)
{
	agent *a = u->a;
	if (ms_message_untried(m)) {
		sayf(a, "N %llu %zu 0\n", (unsigned long long)u->id, w->item);
		return;
	}
	w->token = take_token(a);
	ms_sched_result *r = calloc(m->nrcpts ? m->nrcpts : 1, sizeof *r);
	if (!r) {
		/* Out of memory: not reported as complete, so the scheduler
		 * defers what is missing when the unit ends. */
		return;
	}
	ms_sched_results(m, w->idx, relay, r);
	ms_buf line;
	ms_buf_init(&line, 0);
	for (size_t i = 0; i < m->nrcpts; i++) {
		ms_buf_reset(&line);
		if (ms_buf_printf(&line, "R %llu %zu %zu %d %d %d %s ", (unsigned long long)u->id,
		                  w->item, r[i].rcpt, (int)r[i].state, r[i].code, r[i].dsn_passed,
		                  r[i].enh[0] ? r[i].enh : "-") == MS_OK &&
		    put_field(&line, r[i].relay) == MS_OK && ms_buf_append(&line, " ", 1) == MS_OK &&
		    put_field(&line, r[i].text) == MS_OK && ms_buf_append(&line, " ", 1) == MS_OK &&
		    put_field(&line, r[i].tls) == MS_OK && ms_buf_append(&line, "\n", 1) == MS_OK)
			say(a, ms_buf_ptr(&line), ms_buf_avail(&line));
	}
	ms_buf_reset(&line);
	if (ms_buf_printf(&line, "D %llu %zu %d\n", (unsigned long long)u->id, w->item, w->token) ==
	    MS_OK)
		say(a, ms_buf_ptr(&line), ms_buf_avail(&line));
	ms_buf_free(&line);
	free(r);
}

static void on_result(void *ctx, ms_message *m, const char *relay)
{
	call *c = ctx;
	work_msg *w = c->w[m->id];
	report(c->u, w, m, relay);
	if (w->fd >= 0) {
		close(w->fd); /* the engine is done with this message */
		w->fd = -1;
	}
}

/* ---- one unit ---- */

static void unit_free(unit *u)
{
	for (size_t i = 0; i < u->n; i++) {
		ms_env_free(&u->msgs[i].env);
		free(u->msgs[i].idx);
		free(u->msgs[i].dest);
		if (u->msgs[i].fd >= 0)
			close(u->msgs[i].fd);
	}
	free(u->msgs);
	free(u->key);
	free(u);
}

/* Deliver the unit's messages: those of destinations that resolve to the
 * same servers under the same policy (a site's domains) share sessions
 * and are pipelined together (ms_deliver_many). */
static void deliver_unit(unit *u, int *unreachable, int *throttled, char *site, size_t sitelen,
                         ms_metrics_conn *facts)
{
	agent *a = u->a;
	size_t n = u->n;
	ms_message **msgs = calloc(n, sizeof *msgs);
	work_msg **byid = calloc(n, sizeof *byid);
	const char **dests = calloc(n, sizeof *dests);
	size_t nm = 0;
	call c = { .u = u, .w = byid };
	for (size_t i = 0; msgs && byid && dests && i < n; i++) {
		work_msg *w = &u->msgs[i];
		size_t *all = calloc(w->env.nrcpts, sizeof *all);
		ms_error merr;
		ms_status st = all ? MS_OK : MS_ERR_NOMEM;
		for (size_t k = 0; all && k < w->env.nrcpts; k++)
			all[k] = k;
		if (st == MS_OK)
			st = ms_sched_message(a->sp, &w->env, all, w->env.nrcpts, &msgs[nm], &w->fd, &merr);
		free(all);
		if (st != MS_OK) {
			/* This one cannot even be read: deferred with the reason. */
			ms_message *m = ms_message_new(w->env.sender, NULL);
			if (!m)
				continue;
			for (size_t k = 0; k < w->env.nrcpts; k++)
				ms_message_add_rcpt(m, w->env.rcpts[k].addr, NULL);
			ms_message_settle(m, MS_RCPT_DEFERRED, MS_STAGE_LOCAL, 0, "4.3.0",
			                  st == MS_ERR_NOMEM ? "out of memory" : merr.msg);
			m->engaged = 1; /* an attempt: its data is what is wrong */
			report(u, w, m, "none");
			ms_message_free(m);
			continue;
		}
		byid[nm] = w;
		dests[nm] = w->dest;
		msgs[nm]->id = nm;
		nm++;
	}
	if (nm) {
		ms_deliver_opts dopt = { .conf = a->conf, .on_result = on_result, .ctx = &c,
			                     .pool = a->pool, .dns_cache = a->dns, .quirks = a->quirks,
			                     .sts = a->sts, .tlsrpt = a->tlsrpt,
			                     .conn_messages = u->conn_messages, .admit = admit };
		ms_deliver_report rep;
		ms_error derr;
		ms_deliver_many(&dopt, dests, msgs, nm, &rep, &derr);
		*unreachable = rep.unreachable;
		*throttled = rep.throttled;
		facts->connections += rep.connections;
		facts->reused += rep.reused;
		facts->tls_verified += rep.tls_verified;
		facts->tls_unverified += rep.tls_unverified;
		facts->plain += rep.plain;
		facts->dns_ok += rep.dns_lookups[MS_DELIVER_DNS_OK];
		facts->dns_cached += rep.dns_lookups[MS_DELIVER_DNS_CACHED];
		facts->dns_temp += rep.dns_lookups[MS_DELIVER_DNS_TEMP];
		facts->dns_perm += rep.dns_lookups[MS_DELIVER_DNS_PERM];
		if (!site[0] && rep.site[0])
			snprintf(site, sitelen, "%s", rep.site);
	} else {
		*unreachable = 0;
	}
	for (size_t i = 0; i < nm; i++)
		ms_message_free(msgs[i]);
	free(msgs);
	free(byid);
	free(dests);
}

static void *unit_run(void *arg)
{
	unit *u = arg;
	agent *a = u->a;
	int unreachable = 1, throttled = 0;
	char site[MS_DEST_MAX] = "";
	ms_metrics_conn facts = { 0 };
	/* A site's unit holds several domains: ms_deliver_many serves those
	 * that resolve alike with the same sessions. */
	if (u->n == 0) {
		/* A unit without messages asks where its destination goes: the
		 * scheduler groups domains by site before it hands any out. */
		ms_error rerr;
		ms_deliver_resolve(a->conf, a->dns, u->key, site, sizeof site, &rerr);
		unreachable = 0;
	}
	if (u->n)
		deliver_unit(u, &unreachable, &throttled, site, sizeof site, &facts);
	ms_buf line;
	ms_buf_init(&line, 0);
	if (site[0] && ms_buf_printf(&line, "S %llu ", (unsigned long long)u->id) == MS_OK &&
	    put_field(&line, site) == MS_OK && ms_buf_append(&line, "\n", 1) == MS_OK)
		say(a, ms_buf_ptr(&line), ms_buf_avail(&line));
	ms_buf_free(&line);
	if (unreachable && u->n)
		sayf(a, "U %llu\n", (unsigned long long)u->id);
	if (throttled)
		sayf(a, "H %llu\n", (unsigned long long)u->id);
	if (u->n)
		sayf(a, "C %llu %llu %llu %llu %llu %llu %llu %llu %llu %llu\n",
		     (unsigned long long)u->id, (unsigned long long)facts.connections,
		     (unsigned long long)facts.reused, (unsigned long long)facts.tls_verified,
		     (unsigned long long)facts.tls_unverified, (unsigned long long)facts.plain,
		     (unsigned long long)facts.dns_ok, (unsigned long long)facts.dns_temp,
		     (unsigned long long)facts.dns_perm, (unsigned long long)facts.dns_cached);
	sayf(a, "X %llu\n", (unsigned long long)u->id);
	unit_free(u);
	pthread_mutex_lock(&a->mu);
	a->running--;
	pthread_cond_broadcast(&a->cv);
	pthread_mutex_unlock(&a->mu);
	return NULL;
}

static void *reaper(void *arg)
{
	agent *a = arg;
	pthread_mutex_lock(&a->mu);
	while (!a->stopping) {
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_nsec += 250 * 1000000L;
		if (ts.tv_nsec >= 1000000000L) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000L;
		}
		pthread_cond_timedwait(&a->cv, &a->mu, &ts);
		pthread_mutex_unlock(&a->mu);
		ms_pool_expire(a->pool);
		pthread_mutex_lock(&a->mu);
	}
	pthread_mutex_unlock(&a->mu);
	return NULL;
}

/* ---- reading the work ---- */

typedef struct reader {
	unit *cur;
	size_t want; /* T lines still due for the last M */
	size_t bytes;
} reader;

static ms_status bad_work(ms_error *err, const char *what)
{
	return ms_error_set(err, MS_ERR_USAGE, "malformed work: %s", what);
}

static ms_status start_unit(agent *a, unit *u, ms_error *err)
{
	pthread_attr_t at;
	pthread_attr_init(&at);
	pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
	pthread_attr_setstacksize(&at, MS_AGENT_STACK);
	pthread_t t;
	pthread_mutex_lock(&a->mu);
	a->running++;
	pthread_mutex_unlock(&a->mu);
	int r = pthread_create(&t, &at, unit_run, u);
	pthread_attr_destroy(&at);
	if (r != 0) {
		pthread_mutex_lock(&a->mu);
		a->running--;
		pthread_mutex_unlock(&a->mu);
		/* No thread: every message goes back untouched. */
		for (size_t i = 0; i < u->n; i++)
			sayf(a, "N %llu %zu 0\n", (unsigned long long)u->id, u->msgs[i].item);
		sayf(a, "X %llu\n", (unsigned long long)u->id);
		unit_free(u);
		return ms_error_set(err, MS_ERR_NOMEM, "cannot start a session thread: %s",
		                    strerror(r));
	}
	return MS_OK;
}

static ms_status work_line(agent *a, reader *rd, char *l, ms_error *err)
{
	if (l[0] == 'L' && l[1] == ' ') {
		char *end;
		long long t = strtoll(l + 2, &end, 10);
		if (*end || t < 0)
			return bad_work(err, "L");
		pthread_mutex_lock(&a->mu);
		if (t > a->lease_until)
			a->lease_until = t;
		pthread_cond_broadcast(&a->cv);
		pthread_mutex_unlock(&a->mu);
		return MS_OK;
	}
	if (l[0] == 'A' && l[1] == ' ') {
		char *end;
		unsigned long n = strtoul(l + 2, &end, 10);
		if (*end || n > 1000000)
			return bad_work(err, "A");
		give_back(a, n);
		return MS_OK;
	}
	if (l[0] == 'K' && !rd->cur) {
		unit *u = calloc(1, sizeof *u);
		if (!u)
			return ms_error_set(err, MS_ERR_NOMEM, "out of memory");
		u->a = a;
		unsigned long long id;
		long long dl;
		int off = 0;
		if (sscanf(l, "K %llu %lld %zu %n", &id, &dl, &u->conn_messages, &off) < 3 || !off ||
		    !(u->key = field(l + off, NULL, MS_DEST_MAX - 1))) {
			free(u);
			return bad_work(err, "K");
		}
		u->id = id;
		u->deadline = dl;
		rd->cur = u;
		rd->bytes = 0;
		return MS_OK;
	}
	unit *u = rd->cur;
	if (!u)
		return bad_work(err, "a record outside a unit");
	if ((rd->bytes += strlen(l) + 1) > MS_AGENT_WORK_MAX)
		return ms_error_set(err, MS_ERR_USAGE, "a unit larger than %u octets", MS_AGENT_WORK_MAX);
	if (l[0] == 'M' && rd->want == 0) {
		if (u->n == u->cap) {
			size_t nc = u->cap ? u->cap * 2 : 16;
			work_msg *q = realloc(u->msgs, nc * sizeof *q);
			if (!q)
				return ms_error_set(err, MS_ERR_NOMEM, "out of memory");
			u->msgs = q;
			u->cap = nc;
		}
		work_msg *w = &u->msgs[u->n];
		memset(w, 0, sizeof *w);
		ms_env_init(&w->env);
		w->fd = -1;
		u->n++;
		char id[MS_ENV_ID_MAX + 2];
		unsigned long long size;
		int off = 0;
		if (sscanf(l, "M %zu %33s %llu %n", &w->item, id, &size, &off) < 3 || !off ||
		    !ms_env_id_ok(id))
			return bad_work(err, "M");
		const char *end, *end2, *end3;
		char *sender = field(l + off, &end, MS_ENV_TEXT_MAX);
		int used = 0, used2 = 0, ret = 0;
		size_t want = 0;
		char *envid = NULL;
		if (!sender || sscanf(end, " %zu %n", &want, &used) != 1 || !used || want == 0 ||
		    want > MS_ENV_MAX_RCPTS || !(w->dest = field(end + used, &end2, MS_DEST_MAX - 1)) ||
		    sscanf(end2, " %d %n", &ret, &used2) != 1 || !used2 || ret < 0 ||
		    ret > MS_DSN_RET_HDRS || !(envid = field(end2 + used2, &end3, MS_DSN_ENVID_MAX)) ||
		    *end3 || (*envid && ms_dsn_envid_check(envid, NULL) != MS_OK)) {
			free(sender);
			free(envid);
			return bad_work(err, "M");
		}
		w->env.dsn_ret = ret;
		if (*envid)
			w->env.dsn_envid = envid;
		else
			free(envid);
		snprintf(w->env.id, sizeof w->env.id, "%.32s", id);
		w->env.size = size;
		ms_status st = ms_env_set_sender(&w->env, sender, err);
		free(sender);
		if (st != MS_OK || !(w->idx = calloc(want, sizeof *w->idx)))
			return st != MS_OK ? st : ms_error_set(err, MS_ERR_NOMEM, "out of memory");
		rd->want = want;
		return MS_OK;
	}
	if (l[0] == 'P' && l[1] == ' ' && u->n && rd->want > 0 && !u->msgs[u->n - 1].env.nrcpts &&
	    !u->msgs[u->n - 1].env.prefix) {
		/* The header lines signed at commit (DKIM), before any T. */
		const char *end;
		char *prefix = field(l + 2, &end, MS_ENV_PREFIX_MAX);
		if (!prefix || !*prefix || *end) {
			free(prefix);
			return bad_work(err, "P");
		}
		u->msgs[u->n - 1].env.prefix = prefix;
		return MS_OK;
	}
	if (l[0] == 'T' && u->n && rd->want > 0) {
		work_msg *w = &u->msgs[u->n - 1];
		size_t ri;
		int off = 0;
		if (sscanf(l, "T %zu %n", &ri, &off) < 1 || !off)
			return bad_work(err, "T");
		const char *end, *end2;
		char *addr = field(l + off, &end, 1024), *orcpt = NULL;
		unsigned notify = 0;
		int used = 0;
		if (!addr || sscanf(end, " %u %n", &notify, &used) != 1 || !used ||
		    !ms_dsn_notify_ok(notify) || !(orcpt = field(end + used, &end2, 1024)) || *end2 ||
		    (*orcpt && ms_dsn_orcpt_check(orcpt, NULL) != MS_OK)) {
			free(addr);
			free(orcpt);
			return bad_work(err, "T");
		}
		w->idx[w->env.nrcpts] = ri;
		ms_status st = ms_env_add_rcpt(&w->env, addr, 0, err);
		free(addr);
		if (st == MS_OK) {
			ms_env_rcpt *r = &w->env.rcpts[w->env.nrcpts - 1];
			r->notify = notify;
			if (*orcpt) {
				r->orcpt = orcpt;
				orcpt = NULL;
			}
		}
		free(orcpt);
		if (st != MS_OK)
			return st;
		rd->want--;
		return MS_OK;
	}
	if (!strcmp(l, "E") && rd->want == 0) {
		rd->cur = NULL;
		return start_unit(a, u, err);
	}
	return bad_work(err, "unexpected record");
}

ms_status ms_agent_serve(const ms_conf *conf, ms_spool *sp, const ms_agent_opts *o, int in_fd,
                         int out_fd, ms_error *err)
{
	agent A;
	memset(&A, 0, sizeof A);
	agent *a = &A;
	a->conf = conf;
	a->sp = sp;
	a->out_fd = out_fd;
	a->tokens = o && o->tokens ? o->tokens : MS_AGENT_TOKENS_DEFAULT;
	pthread_mutex_init(&a->out_mu, NULL);
	pthread_mutex_init(&a->mu, NULL);
	pthread_cond_init(&a->cv, NULL);
	pthread_cond_init(&a->token_cv, NULL);
	a->pool = ms_pool_new(o ? o->idle_ms : 0, o && o->max_idle ? o->max_idle : 1000);
	ms_dns_cache_opts dco;
	ms_dns_cache_opts_default(&dco);
	a->dns = ms_dns_cache_new(&dco);
	a->quirks = ms_quirks_new(MS_QUIRKS_TTL_MS);
	/* The directories an agent writes, which are not the queue: the
	 * MTA-STS policy cache (without it, policies are kept in memory only)
	 * and the TLS-RPT counts. */
	a->sts = ms_sts_cache_new(sp);
	a->tlsrpt = ms_tlsrpt_new(sp);
	if (!a->pool || !a->dns || !a->quirks || !a->sts || !a->tlsrpt) {
		ms_pool_free(a->pool);
		ms_dns_cache_free(a->dns);
		ms_quirks_free(a->quirks);
		ms_sts_cache_free(a->sts);
		ms_tlsrpt_free(a->tlsrpt);
		return ms_error_set(err, MS_ERR_NOMEM, "out of memory");
	}
	pthread_t rt;
	int have_reaper = pthread_create(&rt, NULL, reaper, a) == 0;

	reader rd = { 0 };
	ms_status st = MS_OK;
	size_t cap = MS_AGENT_LINE_MAX * 2;
	char *buf = malloc(cap + 1);
	size_t len = 0;
	if (!buf)
		st = ms_error_set(err, MS_ERR_NOMEM, "out of memory");
	while (st == MS_OK) {
		ssize_t n = read(in_fd, buf + len, cap - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			/* The scheduler is done with us (or gone): no message is
			 * started any more; what is in flight finishes. */
			pthread_mutex_lock(&a->mu);
			a->stopping = 1;
			pthread_cond_broadcast(&a->cv);
			pthread_cond_broadcast(&a->token_cv);
			pthread_mutex_unlock(&a->mu);
			break;
		}
		len += (size_t)n;
		char *start = buf, *nl;
		while (st == MS_OK && (nl = memchr(start, '\n', len - (size_t)(start - buf)))) {
			*nl = '\0';
			st = work_line(a, &rd, start, err);
			start = nl + 1;
		}
		len -= (size_t)(start - buf);
		memmove(buf, start, len);
		if (len == cap && st == MS_OK)
			st = bad_work(err, "a line too long");
	}
	free(buf);
	if (rd.cur)
		unit_free(rd.cur); /* cut off before its E: never started */
	/* Let every running unit finish and report. */
	pthread_mutex_lock(&a->mu);
	a->stopping = 1;
	pthread_cond_broadcast(&a->token_cv);
	while (a->running)
		pthread_cond_wait(&a->cv, &a->mu);
	pthread_cond_broadcast(&a->cv);
	pthread_mutex_unlock(&a->mu);
	if (have_reaper)
		pthread_join(rt, NULL);
	ms_pool_free(a->pool);
	ms_dns_cache_free(a->dns);
	ms_quirks_free(a->quirks);
	ms_sts_cache_free(a->sts);
	ms_tlsrpt_free(a->tlsrpt);
	pthread_cond_destroy(&a->cv);
	pthread_cond_destroy(&a->token_cv);
	pthread_mutex_destroy(&a->mu);
	pthread_mutex_destroy(&a->out_mu);
	return st;
}
