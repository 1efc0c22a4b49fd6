/*
 * scripted.h - scripted peers for engine unit tests (SMTP here; test_qmtp.c
 * brings its own QMTP child and reuses the plumbing), and a message builder.
 *
 * A forked child on one end of a socketpair plays a script: steps[0] is sent
 * at once (the greeting); after that each command line it reads is answered
 * with the next step, verbatim (so a step carries its own CRLFs, and may be
 * multiline, LF-only or garbage).  After a DATA answered with 3xx it reads
 * message data until the "." line, which is answered by the next step; a
 * "BDAT n" line is answered once its n octets have been read.
 * A step "" answers nothing (for timeouts); a step ending in "#CLOSE" sends
 * what precedes it and closes at once.  Everything the client sent is
 * captured and handed back, byte for byte, when the client closes.
 *
 * This is only for behaviour that real servers do not show on demand; the
 * integration tests use real servers.
 */
#ifndef SCRIPTED_H
#define SCRIPTED_H

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "mailspool/buf.h"
#include "mailspool/message.h"

typedef struct scripted {
	pid_t pid;
	int client_fd;
	int capture_fd;
} scripted;

static inline void sc_write_all(int fd, const char *p, size_t n)
{
	while (n > 0) {
		ssize_t w = write(fd, p, n);
		if (w <= 0)
			return;
		p += w;
		n -= (size_t)w;
	}
}

/* Send one step; returns 1 if the step closes the connection. */
static inline int sc_step(int fd, const char *step)
{
	const char *cl = strstr(step, "#CLOSE");
	size_t n = cl ? (size_t)(cl - step) : strlen(step);
	sc_write_all(fd, step, n);
	return cl != NULL;
}

static inline void sc_child(int fd, int cap, const char *const *steps)
{
	ms_buf in, captured;
	ms_buf_init(&in, 0);
	ms_buf_init(&captured, 0);
	size_t i = 0;
	int in_data = 0, closed = 0;
	unsigned long long chunk = 0; /* BDAT octets still to read */
	int in_chunk = 0;
	if (steps[i] && sc_step(fd, steps[i++]))
		closed = 1;
	char buf[65536];
	while (!closed) {
		ssize_t n = read(fd, buf, sizeof buf);
		if (n <= 0)
			break;
		ms_buf_append(&captured, buf, (size_t)n);
		ms_buf_append(&in, buf, (size_t)n);
		for (;;) {
			const char *p = ms_buf_ptr(&in);
			if (in_chunk) {
				size_t take = ms_buf_avail(&in) < chunk ? ms_buf_avail(&in) : (size_t)chunk;
				ms_buf_consume(&in, take);
				chunk -= take;
				if (chunk > 0)
					break;
				in_chunk = 0;
				if (sc_step(fd, steps[i] ? steps[i++] : "")) {
					closed = 1;
					break;
				}
				continue;
			}
			const char *nl = memchr(p, '\n', ms_buf_avail(&in));
			if (!nl)
				break;
			size_t len = (size_t)(nl - p) + 1;
			int is_dot = len == 3 && p[0] == '.' && p[1] == '\r';
			int is_data = len == 6 && !strncmp(p, "DATA\r\n", 6);
			if (!in_data && len > 5 && !strncmp(p, "BDAT ", 5)) {
				chunk = strtoull(p + 5, NULL, 10);
				in_chunk = 1;
				ms_buf_consume(&in, len);
				continue;
			}
			ms_buf_consume(&in, len);
			if (in_data && !is_dot)
				continue;
			in_data = 0;
			const char *step = steps[i] ? steps[i++] : "";
			if (sc_step(fd, step)) {
				closed = 1;
				break;
			}
			if (is_data && step[0] == '3')
				in_data = 1;
		}
	}
	close(fd);
	sc_write_all(cap, ms_buf_ptr(&captured), ms_buf_avail(&captured));
	close(cap);
	_exit(0);
}

typedef void (*sc_child_fn)(int fd, int capture_fd, const char *const *steps);

/* Fork `child` on one end of a socketpair; it must _exit. */
static inline void sc_start_with(scripted *sc, sc_child_fn child, const char *const *steps)
{
	int sv[2], pv[2];
	signal(SIGPIPE, SIG_IGN);
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0 || pipe(pv) < 0)
		abort();
	sc->pid = fork();
	if (sc->pid == 0) {
		close(sv[0]);
		close(pv[0]);
		child(sv[1], pv[1], steps);
	}
	close(sv[1]);
	close(pv[1]);
	sc->client_fd = sv[0];
	sc->capture_fd = pv[0];
}

static inline void sc_start(scripted *sc, const char *const *steps)
{
	sc_start_with(sc, sc_child, steps);
}

/* After the client closed its end: what it sent, NUL-terminated. */
static inline char *sc_finish(scripted *sc, size_t *len)
{
	ms_buf b;
	ms_buf_init(&b, 0);
	char buf[65536];
	ssize_t n;
	while ((n = read(sc->capture_fd, buf, sizeof buf)) > 0)
		ms_buf_append(&b, buf, (size_t)n);
	close(sc->capture_fd);
	waitpid(sc->pid, NULL, 0);
	if (len)
		*len = ms_buf_avail(&b);
	char *s = ms_buf_steal(&b);
	return s;
}

/* A message from "a,b,c" recipients and a body (blen 0: strlen), scanned. */
static inline ms_message *sc_message(const char *from, const char *rcpts, const char *body,
                                      size_t blen)
{
	ms_error err;
	ms_message *m = ms_message_new(from, &err);
	if (!m)
		abort();
	char buf[4096];
	snprintf(buf, sizeof buf, "%s", rcpts);
	for (char *save, *r = strtok_r(buf, ",", &save); r; r = strtok_r(NULL, ",", &save))
		if (ms_message_add_rcpt(m, r, &err) != MS_OK)
			abort();
	if (ms_message_add_mem(m, body, blen ? blen : strlen(body), &err) != MS_OK ||
	    ms_message_scan(m, &err) != MS_OK)
		abort();
	return m;
}

#endif
