/*
 * mailspool/transcript.h - a record of everything said on a connection.
 *
 * PROTOCOL-RULES R47: every line sent and received, in order, with its
 * direction and a timestamp, and a mark at every write() boundary so that a
 * cross-message group (body, ".", next MAIL/RCPT/DATA in one write) is
 * visible.  Message bodies are summarised (octets and SHA-256 of the bytes
 * on the wire) unless full bodies were asked for.  Unprintable bytes are
 * escaped when rendered.
 *
 * Invariant: memory is capped (MS_TX_MAX_BYTES); past the cap events are
 * counted but dropped, and the rendering says so.
 */
#ifndef MAILSPOOL_TRANSCRIPT_H
#define MAILSPOOL_TRANSCRIPT_H

#include <stddef.h>
#include <stdint.h>
#include "mailspool/buf.h"
#include "mailspool/error.h"

#define MS_TX_MAX_BYTES (64u << 20)

typedef enum ms_tx_kind {
	MS_TX_SENT,  /* a command line, or a body summary, we queued for sending */
	MS_TX_RECV,  /* a reply (all its lines) */
	MS_TX_WRITE, /* a write() boundary: nbytes went out in one call */
	MS_TX_NOTE,  /* an event of ours: fallback, decision */
	MS_TX_ERROR  /* an error: timeout, protocol violation, closed connection */
} ms_tx_kind;

typedef struct ms_tx_event {
	int64_t t_us;     /* microseconds since the transcript started */
	ms_tx_kind kind;
	char *text;       /* bytes as sent or received, without line ends */
	size_t len;
	uint64_t nbytes;  /* for MS_TX_WRITE */
} ms_tx_event;

typedef struct ms_transcript ms_transcript;

ms_transcript *ms_transcript_new(int full_bodies);
void ms_transcript_free(ms_transcript *tx);
int ms_transcript_full_bodies(const ms_transcript *tx);
void ms_transcript_add(ms_transcript *tx, ms_tx_kind kind, const char *p, size_t n);
void ms_transcript_addf(ms_transcript *tx, ms_tx_kind kind, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
void ms_transcript_write(ms_transcript *tx, uint64_t nbytes);
size_t ms_transcript_count(const ms_transcript *tx);
const ms_tx_event *ms_transcript_event(const ms_transcript *tx, size_t i);
/* Human-readable: "  0.012345 C: MAIL FROM:<a@b>" ... and "--- write #3: 4210 octets". */
ms_status ms_transcript_render(const ms_transcript *tx, ms_buf *out);
/* JSON array of {"t":seconds,"dir":"C|S|W|N|E","text":...,"bytes":n}. */
ms_status ms_transcript_render_json(const ms_transcript *tx, ms_buf *out);

/* Append s[0..n) as a JSON string literal (quotes included): well-formed
 * UTF-8 passes through, control bytes are escaped, invalid bytes become
 * U+FFFD. */
ms_status ms_json_string(ms_buf *out, const char *s, size_t n);

#endif
