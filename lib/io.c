/*
 * io.c - buffered non-blocking stream and TCP connect (see mailspool/io.h).
 *
 * Why one poll for both directions: a pipelining client that writes a large
 * group with blocking writes can deadlock against a server that writes
 * replies and stops reading until they are consumed (RFC 2920 3.1).  Here
 * every wait watches POLLIN, so replies are always drained while writing.
 */
#include "mailspool/io.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

int64_t ms_now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static ssize_t plain_read(void *ctx, void *buf, size_t n)
{
	return read(*(int *)ctx, buf, n);
}

static ssize_t plain_write(void *ctx, const void *buf, size_t n)
{
	int fd = *(int *)ctx;
	/* MSG_NOSIGNAL: a peer that closed must give EPIPE, not kill us. */
	ssize_t r = send(fd, buf, n, MSG_NOSIGNAL);
	if (r < 0 && errno == ENOTSOCK)
		r = write(fd, buf, n);
	return r;
}

static void plain_close(void *ctx)
{
	(void)ctx; /* the fd is closed by ms_io_close */
}

static int set_nonblock(int fd)
{
	int fl = fcntl(fd, F_GETFL);
	return fl < 0 ? -1 : fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

ms_status ms_io_init_fd(ms_io *io, int fd, ms_error *err)
{
	memset(io, 0, sizeof *io);
	io->fd = fd;
	ms_buf_init(&io->in, MS_IO_IN_MAX);
	ms_buf_init(&io->out, MS_IO_OUT_MAX);
	if (set_nonblock(fd) < 0)
		return ms_error_set(err, MS_ERR_IO, "cannot make socket non-blocking: %s",
		                    strerror(errno));
	/* Every write is a whole pipelined group already (commands, or a body
	 * with the next envelope behind it): Nagle's algorithm would only hold
	 * its small tail back until the previous segment is acknowledged -
	 * 40 ms of delayed ACK per message against some servers.  (Not a TCP
	 * socket, for tests over socketpairs: the call fails, harmlessly.) */
	int one = 1;
	(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	io->tr.read = plain_read;
	io->tr.write = plain_write;
	io->tr.close = plain_close;
	io->tr.ctx = &io->fd;
	io->last_write_ms = ms_now_ms();
	return MS_OK;
}

void ms_io_close(ms_io *io)
{
	if (io->tr.close)
		io->tr.close(io->tr.ctx);
	io->tr.close = NULL;
	if (io->fd >= 0)
		close(io->fd);
	io->fd = -1;
	ms_buf_free(&io->in);
	ms_buf_free(&io->out);
}

ms_status ms_io_queue(ms_io *io, const void *p, size_t n, ms_error *err)
{
	if (ms_buf_append(&io->out, p, n) != MS_OK)
		return ms_error_set(err, MS_ERR_NOMEM, "output buffer limit of %u bytes reached",
		                    MS_IO_OUT_MAX);
	return MS_OK;
}

/* Write until the socket would block or the queue is empty. */
static ms_status do_write(ms_io *io, int *progress, ms_error *err)
{
	while (ms_buf_avail(&io->out) > 0) {
		ssize_t r = io->tr.write(io->tr.ctx, ms_buf_ptr(&io->out), ms_buf_avail(&io->out));
		if (r < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return MS_OK;
			if (errno == EPIPE || errno == ECONNRESET) {
				/* The peer went away; what it said before closing is
				 * still to be read (R26), so report EOF, not an error. */
				io->eof = 1;
				ms_buf_reset(&io->out);
				*progress = 1;
				return MS_OK;
			}
			return ms_error_set(err, MS_ERR_IO, "write failed: %s", strerror(errno));
		}
		if (io->on_write)
			io->on_write(io->on_write_ctx, ms_buf_ptr(&io->out), (size_t)r);
		ms_buf_consume(&io->out, (size_t)r);
		io->bytes_out += (uint64_t)r;
		io->writes++;
		io->last_write_ms = ms_now_ms();
		*progress = 1;
	}
	return MS_OK;
}

static ms_status do_read(ms_io *io, int *progress, ms_error *err)
{
	size_t want = io->read_chunk ? io->read_chunk : MS_IO_READ_SIZE;
	if (ms_buf_reserve(&io->in, want) != MS_OK)
		return ms_error_set(err, MS_ERR_PROTOCOL,
		                    "server sent more than %u bytes without a complete reply",
		                    MS_IO_IN_MAX);
	for (;;) {
		ssize_t r = io->tr.read(io->tr.ctx, ms_buf_tail(&io->in), want);
		if (r > 0) {
			/* Acknowledge at once what arrived (plain or TLS): a server
			 * that writes its pipelined replies in pieces with Nagle's
			 * algorithm on holds the next piece until this one is
			 * acknowledged, and a delayed ACK costs 40 ms a message
			 * (Postfix's smtpd on loopback: 300 messages took 12.7 s,
			 * 0.37 s with this).  Linux clears the flag as it goes, so
			 * it is set again after every read. */
			int one = 1;
			(void)setsockopt(io->fd, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof one);
		}
		if (r < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return MS_OK;
			if (errno == ECONNRESET) {
				io->eof = 1;
				*progress = 1;
				return MS_OK;
			}
			return ms_error_set(err, MS_ERR_IO, "read failed: %s", strerror(errno));
		}
		if (r == 0)
			io->eof = 1;
		else
			ms_buf_commit(&io->in, (size_t)r);
		io->bytes_in += (uint64_t)r;
		*progress = 1;
		return MS_OK;
	}
}

ms_status ms_io_pump(ms_io *io, int64_t deadline, ms_error *err)
{
	int progress = 0;
	ms_status st;
	/* Decoded bytes waiting inside the transport: take them first, poll
	 * would not wake up for them. */
	if (!io->eof && io->tr.pending && io->tr.pending(io->tr.ctx) > 0) {
		if ((st = do_read(io, &progress, err)) != MS_OK)
			return st;
		if (progress)
			return MS_OK;
	}
	/* Write first without asking poll: the socket is writable far more
	 * often than not, and this saves a system call per group. */
	if (ms_buf_avail(&io->out) > 0 && !io->eof) {
		if ((st = do_write(io, &progress, err)) != MS_OK)
			return st;
		if (progress)
			return MS_OK;
	}
	for (;;) {
		struct pollfd pfd = { .fd = io->fd, .events = 0 };
		if (!io->eof)
			pfd.events |= POLLIN;
		if (ms_buf_avail(&io->out) > 0 && !io->eof)
			pfd.events |= POLLOUT;
		if (pfd.events == 0)
			return MS_OK; /* nothing can move: the caller sees io->eof */
		/* A deadline already reached still gets one poll that does not
		 * wait: "what is ready now?" */
		int64_t left = deadline - ms_now_ms();
		int timeout = left <= 0 ? 0 : left > 60000 ? 60000 : (int)left;
		int n = poll(&pfd, 1, timeout);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return ms_error_set(err, MS_ERR_IO, "poll failed: %s", strerror(errno));
		}
		if (n == 0) {
			if (ms_now_ms() >= deadline)
				return ms_error_set(err, MS_ERR_TIMEOUT, "timed out");
			continue;
		}
		if (pfd.revents & (POLLOUT | POLLERR | POLLHUP)) {
			if ((st = do_write(io, &progress, err)) != MS_OK)
				return st;
		}
		if (pfd.revents & (POLLIN | POLLERR | POLLHUP)) {
			if ((st = do_read(io, &progress, err)) != MS_OK)
				return st;
		}
		if (progress || io->eof)
			return MS_OK;
	}
}


int ms_write_all(int fd, const void *buf, size_t n)
{
	const char *p = buf;
	while (n > 0) {
		ssize_t w = write(fd, p, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0) {
			if (w == 0)
				errno = EIO;
			return -1;
		}
		p += w;
		n -= (size_t)w;
	}
	return 0;
}
