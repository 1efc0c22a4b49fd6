/*
 * mailspool/client.h - one delivery session over SMTP or QMTP.
 *
 * A thin dispatcher so that programs (and the delivery daemon) drive either
 * engine through one set of calls: connect to a route, submit messages,
 * close.  Results arrive through the same callback with the same
 * per-recipient structure (ms_message), whatever the protocol.
 *
 * Invariant: the client owns exactly one engine, chosen by the route; the
 * options of the other are ignored.
 */
#ifndef MAILSPOOL_CLIENT_H
#define MAILSPOOL_CLIENT_H

#include <stdint.h>
#include "mailspool/error.h"
#include "mailspool/message.h"
#include "mailspool/qmtp.h"
#include "mailspool/route.h"
#include "mailspool/smtp.h"

typedef struct ms_client_opts {
	ms_smtp_opts smtp; /* used for smtp:// routes */
	ms_qmtp_opts qmtp; /* used for qmtp:// routes (replies from the route) */
} ms_client_opts;

typedef struct ms_client_stats {
	uint64_t bytes_out, bytes_in, writes;
	uint64_t round_trips; /* SMTP: reply batches; QMTP: waits with nothing to send */
	uint64_t messages;
	uint64_t transactions; /* SMTP MAIL transactions; QMTP packages written */
	uint64_t connections;
	int pipelining;       /* SMTP PIPELINING in use; always 1 for QMTP */
	uint64_t bdat;        /* SMTP transactions whose data went with BDAT */
	uint64_t resent;      /* SMTP transactions sent again after a session problem */
	const char *shape;    /* ms_smtp_shape; "qmtp" for QMTP */
} ms_client_stats;

typedef struct ms_client ms_client;

void ms_client_opts_default(ms_client_opts *o);
/* Turn off in `o` what the route's URL turns off (?chunking=no, ...). */
void ms_client_route_smtp(const ms_route *r, ms_smtp_opts *o);
ms_client *ms_client_new(const ms_route *r, const ms_client_opts *o, ms_error *err);
void ms_client_free(ms_client *c);
ms_status ms_client_connect(ms_client *c, ms_error *err);
ms_status ms_client_submit(ms_client *c, ms_message *m, ms_error *err);
ms_status ms_client_progress(ms_client *c, ms_error *err);
ms_status ms_client_flush(ms_client *c, ms_error *err);
/* Flush and end the session (SMTP QUIT; QMTP close between packages). */
ms_status ms_client_close(ms_client *c, ms_error *err);
ms_client_stats ms_client_get_stats(const ms_client *c);
int ms_client_failed(const ms_client *c, ms_error *err);
const ms_route *ms_client_route(const ms_client *c);
/* Reuse (mailspool/pool.h): a new result callback and transcript for the
 * next messages, and whether the idle session may carry them. */
void ms_client_set_result(ms_client *c, void (*fn)(void *ctx, ms_message *m), void *ctx);
void ms_client_set_transcript(ms_client *c, ms_transcript *tx);
int ms_client_reusable(const ms_client *c);
/* The socket of a session idle by its state, without a system call; -1
 * when it is not (mailspool/smtp.h ms_smtp_idle_fd). */
int ms_client_idle_fd(const ms_client *c);
/* SMTP only: the TLS session (NULL if plain) and the AUTH mechanism used. */
const ms_tls_info *ms_client_tls(const ms_client *c);
const char *ms_client_auth_mech(const ms_client *c);
/* SMTP: MS_QUIRK_* known of the server now (0 for QMTP). */
unsigned ms_client_quirks(const ms_client *c);
/* The address connected to (Happy Eyeballs' winner; "" if none). */
const char *ms_client_peer(const ms_client *c);

#endif
