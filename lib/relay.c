/*
 * relay.c - sending through configured relays with failover (see
 * mailspool/relay.h).
 */
#include "mailspool/relay.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mailspool/client.h"
#include "mailspool/route.h"

ms_status ms_secret_file(const char *path, char *out, size_t n, ms_error *err)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	struct stat st;
	if (fd < 0 || fstat(fd, &st) < 0) {
		ms_error_set(err, MS_ERR_USAGE, "cannot read password file %s: %s", path, strerror(errno));
		if (fd >= 0)
			close(fd);
		return MS_ERR_USAGE;
	}
	if (st.st_mode & (S_IRWXG | S_IRWXO)) {
		close(fd);
		return ms_error_set(err, MS_ERR_USAGE,
		                    "password file %s is accessible to group or others (mode %03o): "
		                    "refused; chmod 600 it",
		                    path, (unsigned)(st.st_mode & 0777));
	}
	ssize_t k = read(fd, out, n - 1);
	close(fd);
	if (k < 0)
		return ms_error_set(err, MS_ERR_USAGE, "cannot read password file %s", path);
	out[k] = '\0';
	out[strcspn(out, "\r\n")] = '\0';
	return MS_OK;
}

ms_status ms_secret_command(const char *cmd, char *out, size_t n, ms_error *err)
{
	FILE *p = popen(cmd, "r");
	if (!p)
		return ms_error_set(err, MS_ERR_USAGE, "cannot run \"%.100s\"", cmd);
	if (!fgets(out, (int)n, p))
		out[0] = '\0';
	while (getc(p) != EOF)
		;
	int rc = pclose(p);
	out[strcspn(out, "\r\n")] = '\0';
	if (rc != 0 || !out[0])
		return ms_error_set(err, MS_ERR_USAGE, "\"%.100s\" failed or printed nothing", cmd);
	return MS_OK;
}

ms_status ms_relay_secret(const ms_conf_relay *r, char *out, size_t n, ms_error *err)
{
	out[0] = '\0';
	if (r->password_file[0])
		return ms_secret_file(r->password_file, out, n, err);
	if (r->password_eval[0])
		return ms_secret_command(r->password_eval, out, n, err);
	if (r->oauth_token_eval[0])
		return ms_secret_command(r->oauth_token_eval, out, n, err);
	return ms_error_set(err, MS_ERR_USAGE, "relay %s has a user but no password_file, "
	                                       "password_eval or oauth_token_eval",
	                    r->name);
}


/* Results inside one relay's session are collected, not passed on: the
 * message may still go to the next relay. */
static void hold_result(void *ctx, ms_message *m)
{
	(void)ctx;
	(void)m;
}

static int needs_retry(const ms_message *m)
{
	for (size_t i = 0; i < m->nrcpts; i++)
		if (m->rcpts[i].state == MS_RCPT_DEFERRED)
			return 1;
	return 0;
}

/* One relay, one connection, every message that still needs it. */
static void try_relay(const ms_conf_relay *r, const ms_smtp_opts *base, ms_message **msgs,
                      size_t n, ms_relay_report *rep)
{
	ms_route rt;
	ms_error err;
	char secret[MS_SECRET_MAX] = "";
	ms_smtp_opts o = *base;
	o.on_result = hold_result;
	o.ctx = NULL;
	const char *why = NULL;
	char buf[MS_ERROR_MSG_MAX];
	if (ms_route_parse(r->url, &rt, &err) != MS_OK || rt.proto != MS_PROTO_SMTP) {
		snprintf(buf, sizeof buf, "relay %s: %.400s", r->name,
		         rt.proto != MS_PROTO_SMTP ? "only SMTP relays are supported" : err.msg);
		why = buf;
	}
	o.tls = r->tls < 0 ? MS_TLS_VERIFY : (ms_tls_policy)r->tls;
	o.implicit_tls = rt.implicit_tls;
	if (rt.implicit_tls && o.tls < MS_TLS_ENCRYPT)
		o.tls = MS_TLS_ENCRYPT;
	o.tls_ca_file = r->tls_ca_file[0] ? r->tls_ca_file : base->tls_ca_file;
	o.tls_name = r->tls_name[0] ? r->tls_name : NULL;
	o.auth_user = rt.user[0] ? rt.user : NULL;
	o.auth_mechs = r->auth_mechs[0] ? r->auth_mechs : r->oauth_token_eval[0] ? "XOAUTH2" : NULL;
	o.auth_plaintext = r->auth_plaintext;
	ms_client_route_smtp(&rt, &o);
	if (!why && o.auth_user) {
		if (ms_relay_secret(r, secret, sizeof secret, &err) != MS_OK) {
			snprintf(buf, sizeof buf, "relay %s: %.400s", r->name, err.msg);
			why = buf;
		}
		o.auth_secret = secret;
	}
	rep->tried++;
	snprintf(rep->last, sizeof rep->last, "%s", r->name);
	ms_transcript_addf(base->transcript, MS_TX_NOTE, "relay %s: %s", r->name, r->url);
	ms_smtp *s = why ? NULL : ms_smtp_new(&o, &err);
	if (!why && !s) {
		snprintf(buf, sizeof buf, "relay %s: %.400s", r->name, err.msg);
		why = buf;
	}
	if (why) {
		/* Not even tried: every waiting recipient keeps (or gets) this. */
		snprintf(rep->errors, sizeof rep->errors, "%s", why);
		for (size_t i = 0; i < n; i++)
			ms_message_settle(msgs[i], MS_RCPT_DEFERRED, MS_STAGE_CONNECT, 0, "4.3.5", why);
		OPENSSL_cleanse(secret, sizeof secret);
		return;
	}
	ms_smtp_connect(s, rt.host, rt.port, &err);
	for (size_t i = 0; i < n; i++)
		ms_smtp_submit(s, msgs[i], &err);
	ms_smtp_quit(s, &err);
	ms_error ferr;
	rep->errors[0] = '\0';
	if (ms_smtp_failed(s, &ferr))
		snprintf(rep->errors, sizeof rep->errors, "relay %s: %.400s", r->name, ferr.msg);
	const ms_smtp_stats *st = ms_smtp_get_stats(s);
	rep->round_trips += st->round_trips;
	rep->bytes_out += st->bytes_out;
	rep->writes += st->writes;
	ms_smtp_free(s);
	OPENSSL_cleanse(secret, sizeof secret);
}

ms_status ms_relay_send(const ms_conf_relay *const *relays, size_t n, const ms_smtp_opts *base,
                        ms_message **msgs, size_t nmsgs, ms_relay_report *rep, ms_error *err)
{
	memset(rep, 0, sizeof *rep);
	if (n == 0)
		return ms_error_set(err, MS_ERR_USAGE, "no relay is configured for this sender");
	ms_message **todo = malloc((nmsgs ? nmsgs : 1) * sizeof *todo);
	if (!todo)
		return ms_error_set(err, MS_ERR_NOMEM, "out of memory");
	memcpy(todo, msgs, nmsgs * sizeof *todo);
	size_t left = nmsgs;
	for (size_t r = 0; r < n && left > 0; r++) {
		if (r > 0) {
			/* Failover: only recipients still deferred go again. */
			ms_transcript_addf(base->transcript, MS_TX_NOTE,
			                   "%zu message%s left for the next relay", left,
			                   left == 1 ? "" : "s");
			for (size_t i = 0; i < left; i++) {
				ms_message *m = todo[i];
				m->done = 0;
				for (size_t k = 0; k < m->nrcpts; k++)
					if (m->rcpts[k].state == MS_RCPT_DEFERRED) {
						m->rcpts[k].state = MS_RCPT_PENDING;
						m->rcpts[k].rcpt_code = 0;
					}
			}
		}
		try_relay(relays[r], base, todo, left, rep);
		size_t k = 0;
		for (size_t i = 0; i < left; i++)
			if (needs_retry(todo[i]))
				todo[k++] = todo[i];
		left = k;
	}
	free(todo);
	for (size_t i = 0; i < nmsgs; i++) {
		msgs[i]->done = 1;
		if (base->on_result)
			base->on_result(base->ctx, msgs[i]); /* may free it */
	}
	return MS_OK;
}
