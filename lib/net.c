/*
 * net.c - connecting to a mail server (mailspool/net.h): families, order,
 * the Happy Eyeballs race of RFC 8305, source addresses.
 *
 * The race is a poll() over at most MS_NET_ADDRS_MAX non-blocking
 * connects.  The next attempt starts when the attempt delay has passed
 * since the last start, or at once when every started attempt has failed
 * (RFC 8305 5: a refused connection should not hold the next back).
 */
#include "mailspool/net.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "mailspool/conf.h"
#include "mailspool/dns.h"

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void ms_net_opts_default(ms_net_opts *o)
{
	memset(o, 0, sizeof *o);
}

static int family_of(const char *a)
{
	unsigned char bin[16];
	if (inet_pton(AF_INET, a, bin) == 1)
		return AF_INET;
	if (inet_pton(AF_INET6, a, bin) == 1)
		return AF_INET6;
	return 0;
}

void ms_net_opts_for(const ms_conf *c, const char *domain, const char *mxhost, ms_net_opts *o)
{
	ms_net_opts_default(o);
	o->families = c->inet_protocols;
	o->prefer = c->address_preference;
	o->dns_servers = c->dns_servers[0] ? c->dns_servers : NULL;
	o->dns_timeout_ms = (int)(c->dns_timeout * 1000);
	const char *bind = c->bind_address;
	for (size_t i = 0; i < c->nshapes; i++)
		if (c->shapes[i].bind_address[0] &&
		    ((domain && ms_conf_pattern_match(c->shapes[i].pattern, domain)) ||
		     (mxhost && ms_conf_pattern_match(c->shapes[i].pattern, mxhost)))) {
			bind = c->shapes[i].bind_address;
			break;
		}
	ms_net_parse_bind(bind, o); /* checked at load */
}

int ms_net_parse_bind(const char *s, ms_net_opts *o)
{
	return ms_conf_parse_bind(s, o->bind4, o->bind6);
}

size_t ms_net_order(char (*addrs)[46], size_t n, const ms_net_opts *o)
{
	unsigned fams = o && o->families ? o->families : MS_NET_V4 | MS_NET_V6;
	char v4[MS_NET_ADDRS_MAX][46], v6[MS_NET_ADDRS_MAX][46];
	size_t n4 = 0, n6 = 0;
	int first = o ? o->prefer : 0;
	for (size_t i = 0; i < n; i++) {
		int fam = family_of(addrs[i]);
		if (fam == AF_INET && (fams & MS_NET_V4) && n4 < MS_NET_ADDRS_MAX)
			memcpy(v4[n4++], addrs[i], 46);
		else if (fam == AF_INET6 && (fams & MS_NET_V6) && n6 < MS_NET_ADDRS_MAX)
			memcpy(v6[n6++], addrs[i], 46);
		if (!first && ((fam == AF_INET && (fams & MS_NET_V4)) ||
		               (fam == AF_INET6 && (fams & MS_NET_V6))))
			first = fam == AF_INET ? 4 : 6; /* no preference: the resolver's first */
	}
	/* Interleaved, the preferred family first (RFC 8305 4). */
	size_t k = 0, i4 = 0, i6 = 0;
	int turn6 = first == 6;
	while (i4 < n4 || i6 < n6) {
		if ((turn6 && i6 < n6) || i4 >= n4)
			memcpy(addrs[k++], v6[i6++], 46);
		else
			memcpy(addrs[k++], v4[i4++], 46);
		turn6 = !turn6;
	}
	return k;
}

typedef struct attempt {
	int fd;
	char addr[46];
} attempt;

/* Start a non-blocking connect to addr:port from the family's source
 * address; the socket, or -1 with *why set (errno). */
/* A numeric address and port as a socket address; its length. */
static socklen_t sockaddr_of(const char *addr, unsigned port, struct sockaddr_storage *ss)
{
	memset(ss, 0, sizeof *ss);
	if (family_of(addr) == AF_INET) {
		struct sockaddr_in *s4 = (struct sockaddr_in *)ss;
		s4->sin_family = AF_INET;
		s4->sin_port = htons((uint16_t)port);
		inet_pton(AF_INET, addr, &s4->sin_addr);
		return sizeof *s4;
	}
	struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;
	s6->sin6_family = AF_INET6;
	s6->sin6_port = htons((uint16_t)port);
	inet_pton(AF_INET6, addr, &s6->sin6_addr);
	return sizeof *s6;
}

static int start_attempt(const char *addr, unsigned port, const ms_net_opts *o, int *why)
{
	struct sockaddr_storage ss, src;
	int fam = family_of(addr);
	socklen_t len = sockaddr_of(addr, port, &ss), slen = 0;
	const char *from = !o ? NULL : fam == AF_INET ? o->bind4 : o->bind6;
	if (from && *from)
		slen = sockaddr_of(from, 0, &src); /* any port: the kernel picks */
	int s = socket(fam, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (s < 0) {
		*why = errno;
		return -1;
	}
	if (slen && bind(s, (struct sockaddr *)&src, slen) < 0) {
		*why = errno;
		close(s);
		return -1;
	}
	if (connect(s, (struct sockaddr *)&ss, len) < 0 && errno != EINPROGRESS) {
		*why = errno;
		close(s);
		return -1;
	}
	return s;
}

/* The race over addrs (ordered), within deadline. */
static ms_status race(char (*addrs)[46], size_t n, const char *host, unsigned port,
                      const ms_net_opts *o, int64_t deadline, int *fd, char *peer,
                      ms_error *err)
{
	attempt live[MS_NET_ADDRS_MAX];
	size_t nlive = 0, next = 0;
	int delay = o && o->attempt_delay_ms ? o->attempt_delay_ms : MS_NET_ATTEMPT_DELAY_MS;
	int64_t last_start = 0;
	int last_err = 0;
	char last_addr[46] = "";
	for (;;) {
		int64_t now = now_ms();
		/* Start the next attempt: nothing pending, or the delay is up. */
		while (next < n && (nlive == 0 || (delay > 0 && now - last_start >= delay))) {
			int why = 0;
			int s = start_attempt(addrs[next], port, o, &why);
			if (s < 0) {
				last_err = why;
				snprintf(last_addr, sizeof last_addr, "%s", addrs[next]);
				next++;
				continue;
			}
			live[nlive].fd = s;
			memcpy(live[nlive].addr, addrs[next], 46);
			nlive++;
			next++;
			last_start = now;
		}
		if (nlive == 0)
			break; /* every address failed */
		if (now >= deadline) {
			last_err = ETIMEDOUT;
			snprintf(last_addr, sizeof last_addr, "%s", live[nlive - 1].addr);
			break;
		}
		int64_t wake = deadline;
		if (next < n && delay > 0 && last_start + delay < wake)
			wake = last_start + delay;
		struct pollfd pfd[MS_NET_ADDRS_MAX];
		for (size_t i = 0; i < nlive; i++)
			pfd[i] = (struct pollfd){ .fd = live[i].fd, .events = POLLOUT };
		int64_t left = wake - now;
		int r = poll(pfd, (nfds_t)nlive, left < 0 ? 0 : left > 60000 ? 60000 : (int)left);
		if (r < 0 && errno != EINTR) {
			last_err = errno;
			break;
		}
		for (size_t i = 0; r > 0 && i < nlive;) {
			if (!(pfd[i].revents & (POLLOUT | POLLERR | POLLHUP))) {
				i++;
				continue;
			}
			int soerr = 0;
			socklen_t sl = sizeof soerr;
			if (getsockopt(live[i].fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0)
				soerr = errno;
			if (soerr == 0) {
				/* The winner: the others are closed unfinished. */
				*fd = live[i].fd;
				if (peer)
					snprintf(peer, 46, "%s", live[i].addr);
				for (size_t k = 0; k < nlive; k++)
					if (k != i)
						close(live[k].fd);
				return MS_OK;
			}
			last_err = soerr;
			snprintf(last_addr, sizeof last_addr, "%s", live[i].addr);
			close(live[i].fd);
			live[i] = live[nlive - 1];
			pfd[i] = pfd[nlive - 1];
			nlive--;
		}
	}
	for (size_t k = 0; k < nlive; k++)
		close(live[k].fd);
	if (strcmp(last_addr, host))
		return ms_error_set(err, MS_ERR_CONNECT, "cannot connect to %s port %u (%s): %s", host,
		                    port, last_addr, strerror(last_err ? last_err : ECONNREFUSED));
	return ms_error_set(err, MS_ERR_CONNECT, "cannot connect to %s port %u: %s", host, port,
	                    strerror(last_err ? last_err : ECONNREFUSED));
}

ms_status ms_net_connect(const char *host, const char *port, const ms_net_opts *o, int timeout_ms,
                         int *fd, char *peer, ms_error *err)
{
	char *end;
	unsigned long pn = strtoul(port, &end, 10);
	if (!*port || *end || pn == 0 || pn > 65535)
		return ms_error_set(err, MS_ERR_USAGE, "bad port \"%.20s\"", port);
	int64_t deadline = now_ms() + (timeout_ms > 0 ? timeout_ms : 30000);
	char (*addrs)[46] = calloc(MS_NET_ADDRS_MAX, 46);
	if (!addrs)
		return ms_error_set(err, MS_ERR_NOMEM, "out of memory");
	size_t n = 0;
	ms_status st = MS_OK;
	if (o && o->naddrs) {
		for (size_t i = 0; i < o->naddrs && n < MS_NET_ADDRS_MAX; i++)
			snprintf(addrs[n++], 46, "%s", o->addrs[i]);
	} else {
		ms_dns_opts dop;
		ms_dns_opts_default(&dop);
		dop.servers = o ? o->dns_servers : NULL;
		dop.timeout_ms = o && o->dns_timeout_ms ? o->dns_timeout_ms : 30000;
		st = ms_dns_host_addrs(host, &dop, addrs, MS_NET_ADDRS_MAX, &n, err);
	}
	if (st == MS_OK) {
		size_t all = n;
		n = ms_net_order(addrs, n, o);
		if (n == 0)
			st = ms_error_set(err, MS_ERR_USAGE, "%s has %zu address%s, none of a family "
			                  "inet_protocols allows", host, all, all == 1 ? "" : "es");
	}
	if (st == MS_OK)
		st = race(addrs, n, host, (unsigned)pn, o, deadline, fd, peer, err);
	free(addrs);
	return st;
}
