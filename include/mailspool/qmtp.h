/*
 * mailspool/qmtp.h - the streaming QMTP client.
 *
 * QMTP (D. J. Bernstein, cr.yp.to/proto/qmtp.txt, 1997-02-01): no greeting,
 * no EHLO, no 354.  Each message is one package,
 *     netstring(encoding byte + message) netstring(sender)
 *     netstring(netstring(rcpt1) netstring(rcpt2) ...)
 * and the server answers each recipient with a netstring whose first byte
 * is K (accepted), Z (temporary failure) or D (permanent failure).
 * PROTOCOL-RULES Q1-Q10, N1, H12.
 *
 * Use:
 *     ms_qmtp_opts o; ms_qmtp_opts_default(&o); o.on_result = cb;
 *     ms_qmtp *q = ms_qmtp_new(&o, &err);
 *     ms_qmtp_connect(q, "mx.example", NULL, &err);   // port 209
 *     for each message: ms_qmtp_submit(q, msg, &err); // results via cb
 *     ms_qmtp_disconnect(q, &err);                    // wait for replies, close
 *     ms_qmtp_free(q);
 *
 * How it is fast: packages are written back to back while replies are read
 * in the same poll loop (Q6), so a batch costs about one round trip plus
 * its transfer time.  Message data is streamed from its segments (files are
 * read with pread) with the length known beforehand; nothing is loaded
 * whole and nothing is rewritten: the encoding byte declares the data's own
 * line endings (Q3).
 *
 * Guarantees: a reply byte that arrives before the last byte of the package
 * it answers was written aborts the connection (Q5); recipients of a fully
 * sent package that got no reply are deferred with a note that the message
 * may be delivered twice (Q7); a package cut short is abandoned by closing
 * the connection, which makes the server throw it away (Q8); a session is
 * cycled after max_session_ms (Q9, one hour by default); every wait has a
 * deadline; replies are capped (MS_QMTP_REPLY_MAX).
 *
 * Real servers differ: mailfront 2.12 answers once per package instead of
 * once per recipient (Q12).  Counting replies per recipient against such a
 * server credits the next package's reply to this one's second recipient,
 * so the default, MS_QMTP_REPLIES_AUTO, finds out first: the first package
 * with more than one recipient goes with nothing behind it; a second reply
 * within MS_QMTP_PROBE_MS of the first means per recipient, silence means
 * per package (the one reply then holds for every recipient).  What was
 * learned holds for the session's later connections.  The probe costs one
 * round trip and at most MS_QMTP_PROBE_MS once per session; packages with
 * one recipient, which both kinds answer alike, go on streaming.
 * `replies = MS_QMTP_PER_RECIPIENT` or `MS_QMTP_PER_PACKAGE` skips it.
 */
#ifndef MAILSPOOL_QMTP_H
#define MAILSPOOL_QMTP_H

#include <stddef.h>
#include <stdint.h>
#include "mailspool/buf.h"
#include "mailspool/error.h"
#include "mailspool/net.h"
#include "mailspool/message.h"
#include "mailspool/transcript.h"

#define MS_QMTP_PORT "209"
/* A reply is a status byte and a short text; qmail's are under 100 bytes. */
#define MS_QMTP_REPLY_MAX 4096

typedef enum ms_qmtp_replies {
	MS_QMTP_REPLIES_AUTO = 0,  /* find out (Q12), then as below */
	MS_QMTP_PER_RECIPIENT,     /* the spec: one reply per recipient, in order */
	MS_QMTP_PER_PACKAGE        /* one reply per package (mailfront 2.12) */
} ms_qmtp_replies;

/* How long the reply-mode probe waits for a second reply (Q12). */
#define MS_QMTP_PROBE_MS 1000

typedef enum ms_qmtp_encoding {
	MS_QMTP_ENC_AUTO = 0, /* from the data: CRLF when it has CRLF line ends */
	MS_QMTP_ENC_CRLF,     /* "\015": lines end in CRLF (encoding #1) */
	MS_QMTP_ENC_LF,       /* "\012": lines end in LF (encoding #2) */
	MS_QMTP_ENC_TO_LF     /* "\012", and the CR of every CRLF is dropped on the way:
	                       * CRLF data (a spool's) for servers that take only
	                       * LF, such as mailfront 2.12 */
} ms_qmtp_encoding;

typedef void (*ms_qmtp_result_fn)(void *ctx, ms_message *m);

typedef struct ms_qmtp_opts {
	ms_qmtp_replies replies;
	ms_qmtp_encoding encoding;
	int connect_timeout_ms;  /* each TCP connect (default 30 s) */
	int reply_timeout_ms;    /* after a package's last byte, for its replies (600 s) */
	int write_timeout_ms;    /* without write progress (180 s) */
	int max_session_ms;      /* cycle the connection after this (Q9: 1 hour) */
	size_t window;           /* packages outstanding before submit() waits (1024) */
	ms_net_opts net;           /* families, Happy Eyeballs, bind_address, resolver */
	ms_transcript *transcript; /* optional, not owned */
	ms_qmtp_result_fn on_result; /* called once per message when final */
	void *ctx;
	size_t read_chunk;       /* cap bytes per read (tests) */
} ms_qmtp_opts;

typedef struct ms_qmtp_stats {
	uint64_t bytes_out, bytes_in;
	uint64_t writes;       /* write calls that moved bytes */
	uint64_t round_trips;  /* waits for replies with nothing else to send */
	uint64_t replies;
	uint64_t packages;     /* packages completely written */
	uint64_t messages;     /* messages finished */
	uint64_t connections;  /* connections opened */
	uint64_t resent;       /* packages sent again (a refused encoding, Q11) */
} ms_qmtp_stats;

/* What one reply says (ms_qmtp_parse_reply). */
typedef struct ms_qmtp_reply {
	char status;            /* 'K', 'Z' or 'D' */
	ms_rcpt_state state;    /* delivered, deferred, failed */
	char enh[MS_ENH_MAX];   /* "(#5.1.1)" or a leading "5.1.1 "; "" if none */
	char text[MS_QMTP_REPLY_MAX]; /* the text after the status byte, sanitised */
} ms_qmtp_reply;

typedef struct ms_qmtp ms_qmtp;

void ms_qmtp_opts_default(ms_qmtp_opts *o);
ms_qmtp *ms_qmtp_new(const ms_qmtp_opts *o, ms_error *err);
void ms_qmtp_free(ms_qmtp *q);

/* Open a TCP connection (port NULL: 209).  QMTP has no greeting: this only
 * connects.  The host and port are kept for cycling and reconnecting. */
ms_status ms_qmtp_connect(ms_qmtp *q, const char *host, const char *port, ms_error *err);
/* The same over a socket the caller connected (cannot be reconnected). */
ms_status ms_qmtp_attach(ms_qmtp *q, int fd, ms_error *err);

/*
 * Queue a message.  The session borrows it until on_result is called for it
 * (exactly once), after which the caller may free it.  Only recipients that
 * are not yet final are sent.  May run the connection for a while when
 * `window` messages are outstanding.  A message submitted to a failed
 * session gets its result at once (every recipient deferred) and
 * MS_ERR_CLOSED is returned; a message without recipients is refused
 * without a result (MS_ERR_USAGE).  on_result must not call back into the
 * session.
 */
ms_status ms_qmtp_submit(ms_qmtp *q, ms_message *m, ms_error *err);
/* Net::QMTP's send(): submit m and wait until every message submitted so far
 * has its result; m's recipients then hold their replies (if on_result did
 * not free it). */
ms_status ms_qmtp_send(ms_qmtp *q, ms_message *m, ms_error *err);
/* Move whatever can move now, without waiting. */
ms_status ms_qmtp_progress(ms_qmtp *q, ms_error *err);
/* Run until every submitted message has its result. */
ms_status ms_qmtp_flush(ms_qmtp *q, ms_error *err);
/* Flush, then close.  QMTP has no QUIT: closing between packages ends it. */
ms_status ms_qmtp_disconnect(ms_qmtp *q, ms_error *err);
/* Flush, close and connect again to the same host (ms_qmtp_connect only). */
ms_status ms_qmtp_reconnect(ms_qmtp *q, ms_error *err);

const ms_qmtp_stats *ms_qmtp_get_stats(const ms_qmtp *q);
/* Did the session break (closed early, timed out, protocol error)? */
int ms_qmtp_failed(const ms_qmtp *q, ms_error *err);
/* The address the last connection went to ("" if attached or none). */
const char *ms_qmtp_peer(const ms_qmtp *q);
/* For sessions kept for reuse, as in mailspool/smtp.h. */
void ms_qmtp_set_result(ms_qmtp *q, ms_qmtp_result_fn fn, void *ctx);
void ms_qmtp_set_transcript(ms_qmtp *q, ms_transcript *tx);
int ms_qmtp_reusable(const ms_qmtp *q);
/* As ms_smtp_idle_fd. */
int ms_qmtp_idle_fd(const ms_qmtp *q);

/* ---- the pieces, for tests and for callers with their own transport ---- */

/* The encoding byte a message gets: 015 or 012 (the message must be
 * scanned; see ms_message_scan). */
char ms_qmtp_encoding_byte(const ms_message *m, ms_qmtp_encoding enc);
/* Octets the package of m takes on the wire (m scanned). */
uint64_t ms_qmtp_package_size(const ms_message *m, ms_qmtp_encoding enc);
/* Append the whole package of m to out (small messages; the engine streams
 * the data instead of building this). */
ms_status ms_qmtp_package(const ms_message *m, ms_qmtp_encoding enc, ms_buf *out,
                          ms_error *err);
/* Parse one reply payload (the netstring's contents). */
ms_status ms_qmtp_parse_reply(const char *p, size_t n, ms_qmtp_reply *r, ms_error *err);

#endif
