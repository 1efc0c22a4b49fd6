/*
 * mailspool/netstring.h - strict netstrings (cr.yp.to/proto/netstrings.txt).
 *
 * A netstring is [len] ":" [string] "," with len in decimal.  QMTP frames
 * every package and every reply with them (PROTOCOL-RULES N1, Q2, Q4).
 *
 * The parser is strict and incremental: it takes whatever bytes have
 * arrived, says "need more" until a whole netstring is there, and rejects
 * bad input as early as it can be seen - a non-digit, a leading zero, a
 * missing ':' or ',' - and a length over the caller's cap as soon as the
 * digits exceed it, before any byte of the payload is waited for or any
 * memory is allocated.
 *
 * Invariant: a parsed netstring's payload points into the caller's buffer;
 * nothing here allocates.
 */
#ifndef MAILSPOOL_NETSTRING_H
#define MAILSPOOL_NETSTRING_H

#include <stddef.h>
#include <stdint.h>
#include "mailspool/buf.h"
#include "mailspool/error.h"

/* Room for the longest prefix: 20 digits of a uint64_t and ':'. */
#define MS_NS_PREFIX_MAX 21

typedef enum ms_ns_result {
	MS_NS_OK = 0,   /* a whole netstring was parsed */
	MS_NS_MORE,     /* valid so far; more bytes are needed */
	MS_NS_BAD       /* malformed or over the cap (err says which) */
} ms_ns_result;

/*
 * Parse one netstring at the start of p[0..n).  On MS_NS_OK, *payload and
 * *len give the string and *used the bytes the whole netstring took.
 * Lengths over `cap` are refused.
 */
ms_ns_result ms_ns_parse(const char *p, size_t n, size_t cap, const char **payload,
                         size_t *len, size_t *used, ms_error *err);

/* Write the prefix "len:" for a payload of `len` bytes; returns its size. */
size_t ms_ns_prefix(char out[MS_NS_PREFIX_MAX], uint64_t len);

/* Bytes a netstring of a `len`-byte payload takes on the wire. */
uint64_t ms_ns_size(uint64_t len);

/* Append the netstring of p[0..n) to b. */
ms_status ms_ns_append(ms_buf *b, const void *p, size_t n);

#endif
