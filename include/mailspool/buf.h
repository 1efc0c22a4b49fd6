/*
 * mailspool/buf.h - a growable byte buffer with a hard cap.
 *
 * Every buffer in the library has a named limit; growth past it fails with
 * MS_ERR_NOMEM instead of letting a peer make us allocate without bound.
 * Consumed bytes are dropped from the front lazily (an offset), so a stream
 * buffer can be appended to at the back and eaten from the front cheaply.
 *
 * Invariants: off <= len <= cap <= limit (when limit != 0); data[len] == 0
 * whenever data != NULL, so text contents are always NUL-terminated.
 */
#ifndef MAILSPOOL_BUF_H
#define MAILSPOOL_BUF_H

#include <stddef.h>
#include "mailspool/error.h"

typedef struct ms_buf {
	char *data;
	size_t off;   /* first unconsumed byte */
	size_t len;   /* end of valid bytes */
	size_t cap;   /* allocated bytes, excluding the NUL guard */
	size_t limit; /* maximum cap; 0 means SIZE_MAX/2 */
} ms_buf;

void ms_buf_init(ms_buf *b, size_t limit);
void ms_buf_free(ms_buf *b);
/* Unconsumed bytes and their count. */
static inline const char *ms_buf_ptr(const ms_buf *b) { return b->data ? b->data + b->off : ""; }
static inline size_t ms_buf_avail(const ms_buf *b) { return b->len - b->off; }
/* Make room for n more bytes; compacts before growing. */
ms_status ms_buf_reserve(ms_buf *b, size_t n);
ms_status ms_buf_append(ms_buf *b, const void *p, size_t n);
ms_status ms_buf_appendstr(ms_buf *b, const char *s);
ms_status ms_buf_printf(ms_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Drop n bytes from the front. */
void ms_buf_consume(ms_buf *b, size_t n);
void ms_buf_reset(ms_buf *b);
/* Pointer to the free tail (after ms_buf_reserve) and commit n written bytes. */
static inline char *ms_buf_tail(ms_buf *b) { return b->data + b->len; }
void ms_buf_commit(ms_buf *b, size_t n);
/* Take the contents as a malloc'd NUL-terminated string; b is left empty. */
char *ms_buf_steal(ms_buf *b);

#endif
