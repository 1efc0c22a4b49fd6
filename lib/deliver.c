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
static void session_opts(const ms_conf *c, ms_transcript *tx, ms_client_opts *co)
{
	ms_client_opts_default(co);
	ms_smtp_opts *so = &co->smtp;
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
	co->qmtp.transcript = tx;
}

typedef struct relay_ctx {
	const ms_deliver_opts *o;
	const char *relay;
} relay_ctx;

static void forward(void *ctx, ms_message *m)
{
	relay_ctx *r = ctx;
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
	session_opts(c, o->transcript, &co);
	snprintf(rep->relay, sizeof rep->relay, "relay %s", names);
	relay_ctx rc = { o, rep->relay };
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

/* One address: a session, then the whole group.  MS_OK: the session
 * started (every message is reported); otherwise err says why not and no
 * message was touched. */
static ms_status try_target(const ms_deliver_opts *o, const ms_route *rt, const char *tls_name,
                            ms_message **msgs, size_t n, ms_deliver_report *rep, ms_error *err)
{
	ms_client_opts co;
	session_opts(o->conf, o->transcript, &co);
	relay_ctx rc = { o, rep->relay };
	co.smtp.on_result = co.qmtp.on_result = forward;
	co.smtp.ctx = co.qmtp.ctx = &rc;
	co.smtp.tls_name = tls_name;
	rep->tried++;
	ms_transcript_addf(o->transcript, MS_TX_NOTE, "trying %s", rep->relay);
	ms_client *cl = ms_client_new(rt, &co, err);
	if (!cl)
		return err->status;
	ms_status st = ms_client_connect(cl, err);
	if (st != MS_OK) {
		ms_client_free(cl);
		return st;
	}
	rep->reached = 1;
	for (size_t i = 0; i < n; i++)
		ms_client_submit(cl, msgs[i], err); /* failures land in the messages */
	ms_client_close(cl, err);
	ms_client_stats s = ms_client_get_stats(cl);
	rep->bytes_out += s.bytes_out;
	rep->round_trips += s.round_trips;
	rep->connections += s.connections;
	ms_client_free(cl);
	return MS_OK;
}

/* One server of the destination: a session for the whole group, or err
 * says why not.  rep->relay names it as "name[addr]:port". */
static ms_status try_server(const ms_deliver_opts *o, const ms_route *base, const char *name,
                            const char *addr, const char *tls_name, ms_message **msgs, size_t n,
                            ms_deliver_report *rep, ms_error *err)
{
	ms_route rt = *base;
	snprintf(rt.host, sizeof rt.host, "%s", addr);
	snprintf(rep->relay, sizeof rep->relay, "%.255s[%.50s]:%s", name, addr, rt.port);
	ms_status st = try_target(o, &rt, tls_name, msgs, n, rep, err);
	if (st != MS_OK)
		ms_transcript_addf(o->transcript, MS_TX_NOTE, "%s: %s", rep->relay, err->msg);
	return st;
}

/* No server gave a session: every message waits, with the last reason. */
static ms_status give_up(const ms_deliver_opts *o, ms_message **msgs, size_t n,
                         ms_deliver_report *rep, const char *why)
{
	char last[MS_ERROR_MSG_MAX];
	snprintf(last, sizeof last, "%.300s: %.200s", rep->relay, why);
	rep->unreachable = 1;
	settle_all(o, msgs, n, MS_RCPT_DEFERRED, MS_STAGE_CONNECT, 0, "4.4.1", last, rep->relay);
	return MS_OK;
}

ms_status ms_deliver(const ms_deliver_opts *o, const char *dest, ms_message **msgs, size_t n,
                     ms_deliver_report *rep, ms_error *err)
{
	memset(rep, 0, sizeof *rep);
	snprintf(rep->relay, sizeof rep->relay, "none");
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
		if (try_server(o, &base, base.host, base.host, NULL, msgs, n, rep, &e) == MS_OK)
			return MS_OK;
		return give_up(o, msgs, n, rep, e.msg);
	}

	ms_dns_targets *tg = calloc(1, sizeof *tg);
	if (!tg)
		return ms_error_set(err, MS_ERR_NOMEM, "out of memory");
	const char *domain = !strncmp(dest, "mx:", 3) ? dest + 3 : dest;
	memset(&base, 0, sizeof base);
	base.proto = MS_PROTO_SMTP;
	snprintf(base.port, sizeof base.port, "%s", o->conf->mx_port);
	ms_dns_opts dop;
	ms_dns_opts_default(&dop);
	dop.servers = o->conf->dns_servers[0] ? o->conf->dns_servers : NULL;
	dop.timeout_ms = (int)(o->conf->dns_timeout * 1000);
	dop.address_limit = o->conf->mx_address_limit;
	dop.myname = o->conf->hostname;
	ms_status st = ms_dns_targets_for(domain, &dop, tg, &e);
	ms_transcript_addf(o->transcript, MS_TX_NOTE, "route %s: %s", dest,
	                   st == MS_OK ? "resolved" : e.msg);
	if (st != MS_OK) {
		/* Final DNS answers fail every recipient now; the rest wait. */
		int perm = st == MS_ERR_PERM;
		settle_all(o, msgs, n, perm ? MS_RCPT_FAILED : MS_RCPT_DEFERRED, MS_STAGE_CONNECT,
		           tg->code, tg->enh, e.msg, "none");
		rep->unreachable = !perm;
		free(tg);
		return MS_OK;
	}
	/* The MX hosts' addresses in order; the MX name is the TLS name. */
	for (size_t i = 0; i < tg->n; i++)
		if (try_server(o, &base, tg->t[i].name, tg->t[i].addr, tg->t[i].name, msgs, n, rep,
		               &e) == MS_OK) {
			free(tg);
			return MS_OK;
		}
	free(tg);
	return give_up(o, msgs, n, rep, e.msg);
}
