/*
 * mailspool/dnscache.h - MX answers kept for their TTL, shared by every
 * session of a delivery agent, so 5,000 domains with mail waiting do not
 * mean a fresh resolver channel and a round of queries per session.
 *
 * What is kept (mailspool/dns.h gives the answers and their rules M1-M5):
 *  - an answer with targets, for its TTL (the smallest address TTL; c-ares
 *    1.18 does not report the MX record's own), capped by max_ttl;
 *  - a final negative answer (NXDOMAIN, null MX, no usable MX), for
 *    negative_ttl (RFC 2308 would take the SOA minimum, which c-ares does
 *    not hand out);
 *  - a temporary failure (timeout, SERVFAIL), for temp_ttl only, so one
 *    dead name server costs one timeout per few seconds, not one per
 *    session.
 * Lookups run outside the lock, at most max_inflight at once per cache
 * (5,000 domains resolved at the same moment overwhelmed the name server:
 * timeouts, mail deferred for nothing); a lookup for a domain already
 * being looked up waits for that answer.  Neither wait outlasts one
 * lookup's deadline: then it asks anyway.  Thread-safe.
 */
#ifndef MAILSPOOL_DNSCACHE_H
#define MAILSPOOL_DNSCACHE_H

#include <stdint.h>
#include "mailspool/dns.h"
#include "mailspool/error.h"

typedef struct ms_dns_cache_opts {
	unsigned max_ttl;      /* seconds (default 3600) */
	unsigned negative_ttl; /* seconds (default 300) */
	unsigned temp_ttl;     /* seconds (default 5) */
	size_t max_entries;    /* default 100,000: the oldest half goes when full */
	size_t max_inflight;   /* lookups at once (default 32: 64 overflowed a dnsmasq socket) */
} ms_dns_cache_opts;

typedef struct ms_dns_cache ms_dns_cache;

void ms_dns_cache_opts_default(ms_dns_cache_opts *o);
ms_dns_cache *ms_dns_cache_new(const ms_dns_cache_opts *o);
void ms_dns_cache_free(ms_dns_cache *c);
/* ms_dns_targets_for through the cache; *hit says whether it answered. */
ms_status ms_dns_cache_targets(ms_dns_cache *c, const char *domain, const ms_dns_opts *o,
                               ms_dns_targets *out, ms_error *err, int *hit);

typedef struct ms_dns_cache_stats {
	uint64_t hits, misses;
	size_t entries;
} ms_dns_cache_stats;
ms_dns_cache_stats ms_dns_cache_get_stats(ms_dns_cache *c);

#endif
