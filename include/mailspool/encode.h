/*
 * mailspool/encode.h - message data encoder for SMTP DATA.
 *
 * RFC 5321 2.3.8 (CRLF only), 4.1.1.4 (terminator), 4.5.2 (transparency),
 * 4.5.3.1.6 (line length); RFC 1870 5 (what SIZE= counts).
 * PROTOCOL-RULES R13-R17, I1-I3.
 *
 * A streaming state machine: feed it any bytes in any split and it emits
 * the wire form.  Line endings are normalised first (CRLF, bare LF and bare
 * CR each end a line and become CRLF), and dot-stuffing is applied to the
 * normalised lines, so a bare CR or LF can never smuggle "<CRLF>.<CRLF>"
 * (SMTP smuggling, R16).  ms_enc_finish() ends an unterminated last line
 * with CRLF and appends ".\r\n" - never an extra blank line (R15).
 *
 * Invariants of the output: every CR is followed by LF and every LF preceded
 * by CR; the only "\r\n.\r\n" is the terminator; memory use is constant.
 */
#ifndef MAILSPOOL_ENCODE_H
#define MAILSPOOL_ENCODE_H

#include <stddef.h>
#include <stdint.h>

/* Worst case output for n input bytes: "\r." after a pending CR is "\r\n..". */
#define MS_ENC_MAX_OUT(n) (4 * (n) + 8)
#define MS_SMTP_LINE_MAX 998 /* octets of text per line, CRLF not counted */

typedef struct ms_enc {
	int stuff;          /* apply dot-stuffing (DATA); 0 for counting or BDAT */
	int at_bol;         /* next output byte starts a line */
	int pending_cr;     /* last input byte was CR; its meaning depends on the next */
	size_t line_len;    /* octets in the current line so far */
	/* Statistics over everything fed so far (valid after finish): */
	uint64_t size;      /* RFC 1870 size: octets incl. CRLF, no stuffing, no terminator */
	uint64_t lines;
	size_t max_line;
	int has_8bit, has_nul;
	/* The input as it was, before normalising (QMTP sends it unchanged
	 * and declares its line encoding, PROTOCOL-RULES Q3): */
	uint64_t raw;       /* input octets */
	uint64_t crlf, bare_lf, bare_cr; /* line endings of each kind */
} ms_enc;

void ms_enc_init(ms_enc *e, int dot_stuff);
/* Encode in[0..n); out (may be NULL to only count) needs MS_ENC_MAX_OUT(n).
 * Returns bytes written to out. */
size_t ms_enc_feed(ms_enc *e, const char *in, size_t n, char *out);
/* End the data: close the last line, then ".\r\n" if terminator is set.
 * out needs 8 bytes.  Returns bytes written. */
size_t ms_enc_finish(ms_enc *e, char *out, int terminator);

#endif
