/*
 * deliver.c - one destination's delivery (see mailspool/deliver.h).
 *
 * RFC 5321 5.1 (MX order and failover), 4.5.3.2 (timeouts, from the
 * configuration), 3.3 / 4.5.4.1 T3 (one copy per destination: all the
 * group's recipients of a message ride in one transaction).
 */
#include "mailspool/deliver.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mailspool/client.h"
#include "mailspool/dns.h"
#include "mailspool/sts.h"
#include "mailspool/tlsrpt.h"
#include "mailspool/net.h"
#include "mailspool/dnscache.h"
#include "mailspool/pool.h"
#include "mailspool/quirks.h"
#include "mailspool/relay.h"
#include "mailspool/route.h"

ms_status ms_dest_for(const ms_conf *c, const char *sender, const char *rcpt, char *key,
                      size_t n, ms_error *err)
{
	const char *at = strrchr(rcpt, '@');
	if (!at || !at[1] || strlen(at + 1) > 255)
		return ms_error_set(err, MS_ERR_USAGE, "recipient %s has no domain to route to", rcpt);
	char domain[256];
	size_t l = strlen(at + 1);
	for (size_t i = 0; i <= l; i++)
		domain[i] = (char)tolower((unsigned char)at[1 + i]);
	const ms_conf_route *r = ms_conf_route_for(c, domain);
	int w;
	switch (r->kind) {
	case MS_ROUTE_URL:
		w = snprintf(key, n, "url:%s", r->url);
		break;
	case MS_ROUTE_RELAYS:
	case MS_ROUTE_SENDER_RELAYS: {
		const ms_conf_relay *rl[MS_CONF_MAX_RELAYS];
		size_t k = 0;
		if (r->kind == MS_ROUTE_RELAYS)
			for (; k < r->nrelays; k++)
				rl[k] = &c->relays[r->relays[k]];
		else
			k = ms_conf_relays_for(c, sender, rl, MS_CONF_MAX_RELAYS);
		if (k == 0)
			return ms_error_set(err, MS_ERR_USAGE, "no relay is configured for mail from <%s>",
			                    sender);
		w = snprintf(key, n, "relays:");
		for (size_t i = 0; i < k && w > 0 && (size_t)w < n; i++)
			w += snprintf(key + w, n - (size_t)w, "%s%s", i ? "," : "", rl[i]->name);
		break;
	}
	default:
		w = snprintf(key, n, "mx:%s", domain);
	}
	if (w < 0 || (size_t)w >= n)
		return ms_error_set(err, MS_ERR_USAGE, "destination name too long for %s", rcpt);
	return MS_OK;
}

/* What every engine needs from the configuration. */
static void session_opts(const ms_conf *c, ms_transcript *tx, const ms_net_opts *net,
                         ms_client_opts *co)
{
	ms_client_opts_default(co);
	ms_smtp_opts *so = &co->smtp;
	/* How to connect: families, Happy Eyeballs, bind_address, the
	 * resolver for names (mailspool/net.h). */
	if (net)
		so->net = *net;
	else
		ms_net_opts_for(c, NULL, NULL, &so->net);
	co->qmtp.net = so->net;
	so->helo = c->hostname;
	so->transcript = tx;
	so->timeouts.connect = (int)(c->connect_timeout * 1000);
	if (c->command_timeout) {
		int t = (int)(c->command_timeout * 1000);
		so->timeouts.greeting = so->timeouts.ehlo = so->timeouts.mail = so->timeouts.rcpt = t;
		so->timeouts.data = so->timeouts.data_block = so->timeouts.dot = t;
		so->timeouts.rset = so->timeouts.quit = t;
		co->qmtp.reply_timeout_ms = co->qmtp.write_timeout_ms = t;
	}
	co->qmtp.connect_timeout_ms = so->timeouts.connect;
	so->chunking = c->smtp_chunking ? MS_CHUNKING_AUTO : MS_CHUNKING_OFF;
	so->cross_message = c->smtp_cross_message;
	so->rset_first = c->smtp_rset_first;
	so->bdat_messages = c->smtp_bdat_messages;
	so->bdat_bytes = c->smtp_bdat_bytes;
	so->session_messages = c->smtp_session_messages;
	so->session_failures = c->smtp_session_failures;
	co->qmtp.transcript = tx;
}

typedef struct relay_ctx {
	const ms_deliver_opts *o;
	const char *relay;
	int stash;            /* a reused session: keep unattempted messages back */
	ms_message **retry;   /* kept back, to go again on a fresh connection */
	size_t nretry;
	ms_deliver_report *rep;
} relay_ctx;

int ms_deliver_throttle_reply(int code, const char *enh, const char *text)
{
	if (code == 421 || (enh && !strncmp(enh, "4.7.", 4)))
		return 1;
	if (code < 400 || code > 499 || !text)
		return 0;
	static const char *const says[] = { "too many connections", "too many concurrent",
		                                "too many messages", "rate limit", "throttl" };
	char low[256];
	size_t i = 0;
	for (; text[i] && i + 1 < sizeof low; i++)
		low[i] = (char)tolower((unsigned char)text[i]);
	low[i] = '\0';
	for (size_t k = 0; k < sizeof says / sizeof says[0]; k++)
		if (strstr(low, says[k]))
			return 1;
	return 0;
}

static void note_throttle(relay_ctx *r, const ms_message *m)
{
	for (size_t i = 0; i < m->nrcpts && !r->rep->throttled; i++)
		if (m->rcpts[i].state == MS_RCPT_DEFERRED &&
		    ms_deliver_throttle_reply(m->rcpts[i].out.code, m->rcpts[i].out.enh,
		                              m->rcpts[i].out.text))
			r->rep->throttled = 1;
}

static void forward(void *ctx, ms_message *m)
{
	relay_ctx *r = ctx;
	if (r->stash && ms_message_untried(m)) {
		ms_message **q = realloc(r->retry, (r->nretry + 1) * sizeof *q);
		if (q) {
			r->retry = q;
			r->retry[r->nretry++] = m;
			return;
		}
	}
	if (r->rep)
		note_throttle(r, m);
	if (r->o->on_result)
		r->o->on_result(r->o->ctx, m, r->relay);
}

static void settle_all(const ms_deliver_opts *o, ms_message **msgs, size_t n,
                       ms_rcpt_state state, ms_stage stage, int code, const char *enh,
                       const char *text, const char *relay)
{
	for (size_t i = 0; i < n; i++) {
		ms_message_settle(msgs[i], state, stage, code, enh, text);
		if (o->on_result)
			o->on_result(o->ctx, msgs[i], relay);
	}
}

/* Through configured relays: the relay module fails over between them. */
static ms_status via_relays(const ms_deliver_opts *o, const char *names, ms_message **msgs,
                            size_t n, ms_deliver_report *rep, ms_error *err)
{
	const ms_conf *c = o->conf;
	const ms_conf_relay *rl[MS_CONF_MAX_RELAYS];
	size_t k = 0;
	char buf[MS_DEST_MAX];
	snprintf(buf, sizeof buf, "%s", names);
	for (char *save, *t = strtok_r(buf, ",", &save); t && k < MS_CONF_MAX_RELAYS;
	     t = strtok_r(NULL, ",", &save))
		for (size_t i = 0; i < c->nrelays; i++)
			if (!strcmp(c->relays[i].name, t))
				rl[k++] = &c->relays[i];
	ms_client_opts co;
	session_opts(c, o->transcript, NULL, &co);
	snprintf(rep->relay, sizeof rep->relay, "relay %s", names);
	relay_ctx rc = { .o = o, .relay = rep->relay, .rep = rep };
	co.smtp.on_result = forward;
	co.smtp.ctx = &rc;
	ms_relay_report rr;
	ms_status st = ms_relay_send(rl, k, &co.smtp, msgs, n, &rr, err);
	if (st != MS_OK) {
		settle_all(o, msgs, n, MS_RCPT_DEFERRED, MS_STAGE_CONNECT, 0, "4.3.5", err->msg, "none");
		return MS_OK;
	}
	rep->tried = rr.tried;
	rep->round_trips = rr.round_trips;
	rep->bytes_out = rr.bytes_out;
	rep->reached = !rr.errors[0];
	return MS_OK;
}

/* The pool's key for a server: everything that makes two sessions
 * interchangeable (protocol, address, port, the name TLS checks). */
static void pool_key(const ms_route *rt, const char *tls_name, const ms_net_opts *net, int tls,
                     char *key, size_t n)
{
	/* The source address and the TLS policy too: a session from 10.0.0.2
	 * is no session from 10.0.0.3, one opened under `may` none for a
	 * destination that wants `verify`. */
	snprintf(key, n, "%d|%d|%d|%d|%s|%s|%s|%s|%s|%d", (int)rt->proto, rt->implicit_tls,
	         (int)rt->qmtp_replies, (int)rt->qmtp_encoding, rt->host, rt->port,
	         tls_name ? tls_name : "", net ? net->bind4 : "", net ? net->bind6 : "", tls);
}

static void add_stats(ms_deliver_report *rep, const ms_client *cl)
{
	ms_client_stats s = ms_client_get_stats(cl);
	rep->bytes_out += s.bytes_out;
	rep->round_trips += s.round_trips;
}

/* Hand msgs to the session cl one by one (admit first, a new connection
 * after conn_messages).  Those that could not be handed over (a deadline,
 * no new connection) are settled as not attempted. */
static void run_session(const ms_deliver_opts *o, const ms_route *rt, const ms_client_opts *co,
                        ms_client **clp, size_t *carried, ms_message **msgs, size_t n,
                        ms_deliver_report *rep)
{
	ms_error err;
	for (size_t i = 0; i < n; i++) {
		if (o->conn_messages && *carried >= o->conn_messages && *clp) {
			/* This connection has carried its share: a fresh one. */
			ms_client_close(*clp, &err);
			add_stats(rep, *clp);
			ms_client_free(*clp);
			*clp = NULL;
			*carried = 0;
			ms_client *nc = ms_client_new(rt, co, &err);
			if (nc && ms_client_connect(nc, &err) == MS_OK) {
				*clp = nc;
				rep->connections++;
			} else {
				ms_client_free(nc);
			}
		}
		if (!*clp || (o->admit && !o->admit(o->ctx))) {
			for (; i < n; i++) {
				ms_message_settle(msgs[i], MS_RCPT_DEFERRED, MS_STAGE_SESSION, 0, "4.4.2",
				                  !*clp ? "not attempted: no new connection to the server"
				                        : "not attempted: handed back to the scheduler");
				msgs[i]->engaged = 0;
				if (o->on_result)
					o->on_result(o->ctx, msgs[i], rep->relay);
			}
			return;
		}
		ms_client_submit(*clp, msgs[i], &err); /* failures land in the messages */
		(*carried)++;
	}
}

/* How an MX host's session is secured: `tls` is the policy resolved for
 * it (MS_TLS_DANE with its TLSA records, or MTA-STS's verify or testing
 * check), `level` the configured one; -1 for routes and relays (their
 * own settings). */
typedef struct tls_choice {
	int tls, level;
	const ms_tlsa_set *tlsa;
	int sts;     /* required by an MTA-STS policy in enforce mode */
	int observe; /* MTA-STS testing: checked and reported, not enforced */
} tls_choice;

static const tls_choice NO_TLS_CHOICE = { -1, -1, NULL, 0, 0 };

/* The key of the sessions a choice may share: the policy as resolved, so
 * that a session opened under `may` never serves one that must verify. */
static int choice_key(const tls_choice *tc)
{
	return tc->tls < 0 ? -1 : tc->tls + 16 * tc->sts + 32 * tc->observe;
}

/* One address: a session (parked or new), then the whole group.  MS_OK:
 * every message is reported; otherwise err says why not and no message
 * was touched. */
static ms_status try_target(const ms_deliver_opts *o, const ms_route *rt, const char *tls_name,
                            const ms_net_opts *net, tls_choice tc, ms_message **msgs, size_t n,
                            ms_deliver_report *rep, ms_error *err)
{
	ms_client_opts co;
	session_opts(o->conf, o->transcript, net, &co);
	int tls = tc.tls;
	if (tls >= 0) {
		/* MX delivery: the destination's TLS policy (tls_security_level,
		 * destination.P.tls); verify checks the MX host's name, dane
		 * the certificate against the host's TLSA records. */
		co.smtp.tls = (ms_tls_policy)tls;
		co.smtp.tlsa = tc.tlsa;
		co.smtp.tls_sts = tc.sts;
		co.smtp.tls_observe = tc.observe;
		if (o->conf->tls_ca_file[0])
			co.smtp.tls_ca_file = o->conf->tls_ca_file;
	}
	relay_ctx rc = { .o = o, .relay = rep->relay, .rep = rep };
	co.smtp.on_result = co.qmtp.on_result = forward;
	co.smtp.ctx = co.qmtp.ctx = &rc;
	co.smtp.tls_name = tls_name;
	char key[MS_POOL_KEY_MAX];
	pool_key(rt, tls_name, &co.smtp.net, choice_key(&tc), key, sizeof key);
	co.smtp.quirks = ms_quirks_get(o->quirks, key);
	size_t carried = 0;
	ms_client *cl = o->pool ? ms_pool_take(o->pool, key, &carried) : NULL;
	if (cl) {
		rep->reused++;
		rc.stash = 1;
		ms_client_set_result(cl, forward, &rc);
		ms_client_set_transcript(cl, o->transcript);
		ms_transcript_addf(o->transcript, MS_TX_NOTE, "reusing the session to %s", rep->relay);
	} else {
		rep->tried++;
		ms_transcript_addf(o->transcript, MS_TX_NOTE, "trying %s", rep->relay);
		if (!(cl = ms_client_new(rt, &co, err)))
			return err->status;
		ms_status st = ms_client_connect(cl, err);
		if (st != MS_OK) {
			if (strstr(err->msg, " 421") || strstr(err->msg, "\"421"))
				rep->throttled = 1;
			/* A server that answered but did not meet the TLS policy is
			 * not down: its other domains (same MX, other policy) go on. */
			if (tls >= MS_TLS_ENCRYPT && st != MS_ERR_CONNECT && st != MS_ERR_TIMEOUT)
				rep->tls_refused = 1;
			ms_client_free(cl);
			return st;
		}
		rep->connections++;
		/* The address that won (of a name resolved, or of several raced:
		 * Happy Eyeballs) is the one the log names. */
		const char *peer = ms_client_peer(cl);
		if (*peer && strcmp(peer, rt->host)) {
			char name[256];
			const char *br = strchr(rep->relay, '[');
			snprintf(name, sizeof name, "%.*s", br ? (int)(br - rep->relay) : 0, rep->relay);
			snprintf(rep->relay, sizeof rep->relay, "%.255s[%.50s]:%s", name, peer, rt->port);
			ms_transcript_addf(o->transcript, MS_TX_NOTE, "connected to %s", rep->relay);
		}
	}
	rep->reached = 1;
	if (!rc.stash) {
		/* A new connection: how it is secured (after STARTTLS, which
		 * connecting includes). */
		const ms_tls_info *ti = ms_client_tls(cl);
		if (!ti)
			rep->plain++;
		else if (ti->verified)
			rep->tls_verified++;
		else
			rep->tls_unverified++;
		if (tc.observe && (!ti || !ti->verified)) {
			/* MTA-STS testing: what enforce would have refused. */
			rep->sts_testing_failed = 1;
			snprintf(rep->sts_testing_why, sizeof rep->sts_testing_why, "%s",
			         ti ? ti->verify_error : "the server does not offer STARTTLS");
			ms_transcript_addf(o->transcript, MS_TX_NOTE,
			                   "MTA-STS (testing): %s would fail the policy: %s", rep->relay,
			                   ti ? ti->verify_error : "no STARTTLS");
		}
	}
	run_session(o, rt, &co, &cl, &carried, msgs, n, rep);
	if (cl)
		ms_client_flush(cl, err);
	rc.stash = 0;
	if (rc.nretry) {
		/* The parked session had gone stale under its first command: what
		 * it had not started goes over a fresh connection, once. */
		if (cl) {
			add_stats(rep, cl);
			ms_client_free(cl);
		}
		cl = NULL;
		carried = 0;
		for (size_t i = 0; i < rc.nretry; i++)
			ms_message_reset(rc.retry[i]);
		ms_transcript_addf(o->transcript, MS_TX_NOTE,
		                   "the reused session broke before %zu message(s) started: a new "
		                   "connection to %s", rc.nretry, rep->relay);
		ms_client *nc = ms_client_new(rt, &co, err);
		if (nc && ms_client_connect(nc, err) == MS_OK) {
			cl = nc;
			rep->connections++;
			run_session(o, rt, &co, &cl, &carried, rc.retry, rc.nretry, rep);
			if (cl)
				ms_client_flush(cl, err);
		} else {
			ms_client_free(nc);
			settle_all(o, rc.retry, rc.nretry, MS_RCPT_DEFERRED, MS_STAGE_SESSION, 0, "4.4.2",
			           err->msg, rep->relay);
		}
		free(rc.retry);
	}
	if (!cl)
		return MS_OK;
	add_stats(rep, cl);
	ms_quirks_add(o->quirks, key, ms_client_quirks(cl));
	if (o->pool && !ms_client_failed(cl, NULL) &&
	    (!o->conn_messages || carried < o->conn_messages)) {
		ms_pool_put(o->pool, key, cl, carried);
	} else {
		ms_client_close(cl, err);
		ms_client_free(cl);
	}
	return MS_OK;
}

/* One server of the destination: a session for the whole group, or err
 * says why not.  rep->relay names it as "name[addr]:port". */
static ms_status try_server(const ms_deliver_opts *o, const ms_route *base, const char *name,
                            const char *addr, const char *tls_name, const ms_net_opts *net,
                            tls_choice tc, ms_message **msgs, size_t n, ms_deliver_report *rep,
                            ms_error *err)
{
	ms_route rt = *base;
	snprintf(rt.host, sizeof rt.host, "%s", addr);
	snprintf(rep->relay, sizeof rep->relay, "%.255s[%.50s]:%s", name, addr, rt.port);
	ms_status st = try_target(o, &rt, tls_name, net, tc, msgs, n, rep, err);
	if (st != MS_OK)
		ms_transcript_addf(o->transcript, MS_TX_NOTE, "%s: %s", rep->relay, err->msg);
	return st;
}

/* MTA-STS where DANE did not decide (RFC 8461 2: DANE first): enforce
 * verifies the MX host's name, testing checks and reports. */
static void apply_sts(tls_choice *tc, const ms_sts_policy *sts)
{
	if (!sts || tc->tls != MS_TLS_MAY)
		return;
	if (sts->mode == MS_STS_ENFORCE) {
		tc->tls = MS_TLS_VERIFY;
		tc->sts = 1;
	} else if (sts->mode == MS_STS_TESTING) {
		tc->observe = 1;
	}
}

/* The policy a host's session will have when that is known without
 * looking anything up (no DANE possible: the MX answer was not
 * validated), for finding a parked session; -2 when it is not. */
static int predicted_key(const ms_deliver_opts *o, const char *domain, const char *host,
                         const ms_dns_targets *tg, const ms_sts_policy *sts)
{
	tls_choice tc = { .level = ms_conf_tls_for(o->conf, domain, host) };
	tc.tls = tc.level;
	if (tc.level == MS_TLS_LEVEL_DANE || tc.level == MS_TLS_LEVEL_DANE_ONLY) {
		if (tg->secure)
			return -2;
		if (tc.level == MS_TLS_LEVEL_DANE_ONLY)
			return -2;
		tc.tls = MS_TLS_MAY;
	} else if (tc.level == MS_TLS_LEVEL_MTA_STS) {
		tc.tls = MS_TLS_MAY;
	}
	if (sts && sts->mode == MS_STS_ENFORCE && !ms_sts_mx_ok(sts, host))
		return -2;
	apply_sts(&tc, sts);
	return choice_key(&tc);
}

static void dns_opts_of(const ms_conf *c, ms_dns_opts *dop)
{
	ms_dns_opts_default(dop);
	dop->servers = c->dns_servers[0] ? c->dns_servers : NULL;
	dop->timeout_ms = (int)(c->dns_timeout * 1000);
	dop->address_limit = c->mx_address_limit;
	dop->myname = c->hostname;
}

/* The levels dane and dane-only for one MX host (RFC 7672 2.2): with a
 * DNSSEC-validated MX answer, the host's TLSA records decide - usable
 * ones make the session MS_TLS_DANE, only unusable ones `encrypt`, none
 * `may` (dane) or no session at all (dane-only).  A failed TLSA lookup
 * for a validated host means not now: the host is skipped, deferred. */
static ms_status dane_for(const ms_deliver_opts *o, const ms_route *base,
                          const ms_dns_targets *tg, const char *host, tls_choice *tc,
                          ms_tlsa_set **tlsa, ms_deliver_report *rep, ms_error *err)
{
	int only = tc->level == MS_TLS_LEVEL_DANE_ONLY;
	tc->tls = MS_TLS_MAY;
	if (tg->secure) {
		ms_dns_opts dop;
		dns_opts_of(o->conf, &dop);
		ms_dane_state ds = MS_DANE_NONE;
		if (!(*tlsa = calloc(1, sizeof **tlsa)))
			return ms_error_set(err, MS_ERR_NOMEM, "out of memory");
		ms_status st = ms_dns_tlsa(host, (unsigned)atoi(base->port), &dop, *tlsa, &ds, err);
		if (st != MS_OK) {
			rep->tls_refused = 1;
			return st;
		}
		if (ds == MS_DANE_USABLE) {
			tc->tls = MS_TLS_DANE;
			tc->tlsa = *tlsa;
		} else if (ds == MS_DANE_UNUSABLE) {
			tc->tls = MS_TLS_ENCRYPT;
		}
		ms_transcript_addf(o->transcript, MS_TX_NOTE, "DANE for %s: %s", host,
		                   ds == MS_DANE_USABLE     ? "TLSA records, TLS authenticated by them"
		                   : ds == MS_DANE_UNUSABLE ? "only unusable TLSA records: TLS required"
		                                            : "no validated TLSA records");
	}
	if (only && tc->tls == MS_TLS_MAY) {
		rep->tls_refused = 1;
		return ms_error_set(err, MS_ERR_TEMP,
		                    "no DNSSEC-validated TLSA records for %s (tls dane-only)", host);
	}
	return MS_OK;
}

/* TLS-RPT (RFC 8460 4.3): the result type a policy failure's reason
 * names. */
static const char *rpt_result(const char *why)
{
	return strstr(why, "STARTTLS")                  ? "starttls-not-supported"
	       : strstr(why, "hostname mismatch")        ? "certificate-host-mismatch"
	       : strstr(why, "has expired")              ? "certificate-expired"
	       : strstr(why, "matches no TLSA record")   ? "validation-failure"
	       : strstr(why, "TLSA lookup")              ? "dnssec-invalid"
	       : strstr(why, "no DNSSEC-validated TLSA") ? "dane-required"
	       : strstr(why, "not trusted") || strstr(why, "self-signed") ||
	               strstr(why, "issuer")
	           ? "certificate-not-trusted"
	           : "validation-failure";
}

/* The policy a host was held to, as RFC 8460 4.4 reports it: its type
 * and its text (MTA-STS: the policy's lines; DANE: the TLSA records). */
static void rpt_policy(const tls_choice *tc, const ms_sts_policy *sts, const char *host,
                       const char *port, const char **type, ms_buf *text)
{
	if (tc->tls == MS_TLS_DANE && tc->tlsa) {
		*type = "tlsa";
		for (size_t i = 0; i < tc->tlsa->n; i++) {
			const ms_tlsa *r = &tc->tlsa->r[i];
			ms_buf_printf(text, "%s_%s._tcp.%s. IN TLSA %u %u %u ", i ? "\n" : "", port, host,
			              r->usage, r->selector, r->mtype);
			for (size_t k = 0; k < r->len; k++)
				ms_buf_printf(text, "%02x", r->data[k]);
		}
	} else if (sts) {
		*type = "sts";
		ms_buf_printf(text, "version: STSv1\nmode: %s", ms_sts_mode_name(sts->mode));
		for (size_t i = 0; i < sts->nmx; i++)
			ms_buf_printf(text, "\nmx: %s", sts->mx[i]);
		ms_buf_printf(text, "\nmax_age: %lld", (long long)sts->max_age);
	} else {
		*type = "no-policy-found";
	}
}

/* The policy domains one session served: the first names the session's
 * settings (the others resolved to the same servers under the same policy,
 * ms_deliver_many); TLS-RPT counts the session for each of them. */
typedef struct dom_set {
	const char *const *v;
	size_t n;
} dom_set;

static void rpt_note(const ms_deliver_opts *o, dom_set ds, const tls_choice *tc,
                     const ms_sts_policy *sts, const char *host, const char *port, int ok,
                     const char *why)
{
	if (!o->tlsrpt)
		return;
	const char *type;
	ms_buf text;
	ms_buf_init(&text, 4096);
	rpt_policy(tc, sts, host, port, &type, &text);
	ms_buf_append(&text, "", 1);
	for (size_t i = 0; i < ds.n; i++)
		ms_tlsrpt_add(o->tlsrpt, ds.v[i], type, ms_buf_ptr(&text), host, ok,
		              ok ? NULL : rpt_result(why), ok ? NULL : why);
	ms_buf_free(&text);
}

/* One MX host: its addresses (consecutive in tg from *i) race as one
 * server (RFC 8305), from the source address its patterns give. */
static ms_status try_mx_host(const ms_deliver_opts *o, const ms_route *base, dom_set ds,
                             const ms_dns_targets *tg, const ms_sts_policy *sts, size_t *i,
                             ms_message **msgs, size_t n, ms_deliver_report *rep, ms_error *err)
{
	const char *domain = ds.v[0];
	const ms_dns_target *t = &tg->t[*i];
	ms_net_opts net;
	ms_net_opts_for(o->conf, domain, t->name, &net);
	size_t k = *i;
	while (k < tg->n && !strcmp(tg->t[k].name, t->name) && net.naddrs < MS_NET_ADDRS_MAX) {
		snprintf(net.addrs[net.naddrs++], sizeof net.addrs[0], "%s", tg->t[k].addr);
		k++;
	}
	*i = k;
	tls_choice tc = { .level = ms_conf_tls_for(o->conf, domain, t->name), .tlsa = NULL };
	tc.tls = tc.level;
	ms_tlsa_set *tlsa = NULL;
	snprintf(rep->relay, sizeof rep->relay, "%.255s[%.50s]:%s", t->name, t->addr, base->port);
	if (sts && sts->mode == MS_STS_ENFORCE && !ms_sts_mx_ok(sts, t->name)) {
		/* RFC 8461 4.1: an MX host outside the policy is not used. */
		rep->tls_refused = 1;
		ms_error_set(err, MS_ERR_TEMP, "%s is not an MX host of the MTA-STS policy of %s",
		             t->name, domain);
		ms_transcript_addf(o->transcript, MS_TX_NOTE, "%s: %s", rep->relay, err->msg);
		rpt_note(o, ds, &tc, sts, t->name, base->port, 0, err->msg);
		return MS_ERR_TEMP;
	}
	if (tc.level == MS_TLS_LEVEL_DANE || tc.level == MS_TLS_LEVEL_DANE_ONLY) {
		ms_status st = dane_for(o, base, tg, t->name, &tc, &tlsa, rep, err);
		if (st != MS_OK) {
			ms_transcript_addf(o->transcript, MS_TX_NOTE, "%s: %s", rep->relay, err->msg);
			tls_choice held = tc; /* a failed TLSA lookup is DANE's failure */
			if (strstr(err->msg, "TLSA lookup"))
				held.tls = MS_TLS_DANE, held.tlsa = tlsa;
			rpt_note(o, ds, &held, NULL, t->name, base->port, 0, err->msg);
			free(tlsa);
			return st;
		}
	} else if (tc.level == MS_TLS_LEVEL_MTA_STS) {
		tc.tls = MS_TLS_MAY;
	}
	apply_sts(&tc, sts);
	/* What this host did, for TLS-RPT: a session (new, or parked and
	 * opened under the same resolved policy) that met its policy, or a
	 * policy it did not meet; other failures are not TLS's. */
	int refused_before = rep->tls_refused, testing_before = rep->sts_testing_failed;
	uint64_t conns = rep->connections;
	size_t reused = rep->reused;
	rep->tls_refused = rep->sts_testing_failed = 0;
	ms_status st = try_server(o, base, t->name, t->addr, t->name, &net, tc, msgs, n, rep, err);
	if (rep->sts_testing_failed)
		rpt_note(o, ds, &tc, sts, t->name, base->port, 0, rep->sts_testing_why);
	else if (st == MS_OK && (rep->connections > conns || rep->reused > reused))
		rpt_note(o, ds, &tc, sts, t->name, base->port, 1, NULL);
	else if (st != MS_OK && rep->tls_refused)
		rpt_note(o, ds, &tc, sts, t->name, base->port, 0, err->msg);
	rep->tls_refused |= refused_before;
	rep->sts_testing_failed |= testing_before;
	free(tlsa);
	return st;
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(const char *const *)a, *(const char *const *)b);
}

void ms_deliver_site(const ms_dns_targets *tg, char *out, size_t n)
{
	if (n)
		out[0] = '\0';
	if (tg->implicit || tg->n == 0)
		return; /* no MX hosts to share */
	const char *names[MS_DNS_MAX_TARGETS];
	for (size_t i = 0; i < tg->n; i++)
		names[i] = tg->t[i].name;
	qsort(names, tg->n, sizeof names[0], cmp_str);
	int w = snprintf(out, n, "site:");
	for (size_t i = 0; i < tg->n && w > 0 && (size_t)w < n; i++)
		if (i == 0 || strcmp(names[i], names[i - 1]))
			w += snprintf(out + w, n - (size_t)w, "%s%s", w > 5 ? "," : "", names[i]);
	if (w < 0 || (size_t)w >= n)
		out[0] = '\0'; /* too long to share: the domain stays on its own */
}

ms_status ms_deliver_resolve(const ms_conf *c, struct ms_dns_cache *cache, const char *dest,
                             char *site, size_t n, ms_error *err)
{
	site[0] = '\0';
	if (strncmp(dest, "mx:", 3) || dest[3] == '[')
		return MS_OK; /* routes, relays and literals are their own destination */
	ms_dns_targets *tg = calloc(1, sizeof *tg);
	if (!tg)
		return ms_error_set(err, MS_ERR_NOMEM, "out of memory");
	ms_dns_opts dop;
	dns_opts_of(c, &dop);
	int hit;
	ms_status st = cache ? ms_dns_cache_targets(cache, dest + 3, &dop, tg, err, &hit)
	                     : ms_dns_targets_for(dest + 3, &dop, tg, err);
	if (st == MS_OK)
		ms_deliver_site(tg, site, n);
	free(tg);
	return st;
}

/* No server gave a session: every message waits, with the last reason. */
static ms_status give_up(const ms_deliver_opts *o, ms_message **msgs, size_t n,
                         ms_deliver_report *rep, const char *why)
{
	char last[MS_ERROR_MSG_MAX];
	snprintf(last, sizeof last, "%.300s: %.200s", rep->relay, why);
	if (rep->throttled) {
		/* Refused as "too many connections": the servers are up, just
		 * busy - not attempted (the daemon slows down and sends them
		 * again), and not a destination that is down. */
		settle_all(o, msgs, n, MS_RCPT_DEFERRED, MS_STAGE_SESSION, 421, "4.7.0", last,
		           rep->relay);
		return MS_OK;
	}
	if (rep->tls_refused) {
		/* The policy was not met (RFC 3463 X.7.5, a cryptographic
		 * failure): deferred, the destination not backed off. */
		settle_all(o, msgs, n, MS_RCPT_DEFERRED, MS_STAGE_CONNECT, 0, "4.7.5", last, rep->relay);
		return MS_OK;
	}
	rep->unreachable = 1;
	settle_all(o, msgs, n, MS_RCPT_DEFERRED, MS_STAGE_CONNECT, 0, "4.4.1", last, rep->relay);
	return MS_OK;
}

/* One destination made ready: an MX destination resolved (through the
 * cache) and its MTA-STS policy known, before any message is sent - so
 * that ms_deliver_many can tell which destinations may share sessions. */
typedef struct prepared {
	const char *dest;
	const char *domain;  /* of an MX destination (or a literal), else NULL */
	ms_dns_targets *tg;  /* its answer */
	ms_status dns;       /* the lookup's outcome, e its reason */
	ms_error e;
	int hit;             /* answered from the cache */
	ms_sts_policy *sts;  /* a policy in force (not of mode none), or NULL */
	/* Destinations with the same non-empty share key are served by the
	 * same sessions: same MX hosts, addresses and preferences, the same
	 * TLS level and source addresses for each host, no MTA-STS policy and
	 * the same DNSSEC standing. */
	char *share;
} prepared;

static void prepared_free(prepared *p)
{
	free(p->tg);
	free(p->sts);
	free(p->share);
	memset(p, 0, sizeof *p);
}

/* The share key of a resolved MX destination (NULL: it goes alone). */
static char *share_key(const ms_conf *c, const prepared *p)
{
	const ms_dns_targets *tg = p->tg;
	if (p->sts || tg->implicit || tg->n == 0 || p->domain[0] == '[')
		return NULL;
	char *lines[MS_DNS_MAX_TARGETS];
	size_t n = 0;
	ms_buf key;
	ms_buf_init(&key, 512);
	int ok = 1;
	for (size_t i = 0; i < tg->n && ok; i++) {
		ms_net_opts net;
		ms_net_opts_for(c, p->domain, tg->t[i].name, &net);
		char l[MS_DNS_NAME_MAX + 200];
		snprintf(l, sizeof l, "%d %s %s %d %s %s", tg->t[i].pref, tg->t[i].name, tg->t[i].addr,
		         ms_conf_tls_for(c, p->domain, tg->t[i].name), net.bind4, net.bind6);
		ok = (lines[n] = strdup(l)) != NULL;
		n += ok;
	}
	/* Sorted: equal preferences come shuffled per domain. */
	qsort(lines, n, sizeof lines[0], cmp_str);
	ok = ok && ms_buf_printf(&key, "%d", tg->secure) == MS_OK;
	for (size_t i = 0; i < n; i++) {
		ok = ok && ms_buf_printf(&key, "|%s", lines[i]) == MS_OK;
		free(lines[i]);
	}
	char *out = ok && ms_buf_append(&key, "", 1) == MS_OK ? strdup(ms_buf_ptr(&key)) : NULL;
	ms_buf_free(&key);
	return out;
}

static ms_status prepare(const ms_deliver_opts *o, const char *dest, prepared *p,
                         ms_error *err)
{
	memset(p, 0, sizeof *p);
	p->dest = dest;
	if (!strncmp(dest, "relays:", 7) || !strncmp(dest, "url:", 4))
		return MS_OK;
	if (!(p->tg = calloc(1, sizeof *p->tg)))
		return ms_error_set(err, MS_ERR_NOMEM, "out of memory");
	p->domain = !strncmp(dest, "mx:", 3) ? dest + 3 : dest;
	ms_dns_opts dop;
	dns_opts_of(o->conf, &dop);
	p->dns = o->dns_cache ? ms_dns_cache_targets(o->dns_cache, p->domain, &dop, p->tg, &p->e,
	                                             &p->hit)
	                      : ms_dns_targets_for(p->domain, &dop, p->tg, &p->e);
	ms_transcript_addf(o->transcript, MS_TX_NOTE, "route %s: %s", dest,
	                   p->dns == MS_OK ? "resolved" : p->e.msg);
	if (p->dns != MS_OK)
		return MS_OK;
	/* MTA-STS (RFC 8461) for the levels that honour it. */
	int dlevel = ms_conf_tls_for(o->conf, p->domain, NULL);
	if (o->sts && p->domain[0] != '[' &&
	    (dlevel == MS_TLS_LEVEL_DANE || dlevel == MS_TLS_LEVEL_MTA_STS) &&
	    (p->sts = calloc(1, sizeof *p->sts))) {
		char note[700];
		ms_sts_policy_for(o->sts, o->conf, p->domain, p->sts, note, sizeof note);
		ms_transcript_addf(o->transcript, MS_TX_NOTE, "%s", note);
		if (!p->sts->found || p->sts->mode == MS_STS_NONE) {
			free(p->sts);
			p->sts = NULL;
		}
	}
	p->share = share_key(o->conf, p);
	return MS_OK;
}

/* Deliver msgs, all for the prepared destination p - or, with ds naming
 * several domains, for destinations that share p's key. */
static ms_status deliver_prepared(const ms_deliver_opts *o, const prepared *p, dom_set ds,
                                  ms_message **msgs, size_t n, ms_deliver_report *rep,
                                  ms_error *err)
{
	memset(rep, 0, sizeof *rep);
	snprintf(rep->relay, sizeof rep->relay, "none");
	const char *dest = p->dest;
	if (!strncmp(dest, "relays:", 7))
		return via_relays(o, dest + 7, msgs, n, rep, err);

	ms_route base;
	ms_error e = { 0 };
	if (!strncmp(dest, "url:", 4)) {
		/* One server, as the URL names it (its own name for TLS). */
		if (ms_route_parse(dest + 4, &base, &e) != MS_OK) {
			settle_all(o, msgs, n, MS_RCPT_DEFERRED, MS_STAGE_CONNECT, 0, "4.3.5", e.msg,
			           "none");
			return MS_OK;
		}
		if (try_server(o, &base, base.host, base.host, NULL, NULL, NO_TLS_CHOICE, msgs, n, rep,
		               &e) ==
		    MS_OK)
			return MS_OK;
		return give_up(o, msgs, n, rep, e.msg);
	}

	const ms_dns_targets *tg = p->tg;
	const char *domain = p->domain;
	memset(&base, 0, sizeof base);
	base.proto = MS_PROTO_SMTP;
	snprintf(base.port, sizeof base.port, "%s", o->conf->mx_port);
	if (domain[0] != '[') {
		rep->dns = p->dns == MS_OK ? (p->hit ? MS_DELIVER_DNS_CACHED : MS_DELIVER_DNS_OK)
		           : p->dns == MS_ERR_PERM ? MS_DELIVER_DNS_PERM : MS_DELIVER_DNS_TEMP;
		rep->dns_lookups[rep->dns]++;
	}
	if (p->dns != MS_OK) {
		/* Final DNS answers fail every recipient now; the rest wait. */
		int perm = p->dns == MS_ERR_PERM;
		settle_all(o, msgs, n, perm ? MS_RCPT_FAILED : MS_RCPT_DEFERRED, MS_STAGE_CONNECT,
		           tg->code, tg->enh, p->e.msg, "none");
		rep->unreachable = !perm;
		return MS_OK;
	}
	if (domain[0] != '[')
		ms_deliver_site(tg, rep->site, sizeof rep->site);
	const ms_sts_policy *sts = p->sts;
	if (sts)
		rep->sts_mode = (int)sts->mode;
	/* The MX hosts' addresses in order; the MX name is the TLS name.  A
	 * parked session to any of them is taken first. */
	for (size_t i = 0; o->pool && i < tg->n; i++) {
		ms_route rt = base;
		char key[MS_POOL_KEY_MAX];
		snprintf(rt.host, sizeof rt.host, "%s", tg->t[i].addr);
		ms_net_opts net;
		ms_net_opts_for(o->conf, domain, tg->t[i].name, &net);
		int pk = predicted_key(o, domain, tg->t[i].name, tg, sts);
		if (pk == -2)
			continue;
		pool_key(&rt, tg->t[i].name, &net, pk, key, sizeof key);
		size_t at = i;
		if (i > 0 && tg->t[i].pref == tg->t[0].pref && ms_pool_has(o->pool, key) &&
		    try_mx_host(o, &base, ds, tg, sts, &at, msgs, n, rep, &e) == MS_OK)
			return MS_OK;
	}
	for (size_t i = 0; i < tg->n;)
		if (try_mx_host(o, &base, ds, tg, sts, &i, msgs, n, rep, &e) == MS_OK)
			return MS_OK;
	return give_up(o, msgs, n, rep, e.msg);
}

ms_status ms_deliver(const ms_deliver_opts *o, const char *dest, ms_message **msgs, size_t n,
                     ms_deliver_report *rep, ms_error *err)
{
	prepared p;
	ms_status st = prepare(o, dest, &p, err);
	if (st == MS_OK) {
		const char *d = p.domain ? p.domain : dest;
		st = deliver_prepared(o, &p, (dom_set){ &d, 1 }, msgs, n, rep, err);
	}
	prepared_free(&p);
	return st;
}

/* What a class's report adds to the whole. */
static void add_report(ms_deliver_report *all, const ms_deliver_report *r, int first)
{
	if (first) {
		*all = *r;
		return;
	}
	snprintf(all->relay, sizeof all->relay, "%s", r->relay);
	all->reached |= r->reached;
	all->unreachable = all->unreachable && r->unreachable;
	all->tried += r->tried;
	all->bytes_out += r->bytes_out;
	all->round_trips += r->round_trips;
	all->connections += r->connections;
	if (!all->site[0])
		snprintf(all->site, sizeof all->site, "%s", r->site);
	all->throttled |= r->throttled;
	all->reused += r->reused;
	all->tls_verified += r->tls_verified;
	all->tls_unverified += r->tls_unverified;
	all->plain += r->plain;
	for (size_t k = 0; k < sizeof all->dns_lookups / sizeof all->dns_lookups[0]; k++)
		all->dns_lookups[k] += r->dns_lookups[k];
	all->tls_refused |= r->tls_refused;
	if (r->sts_mode)
		all->sts_mode = r->sts_mode;
	if (r->sts_testing_failed && !all->sts_testing_failed) {
		all->sts_testing_failed = 1;
		snprintf(all->sts_testing_why, sizeof all->sts_testing_why, "%s", r->sts_testing_why);
	}
}

ms_status ms_deliver_many(const ms_deliver_opts *o, const char *const *dests, ms_message **msgs,
                          size_t n, ms_deliver_report *rep, ms_error *err)
{
	memset(rep, 0, sizeof *rep);
	snprintf(rep->relay, sizeof rep->relay, "none");
	if (n == 0)
		return MS_OK;
	/* The distinct destinations, in the order their messages come. */
	prepared *p = calloc(n, sizeof *p);
	size_t *of = calloc(n, sizeof *of); /* msgs[i] is for p[of[i]] */
	size_t *cls = calloc(n, sizeof *cls); /* p[j] is served with p[cls[j]] */
	ms_message **batch = calloc(n, sizeof *batch);
	const char **doms = calloc(n, sizeof *doms);
	ms_status st = p && of && cls && batch && doms ? MS_OK
	                                              : ms_error_set(err, MS_ERR_NOMEM, "out of memory");
	size_t np = 0;
	for (size_t i = 0; i < n && st == MS_OK; i++) {
		size_t j = 0;
		while (j < np && strcmp(p[j].dest, dests[i]))
			j++;
		if (j == np) {
			if ((st = prepare(o, dests[i], &p[np], err)) != MS_OK)
				break;
			cls[np] = np;
			for (size_t k = 0; p[np].share && k < np; k++)
				if (p[k].share && !strcmp(p[k].share, p[np].share)) {
					cls[np] = cls[k];
					break;
				}
			np++;
		}
		of[i] = j;
	}
	/* Each class in one pass: its destinations' messages together, so one
	 * session carries them all, pipelined across domains. */
	int first = 1;
	for (size_t c = 0; c < np && st == MS_OK; c++) {
		if (cls[c] != c)
			continue;
		size_t nb = 0, nd = 0;
		for (size_t j = c; j < np; j++)
			if (cls[j] == c)
				doms[nd++] = p[j].domain ? p[j].domain : p[j].dest;
		for (size_t i = 0; i < n; i++)
			if (cls[of[i]] == c)
				batch[nb++] = msgs[i];
		ms_deliver_report r;
		st = deliver_prepared(o, &p[c], (dom_set){ doms, nd }, batch, nb, &r, err);
		if (st == MS_OK) {
			/* The other destinations' lookups, for the counts. */
			for (size_t j = c + 1; j < np; j++)
				if (cls[j] == c)
					r.dns_lookups[p[j].hit ? MS_DELIVER_DNS_CACHED : MS_DELIVER_DNS_OK]++;
			add_report(rep, &r, first);
			first = 0;
		}
	}
	for (size_t j = 0; j < np; j++)
		prepared_free(&p[j]);
	free(p);
	free(of);
	free(cls);
	free(batch);
	free(doms);
	return st;
}
