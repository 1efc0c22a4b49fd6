/*
 * mailspool/pool.h - idle delivery sessions kept for reuse (Postfix's
 * connection cache, KumoMTA's pooled connections).
 *
 * After a destination's messages are delivered, its session (greeting,
 * EHLO, STARTTLS and AUTH already paid) is parked here under the key of
 * the server it is connected to, for at most `idle_ms`; the next messages
 * for any destination served by that server - another domain with the
 * same MX hosts, say (MX rollup) - take it instead of connecting anew.
 *
 * A parked session is checked when it is taken (mailspool/client.h
 * ms_client_reusable: nothing outstanding, nothing readable, so an idle
 * server that closed or sent 421 is never used); the delivery code also
 * copes with one that breaks on its first command (its messages were not
 * attempted and go out over a fresh connection).
 *
 * Thread-safe: one mutex around the table; QUIT and close of expired
 * sessions happen outside it.  Invariant: a session is either parked here
 * or owned by exactly one caller, never both.
 */
#ifndef MAILSPOOL_POOL_H
#define MAILSPOOL_POOL_H

#include <stddef.h>
#include <stdint.h>
#include "mailspool/client.h"

#define MS_POOL_KEY_MAX 600

typedef struct ms_pool ms_pool;

/* max_idle: sessions parked at once (the oldest is closed to make room). */
ms_pool *ms_pool_new(int64_t idle_ms, size_t max_idle);
/* Closes every parked session (QUIT). */
void ms_pool_free(ms_pool *p);
/* A reusable parked session for `key`, now the caller's, or NULL.
 * *carried: the messages it has carried so far. */
ms_client *ms_pool_take(ms_pool *p, const char *key, size_t *carried);
/* Is a session for `key` parked (it may still prove stale when taken)? */
int ms_pool_has(ms_pool *p, const char *key);
/* Park the caller's idle session (QUIT and closed instead when it is not
 * reusable, when idle_ms is 0, or when the pool is shut). */
void ms_pool_put(ms_pool *p, const char *key, ms_client *c, size_t carried);
/* QUIT and close sessions parked longer than idle_ms; returns how many
 * are still parked. */
size_t ms_pool_expire(ms_pool *p);

typedef struct ms_pool_stats {
	uint64_t parked, reused, expired, stale; /* stale: found closed when taken */
	size_t idle;
} ms_pool_stats;
ms_pool_stats ms_pool_get_stats(ms_pool *p);

#endif
