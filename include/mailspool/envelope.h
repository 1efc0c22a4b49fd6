/*
 * mailspool/envelope.h - a queued message's envelope and its file format.
 *
 * The envelope is everything the spool knows about a message besides its
 * data: id, arrival, submitting user, sender, data size, flags, and for
 * every recipient its own state, attempts, retry tier, next attempt time
 * and last reply.
 *
 * File format (self-validating; one record per line, LF-terminated):
 *
 *     MSENV 1                                    magic and version
 *     I <id>                                     exactly once
 *     A <arrival, unix seconds>                  exactly once
 *     U <uid of the submitter>                   exactly once
 *     S =<sender>                                exactly once ("=" alone: <>)
 *     Z <octets of the data file>                exactly once
 *     F <flags>                                  exactly once
 *     D <ret> =<envid>                           at most once: the DSN request
 *                                                (RFC 3461; ret 0 none, 1 FULL,
 *                                                2 HDRS; "=" alone: no ENVID)
 *     P =<prefix>                                at most once, after F or D: header
 *                                                lines sent before the data file
 *                                                (the DKIM-Signature fields made at
 *                                                commit, CRLF-terminated)
 *     R <state> <attempts> <tier> <next> <last> <code> =<enh> =<addr> =<text>
 *                                                once per recipient, in order
 *     N <notify> =<orcpt>                        at most once, right after its R:
 *                                                NOTIFY bits (mailspool/dsnreq.h)
 *                                                and ORCPT ("=" alone: none)
 *     H <time> <code> =<enh> =<text> [=<tls>]    that recipient's past attempts,
 *                                                oldest first (at most MS_ENV_HISTORY);
 *                                                tls: how the session was secured
 *                                                ("none", "verified TLSv1.3 ...")
 *     E <number of records before this one>
 *     C <SHA-256 of every byte before this line, hex>
 *
 * String fields start with '=' and escape every byte outside 0x21-0x7E and
 * '%' itself as %XX, so any byte string (spaces, CR, LF, NUL, UTF-8) fits in
 * one field and reads back unchanged.  A file that is truncated anywhere, has
 * a record out of place, an unknown record, a bad number or a checksum that
 * does not match is damaged: the parser says so (MS_ERR_DATA) and never
 * guesses.
 *
 * Invariant: ms_env_parse(ms_env_serialize(e)) == e for every envelope whose
 * id is valid (ms_env_id_ok).
 */
#ifndef MAILSPOOL_ENVELOPE_H
#define MAILSPOOL_ENVELOPE_H

#include <stddef.h>
#include <stdint.h>
#include "mailspool/buf.h"
#include "mailspool/error.h"

#define MS_ENV_ID_MAX 32
#define MS_ENV_MAX_RCPTS 100000
#define MS_ENV_TEXT_MAX 2048  /* last reply text kept per recipient */
#define MS_ENV_FILE_MAX (64u << 20)
#define MS_ENV_HISTORY 16      /* attempts remembered per recipient */
#define MS_ENV_PREFIX_MAX 16384 /* the P record's header lines */

enum {
	MS_ENV_HOLD = 1u << 0,   /* held: no dequeuer takes it */
	MS_ENV_WARNED = 1u << 1  /* its delay_warning report was queued */
}; /* flags */

typedef enum ms_env_state {
	MS_ENV_PENDING = 0, /* not yet tried */
	MS_ENV_DEFERRED,    /* tried, failed temporarily: due again at `next` */
	MS_ENV_DELIVERED,
	MS_ENV_FAILED,      /* permanent failure (or tiers exhausted) */
	MS_ENV_BOUNCING,    /* failed, its non-delivery notification not yet queued:
	                     * never sent again; due at `next` to queue the bounce */
	MS_ENV_NSTATES
} ms_env_state;

#define MS_ENV_TLS_MAX 112

typedef struct ms_env_attempt {
	int64_t when;
	int code;
	char enh[16];
	char *text;
	char tls[MS_ENV_TLS_MAX]; /* "" when not known (no server answered, older records) */
} ms_env_attempt;

typedef struct ms_env_rcpt {
	char *addr;         /* wire mailbox, as ms_addr_parse gives it */
	ms_env_state state;
	uint32_t attempts;
	uint32_t tier;      /* index of the retry tier the next attempt belongs to */
	int64_t next;       /* unix time the next attempt is due */
	int64_t last;       /* unix time of the last attempt, 0 if none */
	int code;           /* last reply code, 0 if none */
	char enh[16];       /* last enhanced status code, "" if none */
	char *text;         /* last reply text (or our reason), "" if none */
	ms_env_attempt *hist; /* past attempts, oldest first */
	size_t nhist;
	unsigned notify;    /* RFC 3461 NOTIFY bits, 0 when not given */
	char *orcpt;        /* ORCPT "type;address", NULL when not given */
} ms_env_rcpt;

typedef struct ms_envelope {
	char id[MS_ENV_ID_MAX + 1];
	int64_t arrival;
	uint32_t uid;
	char *sender;       /* "" is the null sender */
	uint64_t size;
	uint32_t flags;
	ms_env_rcpt *rcpts;
	size_t nrcpts, cap;
	int dsn_ret;        /* ms_dsn_ret: RET, 0 when not given */
	char *dsn_envid;    /* ENVID, NULL when not given */
	char *prefix;       /* header lines sent before the data (DKIM), NULL: none */
} ms_envelope;

void ms_env_init(ms_envelope *e);
void ms_env_free(ms_envelope *e);
ms_status ms_env_set_sender(ms_envelope *e, const char *sender, ms_error *err);
/* Append a pending recipient due at `next`. */
ms_status ms_env_add_rcpt(ms_envelope *e, const char *addr, int64_t next, ms_error *err);
/* Record a recipient's last reply (text capped at MS_ENV_TEXT_MAX). */
ms_status ms_env_set_reply(ms_env_rcpt *r, int code, const char *enh, const char *text,
                           ms_error *err);
/* Record an attempt: it becomes the last reply and joins the history (the
 * oldest is dropped past MS_ENV_HISTORY); attempts and last are updated.
 * tls (may be NULL) is kept with it in the history. */
ms_status ms_env_record_attempt(ms_env_rcpt *r, int64_t when, int code, const char *enh,
                                const char *text, const char *tls, ms_error *err);

ms_status ms_env_serialize(const ms_envelope *e, ms_buf *out, ms_error *err);
/* Parse p[0..n) into e (initialised here).  MS_ERR_DATA: damaged. */
ms_status ms_env_parse(const char *p, size_t n, ms_envelope *e, ms_error *err);

/* The string-field escaping of the format, for any line format that needs
 * a byte string as one space-free token: bytes outside 0x21-0x7E and '%'
 * become %XX (appended to b, without the leading '=').  ms_env_unescape is
 * its strict inverse: a new NUL-terminated string of at most max octets,
 * or NULL when t is not exactly what ms_env_escape writes or holds NUL. */
ms_status ms_env_escape(ms_buf *b, const char *s, size_t n);
char *ms_env_unescape(const char *t, size_t n, size_t max);

/* A queue id: 1-MS_ENV_ID_MAX of [0-9A-Za-z_-]; safe as a file name. */
int ms_env_id_ok(const char *id);
const char *ms_env_state_name(ms_env_state s);
/* When the message is next due: the earliest `next` of a pending or
 * deferred recipient; INT64_MAX when none is left to try. */
int64_t ms_env_next_due(const ms_envelope *e);

#endif
