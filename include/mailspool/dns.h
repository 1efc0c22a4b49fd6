/*
 * mailspool/dns.h - where mail for a domain goes: MX, implicit MX, null MX,
 * address literals (RFC 5321 5.1, RFC 7505), resolved with c-ares.
 *
 * ms_dns_targets() turns a recipient domain into an ordered list of
 * addresses to try, each with the name it was reached by (for TLS and the
 * log):
 *  - `[192.0.2.1]` and `[IPv6:2001:db8::1]` go to that address only (M5);
 *  - MX records are sorted by preference, equal preferences shuffled (M2);
 *    a CNAME is followed by the resolver (M1); the addresses of each host
 *    follow in the resolver's order; the list is capped (address_limit);
 *  - if this host is one of the MX hosts, records at or above its own
 *    preference are dropped, and nothing left is an error (M3);
 *  - no MX records (NODATA): the domain's own A/AAAA, the implicit MX (M1);
 *  - MX records present but none with an address: an error, never a
 *    fallback to the domain's A (M1);
 *  - a lone `MX 0 .` is a null MX: permanent failure 556 5.1.10 (M4);
 *  - NXDOMAIN is permanent (MS_ERR_PERM); SERVFAIL, REFUSED and timeouts are
 *    temporary (MS_ERR_TEMP).
 *
 * All queries of one lookup (the MX query, then every MX host's A and AAAA
 * at once) run concurrently on one c-ares channel under one deadline, so a
 * slow name server costs this lookup its timeout and nothing else; the
 * daemon runs each destination's lookup in that destination's worker.
 *
 * Invariants: every target's address is a numeric IPv4/IPv6 string; the
 * list never holds more than address_limit entries; on an error `err` says
 * which domain and why, with the enhanced status code in targets->enh.
 */
#ifndef MAILSPOOL_DNS_H
#define MAILSPOOL_DNS_H

#include <stddef.h>
#include "mailspool/error.h"
#include "mailspool/tls.h"

#define MS_DNS_MAX_TARGETS 32
#define MS_DNS_NAME_MAX 255

typedef struct ms_dns_target {
	char name[MS_DNS_NAME_MAX + 1]; /* the MX host (or the domain, or the literal) */
	char addr[46];                  /* numeric address */
	int pref;                       /* MX preference (0 for implicit MX and literals) */
} ms_dns_target;

typedef struct ms_dns_targets {
	ms_dns_target t[MS_DNS_MAX_TARGETS];
	size_t n;
	int implicit;    /* no MX records: the domain's own addresses */
	int secure;      /* the MX answer (or its absence) was DNSSEC-validated by the
	                  * resolver (its AD bit): DANE may apply (mailspool/dns.h) */
	unsigned ttl;    /* seconds the answer may be kept: the smallest address
	                  * TTL (c-ares 1.18 does not give the MX record's) */
	int code;        /* on failure: the SMTP-style code to report (556, 550, 451) */
	char enh[16];    /* on failure: the enhanced status code */
} ms_dns_targets;

typedef struct ms_dns_opts {
	const char *servers;   /* "127.0.0.1:5353,..." (c-ares CSV); NULL: resolv.conf */
	int timeout_ms;        /* the whole lookup's deadline (default 30000) */
	size_t address_limit;  /* cap on targets (default 5, Postfix smtp_mx_address_limit) */
	const char *myname;    /* this host's name, for M3; NULL: not checked */
} ms_dns_opts;

void ms_dns_opts_default(ms_dns_opts *o);

/* Resolve `domain` (a recipient's domain part) into targets.  MS_OK with
 * at least one target, or MS_ERR_PERM / MS_ERR_TEMP (targets->code and enh
 * set) / MS_ERR_USAGE (the resolver could not be set up). */
ms_status ms_dns_targets_for(const char *domain, const ms_dns_opts *o, ms_dns_targets *out,
                             ms_error *err);

/* The addresses of a host name - a relay's or a URL route's - from
 * /etc/hosts, then DNS, with the same servers and deadline (dns_servers,
 * dns_timeout), at most max, in the resolver's order; a numeric address is
 * its own.  MS_ERR_CONNECT when the lookup failed for now (try again),
 * MS_ERR_USAGE when the name has no address. */
ms_status ms_dns_host_addrs(const char *host, const ms_dns_opts *o, char (*addrs)[46], size_t max,
                            size_t *n, ms_error *err);

/* DANE for one MX host (RFC 7672 2.2): its A and AAAA records and its
 * TLSA records at _PORT._tcp.HOST, asked at once with the AD bit.
 *  MS_DANE_USABLE    validated TLSA records; out holds the usable ones
 *  MS_DANE_UNUSABLE  validated TLSA records, none usable: TLS is required
 *                    but cannot be authenticated (RFC 7672 2.2, "encrypt")
 *  MS_DANE_NONE      no validated TLSA records (the addresses or the TLSA
 *                    answer not validated, or a validated denial)
 * MS_ERR_TEMP: the TLSA lookup failed (SERVFAIL, a timeout) for a host
 * whose addresses were validated - RFC 7672 2.2: that host is not used
 * now, never reached without DANE. */
typedef enum ms_dane_state { MS_DANE_NONE = 0, MS_DANE_USABLE, MS_DANE_UNUSABLE } ms_dane_state;
ms_status ms_dns_tlsa(const char *host, unsigned port, const ms_dns_opts *o, ms_tlsa_set *out,
                      ms_dane_state *state, ms_error *err);

/* MTA-STS discovery (RFC 8461 3.1): the TXT record at _mta-sts.DOMAIN.
 * *found 1 with its id (1-32 letters and digits) when exactly one record
 * starts "v=STSv1" and carries a valid id; 0 when there is none (or more
 * than one, or a bad one).  MS_ERR_TEMP when the lookup failed. */
ms_status ms_dns_sts_id(const char *domain, const ms_dns_opts *o, char id[33], int *found,
                        ms_error *err);

/* The TLSA records in a DNS answer (abuf[0..alen)), for tests and the
 * lookup above: usable ones into out, the others counted.  -1 when the
 * answer is malformed. */
int ms_dns_parse_tlsa(const unsigned char *abuf, int alen, ms_tlsa_set *out);

#endif
