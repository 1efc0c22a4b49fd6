/*
 * mailspool/quirks.h - what servers have shown they cannot take, remembered
 * for a while (PROTOCOL-RULES P3-P5).
 *
 * A session that finds a server refusing or losing commands written behind
 * message data, or a BDAT stream that breaks, learns an MS_QUIRK_* flag
 * (mailspool/smtp.h).  Kept here under the server's key (the pool's key:
 * protocol, address, port, TLS name), the next sessions to that server
 * start with the flag, so the discovery - a 5-second probe or a refused
 * group - is paid once per server per `ttl_ms`, not once per session.
 * Postfix keeps similar per-server knowledge in its scache and "pipelining
 * disabled" flags; ours expires so that a fixed server gets the fast
 * shape back.
 *
 * Thread-safe (one mutex); a delivery agent keeps one for all its units.
 * Invariant: flags only accumulate until they expire together.
 */
#ifndef MAILSPOOL_QUIRKS_H
#define MAILSPOOL_QUIRKS_H

#include <stdint.h>

typedef struct ms_quirks ms_quirks;

#define MS_QUIRKS_TTL_MS (3600 * 1000)

ms_quirks *ms_quirks_new(int64_t ttl_ms);
void ms_quirks_free(ms_quirks *q);
/* The flags known for `key` (0 when none, expired, or q is NULL). */
unsigned ms_quirks_get(ms_quirks *q, const char *key);
/* Add flags for `key` (nothing when flags is 0 or q is NULL). */
void ms_quirks_add(ms_quirks *q, const char *key, unsigned flags);

#endif
