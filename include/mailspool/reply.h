/*
 * mailspool/reply.h - SMTP reply reader.
 *
 * RFC 5321 4.2 (syntax), 4.2.1 (multiline), 4.5.3.1.5 (512-octet lines),
 * RFC 2034 / RFC 3463 (enhanced status codes).  PROTOCOL-RULES R1-R6, R36.
 *
 * The reader is incremental: feed it the input buffer as bytes arrive and it
 * consumes whole lines, returning a reply only when the final line
 * ("ddd SP text" or a bare "ddd") is complete.  Splitting at any byte gives
 * the same result as one segment.
 *
 * Invariants:
 *  - a line that is not "ddd-", "ddd SP" or "ddd" is a protocol error, never
 *    skipped (R4: skipping garbage lets a later reply be taken for an earlier
 *    command);
 *  - codes are three digits, the first 2-5 (unknown ones are read by their
 *    first digit, R2); anything else is a protocol error;
 *  - a line is at most MS_REPLY_LINE_MAX bytes and a reply at most
 *    MS_REPLY_LINES_MAX lines (R5);
 *  - a multiline reply whose lines disagree takes the final line's code and
 *    is flagged MS_REPLY_MIXED (R3); LF-only line ends are accepted and
 *    flagged MS_REPLY_BARE_LF (R6).
 */
#ifndef MAILSPOOL_REPLY_H
#define MAILSPOOL_REPLY_H

#include "mailspool/buf.h"
#include "mailspool/error.h"

/* RFC 5321 says 512; real servers send longer EHLO lines, Postfix reads 2048. */
#define MS_REPLY_LINE_MAX  2048
#define MS_REPLY_LINES_MAX 128
#define MS_ENH_MAX 16 /* "5.123.123" fits with room */

enum {
	MS_REPLY_MIXED = 1u << 0,   /* lines of one reply carried different codes */
	MS_REPLY_BARE_LF = 1u << 1, /* a line ended in LF without CR */
	MS_REPLY_ENH_MISMATCH = 1u << 2, /* enhanced code's class disagreed, ignored */
};

typedef struct ms_reply {
	int code;            /* 200..599 */
	char enh[MS_ENH_MAX]; /* "2.1.5", or "" when absent or ignored */
	char *text;          /* text of every line (after "ddd-"), joined by "\n" */
	char *raw;           /* every line as received, without line ends, joined by "\n" */
	int nlines;
	unsigned flags;
} ms_reply;

typedef struct ms_reply_reader {
	ms_buf text, raw;
	int first_code;
	int nlines;
	unsigned flags;
} ms_reply_reader;

void ms_reply_reader_init(ms_reply_reader *rr);
void ms_reply_reader_free(ms_reply_reader *rr);
/*
 * Consume complete lines from `in`.  Returns MS_OK with *done = 1 and *out
 * filled when a reply is complete (caller frees with ms_reply_free), MS_OK
 * with *done = 0 when more bytes are needed, or MS_ERR_PROTOCOL.
 */
ms_status ms_reply_read(ms_reply_reader *rr, ms_buf *in, ms_reply *out, int *done,
                        ms_error *err);
/* True if `in` holds a partial line or reply (what was cut off at EOF). */
int ms_reply_reader_busy(const ms_reply_reader *rr, const ms_buf *in);
void ms_reply_free(ms_reply *r);

/*
 * Parse an enhanced status code "c.sss.ddd" at the start of text (RFC 3463:
 * class 2/4/5, subject and detail 1-3 digits, no leading zeros), followed by
 * SP or the end.  Writes it to out and returns its length, or 0.
 */
size_t ms_enh_parse(const char *text, char out[MS_ENH_MAX]);

/* First digit of a reply code: 2 success, 3 intermediate, 4 temp, 5 perm. */
static inline int ms_reply_class(int code) { return code / 100; }

#endif
