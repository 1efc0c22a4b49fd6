/*
 * smtp.c - the pipelining SMTP engine (see mailspool/smtp.h).
 *
 * Shape: a state machine over a FIFO of expected replies.  Producing output
 * (fill_output) and consuming replies (on_reply) are separate steps of one
 * loop (run) whose only blocking call is ms_io_pump, which always reads while
 * it writes.
 *
 *  - A transaction (txn) is one MAIL..dot exchange for a message and a subset
 *    of its recipients (at most max_rcpts; recipients refused with "too many
 *    recipients" go again in a following transaction, R11-R12).
 *  - With PIPELINING a txn's MAIL, RCPTs and DATA go as one group.  DATA must
 *    end a group (R19), so the next txn's envelope waits until the 354 (or the
 *    DATA failure) is in; then it is written right behind the body and the
 *    dot - the same write (R20).  One wait per message.
 *  - Without PIPELINING a command is written only when the FIFO is empty.
 *  - Every expectation records the output offset at which its command ends:
 *    a reply that arrives before that offset was written answers nothing we
 *    said, and is an error (H3) - except a 4xx/5xx while a body is being
 *    written, which is the server refusing the data early (R26).
 *
 * Outcome order per recipient (R45): MAIL reply if MAIL failed, else RCPT
 * reply if it failed, else DATA reply if it was not 3xx, else the dot reply.
 */
#include "mailspool/smtp.h"

#include <errno.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "mailspool/dsnreq.h"
#include "mailspool/io.h"
#include "mailspool/reply.h"
#include "mailspool/sasl.h"

#define OUT_HIGH_WATER (256u * 1024)
#define BODY_CHUNK (64u * 1024)
#define EHLO_NAME_MAX 255

typedef enum ex_kind { EX_GREETING, EX_EHLO, EX_HELO, EX_RSET, EX_MAIL, EX_RCPT, EX_DATA,
                       EX_DOT, EX_QUIT, EX_STARTTLS, EX_AUTH, EX_BDAT } ex_kind;

static const char *const ex_name[] = { "greeting", "EHLO", "HELO", "RSET", "MAIL FROM",
                                       "RCPT TO", "DATA", "end of data", "QUIT", "STARTTLS",
                                       "AUTH", "BDAT LAST" };

typedef enum txn_phase { TX_ENVELOPE, TX_BODY, TX_DOT } txn_phase;

typedef struct txn {
	ms_message *m;
	size_t *idx;       /* recipient indices of this transaction */
	size_t n;
	size_t sent;       /* lock-step: commands sent (1 = MAIL, 1+k = k RCPTs, n+2 = DATA) */
	size_t answered;   /* RCPT replies received */
	int mail_ok;       /* -1 unknown, 0 refused, 1 accepted */
	size_t accepted;   /* RCPTs accepted */
	int dot_only;      /* 354 without an accepted recipient: send "." alone (R22) */
	int bdat;          /* the data goes as one "BDAT n LAST" chunk (RFC 3030) */
	int rode;          /* written behind another message's data before its reply (P1) */
	int rset_refused;  /* the RSET in front of it got 5xx */
	int voided;        /* refused as a session problem: its recipients go again (P3) */
	uint64_t chunk;    /* BDAT: the octets declared */
	uint64_t emitted;  /* data octets queued: what the summary counts and hashes */
	txn_phase phase;
	ms_reader rd;
	ms_enc enc;
	EVP_MD_CTX *sha;
	struct txn *next;
} txn;

typedef struct expect {
	ex_kind kind;
	txn *t;
	size_t ri;         /* index into t->idx for EX_RCPT */
	int64_t queued_ms;
	uint64_t end_off;  /* output offset just past this command */
	int probe;         /* the first reply of a txn that rode: a short deadline (P4) */
} expect;

typedef enum sess_state { S_NEW, S_GREETING, S_EHLO, S_STARTTLS, S_AUTH, S_READY,
                          S_CLOSED } sess_state;

struct ms_smtp {
	ms_smtp_opts o;
	char helo[EHLO_NAME_MAX + 1];
	ms_io io;
	int have_io;
	sess_state state;
	ms_smtp_caps caps;
	int pipelining;     /* decided after EHLO */
	char *greeting;
	ms_reply_reader rr;
	/* FIFO of expected replies (ring). */
	expect *fifo;
	size_t fhead, flen, fcap;
	/* Submitted messages not yet reported, in order (NULL = reported). */
	ms_message **msgs;
	size_t mhead, mlen, mcap;
	size_t live;
	txn *txns;          /* in flight, oldest first */
	txn *envelope;      /* the txn whose envelope is being sent/answered */
	txn *body;          /* the txn whose body is being produced */
	int need_rset;
	int closing, quit_queued, quit_done;
	int wrote;          /* bytes went out since the last round trip was counted */
	int settled;        /* a transaction ended: some message may be final */
	int64_t last_reply_ms;
	/* Shapes (P-rules): decided after EHLO from the caps and the quirks. */
	int bdat;           /* CHUNKING and PIPELINING: messages go with BDAT */
	int cross;          /* the next envelope may ride behind data */
	unsigned quirks;    /* MS_QUIRK_*: known before, and learnt */
	unsigned conn_learnt; /* learnt on this connection */
	const char *shape;
	size_t bdat_inflight;    /* BDAT messages whose last reply is outstanding */
	uint64_t bdat_bytes;     /* their octets */
	uint64_t bdat_replies;   /* BDAT replies on this connection */
	int bdat_refill;         /* the window is being filled again */
	/* This connection's counts, for the session limits (P6). */
	size_t conn_txns, conn_failed, conn_done;
	int ending;         /* start nothing more here: the rest goes on a new connection */
	int need_restart;   /* the connection was abandoned (abandon): reconnect */
	int refused_last;   /* the last reply refused a command behind data (P3) */
	char restart_why[MS_ERROR_MSG_MAX];
	int restarts_left;
	char host[256], port[32]; /* set by ms_smtp_connect: the engine may reconnect */
	char peer_addr[46];       /* the address connected to (Happy Eyeballs' winner) */
	char *chunk;
	int broken;
	ms_error fatal;
	ms_smtp_stats st;
	/* TLS and AUTH */
	char peer[256];         /* the host connected to: the name TLS checks by default */
	int tls_active;
	int tls_skip;           /* policy may, after a refused or failed STARTTLS */
	int tls_handshake_failed;
	ms_tls_info tls;
	ms_sasl *sasl;
	int authenticated;
	char auth_cancel[MS_ERROR_MSG_MAX]; /* why we answered a challenge with "*" */
};

/* ---- small helpers ---------------------------------------------------- */

static int timeout_for(const ms_smtp *s, ex_kind k)
{
	const ms_smtp_timeouts *t = &s->o.timeouts;
	switch (k) {
	case EX_GREETING: return t->greeting;
	case EX_EHLO: case EX_HELO: return t->ehlo;
	case EX_RSET: return t->rset;
	case EX_MAIL: return t->mail;
	case EX_RCPT: return t->rcpt;
	case EX_DATA: return t->data;
	case EX_DOT: case EX_BDAT: return t->dot;
	case EX_QUIT: return t->quit;
	case EX_STARTTLS: case EX_AUTH: return t->ehlo;
	}
	return t->mail;
}

static void note(ms_smtp *s, ms_tx_kind k, const char *text)
{
	ms_transcript_add(s->o.transcript, k, text, strlen(text));
}

static void on_write(void *ctx, const char *p, size_t n)
{
	(void)p;
	ms_smtp *s = ctx;
	ms_transcript_write(s->o.transcript, n);
}

static uint64_t out_offset(const ms_smtp *s)
{
	return s->io.bytes_out + ms_io_pending(&s->io);
}

static ms_status push_expect(ms_smtp *s, ex_kind kind, txn *t, size_t ri)
{
	if (s->flen == s->fcap) {
		size_t ncap = s->fcap ? s->fcap * 2 : 64;
		expect *p = malloc(ncap * sizeof *p);
		if (!p)
			return ms_error_set(&s->fatal, MS_ERR_NOMEM, "out of memory");
		for (size_t i = 0; i < s->flen; i++)
			p[i] = s->fifo[(s->fhead + i) % s->fcap];
		free(s->fifo);
		s->fifo = p;
		s->fhead = 0;
		s->fcap = ncap;
	}
	expect *e = &s->fifo[(s->fhead + s->flen) % s->fcap];
	e->kind = kind;
	e->t = t;
	e->ri = ri;
	e->queued_ms = ms_now_ms();
	e->end_off = out_offset(s);
	e->probe = 0;
	s->flen++;
	return MS_OK;
}

/* The expectation pushed last. */
static expect *tail(ms_smtp *s)
{
	return &s->fifo[(s->fhead + s->flen - 1) % s->fcap];
}

static expect *head(ms_smtp *s)
{
	return s->flen ? &s->fifo[s->fhead] : NULL;
}

static void pop(ms_smtp *s)
{
	s->fhead = (s->fhead + 1) % s->fcap;
	s->flen--;
}

/* Queue one command line (CRLF added) and record it in the transcript. */
static ms_status send_line(ms_smtp *s, const char *line)
{
	size_t n = strlen(line);
	ms_transcript_add(s->o.transcript, MS_TX_SENT, line, n);
	if (ms_io_queue(&s->io, line, n, &s->fatal) != MS_OK ||
	    ms_io_queue(&s->io, "\r\n", 2, &s->fatal) != MS_OK)
		return MS_ERR_NOMEM;
	return MS_OK;
}

static int is_final(ms_rcpt_state st)
{
	return st == MS_RCPT_DELIVERED || st == MS_RCPT_DEFERRED || st == MS_RCPT_FAILED;
}

/* Record a reply (or our own text) as a recipient's outcome. */
static void rcpt_set(ms_rcpt *r, ms_rcpt_state st, ms_stage stage, int code, const char *enh,
                     const char *text)
{
	r->state = st;
	ms_outcome_set(&r->out, stage, code, enh, text);
}

static ms_rcpt_state state_for(int code)
{
	return ms_reply_class(code) == 5 ? MS_RCPT_FAILED : MS_RCPT_DEFERRED;
}

/* ---- message completion ---------------------------------------------- */

/* Report every message whose recipients are all final, in order.  Only
 * the end of a transaction (or of the session) can make one final, so
 * nothing is scanned otherwise. */
static void report_done(ms_smtp *s)
{
	if (!s->settled)
		return;
	s->settled = 0;
	for (size_t i = 0; i < s->mlen; i++) {
		ms_message *m = s->msgs[(s->mhead + i) % s->mcap];
		if (!m || m->done)
			continue;
		int final = 1;
		for (size_t k = 0; k < m->nrcpts && final; k++)
			final = is_final(m->rcpts[k].state) && !m->rcpts[k].busy;
		if (!final)
			continue;
		m->done = 1;
		s->msgs[(s->mhead + i) % s->mcap] = NULL;
		s->live--;
		s->st.messages++;
		if (s->o.on_result)
			s->o.on_result(s->o.ctx, m); /* may free m */
	}
	while (s->mlen && !s->msgs[s->mhead]) {
		s->mhead = (s->mhead + 1) % s->mcap;
		s->mlen--;
	}
}

static void txn_free(txn *t)
{
	if (t->sha)
		EVP_MD_CTX_free(t->sha);
	free(t->idx);
	free(t);
}

/* A transaction is over: settle its recipients and unlink it. */
static void txn_end(ms_smtp *s, txn *t)
{
	s->settled = 1;
	size_t delivered = 0;
	for (size_t i = 0; i < t->n; i++) {
		ms_rcpt *r = &t->m->rcpts[t->idx[i]];
		r->busy = 0;
		delivered += r->state == MS_RCPT_DELIVERED;
		if (t->voided && !(is_final(r->state) && !r->retry)) {
			/* P3: the server refused the transaction as a session
			 * problem (or the session was given up before it could
			 * matter): not an answer about this recipient. */
			r->retry = 0;
			r->state = MS_RCPT_PENDING;
			ms_outcome_free(&r->out);
		} else if (r->retry) {
			/* Refused as "too many" and not released for another
			 * transaction: it stays deferred with that reply. */
			r->retry = 0;
			r->state = MS_RCPT_DEFERRED;
		} else if (r->state == MS_RCPT_ACCEPTED || r->state == MS_RCPT_PENDING) {
			/* Cannot happen after a complete exchange; be safe. */
			rcpt_set(r, MS_RCPT_DEFERRED, MS_STAGE_SESSION, 0, "4.0.0",
			         "transaction ended without a result for this recipient");
		}
	}
	if (t->voided) {
		s->st.resent++;
	} else if (delivered) {
		s->conn_done++;
	} else if (++s->conn_failed >= s->o.session_failures && !s->ending) {
		/* P6: servers count failed transactions per connection (Exim's
		 * non-mail limit, Postfix's error tarpit); a fresh connection
		 * resets them, before they refuse good mail. */
		s->ending = 1;
		ms_transcript_addf(s->o.transcript, MS_TX_NOTE,
		                   "%zu failed transactions on this connection: the rest goes on a "
		                   "new one",
		                   s->conn_failed);
	}
	if (t->bdat) {
		s->bdat_inflight--;
		s->bdat_bytes -= t->chunk;
	}
	txn **pp = &s->txns;
	while (*pp && *pp != t)
		pp = &(*pp)->next;
	if (*pp)
		*pp = t->next;
	if (s->envelope == t)
		s->envelope = NULL;
	if (s->body == t)
		s->body = NULL;
	txn_free(t);
}

static void learn(ms_smtp *s, unsigned quirk, const char *why);

/* R44: what follows `why` when the data went out whole and no answer came. */
static void unknown_text(const char *why, char *out, size_t n)
{
	snprintf(out, n,
	         "%s after the message data was sent: outcome unknown, the message may be "
	         "delivered more than once",
	         why);
}

/* Defer every recipient of t without a final answer (R46 keeps those that
 * have one); the message's own outcome too, when it has none yet or
 * `always`. */
static void defer_open(txn *t, ms_stage stage, int code, const char *enh, const char *text,
                       int always)
{
	for (size_t i = 0; i < t->n; i++) {
		ms_rcpt *r = &t->m->rcpts[t->idx[i]];
		if (is_final(r->state) && !r->retry)
			continue;
		r->retry = 0;
		rcpt_set(r, MS_RCPT_DEFERRED, stage, code, enh, text);
	}
	if (!t->m->out.text || always)
		ms_outcome_set(&t->m->out, stage, code, enh, text);
}

/*
 * The session is lost: every recipient not yet final is deferred with `why`
 * (R9: "as if a 451 had been received"), except those that already have a
 * permanent answer (R46).  After the dot, the outcome is unknown (R44).
 * `code`/`enh` are the server's reply that ended the session (421), if any.
 */
static void fail_with(ms_smtp *s, ms_status status, const char *reason, int code,
                      const char *enh)
{
	char why[MS_ERROR_MSG_MAX];
	snprintf(why, sizeof why, "%s", reason); /* reason may be s->fatal.msg */
	if (!s->broken) {
		s->broken = 1;
		ms_error_set(&s->fatal, status, "%s", why);
		note(s, MS_TX_ERROR, why);
		/* P5: replies out of step with a BDAT stream may be a server
		 * that cannot take BDAT pipelined: next time, one at a time. */
		if (status == MS_ERR_PROTOCOL && s->bdat_inflight >= 2)
			learn(s, MS_QUIRK_BDAT_SERIAL, "a synchronisation error in a BDAT stream");
	}
	ms_buf_reset(&s->io.out);
	char unknown[MS_ERROR_MSG_MAX + 96];
	unknown_text(why, unknown, sizeof unknown);
	while (s->txns) {
		txn *t = s->txns;
		int after_dot = t->phase == TX_DOT && !t->dot_only;
		defer_open(t, after_dot ? MS_STAGE_DOT : MS_STAGE_SESSION, code, enh,
		           after_dot ? unknown : why, after_dot);
		txn_end(s, t);
	}
	s->flen = 0;
	s->settled = 1;
	for (size_t i = 0; i < s->mlen; i++) {
		ms_message *m = s->msgs[(s->mhead + i) % s->mcap];
		if (!m)
			continue;
		for (size_t k = 0; k < m->nrcpts; k++) {
			ms_rcpt *r = &m->rcpts[k];
			if (!is_final(r->state) || r->busy) {
				r->busy = r->retry = 0;
				rcpt_set(r, MS_RCPT_DEFERRED, MS_STAGE_SESSION, code, enh, why);
			}
		}
		if (!m->out.text)
			ms_outcome_set(&m->out, MS_STAGE_SESSION, code, enh, why);
	}
	report_done(s);
}

/*
 * P5: give up this connection but not its messages.  What may have reached
 * the server whole (data ended: the dot, or a complete BDAT chunk) is
 * "outcome unknown" as in fail_with; every other recipient without a
 * server's final answer goes back to pending, for a new connection that
 * the next turn opens (maybe_restart).  in_order: the server answered in
 * order up to a refusal and then closed (421, or 5xx to a command behind
 * data followed by EOF): what it never answered it never processed, so
 * nothing is unknown.
 */
static void abandon(ms_smtp *s, const char *reason, int in_order)
{
	char why[MS_ERROR_MSG_MAX];
	snprintf(why, sizeof why, "%s", reason);
	note(s, MS_TX_NOTE, why);
	char unknown[MS_ERROR_MSG_MAX + 96];
	unknown_text(why, unknown, sizeof unknown);
	while (s->txns) {
		txn *t = s->txns;
		if (t->phase == TX_DOT && !t->dot_only && !t->voided && !in_order)
			defer_open(t, MS_STAGE_DOT, 0, "4.4.2", unknown, 1);
		else
			t->voided = 1;
		txn_end(s, t);
	}
	s->flen = 0;
	ms_buf_reset(&s->io.out);
	s->need_restart = 1;
	snprintf(s->restart_why, sizeof s->restart_why, "%s", why);
	report_done(s);
}

/* The session is lost without a server reply to blame (4.4.2: bad connection). */
static void fail_all(ms_smtp *s, ms_status status, const char *why)
{
	fail_with(s, status, why, 0, "4.4.2");
}

/* ---- producing output ------------------------------------------------- */

/* Does any envelope address need SMTPUTF8 (RFC 6531)? */
static int needs_smtputf8(const ms_message *m)
{
	if (m->sender_flags & MS_ADDR_UTF8)
		return 1;
	for (size_t i = 0; i < m->nrcpts; i++)
		if (m->rcpts[i].flags & MS_ADDR_UTF8)
			return 1;
	return 0;
}

/* Refuse a message before sending it when this server cannot take it. */
static int local_refusal(ms_smtp *s, ms_message *m)
{
	const char *enh = NULL;
	char why[256];
	if (m->stats.has_nul) {
		enh = "5.6.0";
		snprintf(why, sizeof why, "message contains NUL octets, which SMTP DATA cannot carry");
	} else if (m->stats.max_line > MS_SMTP_LINE_MAX && !s->o.allow_long_lines) {
		enh = "5.6.0";
		snprintf(why, sizeof why,
		         "message has a line of %zu octets; SMTP allows %d (RFC 5321 4.5.3.1.6)",
		         m->stats.max_line, MS_SMTP_LINE_MAX);
	} else if (m->stats.has_8bit && !(s->caps.flags & MS_CAP_8BITMIME)) {
		enh = "5.6.3";
		snprintf(why, sizeof why,
		         "message has 8-bit data and the server does not offer 8BITMIME (RFC 6152)");
	} else if (needs_smtputf8(m) && !(s->caps.flags & MS_CAP_SMTPUTF8)) {
		enh = "5.6.7";
		snprintf(why, sizeof why,
		         "a non-ASCII address needs SMTPUTF8, which the server does not offer");
	} else if ((s->caps.flags & MS_CAP_SIZE) && s->caps.size_limit &&
	           m->stats.size > s->caps.size_limit) {
		enh = "5.3.4";
		snprintf(why, sizeof why,
		         "message size %llu exceeds the server's fixed maximum of %llu (RFC 1870)",
		         (unsigned long long)m->stats.size, (unsigned long long)s->caps.size_limit);
	}
	if (!enh)
		return 0;
	for (size_t i = 0; i < m->nrcpts; i++)
		if (!is_final(m->rcpts[i].state))
			rcpt_set(&m->rcpts[i], MS_RCPT_FAILED, MS_STAGE_LOCAL, 0, enh, why);
	ms_outcome_set(&m->out, MS_STAGE_LOCAL, 0, enh, why);
	ms_transcript_addf(s->o.transcript, MS_TX_NOTE, "message not sent: %s", why);
	s->settled = 1;
	return 1;
}

/* Pick the recipients of the next transaction, or NULL when none is ready. */
static txn *next_txn(ms_smtp *s)
{
	for (size_t i = 0; i < s->mlen; i++) {
		ms_message *m = s->msgs[(s->mhead + i) % s->mcap];
		if (!m || m->done)
			continue;
		size_t avail = 0;
		for (size_t k = 0; k < m->nrcpts; k++)
			avail += m->rcpts[k].state == MS_RCPT_PENDING && !m->rcpts[k].busy;
		if (!avail)
			continue;
		if (m->transactions == 0 && local_refusal(s, m)) {
			report_done(s);
			i = (size_t)-1; /* the list may have shifted: start over */
			continue;
		}
		/* P3: refused once behind another message's data: this one goes
		 * when nothing else is outstanding. */
		if (m->solo && s->flen > 0)
			return NULL;
		txn *t = calloc(1, sizeof *t);
		size_t cap = avail < s->o.max_rcpts ? avail : s->o.max_rcpts;
		if (!t || !(t->idx = malloc(cap * sizeof *t->idx))) {
			free(t);
			ms_error_set(&s->fatal, MS_ERR_NOMEM, "out of memory");
			return NULL;
		}
		for (size_t k = 0; k < m->nrcpts && t->n < cap; k++) {
			ms_rcpt *r = &m->rcpts[k];
			if (r->state == MS_RCPT_PENDING && !r->busy) {
				r->busy = 1;
				t->idx[t->n++] = k;
			}
		}
		t->m = m;
		t->mail_ok = -1;
		t->rode = s->txns != NULL;
		m->transactions++;
		txn **pp = &s->txns;
		while (*pp)
			pp = &(*pp)->next;
		*pp = t;
		return t;
	}
	return NULL;
}

/* Queue a command built in b (its own buffer, freed here). */
static ms_status send_buf(ms_smtp *s, ms_buf *b)
{
	ms_status st = ms_buf_append(b, "", 1) == MS_OK ? send_line(s, ms_buf_ptr(b)) : MS_ERR_NOMEM;
	ms_buf_free(b);
	return st == MS_OK ? MS_OK : ms_error_set(&s->fatal, MS_ERR_NOMEM, "out of memory");
}

static ms_status send_mail(ms_smtp *s, txn *t)
{
	ms_message *m = t->m;
	ms_buf b;
	ms_buf_init(&b, 0);
	ms_buf_printf(&b, "MAIL FROM:<%s>", m->sender);
	if (s->caps.flags & MS_CAP_SIZE)
		ms_buf_printf(&b, " SIZE=%llu", (unsigned long long)m->stats.size);
	if (m->stats.has_8bit && (s->caps.flags & MS_CAP_8BITMIME))
		ms_buf_appendstr(&b, " BODY=8BITMIME");
	if (needs_smtputf8(m))
		ms_buf_appendstr(&b, " SMTPUTF8");
	/* R48 (RFC 3461 4.3-4.4): only to a server that offers DSN. */
	if ((s->caps.flags & MS_CAP_DSN) && ms_dsn_ret_name(m->dsn_ret))
		ms_buf_printf(&b, " RET=%s", ms_dsn_ret_name(m->dsn_ret));
	if ((s->caps.flags & MS_CAP_DSN) && m->dsn_envid) {
		ms_buf_appendstr(&b, " ENVID=");
		ms_xtext_append(&b, m->dsn_envid);
	}
	s->st.transactions++;
	if (send_buf(s, &b) != MS_OK)
		return MS_ERR_NOMEM;
	return push_expect(s, EX_MAIL, t, 0);
}

static ms_status send_rcpt(ms_smtp *s, txn *t, size_t ri)
{
	const ms_rcpt *r = &t->m->rcpts[t->idx[ri]];
	ms_buf b;
	ms_buf_init(&b, 0);
	ms_buf_printf(&b, "RCPT TO:<%s>", r->addr);
	if ((s->caps.flags & MS_CAP_DSN) && r->notify) {
		char list[40];
		ms_dsn_notify_format(r->notify, list, sizeof list);
		ms_buf_printf(&b, " NOTIFY=%s", list);
	}
	if ((s->caps.flags & MS_CAP_DSN) && r->orcpt) {
		/* RFC 3461 4.2: the type as is, the address as xtext. */
		const char *semi = strchr(r->orcpt, ';');
		ms_buf_printf(&b, " ORCPT=%.*s;", (int)(semi - r->orcpt), r->orcpt);
		ms_xtext_append(&b, semi + 1);
	}
	if (send_buf(s, &b) != MS_OK)
		return MS_ERR_NOMEM;
	return push_expect(s, EX_RCPT, t, ri);
}

static ms_status send_data(ms_smtp *s, txn *t)
{
	if (send_line(s, "DATA") != MS_OK)
		return MS_ERR_NOMEM;
	return push_expect(s, EX_DATA, t, 0);
}

/* Does this message go with BDAT on this session (P2)? */
static int use_bdat(const ms_smtp *s, const ms_message *m)
{
	if (!s->bdat)
		return 0;
	/* Without SIZE= the server learns the size only from the chunk; a
	 * server that refuses a chunk too large for it may read the rest as
	 * commands (Exim), so big messages without SIZE go with DATA. */
	if (!(s->caps.flags & MS_CAP_SIZE) && m->stats.size > s->o.bdat_unsized_max)
		return 0;
	return 1;
}

static const char *shape_of(const ms_smtp *s, const txn *t)
{
	if (!s->pipelining)
		return "lock-step";
	if (t->bdat)
		return s->cross && !(s->quirks & MS_QUIRK_BDAT_SERIAL) && s->o.bdat_messages > 1
		           ? "bdat-stream"
		           : "bdat";
	return s->cross ? "data-cross" : "data";
}

static ms_status begin_body(ms_smtp *s, txn *t);

static ms_status start_txn(ms_smtp *s, txn *t)
{
	ms_status st = MS_OK;
	t->bdat = use_bdat(s, t->m);
	s->shape = shape_of(s, t);
	if (t->bdat) {
		t->chunk = t->m->stats.size;
		s->bdat_inflight++;
		s->bdat_bytes += t->chunk;
		s->st.bdat++;
	}
	s->conn_txns++;
	if (s->conn_txns == s->o.session_messages && !s->ending) {
		/* P6: servers cap messages per connection (Exim: 1,000). */
		s->ending = 1;
		ms_transcript_addf(s->o.transcript, MS_TX_NOTE,
		                   "%zu transactions on this connection: the rest goes on a new one",
		                   s->conn_txns);
	}
	/* R23 after a failed transaction; P1 whenever the previous
	 * transaction's end is not known yet (this MAIL rides behind its
	 * data): a server must never see MAIL inside an open transaction. */
	int rset = s->need_rset || (s->o.rset_first && t->rode);
	if (rset) {
		s->need_rset = 0;
		if ((st = send_line(s, "RSET")) != MS_OK || (st = push_expect(s, EX_RSET, t, 0)))
			return st;
		tail(s)->probe = t->rode;
	}
	s->envelope = t;
	if ((st = send_mail(s, t)) != MS_OK)
		return st;
	if (!rset)
		tail(s)->probe = t->rode;
	t->sent = 1;
	if (!s->pipelining)
		return MS_OK;
	for (size_t i = 0; i < t->n && st == MS_OK; i++)
		st = send_rcpt(s, t, i);
	t->sent = t->n + 2;
	if (st != MS_OK)
		return st;
	if (!t->bdat)
		return send_data(s, t);
	/* P2: no 354 to wait for; the chunk follows its command at once. */
	char line[64];
	snprintf(line, sizeof line, "BDAT %llu LAST", (unsigned long long)t->chunk);
	if ((st = send_line(s, line)) != MS_OK)
		return st;
	s->envelope = NULL;
	return begin_body(s, t);
}

/* Encode body bytes into the output until the high-water mark or the end. */
static ms_status produce_body(ms_smtp *s, txn *t)
{
	while (ms_io_pending(&s->io) < OUT_HIGH_WATER) {
		ms_error rerr;
		ssize_t n = ms_reader_read(&t->rd, s->chunk, BODY_CHUNK, &rerr);
		if (n < 0) {
			/* We cannot end the data cleanly: closing without the dot
			 * makes the server discard it. */
			fail_all(s, MS_ERR_IO, rerr.msg);
			return MS_ERR_IO;
		}
		ms_buf *out = &s->io.out;
		size_t room = n > 0 ? MS_ENC_MAX_OUT((size_t)n) : 8;
		if (ms_buf_reserve(out, room) != MS_OK)
			return ms_error_set(&s->fatal, MS_ERR_NOMEM, "out of memory");
		char *dst = ms_buf_tail(out);
		size_t w = n > 0 ? ms_enc_feed(&t->enc, s->chunk, (size_t)n, dst)
		                 : ms_enc_finish(&t->enc, dst, !t->bdat);
		/* The data proper: without the DATA terminator. */
		size_t data = n > 0 || t->bdat ? w : w - 3;
		if (t->bdat && (t->emitted + data > t->chunk || (n == 0 && t->emitted + data != t->chunk))) {
			/* P2: the file changed since it was measured.  Not one octet
			 * beyond the declared chunk may go out (the server would read
			 * it as commands), and a short chunk never ends: abort. */
			fail_all(s, MS_ERR_IO, "message data changed size while being sent with BDAT");
			return MS_ERR_IO;
		}
		t->emitted += data;
		if (t->sha)
			EVP_DigestUpdate(t->sha, dst, data);
		int full = ms_transcript_full_bodies(s->o.transcript);
		if (full && data)
			ms_transcript_add(s->o.transcript, MS_TX_SENT, dst, data);
		ms_buf_commit(out, w);
		if (n > 0)
			continue;
		/* End of data: summary line, then the dot. */
		if (s->o.transcript && !full) {
			unsigned char md[EVP_MAX_MD_SIZE];
			unsigned mdlen = 0;
			char hex[2 * EVP_MAX_MD_SIZE + 1];
			EVP_DigestFinal_ex(t->sha, md, &mdlen);
			for (unsigned i = 0; i < mdlen; i++)
				snprintf(hex + 2 * i, 3, "%02x", md[i]);
			/* The octets counted are the octets hashed: the wire form,
			 * dot-stuffed for DATA, without the terminator. */
			ms_transcript_addf(s->o.transcript, MS_TX_SENT,
			                   "[message data: %llu octets in %llu lines, sha256 %s]",
			                   (unsigned long long)t->emitted, (unsigned long long)t->enc.lines,
			                   hex);
		}
		if (!t->bdat)
			ms_transcript_add(s->o.transcript, MS_TX_SENT, ".", 1);
		t->phase = TX_DOT;
		s->body = NULL;
		return push_expect(s, t->bdat ? EX_BDAT : EX_DOT, t, 0);
	}
	return MS_OK;
}

static ms_status begin_body(ms_smtp *s, txn *t)
{
	t->phase = TX_BODY;
	ms_reader_init(&t->rd, t->m);
	ms_enc_init(&t->enc, !t->bdat);
	if (s->o.transcript && !ms_transcript_full_bodies(s->o.transcript)) {
		t->sha = EVP_MD_CTX_new();
		if (!t->sha || !EVP_DigestInit_ex(t->sha, EVP_sha256(), NULL))
			return ms_error_set(&s->fatal, MS_ERR_NOMEM, "cannot start SHA-256");
	}
	s->body = t;
	return MS_OK;
}

static int has_work(const ms_smtp *s);

/* Queue everything that may be sent now. */
static ms_status fill_output(ms_smtp *s)
{
	if (s->broken || s->state != S_READY)
		return MS_OK;
	while (ms_io_pending(&s->io) < OUT_HIGH_WATER) {
		ms_status st;
		if (s->body) {
			if ((st = produce_body(s, s->body)) != MS_OK)
				return st;
			continue;
		}
		if (s->envelope) {
			txn *t = s->envelope;
			/* Lock-step: next envelope command once the FIFO is empty. */
			if (s->pipelining || s->flen > 0 || t->mail_ok != 1)
				break;
			if (t->sent < t->n + 1) {
				st = send_rcpt(s, t, t->sent - 1);
				t->sent++;
			} else if (t->sent == t->n + 1) {
				st = send_data(s, t);
				t->sent++;
			} else {
				break;
			}
			if (st != MS_OK)
				return st;
			continue;
		}
		/* A new transaction may start: with pipelining once the previous
		 * DATA is answered (cross-message) or everything is (not). */
		if (!s->pipelining || !s->cross) {
			if (s->flen > 0)
				break;
		}
		if (s->quit_queued)
			break;
		/* P2: the BDAT window - messages and octets whose last reply
		 * is outstanding; one message always goes, however large. */
		size_t k = (s->quirks & MS_QUIRK_BDAT_SERIAL) || !s->cross ? 1 : s->o.bdat_messages;
		int full = s->bdat_inflight > 0 &&
		           (s->bdat_inflight >= k || s->bdat_bytes >= s->o.bdat_bytes);
		/* Refill in batches: once the window is full, wait until half
		 * of it is answered, then write that half in one go.  A window
		 * topped up one reply at a time costs a write (and, through a
		 * slow server, a round trip) per message. */
		if (full)
			s->bdat_refill = 0;
		else if (s->bdat_inflight <= k / 2)
			s->bdat_refill = 1;
		else if (!s->bdat_refill)
			full = 1;
		txn *t = full || s->ending || s->need_restart ? NULL : next_txn(s);
		if (s->fatal.status == MS_ERR_NOMEM)
			return MS_ERR_NOMEM;
		if (!t) {
			/* Nothing left to start; only replies are awaited. */
			if (s->closing && !s->quit_queued && (s->pipelining || s->flen == 0) &&
			    !has_work(s)) {
				/* R25: QUIT rides behind the last dot. */
				if ((st = send_line(s, "QUIT")) != MS_OK ||
				    (st = push_expect(s, EX_QUIT, NULL, 0)) != MS_OK)
					return st;
				s->quit_queued = 1;
			}
			break;
		}
		if ((st = start_txn(s, t)) != MS_OK)
			return st;
	}
	return MS_OK;
}

/* ---- consuming replies ------------------------------------------------ */

static void parse_ehlo(ms_smtp *s, const ms_reply *r)
{
	memset(&s->caps, 0, sizeof s->caps);
	s->caps.flags = MS_CAP_ESMTP;
	const char *p = r->text;
	size_t first = strcspn(p, " \n");
	snprintf(s->caps.server, sizeof s->caps.server, "%.*s", (int)first, p);
	while ((p = strchr(p, '\n')) != NULL) {
		p++;
		size_t len = strcspn(p, "\n");
		char kw[64];
		size_t kl = strcspn(p, " =\n");
		if (kl >= sizeof kw) {
			p += len;
			continue;
		}
		memcpy(kw, p, kl);
		kw[kl] = '\0';
		const char *arg = p + kl;
		if (*arg == ' ' || *arg == '=')
			arg++;
		else
			arg = "";
		size_t alen = (size_t)(p + len - arg);
		if (!strcasecmp(kw, "PIPELINING"))
			s->caps.flags |= MS_CAP_PIPELINING;
		else if (!strcasecmp(kw, "SIZE")) {
			s->caps.flags |= MS_CAP_SIZE;
			uint64_t v = 0;
			for (size_t i = 0; i < alen && arg[i] >= '0' && arg[i] <= '9'; i++)
				v = v > UINT64_MAX / 10 - 10 ? UINT64_MAX : v * 10 + (uint64_t)(arg[i] - '0');
			s->caps.size_limit = v;
		} else if (!strcasecmp(kw, "8BITMIME"))
			s->caps.flags |= MS_CAP_8BITMIME;
		else if (!strcasecmp(kw, "SMTPUTF8"))
			s->caps.flags |= MS_CAP_SMTPUTF8;
		else if (!strcasecmp(kw, "ENHANCEDSTATUSCODES"))
			s->caps.flags |= MS_CAP_ENHANCEDSTATUSCODES;
		else if (!strcasecmp(kw, "CHUNKING"))
			s->caps.flags |= MS_CAP_CHUNKING;
		else if (!strcasecmp(kw, "BINARYMIME"))
			s->caps.flags |= MS_CAP_BINARYMIME;
		else if (!strcasecmp(kw, "DSN"))
			s->caps.flags |= MS_CAP_DSN;
		else if (!strcasecmp(kw, "STARTTLS"))
			s->caps.flags |= MS_CAP_STARTTLS;
		else if (!strcasecmp(kw, "AUTH")) {
			s->caps.flags |= MS_CAP_AUTH;
			snprintf(s->caps.auth, sizeof s->caps.auth, "%.*s", (int)alen, arg);
		}
		p += len;
	}
}

static void session_ready(ms_smtp *s)
{
	s->state = S_READY;
	s->pipelining = (s->caps.flags & MS_CAP_PIPELINING) && s->o.pipelining == MS_PIPELINING_AUTO;
	if (!s->pipelining)
		note(s, MS_TX_NOTE, (s->caps.flags & MS_CAP_PIPELINING)
		                          ? "PIPELINING disabled by configuration: lock-step"
		                          : "server does not offer PIPELINING: lock-step");
	s->cross = s->pipelining && s->o.cross_message && !(s->quirks & MS_QUIRK_NO_CROSS);
	/* P2: BDAT needs both: without PIPELINING every BDAT would wait for
	 * its reply, which is DATA's round trip without DATA's safety. */
	s->bdat = s->pipelining && (s->caps.flags & MS_CAP_CHUNKING) &&
	          s->o.chunking == MS_CHUNKING_AUTO && !(s->quirks & MS_QUIRK_NO_BDAT);
	if ((s->caps.flags & MS_CAP_CHUNKING) && s->pipelining && !s->bdat)
		note(s, MS_TX_NOTE, s->o.chunking == MS_CHUNKING_OFF
		                          ? "CHUNKING disabled by configuration: DATA"
		                          : "CHUNKING not used with this server (BDAT streams broke "
		                            "before): DATA");
	if (s->pipelining && !s->cross && (s->quirks & MS_QUIRK_NO_CROSS))
		note(s, MS_TX_NOTE, "this server refused or lost commands written behind a message's "
		                    "data before: one message at a time");
	if (s->bdat && (s->quirks & MS_QUIRK_BDAT_SERIAL))
		note(s, MS_TX_NOTE, "a BDAT stream to this server broke before: one message in flight");
}

/* Remember what the server cannot take, for this session and later ones. */
static void learn(ms_smtp *s, unsigned quirk, const char *why)
{
	/* The second time - a stream broke although an earlier connection
	 * already went one message at a time - DATA. */
	if (quirk == MS_QUIRK_BDAT_SERIAL && (s->quirks & MS_QUIRK_BDAT_SERIAL) &&
	    !(s->conn_learnt & MS_QUIRK_BDAT_SERIAL))
		quirk = MS_QUIRK_NO_BDAT;
	if (s->quirks & quirk)
		return;
	s->quirks |= quirk;
	s->conn_learnt |= quirk;
	ms_transcript_addf(s->o.transcript, MS_TX_NOTE, "%s: %s from now on", why,
	                   quirk == MS_QUIRK_NO_CROSS     ? "no commands behind message data"
	                   : quirk == MS_QUIRK_NO_BDAT    ? "DATA instead of BDAT"
	                                                  : "one BDAT message in flight");
	if (quirk == MS_QUIRK_NO_CROSS)
		s->cross = 0;
}

/* Is this MAIL reply a server's cap on messages per session (OpenSMTPD's
 * "452 4.5.3 Too many messages")?  Only after the session delivered. */
static int session_cap_reply(const ms_smtp *s, const ms_reply *r)
{
	if (s->conn_done == 0 || ms_reply_class(r->code) != 4)
		return 0;
	if (!strcmp(r->enh, "4.5.3"))
		return 1;
	return strcasestr(r->text, "too many messages") != NULL;
}

/* ---- TLS and AUTH, between EHLO and the first MAIL ----------------------- */

/* A command whose text must not reach the transcript (credentials). */
static ms_status send_secret(ms_smtp *s, const char *shown, const char *line)
{
	ms_transcript_add(s->o.transcript, MS_TX_SENT, shown, strlen(shown));
	if (ms_io_queue(&s->io, line, strlen(line), &s->fatal) != MS_OK ||
	    ms_io_queue(&s->io, "\r\n", 2, &s->fatal) != MS_OK)
		return MS_ERR_NOMEM;
	return MS_OK;
}

static int start_auth(ms_smtp *s)
{
	char why[MS_ERROR_MSG_MAX];
	if (!s->tls_active && !s->o.auth_plaintext) {
		fail_with(s, MS_ERR_TEMP,
		          "refusing to send credentials over a connection without TLS (policy allows "
		          "plain text; require TLS or allow plaintext AUTH explicitly)",
		          0, "4.7.0");
		return 1;
	}
	if (!(s->caps.flags & MS_CAP_AUTH)) {
		fail_with(s, MS_ERR_TEMP, "the server does not offer AUTH", 0, "4.7.0");
		return 1;
	}
	const char *allowed = s->o.auth_mechs ? s->o.auth_mechs : MS_SASL_DEFAULT_MECHS;
	const char *m = ms_sasl_choose(s->caps.auth, allowed);
	if (!m) {
		snprintf(why, sizeof why, "no AUTH mechanism in common (server offers \"%.100s\", we "
		                          "allow \"%.100s\")",
		         s->caps.auth, allowed);
		fail_with(s, MS_ERR_TEMP, why, 0, "4.7.0");
		return 1;
	}
	ms_error err;
	char *ir = NULL;
	if (!(s->sasl = ms_sasl_new(m, s->o.auth_user, s->o.auth_secret, &err)) ||
	    ms_sasl_initial(s->sasl, &ir, &err) != MS_OK) {
		fail_with(s, err.status, err.msg, 0, "4.7.0");
		return 1;
	}
	size_t ll = strlen(m) + (ir ? strlen(ir) : 0) + 8;
	char shown[64], *line = malloc(ll);
	if (!line) {
		free(ir);
		fail_all(s, MS_ERR_NOMEM, "out of memory");
		return 1;
	}
	snprintf(shown, sizeof shown, ir ? "AUTH %s [initial response redacted]" : "AUTH %s", m);
	snprintf(line, ll, ir ? "AUTH %s %s" : "AUTH %s", m, ir ? ir : "");
	ms_status st = send_secret(s, shown, line);
	if (ir)
		OPENSSL_cleanse(ir, strlen(ir));
	OPENSSL_cleanse(line, strlen(line));
	free(ir);
	free(line);
	s->state = S_AUTH;
	if (st != MS_OK || push_expect(s, EX_AUTH, NULL, 0) != MS_OK) {
		fail_all(s, MS_ERR_NOMEM, "out of memory");
		return 1;
	}
	return 0;
}

static int send_ehlo(ms_smtp *s)
{
	char line[EHLO_NAME_MAX + 8];
	snprintf(line, sizeof line, "EHLO %s", s->helo);
	s->state = S_EHLO;
	if (send_line(s, line) != MS_OK || push_expect(s, EX_EHLO, NULL, 0) != MS_OK) {
		fail_all(s, MS_ERR_NOMEM, "out of memory");
		return 1;
	}
	return 0;
}

/* The TLS handshake on the session's socket (after the 220 to STARTTLS,
 * or first thing for implicit TLS), with the name the certificate must
 * carry, and its parameters in the transcript. */
static ms_status start_tls(ms_smtp *s, ms_tls_policy policy, int timeout_ms, const char *how,
                           ms_error *err)
{
	const char *name = s->o.tls_name && *s->o.tls_name ? s->o.tls_name : s->peer;
	ms_status st = ms_tls_handshake(&s->io, policy, name, s->o.tls_ca_file, s->o.tlsa,
	                                s->o.tls_observe, ms_now_ms() + timeout_ms, &s->tls, err);
	if (st != MS_OK)
		return st;
	s->tls_active = 1;
	ms_transcript_addf(s->o.transcript, MS_TX_NOTE,
	                   "TLS%s: %s, cipher %s, peer \"%s\" (issuer \"%s\"), %s", how,
	                   s->tls.protocol, s->tls.cipher, s->tls.peer_subject, s->tls.peer_issuer,
	                   s->tls.dane       ? "certificate matched a TLSA record (DANE)"
	                   : s->tls.verified ? "certificate verified"
	                                     : "certificate not checked");
	return MS_OK;
}

/* What follows a successful EHLO: STARTTLS, AUTH, or mail. */
static int after_ehlo(ms_smtp *s)
{
	if (!s->tls_active && s->o.tls != MS_TLS_NONE && !s->tls_skip) {
		if (s->caps.flags & MS_CAP_STARTTLS) {
			/* R38: STARTTLS goes alone and ends its group. */
			s->state = S_STARTTLS;
			if (send_line(s, "STARTTLS") != MS_OK || push_expect(s, EX_STARTTLS, NULL, 0) != MS_OK) {
				fail_all(s, MS_ERR_NOMEM, "out of memory");
				return 1;
			}
			return 0;
		}
		if (s->o.tls >= MS_TLS_ENCRYPT) {
			char why[128];
			snprintf(why, sizeof why,
			         "TLS is required (policy %s) but the server does not offer STARTTLS",
			         ms_tls_policy_name(s->o.tls));
			fail_with(s, MS_ERR_TEMP, why, 0, "4.7.0");
			return 1;
		}
		note(s, MS_TX_NOTE, "the server does not offer STARTTLS: continuing without TLS (policy may)");
	}
	if (s->o.auth_user && !s->authenticated)
		return start_auth(s);
	session_ready(s);
	return 0;
}

static int on_starttls(ms_smtp *s, const ms_reply *r)
{
	char why[MS_ERROR_MSG_MAX];
	if (ms_reply_class(r->code) != 2) {
		if (s->o.tls == MS_TLS_MAY) {
			snprintf(why, sizeof why, "STARTTLS refused (%d %.200s): continuing without TLS "
			                          "(policy may)",
			         r->code, r->text);
			note(s, MS_TX_NOTE, why);
			s->tls_skip = 1;
			return after_ehlo(s);
		}
		snprintf(why, sizeof why, "STARTTLS refused (%d %.200s) and TLS is required (policy %s)",
		         r->code, r->text, ms_tls_policy_name(s->o.tls));
		fail_with(s, MS_ERR_TEMP, why, r->code, r->enh[0] ? r->enh : "4.7.0");
		return 1;
	}
	/* R39: anything after the 220 and before the handshake was not said by
	 * the TLS peer: an injection attempt.  Abort, never discard. */
	if (ms_buf_avail(&s->io.in) > 0) {
		fail_all(s, MS_ERR_PROTOCOL,
		         "bytes arrived after the 220 to STARTTLS, before the TLS handshake: response "
		         "injection; connection aborted");
		return 1;
	}
	ms_error err;
	if (start_tls(s, s->o.tls, s->o.timeouts.ehlo, "", &err) != MS_OK) {
		s->tls_handshake_failed = 1;
		fail_with(s, err.status == MS_ERR_USAGE ? MS_ERR_USAGE : MS_ERR_TEMP, err.msg, 0, "4.7.5");
		return 1;
	}
	/* R38/R40: forget everything learnt before TLS; EHLO again. */
	memset(&s->caps, 0, sizeof s->caps);
	return send_ehlo(s);
}

static int on_auth(ms_smtp *s, const ms_reply *r)
{
	char why[MS_ERROR_MSG_MAX];
	int cls = ms_reply_class(r->code);
	ms_error err;
	if (cls == 3) {
		char *resp = NULL;
		const char *line;
		if (s->auth_cancel[0]) {
			fail_all(s, MS_ERR_PROTOCOL, s->auth_cancel);
			return 1;
		}
		if (ms_sasl_step(s->sasl, r->text, &resp, &err) != MS_OK) {
			/* RFC 4954 4: cancel with "*"; the server answers 501. */
			snprintf(s->auth_cancel, sizeof s->auth_cancel, "AUTH %s: %.400s",
			         ms_sasl_mech(s->sasl), err.msg);
			line = "*";
		} else {
			line = resp;
		}
		ms_status st = send_secret(s, line[0] == '*' ? "*" : "[AUTH response redacted]", line);
		if (resp) {
			OPENSSL_cleanse(resp, strlen(resp));
			free(resp);
		}
		if (st != MS_OK || push_expect(s, EX_AUTH, NULL, 0) != MS_OK) {
			fail_all(s, MS_ERR_NOMEM, "out of memory");
			return 1;
		}
		return 0;
	}
	if (s->auth_cancel[0]) {
		fail_all(s, MS_ERR_PROTOCOL, s->auth_cancel);
		return 1;
	}
	if (cls == 2) {
		if (ms_sasl_finish(s->sasl, r->text, &err) != MS_OK) {
			fail_all(s, MS_ERR_PROTOCOL, err.msg);
			return 1;
		}
		s->authenticated = 1;
		ms_transcript_addf(s->o.transcript, MS_TX_NOTE, "authenticated with %s",
		                   ms_sasl_mech(s->sasl));
		session_ready(s);
		return 0;
	}
	const char *what = r->code == 535   ? "authentication failed (wrong credentials?)"
	                   : r->code == 538 ? "the server requires encryption for this mechanism"
	                   : r->code == 534 ? "the server finds this mechanism too weak"
	                                    : "AUTH refused";
	snprintf(why, sizeof why, "%s: %d %.300s", what, r->code, r->text);
	fail_with(s, cls == 5 ? MS_ERR_PERM : MS_ERR_TEMP, why, r->code, r->enh[0] ? r->enh : "4.7.0");
	return 1;
}

/* A recipient's RCPT reply.  "Too many recipients" goes again later (R12). */
static void on_rcpt(txn *t, size_t ri, const ms_reply *r, int dsn_offered)
{
	ms_rcpt *rc = &t->m->rcpts[t->idx[ri]];
	t->answered++;
	if (t->mail_ok == 0)
		return; /* R23: the recipient keeps the MAIL reply */
	rc->rcpt_code = r->code;
	int cls = ms_reply_class(r->code);
	if (cls == 2) {
		t->accepted++;
		rc->dsn_passed = dsn_offered;
		rcpt_set(rc, MS_RCPT_ACCEPTED, MS_STAGE_RCPT, r->code, r->enh, r->text);
		return;
	}
	/* R12: 452, or X.5.3 "too many recipients" (even as 552), means
	 * "not now in this transaction"; other 5xx are final. */
	int x53 = r->enh[0] && !strcmp(r->enh + 1, ".5.3");
	if (r->code == 452 || (x53 && (cls == 4 || r->code == 552))) {
		rc->retry = 1;
		rcpt_set(rc, MS_RCPT_DEFERRED, MS_STAGE_RCPT, r->code, r->enh, r->text);
		return;
	}
	rcpt_set(rc, cls == 5 ? MS_RCPT_FAILED : MS_RCPT_DEFERRED, MS_STAGE_RCPT, r->code,
	         r->enh, r->text);
}

/*
 * Recipients refused as "too many", once DATA is answered: with progress
 * (someone was accepted) they leave this transaction and become available to
 * the next one; without, they stay deferred with their reply.  Every RCPT is
 * answered by now, so no expectation still points into t->idx.
 */
static void settle_retries(txn *t, int progress)
{
	size_t keep = 0;
	for (size_t i = 0; i < t->n; i++) {
		ms_rcpt *rc = &t->m->rcpts[t->idx[i]];
		if (rc->retry && progress) {
			rc->retry = 0;
			rc->state = MS_RCPT_PENDING;
			rc->busy = 0;
			continue;
		}
		rc->retry = 0;
		t->idx[keep++] = t->idx[i];
	}
	t->n = keep;
}

static void on_data(ms_smtp *s, txn *t, const ms_reply *r)
{
	s->envelope = NULL;
	int cls = ms_reply_class(r->code);
	if (cls == 3) {
		if (t->mail_ok == 1 && t->accepted > 0) {
			settle_retries(t, 1);
			begin_body(s, t);
		} else {
			/* R22: nobody to deliver to, yet the server wants data. */
			settle_retries(t, 0);
			t->dot_only = 1;
			t->phase = TX_DOT;
			ms_transcript_add(s->o.transcript, MS_TX_SENT, ".", 1);
			if (ms_io_queue(&s->io, ".\r\n", 3, &s->fatal) == MS_OK)
				push_expect(s, EX_DOT, t, 0);
		}
		return;
	}
	/* DATA refused: the accepted recipients get its reply (R45). */
	settle_retries(t, 0);
	if (t->mail_ok == 1) {
		for (size_t i = 0; i < t->n; i++) {
			ms_rcpt *rc = &t->m->rcpts[t->idx[i]];
			if (rc->state == MS_RCPT_ACCEPTED)
				rcpt_set(rc, state_for(r->code), MS_STAGE_DATA, r->code, r->enh, r->text);
		}
		ms_outcome_set(&t->m->out, MS_STAGE_DATA, r->code, r->enh, r->text);
	}
	s->need_rset = 1;
	txn_end(s, t);
}

static void on_dot(ms_smtp *s, txn *t, const ms_reply *r)
{
	if (t->bdat) {
		/* The RCPT replies are all in: "too many recipients" go again in
		 * another transaction when this one made progress (R12). */
		settle_retries(t, t->accepted > 0);
		s->bdat_replies++;
		if (t->mail_ok != 1 || t->accepted == 0) {
			if (ms_reply_class(r->code) != 2 || t->voided)
				s->need_rset = 1;
			txn_end(s, t);
			return;
		}
	}
	if (!t->dot_only) {
		int cls = ms_reply_class(r->code);
		ms_rcpt_state st = cls == 2 ? MS_RCPT_DELIVERED : state_for(r->code);
		for (size_t i = 0; i < t->n; i++) {
			ms_rcpt *rc = &t->m->rcpts[t->idx[i]];
			if (rc->state == MS_RCPT_ACCEPTED)
				rcpt_set(rc, st, MS_STAGE_DOT, r->code, r->enh, r->text);
		}
		ms_outcome_set(&t->m->out, MS_STAGE_DOT, r->code, r->enh, r->text);
	}
	txn_end(s, t);
}

static void on_mail(ms_smtp *s, txn *t, const ms_reply *r)
{
	if (ms_reply_class(r->code) == 2) {
		t->mail_ok = 1;
		t->voided = 0; /* a refused RSET changed nothing: the MAIL counts */
		return;
	}
	int capped = session_cap_reply(s, r);
	if ((t->rode && (ms_reply_class(r->code) == 5 || t->rset_refused)) || capped) {
		/* P3: MAIL written behind data refused: the server may have
		 * refused it for riding (Haraka's "503 ... pipelined after end of
		 * DATA"), not for the sender.  P6: or the server caps messages
		 * per session.  Either way the message is not answered: it goes
		 * again - alone, or on a new connection. */
		t->mail_ok = 0;
		t->voided = 1;
		if (capped) {
			if (!s->ending)
				ms_transcript_addf(s->o.transcript, MS_TX_NOTE,
				                   "the server takes no more messages on this connection: "
				                   "the rest goes on a new one");
			s->ending = 1;
		} else if (r->code == 503) {
			learn(s, t->bdat ? MS_QUIRK_BDAT_SERIAL : MS_QUIRK_NO_CROSS,
			      "the server refused commands written behind a message's data");
		} else {
			t->m->solo = 1;
		}
		s->need_rset = 1;
		if (!s->pipelining)
			txn_end(s, t);
		return;
	}
	/* R23: every recipient gets the MAIL reply; RCPT/DATA replies that
	 * follow (usually 503) are read and ignored. */
	t->mail_ok = 0;
	for (size_t i = 0; i < t->n; i++)
		rcpt_set(&t->m->rcpts[t->idx[i]], state_for(r->code), MS_STAGE_MAIL, r->code, r->enh,
		         r->text);
	ms_outcome_set(&t->m->out, MS_STAGE_MAIL, r->code, r->enh, r->text);
	s->need_rset = 1;
	if (!s->pipelining)
		txn_end(s, t); /* nothing else was sent */
}

/* Handle one complete reply.  Returns non-zero if the session broke. */
static int on_reply(ms_smtp *s, ms_reply *r)
{
	char why[MS_ERROR_MSG_MAX];
	expect *e = head(s);
	s->st.replies++;
	s->last_reply_ms = ms_now_ms();
	if (r->flags & MS_REPLY_MIXED)
		note(s, MS_TX_NOTE, "multiline reply with differing codes: the last line counts");
	if (r->flags & MS_REPLY_BARE_LF)
		note(s, MS_TX_NOTE, "reply line ended in LF without CR");
	if (r->flags & MS_REPLY_ENH_MISMATCH)
		note(s, MS_TX_NOTE, "enhanced status code disagrees with the reply code: ignored");

	int premature = e && s->io.bytes_out < e->end_off;
	if (!e || premature) {
		/* The data still being written, if any: its transaction. */
		txn *bt = s->body ? s->body : (e && e->kind == EX_DOT ? e->t : NULL);
		if (r->code == 421 || (bt && ms_reply_class(r->code) >= 4)) {
			/* R9/R26: the server gives up (or refuses the data early):
			 * this reply is what the outstanding recipients get. */
			txn *t = bt ? bt : (e ? e->t : NULL);
			if (t)
				for (size_t i = 0; i < t->n; i++) {
					ms_rcpt *rc = &t->m->rcpts[t->idx[i]];
					if (!is_final(rc->state) || rc->retry) {
						rc->retry = 0;
						/* A reply to BDAT before its octets were sent
						 * answers nothing we said (P2): not trusted. */
						rcpt_set(rc, bt && bt->bdat ? MS_RCPT_DEFERRED : state_for(r->code),
						         bt ? MS_STAGE_DOT : MS_STAGE_SESSION, r->code, r->enh, r->text);
					}
				}
			snprintf(why, sizeof why, "server said \"%d %.400s\" and the session ended", r->code,
			         r->text);
			fail_with(s, ms_reply_class(r->code) == 5 ? MS_ERR_PERM : MS_ERR_TEMP, why, r->code,
			          r->enh[0] ? r->enh : "4.4.2");
			return 1;
		}
		snprintf(why, sizeof why, "protocol error: reply \"%d %.200s\" %s", r->code, r->text,
		         e ? "arrived before its command was sent" : "with no command outstanding");
		fail_all(s, MS_ERR_PROTOCOL, why);
		return 1;
	}
	ex_kind kind = e->kind;
	txn *t = e->t;
	size_t ri = e->ri;
	pop(s);
	int cls = ms_reply_class(r->code);
	s->refused_last = t && t->rode && (kind == EX_RSET || kind == EX_MAIL) && cls == 5;
	/* A 421 is the session ending, not an answer about this message (a
	 * server's per-connection message cap, say): it was not attempted. */
	if (t && r->code != 421 && kind != EX_RSET) {
		t->m->engaged = 1;
		/* Recorded for the log and the envelope's history: how the
		 * connection that carried it was secured. */
		if (!s->tls_active)
			snprintf(t->m->tls, sizeof t->m->tls, "none");
		else
			snprintf(t->m->tls, sizeof t->m->tls, "%s %.31s %.63s",
			         s->tls.dane                        ? "dane"
			         : s->tls.verified && s->o.tls_sts ? "mta-sts"
			         : s->tls.verified                  ? "verified"
			                                            : "unverified",
			         s->tls.protocol,
			         s->tls.cipher);
	}

	if (r->code == 421 && kind != EX_QUIT && (s->conn_done > 0 || s->conn_failed > 0) &&
	    s->host[0] && (kind != EX_DOT && kind != EX_BDAT)) {
		/* P6: a server that ends a session after taking mail (Exim after
		 * 1,000 messages) limits the connection, not the messages: the
		 * rest goes on a new one. */
		snprintf(why, sizeof why, "server closing after %zu message(s): %d %.400s",
		         s->conn_done + s->conn_failed, r->code, r->text);
		abandon(s, why, 1);
		return 1;
	}
	if (r->code == 421 && kind != EX_QUIT) {
		/* R9: the server is closing; this reply answers the current
		 * command and everything outstanding fails temporarily. */
		if (kind == EX_RCPT && t)
			rcpt_set(&t->m->rcpts[t->idx[ri]], MS_RCPT_DEFERRED, MS_STAGE_RCPT, r->code, r->enh,
			         r->text);
		snprintf(why, sizeof why, "server closing: %d %.400s", r->code, r->text);
		fail_with(s, MS_ERR_TEMP, why, r->code, r->enh[0] ? r->enh : "4.4.2");
		return 1;
	}
	/* DATA is answered by 354 or a refusal; nothing else by 3xx. */
	if ((cls == 3 && kind != EX_DATA && kind != EX_AUTH) || (kind == EX_DATA && cls == 2)) {
		snprintf(why, sizeof why, "protocol error: unexpected %d reply to %s", r->code,
		         ex_name[kind]);
		fail_all(s, MS_ERR_PROTOCOL, why);
		return 1;
	}
	switch (kind) {
	case EX_GREETING:
		free(s->greeting);
		s->greeting = strdup(r->text);
		if (cls != 2) {
			/* R7: a 5xx greeting refuses the session; QUIT politely.
			 * Like Postfix (smtp_skip_5xx_greeting) this is not final
			 * for the mail: another host or a later try may take it. */
			snprintf(why, sizeof why, "server refused the session: %d %.400s", r->code, r->text);
			send_line(s, "QUIT");
			ms_io_pump(&s->io, ms_now_ms() + 1000, NULL);
			fail_all(s, MS_ERR_TEMP, why);
			return 1;
		}
		if (send_ehlo(s))
			return 1;
		break;
	case EX_EHLO:
		if (cls == 2) {
			parse_ehlo(s, r);
			if (after_ehlo(s))
				return 1;
		} else if (cls == 5 && !s->tls_active) {
			/* R8: EHLO not understood: HELO, no extensions. */
			char line[EHLO_NAME_MAX + 8];
			note(s, MS_TX_NOTE, "EHLO refused: falling back to HELO");
			snprintf(line, sizeof line, "HELO %s", s->helo);
			if (send_line(s, line) != MS_OK || push_expect(s, EX_HELO, NULL, 0) != MS_OK)
				return 1;
		} else {
			snprintf(why, sizeof why, "EHLO refused: %d %.400s", r->code, r->text);
			fail_all(s, MS_ERR_TEMP, why);
			return 1;
		}
		break;
	case EX_HELO:
		if (cls != 2) {
			snprintf(why, sizeof why, "HELO refused: %d %.400s", r->code, r->text);
			fail_all(s, cls == 5 ? MS_ERR_PERM : MS_ERR_TEMP, why);
			return 1;
		}
		memset(&s->caps, 0, sizeof s->caps);
		/* No extensions: no STARTTLS and no AUTH either, which the
		 * policy and the credentials must still be asked about. */
		if (after_ehlo(s))
			return 1;
		break;
	case EX_RSET:
		if (cls != 2 && t && t->rode) {
			/* P3: the RSET rode behind data and was refused: the server
			 * does not take commands there.  What follows is read and
			 * counted; the message goes again. */
			t->rset_refused = 1;
			t->voided = 1;
			if (r->code == 503) /* "bad sequence": it is where the RSET was */
				learn(s, t->bdat ? MS_QUIRK_BDAT_SERIAL : MS_QUIRK_NO_CROSS,
				      "the server refused RSET written behind a message's data");
			else
				t->m->solo = 1;
			break;
		}
		if (cls != 2) {
			snprintf(why, sizeof why, "RSET refused (%d %.400s): session state unknown", r->code,
			         r->text);
			fail_all(s, MS_ERR_TEMP, why);
			return 1;
		}
		break;
	case EX_MAIL:
		on_mail(s, t, r);
		break;
	case EX_RCPT:
		on_rcpt(t, ri, r, (s->caps.flags & MS_CAP_DSN) != 0);
		/* Lock-step: no accepted recipient after the last RCPT: no DATA. */
		if (!s->pipelining && t->answered == t->n && t->accepted == 0) {
			settle_retries(t, 0);
			s->need_rset = 1;
			txn_end(s, t);
		}
		break;
	case EX_DATA:
		on_data(s, t, r);
		break;
	case EX_DOT:
	case EX_BDAT:
		on_dot(s, t, r);
		break;
	case EX_QUIT:
		s->quit_done = 1;
		break;
	case EX_STARTTLS:
		if (on_starttls(s, r))
			return 1;
		break;
	case EX_AUTH:
		if (on_auth(s, r))
			return 1;
		break;
	}
	report_done(s);
	return 0;
}

/* ---- the loop ---------------------------------------------------------- */

/*
 * The connection broke (closed, reset) with transactions in flight.  P5:
 * a BDAT stream that broke before its first BDAT reply may be a server
 * that cannot take BDAT pipelined - the next connection goes one message
 * at a time, and after that with DATA; a connection that already
 * delivered has earned a new one.  Returns 1 when the connection was
 * abandoned for a new one, 0 when the caller fails the session as usual.
 */
static int lost_midstream(ms_smtp *s, const char *why)
{
	if (!s->txns || s->state != S_READY || !s->host[0])
		return 0;
	if (s->refused_last) {
		/* The server refused a command behind data and hung up (Exim's
		 * "554 Too many nonmail commands" to an RSET): it answers in
		 * order, so nothing from that command on was processed. */
		int after = 0;
		for (txn *t = s->txns; t; t = t->next)
			if ((after |= t->voided))
				t->voided = 1;
		abandon(s, why, 1);
		return 1;
	}
	int streamed = s->bdat_inflight >= 2 && s->bdat_replies == 0;
	if (!streamed && s->conn_done == 0)
		return 0;
	if (streamed)
		learn(s, MS_QUIRK_BDAT_SERIAL, "the connection broke in a BDAT stream before any reply");
	abandon(s, why, 0);
	return 1;
}

typedef int (*until_fn)(const ms_smtp *s);

static int until_ready(const ms_smtp *s) { return s->state == S_READY; }
static int until_window(const ms_smtp *s) { return s->live <= s->o.window / 2; }
static int until_flushed(const ms_smtp *s) { return s->live == 0; }
static int until_quit(const ms_smtp *s) { return s->quit_done || s->io.eof; }
/* Marker for a turn that must not wait (see ms_smtp_progress). */
static int until_progress(const ms_smtp *s) { (void)s; return 0; }

/* Is there a recipient no transaction has taken yet? */
static int has_work(const ms_smtp *s)
{
	for (size_t i = 0; i < s->mlen; i++) {
		const ms_message *m = s->msgs[(s->mhead + i) % s->mcap];
		if (!m || m->done)
			continue;
		for (size_t k = 0; k < m->nrcpts; k++)
			if (m->rcpts[k].state == MS_RCPT_PENDING && !m->rcpts[k].busy)
				return 1;
	}
	return 0;
}

static void reset_session(ms_smtp *s);
static ms_status connect_once(ms_smtp *s, const char *host, const char *port, ms_error *err);

/*
 * P5/P6: a new connection for what the last one could not carry - after a
 * session limit (ending: the old one is QUIT politely once idle) or an
 * abandoned connection.  A connection that delivered nothing may be
 * replaced only `restarts` times; one that delivered may always be, so the
 * engine cannot loop without progress.
 */
static void maybe_restart(ms_smtp *s)
{
	if (s->broken || s->state != S_READY)
		return;
	int planned = !s->need_restart;
	/* QUIT may already ride behind the last data when a refused
	 * transaction hands its recipients back: that is an ending too. */
	if (planned &&
	    !((s->ending || s->quit_queued) && s->flen == 0 && !s->body && has_work(s)))
		return;
	if (!planned && !has_work(s)) {
		/* Everything in flight is settled (outcome unknown): done here. */
		s->need_restart = 0;
		fail_all(s, MS_ERR_CLOSED, s->restart_why);
		return;
	}
	char why[MS_ERROR_MSG_MAX];
	snprintf(why, sizeof why, "%s",
	         planned ? "session limit reached" : s->restart_why);
	s->refused_last = 0;
	if (!s->host[0] || (!planned && s->conn_done == 0 && s->restarts_left-- <= 0)) {
		s->need_restart = 0;
		fail_all(s, MS_ERR_CLOSED, why);
		return;
	}
	if (planned && s->have_io && !s->quit_queued && send_line(s, "QUIT") == MS_OK)
		ms_io_pump(&s->io, ms_now_ms() + 1000, NULL); /* R25: its reply changes nothing */
	ms_transcript_addf(s->o.transcript, MS_TX_NOTE, "%s: a new connection for the rest", why);
	reset_session(s);
	ms_error err;
	if (connect_once(s, s->host, s->port, &err) != MS_OK && !s->broken)
		fail_all(s, err.status, err.msg);
	else if (s->broken)
		fail_all(s, s->fatal.status, s->fatal.msg);
}

/*
 * One turn of the loop: queue what may be sent, move bytes (waiting at most
 * until the head reply's deadline, R43), and hand every complete reply to
 * the state machine.  *done is set when `until` holds.  Returns MS_OK, or
 * the status that broke the session.
 */
static ms_status turn(ms_smtp *s, until_fn until, int *done)
{
	char why[MS_ERROR_MSG_MAX];
	*done = 0;
	maybe_restart(s);
	if (s->broken)
		return s->fatal.status;
	if (fill_output(s) != MS_OK) {
		if (!s->broken)
			fail_all(s, s->fatal.status, s->fatal.msg);
		return s->fatal.status;
	}
	if (s->broken)
		return s->fatal.status;
	if (until(s) && (until != until_quit || ms_io_pending(&s->io) == 0)) {
		*done = 1;
		return MS_OK;
	}
	expect *e = head(s);
	if (!e && ms_io_pending(&s->io) == 0 && !s->body) {
		*done = 1;
		if (until == until_quit || until == until_progress)
			return MS_OK;
		/* Nothing to send or await, yet not done: cannot happen
		 * unless a message has no recipients left to try. */
		s->settled = 1;
		report_done(s);
		if (until(s))
			return MS_OK;
		fail_all(s, MS_ERR_PROTOCOL, "internal error: session stalled");
		return MS_ERR_PROTOCOL;
	}
	int64_t deadline = MS_NO_DEADLINE;
	if (e) {
		int64_t start = e->queued_ms;
		if (s->last_reply_ms > start)
			start = s->last_reply_ms;
		if (s->io.last_write_ms > start)
			start = s->io.last_write_ms;
		deadline = start + (e->probe ? s->o.probe_ms : timeout_for(s, e->kind));
	}
	if (ms_io_pending(&s->io) > 0) {
		int64_t wd = s->io.last_write_ms + s->o.timeouts.data_block;
		if (wd < deadline)
			deadline = wd;
	}
	int nowait = until == until_progress;
	if (nowait)
		deadline = ms_now_ms(); /* one poll that does not wait */
	ms_error perr;
	uint64_t out0 = s->io.bytes_out, in0 = s->io.bytes_in;
	ms_status st = ms_io_pump(&s->io, deadline, &perr);
	/* A round trip: replies that answer something we wrote since the last
	 * one (counted on arrival, so it does not depend on when we blocked). */
	if (s->io.bytes_out != out0)
		s->wrote = 1;
	if (s->io.bytes_in != in0 && s->wrote) {
		s->wrote = 0;
		s->st.round_trips++;
	}
	s->st.bytes_in = s->io.bytes_in;
	s->st.bytes_out = s->io.bytes_out;
	s->st.writes = s->io.writes;
	if (st == MS_ERR_TIMEOUT && nowait) {
		*done = 1; /* nothing was ready: not a failure */
		return MS_OK;
	}
	if (st == MS_ERR_TIMEOUT) {
		if (until == until_quit) {
			s->quit_done = 1;
			*done = 1;
			return MS_OK; /* R25: the QUIT reply changes nothing */
		}
		if (e && e->probe) {
			/* P4: every earlier reply is in, this command was written
			 * behind data long ago, and the server says nothing: it
			 * dropped what followed the data (chasquid). */
			txn *pt = e->t;
			snprintf(why, sizeof why,
			         "no reply in %d ms to %s written behind a message's data: the server "
			         "discards such commands",
			         s->o.probe_ms, ex_name[e->kind]);
			learn(s, pt && pt->bdat ? MS_QUIRK_BDAT_SERIAL : MS_QUIRK_NO_CROSS, why);
			abandon(s, why, 0);
			*done = until == until_quit;
			return MS_OK;
		}
		if (e)
			snprintf(why, sizeof why, "timed out after %d s waiting for the reply to %s",
			         timeout_for(s, e->kind) / 1000, ex_name[e->kind]);
		else
			snprintf(why, sizeof why, "timed out after %d s writing to the server",
			         s->o.timeouts.data_block / 1000);
		fail_all(s, MS_ERR_TIMEOUT, why);
		return MS_ERR_TIMEOUT;
	}
	if (st != MS_OK) {
		if (lost_midstream(s, perr.msg))
			return MS_OK;
		fail_all(s, st, perr.msg);
		return st;
	}
	/* Hand every complete reply to the state machine. */
	for (;;) {
		ms_reply r;
		int complete = 0;
		ms_error rerr;
		if (ms_reply_read(&s->rr, &s->io.in, &r, &complete, &rerr) != MS_OK) {
			note(s, MS_TX_RECV, ms_buf_ptr(&s->io.in));
			fail_all(s, MS_ERR_PROTOCOL, rerr.msg);
			return MS_ERR_PROTOCOL;
		}
		if (!complete)
			break;
		ms_transcript_add(s->o.transcript, MS_TX_RECV, r.raw, strlen(r.raw));
		int broke = on_reply(s, &r);
		ms_reply_free(&r);
		if (broke)
			return s->need_restart ? MS_OK : s->fatal.status;
	}
	if (s->io.eof) {
		if (until == until_quit || (s->quit_queued && s->live == 0)) {
			s->quit_done = 1;
			*done = 1;
			return MS_OK;
		}
		if (s->quit_queued && s->flen == 0 && s->host[0])
			return MS_OK; /* closed after our QUIT: the rest on a new one */
		if (ms_reply_reader_busy(&s->rr, &s->io.in))
			snprintf(why, sizeof why,
			         "connection closed by the server in the middle of a reply");
		else if (head(s))
			snprintf(why, sizeof why,
			         "connection closed by the server while waiting for the reply to %s",
			         ex_name[head(s)->kind]);
		else
			snprintf(why, sizeof why, "connection closed by the server");
		if (lost_midstream(s, why))
			return MS_OK;
		fail_all(s, MS_ERR_CLOSED, why);
		return MS_ERR_CLOSED;
	}
	return MS_OK;
}

/* Turn until `until` holds or the session breaks. */
static ms_status run(ms_smtp *s, until_fn until)
{
	for (;;) {
		int done;
		ms_status st = turn(s, until, &done);
		if (st != MS_OK || done)
			return st;
	}
}

/* ---- public API -------------------------------------------------------- */

void ms_smtp_opts_default(ms_smtp_opts *o)
{
	memset(o, 0, sizeof *o);
	o->cross_message = 1;
	o->tls = MS_TLS_MAY;
	o->max_rcpts = 100;
	o->window = 64;
	/* Chosen by measurement (bench/RESULTS.md, 1,000 x 4 KiB at 100 ms):
	 * to Postfix 64 in flight gave 396 msg/s, 128 586, 256 911; Exim was
	 * its own limit (183) from 64 on.  128 doubles 64's worst case of
	 * "outcome unknown" for 1.5x; 8 MiB caps that case when messages are
	 * large. */
	o->bdat_messages = 128;
	o->bdat_bytes = 8u << 20;
	o->bdat_unsized_max = 10u << 20;
	o->rset_first = 1;
	o->session_messages = 1000;
	o->session_failures = 8;
	o->restarts = 3;
	o->probe_ms = 5000;
	/* RFC 5321 4.5.3.2 minimums; connect and quit are our own. */
	o->timeouts = (ms_smtp_timeouts){ .connect = 30000, .greeting = 300000, .ehlo = 300000,
	                                  .mail = 300000, .rcpt = 300000, .data = 120000,
	                                  .data_block = 180000, .dot = 600000, .rset = 120000,
	                                  .quit = 10000 };
}

ms_smtp *ms_smtp_new(const ms_smtp_opts *o, ms_error *err)
{
	ms_smtp *s = calloc(1, sizeof *s);
	if (!s || !(s->chunk = malloc(BODY_CHUNK))) {
		free(s);
		ms_error_set(err, MS_ERR_NOMEM, "out of memory");
		return NULL;
	}
	s->o = *o;
	if (s->o.max_rcpts == 0)
		s->o.max_rcpts = 100;
	if (s->o.window < 2)
		s->o.window = 2;
	if (s->o.bdat_messages == 0)
		s->o.bdat_messages = 1;
	if (s->o.chunking == MS_CHUNKING_AUTO && s->o.window < 2 * s->o.bdat_messages)
		s->o.window = 2 * s->o.bdat_messages; /* submit() keeps the stream fed */
	if (s->o.session_messages == 0)
		s->o.session_messages = SIZE_MAX;
	if (s->o.session_failures == 0)
		s->o.session_failures = SIZE_MAX;
	if (s->o.probe_ms <= 0)
		s->o.probe_ms = s->o.timeouts.mail;
	s->quirks = s->o.quirks;
	s->restarts_left = s->o.restarts;
	s->bdat_refill = 1;
	s->shape = "none";
	const char *helo = o->helo;
	char host[EHLO_NAME_MAX + 1];
	if (!helo || !*helo) {
		ms_addr_hostname(host, sizeof host);
		helo = host;
	}
	if (!ms_addr_domain_ok(helo, strlen(helo), NULL)) {
		ms_error_set(err, MS_ERR_USAGE, "invalid EHLO name \"%.100s\"", helo);
		free(s->chunk);
		free(s);
		return NULL;
	}
	snprintf(s->helo, sizeof s->helo, "%s", helo);
	ms_reply_reader_init(&s->rr);
	s->io.fd = -1;
	return s;
}

void ms_smtp_free(ms_smtp *s)
{
	if (!s)
		return;
	while (s->txns) {
		txn *t = s->txns;
		s->txns = t->next;
		txn_free(t);
	}
	if (s->have_io)
		ms_io_close(&s->io);
	ms_reply_reader_free(&s->rr);
	ms_sasl_free(s->sasl);
	free(s->fifo);
	free(s->msgs);
	free(s->greeting);
	free(s->chunk);
	free(s);
}

ms_status ms_smtp_attach(ms_smtp *s, int fd, ms_error *err)
{
	if (s->have_io)
		return ms_error_set(err, MS_ERR_USAGE, "session already connected");
	if (ms_io_init_fd(&s->io, fd, err) != MS_OK) {
		close(fd);
		return err ? err->status : MS_ERR_IO;
	}
	s->have_io = 1;
	s->io.read_chunk = s->o.read_chunk;
	s->io.on_write = on_write;
	s->io.on_write_ctx = s;
	if (s->o.implicit_tls) {
		/* RFC 8314: TLS from the first byte; the greeting comes inside. */
		ms_tls_policy p = s->o.tls == MS_TLS_VERIFY || s->o.tls == MS_TLS_DANE ? s->o.tls
		                                                                       : MS_TLS_ENCRYPT;
		ms_error terr;
		if (start_tls(s, p, s->o.timeouts.greeting, " (implicit)", &terr) != MS_OK) {
			s->broken = 1;
			ms_error_set(&s->fatal, terr.status == MS_ERR_USAGE ? MS_ERR_USAGE : MS_ERR_TEMP,
			             "%s", terr.msg);
			note(s, MS_TX_ERROR, s->fatal.msg);
			return ms_error_set(err, s->fatal.status, "%s", s->fatal.msg);
		}
	}
	s->state = S_GREETING;
	s->wrote = 1; /* connecting is a send: the greeting is the first round trip */
	push_expect(s, EX_GREETING, NULL, 0);
	ms_status st = run(s, until_ready);
	if (st != MS_OK)
		return ms_error_set(err, st, "%s", s->fatal.msg);
	return MS_OK;
}

/* Back to a fresh, unconnected session.  Submitted messages stay; no
 * transaction may be in flight. */
static void reset_session(ms_smtp *s)
{
	if (s->have_io)
		ms_io_close(&s->io);
	s->have_io = 0;
	s->envelope = s->body = NULL;
	s->need_rset = 0;
	s->quit_queued = s->quit_done = 0;
	s->bdat_inflight = 0;
	s->bdat_bytes = s->bdat_replies = 0;
	s->bdat_refill = 1;
	s->conn_txns = s->conn_failed = s->conn_done = 0;
	s->ending = s->need_restart = 0;
	s->conn_learnt = 0;
	s->authenticated = 0;
	ms_sasl_free(s->sasl);
	s->sasl = NULL;
	s->auth_cancel[0] = '\0';
	s->broken = 0;
	memset(&s->fatal, 0, sizeof s->fatal);
	memset(&s->caps, 0, sizeof s->caps);
	s->state = S_NEW;
	s->flen = s->fhead = 0;
	free(s->greeting);
	s->greeting = NULL;
	ms_reply_reader_free(&s->rr);
	ms_reply_reader_init(&s->rr);
	s->tls_active = s->tls_handshake_failed = 0;
	memset(&s->tls, 0, sizeof s->tls);
}

static ms_status connect_once(ms_smtp *s, const char *host, const char *port, ms_error *err);

ms_status ms_smtp_connect(ms_smtp *s, const char *host, const char *port, ms_error *err)
{
	snprintf(s->peer, sizeof s->peer, "%s", host);
	/* Kept so that the engine can open the next connection itself (P6). */
	if (snprintf(s->host, sizeof s->host, "%s", host) >= (int)sizeof s->host ||
	    snprintf(s->port, sizeof s->port, "%s", port) >= (int)sizeof s->port)
		s->host[0] = '\0';
	ms_status st = connect_once(s, host, port, err);
	/* R41: after a failed handshake the connection is unusable; under
	 * `may` plain text is tried again, on a new connection. */
	if (st != MS_OK && s->tls_handshake_failed && s->o.tls == MS_TLS_MAY && !s->o.implicit_tls &&
	    s->mlen == 0) {
		ms_transcript_addf(s->o.transcript, MS_TX_NOTE,
		                   "TLS handshake failed (%s): trying again without TLS on a new "
		                   "connection (policy may)",
		                   s->fatal.msg);
		reset_session(s);
		s->tls_skip = 1;
		st = connect_once(s, host, port, err);
	}
	return st;
}

static ms_status connect_once(ms_smtp *s, const char *host, const char *port, ms_error *err)
{
	int fd;
	ms_transcript_addf(s->o.transcript, MS_TX_NOTE, "connecting to %s port %s", host, port);
	s->st.connections++;
	ms_status st = ms_net_connect(host, port, &s->o.net, s->o.timeouts.connect, &fd, s->peer_addr,
	                              err);
	if (st != MS_OK) {
		s->broken = 1;
		ms_error_set(&s->fatal, st, "%s", err ? err->msg : "cannot connect");
		note(s, MS_TX_ERROR, s->fatal.msg);
		return st;
	}
	return ms_smtp_attach(s, fd, err);
}

ms_status ms_smtp_submit(ms_smtp *s, ms_message *m, ms_error *err)
{
	if (m->nrcpts == 0)
		return ms_error_set(err, MS_ERR_USAGE, "message has no recipients");
	ms_error scan_err;
	ms_status scan = m->scanned ? MS_OK : ms_message_scan(m, &scan_err);
	if (s->mlen == s->mcap) {
		size_t ncap = s->mcap ? s->mcap * 2 : 64;
		ms_message **p = malloc(ncap * sizeof *p);
		if (!p)
			return ms_error_set(err, MS_ERR_NOMEM, "out of memory");
		for (size_t i = 0; i < s->mlen; i++)
			p[i] = s->msgs[(s->mhead + i) % s->mcap];
		free(s->msgs);
		s->msgs = p;
		s->mhead = 0;
		s->mcap = ncap;
	}
	s->msgs[(s->mhead + s->mlen) % s->mcap] = m;
	s->mlen++;
	s->live++;
	if (scan != MS_OK) {
		/* The data cannot be read: nothing can be sent, maybe later. */
		for (size_t i = 0; i < m->nrcpts; i++)
			rcpt_set(&m->rcpts[i], MS_RCPT_DEFERRED, MS_STAGE_LOCAL, 0, "4.3.0", scan_err.msg);
		ms_outcome_set(&m->out, MS_STAGE_LOCAL, 0, "4.3.0", scan_err.msg);
		s->settled = 1;
		report_done(s);
		return ms_error_set(err, scan, "%s", scan_err.msg);
	}
	if (s->broken || !s->have_io) {
		fail_all(s, s->broken ? s->fatal.status : MS_ERR_CLOSED,
		         s->broken ? s->fatal.msg : "session is not connected");
		return ms_error_set(err, MS_ERR_CLOSED, "%s", s->fatal.msg);
	}
	ms_status st = s->live >= s->o.window ? run(s, until_window) : MS_OK;
	if (st != MS_OK)
		return ms_error_set(err, st, "%s", s->fatal.msg);
	return MS_OK;
}

ms_status ms_smtp_progress(ms_smtp *s, ms_error *err)
{
	if (s->broken || !s->have_io || s->state != S_READY)
		return MS_OK;
	/* A few non-waiting turns: replies that came in may let more go out. */
	for (int i = 0; i < 8; i++) {
		uint64_t in = s->io.bytes_in, out = s->io.bytes_out;
		int done = 0;
		ms_status st = turn(s, until_progress, &done);
		if (st != MS_OK)
			return ms_error_set(err, st, "%s", s->fatal.msg);
		if (done || (in == s->io.bytes_in && out == s->io.bytes_out))
			break;
	}
	return MS_OK;
}

ms_status ms_smtp_flush(ms_smtp *s, ms_error *err)
{
	if (s->broken) {
		fail_all(s, s->fatal.status, s->fatal.msg);
		return ms_error_set(err, s->fatal.status, "%s", s->fatal.msg);
	}
	ms_status st = run(s, until_flushed);
	if (st != MS_OK)
		return ms_error_set(err, st, "%s", s->fatal.msg);
	return MS_OK;
}

ms_status ms_smtp_quit(ms_smtp *s, ms_error *err)
{
	s->closing = 1;
	ms_status st = ms_smtp_flush(s, err);
	if (st == MS_OK && !s->broken && s->have_io) {
		if (!s->quit_queued) {
			fill_output(s);
			if (!s->quit_queued && send_line(s, "QUIT") == MS_OK &&
			    push_expect(s, EX_QUIT, NULL, 0) == MS_OK)
				s->quit_queued = 1;
		}
		run(s, until_quit);
	}
	if (s->have_io) {
		ms_io_close(&s->io);
		s->have_io = 0;
	}
	s->state = S_CLOSED;
	return st;
}

const ms_smtp_caps *ms_smtp_get_caps(const ms_smtp *s) { return &s->caps; }
const ms_smtp_stats *ms_smtp_get_stats(const ms_smtp *s) { return &s->st; }
const char *ms_smtp_greeting(const ms_smtp *s) { return s->greeting ? s->greeting : ""; }
const ms_tls_info *ms_smtp_tls(const ms_smtp *s) { return s->tls_active ? &s->tls : NULL; }
const char *ms_smtp_auth_mech(const ms_smtp *s)
{
	return s->authenticated && s->sasl ? ms_sasl_mech(s->sasl) : NULL;
}

void ms_smtp_set_result(ms_smtp *s, ms_smtp_result_fn fn, void *ctx)
{
	s->o.on_result = fn;
	s->o.ctx = ctx;
}

void ms_smtp_set_transcript(ms_smtp *s, ms_transcript *tx)
{
	s->o.transcript = tx;
}

int ms_smtp_idle_fd(const ms_smtp *s)
{
	if (s->broken || s->state != S_READY || s->live || s->flen || s->closing || !s->have_io ||
	    (s->io.tr.pending && s->io.tr.pending(s->io.tr.ctx)))
		return -1;
	return s->io.fd;
}

int ms_smtp_reusable(const ms_smtp *s)
{
	int fd = ms_smtp_idle_fd(s);
	if (fd < 0)
		return 0;
	/* Idle, nothing outstanding: anything readable now is the server
	 * closing (EOF, or a 421 before it hangs up), so the session is not
	 * to be used again. */
	struct pollfd pf = { .fd = fd, .events = POLLIN };
	return poll(&pf, 1, 0) == 0;
}

unsigned ms_smtp_quirks(const ms_smtp *s) { return s->quirks; }
const char *ms_smtp_shape(const ms_smtp *s) { return s->shape; }

int ms_smtp_failed(const ms_smtp *s, ms_error *err)
{
	if (s->broken && err)
		*err = s->fatal;
	return s->broken;
}

const char *ms_smtp_peer(const ms_smtp *s)
{
	return s->peer_addr;
}
