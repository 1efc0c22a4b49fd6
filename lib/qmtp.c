/*
 * qmtp.c - the streaming QMTP client (see mailspool/qmtp.h).
 *
 * Shape: a list of packages, oldest first.  `cur` is the package whose bytes
 * are being produced (or the next to start); every package before it has
 * been queued whole; `unsent` is the first package whose last byte has not
 * yet left the socket.  Replies always answer the list head (the oldest
 * package without all its replies), so matching is by order alone (Q4).
 *
 * One loop (turn) queues output up to a high-water mark, runs one
 * ms_io_pump - which writes and reads in the same poll, so the server can
 * never block us by answering while we write (Q6) - and then hands every
 * complete reply netstring to on_reply.  Packages have their exact length
 * in their netstring prefix before a byte of data is read; the data is read
 * in chunks straight into the output buffer, so a message of any size
 * costs constant memory.
 *
 * Failure: the connection is closed (a package cut short is thrown away by
 * the server, Q8); recipients of packages whose last byte was written and
 * that got no reply are deferred with "may be delivered more than once"
 * (Q7, like R44 for SMTP); everything else is deferred as not sent.
 */
#include "mailspool/qmtp.h"

#include <errno.h>
#include <openssl/evp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mailspool/io.h"
#include "mailspool/netstring.h"
#include "mailspool/reply.h"

#define OUT_HIGH_WATER (256u * 1024)
#define BODY_CHUNK (64u * 1024)
#define HOST_MAX 255
#define PORT_MAX 15

typedef struct pkg {
	ms_message *m;
	size_t *idx;        /* recipients in this package (not final when submitted) */
	size_t n;
	size_t answered;    /* replies received */
	char enc;           /* '\015' or '\012' */
	int strip_cr;       /* MS_QMTP_ENC_TO_LF on CRLF data: CRs of CRLFs dropped */
	int held_cr;        /* a CR read, not yet known to end a CRLF */
	uint64_t octets;    /* data octets announced and sent */
	int started;        /* its bytes are being produced */
	uint64_t body_left; /* data octets still to read */
	uint64_t end_off;   /* output offset just past its last byte */
	int64_t sent_ms;    /* when its last byte was written; 0 = not yet */
	ms_buf env;         /* its sender and recipient netstrings, built at start */
	size_t env_sender;  /* octets of the sender netstring in env */
	ms_reader rd;
	EVP_MD_CTX *sha;
	struct pkg *next;
} pkg;

struct ms_qmtp {
	ms_qmtp_opts o;
	ms_io io;
	int have_io;
	char host[HOST_MAX + 1], port[PORT_MAX + 1]; /* "" when attached */
	char peer[46];        /* the address connected to (Happy Eyeballs' winner) */
	pkg *head, *tail;     /* packages not yet answered in full */
	pkg *cur;             /* being produced, or next to start */
	pkg *unsent;          /* first package not completely written */
	size_t live;          /* messages submitted and not yet reported */
	uint64_t seq;         /* packages started, for the transcript */
	int64_t conn_ms;      /* when this connection was opened */
	uint64_t conn_replies; /* replies on this connection */
	uint64_t conn_started; /* packages started on this connection */
	int cycling;          /* start nothing new: the session is due to close */
	int cycle_noted;
	int wrote;            /* bytes went out since the last round trip was counted */
	int64_t last_reply_ms;
	char *conv;           /* MS_QMTP_ENC_TO_LF: data read here, then copied without CRs */
	int broken;
	int enc_switched;     /* the server refused the CRLF encoding: to-lf from now on */
	int refused_last;     /* the last reply was that refusal (a close may follow) */
	ms_qmtp_replies mode; /* how the server answers; AUTO until known (Q12) */
	pkg *probe;           /* AUTO: the package with several recipients being listened to */
	int64_t probe_until;  /* after its first reply: when silence means per package */
	ms_error fatal;
	ms_qmtp_stats st;
};

/* ---- the pieces --------------------------------------------------------- */

/* Recipients a package carries: those without a final outcome. */
static int rcpt_wanted(const ms_rcpt *r)
{
	return r->state == MS_RCPT_PENDING || r->state == MS_RCPT_ACCEPTED;
}

char ms_qmtp_encoding_byte(const ms_message *m, ms_qmtp_encoding enc)
{
	switch (enc) {
	case MS_QMTP_ENC_CRLF: return '\015';
	case MS_QMTP_ENC_LF:
	case MS_QMTP_ENC_TO_LF: return '\012';
	case MS_QMTP_ENC_AUTO: break;
	}
	/* Q3: the byte declares the data's own line ends; nothing is
	 * rewritten.  Under "\015" the server turns each CRLF into LF and
	 * keeps a bare LF or CR as it is, so any CRLF in the data means
	 * "\015" reads it best - also when some lines end in a bare LF. */
	return m->stats.crlf > 0 ? '\015' : '\012';
}

/* TO_LF drops the CR of each CRLF (the scan counted them), so the data
 * announced is that much shorter; every other encoding sends it as it is. */
static int strips_cr(const ms_message *m, ms_qmtp_encoding enc)
{
	return enc == MS_QMTP_ENC_TO_LF && m->stats.crlf > 0;
}

static uint64_t data_octets(const ms_message *m, ms_qmtp_encoding enc)
{
	return m->stats.raw - (strips_cr(m, enc) ? m->stats.crlf : 0);
}

/* Copy in[0..n) to out without the CR of any CRLF; a CR at the end of in is
 * held (*held) until the next byte is known, and put out at the start of
 * the next call or, when `last`, at the end.  out needs room for n + 1. */
static size_t copy_to_lf(const char *in, size_t n, char *out, int *held, int last)
{
	size_t w = 0;
	for (size_t i = 0; i < n; i++) {
		char c = in[i];
		if (*held) {
			*held = 0;
			if (c != '\n')
				out[w++] = '\r';
		}
		if (c == '\r')
			*held = 1;
		else
			out[w++] = c;
	}
	if (last && *held) {
		*held = 0;
		out[w++] = '\r';
	}
	return w;
}

/* netstring(sender) netstring(netstring(rcpt)...), addresses unquoted as
 * qmail carries them (Q2); *sender_len is the first netstring's length. */
static ms_status append_envelope(ms_buf *out, const ms_message *m, const size_t *idx,
                                 size_t n, size_t *sender_len)
{
	char a[MS_ADDR_MAX + 1];
	ms_addr_unquote(m->sender, a);
	size_t before = ms_buf_avail(out);
	ms_status st = ms_ns_append(out, a, strlen(a));
	if (sender_len)
		*sender_len = ms_buf_avail(out) - before;
	ms_buf inner;
	ms_buf_init(&inner, 0);
	for (size_t i = 0; i < n && st == MS_OK; i++) {
		ms_addr_unquote(m->rcpts[idx[i]].addr, a);
		st = ms_ns_append(&inner, a, strlen(a));
	}
	if (st == MS_OK)
		st = ms_ns_append(out, ms_buf_ptr(&inner), ms_buf_avail(&inner));
	ms_buf_free(&inner);
	return st;
}

/* Indices of the recipients a package of m carries; *n may be 0. */
static size_t *wanted_rcpts(const ms_message *m, size_t *n)
{
	size_t *idx = malloc((m->nrcpts ? m->nrcpts : 1) * sizeof *idx);
	*n = 0;
	if (!idx)
		return NULL;
	for (size_t i = 0; i < m->nrcpts; i++)
		if (rcpt_wanted(&m->rcpts[i]))
			idx[(*n)++] = i;
	return idx;
}

uint64_t ms_qmtp_package_size(const ms_message *m, ms_qmtp_encoding enc)
{
	size_t n;
	size_t *idx = wanted_rcpts(m, &n);
	ms_buf env;
	ms_buf_init(&env, 0);
	uint64_t size = ms_ns_size(data_octets(m, enc) + 1);
	if (idx && append_envelope(&env, m, idx, n, NULL) == MS_OK)
		size += ms_buf_avail(&env);
	ms_buf_free(&env);
	free(idx);
	return size;
}

ms_status ms_qmtp_package(const ms_message *m, ms_qmtp_encoding enc, ms_buf *out,
                          ms_error *err)
{
	if (!m->scanned)
		return ms_error_set(err, MS_ERR_USAGE, "message not scanned");
	char pre[MS_NS_PREFIX_MAX + 1];
	size_t k = ms_ns_prefix(pre, data_octets(m, enc) + 1);
	pre[k++] = ms_qmtp_encoding_byte(m, enc);
	if (ms_buf_append(out, pre, k) != MS_OK)
		return ms_error_set(err, MS_ERR_NOMEM, "out of memory");
	ms_reader rd;
	ms_reader_init(&rd, m);
	char buf[4096], conv[4097];
	uint64_t left = m->stats.raw;
	int held = 0;
	while (left > 0) {
		ssize_t got = ms_reader_read(&rd, buf, left < sizeof buf ? (size_t)left : sizeof buf, err);
		if (got < 0)
			return MS_ERR_IO;
		if (got == 0)
			return ms_error_set(err, MS_ERR_IO, "message data shrank while being read");
		left -= (uint64_t)got;
		ms_status ast = strips_cr(m, enc)
		                    ? ms_buf_append(out, conv,
		                                    copy_to_lf(buf, (size_t)got, conv, &held, left == 0))
		                    : ms_buf_append(out, buf, (size_t)got);
		if (ast != MS_OK)
			return ms_error_set(err, MS_ERR_NOMEM, "out of memory");
	}
	size_t n;
	size_t *idx = wanted_rcpts(m, &n);
	ms_status st = idx && ms_buf_append(out, ",", 1) == MS_OK
	                   ? append_envelope(out, m, idx, n, NULL)
	                   : MS_ERR_NOMEM;
	free(idx);
	if (st != MS_OK)
		return ms_error_set(err, MS_ERR_NOMEM, "out of memory");
	return MS_OK;
}

/* An enhanced status code as qmail writes it, "(#5.1.1)", anywhere in t. */
static int hcmssc(const char *t, char out[MS_ENH_MAX])
{
	for (const char *p = strstr(t, "(#"); p; p = strstr(p + 2, "(#")) {
		const char *close = strchr(p + 2, ')');
		char code[MS_ENH_MAX];
		size_t len = close ? (size_t)(close - (p + 2)) : 0;
		if (len == 0 || len >= sizeof code)
			continue;
		memcpy(code, p + 2, len);
		code[len] = '\0';
		if (ms_enh_parse(code, out) == len)
			return 1;
	}
	return 0;
}

ms_status ms_qmtp_parse_reply(const char *p, size_t n, ms_qmtp_reply *r, ms_error *err)
{
	memset(r, 0, sizeof *r);
	if (n == 0)
		return ms_error_set(err, MS_ERR_PROTOCOL, "empty QMTP reply");
	if (n > MS_QMTP_REPLY_MAX)
		return ms_error_set(err, MS_ERR_PROTOCOL, "QMTP reply over %d bytes", MS_QMTP_REPLY_MAX);
	switch (p[0]) {
	case 'K': r->state = MS_RCPT_DELIVERED; break;
	case 'Z': r->state = MS_RCPT_DEFERRED; break;
	case 'D': r->state = MS_RCPT_FAILED; break;
	default:
		return ms_error_set(err, MS_ERR_PROTOCOL,
		                    "QMTP reply status byte 0x%02x is not K, Z or D",
		                    (unsigned char)p[0]);
	}
	r->status = p[0];
	/* The text is "arbitrary bytes": control bytes (NUL, CR, LF, ...)
	 * become spaces so the text is safe in logs, bounces and JSON. */
	size_t k = 0;
	for (size_t i = 1; i < n; i++) {
		unsigned char c = (unsigned char)p[i];
		r->text[k++] = c < 0x20 || c == 0x7f ? ' ' : (char)c;
	}
	r->text[k] = '\0';
	char enh[MS_ENH_MAX];
	int found = hcmssc(r->text, enh) || ms_enh_parse(r->text, enh) > 0;
	/* A code whose class contradicts the status byte says nothing. */
	char want = r->status == 'K' ? '2' : r->status == 'Z' ? '4' : '5';
	if (found && enh[0] == want)
		memcpy(r->enh, enh, sizeof enh);
	return MS_OK;
}

/* ---- session helpers ---------------------------------------------------- */

static void note(ms_qmtp *q, ms_tx_kind k, const char *text)
{
	ms_transcript_add(q->o.transcript, k, text, strlen(text));
}

static void on_write(void *ctx, const char *p, size_t n)
{
	(void)p;
	ms_qmtp *q = ctx;
	ms_transcript_write(q->o.transcript, n);
}

static uint64_t out_offset(const ms_qmtp *q)
{
	return q->io.bytes_out + ms_io_pending(&q->io);
}

static void pkg_free(pkg *p)
{
	ms_buf_free(&p->env);
	if (p->sha)
		EVP_MD_CTX_free(p->sha);
	free(p->idx);
	free(p);
}

/* Take the head off the list (the caller owns it then). */
static pkg *unlink_head(ms_qmtp *q)
{
	pkg *p = q->head;
	q->head = p->next;
	if (!q->head)
		q->tail = NULL;
	if (q->cur == p)
		q->cur = p->next;
	if (q->unsent == p)
		q->unsent = p->next;
	p->next = NULL;
	return p;
}

static void pop_head(ms_qmtp *q)
{
	pkg_free(unlink_head(q));
}

/* Put p, not started, at the end of the list. */
static void append_pkg(ms_qmtp *q, pkg *p)
{
	if (q->tail)
		q->tail->next = p;
	else
		q->head = p;
	q->tail = p;
	if (!q->cur)
		q->cur = p;
	if (!q->unsent)
		q->unsent = p;
}

static void report(ms_qmtp *q, ms_message *m)
{
	m->done = 1;
	q->live--;
	q->st.messages++;
	if (q->o.on_result)
		q->o.on_result(q->o.ctx, m); /* may free m */
}

static void close_io(ms_qmtp *q)
{
	if (q->have_io) {
		ms_io_close(&q->io);
		q->have_io = 0;
	}
	/* Its packages go again or fail: a probe starts over on the next
	 * connection (the mode is still unknown). */
	q->probe = NULL;
	q->probe_until = 0;
}

/*
 * The session is lost: close (the server throws away a package cut short,
 * Q8) and defer every recipient still waiting.  Those of a package whose
 * last byte was written may have been delivered already (Q7).
 */
static void fail_all(ms_qmtp *q, ms_status status, const char *reason)
{
	char why[MS_ERROR_MSG_MAX];
	snprintf(why, sizeof why, "%s", reason); /* reason may be q->fatal.msg */
	if (!q->broken) {
		q->broken = 1;
		ms_error_set(&q->fatal, status, "%s", why);
		note(q, MS_TX_ERROR, why);
	}
	close_io(q);
	char unknown[MS_ERROR_MSG_MAX + 96];
	snprintf(unknown, sizeof unknown,
	         "%s after the whole message was sent: outcome unknown, the message may be "
	         "delivered more than once",
	         why);
	char unsent[MS_ERROR_MSG_MAX + 32];
	snprintf(unsent, sizeof unsent, "%s; message not sent", why);
	while (q->head) {
		pkg *p = q->head;
		const char *text = p->sent_ms ? unknown : unsent;
		for (size_t i = p->answered; i < p->n; i++) {
			ms_rcpt *r = &p->m->rcpts[p->idx[i]];
			r->state = MS_RCPT_DEFERRED;
			ms_outcome_set(&r->out, MS_STAGE_SESSION, 0, "4.4.2", text);
		}
		ms_outcome_set(&p->m->out, MS_STAGE_SESSION, 0, "4.4.2", text);
		ms_message *m = p->m;
		pop_head(q);
		report(q, m);
	}
	q->cur = q->unsent = NULL;
}

/* Make a connected socket this session's connection (closed on failure). */
static ms_status adopt_fd(ms_qmtp *q, int fd, ms_error *err)
{
	if (ms_io_init_fd(&q->io, fd, err) != MS_OK) {
		close(fd);
		return err ? err->status : MS_ERR_IO;
	}
	q->have_io = 1;
	q->io.read_chunk = q->o.read_chunk;
	q->io.on_write = on_write;
	q->io.on_write_ctx = q;
	q->conn_ms = ms_now_ms();
	q->conn_replies = q->conn_started = 0;
	q->cycling = q->cycle_noted = 0;
	q->st.connections++;
	return MS_OK;
}

/* Open the TCP connection to the remembered host. */
static ms_status open_conn(ms_qmtp *q, ms_error *err)
{
	int fd;
	ms_transcript_addf(q->o.transcript, MS_TX_NOTE, "connecting to %s port %s", q->host,
	                   q->port);
	ms_status st = ms_net_connect(q->host, q->port, &q->o.net, q->o.connect_timeout_ms, &fd,
	                              q->peer, err);
	return st == MS_OK ? adopt_fd(q, fd, err) : st;
}

/* Close this connection and open a new one; on failure the session breaks. */
static ms_status cycle(ms_qmtp *q, const char *why)
{
	note(q, MS_TX_NOTE, why);
	close_io(q);
	ms_error err;
	if (open_conn(q, &err) != MS_OK) {
		fail_all(q, err.status, err.msg);
		return err.status;
	}
	return MS_OK;
}

/* Encoding, CR stripping and length, under the session's encoding now. */
static void pkg_encode(ms_qmtp *q, pkg *p)
{
	p->enc = ms_qmtp_encoding_byte(p->m, q->o.encoding);
	p->strip_cr = strips_cr(p->m, q->o.encoding);
	p->octets = data_octets(p->m, q->o.encoding);
}

/* Back to "not started", to go again on a new connection in its place. */
static void pkg_reset(ms_qmtp *q, pkg *p)
{
	ms_buf_free(&p->env);
	if (p->sha)
		EVP_MD_CTX_free(p->sha);
	p->sha = NULL;
	p->started = 0;
	p->answered = 0;
	p->held_cr = 0;
	p->end_off = 0;
	p->sent_ms = 0;
	p->m->transactions--;
	pkg_encode(q, p);
}

/* Is this refusal about the CRLF encoding (mailfront 2.12: "Cannot handle
 * non-LF line terminator"), which the to-lf encoding cures? */
static int encoding_refused(const ms_qmtp *q, const pkg *p, const ms_qmtp_reply *r)
{
	if (r->state == MS_RCPT_DELIVERED || p->enc != '\015' || p->answered ||
	    q->o.encoding != MS_QMTP_ENC_AUTO || q->enc_switched)
		return 0;
	return strcasestr(r->text, "line terminator") || strcasestr(r->text, "non-LF") ||
	       strcasestr(r->text, "encoding");
}

/* ---- producing output --------------------------------------------------- */

static ms_status start_package(ms_qmtp *q, pkg *p)
{
	char pre[MS_NS_PREFIX_MAX + 1];
	size_t k = ms_ns_prefix(pre, p->octets + 1);
	pre[k++] = p->enc;
	p->started = 1;
	p->body_left = p->m->stats.raw;
	/* The envelope is built once: its length goes into end_off now, its
	 * bytes behind the data later. */
	ms_buf_init(&p->env, 0);
	if (append_envelope(&p->env, p->m, p->idx, p->n, &p->env_sender) != MS_OK)
		return ms_error_set(&q->fatal, MS_ERR_NOMEM, "out of memory");
	p->end_off = out_offset(q) + ms_ns_size(p->octets + 1) + ms_buf_avail(&p->env);
	ms_reader_init(&p->rd, p->m);
	q->seq++;
	q->conn_started++;
	p->m->engaged = 1; /* its bytes go out from here on */
	snprintf(p->m->tls, sizeof p->m->tls, "none"); /* QMTP has no TLS */
	p->m->transactions++;
	if (q->o.transcript && !ms_transcript_full_bodies(q->o.transcript)) {
		p->sha = EVP_MD_CTX_new();
		if (!p->sha || !EVP_DigestInit_ex(p->sha, EVP_sha256(), NULL))
			return ms_error_set(&q->fatal, MS_ERR_NOMEM, "cannot start SHA-256");
	} else if (q->o.transcript) {
		ms_transcript_add(q->o.transcript, MS_TX_SENT, pre, k);
	}
	if (ms_io_queue(&q->io, pre, k, &q->fatal) != MS_OK)
		return MS_ERR_NOMEM;
	return MS_OK;
}

static ms_status finish_package(ms_qmtp *q, pkg *p)
{
	if (q->o.transcript) {
		if (!ms_transcript_full_bodies(q->o.transcript)) {
			unsigned char md[EVP_MAX_MD_SIZE];
			unsigned mdlen = 0;
			char hex[2 * EVP_MAX_MD_SIZE + 1] = "";
			EVP_DigestFinal_ex(p->sha, md, &mdlen);
			for (unsigned i = 0; i < mdlen; i++)
				snprintf(hex + 2 * i, 3, "%02x", md[i]);
			/* The prefix as sent, then a summary of the encoding
			 * byte and the data in their place. */
			ms_transcript_addf(q->o.transcript, MS_TX_SENT,
			                   "%llu:[package %llu: encoding byte %s, message data %llu "
			                   "octets%s, sha256 %s],",
			                   (unsigned long long)p->octets + 1, (unsigned long long)q->seq,
			                   p->enc == '\015' ? "CR (CRLF lines)" : "LF (LF lines)",
			                   (unsigned long long)p->octets,
			                   p->strip_cr ? " (CRLF sent as LF)" : "", hex);
		} else {
			ms_transcript_add(q->o.transcript, MS_TX_SENT, ",", 1);
		}
		/* Sender and recipients, as the netstrings on the wire. */
		const char *e = ms_buf_ptr(&p->env);
		ms_transcript_add(q->o.transcript, MS_TX_SENT, e, p->env_sender);
		ms_transcript_add(q->o.transcript, MS_TX_SENT, e + p->env_sender,
		                  ms_buf_avail(&p->env) - p->env_sender);
	}
	/* "," closes the message netstring; the envelope follows. */
	ms_status st = ms_io_queue(&q->io, ",", 1, &q->fatal);
	if (st == MS_OK)
		st = ms_io_queue(&q->io, ms_buf_ptr(&p->env), ms_buf_avail(&p->env), &q->fatal);
	ms_buf_free(&p->env);
	if (st != MS_OK)
		return st;
	if (out_offset(q) != p->end_off)
		return ms_error_set(&q->fatal, MS_ERR_PROTOCOL,
		                    "internal error: package length differs from its prefix");
	q->cur = p->next;
	return MS_OK;
}

/* Read message data into the output until the high-water mark or its end. */
static ms_status produce_body(ms_qmtp *q, pkg *p)
{
	while (p->body_left > 0 && ms_io_pending(&q->io) < OUT_HIGH_WATER) {
		size_t want = p->body_left < BODY_CHUNK ? (size_t)p->body_left : BODY_CHUNK;
		if (ms_buf_reserve(&q->io.out, want + 1) != MS_OK)
			return ms_error_set(&q->fatal, MS_ERR_NOMEM, "out of memory");
		char *dst = ms_buf_tail(&q->io.out);
		if (p->strip_cr && !q->conv && !(q->conv = malloc(BODY_CHUNK)))
			return ms_error_set(&q->fatal, MS_ERR_NOMEM, "out of memory");
		char *src = p->strip_cr ? q->conv : dst;
		ssize_t n = ms_reader_read(&p->rd, src, want, &q->fatal);
		if (n < 0)
			return MS_ERR_IO;
		if (n == 0)
			/* The length was announced: the package cannot be ended
			 * honestly, so the connection must go (Q8). */
			return ms_error_set(&q->fatal, MS_ERR_IO,
			                    "message data shrank while being sent");
		p->body_left -= (uint64_t)n;
		size_t out = p->strip_cr ? copy_to_lf(src, (size_t)n, dst, &p->held_cr, p->body_left == 0)
		                         : (size_t)n;
		if (p->sha)
			EVP_DigestUpdate(p->sha, dst, out);
		else
			ms_transcript_add(q->o.transcript, MS_TX_SENT, dst, out);
		ms_buf_commit(&q->io.out, out);
	}
	return p->body_left == 0 ? finish_package(q, p) : MS_OK;
}

/* Queue everything that may be sent now. */
static ms_status fill_output(ms_qmtp *q)
{
	while (!q->broken && q->have_io && q->cur && ms_io_pending(&q->io) < OUT_HIGH_WATER) {
		pkg *p = q->cur;
		if (!p->started) {
			/* Q9: a session should take at most an hour.  Start
			 * nothing new; the connection is replaced once every
			 * package on it has its replies. */
			if (q->conn_started > 0 && ms_now_ms() - q->conn_ms >= q->o.max_session_ms) {
				if (q->host[0]) {
					q->cycling = 1;
					return MS_OK;
				}
				if (!q->cycle_noted) {
					q->cycle_noted = 1;
					note(q, MS_TX_NOTE,
					     "session is older than its limit but cannot be reconnected "
					     "(attached socket): continuing");
				}
			}
			/* Q12: nothing goes behind the probe until its replies
			 * have told how this server answers. */
			if (q->probe)
				return MS_OK;
			ms_status st = start_package(q, p);
			if (st != MS_OK)
				return st;
			if (q->mode == MS_QMTP_REPLIES_AUTO && p->n > 1) {
				q->probe = p;
				note(q, MS_TX_NOTE, "a package with several recipients goes alone: its "
				                    "replies tell whether the server answers per recipient or "
				                    "per package (Q12)");
			}
		}
		ms_status st = produce_body(q, p);
		if (st != MS_OK)
			return st;
	}
	return MS_OK;
}

/* Mark packages whose last byte has left the socket. */
static void mark_sent(ms_qmtp *q)
{
	while (q->unsent && q->unsent->started && q->unsent->end_off <= q->io.bytes_out) {
		q->unsent->sent_ms = ms_now_ms();
		q->st.packages++;
		q->unsent = q->unsent->next;
	}
}

/* ---- replies ------------------------------------------------------------ */

/* Q12: how the server answers is known now. */
static void learn_mode(ms_qmtp *q, ms_qmtp_replies mode)
{
	q->mode = mode;
	q->probe = NULL;
	q->probe_until = 0;
	note(q, MS_TX_NOTE, mode == MS_QMTP_PER_PACKAGE
	                        ? "no second reply: the server answers once per package (Q12)"
	                        : "a second reply: the server answers once per recipient (Q12)");
}

/* The probe's first reply was its only one: it holds for every recipient
 * of the package, as per-package servers mean it. */
static void end_probe(ms_qmtp *q)
{
	pkg *p = q->probe;
	learn_mode(q, MS_QMTP_PER_PACKAGE);
	const ms_rcpt *first = &p->m->rcpts[p->idx[0]];
	for (size_t i = 1; i < p->n; i++) {
		ms_rcpt *rc = &p->m->rcpts[p->idx[i]];
		rc->state = first->state;
		ms_outcome_set(&rc->out, first->out.stage, first->out.code, first->out.enh,
		               first->out.text ? first->out.text : "");
	}
	p->answered = p->n;
	ms_message *m = p->m;
	pop_head(q);
	report(q, m);
}

/* Apply one reply to the head package; returns 1 if the session broke. */
static int on_reply(ms_qmtp *q, const char *payload, size_t len)
{
	pkg *p = q->head;
	ms_qmtp_reply r;
	ms_error err;
	if (ms_qmtp_parse_reply(payload, len, &r, &err) != MS_OK) {
		fail_all(q, MS_ERR_PROTOCOL, err.msg);
		return 1;
	}
	q->st.replies++;
	q->conn_replies++;
	q->last_reply_ms = ms_now_ms();
	q->refused_last = 0;
	if (encoding_refused(q, p, &r)) {
		/* Q11: not the message's answer.  From now on CRLF data goes
		 * with the LF encoding (to-lf); this package goes again, at the
		 * end of the list, on this connection or the next. */
		q->enc_switched = q->refused_last = 1;
		q->o.encoding = MS_QMTP_ENC_TO_LF;
		ms_transcript_addf(q->o.transcript, MS_TX_NOTE,
		                   "the server refused the CRLF encoding (%.200s): sending with the LF "
		                   "encoding from now on",
		                   r.text);
		pkg *again = unlink_head(q);
		pkg_reset(q, again);
		append_pkg(q, again);
		q->st.resent++;
		return 0;
	}
	if (p == q->probe && p->answered == 1) {
		/* A second reply to the probe: the server answers per recipient. */
		learn_mode(q, MS_QMTP_PER_RECIPIENT);
	} else if (p == q->probe) {
		/* Its first reply: silence from here on would mean per package. */
		q->probe_until = ms_now_ms() + MS_QMTP_PROBE_MS;
	}
	size_t from = p->answered, to = p->answered + 1;
	if (q->mode == MS_QMTP_PER_PACKAGE) {
		from = 0;
		to = p->n;
	}
	for (size_t i = from; i < to; i++) {
		ms_rcpt *rc = &p->m->rcpts[p->idx[i]];
		rc->state = r.state;
		ms_outcome_set(&rc->out, MS_STAGE_PACKAGE, 0, r.enh, r.text);
	}
	ms_outcome_set(&p->m->out, MS_STAGE_PACKAGE, 0, r.enh, r.text);
	p->answered = to;
	if (p->answered == p->n) {
		ms_message *m = p->m;
		pop_head(q);
		report(q, m);
	}
	return 0;
}

/* Record unparsed input that is about to end the session (capped). */
static void note_input(ms_qmtp *q)
{
	size_t n = ms_buf_avail(&q->io.in);
	ms_transcript_add(q->o.transcript, MS_TX_RECV, ms_buf_ptr(&q->io.in), n < 512 ? n : 512);
}

/* Take every complete reply from the input; returns 1 if the session broke. */
static int read_replies(ms_qmtp *q)
{
	ms_buf *in = &q->io.in;
	while (ms_buf_avail(in) > 0) {
		pkg *p = q->head;
		if (!p || !p->started) {
			note_input(q);
			fail_all(q, MS_ERR_PROTOCOL,
			         "the server sent a reply with no package outstanding");
			return 1;
		}
		if (p->end_off > q->io.bytes_out) {
			/* Q5: a reply to a package we have not finished
			 * sending answers nothing we said. */
			note_input(q);
			fail_all(q, MS_ERR_PROTOCOL,
			         "the server replied before the whole package was sent");
			return 1;
		}
		const char *payload;
		size_t len, used;
		ms_error err;
		ms_ns_result r = ms_ns_parse(ms_buf_ptr(in), ms_buf_avail(in), MS_QMTP_REPLY_MAX,
		                             &payload, &len, &used, &err);
		if (r == MS_NS_MORE)
			return 0;
		if (r == MS_NS_BAD) {
			note_input(q);
			char why[MS_ERROR_MSG_MAX];
			snprintf(why, sizeof why, "malformed QMTP reply: %.400s", err.msg);
			fail_all(q, MS_ERR_PROTOCOL, why);
			return 1;
		}
		ms_transcript_add(q->o.transcript, MS_TX_RECV, ms_buf_ptr(in), used);
		int broke = on_reply(q, payload, len);
		if (!broke)
			ms_buf_consume(in, used);
		if (broke)
			return 1;
	}
	return 0;
}

/* ---- the loop ----------------------------------------------------------- */

typedef int (*until_fn)(const ms_qmtp *q);
static int until_window(const ms_qmtp *q) { return q->live <= q->o.window / 2; }
static int until_flushed(const ms_qmtp *q) { return q->live == 0; }
static int until_progress(const ms_qmtp *q) { (void)q; return 0; }

/* Are replies owed on this connection (a started package without them)? */
static int awaiting(const ms_qmtp *q)
{
	return q->head && q->head->started;
}

/*
 * One turn: queue output, move bytes (waiting at most until the next
 * deadline), apply the replies that came in.  *done is set when `until`
 * holds or nothing more can happen without the caller.
 */
static ms_status turn(ms_qmtp *q, until_fn until, int *done)
{
	char why[MS_ERROR_MSG_MAX];
	*done = 0;
	if (q->broken)
		return q->fatal.status;
	if (until(q)) {
		*done = 1;
		return MS_OK;
	}
	if (!q->have_io) {
		/* The server closed between packages (allowed, Q7) or a
		 * cycle is due: reconnect when there is something to send. */
		if (!q->cur) {
			*done = 1;
			return MS_OK;
		}
		if (!q->host[0]) {
			fail_all(q, MS_ERR_CLOSED, "connection closed and cannot be reopened");
			return MS_ERR_CLOSED;
		}
		if (cycle(q, "opening a new connection for the packages still to send") != MS_OK)
			return q->fatal.status;
	}
	if (fill_output(q) != MS_OK) {
		fail_all(q, q->fatal.status, q->fatal.msg);
		return q->fatal.status;
	}
	if (q->cycling && !awaiting(q) && ms_io_pending(&q->io) == 0) {
		snprintf(why, sizeof why, "session older than %.3f s: closing it and reconnecting (Q9)",
		         q->o.max_session_ms / 1000.0);
		return cycle(q, why);
	}
	int sending = ms_io_pending(&q->io) > 0;
	if (!sending && !awaiting(q)) {
		*done = 1; /* nothing to send or await */
		return MS_OK;
	}
	int64_t deadline = MS_NO_DEADLINE;
	if (awaiting(q) && q->head->sent_ms) {
		int64_t start = q->head->sent_ms > q->last_reply_ms ? q->head->sent_ms : q->last_reply_ms;
		deadline = start + q->o.reply_timeout_ms;
	}
	if (sending || (awaiting(q) && !q->head->sent_ms)) {
		int64_t wd = q->io.last_write_ms + q->o.write_timeout_ms;
		if (wd < deadline)
			deadline = wd;
	}
	if (q->probe_until && q->probe_until < deadline)
		deadline = q->probe_until;
	int nowait = until == until_progress;
	if (nowait)
		deadline = ms_now_ms();
	ms_error perr;
	uint64_t in0 = q->io.bytes_in, out0 = q->io.bytes_out, w0 = q->io.writes;
	int idle = !sending && !q->cur;
	ms_status st = ms_io_pump(&q->io, deadline, &perr);
	if (q->io.bytes_out != out0)
		q->wrote = 1;
	/* Counted per pump: a session's connections come and go. */
	q->st.bytes_in += q->io.bytes_in - in0;
	q->st.bytes_out += q->io.bytes_out - out0;
	q->st.writes += q->io.writes - w0;
	mark_sent(q);
	/* A round trip: we had nothing left to send and waited for replies
	 * to what we wrote since the last one (the SMTP engine's rule, with
	 * the wait made explicit: replies that stream in while we are still
	 * writing cost no time). */
	if (idle && q->wrote && q->io.bytes_in != in0) {
		q->wrote = 0;
		q->st.round_trips++;
	}
	if (q->probe && q->probe_until && ms_now_ms() >= q->probe_until &&
	    !ms_buf_avail(&q->io.in) && (st == MS_OK || st == MS_ERR_TIMEOUT)) {
		end_probe(q); /* its replies are in: what it took was answered */
		return MS_OK;
	}
	if (st == MS_ERR_TIMEOUT && nowait) {
		*done = 1;
		return MS_OK;
	}
	if (st == MS_ERR_TIMEOUT) {
		if (awaiting(q) && q->head->sent_ms)
			snprintf(why, sizeof why, "timed out after %d s waiting for a QMTP reply",
			         q->o.reply_timeout_ms / 1000);
		else
			snprintf(why, sizeof why, "timed out after %d s writing to the server",
			         q->o.write_timeout_ms / 1000);
		fail_all(q, MS_ERR_TIMEOUT, why);
		return MS_ERR_TIMEOUT;
	}
	if (st != MS_OK) {
		fail_all(q, st, perr.msg);
		return st;
	}
	if (read_replies(q))
		return q->fatal.status;
	if (q->io.eof) {
		if (!awaiting(q) && ms_io_pending(&q->io) == 0 && q->conn_replies > 0) {
			/* Between packages, after the server answered something:
			 * a legitimate close.  Reconnect only if more is to go. */
			note(q, MS_TX_NOTE, "connection closed by the server between packages");
			close_io(q);
			return MS_OK;
		}
		if (q->refused_last && awaiting(q) && !ms_buf_avail(&q->io.in) && q->host[0]) {
			/* Q11: it refused the encoding and hung up.  It answers in
			 * order, so what it did not answer it never took: those
			 * packages go again, on a new connection. */
			note(q, MS_TX_NOTE, "connection closed by the server after refusing the encoding: "
			                    "the unanswered packages go again on a new connection");
			for (pkg *x = q->head; x && x->started; x = x->next) {
				pkg_reset(q, x);
				q->st.resent++;
			}
			q->cur = q->unsent = q->head;
			q->refused_last = 0;
			close_io(q);
			return MS_OK;
		}
		if (ms_buf_avail(&q->io.in))
			snprintf(why, sizeof why, "connection closed by the server in the middle of a reply");
		else if (awaiting(q))
			snprintf(why, sizeof why,
			         "connection closed by the server before it replied to every recipient");
		else
			snprintf(why, sizeof why, "connection closed by the server");
		fail_all(q, MS_ERR_CLOSED, why);
		return MS_ERR_CLOSED;
	}
	return MS_OK;
}

/* Turn until `until` holds or the session breaks. */
static ms_status run(ms_qmtp *q, until_fn until)
{
	for (;;) {
		int done;
		ms_status st = turn(q, until, &done);
		if (st != MS_OK || done)
			return st;
	}
}

/* ---- public API --------------------------------------------------------- */

void ms_qmtp_opts_default(ms_qmtp_opts *o)
{
	memset(o, 0, sizeof *o);
	o->connect_timeout_ms = 30000;
	/* No QMTP figure exists; these are RFC 5321 4.5.3.2's for the final
	 * dot and for a data block, the closest SMTP equivalents. */
	o->reply_timeout_ms = 600000;
	o->write_timeout_ms = 180000;
	o->max_session_ms = 3600000;
	o->window = 1024;
}

ms_qmtp *ms_qmtp_new(const ms_qmtp_opts *o, ms_error *err)
{
	ms_qmtp *q = calloc(1, sizeof *q);
	if (!q) {
		ms_error_set(err, MS_ERR_NOMEM, "out of memory");
		return NULL;
	}
	q->o = *o;
	q->mode = o->replies;
	if (q->o.window < 2)
		q->o.window = 2;
	if (q->o.max_session_ms <= 0)
		q->o.max_session_ms = 3600000;
	q->io.fd = -1;
	return q;
}

void ms_qmtp_free(ms_qmtp *q)
{
	if (!q)
		return;
	while (q->head) {
		pkg *p = q->head;
		q->head = p->next;
		pkg_free(p);
	}
	close_io(q);
	free(q->conv);
	free(q);
}

ms_status ms_qmtp_attach(ms_qmtp *q, int fd, ms_error *err)
{
	if (q->have_io) {
		close(fd);
		return ms_error_set(err, MS_ERR_USAGE, "session already connected");
	}
	return adopt_fd(q, fd, err);
}

ms_status ms_qmtp_connect(ms_qmtp *q, const char *host, const char *port, ms_error *err)
{
	if (!port || !*port)
		port = MS_QMTP_PORT;
	if (strlen(host) > HOST_MAX || strlen(port) > PORT_MAX)
		return ms_error_set(err, MS_ERR_USAGE, "host or port name too long");
	if (q->have_io)
		return ms_error_set(err, MS_ERR_USAGE, "session already connected");
	snprintf(q->host, sizeof q->host, "%s", host);
	snprintf(q->port, sizeof q->port, "%s", port);
	ms_error cerr;
	ms_status st = open_conn(q, &cerr);
	if (st != MS_OK) {
		q->broken = 1;
		q->fatal = cerr;
		note(q, MS_TX_ERROR, cerr.msg);
		return ms_error_set(err, st, "%s", cerr.msg);
	}
	return MS_OK;
}

ms_status ms_qmtp_submit(ms_qmtp *q, ms_message *m, ms_error *err)
{
	if (m->nrcpts == 0)
		return ms_error_set(err, MS_ERR_USAGE, "message has no recipients");
	ms_error scan_err;
	ms_status scan = m->scanned ? MS_OK : ms_message_scan(m, &scan_err);
	q->live++;
	if (scan != MS_OK) {
		for (size_t i = 0; i < m->nrcpts; i++)
			if (rcpt_wanted(&m->rcpts[i])) {
				m->rcpts[i].state = MS_RCPT_DEFERRED;
				ms_outcome_set(&m->rcpts[i].out, MS_STAGE_LOCAL, 0, "4.3.0", scan_err.msg);
			}
		ms_outcome_set(&m->out, MS_STAGE_LOCAL, 0, "4.3.0", scan_err.msg);
		report(q, m);
		return ms_error_set(err, scan, "%s", scan_err.msg);
	}
	pkg *p = calloc(1, sizeof *p);
	if (!p || !(p->idx = wanted_rcpts(m, &p->n))) {
		free(p);
		q->live--;
		return ms_error_set(err, MS_ERR_NOMEM, "out of memory");
	}
	if (p->n == 0) {
		/* Every recipient is final already: nothing to send. */
		pkg_free(p);
		report(q, m);
		return MS_OK;
	}
	p->m = m;
	pkg_encode(q, p);
	append_pkg(q, p);
	if (q->broken || (!q->have_io && !q->host[0])) {
		fail_all(q, q->broken ? q->fatal.status : MS_ERR_CLOSED,
		         q->broken ? q->fatal.msg : "session is not connected");
		return ms_error_set(err, MS_ERR_CLOSED, "%s", q->fatal.msg);
	}
	ms_status st = q->live >= q->o.window ? run(q, until_window) : MS_OK;
	if (st != MS_OK)
		return ms_error_set(err, st, "%s", q->fatal.msg);
	return MS_OK;
}

ms_status ms_qmtp_progress(ms_qmtp *q, ms_error *err)
{
	for (int i = 0; i < 8 && !q->broken && q->have_io; i++) {
		uint64_t in = q->io.bytes_in, out = q->io.bytes_out;
		int done = 0;
		ms_status st = turn(q, until_progress, &done);
		if (st != MS_OK)
			return ms_error_set(err, st, "%s", q->fatal.msg);
		if (done || !q->have_io || (in == q->io.bytes_in && out == q->io.bytes_out))
			break;
	}
	return MS_OK;
}

ms_status ms_qmtp_flush(ms_qmtp *q, ms_error *err)
{
	if (q->broken) {
		fail_all(q, q->fatal.status, q->fatal.msg);
		return ms_error_set(err, q->fatal.status, "%s", q->fatal.msg);
	}
	ms_status st = run(q, until_flushed);
	if (st != MS_OK)
		return ms_error_set(err, st, "%s", q->fatal.msg);
	if (q->live) {
		/* Cannot happen; if it does, every message still gets its
		 * one result. */
		fail_all(q, MS_ERR_PROTOCOL, "internal error: session stalled");
		return ms_error_set(err, MS_ERR_PROTOCOL, "%s", q->fatal.msg);
	}
	return MS_OK;
}

ms_status ms_qmtp_send(ms_qmtp *q, ms_message *m, ms_error *err)
{
	ms_status st = ms_qmtp_submit(q, m, err);
	if (st != MS_OK)
		return st;
	return ms_qmtp_flush(q, err);
}

ms_status ms_qmtp_disconnect(ms_qmtp *q, ms_error *err)
{
	ms_status st = q->live ? ms_qmtp_flush(q, err) : MS_OK;
	close_io(q);
	return st;
}

ms_status ms_qmtp_reconnect(ms_qmtp *q, ms_error *err)
{
	if (!q->host[0])
		return ms_error_set(err, MS_ERR_USAGE, "session was attached, not connected: no host");
	ms_status st = ms_qmtp_disconnect(q, err);
	if (st != MS_OK)
		return st;
	q->broken = 0;
	ms_error cerr;
	if ((st = open_conn(q, &cerr)) != MS_OK) {
		q->broken = 1;
		q->fatal = cerr;
		return ms_error_set(err, st, "%s", cerr.msg);
	}
	return MS_OK;
}

const ms_qmtp_stats *ms_qmtp_get_stats(const ms_qmtp *q) { return &q->st; }

void ms_qmtp_set_result(ms_qmtp *q, ms_qmtp_result_fn fn, void *ctx)
{
	q->o.on_result = fn;
	q->o.ctx = ctx;
}

void ms_qmtp_set_transcript(ms_qmtp *q, ms_transcript *tx)
{
	q->o.transcript = tx;
}

int ms_qmtp_idle_fd(const ms_qmtp *q)
{
	return q->broken || !q->have_io || q->live || q->head || q->cycling ? -1 : q->io.fd;
}

int ms_qmtp_reusable(const ms_qmtp *q)
{
	int fd = ms_qmtp_idle_fd(q);
	if (fd < 0)
		return 0;
	struct pollfd pf = { .fd = fd, .events = POLLIN };
	return poll(&pf, 1, 0) == 0;
}

int ms_qmtp_failed(const ms_qmtp *q, ms_error *err)
{
	if (q->broken && err)
		*err = q->fatal;
	return q->broken;
}

const char *ms_qmtp_peer(const ms_qmtp *q)
{
	return q->peer;
}
