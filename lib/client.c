/*
 * client.c - one delivery session over SMTP or QMTP (see mailspool/client.h).
 */
#include "mailspool/client.h"

#include <stdlib.h>

struct ms_client {
	ms_route route;
	ms_smtp *smtp;
	ms_qmtp *qmtp;
	int smtp_pipelining_allowed;
};

void ms_client_opts_default(ms_client_opts *o)
{
	ms_smtp_opts_default(&o->smtp);
	ms_qmtp_opts_default(&o->qmtp);
}

void ms_client_route_smtp(const ms_route *r, ms_smtp_opts *o)
{
	if (r->smtp_off & MS_ROUTE_NO_CHUNKING)
		o->chunking = MS_CHUNKING_OFF;
	if (r->smtp_off & MS_ROUTE_NO_CROSS)
		o->cross_message = 0;
	if (r->smtp_off & MS_ROUTE_NO_PIPELINING)
		o->pipelining = MS_PIPELINING_OFF;
	if (r->smtp_off & MS_ROUTE_NO_RSET_FIRST)
		o->rset_first = 0;
}

ms_client *ms_client_new(const ms_route *r, const ms_client_opts *o, ms_error *err)
{
	ms_client *c = calloc(1, sizeof *c);
	if (!c) {
		ms_error_set(err, MS_ERR_NOMEM, "out of memory");
		return NULL;
	}
	c->route = *r;
	if (r->proto == MS_PROTO_QMTP) {
		ms_qmtp_opts qo = o->qmtp;
		qo.replies = r->qmtp_replies;
		if (r->qmtp_encoding != MS_QMTP_ENC_AUTO)
			qo.encoding = r->qmtp_encoding;
		c->qmtp = ms_qmtp_new(&qo, err);
	} else {
		ms_smtp_opts so = o->smtp;
		if (r->implicit_tls)
			so.implicit_tls = 1;
		if (r->user[0] && !so.auth_user)
			so.auth_user = c->route.user;
		ms_client_route_smtp(r, &so);
		c->smtp = ms_smtp_new(&so, err);
		c->smtp_pipelining_allowed = so.pipelining == MS_PIPELINING_AUTO;
	}
	if (!c->qmtp && !c->smtp) {
		free(c);
		return NULL;
	}
	return c;
}

void ms_client_free(ms_client *c)
{
	if (!c)
		return;
	ms_smtp_free(c->smtp);
	ms_qmtp_free(c->qmtp);
	free(c);
}

ms_status ms_client_connect(ms_client *c, ms_error *err)
{
	return c->qmtp ? ms_qmtp_connect(c->qmtp, c->route.host, c->route.port, err)
	               : ms_smtp_connect(c->smtp, c->route.host, c->route.port, err);
}

ms_status ms_client_submit(ms_client *c, ms_message *m, ms_error *err)
{
	return c->qmtp ? ms_qmtp_submit(c->qmtp, m, err) : ms_smtp_submit(c->smtp, m, err);
}

ms_status ms_client_progress(ms_client *c, ms_error *err)
{
	return c->qmtp ? ms_qmtp_progress(c->qmtp, err) : ms_smtp_progress(c->smtp, err);
}

ms_status ms_client_flush(ms_client *c, ms_error *err)
{
	return c->qmtp ? ms_qmtp_flush(c->qmtp, err) : ms_smtp_flush(c->smtp, err);
}

ms_status ms_client_close(ms_client *c, ms_error *err)
{
	return c->qmtp ? ms_qmtp_disconnect(c->qmtp, err) : ms_smtp_quit(c->smtp, err);
}

ms_client_stats ms_client_get_stats(const ms_client *c)
{
	ms_client_stats s = { 0 };
	if (c->qmtp) {
		const ms_qmtp_stats *q = ms_qmtp_get_stats(c->qmtp);
		s = (ms_client_stats){ q->bytes_out, q->bytes_in, q->writes, q->round_trips,
		                       q->messages, q->packages, q->connections, 1, 0, q->resent, "qmtp" };
	} else {
		const ms_smtp_stats *t = ms_smtp_get_stats(c->smtp);
		s = (ms_client_stats){ t->bytes_out, t->bytes_in, t->writes, t->round_trips,
		                       t->messages, t->transactions, t->connections,
		                       c->smtp_pipelining_allowed &&
		                           (ms_smtp_get_caps(c->smtp)->flags & MS_CAP_PIPELINING),
		                       t->bdat, t->resent, ms_smtp_shape(c->smtp) };
	}
	return s;
}

int ms_client_failed(const ms_client *c, ms_error *err)
{
	return c->qmtp ? ms_qmtp_failed(c->qmtp, err) : ms_smtp_failed(c->smtp, err);
}

const ms_tls_info *ms_client_tls(const ms_client *c)
{
	return c->smtp ? ms_smtp_tls(c->smtp) : NULL;
}

const char *ms_client_auth_mech(const ms_client *c)
{
	return c->smtp ? ms_smtp_auth_mech(c->smtp) : NULL;
}

unsigned ms_client_quirks(const ms_client *c)
{
	return c->smtp ? ms_smtp_quirks(c->smtp) : 0;
}

const char *ms_client_peer(const ms_client *c)
{
	return c->qmtp ? ms_qmtp_peer(c->qmtp) : ms_smtp_peer(c->smtp);
}

const ms_route *ms_client_route(const ms_client *c)
{
	return &c->route;
}

void ms_client_set_result(ms_client *c, void (*fn)(void *ctx, ms_message *m), void *ctx)
{
	if (c->qmtp)
		ms_qmtp_set_result(c->qmtp, fn, ctx);
	else
		ms_smtp_set_result(c->smtp, fn, ctx);
}

void ms_client_set_transcript(ms_client *c, ms_transcript *tx)
{
	if (c->qmtp)
		ms_qmtp_set_transcript(c->qmtp, tx);
	else
		ms_smtp_set_transcript(c->smtp, tx);
}

int ms_client_idle_fd(const ms_client *c)
{
	return c->qmtp ? ms_qmtp_idle_fd(c->qmtp) : ms_smtp_idle_fd(c->smtp);
}

int ms_client_reusable(const ms_client *c)
{
	return c->qmtp ? ms_qmtp_reusable(c->qmtp) : ms_smtp_reusable(c->smtp);
}
