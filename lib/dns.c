/*
 * dns.c - MX, implicit MX, null MX and address literals with c-ares (see
 * mailspool/dns.h; RFC 5321 5.1, RFC 7505; PROTOCOL-RULES M1-M5).
 *
 * One lookup = one c-ares channel driven by poll() under one deadline:
 * first the MX query, then A and AAAA of every MX host at once (or of the
 * domain itself for an implicit MX).  The channel never outlives the call.
 */
#include "mailspool/dns.h"

#include <ares.h>
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#define MX_MAX 32 /* MX records looked at per domain */
#define HOST_ADDRS_MAX 8

typedef struct mx_rec {
	char name[MS_DNS_NAME_MAX + 1];
	int pref;
	uint32_t shuffle;
} mx_rec;

typedef struct host_q {
	char name[MS_DNS_NAME_MAX + 1];
	int pref;
	int status; /* ares status once answered */
	char addrs[HOST_ADDRS_MAX][46];
	size_t naddrs;
	unsigned ttl; /* the smallest TTL of its address records */
} host_q;

typedef struct mx_q {
	int status;
	int secure; /* the answer (records or their absence) was DNSSEC-validated */
	mx_rec rec[MX_MAX];
	size_t n;
} mx_q;

void ms_dns_opts_default(ms_dns_opts *o)
{
	memset(o, 0, sizeof *o);
	o->timeout_ms = 30000;
	o->address_limit = 5;
}

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Drive the channel until nothing is outstanding or the deadline passes
 * (then every query is cancelled: its callback sees ARES_ECANCELLED). */
static void run(ares_channel ch, int64_t deadline)
{
	for (;;) {
		ares_socket_t socks[ARES_GETSOCK_MAXNUM];
		/* c-ares's own test macros shift a signed 1 into the sign bit. */
		unsigned bits = (unsigned)ares_getsock(ch, socks, ARES_GETSOCK_MAXNUM);
		struct pollfd pf[ARES_GETSOCK_MAXNUM];
		nfds_t n = 0;
		for (int i = 0; i < ARES_GETSOCK_MAXNUM; i++) {
			short ev = 0;
			if (bits & (1u << i))
				ev |= POLLIN;
			if (bits & (1u << (i + ARES_GETSOCK_MAXNUM)))
				ev |= POLLOUT;
			if (ev) {
				pf[n].fd = socks[i];
				pf[n].events = ev;
				pf[n].revents = 0;
				n++;
			}
		}
		if (n == 0)
			return;
		int64_t left = deadline - now_ms();
		if (left <= 0) {
			ares_cancel(ch);
			return;
		}
		struct timeval tv;
		struct timeval *tvp = ares_timeout(ch, NULL, &tv);
		int wait = (int)left;
		if (tvp) {
			int64_t t = (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000 + 1;
			if (t < wait)
				wait = (int)t;
		}
		int r = poll(pf, n, wait);
		if (r < 0 && errno != EINTR) {
			ares_cancel(ch);
			return;
		}
		if (r <= 0) {
			ares_process_fd(ch, ARES_SOCKET_BAD, ARES_SOCKET_BAD); /* timeouts */
			continue;
		}
		for (nfds_t i = 0; i < n; i++) {
			if (!pf[i].revents)
				continue;
			int rd = pf[i].revents & (POLLIN | POLLERR | POLLHUP);
			int wr = pf[i].revents & (POLLOUT | POLLERR | POLLHUP);
			ares_process_fd(ch, rd ? pf[i].fd : ARES_SOCKET_BAD, wr ? pf[i].fd : ARES_SOCKET_BAD);
		}
	}
}

/* The header of an answer: rcode as ares_query would report it, and the
 * AD bit (RFC 4035 3.2.3: set only by a validating resolver, for data it
 * validated; we ask for it with AD in the query, RFC 6840 5.7). */
static int answer_status(int status, const unsigned char *abuf, int alen, int *ad)
{
	*ad = 0;
	if (status != ARES_SUCCESS)
		return status;
	if (alen < 12)
		return ARES_EBADRESP;
	*ad = (abuf[3] & 0x20) != 0;
	switch (abuf[3] & 0x0f) {
	case 0: return (abuf[6] | abuf[7]) ? ARES_SUCCESS : ARES_ENODATA;
	case 2: return ARES_ESERVFAIL;
	case 3: return ARES_ENOTFOUND;
	case 4: return ARES_ENOTIMP;
	case 5: return ARES_EREFUSED;
	default: return ARES_EBADRESP;
	}
}

/* Send name/type with the AD bit set; cb gets the raw answer. */
static void send_ad(ares_channel ch, const char *name, int type, ares_callback cb, void *arg)
{
	unsigned char *q = NULL;
	int qlen = 0;
	if (ares_create_query(name, 1 /* C_IN */, type, 0, 1, &q, &qlen, 0) != ARES_SUCCESS) {
		cb(arg, ARES_EBADNAME, 0, NULL, 0);
		return;
	}
	q[3] |= 0x20; /* AD */
	ares_send(ch, q, qlen, cb, arg);
	ares_free_string(q);
}

static void on_mx(void *arg, int status, int timeouts, unsigned char *abuf, int alen)
{
	(void)timeouts;
	mx_q *q = arg;
	status = answer_status(status, abuf, alen, &q->secure);
	q->status = status;
	if (status != ARES_SUCCESS)
		return;
	struct ares_mx_reply *mx = NULL;
	int r = ares_parse_mx_reply(abuf, alen, &mx);
	if (r != ARES_SUCCESS) {
		/* An answer without MX records (a CNAME to a name without
		 * MX) is NODATA; anything unparsable is a server fault. */
		q->status = r == ARES_ENODATA ? ARES_ENODATA : ARES_EBADRESP;
		return;
	}
	for (struct ares_mx_reply *p = mx; p && q->n < MX_MAX; p = p->next) {
		mx_rec *m = &q->rec[q->n++];
		snprintf(m->name, sizeof m->name, "%s", p->host ? p->host : "");
		size_t l = strlen(m->name);
		if (l && m->name[l - 1] == '.')
			m->name[l - 1] = '\0';
		m->pref = p->priority;
		m->shuffle = arc4random();
	}
	ares_free_data(mx);
	if (q->n == 0)
		q->status = ARES_ENODATA;
}

static void on_addr(void *arg, int status, int timeouts, struct ares_addrinfo *res)
{
	(void)timeouts;
	host_q *h = arg;
	h->status = status;
	if (status != ARES_SUCCESS || !res)
		return;
	for (struct ares_addrinfo_node *n = res->nodes; n && h->naddrs < HOST_ADDRS_MAX;
	     n = n->ai_next) {
		const void *a = n->ai_family == AF_INET6
		                    ? (const void *)&((struct sockaddr_in6 *)n->ai_addr)->sin6_addr
		                    : (const void *)&((struct sockaddr_in *)n->ai_addr)->sin_addr;
		if ((n->ai_family == AF_INET || n->ai_family == AF_INET6) &&
		    inet_ntop(n->ai_family, a, h->addrs[h->naddrs], sizeof h->addrs[0])) {
			h->naddrs++;
			if (n->ai_ttl >= 0 && (unsigned)n->ai_ttl < h->ttl)
				h->ttl = (unsigned)n->ai_ttl;
		}
	}
	ares_freeaddrinfo(res);
}

static pthread_once_t ares_once = PTHREAD_ONCE_INIT;
static int ares_init_status = ARES_ENOTINITIALIZED;

static void init_ares(void)
{
	ares_init_status = ares_library_init(ARES_LIB_INIT_ALL);
}

static int temporary(int status)
{
	return status != ARES_SUCCESS && status != ARES_ENOTFOUND && status != ARES_ENODATA;
}

static const char *why(int status)
{
	return status == ARES_ECANCELLED ? "the lookup timed out" : ares_strerror(status);
}

__attribute__((format(printf, 5, 6))) static ms_status fail(ms_dns_targets *out, ms_error *err,
                                                            int temp, const char *enh,
                                                            const char *fmt, ...)
{
	char msg[MS_ERROR_MSG_MAX];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	out->n = 0;
	out->code = temp ? 451 : (strcmp(enh, "5.1.10") ? 550 : 556);
	snprintf(out->enh, sizeof out->enh, "%s", enh);
	return ms_error_set(err, temp ? MS_ERR_TEMP : MS_ERR_PERM, "%s", msg);
}

static int cmp_mx(const void *a, const void *b)
{
	const mx_rec *x = a, *y = b;
	if (x->pref != y->pref)
		return x->pref < y->pref ? -1 : 1;
	return x->shuffle < y->shuffle ? -1 : x->shuffle > y->shuffle;
}

/* An address literal: "[192.0.2.1]" or "[IPv6:2001:db8::1]" (M5). */
static ms_status literal(const char *domain, ms_dns_targets *out, ms_error *err)
{
	size_t l = strlen(domain);
	char inner[64];
	if (l < 3 || domain[l - 1] != ']' || l - 2 >= sizeof inner)
		return fail(out, err, 0, "5.1.2", "%s is not a valid address literal", domain);
	memcpy(inner, domain + 1, l - 2);
	inner[l - 2] = '\0';
	unsigned char bin[16];
	const char *a = inner;
	int fam = AF_INET;
	if (!strncasecmp(inner, "IPv6:", 5)) {
		a = inner + 5;
		fam = AF_INET6;
	}
	if (inet_pton(fam, a, bin) != 1)
		return fail(out, err, 0, "5.1.2", "%s is not a valid address literal", domain);
	ms_dns_target *t = &out->t[0];
	snprintf(t->name, sizeof t->name, "%s", a);
	inet_ntop(fam, bin, t->addr, sizeof t->addr);
	out->n = 1;
	return MS_OK;
}

static int same_name(const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b);
	if (la && a[la - 1] == '.')
		la--;
	if (lb && b[lb - 1] == '.')
		lb--;
	return la == lb && !strncasecmp(a, b, la);
}

/* A channel with our settings: DNS only for mail routing ("b"), files
 * then DNS for the names of relays and URL routes ("fb"), the configured
 * servers, a first try of at most a second and four tries (c-ares doubles
 * the wait each round: 1 + 2 + 4 + 8 s within the default 30 s deadline).
 * A lost datagram - a resolver's socket buffer overflows when thousands
 * of sessions start at once - then costs a second, not five. */
static ms_status open_channel(const ms_dns_opts *o, const char *lookups, ares_channel *chp,
                              ms_error *err)
{
	/* Once per process, whichever thread gets here first (the daemon's
	 * agents look up many domains at once). */
	pthread_once(&ares_once, init_ares);
	if (ares_init_status != ARES_SUCCESS)
		return ms_error_set(err, MS_ERR_USAGE, "c-ares cannot be initialised");
	int timeout = o->timeout_ms > 0 ? o->timeout_ms : 30000;
	struct ares_options ao;
	memset(&ao, 0, sizeof ao);
	ao.flags = ARES_FLAG_NOSEARCH | ARES_FLAG_NOALIASES;
	ao.timeout = timeout / 16 < 200 ? 200 : timeout / 16 > 1000 ? 1000 : timeout / 16;
	ao.tries = 4;
	ao.lookups = (char *)lookups;
	ares_channel ch;
	int r = ares_init_options(&ch, &ao,
	                          ARES_OPT_FLAGS | ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES |
	                              ARES_OPT_LOOKUPS);
	if (r != ARES_SUCCESS)
		return ms_error_set(err, MS_ERR_USAGE, "cannot set up the resolver: %s",
		                    ares_strerror(r));
	if (o->servers && *o->servers &&
	    (r = ares_set_servers_ports_csv(ch, o->servers)) != ARES_SUCCESS) {
		ares_destroy(ch);
		return ms_error_set(err, MS_ERR_USAGE, "bad dns_servers \"%s\": %s", o->servers,
		                    ares_strerror(r));
	}
	*chp = ch;
	return MS_OK;
}

ms_status ms_dns_host_addrs(const char *host, const ms_dns_opts *o, char (*addrs)[46], size_t max,
                            size_t *n, ms_error *err)
{
	*n = 0;
	unsigned char bin[16];
	if (inet_pton(AF_INET, host, bin) == 1 || inet_pton(AF_INET6, host, bin) == 1) {
		if (max)
			snprintf(addrs[(*n)++], 46, "%s", host);
		return MS_OK;
	}
	if (!*host || strlen(host) > MS_DNS_NAME_MAX)
		return ms_error_set(err, MS_ERR_USAGE, "no valid host name to connect to");
	ares_channel ch;
	ms_status st = open_channel(o, "fb", &ch, err);
	if (st != MS_OK)
		return st;
	host_q *h = calloc(1, sizeof *h);
	if (!h) {
		ares_destroy(ch);
		return ms_error_set(err, MS_ERR_NOMEM, "out of memory");
	}
	snprintf(h->name, sizeof h->name, "%s", host);
	h->status = ARES_ECANCELLED;
	h->ttl = UINT_MAX;
	struct ares_addrinfo_hints hints;
	memset(&hints, 0, sizeof hints);
	hints.ai_family = AF_UNSPEC;
	hints.ai_flags = ARES_AI_NOSORT;
	ares_getaddrinfo(ch, host, NULL, &hints, on_addr, h);
	run(ch, now_ms() + (o->timeout_ms > 0 ? o->timeout_ms : 30000));
	for (size_t i = 0; i < h->naddrs && *n < max; i++)
		snprintf(addrs[(*n)++], 46, "%s", h->addrs[i]);
	if (!*n)
		st = ms_error_set(err, temporary(h->status) ? MS_ERR_CONNECT : MS_ERR_USAGE,
		                  "cannot resolve %s: %s", host, why(h->status));
	ares_destroy(ch);
	free(h);
	return st;
}

ms_status ms_dns_targets_for(const char *domain, const ms_dns_opts *o, ms_dns_targets *out,
                             ms_error *err)
{
	memset(out, 0, sizeof *out);
	if (!domain || !*domain || strlen(domain) > MS_DNS_NAME_MAX)
		return fail(out, err, 0, "5.1.2", "no valid domain to route to");
	if (domain[0] == '[')
		return literal(domain, out, err);
	size_t limit = o->address_limit ? o->address_limit : 5;
	if (limit > MS_DNS_MAX_TARGETS)
		limit = MS_DNS_MAX_TARGETS;

	int timeout = o->timeout_ms > 0 ? o->timeout_ms : 30000;
	ares_channel ch;
	ms_status cst = open_channel(o, "b", &ch, err); /* DNS only: never /etc/hosts */
	if (cst != MS_OK)
		return cst;
	int64_t deadline = now_ms() + timeout;
	ms_status st = MS_OK;
	host_q *hosts = calloc(MX_MAX, sizeof *hosts);
	mx_q *mq = calloc(1, sizeof *mq);
	if (!hosts || !mq) {
		st = ms_error_set(err, MS_ERR_NOMEM, "out of memory");
		goto out;
	}

	/* 1. MX. */
	mq->status = ARES_ECANCELLED;
	send_ad(ch, domain, 15 /* T_MX */, on_mx, mq);
	run(ch, deadline);
	/* DNSSEC-validated MX records, or a validated denial of them: the
	 * condition for DANE (RFC 7672 2.2.1, as Postfix applies it). */
	out->secure = mq->secure && (mq->status == ARES_SUCCESS || mq->status == ARES_ENODATA);
	size_t nhosts = 0;
	if (mq->status == ARES_ENOTFOUND) {
		st = fail(out, err, 0, "5.1.2", "%s: no such domain (NXDOMAIN)", domain);
		goto out;
	}
	if (temporary(mq->status) && mq->status != ARES_ENODATA) {
		st = fail(out, err, 1, "4.4.3", "MX lookup for %s failed: %s", domain, why(mq->status));
		goto out;
	}
	if (mq->status == ARES_ENODATA) {
		/* No MX: the implicit MX is the domain itself (M1). */
		out->implicit = 1;
		snprintf(hosts[0].name, sizeof hosts[0].name, "%s", domain);
		nhosts = 1;
	} else {
		/* A lone "MX 0 ." is a null MX (M4). */
		if (mq->n == 1 && mq->rec[0].name[0] == '\0') {
			st = fail(out, err, 0, "5.1.10", "%s accepts no mail (null MX, RFC 7505)", domain);
			goto out;
		}
		qsort(mq->rec, mq->n, sizeof mq->rec[0], cmp_mx);
		/* M3: if we are an MX, only hosts more preferred than us. */
		int mine = -1;
		for (size_t i = 0; i < mq->n; i++)
			if (o->myname && *o->myname && same_name(mq->rec[i].name, o->myname) &&
			    (mine < 0 || mq->rec[i].pref < mine))
				mine = mq->rec[i].pref;
		for (size_t i = 0; i < mq->n; i++) {
			if (mq->rec[i].name[0] == '\0' || (mine >= 0 && mq->rec[i].pref >= mine))
				continue; /* "." among other records is unusable, not a null MX */
			snprintf(hosts[nhosts].name, sizeof hosts[0].name, "%s", mq->rec[i].name);
			hosts[nhosts].pref = mq->rec[i].pref;
			nhosts++;
		}
		if (nhosts == 0) {
			st = mine >= 0
			         ? fail(out, err, 0, "5.4.6", "mail for %s loops back to myself (%s is its best MX)",
			                domain, o->myname)
			         : fail(out, err, 0, "5.4.4", "%s has MX records but none is usable", domain);
			goto out;
		}
	}

	/* 2. Every host's addresses at once. */
	struct ares_addrinfo_hints hints;
	memset(&hints, 0, sizeof hints);
	hints.ai_family = AF_UNSPEC;
	hints.ai_flags = ARES_AI_NOSORT;
	for (size_t i = 0; i < nhosts; i++) {
		hosts[i].status = ARES_ECANCELLED;
		hosts[i].ttl = UINT_MAX;
		ares_getaddrinfo(ch, hosts[i].name, NULL, &hints, on_addr, &hosts[i]);
	}
	run(ch, deadline);
	int any_temp = 0;
	out->ttl = UINT_MAX;
	for (size_t i = 0; i < nhosts; i++) {
		if (temporary(hosts[i].status))
			any_temp = 1;
		if (hosts[i].naddrs && hosts[i].ttl < out->ttl)
			out->ttl = hosts[i].ttl;
		for (size_t k = 0; k < hosts[i].naddrs && out->n < limit; k++) {
			ms_dns_target *t = &out->t[out->n++];
			snprintf(t->name, sizeof t->name, "%s", hosts[i].name);
			snprintf(t->addr, sizeof t->addr, "%s", hosts[i].addrs[k]);
			t->pref = hosts[i].pref;
		}
	}
	if (out->n == 0) {
		if (out->implicit && hosts[0].status == ARES_ENOTFOUND)
			st = fail(out, err, 0, "5.1.2", "%s: no such domain (NXDOMAIN)", domain);
		else if (any_temp)
			st = fail(out, err, 1, "4.4.3", "no address for the mail hosts of %s: %s", domain,
			          why(hosts[0].status));
		else
			st = out->implicit
			         ? fail(out, err, 0, "5.1.2", "%s has no MX and no address", domain)
			         : fail(out, err, 0, "5.4.4", "%s has MX records but none has an address",
			                domain);
	}
out:
	ares_destroy(ch);
	free(hosts);
	free(mq);
	return st;
}

/* ---- DANE: TLSA records and whether the addresses are validated ---- */

typedef struct raw_q {
	int status, ad;
	unsigned char *buf; /* the answer, for TLSA */
	int len;
} raw_q;

static void on_raw(void *arg, int status, int timeouts, unsigned char *abuf, int alen)
{
	(void)timeouts;
	raw_q *q = arg;
	q->status = answer_status(status, abuf, alen, &q->ad);
	if (abuf && alen > 0 && (q->buf = malloc((size_t)alen))) {
		memcpy(q->buf, abuf, (size_t)alen);
		q->len = alen;
	}
}

static int rd16(const unsigned char *p)
{
	return (p[0] << 8) | p[1];
}

int ms_dns_parse_tlsa(const unsigned char *abuf, int alen, ms_tlsa_set *out)
{
	out->n = out->unusable = 0;
	if (alen < 12)
		return -1;
	int qd = rd16(abuf + 4), an = rd16(abuf + 6);
	const unsigned char *p = abuf + 12, *end = abuf + alen;
	for (int i = 0; i < qd + an; i++) {
		char *name = NULL;
		long nl = 0;
		if (ares_expand_name(p, abuf, alen, &name, &nl) != ARES_SUCCESS)
			return -1;
		ares_free_string(name);
		p += nl;
		if (i < qd) { /* the question: type and class */
			if (end - p < 4)
				return -1;
			p += 4;
			continue;
		}
		if (end - p < 10)
			return -1;
		int type = rd16(p), rdlen = rd16(p + 8);
		p += 10;
		if (end - p < rdlen)
			return -1;
		if (type == 52 /* TLSA */) {
			/* RFC 7672 3.1: DANE-TA(2) and DANE-EE(3) are usable for
			 * SMTP; PKIX-TA(0)/PKIX-EE(1) are not (no CA store is
			 * agreed).  Selectors 0/1, matching types 0-2. */
			int ok = rdlen >= 3 && (p[0] == 2 || p[0] == 3) && p[1] <= 1 && p[2] <= 2 &&
			         rdlen - 3 <= MS_TLSA_DATA_MAX && rdlen > 3;
			if (ok && out->n < MS_TLSA_MAX) {
				ms_tlsa *r = &out->r[out->n++];
				r->usage = p[0];
				r->selector = p[1];
				r->mtype = p[2];
				r->len = (unsigned char)(rdlen - 3);
				memcpy(r->data, p + 3, (size_t)(rdlen - 3));
			} else {
				out->unusable++;
			}
		}
		p += rdlen;
	}
	return 0;
}

ms_status ms_dns_tlsa(const char *host, unsigned port, const ms_dns_opts *o, ms_tlsa_set *out,
                      ms_dane_state *state, ms_error *err)
{
	memset(out, 0, sizeof *out);
	*state = MS_DANE_NONE;
	char tname[MS_DNS_NAME_MAX + 32];
	if (!*host || strlen(host) > MS_DNS_NAME_MAX - 16)
		return MS_OK;
	snprintf(tname, sizeof tname, "_%u._tcp.%s", port, host);
	snprintf(out->base, sizeof out->base, "%s", host);
	ares_channel ch;
	ms_status st = open_channel(o, "b", &ch, err);
	if (st != MS_OK)
		return st;
	raw_q q[3];
	memset(q, 0, sizeof q);
	for (int i = 0; i < 3; i++)
		q[i].status = ARES_ECANCELLED;
	send_ad(ch, host, 1 /* A */, on_raw, &q[0]);
	send_ad(ch, host, 28 /* AAAA */, on_raw, &q[1]);
	send_ad(ch, tname, 52 /* TLSA */, on_raw, &q[2]);
	run(ch, now_ms() + (o->timeout_ms > 0 ? o->timeout_ms : 30000));
	ares_destroy(ch);
	/* The addresses are validated when every answer that has records
	 * says so, and one does (RFC 7672 2.2.2: insecure addresses, no
	 * TLSA). */
	int have = 0, secure = 1;
	for (int i = 0; i < 2; i++)
		if (q[i].status == ARES_SUCCESS) {
			have = 1;
			secure &= q[i].ad;
		} else if (q[i].status != ARES_ENODATA) {
			secure = 0;
		}
	if (have && secure) {
		if (q[2].status == ARES_SUCCESS && q[2].ad) {
			if (ms_dns_parse_tlsa(q[2].buf, q[2].len, out) < 0)
				st = ms_error_set(err, MS_ERR_TEMP, "TLSA lookup for %s: malformed answer", tname);
			else if (out->n)
				*state = MS_DANE_USABLE;
			else if (out->unusable)
				*state = MS_DANE_UNUSABLE;
		} else if (temporary(q[2].status) && q[2].status != ARES_ENODATA) {
			st = ms_error_set(err, MS_ERR_TEMP, "TLSA lookup for %s failed: %s", tname,
			                  why(q[2].status));
		}
		/* (NXDOMAIN, NODATA or an unvalidated answer: no DANE.) */
	}
	for (int i = 0; i < 3; i++)
		free(q[i].buf);
	return st;
}

/* ---- MTA-STS: the _mta-sts TXT record ---- */

typedef struct txt_q {
	int status;
	int nsts;      /* records that start with v=STSv1 */
	char id[33];
	int id_ok;
} txt_q;

/* "v=STSv1; id=20160831085700Z;" (RFC 8461 3.1: fields separated by ';'
 * and optional white space; the id 1-32 alphanumerics). */
static void sts_record(txt_q *q, const char *t)
{
	if (strncmp(t, "v=STSv1", 7) || (t[7] && t[7] != ';' && t[7] != ' ' && t[7] != '\t'))
		return;
	q->nsts++;
	q->id_ok = 0;
	for (const char *p = t + 7; *p;) {
		while (*p == ';' || *p == ' ' || *p == '\t')
			p++;
		if (!strncmp(p, "id=", 3)) {
			size_t n = 0;
			p += 3;
			while (n < 33 && ((p[n] >= '0' && p[n] <= '9') || (p[n] >= 'a' && p[n] <= 'z') ||
			                  (p[n] >= 'A' && p[n] <= 'Z')))
				n++;
			if (n >= 1 && n <= 32 && (!p[n] || p[n] == ';' || p[n] == ' ' || p[n] == '\t')) {
				memcpy(q->id, p, n);
				q->id[n] = '\0';
				q->id_ok = 1;
			}
		}
		while (*p && *p != ';')
			p++;
	}
}

static void on_txt(void *arg, int status, int timeouts, unsigned char *abuf, int alen)
{
	(void)timeouts;
	txt_q *q = arg;
	q->status = status;
	if (status != ARES_SUCCESS)
		return;
	struct ares_txt_ext *txt = NULL;
	if ((q->status = ares_parse_txt_reply_ext(abuf, alen, &txt)) != ARES_SUCCESS)
		return;
	/* A record's strings are one text (RFC 8461 3.1): joined, capped. */
	char rec[1024];
	size_t k = 0;
	rec[0] = '\0';
	for (struct ares_txt_ext *t = txt; t; t = t->next) {
		if (t->record_start) {
			if (k)
				sts_record(q, rec);
			k = 0;
			rec[0] = '\0';
		}
		size_t n = t->length < sizeof rec - 1 - k ? t->length : sizeof rec - 1 - k;
		memcpy(rec + k, t->txt, n);
		k += n;
		rec[k] = '\0';
	}
	if (k)
		sts_record(q, rec);
	ares_free_data(txt);
}

ms_status ms_dns_sts_id(const char *domain, const ms_dns_opts *o, char id[33], int *found,
                        ms_error *err)
{
	*found = 0;
	id[0] = '\0';
	char name[MS_DNS_NAME_MAX + 16];
	if (!*domain || strlen(domain) > MS_DNS_NAME_MAX - 10)
		return MS_OK;
	snprintf(name, sizeof name, "_mta-sts.%s", domain);
	ares_channel ch;
	ms_status st = open_channel(o, "b", &ch, err);
	if (st != MS_OK)
		return st;
	txt_q q = { .status = ARES_ECANCELLED };
	ares_query(ch, name, 1 /* C_IN */, 16 /* TXT */, on_txt, &q);
	run(ch, now_ms() + (o->timeout_ms > 0 ? o->timeout_ms : 30000));
	ares_destroy(ch);
	if (temporary(q.status) && q.status != ARES_EBADRESP)
		return ms_error_set(err, MS_ERR_TEMP, "TXT lookup for %s failed: %s", name,
		                    why(q.status));
	if (q.status == ARES_SUCCESS && q.nsts == 1 && q.id_ok) {
		*found = 1;
		memcpy(id, q.id, sizeof q.id);
	}
	return MS_OK;
}
