/*
 * mailspool/dsn.h - delivery status notifications (bounces), RFC 3464 in
 * an RFC 6522 multipart/report.
 *
 * Part 1 is text for people, part 2 `message/delivery-status` with the
 * per-message fields (Reporting-MTA, Arrival-Date) and one block per
 * recipient (Final-Recipient, Action, Status, Remote-MTA, Diagnostic-Code,
 * Last-Attempt-Date), part 3 the original header block as
 * `text/rfc822-headers` (PROTOCOL-RULES B2, B4) - or, when the sender asked
 * for RET=FULL (RFC 3461 4.3), the whole message as `message/rfc822` if it is
 * 7-bit with lines of at most 998 octets and at most MS_DSN_FULL_MAX.  With
 * `success` set it is a delivery report instead (RFC 3461 5.2: NOTIFY=SUCCESS
 * and a next hop that does not offer DSN): Action relayed, Status 2.0.0.
 * With MS_DSN_DELAYED it is a warning (delay_warning, RFC 3464 2.3.3
 * "delayed", 2.3.9 Will-Retry-Until): nothing was given up.
 * ENVID and ORCPT come back as Original-Envelope-Id and Original-Recipient.  It is marked
 * `Auto-Submitted: auto-replied` (RFC 3834) and must be sent from the null
 * sender; the caller never builds one for a message whose sender was <>
 * (B1).
 *
 * Invariants: the result is CRLF lines of at most 998 octets, 7-bit (8-bit
 * bytes of the original header and of reply texts become '?'), and every
 * recipient's Status has the class its Action demands (failed: 5.x.x).
 */
#ifndef MAILSPOOL_DSN_H
#define MAILSPOOL_DSN_H

#include <stddef.h>
#include <stdint.h>
#include "mailspool/buf.h"
#include "mailspool/error.h"

#define MS_DSN_HEADERS_MAX (64u << 10) /* original header returned, at most */
#define MS_DSN_FULL_MAX (10u << 20)    /* RET=FULL: the whole message, at most */

/* What the report says of its recipients. */
enum {
	MS_DSN_FAILED = 0,  /* a bounce: Action failed, Status 5.x.x */
	MS_DSN_RELAYED,     /* NOTIFY=SUCCESS to a server without DSN: relayed, 2.0.0 */
	MS_DSN_DELAYED      /* delay_warning: Action delayed, Status 4.x.x, still tried */
};

typedef struct ms_dsn_rcpt {
	const char *addr;       /* the recipient (wire mailbox) */
	int code;               /* the reply that failed it, 0 if none came */
	const char *enh;        /* its enhanced code, "" if none */
	const char *text;       /* the reply text or our reason */
	const char *remote_mta; /* the server's name, NULL or "" if none answered */
	int64_t last_attempt;
	const char *orcpt;      /* ORCPT "type;address" as the sender gave it, or NULL */
} ms_dsn_rcpt;

typedef struct ms_dsn {
	const char *reporting_mta;  /* this host's name */
	const char *queue_id;       /* the original's id */
	const char *sender;         /* the original's envelope sender (the DSN's recipient) */
	int64_t arrival;
	const ms_dsn_rcpt *rcpts;
	size_t nrcpts;
	const char *headers;        /* the original's header block (may be NULL) */
	size_t headers_len;
	const char *full;           /* RET=FULL: the whole original (NULL: headers only) */
	size_t full_len;
	const char *envid;          /* ENVID, or NULL */
	int kind;                   /* MS_DSN_FAILED, MS_DSN_RELAYED, MS_DSN_DELAYED */
	int64_t retry_until;        /* MS_DSN_DELAYED: when we give up (Will-Retry-Until) */
	int64_t now;
} ms_dsn;

/* Build the whole message (header and body) into out. */
ms_status ms_dsn_build(const ms_dsn *d, ms_buf *out, ms_error *err);

/* "5.1.1" from a reply: its enhanced code if it has one of the right
 * class, else X.0.0 from the code; `failed` forces class 5. */
void ms_dsn_status(int code, const char *enh, int failed, char *out, size_t n);

#endif
