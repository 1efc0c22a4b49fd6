/*
 * mailspool/io.h - a buffered, non-blocking byte stream with deadlines.
 *
 * One ms_io owns one connection.  Output is queued in `out`; input collects in
 * `in`.  ms_io_pump() runs a single poll() that writes whatever output is
 * queued AND reads whatever input has arrived, so a long pipelined group can
 * never deadlock against a server that answers before it reads on
 * (RFC 2920 section 3.1, PROTOCOL-RULES R24).
 *
 * The bytes move through an ms_transport (read/write/close on a context), so
 * TLS can be slotted in later without touching the protocol engines.
 *
 * Invariants: the fd is non-blocking; every wait is bounded by a deadline on
 * the monotonic clock; writes never raise SIGPIPE.
 */
#ifndef MAILSPOOL_IO_H
#define MAILSPOOL_IO_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include "mailspool/buf.h"
#include "mailspool/error.h"

/* Caps on what a peer can make us buffer. */
#define MS_IO_IN_MAX   (1u << 20)
#define MS_IO_OUT_MAX  (8u << 20)
#define MS_IO_READ_SIZE 16384

/* Milliseconds on the monotonic clock. */
int64_t ms_now_ms(void);
#define MS_NO_DEADLINE INT64_MAX

typedef struct ms_transport {
	/* Like read(2)/write(2) on a non-blocking fd: >0 bytes, 0 EOF (read),
	 * -1 with errno (EAGAIN when it would block). */
	ssize_t (*read)(void *ctx, void *buf, size_t n);
	ssize_t (*write)(void *ctx, const void *buf, size_t n);
	void (*close)(void *ctx);
	/* Bytes already read from the socket and decoded but not yet handed
	 * out (TLS records): poll() cannot see them.  May be NULL. */
	size_t (*pending)(void *ctx);
	void *ctx;
} ms_transport;

typedef struct ms_io {
	int fd;
	ms_transport tr;
	ms_buf in, out;
	int eof;                  /* the peer closed its side */
	size_t read_chunk;        /* cap per read call (tests split replies with 1); 0 = default */
	uint64_t bytes_in, bytes_out;
	uint64_t writes;          /* write calls that moved bytes */
	int64_t last_write_ms;    /* time of the last write progress */
	/* Called after every write that moved bytes: lets a transcript mark
	 * write boundaries.  May be NULL. */
	void (*on_write)(void *ctx, const char *p, size_t n);
	void *on_write_ctx;
} ms_io;

/* Take ownership of a connected socket (made non-blocking here). */
ms_status ms_io_init_fd(ms_io *io, int fd, ms_error *err);
/* Close the transport and the fd; frees buffers. */
void ms_io_close(ms_io *io);
/* Queue bytes for writing (nothing is written until ms_io_pump). */
ms_status ms_io_queue(ms_io *io, const void *p, size_t n, ms_error *err);
static inline size_t ms_io_pending(const ms_io *io) { return ms_buf_avail(&io->out); }

/*
 * One round of the event loop: wait until the fd is readable (always watched,
 * unless EOF was seen) or writable (only when output is queued), or until
 * `deadline`.  Writes as much as the socket takes, reads what is there.
 * Queued output is first written without polling.  A deadline already
 * reached means one poll that does not wait.  Returns MS_OK when something
 * moved or EOF was seen (io->eof), MS_ERR_TIMEOUT when the deadline passed
 * first, MS_ERR_IO on socket errors.
 */
ms_status ms_io_pump(ms_io *io, int64_t deadline, ms_error *err);

/* Write all of p[0..n) to a blocking descriptor (a file, a pipe),
 * retrying short writes and EINTR: 0, or -1 with errno set. */
int ms_write_all(int fd, const void *p, size_t n);

/* (Opening connections: mailspool/net.h.) */

#endif
