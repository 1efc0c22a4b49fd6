/*
 * mailspool/deliver.h - one destination's delivery: route, resolve,
 * connect with failover, one pipelined session for the whole group.
 *
 * A destination is named by a key (ms_dest_for):
 *     mx:DOMAIN       MX lookup (mailspool/dns.h), port mx_port, TLS `may`
 *                     with the MX host's name for the certificate
 *     url:URL         one server (smtp://, smtps://, qmtp://)
 *     relays:A,B      configured relays with failover (mailspool/relay.h)
 * chosen per recipient domain by route.DOMAIN / default_route in
 * mailspool.conf(5).  Messages with the same key travel together.
 *
 * ms_deliver tries the destination's addresses in order (at most
 * mx_address_limit, so at least two when there are two) until one gives a
 * session - a refused connection, a timeout or a 4xx/5xx greeting moves on
 * to the next (RFC 5321 5.1) - then submits every message over that one
 * connection, cross-message pipelined (or streamed, for QMTP).  What no
 * address took is deferred with the last reason; a DNS answer that is
 * final (NXDOMAIN, null MX) fails every recipient at once.
 *
 * With a pool (mailspool/pool.h) the session is taken from it when one to
 * the same server is parked, and parked again when the group is done; a
 * taken session that breaks before the server answered anything of a
 * message has that message sent again over a fresh connection.  With
 * conn_messages a session is closed after that many messages and the rest
 * go over a new one.
 *
 * Invariant: on_result is called exactly once per message, with the server
 * that decided it ("mx1.example.org[192.0.2.1]:25", or "none").
 */
#ifndef MAILSPOOL_DELIVER_H
#define MAILSPOOL_DELIVER_H

#include <stddef.h>
#include <stdint.h>
#include "mailspool/conf.h"
#include "mailspool/error.h"
#include "mailspool/message.h"
#include "mailspool/transcript.h"

#define MS_DEST_MAX 600     /* a destination key */
#define MS_RELAY_DESC_MAX 320 /* "host[addr]:port" */

typedef void (*ms_deliver_fn)(void *ctx, ms_message *m, const char *relay);

struct ms_pool;
struct ms_dns_cache;

/* Called before each message is handed to the session: 1 to go ahead, 0
 * to stop (the rest are deferred as not attempted, ms_message_untried).
 * The daemon's agents stop at their claims' deadline this way. */
typedef int (*ms_deliver_admit_fn)(void *ctx);

typedef struct ms_deliver_opts {
	const ms_conf *conf;
	ms_transcript *transcript; /* optional */
	ms_deliver_fn on_result;
	void *ctx;
	/* The daemon's agents (all optional): */
	struct ms_pool *pool;           /* idle sessions reused, and parked after */
	struct ms_dns_cache *dns_cache; /* MX answers kept for their TTL */
	struct ms_quirks *quirks;       /* what servers cannot take (mailspool/quirks.h) */
	struct ms_sts_cache *sts;       /* MTA-STS policies (mailspool/sts.h); NULL: not honoured */
	struct ms_tlsrpt *tlsrpt;       /* TLS-RPT counts (mailspool/tlsrpt.h); NULL: none kept */
	size_t conn_messages;           /* messages per connection; 0: no cap */
	ms_deliver_admit_fn admit;
} ms_deliver_opts;

typedef struct ms_deliver_report {
	char relay[MS_RELAY_DESC_MAX]; /* the server of the session, or the last one tried */
	int reached;        /* a session was started */
	int unreachable;    /* no address gave a session (the destination is down) */
	size_t tried;       /* addresses (or relays) tried */
	uint64_t bytes_out, round_trips, connections;
	/* MX rollup: "site:" and the destination's MX host names, sorted -
	 * domains with the same site share the daemon's queue, limits and
	 * sessions.  "" when not resolved by MX. */
	char site[MS_DEST_MAX];
	int throttled;      /* a server answered with a rate or connection limit */
	size_t reused;      /* sessions taken from the pool */
	/* For the metrics: how the new connections were secured, and the MX
	 * lookup (MS_DELIVER_DNS_*; NONE for routes, relays and literals). */
	size_t tls_verified, tls_unverified, plain;
	int dns;
	size_t dns_lookups[5]; /* lookups by outcome (MS_DELIVER_DNS_*), ms_deliver_many's all */
	int tls_refused;    /* a server answered but did not meet the TLS policy */
	int sts_mode;       /* the MTA-STS policy applied (ms_sts_mode), 0: none */
	int sts_testing_failed; /* testing mode: a session enforce would have refused */
	char sts_testing_why[128];
} ms_deliver_report;

enum { MS_DELIVER_DNS_NONE = 0, MS_DELIVER_DNS_OK, MS_DELIVER_DNS_CACHED, MS_DELIVER_DNS_TEMP,
       MS_DELIVER_DNS_PERM };

/* MX rollup: "site:" and the MX host names of tg, sorted, without
 * repeats ("" for an implicit MX, or when too long to share). */
struct ms_dns_targets;
void ms_deliver_site(const struct ms_dns_targets *tg, char *out, size_t n);
/* The site of destination `dest` (resolved through the cache when one is
 * given); "" when it has none (not an MX destination, implicit MX). */
ms_status ms_deliver_resolve(const ms_conf *c, struct ms_dns_cache *cache, const char *dest,
                             char *site, size_t n, ms_error *err);

/* Does this reply say "slow down" (421, 4.7.x, or a 4xx whose text speaks
 * of too many connections or messages, or a rate)? */
int ms_deliver_throttle_reply(int code, const char *enh, const char *text);

/* The destination key for mail from `sender` to `rcpt` (a wire mailbox). */
ms_status ms_dest_for(const ms_conf *c, const char *sender, const char *rcpt, char *key,
                      size_t n, ms_error *err);

/* Deliver msgs, all for `dest`.  Returns MS_OK once every message has been
 * reported (whatever its outcome). */
ms_status ms_deliver(const ms_deliver_opts *o, const char *dest, ms_message **msgs, size_t n,
                     ms_deliver_report *rep, ms_error *err);

/* Deliver msgs, msgs[i] for dests[i] (a unit of the daemon: a site's
 * domains, say).  Destinations whose domains resolve to the same MX hosts,
 * addresses and preferences, with the same TLS level and source addresses
 * for each host, no MTA-STS policy and the same DNSSEC standing share
 * their sessions: their messages go together, cross-message pipelined
 * across domains (one domain per transaction, as always).  Others go one
 * destination at a time, as ms_deliver.  rep sums the passes (unreachable:
 * every pass found its servers down).  MS_OK once every message has been
 * reported. */
ms_status ms_deliver_many(const ms_deliver_opts *o, const char *const *dests, ms_message **msgs,
                          size_t n, ms_deliver_report *rep, ms_error *err);

#endif
