/*
 * mailspool/printable.h - text from outside, made safe for one line of a
 * log or a terminal.
 *
 * Reply texts, host names, addresses and error messages that quote them come
 * from servers and submitters.  Written raw, an ESC sequence can rewrite a
 * terminal line (a bounce shown as "status=sent") and a CR or LF can forge a
 * whole log line.  Every such field goes through ms_printable before it is
 * written to a log line, a listing or the program's output: bytes outside
 * printable ASCII (0x20-0x7e) become \xHH and a backslash becomes \\, so
 * the result is one line of printable ASCII that still says exactly which
 * bytes were there.
 *
 * Invariant: the output never holds a byte below 0x20 or above 0x7e; it is
 * cut (never mid-escape) when `n` is too small.
 */
#ifndef MAILSPOOL_PRINTABLE_H
#define MAILSPOOL_PRINTABLE_H

#include <stddef.h>

/* in[0..len) escaped into out (n bytes with the NUL, n >= 1); returns out. */
char *ms_printable(const char *in, size_t len, char *out, size_t n);

/* The same for a NUL-terminated string. */
char *ms_printable_str(const char *in, char *out, size_t n);

/* Room a fully escaped string of len bytes needs, with the NUL. */
#define MS_PRINTABLE_SIZE(len) (4 * (len) + 1)

#endif
