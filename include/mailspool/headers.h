/*
 * mailspool/headers.h - the header block of a message (RFC 5322 2.2, 3.4).
 *
 * What `sendmail -t` needs: read the header block of a message, take the
 * recipients from To, Cc and Bcc (address lists with display names, groups,
 * comments, quoted strings and folded lines), and remove the Bcc fields so
 * that no recipient sees them.
 *
 * Invariants: the header block is capped at MS_HDR_MAX bytes; a line ends
 * at CRLF, LF or a bare CR - the one rule the encoder uses for what is sent
 * and stored, so a field cannot hide behind a bare CR ("Subject: x\rBcc: y"
 * is two fields to -t, to Bcc removal and on the wire); nothing here is
 * trusted as an address until ms_addr_parse has checked it.
 */
#ifndef MAILSPOOL_HEADERS_H
#define MAILSPOOL_HEADERS_H

#include <stddef.h>
#include <stdint.h>
#include "mailspool/buf.h"
#include "mailspool/error.h"

#define MS_HDR_MAX (1u << 20)

/* The first line of p[0..n) with its line end (CRLF, LF or a bare CR; a CR
 * as the last byte counts as a line end). */
size_t ms_hdr_line_len(const char *p, size_t n);

/* Read the header block from the start of fd (pread; the offset is not
 * moved) into hdr, including the blank line that ends it.  *body_off is the
 * offset of the first body byte (the file size when there is no body). */
ms_status ms_hdr_read(int fd, ms_buf *hdr, uint64_t *body_off, ms_error *err);

/* A field that is no address list: an unclosed "<", or words apart with
 * no <address> after them ("a@x b@y", "Name a@x") - refused, never run
 * together into a wrong address. */
#define MS_HDR_MALFORMED (-2)

/* Call fn for every address in fields named `name` (case-insensitive).
 * Returns the number of addresses found, -1 when fn returned non-zero, or
 * MS_HDR_MALFORMED. */
int ms_hdr_addresses(const char *hdr, size_t len, const char *name,
                     int (*fn)(void *ctx, const char *addr), void *ctx);

/* Remove every field named `name` (with its continuation lines) in place;
 * returns the new length. */
size_t ms_hdr_remove(char *hdr, size_t len, const char *name);

/* Parse one address-list field body; fn gets each addr-spec. */
int ms_hdr_parse_list(const char *body, size_t len, int (*fn)(void *ctx, const char *addr),
                      void *ctx);

/* An RFC 5322 date-time ("Sun, 22 Nov 2026 10:00:00 +0100") in local time. */
void ms_hdr_date(int64_t t, char *out, size_t n);

#endif
