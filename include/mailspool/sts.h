/*
 * mailspool/sts.h - MTA-STS (RFC 8461): a recipient domain's policy, from
 * its _mta-sts TXT record and its HTTPS policy file, kept in a cache that
 * survives restarts.
 *
 * ms_sts_policy_for follows RFC 8461 5.1: with a TXT id that matches the
 * cached policy's (and the policy not expired) the cache answers; a new id
 * (or none cached) fetches https://mta-sts.DOMAIN/.well-known/mta-sts.txt
 * (mailspool/https.h: verified certificate, no redirects, 64 KiB, 200 and
 * text/plain only); a fetch that fails, a TXT record that is gone or a
 * lookup that failed leave an unexpired cached policy in force.  The
 * policy applies to MX delivery (lib/deliver.c): in `enforce` mode only MX
 * hosts that match its mx patterns are used, each with STARTTLS and a
 * certificate verified for its name; `testing` checks the same and reports
 * (TLS-RPT, the transcript) but delivers anyway; `none` does nothing.
 *
 * The cache is in memory (per process) and in a directory of the spool
 * (sts/, the owner's: one file per domain, written to a temporary name and
 * renamed).  Invariants: a file is read only when fstat says it is a
 * regular file of ours; a domain that is no safe file name is cached in
 * memory only; nothing here prints or exits.
 */
#ifndef MAILSPOOL_STS_H
#define MAILSPOOL_STS_H

#include <stddef.h>
#include <stdint.h>
#include "mailspool/conf.h"
#include "mailspool/error.h"
#include "mailspool/spool.h"

#define MS_STS_MX_MAX 16
#define MS_STS_POLICY_MAX 65536  /* octets of a policy file */
#define MS_STS_MAX_AGE 31557600  /* RFC 8461 3.2: at most a year */

typedef enum ms_sts_mode { MS_STS_NONE = 0, MS_STS_TESTING, MS_STS_ENFORCE } ms_sts_mode;

typedef struct ms_sts_policy {
	int found;              /* a policy is in force (even of mode none) */
	ms_sts_mode mode;
	char id[33];            /* the TXT id it was fetched under */
	int64_t fetched;        /* unix seconds */
	int64_t max_age;        /* seconds */
	char mx[MS_STS_MX_MAX][256];
	size_t nmx;
} ms_sts_policy;

/* A policy file's text (RFC 8461 3.2).  0, or -1 with why. */
int ms_sts_parse(const char *text, size_t n, ms_sts_policy *p, char *why, size_t wn);
/* Does MX host `host` match one of the policy's mx patterns (RFC 8461
 * 4.1: exact, or "*." and exactly one more label, case-insensitive)? */
int ms_sts_mx_ok(const ms_sts_policy *p, const char *host);
const char *ms_sts_mode_name(ms_sts_mode m);

#define MS_STS_DIR "sts" /* the cache's directory in the spool */
/* How long a `_mta-sts` TXT answer (an id, or none) is used before it is
 * asked again: a policy's change is seen this much later at most (RFC
 * 8461 5.1 leaves the refresh to the sender; c-ares does not tell us the
 * record's TTL). */
#define MS_STS_TXT_KEEP 300

typedef struct ms_sts_cache ms_sts_cache;
/* A cache kept in sp's sts/ (made when missing); in memory only when sp
 * is NULL or the directory cannot be used. */
ms_sts_cache *ms_sts_cache_new(ms_spool *sp);
void ms_sts_cache_free(ms_sts_cache *c);

/* The policy for mail to `domain` (never fails: out->found 0 when no
 * policy can be known).  note says what was done, for the transcript. */
void ms_sts_policy_for(ms_sts_cache *c, const ms_conf *conf, const char *domain,
                       ms_sts_policy *out, char *note, size_t nn);

#endif
