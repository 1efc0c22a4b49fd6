/*
 * wakenet.c - wake-ups between hosts (see mailspool/wakenet.h).
 *
 * Invariants: nothing is sent or accepted without the key; a datagram is
 * at most WAKE_DGRAM_MAX octets both ways; the endpoint list is the
 * owner's own files in wake/, each checked by fstat before it is read.
 */
#include "mailspool/wakenet.h"
#include "mailspool/io.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#define KEY_LEN 32
#define MAC_HEX 32
#define WAKE_DGRAM_MAX 512
#define ENDPOINTS_MAX 64
#define RELIST_MS 2000

typedef struct endpoint {
	struct sockaddr_storage ss;
	socklen_t len;
} endpoint;

struct ms_wakenet {
	int fd;
	char self[140];          /* our FIFO's name, NODE.PID */
	unsigned char key[KEY_LEN];
	endpoint ep[ENDPOINTS_MAX];
	size_t nep;
	int64_t listed_ms;       /* endpoints last listed (monotonic), 0: never */
};

/* Open a file of wake/ for reading: the owner's, regular, one link. */
static int open_own(ms_spool *sp, const char *name)
{
	int fd = openat(ms_spool_wake_dirfd(sp), name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
	struct stat st;
	if (fd >= 0 && (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_uid != ms_spool_owner(sp) ||
	                st.st_nlink != 1)) {
		close(fd);
		return -1;
	}
	return fd;
}

static int write_new(int dfd, const char *name, const void *p, size_t n)
{
	int fd = openat(dfd, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd < 0)
		return -1;
	int ok = ms_write_all(fd, p, n) == 0 && fsync(fd) == 0;
	if (close(fd) < 0 || !ok) {
		unlinkat(dfd, name, 0);
		return -1;
	}
	return 0;
}

/* wake/key, made once (in a temporary name, then linked: two daemons
 * starting at once end up with the first one's). */
static int load_key(ms_spool *sp, unsigned char key[KEY_LEN])
{
	int dfd = ms_spool_wake_dirfd(sp);
	for (int round = 0; round < 3; round++) {
		int fd = open_own(sp, "key");
		if (fd >= 0) {
			ssize_t r = read(fd, key, KEY_LEN);
			close(fd);
			return r == KEY_LEN ? 0 : -1;
		}
		unsigned char k[KEY_LEN];
		char tmp[48];
		unsigned rnd;
		if (getrandom(k, sizeof k, 0) != (ssize_t)sizeof k ||
		    getrandom(&rnd, sizeof rnd, 0) != (ssize_t)sizeof rnd)
			return -1;
		snprintf(tmp, sizeof tmp, "key.%08x.tmp", rnd);
		if (write_new(dfd, tmp, k, sizeof k) < 0)
			return -1;
		(void)linkat(dfd, tmp, dfd, "key", 0);
		unlinkat(dfd, tmp, 0);
	}
	return -1;
}

static void mac_of(const unsigned char key[KEY_LEN], const char *msg, size_t n,
                   char hex[MAC_HEX + 1])
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0;
	HMAC(EVP_sha256(), key, KEY_LEN, (const unsigned char *)msg, n, md, &mdlen);
	for (size_t i = 0; i < MAC_HEX / 2; i++)
		snprintf(hex + 2 * i, 3, "%02x", md[i]);
}

static int parse_addr(const char *addr, unsigned port, struct sockaddr_storage *ss,
                      socklen_t *len)
{
	memset(ss, 0, sizeof *ss);
	struct sockaddr_in *v4 = (struct sockaddr_in *)ss;
	struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)ss;
	if (inet_pton(AF_INET, addr, &v4->sin_addr) == 1) {
		v4->sin_family = AF_INET;
		v4->sin_port = htons((uint16_t)port);
		*len = sizeof *v4;
	} else if (inet_pton(AF_INET6, addr, &v6->sin6_addr) == 1) {
		v6->sin6_family = AF_INET6;
		v6->sin6_port = htons((uint16_t)port);
		*len = sizeof *v6;
	} else {
		return -1;
	}
	return 0;
}

ms_status ms_wakenet_open(ms_spool *sp, const char *addr, const char *node, ms_wakenet **out,
                          ms_error *err)
{
	*out = NULL;
	if (!*addr)
		return MS_OK;
	ms_wakenet *w = calloc(1, sizeof *w);
	if (!w)
		return ms_error_set(err, MS_ERR_NOMEM, "out of memory");
	w->fd = -1;
	snprintf(w->self, sizeof w->self, "%.64s.%ld", node, (long)getpid());
	struct sockaddr_storage ss;
	socklen_t len;
	ms_status st = MS_OK;
	if (load_key(sp, w->key) < 0)
		st = ms_error_set(err, MS_ERR_IO, "cannot read or make %s/wake/key",
		                  ms_spool_dir(sp));
	else if (parse_addr(addr, 0, &ss, &len) < 0)
		st = ms_error_set(err, MS_ERR_USAGE, "wake_address %s is not an address", addr);
	else if ((w->fd = socket(ss.ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)) < 0 ||
	         bind(w->fd, (struct sockaddr *)&ss, len) < 0 ||
	         getsockname(w->fd, (struct sockaddr *)&ss, &len) < 0)
		st = ms_error_set(err, MS_ERR_IO, "cannot listen for wake-ups on %s: %s", addr,
		                  strerror(errno));
	if (st == MS_OK) {
		unsigned port = ntohs(ss.ss_family == AF_INET ? ((struct sockaddr_in *)&ss)->sin_port
		                                              : ((struct sockaddr_in6 *)&ss)->sin6_port);
		char name[160], tmp[170], body[96];
		int dfd = ms_spool_wake_dirfd(sp);
		snprintf(name, sizeof name, "%s.udp", w->self);
		snprintf(tmp, sizeof tmp, "%s.tmp", name);
		int n = snprintf(body, sizeof body, "%s %u\n", addr, port);
		unlinkat(dfd, tmp, 0);
		if (write_new(dfd, tmp, body, (size_t)n) < 0 || renameat(dfd, tmp, dfd, name) < 0) {
			st = ms_error_set(err, MS_ERR_IO, "cannot publish wake/%s: %s", name,
			                  strerror(errno));
			unlinkat(dfd, tmp, 0);
		}
	}
	if (st != MS_OK) {
		ms_wakenet_close(w);
		return st;
	}
	*out = w;
	return MS_OK;
}

int ms_wakenet_fd(const ms_wakenet *w)
{
	return w ? w->fd : -1;
}

size_t ms_wakenet_recv(ms_wakenet *w, char *out, size_t cap)
{
	size_t got = 0;
	char dg[WAKE_DGRAM_MAX];
	ssize_t r;
	while (got < cap && (r = recv(w->fd, dg, sizeof dg, 0)) >= 0) {
		if (r <= MAC_HEX + 1 || dg[MAC_HEX] != ' ')
			continue; /* not one of ours: dropped */
		char mac[MAC_HEX + 1];
		const char *msg = dg + MAC_HEX + 1;
		size_t n = (size_t)r - MAC_HEX - 1;
		mac_of(w->key, msg, n, mac);
		if (CRYPTO_memcmp(mac, dg, MAC_HEX) || n > cap - got)
			continue;
		memcpy(out + got, msg, n);
		got += n;
	}
	return got;
}

/* The endpoints of daemons on other kernels: a .udp file whose FIFO we
 * cannot open (ENXIO; one we can open is read here and got the message
 * from the FIFO itself). */
static void list_endpoints(ms_wakenet *w, ms_spool *sp)
{
	w->nep = 0;
	int dfd = ms_spool_wake_dirfd(sp);
	int d2 = fcntl(dfd, F_DUPFD_CLOEXEC, 0);
	DIR *d = d2 >= 0 ? fdopendir(d2) : NULL;
	if (!d) {
		if (d2 >= 0)
			close(d2);
		return;
	}
	rewinddir(d);
	struct dirent *de;
	while ((de = readdir(d)) && w->nep < ENDPOINTS_MAX) {
		size_t len = strlen(de->d_name);
		if (len < 5 || strcmp(de->d_name + len - 4, ".udp"))
			continue;
		char fifo[300];
		snprintf(fifo, sizeof fifo, "%.*s", (int)(len - 4), de->d_name);
		if (!strcmp(fifo, w->self))
			continue;
		int ff = openat(dfd, fifo, O_WRONLY | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC);
		if (ff >= 0 || errno != ENXIO) {
			if (ff >= 0)
				close(ff);
			continue; /* read on this host (or gone) */
		}
		char body[96], addr[64];
		unsigned port;
		int fd = open_own(sp, de->d_name);
		ssize_t r = fd >= 0 ? read(fd, body, sizeof body - 1) : -1;
		if (fd >= 0)
			close(fd);
		if (r <= 0)
			continue;
		body[r] = '\0';
		endpoint *e = &w->ep[w->nep];
		if (sscanf(body, "%63s %u", addr, &port) == 2 && port > 0 && port <= 65535 &&
		    parse_addr(addr, port, &e->ss, &e->len) == 0)
			w->nep++;
	}
	closedir(d);
}

void ms_wakenet_relay(ms_wakenet *w, ms_spool *sp, const char *msg, size_t n)
{
	if (!w || !n)
		return;
	int64_t now = ms_now_ms();
	if (!w->listed_ms || now - w->listed_ms >= RELIST_MS) {
		list_endpoints(w, sp);
		w->listed_ms = now;
	}
	/* Whole messages per datagram: cut after a '\n' or a one-letter
	 * message ('c', 'f'). */
	size_t at = 0;
	while (at < n) {
		size_t room = WAKE_DGRAM_MAX - MAC_HEX - 1, end = at, cut = at;
		while (end < n && end - at < room) {
			if (msg[end] == 'n') {
				const char *nl = memchr(msg + end, '\n', n - end);
				if (!nl || (size_t)(nl - msg) + 1 - at > room)
					break;
				end = (size_t)(nl - msg) + 1;
			} else {
				end++;
			}
			cut = end;
		}
		if (cut == at)
			break; /* a message longer than a datagram: not one of ours */
		char dg[WAKE_DGRAM_MAX];
		mac_of(w->key, msg + at, cut - at, dg);
		dg[MAC_HEX] = ' ';
		memcpy(dg + MAC_HEX + 1, msg + at, cut - at);
		for (size_t i = 0; i < w->nep; i++)
			(void)!sendto(w->fd, dg, MAC_HEX + 1 + (cut - at), MSG_DONTWAIT,
			              (struct sockaddr *)&w->ep[i].ss, w->ep[i].len);
		at = cut;
	}
}

void ms_wakenet_close(ms_wakenet *w)
{
	if (!w)
		return;
	if (w->fd >= 0)
		close(w->fd);
	OPENSSL_cleanse(w->key, sizeof w->key);
	free(w);
}
