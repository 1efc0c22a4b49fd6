/*
 * mailspool/dsnreq.h - what a sender asks of delivery status notifications
 * (RFC 3461 4.1-4.4): NOTIFY and ORCPT per recipient, RET and ENVID per
 * message; parsed from sendmail -N/-R/-V and `mailspool send`, kept in the
 * envelope, sent to servers that offer DSN and honoured by our own reports.
 *
 * Invariants: a value that passes these checks is printable ASCII with no
 * space, so it fits a command line and an envelope field unchanged; xtext
 * (RFC 3461 4) is applied only on the wire.
 */
#ifndef MAILSPOOL_DSNREQ_H
#define MAILSPOOL_DSNREQ_H

#include <stddef.h>
#include "mailspool/buf.h"
#include "mailspool/error.h"

/* RET (RFC 3461 4.3); NONE: not given (our reports return the headers). */
typedef enum ms_dsn_ret { MS_DSN_RET_NONE = 0, MS_DSN_RET_FULL, MS_DSN_RET_HDRS } ms_dsn_ret;

/* NOTIFY (RFC 3461 4.1); 0: not given (failures and delays are reported). */
enum {
	MS_NOTIFY_NEVER = 1u << 0,
	MS_NOTIFY_SUCCESS = 1u << 1,
	MS_NOTIFY_FAILURE = 1u << 2,
	MS_NOTIFY_DELAY = 1u << 3,
};

#define MS_DSN_ENVID_MAX 100 /* RFC 3461 4.4 */
#define MS_DSN_ORCPT_MAX 500 /* RFC 3461 4.2: the address part */

/* "never" or a comma list of success, failure, delay (any case). */
ms_status ms_dsn_notify_parse(const char *s, unsigned *out, ms_error *err);
/* "NEVER" or e.g. "SUCCESS,FAILURE" into out (at least 32 octets). */
void ms_dsn_notify_format(unsigned notify, char *out, size_t n);
/* "full" or "hdrs" (any case). */
ms_status ms_dsn_ret_parse(const char *s, ms_dsn_ret *out, ms_error *err);
const char *ms_dsn_ret_name(ms_dsn_ret r); /* "FULL", "HDRS", NULL for NONE */
/* An envelope id: 1-100 printable ASCII octets, no space. */
ms_status ms_dsn_envid_check(const char *s, ms_error *err);
/* ORCPT as stored: "type;address", printable ASCII without spaces, the
 * address at most MS_DSN_ORCPT_MAX octets. */
ms_status ms_dsn_orcpt_check(const char *s, ms_error *err);
/* A NOTIFY value as stored: known bits, NEVER alone. */
int ms_dsn_notify_ok(unsigned notify);
/* Does the recipient want a report of this kind?  notify 0 means the
 * default: failures and delays, not successes (RFC 3461 4.1). */
int ms_dsn_wants(unsigned notify, unsigned kind);
/* RFC 3461 4: '+', '=' and bytes outside 0x21-0x7e as +XX. */
ms_status ms_xtext_append(ms_buf *b, const char *s);

#endif
