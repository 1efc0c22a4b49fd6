/*
 * mailspool/net.h - opening a TCP connection to a mail server: address
 * families, their order, Happy Eyeballs (RFC 8305) and the source address.
 *
 * A name (a relay's, a URL route's) is resolved with c-ares under the
 * configured dns_servers and dns_timeout (/etc/hosts first, then DNS); an
 * MX host's addresses come resolved already (mailspool/dns.h) and are
 * handed over as `addrs`.  Then:
 *  - inet_protocols keeps only the families allowed;
 *  - address_preference puts one family first (the resolver's order
 *    otherwise), and the list is interleaved by family (RFC 8305 4), so a
 *    family that is broken costs one attempt, not one per address;
 *  - the attempts race: the first starts at once, each further one after
 *    attempt_delay_ms (250 ms, RFC 8305 5) or as soon as an earlier one
 *    fails; the first to connect wins, the others are closed;
 *  - each socket is bound to bind_address (per family) before it connects,
 *    so the server sees the address mail is sent from.
 *
 * Invariants: at most MS_NET_ADDRS_MAX attempts, all within timeout_ms;
 * nothing is left open but the winner; the error names the last failure.
 */
#ifndef MAILSPOOL_NET_H
#define MAILSPOOL_NET_H

#include <stddef.h>
#include "mailspool/error.h"

#define MS_NET_ADDRS_MAX 16
#define MS_NET_ATTEMPT_DELAY_MS 250

enum { MS_NET_V4 = 1u << 0, MS_NET_V6 = 1u << 1 };

typedef struct ms_net_opts {
	unsigned families;        /* inet_protocols: MS_NET_V4 | MS_NET_V6; 0: both */
	int prefer;               /* address_preference: 0 (resolver order), 4 or 6 */
	int attempt_delay_ms;     /* between attempts; 0: MS_NET_ATTEMPT_DELAY_MS, <0: one
	                           * at a time (each to its end) */
	char bind4[46], bind6[46]; /* bind_address per family, "" for none */
	const char *dns_servers;  /* NULL: /etc/resolv.conf */
	int dns_timeout_ms;       /* 0: 30 s */
	/* Resolved candidates (an MX host's addresses), kept by value: an
	 * engine that reconnects later races them again.  naddrs 0: resolve. */
	char addrs[MS_NET_ADDRS_MAX][46];
	size_t naddrs;
} ms_net_opts;

void ms_net_opts_default(ms_net_opts *o);

/* The options mailspool.conf gives for mail to domain through the MX host
 * mxhost (either may be NULL): inet_protocols, address_preference,
 * dns_servers, dns_timeout, and bind_address - destination.P.bind_address
 * of the first pattern matching the domain or the MX host, else the global
 * one. */
struct ms_conf;
void ms_net_opts_for(const struct ms_conf *c, const char *domain, const char *mxhost,
                     ms_net_opts *o);

/* "a.b.c.d [v6addr]" or "a.b.c.d, v6addr" (bind_address) into bind4/bind6;
 * -1 if a word is no numeric address or a family is given twice. */
int ms_net_parse_bind(const char *s, ms_net_opts *o);

/* Order and filter addrs[0..n) in place as the options say; the new count. */
size_t ms_net_order(char (*addrs)[46], size_t n, const ms_net_opts *o);

/* Connect to host:port (o may be NULL: defaults) within timeout_ms.  *fd
 * is a non-blocking connected socket; peer (46 bytes, may be NULL) the
 * address that won.  MS_ERR_CONNECT when nothing answered, MS_ERR_USAGE
 * when no address is allowed or the name has none. */
ms_status ms_net_connect(const char *host, const char *port, const ms_net_opts *o, int timeout_ms,
                         int *fd, char *peer, ms_error *err);

#endif
