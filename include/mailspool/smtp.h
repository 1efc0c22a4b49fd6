/*
 * mailspool/smtp.h - the pipelining SMTP client.
 *
 * RFC 5321 (SMTP), RFC 2920 (PIPELINING), RFC 1870 (SIZE), RFC 6152
 * (8BITMIME), RFC 6531 (SMTPUTF8), RFC 2034/3463 (enhanced status codes).
 * PROTOCOL-RULES R1-R47.
 *
 * Use:
 *     ms_smtp_opts o; ms_smtp_opts_default(&o); o.on_result = cb;
 *     ms_smtp *s = ms_smtp_new(&o, &err);
 *     ms_smtp_connect(s, "mx.example", "25", &err);   // greeting + EHLO
 *     for each message: ms_smtp_submit(s, msg, &err); // results via cb
 *                       ms_smtp_progress(s, &err);    // optional overlap
 *     ms_smtp_quit(s, &err);                          // flush, QUIT
 *     ms_smtp_free(s);
 *
 * How it is fast: with PIPELINING the client sends MAIL, every RCPT and
 * DATA as one group, and when the 354 arrives it writes the body, the final
 * dot and the NEXT message's MAIL/RCPT/DATA in the same write (RFC 2920 3.1
 * allows message content as the first "command" of a group; R20).  A stream
 * of messages so costs one round trip each.  Replies are matched to commands
 * by counting, through one FIFO that runs across message boundaries (R21).
 * Without PIPELINING the same engine goes lock-step.
 *
 * Faster still with CHUNKING (RFC 3030): when the server offers CHUNKING and
 * PIPELINING, each message goes as [RSET] MAIL FROM SIZE=n, its RCPTs and
 * "BDAT n LAST" followed by the n octets (CRLF-normalised, not
 * dot-stuffed), and the next message follows at once, without waiting for
 * any reply: a stream costs about one round trip in all.  A window bounds
 * what is unanswered (bdat_messages messages, bdat_bytes octets), so a
 * broken connection leaves at most that many messages "outcome unknown".
 *
 * Safety of pipelining across messages (P-rules in PROTOCOL-RULES.md):
 * every MAIL after the first is preceded by RSET (rset_first), so no
 * message can inherit a previous sender or crash a server that expects
 * one; a command written behind a message's data that the server refuses
 * (503, RSET refused) or never answers is a session problem - its message
 * is sent again without riding behind data, never failed - and the server
 * is marked (ms_smtp_quirks) so later sessions do not try again.  Server
 * limits end a session, not messages: after session_messages transactions,
 * session_failures failed ones, a "too many messages" reply or a 421 after
 * progress, the engine opens a new connection itself (a session connected
 * with ms_smtp_connect) and sends the rest there.
 *
 * Guarantees: every wait has a deadline (RFC 5321 4.5.3.2 defaults, R43);
 * the engine never blocks writing while replies are unread (R24); a reply
 * that arrives before its command was completely sent, a garbage line or a
 * reply with no command outstanding aborts the session as a protocol error
 * (R4, H3); after the dot is sent and before its reply, a failure leaves the
 * recipients deferred with "outcome unknown" (R44); recipients that already
 * got a permanent reply keep it whatever happens later (R46).
 */
#ifndef MAILSPOOL_SMTP_H
#define MAILSPOOL_SMTP_H

#include <stddef.h>
#include <stdint.h>
#include "mailspool/error.h"
#include "mailspool/net.h"
#include "mailspool/message.h"
#include "mailspool/tls.h"
#include "mailspool/transcript.h"

enum ms_smtp_cap {
	MS_CAP_ESMTP = 1u << 0, /* EHLO was accepted */
	MS_CAP_PIPELINING = 1u << 1,
	MS_CAP_SIZE = 1u << 2,
	MS_CAP_8BITMIME = 1u << 3,
	MS_CAP_SMTPUTF8 = 1u << 4,
	MS_CAP_ENHANCEDSTATUSCODES = 1u << 5,
	MS_CAP_CHUNKING = 1u << 6,
	MS_CAP_DSN = 1u << 7,
	MS_CAP_STARTTLS = 1u << 8,
	MS_CAP_AUTH = 1u << 9,
	MS_CAP_BINARYMIME = 1u << 10,
};

typedef struct ms_smtp_caps {
	unsigned flags;
	uint64_t size_limit; /* SIZE n; 0 = no fixed limit (RFC 1870 7) */
	char auth[256];      /* mechanisms offered, space separated */
	char server[256];    /* the name in the EHLO/HELO reply */
} ms_smtp_caps;

/* Per-reply timeouts in milliseconds (RFC 5321 4.5.3.2 minimums by default). */
typedef struct ms_smtp_timeouts {
	int connect, greeting, ehlo, mail, rcpt, data, data_block, dot, rset, quit;
} ms_smtp_timeouts;

typedef enum ms_pipelining {
	MS_PIPELINING_AUTO = 0, /* use it when the server offers it */
	MS_PIPELINING_OFF       /* lock-step even if offered (R27 escape hatch) */
} ms_pipelining;

typedef enum ms_chunking {
	MS_CHUNKING_AUTO = 0, /* BDAT when the server offers CHUNKING and PIPELINING */
	MS_CHUNKING_OFF       /* always DATA */
} ms_chunking;

/* What a server has shown it cannot take; learnt by a session
 * (ms_smtp_quirks), passed to the next one (opts.quirks). */
enum ms_smtp_quirk {
	MS_QUIRK_NO_CROSS = 1u << 0,    /* refuses or loses commands written behind data */
	MS_QUIRK_BDAT_SERIAL = 1u << 1, /* BDAT one message at a time (window 1) */
	MS_QUIRK_NO_BDAT = 1u << 2,     /* BDAT streams broke even so: DATA */
};

typedef void (*ms_smtp_result_fn)(void *ctx, ms_message *m);

typedef struct ms_smtp_opts {
	const char *helo;       /* EHLO name; default: this host's name */
	ms_pipelining pipelining;
	int cross_message;      /* 1 (default): next envelope rides with the body */
	size_t max_rcpts;       /* recipients per transaction (default 100, R11) */
	int allow_long_lines;   /* send lines over 998 octets instead of refusing */
	size_t window;          /* messages held before submit() waits (default 64;
	                         * at least twice bdat_messages when BDAT streams) */
	ms_chunking chunking;
	size_t bdat_messages;   /* BDAT: messages with their reply outstanding (default 128) */
	uint64_t bdat_bytes;    /* BDAT: octets of those (default 8 MiB; one always goes) */
	uint64_t bdat_unsized_max; /* no SIZE offered: larger messages use DATA (10 MiB) */
	int rset_first;         /* 1 (default): RSET before every MAIL after the first */
	size_t session_messages; /* transactions per connection, then a new one (1000) */
	size_t session_failures; /* failed transactions per connection, then a new one (8) */
	int restarts;           /* new connections after a session problem (default 3) */
	int probe_ms;           /* wait for the reply to a command behind data (5000) */
	unsigned quirks;        /* MS_QUIRK_* already known of this server */
	ms_smtp_timeouts timeouts;
	ms_net_opts net;           /* families, Happy Eyeballs, bind_address, resolver */
	ms_transcript *transcript; /* optional, not owned */
	ms_smtp_result_fn on_result; /* called once per message when final */
	void *ctx;
	size_t read_chunk;      /* cap bytes per read (tests: 1 splits replies at every byte) */
	/* TLS (RFC 3207 STARTTLS, RFC 8314 implicit TLS; R38-R42) */
	ms_tls_policy tls;      /* default MS_TLS_MAY: STARTTLS when offered */
	int implicit_tls;       /* TLS from the first byte (smtps://, port 465) */
	const char *tls_name;   /* the name the certificate must carry; default: the host */
	const char *tls_ca_file; /* CAs for `verify`; default: the system store */
	const ms_tlsa_set *tlsa; /* the server's TLSA records, for MS_TLS_DANE */
	int tls_sts;             /* verify because of an MTA-STS policy: recorded as "mta-sts" */
	int tls_observe;         /* check the certificate, do not enforce (MTA-STS testing) */
	/* AUTH (RFC 4954; R37) */
	const char *auth_user;  /* NULL: no AUTH */
	const char *auth_secret; /* password, or the OAuth token for XOAUTH2 */
	const char *auth_mechs; /* allowed, strongest first; default MS_SASL_DEFAULT_MECHS */
	int auth_plaintext;     /* allow credentials without TLS (off: never sent in clear) */
} ms_smtp_opts;

typedef struct ms_smtp_stats {
	uint64_t bytes_out, bytes_in;
	uint64_t writes;       /* write calls that moved bytes */
	uint64_t round_trips;  /* batches of replies that answered what we wrote */
	uint64_t replies;
	uint64_t transactions; /* MAIL commands sent */
	uint64_t messages;     /* messages finished */
	uint64_t bdat;         /* transactions whose data went with BDAT */
	uint64_t connections;  /* connections opened (restarts included) */
	uint64_t resent;       /* transactions sent again after a session problem */
} ms_smtp_stats;

typedef struct ms_smtp ms_smtp;

void ms_smtp_opts_default(ms_smtp_opts *o);
ms_smtp *ms_smtp_new(const ms_smtp_opts *o, ms_error *err);
void ms_smtp_free(ms_smtp *s);

/* Connect over TCP, read the greeting and say EHLO (HELO on 5xx, R8). */
ms_status ms_smtp_connect(ms_smtp *s, const char *host, const char *port, ms_error *err);
/* The same over a socket the caller has connected (tests, custom routes). */
ms_status ms_smtp_attach(ms_smtp *s, int fd, ms_error *err);

/*
 * Queue a message.  The session borrows it until on_result is called for it
 * (exactly once), after which the caller may free it.  May run the
 * connection for a while when `window` messages are outstanding.  A message
 * submitted to a failed session gets its result at once (every recipient
 * deferred with the failure) and MS_ERR_CLOSED is returned; so does a message
 * whose data cannot be read (deferred, stage local, MS_ERR_IO).  Only a
 * message without recipients is refused without a result (MS_ERR_USAGE).
 * on_result must not call back into the session.
 */
ms_status ms_smtp_submit(ms_smtp *s, ms_message *m, ms_error *err);
/*
 * Move whatever can move now, without waiting: write what may be written,
 * read and act on the replies that have arrived.  Call it between submits to
 * let the connection work while the next message is being prepared.
 */
ms_status ms_smtp_progress(ms_smtp *s, ms_error *err);
/* Run until every submitted message has its result. */
ms_status ms_smtp_flush(ms_smtp *s, ms_error *err);
/* Flush, then QUIT (pipelined after the last dot, R25) and close. */
ms_status ms_smtp_quit(ms_smtp *s, ms_error *err);

const ms_smtp_caps *ms_smtp_get_caps(const ms_smtp *s);
const ms_smtp_stats *ms_smtp_get_stats(const ms_smtp *s);
/* The TLS session's parameters, or NULL when the connection is plain. */
const ms_tls_info *ms_smtp_tls(const ms_smtp *s);
/* The SASL mechanism that authenticated the session, or NULL. */
const char *ms_smtp_auth_mech(const ms_smtp *s);
/* The greeting's text, or "" before it arrived. */
const char *ms_smtp_greeting(const ms_smtp *s);
/* Did the session break (closed, timed out, protocol error)? Why, in err. */
int ms_smtp_failed(const ms_smtp *s, ms_error *err);
/* The address the last connection went to ("" if attached or none). */
const char *ms_smtp_peer(const ms_smtp *s);
/* A session kept open for reuse (mailspool/pool.h) reports its next
 * messages to a new callback, and notes in a new transcript (or none). */
void ms_smtp_set_result(ms_smtp *s, ms_smtp_result_fn fn, void *ctx);
void ms_smtp_set_transcript(ms_smtp *s, ms_transcript *tx);
/* Ready, nothing outstanding, and the server has said nothing since (an
 * idle server that closes, or sends 421 first, is not reusable). */
int ms_smtp_reusable(const ms_smtp *s);
/* The socket of a session that is idle by its state (nothing outstanding,
 * nothing buffered), without looking at it; -1 otherwise. */
int ms_smtp_idle_fd(const ms_smtp *s);
/* MS_QUIRK_* known of this server: opts.quirks and what this session
 * learnt (for the caller to remember per server). */
unsigned ms_smtp_quirks(const ms_smtp *s);
/* The shape the session used for its last transaction: "bdat-stream",
 * "bdat", "data-cross", "data", "lock-step" (or "none"). */
const char *ms_smtp_shape(const ms_smtp *s);

#endif
