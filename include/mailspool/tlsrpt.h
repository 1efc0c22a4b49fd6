/*
 * mailspool/tlsrpt.h - TLS-RPT (RFC 8460) aggregate data: for every
 * recipient domain, how many sessions met its policy (DANE's TLSA
 * records, MTA-STS, or no policy found) and how many failed, and why.
 *
 * Delivery (lib/deliver.c) notes one result per new session, or per MX
 * host it would not use; ms_tlsrpt_add appends it as one line to the
 * spool's tlsrpt/YYYY-MM-DD (UTC day; O_APPEND, a line well under
 * PIPE_BUF, so agents writing at once never interleave).  `mailspool
 * tls-report` reads a day back and writes the RFC 8460 JSON report.
 *
 * Line: "T <unix time> =<domain> =<policy-type> =<policy strings, LF
 * separated> =<mx host> <1 ok | 0 failed> =<result-type> =<reason>", each
 * string escaped as envelope fields are.  Invariants: a day file is read
 * only when it is a regular file of ours; lines that do not parse are
 * skipped and counted, never guessed at.
 */
#ifndef MAILSPOOL_TLSRPT_H
#define MAILSPOOL_TLSRPT_H

#include <stdint.h>
#include "mailspool/buf.h"
#include "mailspool/error.h"
#include "mailspool/spool.h"

#define MS_TLSRPT_DIR "tlsrpt" /* the counts' directory in the spool */

typedef struct ms_tlsrpt ms_tlsrpt;

/* Counts kept in sp's tlsrpt/ (made when missing); none are kept when sp
 * is NULL or the directory cannot be used. */
ms_tlsrpt *ms_tlsrpt_new(ms_spool *sp);
void ms_tlsrpt_free(ms_tlsrpt *r);

/* One session's result.  policy_type "tlsa", "sts" or "no-policy-found";
 * result_type one of RFC 8460 4.3's ("starttls-not-supported",
 * "certificate-host-mismatch", "validation-failure", ...) when !ok. */
void ms_tlsrpt_add(ms_tlsrpt *r, const char *domain, const char *policy_type,
                   const char *policy_strings, const char *mx, int ok, const char *result_type,
                   const char *reason);

typedef struct ms_tlsrpt_opts {
	const char *day;          /* "YYYY-MM-DD" (UTC) */
	const char *domain;       /* only this policy domain; NULL: all */
	const char *org;          /* organization-name */
	const char *contact;      /* contact-info */
	const char *report_host;  /* for report-id */
} ms_tlsrpt_opts;

/* The day's reports as JSON into out: one RFC 8460 report object per
 * policy domain, in a JSON array (a single object with o->domain).
 * MS_ERR_USAGE: no data for that day (or domain). */
ms_status ms_tlsrpt_report(int dfd, const ms_tlsrpt_opts *o, ms_buf *out, ms_error *err);

#endif
