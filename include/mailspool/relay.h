/*
 * mailspool/relay.h - sending through configured relays (smarthosts), with
 * failover.
 *
 * The relays for a sender come from the configuration (mailspool.conf(5):
 * relay.NAME.*, relays, sender_relays.*), in order.  Every message goes
 * over one connection to the first relay, logged in once (never one login
 * per message); what that relay could not take - the connection failed or
 * was refused, or some recipients got a temporary failure - goes to the
 * next relay, only for the recipients still deferred.  What no relay took
 * keeps its last temporary failure; permanent failures are final at once.
 *
 * Credentials are read per relay: a password file that group or others may
 * read is refused; a command (password_eval, oauth_token_eval) gives its
 * first line.  Relays default to TLS policy `verify`.
 *
 * Invariant: a message is reported through on_result exactly once, after
 * the last relay it needed.
 */
#ifndef MAILSPOOL_RELAY_H
#define MAILSPOOL_RELAY_H

#include <stddef.h>
#include "mailspool/conf.h"
#include "mailspool/error.h"
#include "mailspool/message.h"
#include "mailspool/smtp.h"

#define MS_SECRET_MAX 4096

/* A relay's secret (password or token) into out; MS_ERR_USAGE naming the
 * problem (file readable by others, command failed, none configured). */
ms_status ms_relay_secret(const ms_conf_relay *r, char *out, size_t n, ms_error *err);
/* A password file's first line; refused when group or others may read it. */
ms_status ms_secret_file(const char *path, char *out, size_t n, ms_error *err);
/* The first line a command prints (msmtp's passwordeval). */
ms_status ms_secret_command(const char *cmd, char *out, size_t n, ms_error *err);

typedef struct ms_relay_report {
	size_t tried;             /* relays connected to (or attempted) */
	char last[64];            /* the last relay used */
	char errors[MS_ERROR_MSG_MAX]; /* the last relay's session error, "" if none */
	uint64_t round_trips, bytes_out, writes;
} ms_relay_report;

/*
 * Send msgs through relays[0..n) in order.  `base` gives everything but
 * the relay's own settings (helo, timeouts, transcript, on_result/ctx...).
 * Returns MS_OK when the relays were tried (each message's outcome is in
 * it and was reported), or an error that prevented trying at all.
 */
ms_status ms_relay_send(const ms_conf_relay *const *relays, size_t n, const ms_smtp_opts *base,
                        ms_message **msgs, size_t nmsgs, ms_relay_report *rep, ms_error *err);

#endif
