/*
 * mailspool/sched.h - what an attempt means for a queued message: retry
 * tiers, final states, bounces, the delivery log, the usage log.
 *
 * Retry tiers (mailspool.conf retry_tiers, default 0 30m 4h 8h 16h 24h
 * 48h, about 4.2 days in all) are the waits before each attempt: a
 * recipient that fails temporarily at tier t is due again tiers[t+1]
 * later; one that fails at the last tier has exhausted them and fails for
 * good (RFC 5321 4.5.4.1, PROTOCOL-RULES T1).  Each recipient keeps its own
 * tier, so the next attempt goes only to the recipients still pending.
 *
 * ms_sched_settle applies one attempt's results to a claimed envelope:
 * delivered recipients are done, failed ones (permanent replies, exhausted
 * tiers, final DNS answers) get one RFC 3464 bounce per call covering all
 * of them (never for the null sender: B1), and the envelope is then
 * rewritten - or removed when no recipient is left to try.  The bounce is
 * committed before the envelope changes, so a crash between the two can
 * repeat a bounce but never lose one (T4).  A bounce that cannot be queued
 * (a full disk, an I/O error) leaves its recipients BOUNCING: the message
 * stays, is never sent to them again, and the bounce is tried again every
 * the first retry tier (at most 5 minutes); the daemon's bounces may dig into a reserve under
 * min_free_space (mailspool/spool.h ms_spool_reserve).
 *
 * Log lines are in the style operators know from Postfix:
 *     ID: to=<rcpt>, relay=mx.example[192.0.2.1]:25, delay=1.2, attempt=1,
 *     dsn=2.0.0, status=sent (250 2.0.0 Ok)
 *
 * Invariant: every result is recorded in the recipient's history before
 * the envelope is written; a recipient is never moved out of a final
 * state.
 */
#ifndef MAILSPOOL_SCHED_H
#define MAILSPOOL_SCHED_H

#include <stddef.h>
#include <stdint.h>
#include "mailspool/conf.h"
#include "mailspool/deliver.h"
#include "mailspool/envelope.h"
#include "mailspool/error.h"
#include "mailspool/message.h"
#include "mailspool/spool.h"

#define MS_LOG_LINE_MAX 2048
#define MS_LOG_JSON_MAX 12288 /* a delivery record as JSON (log_format = json) */

/* One recipient's result in an attempt. */
typedef struct ms_sched_result {
	size_t rcpt;          /* index into the envelope's recipients */
	ms_rcpt_state state;  /* delivered, failed; anything else counts as deferred */
	int code;
	char enh[16];
	char text[MS_ENV_TEXT_MAX];
	char relay[MS_RELAY_DESC_MAX];
	int dsn_passed;       /* delivered to a server that offers DSN (RFC 3461 5.2) */
	char tls[MS_MESSAGE_TLS_MAX]; /* ms_message.tls: "none", "verified TLSv1.3 ..." */
} ms_sched_result;

/* One log record: a line of printable text, or (log_format = json) a JSON
 * object, which starts with '{'; the program adds the time and pid. */
typedef void (*ms_log_fn)(void *ctx, const char *line);

typedef struct ms_sched_opts {
	const ms_conf *conf;
	int bounce;          /* send bounces (off: the caller reports failures itself) */
	ms_log_fn log;       /* one call per line; may be NULL */
	void *log_ctx;
	int64_t now;         /* 0: time(NULL) */
} ms_sched_opts;

typedef struct ms_sched_summary {
	size_t delivered, deferred, failed; /* in this attempt */
	char bounce_id[MS_ENV_ID_MAX + 1];  /* the bounce queued, "" if none */
	int removed;                        /* nothing was left to try */
	int64_t next_due;                   /* when the message is due again */
	unsigned reports[3];                /* DSNs queued: bounce, delayed, relayed */
	unsigned report_failures;           /* DSNs that could not be queued */
} ms_sched_summary;

/* When to try again after a fault of our own (a bounce or an envelope that
 * could not be written): the first retry tier, from 1 s to `cap`. */
int64_t ms_sched_retry_soon(const ms_conf *c, int64_t cap);

/* Recipients of e due at `now` (pending or deferred, next <= now), written
 * to idx (room for e->nrcpts); returns how many.  A held message has none. */
size_t ms_sched_due(const ms_envelope *e, int64_t now, size_t *idx);
/* The same, a recipient never attempted counted due up to `skew` seconds
 * early: its first due time is the submitting host's clock, which may run
 * ahead of ours (several hosts sharing a spool). */
size_t ms_sched_due_skew(const ms_envelope *e, int64_t now, int64_t skew, size_t *idx);

/* The recipients of e due at `now`, by destination (mailspool/deliver.h):
 * one group per destination key, in the order first seen.  Recipients
 * that cannot be routed (no relay configured for the sender) are results
 * already: deferred, with the reason. */
typedef struct ms_sched_group {
	char key[MS_DEST_MAX];
	size_t *idx;  /* envelope recipient indexes */
	size_t n;
} ms_sched_group;

typedef struct ms_sched_plan {
	ms_sched_group *groups;
	size_t ngroups;
	ms_sched_result *unroutable;
	size_t nunroutable;
	int bounce_due;  /* a bounce that could not be queued before is due again */
} ms_sched_plan;

ms_status ms_sched_plan_make(const ms_conf *c, const ms_envelope *e, int64_t now,
                             ms_sched_plan *p, ms_error *err);
void ms_sched_plan_free(ms_sched_plan *p);

/* A message for the engines: e's sender, the recipients idx[0..n), the data
 * file (its fd is returned in *fd; the caller closes it after the result). */
ms_status ms_sched_message(ms_spool *sp, const ms_envelope *e, const size_t *idx, size_t n,
                           ms_message **m, int *fd, ms_error *err);

/* Copy a finished message's outcomes into results (one per recipient of m,
 * whose i-th recipient is envelope recipient idx[i]). */
void ms_sched_results(const ms_message *m, const size_t *idx, const char *relay,
                      ms_sched_result *out);

/* Apply results to the claimed envelope e and write it back (or remove the
 * message); bounce and log as above. */
ms_status ms_sched_settle(ms_spool *sp, const ms_sched_opts *o, ms_envelope *e,
                          const ms_sched_result *res, size_t n, ms_sched_summary *sum,
                          ms_error *err);

/* One attempt of every due recipient of e, in this process: grouped by
 * destination, one session per destination.  *res (free it) gets one
 * result per attempted recipient. */
ms_status ms_sched_attempt(ms_spool *sp, const ms_conf *c, const ms_envelope *e,
                           ms_transcript *tx, ms_sched_result **res, size_t *nres, ms_error *err);

/* The delivery modes that deliver at once (send --mode, sendmail -odi and
 * -odb), for the queue's owner and a message it has just queued:
 *  - MS_MODE_NOW (Interactive): the message was queued held, so no daemon
 *    takes it; every recipient is attempted once and the message removed
 *    whatever happened: the caller reports each result and nothing stays;
 *  - MS_MODE_BACKGROUND: attempted once, the results recorded as the
 *    daemon would but without bounces (the caller reports the failures);
 *    temporary failures stay queued on the tiers.
 * The message's claim is taken first: *busy is set (MS_OK, nothing done)
 * when a daemon already holds it.  e and *res (free both) hold the
 * envelope and the results, even when the final remove or settle failed
 * (err then says why, with *nres results still to report). */
typedef enum ms_sched_mode { MS_MODE_NOW = 1, MS_MODE_BACKGROUND } ms_sched_mode;
ms_status ms_sched_deliver_mode(ms_spool *sp, const ms_conf *c, const char *id,
                                ms_sched_mode mode, ms_envelope *e, ms_sched_result **res,
                                size_t *nres, int *busy, ms_error *err);

#endif
