/*
 * latproxy - a TCP proxy that adds latency, for benchmarks on a kernel
 * without netem.
 *
 *   latproxy -l LISTEN_PORT -t TARGET_PORT -d ONE_WAY_MS [-s STATS_FILE] [-a ADDR]
 *            [-T TARGET_ADDR [-b SOURCE_ADDR]]
 *
 * Listens on 127.0.0.1:LISTEN_PORT (or ADDR: the many-destination bench
 * gives 0.0.0.0 inside a network namespace of its own, where every address
 * is a loopback one, so that each destination's MX has an address of its
 * own) and forwards each connection to 127.0.0.1:TARGET_PORT (or
 * TARGET_ADDR: the cluster bench puts a proxy inside each host's network
 * namespace, in front of the GlusterFS server's namespace-private address,
 * and binds its own connections to SOURCE_ADDR, which that namespace routes
 * to the server instead of to the proxy's own listening address).
 * Every chunk read from either side is held for ONE_WAY_MS milliseconds
 * (fractions allowed: "0.5"; timed in microseconds) before it is written to
 * the other side, so a round trip costs 2 * ONE_WAY_MS.  Order is kept;
 * bandwidth is not limited.
 *
 * It also counts round trips the client waited for, independently of any
 * client's own counters: a "flight" is a client->server send that follows
 * server data (the client had to wait for the server before sending again).
 * When a connection ends, a line "flights=N c2s=BYTES s2c=BYTES" is appended
 * to STATS_FILE.
 *
 * Loopback and 10.0.0.0/8 only (the private range the benches' network
 * namespaces use): it refuses to forward anywhere else.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_CONNS 8192
#define QUEUE_CAP (16u << 20) /* stop reading a side while this much is held */
#define CHUNK 65536

typedef struct chunk {
	int64_t due;
	size_t len, off;
	struct chunk *next;
	char data[];
} chunk;

typedef struct dir {
	chunk *head, *tail;
	size_t held;
	int eof;      /* the source side closed */
	int shut;     /* we shut down writing on the destination */
} dir;

typedef struct conn {
	int fd[2];    /* 0 client, 1 server */
	dir d[2];     /* d[0]: client->server, d[1]: server->client */
	int used;
	uint64_t flights, bytes[2];
	int server_spoke;
} conn;

static int64_t delay_us;
static const char *stats_path;
static conn conns[MAX_CONNS];

static int64_t now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void nonblock(int fd)
{
	fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

static void finish(conn *c)
{
	if (stats_path) {
		FILE *f = fopen(stats_path, "a");
		if (f) {
			fprintf(f, "flights=%llu c2s=%llu s2c=%llu\n", (unsigned long long)c->flights,
			        (unsigned long long)c->bytes[0], (unsigned long long)c->bytes[1]);
			fclose(f);
		}
	}
	for (int i = 0; i < 2; i++) {
		close(c->fd[i]);
		while (c->d[i].head) {
			chunk *k = c->d[i].head;
			c->d[i].head = k->next;
			free(k);
		}
	}
	memset(c, 0, sizeof *c);
}

/* Read from side `from`, queue for the other side with the delay. */
static int pull(conn *c, int from)
{
	char buf[CHUNK];
	ssize_t n = read(c->fd[from], buf, sizeof buf);
	if (n < 0)
		return errno == EAGAIN || errno == EINTR ? 0 : -1;
	dir *d = &c->d[from];
	if (n == 0) {
		d->eof = 1;
		return 0;
	}
	if (from == 0) {
		if (c->server_spoke || c->flights == 0)
			c->flights++;
		c->server_spoke = 0;
	} else {
		c->server_spoke = 1;
	}
	c->bytes[from] += (uint64_t)n;
	chunk *k = malloc(sizeof *k + (size_t)n);
	if (!k)
		return -1;
	k->due = now_us() + delay_us;
	k->len = (size_t)n;
	k->off = 0;
	k->next = NULL;
	memcpy(k->data, buf, (size_t)n);
	if (d->tail)
		d->tail->next = k;
	else
		d->head = k;
	d->tail = k;
	d->held += (size_t)n;
	return 0;
}

/* Write due chunks of direction `from` to the other side. */
static int push(conn *c, int from)
{
	dir *d = &c->d[from];
	int to = 1 - from;
	int64_t t = now_us();
	while (d->head && d->head->due <= t) {
		chunk *k = d->head;
		ssize_t w = write(c->fd[to], k->data + k->off, k->len - k->off);
		if (w < 0)
			return errno == EAGAIN || errno == EINTR ? 0 : -1;
		k->off += (size_t)w;
		d->held -= (size_t)w;
		if (k->off < k->len)
			return 0;
		d->head = k->next;
		if (!d->head)
			d->tail = NULL;
		free(k);
	}
	if (!d->head && d->eof && !d->shut) {
		shutdown(c->fd[to], SHUT_WR);
		d->shut = 1;
	}
	return 0;
}

static int usage(void)
{
	fprintf(stderr, "usage: latproxy -l PORT -t PORT -d ONE_WAY_MS [-s FILE] [-a ADDR]"
	                " [-T ADDR [-b ADDR]]\n");
	return 64;
}

int main(int argc, char **argv)
{
	int lport = 0, tport = 0, opt;
	const char *laddr = "127.0.0.1", *taddr = "127.0.0.1", *baddr = NULL;
	while ((opt = getopt(argc, argv, "l:t:d:s:a:T:b:")) != -1) {
		switch (opt) {
		case 'a': laddr = optarg; break;
		case 'b': baddr = optarg; break;
		case 'T': taddr = optarg; break;
		case 'l': lport = atoi(optarg); break;
		case 't': tport = atoi(optarg); break;
		case 'd': delay_us = (int64_t)(strtod(optarg, NULL) * 1000.0); break;
		case 's': stats_path = optarg; break;
		default:
			return usage();
		}
	}
	struct sockaddr_in ta = { .sin_family = AF_INET, .sin_port = htons((uint16_t)tport) };
	if (lport <= 0 || tport <= 0 || delay_us < 0 || inet_pton(AF_INET, taddr, &ta.sin_addr) != 1)
		return usage();
	struct sockaddr_in ba = { .sin_family = AF_INET };
	if (baddr && inet_pton(AF_INET, baddr, &ba.sin_addr) != 1) {
		fprintf(stderr, "latproxy: bad source address %s\n", baddr);
		return 64;
	}
	uint32_t first = ntohl(ta.sin_addr.s_addr) >> 24;
	if (first != 127 && first != 10) {
		fprintf(stderr, "latproxy: forwards only to 127/8 or 10/8, not %s\n", taddr);
		return 64;
	}
	signal(SIGPIPE, SIG_IGN);
	/* Two descriptors per connection, thousands of connections. */
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	int ls = socket(AF_INET, SOCK_STREAM, 0), one = 1;
	setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	struct sockaddr_in la = { .sin_family = AF_INET, .sin_port = htons((uint16_t)lport) };
	if (inet_pton(AF_INET, laddr, &la.sin_addr) != 1) {
		fprintf(stderr, "latproxy: bad address %s\n", laddr);
		return 64;
	}
	if (bind(ls, (struct sockaddr *)&la, sizeof la) < 0 || listen(ls, 4096) < 0) {
		perror("latproxy: bind");
		return 1;
	}
	nonblock(ls);
	int hi = 0; /* slots in use lie below */
	static struct pollfd p[1 + 2 * MAX_CONNS];
	static int idx[1 + 2 * MAX_CONNS];
	for (;;) {
		int np = 0;
		int64_t t = now_us(), next = t + 1000000;
		p[np].fd = ls;
		p[np].events = POLLIN;
		idx[np++] = -1;
		while (hi > 0 && !conns[hi - 1].used)
			hi--;
		for (int i = 0; i < hi; i++) {
			conn *c = &conns[i];
			if (!c->used)
				continue;
			for (int s = 0; s < 2; s++) {
				short ev = 0;
				if (!c->d[s].eof && c->d[s].held < QUEUE_CAP)
					ev |= POLLIN;
				dir *out = &c->d[1 - s]; /* data waiting to be written to side s */
				if (out->head) {
					if (out->head->due <= t)
						ev |= POLLOUT;
					else if (out->head->due < next)
						next = out->head->due;
				}
				p[np].fd = c->fd[s];
				p[np].events = ev;
				idx[np++] = i * 2 + s;
			}
		}
		int64_t wait = next > t ? next - t : 0;
		struct timespec timeout = { .tv_sec = wait / 1000000,
		                            .tv_nsec = (wait % 1000000) * 1000 };
		if (ppoll(p, (nfds_t)np, &timeout, NULL) < 0 && errno != EINTR)
			return 1;
		while (p[0].revents & POLLIN) {
			int cfd = accept(ls, NULL, NULL);
			if (cfd < 0)
				break;
			{
				int slot = -1;
				for (int i = 0; i < MAX_CONNS && slot < 0; i++)
					if (!conns[i].used)
						slot = i;
				int sfd = socket(AF_INET, SOCK_STREAM, 0);
				if (slot < 0 ||
				    (baddr && bind(sfd, (struct sockaddr *)&ba, sizeof ba) < 0) ||
				    connect(sfd, (struct sockaddr *)&ta, sizeof ta) < 0) {
					close(cfd);
					close(sfd);
				} else {
					nonblock(cfd);
					nonblock(sfd);
					conns[slot].used = 1;
					conns[slot].fd[0] = cfd;
					conns[slot].fd[1] = sfd;
					if (slot >= hi)
						hi = slot + 1;
				}
			}
		}
		for (int k = 1; k < np; k++) {
			conn *c = &conns[idx[k] / 2];
			int s = idx[k] % 2;
			if (!c->used)
				continue;
			int bad = 0;
			if (p[k].revents & (POLLIN | POLLHUP | POLLERR))
				bad |= pull(c, s) < 0;
			if (p[k].revents & POLLOUT)
				bad |= push(c, 1 - s) < 0;
			if (bad) {
				finish(c);
				continue;
			}
		}
		/* Deliver what became due, and end connections that are done. */
		for (int i = 0; i < hi; i++) {
			conn *c = &conns[i];
			if (!c->used)
				continue;
			if (push(c, 0) < 0 || push(c, 1) < 0) {
				finish(c);
				continue;
			}
			if (c->d[0].shut && c->d[1].shut)
				finish(c);
		}
	}
}
