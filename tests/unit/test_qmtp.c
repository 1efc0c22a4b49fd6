/*
 * test_qmtp.c - QMTP packages, replies, and the engine against a scripted
 * spec-conformant (or misbehaving) peer.
 *
 * The peer is a forked child on a socketpair (scripted.h's plumbing): steps[0] is sent at once;
 * after each complete package it reads, it sends the next step verbatim (a
 * step may hold any number of reply netstrings, or garbage); a step ending
 * in "#CLOSE" closes after sending; when the steps run out it says nothing.
 * Everything the client sent is captured and compared with the packages
 * ms_qmtp_package() builds, byte for byte.  Sessions run with the client's
 * reads capped at 1, 2, 3, 5, 7 bytes and unbounded (H1).
 */
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "mailspool/io.h"
#include "mailspool/message.h"
#include "mailspool/netstring.h"
#include "mailspool/qmtp.h"
#include "scripted.h"

static const size_t chunks[] = { 1, 2, 3, 5, 7, 0 };
#define NCHUNKS (sizeof chunks / sizeof chunks[0])

/* ---- the scripted QMTP peer ------------------------------------------- */

/* Bytes of one complete package at the start of p[0..n), or 0. */
static size_t package_len(const char *p, size_t n)
{
	size_t off = 0;
	for (int k = 0; k < 3; k++) {
		const char *pl;
		size_t len, used;
		if (ms_ns_parse(p + off, n - off, SIZE_MAX / 4, &pl, &len, &used, NULL) != MS_NS_OK)
			return 0;
		off += used;
	}
	return off;
}

static void peer_child(int fd, int cap, const char *const *steps)
{
	ms_buf in, captured;
	ms_buf_init(&in, 0);
	ms_buf_init(&captured, 0);
	size_t i = 0;
	int closed = steps[0] && sc_step(fd, steps[i++]);
	char buf[65536];
	while (!closed) {
		ssize_t n = read(fd, buf, sizeof buf);
		if (n <= 0)
			break;
		ms_buf_append(&captured, buf, (size_t)n);
		ms_buf_append(&in, buf, (size_t)n);
		size_t k;
		while (!closed && (k = package_len(ms_buf_ptr(&in), ms_buf_avail(&in))) > 0) {
			ms_buf_consume(&in, k);
			if (steps[i] && sc_step(fd, steps[i++]))
				closed = 1;
		}
	}
	close(fd);
	sc_write_all(cap, ms_buf_ptr(&captured), ms_buf_avail(&captured));
	close(cap);
	_exit(0);
}

/* ---- helpers ----------------------------------------------------------- */

#define mk sc_message

typedef struct session {
	char *want;      /* the packages of the messages, built before the run */
	size_t wantlen;
	char *wire;
	size_t wirelen;
	ms_qmtp_stats st;
	int failed;
	ms_error fatal;
	int reported;
	int64_t ms;
} session;

static void on_res(void *ctx, ms_message *m)
{
	(void)m;
	((session *)ctx)->reported++;
}

static void fast_opts(ms_qmtp_opts *o)
{
	ms_qmtp_opts_default(o);
	o->reply_timeout_ms = o->write_timeout_ms = 3000;
}

static session run(const char *const *steps, ms_qmtp_opts *o, ms_message **msgs, size_t n,
                   size_t chunk)
{
	scripted p;
	session s = { 0 };
	ms_error err;
	sc_start_with(&p, peer_child, steps);
	o->read_chunk = chunk;
	o->on_result = on_res;
	o->ctx = &s;
	ms_buf want;
	ms_buf_init(&want, 0);
	int buildable = 1; /* not when the test makes the data unreadable */
	for (size_t i = 0; i < n && buildable; i++)
		buildable = ms_qmtp_package(msgs[i], o->encoding, &want, NULL) == MS_OK;
	s.wantlen = buildable ? ms_buf_avail(&want) : SIZE_MAX;
	s.want = ms_buf_steal(&want);
	int64_t t0 = ms_now_ms();
	ms_qmtp *q = ms_qmtp_new(o, &err);
	assert_non_null(q);
	assert_int_equal(ms_qmtp_attach(q, p.client_fd, &err), MS_OK);
	for (size_t i = 0; i < n; i++)
		ms_qmtp_submit(q, msgs[i], &err);
	ms_qmtp_disconnect(q, &err);
	s.ms = ms_now_ms() - t0;
	s.st = *ms_qmtp_get_stats(q);
	s.failed = ms_qmtp_failed(q, &s.fatal);
	ms_qmtp_free(q);
	s.wire = sc_finish(&p, &s.wirelen);
	assert_int_equal(s.reported, (int)n); /* every message reported exactly once */
	return s;
}

/* The client sent exactly the packages of its messages. */
static void expect_wire(const session *s)
{
	size_t k = 0;
	while (k < s->wirelen && k < s->wantlen && s->wire[k] == s->want[k])
		k++;
	if (k != s->wirelen || k != s->wantlen)
		fail_msg("wire differs at byte %zu (sent %zu, want %zu): \"%.40s\" vs \"%.40s\"", k,
		         s->wirelen, s->wantlen, s->wire + k, s->want + k);
}

static void session_free(session *s)
{
	free(s->wire);
	free(s->want);
}

static void expect_rcpt(const ms_message *m, size_t i, ms_rcpt_state st, ms_stage stage,
                        const char *enh, const char *text_part)
{
	const ms_rcpt *r = &m->rcpts[i];
	const char *t = r->out.text ? r->out.text : "";
	if (r->state != st || r->out.stage != stage || strcmp(r->out.enh, enh) ||
	    (text_part && !strstr(t, text_part)))
		fail_msg("rcpt %zu <%s>: got %s/%s/%s (%s), want %s/%s/%s (%s)", i, r->addr,
		         ms_rcpt_state_name(r->state), ms_stage_name(r->out.stage), r->out.enh, t,
		         ms_rcpt_state_name(st), ms_stage_name(stage), enh, text_part ? text_part : "");
}

/* ---- packages ------------------------------------------------------------ */

typedef struct pcase {
	const char *body;
	ms_qmtp_encoding enc;
	const char *want; /* the whole package for sender a@b.test, rcpts x@y.test,z@y.test */
} pcase;

#define ENV "8:a@b.test,22:8:x@y.test,8:z@y.test,,"
static const pcase pcases[] = {
	/* Q3: LF data is declared "\012" and sent unchanged. */
	{ "Subject: a\n\nbody\n", MS_QMTP_ENC_AUTO, "18:\012Subject: a\n\nbody\n," ENV },
	/* CRLF data is declared "\015", also unchanged. */
	{ "Subject: a\r\n\r\nbody\r\n", MS_QMTP_ENC_AUTO, "21:\015Subject: a\r\n\r\nbody\r\n," ENV },
	/* Mixed: "\015" (the server turns CRLF into LF and keeps bare LF). */
	{ "a\r\nb\nc", MS_QMTP_ENC_AUTO, "7:\015a\r\nb\nc," ENV },
	/* No line end at all, a bare CR: LF encoding, bytes as they are. */
	{ "x", MS_QMTP_ENC_AUTO, "2:\012x," ENV },
	{ "a\rb", MS_QMTP_ENC_AUTO, "4:\012a\rb," ENV },
	/* A trailing LF means an empty last line: nothing is added. */
	{ "a\n\n", MS_QMTP_ENC_AUTO, "4:\012a\n\n," ENV },
	/* Dots and long lines mean nothing to QMTP: no stuffing. */
	{ ".\n..\n", MS_QMTP_ENC_AUTO, "6:\012.\n..\n," ENV },
	/* Forced encodings only change the declaration. */
	{ "a\r\n", MS_QMTP_ENC_LF, "4:\012a\r\n," ENV },
	{ "a\n", MS_QMTP_ENC_CRLF, "3:\015a\n," ENV },
	/* TO_LF drops the CR of each CRLF (only): bare CRs and LFs stay. */
	{ "a\r\nb\r\n", MS_QMTP_ENC_TO_LF, "5:\012a\nb\n," ENV },
	{ "a\r\rb\r", MS_QMTP_ENC_TO_LF, "6:\012a\r\rb\r," ENV },
	{ "a\r\r\n\nb\r\n", MS_QMTP_ENC_TO_LF, "7:\012a\r\n\nb\n," ENV },
	{ "a\nb", MS_QMTP_ENC_TO_LF, "4:\012a\nb," ENV },
	{ "", MS_QMTP_ENC_AUTO, "1:\012," ENV },
};

static void test_packages(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof pcases / sizeof pcases[0]; i++) {
		const pcase *c = &pcases[i];
		ms_error err;
		ms_message *m = ms_message_new("a@b.test", &err);
		ms_message_add_rcpt(m, "x@y.test", &err);
		ms_message_add_rcpt(m, "z@y.test", &err);
		ms_message_add_mem(m, c->body, strlen(c->body), &err);
		assert_int_equal(ms_message_scan(m, &err), MS_OK);
		ms_buf b;
		ms_buf_init(&b, 0);
		assert_int_equal(ms_qmtp_package(m, c->enc, &b, &err), MS_OK);
		size_t wl = strlen(c->want);
		if (ms_buf_avail(&b) != wl || memcmp(ms_buf_ptr(&b), c->want, wl))
			fail_msg("package %zu differs (got %zu bytes, want %zu)", i, ms_buf_avail(&b), wl);
		assert_int_equal(ms_qmtp_package_size(m, c->enc), wl);
		ms_buf_free(&b);
		ms_message_free(m);
	}
}

static void test_package_envelopes(void **state)
{
	(void)state;
	ms_error err;
	/* Q2: the null sender is "0:,"; a quoted local part goes unquoted, as
	 * qmail carries addresses; recipients already final are left out. */
	ms_message *m = ms_message_new("", &err);
	ms_message_add_rcpt(m, "\"john smith\"@y.test", &err);
	ms_message_add_rcpt(m, "done@y.test", &err);
	ms_message_add_rcpt(m, "\"a\\\"b\"@y.test", &err);
	m->rcpts[1].state = MS_RCPT_DELIVERED;
	ms_message_add_mem(m, "x\n", 2, &err);
	ms_message_scan(m, &err);
	ms_buf b;
	ms_buf_init(&b, 0);
	assert_int_equal(ms_qmtp_package(m, MS_QMTP_ENC_AUTO, &b, &err), MS_OK);
	const char *want = "3:\012x\n,0:,35:17:john smith@y.test,10:a\"b@y.test,,";
	assert_int_equal(ms_buf_avail(&b), strlen(want));
	assert_memory_equal(ms_buf_ptr(&b), want, strlen(want));
	assert_int_equal(ms_qmtp_package_size(m, MS_QMTP_ENC_AUTO), strlen(want));
	ms_buf_free(&b);
	ms_message_free(m);
}

/* ---- replies ------------------------------------------------------------ */

typedef struct rcase {
	const char *in;
	size_t len;
	int ok;
	ms_rcpt_state state;
	const char *enh, *text;
} rcase;

static const rcase rcases[] = {
	{ "Kok", 0, 1, MS_RCPT_DELIVERED, "", "ok" },
	{ "K2.6.0 Message accepted.", 0, 1, MS_RCPT_DELIVERED, "2.6.0", "2.6.0 Message accepted." },
	{ "Zmailbox full (#4.2.2)", 0, 1, MS_RCPT_DEFERRED, "4.2.2", "mailbox full (#4.2.2)" },
	{ "DSorry, no mailbox here by that name. (#5.1.1)", 0, 1, MS_RCPT_FAILED, "5.1.1",
	  "Sorry, no mailbox here by that name. (#5.1.1)" },
	{ "D(#5.7.1) refused", 0, 1, MS_RCPT_FAILED, "5.7.1", "(#5.7.1) refused" },
	/* A code that contradicts the status byte is ignored. */
	{ "Dbad (#4.1.1)", 0, 1, MS_RCPT_FAILED, "", "bad (#4.1.1)" },
	{ "K5.0.0 odd", 0, 1, MS_RCPT_DELIVERED, "", "5.0.0 odd" },
	/* Not a code: (#...) malformed. */
	{ "Zx (#4.1) (#4.01.1) (#4.3.1", 0, 1, MS_RCPT_DEFERRED, "", NULL },
	{ "K", 0, 1, MS_RCPT_DELIVERED, "", "" },
	/* Text starting with SP is reserved for extensions: kept as text. */
	{ "K extension", 0, 1, MS_RCPT_DELIVERED, "", " extension" },
	/* Control bytes are sanitised. */
	{ "Zline1\r\nline2\0end", 17, 1, MS_RCPT_DEFERRED, "", "line1  line2 end" },
	{ "", 0, 0, 0, NULL, NULL },
	{ "Xwhat", 0, 0, 0, NULL, NULL },
	{ "kok", 0, 0, 0, NULL, NULL },
	{ "250 ok", 0, 0, 0, NULL, NULL },
};

static void test_replies(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof rcases / sizeof rcases[0]; i++) {
		const rcase *c = &rcases[i];
		ms_qmtp_reply r;
		ms_error err;
		ms_status st = ms_qmtp_parse_reply(c->in, c->len ? c->len : strlen(c->in), &r, &err);
		if ((st == MS_OK) != c->ok)
			fail_msg("reply %zu: got %d", i, st);
		if (!c->ok) {
			assert_int_equal(err.status, MS_ERR_PROTOCOL);
			continue;
		}
		assert_int_equal(r.state, c->state);
		assert_string_equal(r.enh, c->enh);
		if (c->text)
			assert_string_equal(r.text, c->text);
	}
}

/* ---- the engine ------------------------------------------------------------- */

/* Three packages streamed, one reply per recipient (the spec), replies
 * split at every byte. */
static void test_stream_per_recipient(void **state)
{
	(void)state;
	for (size_t c = 0; c < NCHUNKS; c++) {
		ms_message *msgs[3] = {
			mk("a@b.test", "x@y.test,bad@y.test", "Subject: 1\n\none\n", 0),
			mk("", "q@y.test", "Subject: 2\r\n\r\ntwo\r\n", 0),
			mk("a@b.test", "x@y.test,z@y.test", "Subject: 3\n\nthree\n", 0),
		};
		const char *steps[] = { "",
			                    "24:K2.6.0 Message accepted.,27:DNo such user here (#5.1.1),",
			                    "19:Zdisk full (#4.3.1),", "2:Ka,2:Kb,", NULL };
		ms_qmtp_opts o;
		fast_opts(&o);
		session s = run(steps, &o, msgs, 3, chunks[c]);
		expect_wire(&s);
		if (s.failed)
		fail_msg("session failed: %s", s.fatal.msg);
		expect_rcpt(msgs[0], 0, MS_RCPT_DELIVERED, MS_STAGE_PACKAGE, "2.6.0", "accepted");
		expect_rcpt(msgs[0], 1, MS_RCPT_FAILED, MS_STAGE_PACKAGE, "5.1.1", "No such user");
		expect_rcpt(msgs[1], 0, MS_RCPT_DEFERRED, MS_STAGE_PACKAGE, "4.3.1", "disk full");
		expect_rcpt(msgs[2], 0, MS_RCPT_DELIVERED, MS_STAGE_PACKAGE, "", "a");
		expect_rcpt(msgs[2], 1, MS_RCPT_DELIVERED, MS_STAGE_PACKAGE, "", "b");
		assert_int_equal(s.st.packages, 3);
		assert_int_equal(s.st.replies, 5);
		assert_int_equal(s.st.connections, 1);
		/* The packages go out back to back: one wait for the batch,
		 * a few more only where replies trickle in. */
		assert_true(s.st.round_trips >= 1 && s.st.round_trips <= 3);
		for (size_t i = 0; i < 3; i++)
			ms_message_free(msgs[i]);
		session_free(&s);
	}
}

/* A server that answers once per package (mailfront 2.12): with the
 * per-package setting the one reply covers every recipient. */
static void test_per_package_replies(void **state)
{
	(void)state;
	for (size_t c = 0; c < NCHUNKS; c++) {
		ms_message *msgs[2] = {
			mk("a@b.test", "x@y.test,z@y.test", "one\n", 0),
			mk("a@b.test", "x@y.test,z@y.test,w@y.test", "two\n", 0),
		};
		const char *steps[] = { "", "24:K2.6.0 Message accepted.,", "12:Dno (#5.7.1),", NULL };
		ms_qmtp_opts o;
		fast_opts(&o);
		o.replies = MS_QMTP_PER_PACKAGE;
		session s = run(steps, &o, msgs, 2, chunks[c]);
		expect_wire(&s);
		if (s.failed)
		fail_msg("session failed: %s", s.fatal.msg);
		for (size_t i = 0; i < 2; i++)
			expect_rcpt(msgs[0], i, MS_RCPT_DELIVERED, MS_STAGE_PACKAGE, "2.6.0", "accepted");
		for (size_t i = 0; i < 3; i++)
			expect_rcpt(msgs[1], i, MS_RCPT_FAILED, MS_STAGE_PACKAGE, "5.7.1", "no");
		for (size_t i = 0; i < 2; i++)
			ms_message_free(msgs[i]);
		session_free(&s);
	}
}

/* The same server with per-recipient counting: the missing reply ends in
 * the reply deadline, not a hang; what was answered keeps its answer. */
static void test_missing_reply_times_out(void **state)
{
	(void)state;
	ms_message *m = mk("a@b.test", "x@y.test,z@y.test", "one\n", 0);
	const char *steps[] = { "", "5:Kgood,", NULL };
	ms_qmtp_opts o;
	fast_opts(&o);
	o.reply_timeout_ms = 300;
	session s = run(steps, &o, &m, 1, 0);
	assert_true(s.failed);
	assert_int_equal(s.fatal.status, MS_ERR_TIMEOUT);
	assert_true(s.ms >= 300 && s.ms < 2500);
	expect_rcpt(m, 0, MS_RCPT_DELIVERED, MS_STAGE_PACKAGE, "", "good");
	/* Q7: sent in full and not answered: deferred, maybe delivered. */
	expect_rcpt(m, 1, MS_RCPT_DEFERRED, MS_STAGE_SESSION, "4.4.2", "more than once");
	ms_message_free(m);
	session_free(&s);
}

/* H12: misbehaving peers.  Each ends the session with the right outcome
 * for every recipient, and no hang. */
typedef struct hcase {
	const char *name;
	const char *steps[4];
	ms_status fatal;
	ms_rcpt_state r0, r1; /* message 1's two recipients */
	ms_rcpt_state m2;     /* message 2's recipient */
} hcase;

static const hcase hcases[] = {
	{ "status byte not K/Z/D", { "", "2:Ka,2:Xb,", NULL }, MS_ERR_PROTOCOL, MS_RCPT_DELIVERED,
	  MS_RCPT_DEFERRED, MS_RCPT_DEFERRED },
	{ "leading zero", { "", "02:Ka,", NULL }, MS_ERR_PROTOCOL, MS_RCPT_DEFERRED,
	  MS_RCPT_DEFERRED, MS_RCPT_DEFERRED },
	{ "missing comma", { "", "2:Ka;", NULL }, MS_ERR_PROTOCOL, MS_RCPT_DEFERRED,
	  MS_RCPT_DEFERRED, MS_RCPT_DEFERRED },
	{ "huge length", { "", "99999999999:K", NULL }, MS_ERR_PROTOCOL, MS_RCPT_DEFERRED,
	  MS_RCPT_DEFERRED, MS_RCPT_DEFERRED },
	{ "empty reply", { "", "0:,", NULL }, MS_ERR_PROTOCOL, MS_RCPT_DEFERRED, MS_RCPT_DEFERRED,
	  MS_RCPT_DEFERRED },
	{ "SMTP banner", { "220 hello\r\n", NULL }, MS_ERR_PROTOCOL, MS_RCPT_DEFERRED,
	  MS_RCPT_DEFERRED, MS_RCPT_DEFERRED },
	{ "close after one reply", { "", "2:Ka,#CLOSE", NULL }, MS_ERR_CLOSED, MS_RCPT_DELIVERED,
	  MS_RCPT_DEFERRED, MS_RCPT_DEFERRED },
	{ "close mid reply", { "", "2:Ka,2:K#CLOSE", NULL }, MS_ERR_CLOSED, MS_RCPT_DELIVERED,
	  MS_RCPT_DEFERRED, MS_RCPT_DEFERRED },
	{ "silence", { "", NULL }, MS_ERR_TIMEOUT, MS_RCPT_DEFERRED, MS_RCPT_DEFERRED,
	  MS_RCPT_DEFERRED },
	{ "answers message 1, close before message 2's reply",
	  { "", "2:Ka,2:Kb,", "#CLOSE", NULL }, MS_ERR_CLOSED, MS_RCPT_DELIVERED, MS_RCPT_DELIVERED,
	  MS_RCPT_DEFERRED },
};

static void test_hostile_peers(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof hcases / sizeof hcases[0]; i++) {
		const hcase *h = &hcases[i];
		for (size_t c = 0; c < NCHUNKS; c++) {
			ms_message *msgs[2] = { mk("a@b.test", "x@y.test,z@y.test", "one\n", 0),
				                    mk("a@b.test", "w@y.test", "two\n", 0) };
			ms_qmtp_opts o;
			fast_opts(&o);
			o.reply_timeout_ms = 300;
			session s = run(h->steps, &o, msgs, 2, chunks[c]);
			if (!s.failed || s.fatal.status != h->fatal)
				fail_msg("%s (chunk %zu): failed=%d status %d (%s)", h->name, chunks[c],
				         s.failed, s.fatal.status, s.fatal.msg);
			if (msgs[0]->rcpts[0].state != h->r0 || msgs[0]->rcpts[1].state != h->r1 ||
			    msgs[1]->rcpts[0].state != h->m2)
				fail_msg("%s (chunk %zu): got %s %s %s", h->name, chunks[c],
				         ms_rcpt_state_name(msgs[0]->rcpts[0].state),
				         ms_rcpt_state_name(msgs[0]->rcpts[1].state),
				         ms_rcpt_state_name(msgs[1]->rcpts[0].state));
			assert_true(s.ms < 2500);
			for (size_t k = 0; k < 2; k++)
				ms_message_free(msgs[k]);
			session_free(&s);
		}
	}
}

/* Q5: a reply that arrives while the package is still being written answers
 * nothing we said: abort, and nothing counts as sent. */
static void test_early_reply(void **state)
{
	(void)state;
	size_t big = 8u << 20;
	char *body = malloc(big);
	memset(body, 'x', big);
	for (size_t i = 99; i < big; i += 100)
		body[i] = '\n';
	ms_message *m = mk("a@b.test", "x@y.test", body, big);
	const char *steps[] = { "2:Kz,", NULL };
	ms_qmtp_opts o;
	fast_opts(&o);
	session s = run(steps, &o, &m, 1, 0);
	assert_true(s.failed);
	assert_int_equal(s.fatal.status, MS_ERR_PROTOCOL);
	assert_non_null(strstr(s.fatal.msg, "before the whole package was sent"));
	expect_rcpt(m, 0, MS_RCPT_DEFERRED, MS_STAGE_SESSION, "4.4.2", "not sent");
	assert_true(s.wirelen < big); /* closed mid-package: the server throws it away (Q8) */
	ms_message_free(m);
	free(body);
	session_free(&s);
}

/* More replies than recipients: the extra one arrives while the next
 * package is still being written, so it cannot be its reply (Q5). */
static void test_extra_reply(void **state)
{
	(void)state;
	size_t big = 8u << 20;
	char *body = malloc(big);
	memset(body, 'x', big);
	ms_message *msgs[2] = { mk("a@b.test", "x@y.test", "one\n", 0),
		                    mk("a@b.test", "w@y.test", body, big) };
	const char *steps[] = { "", "2:Ka,2:Kb,", NULL };
	ms_qmtp_opts o;
	fast_opts(&o);
	session s = run(steps, &o, msgs, 2, 0);
	assert_true(s.failed);
	assert_int_equal(s.fatal.status, MS_ERR_PROTOCOL);
	expect_rcpt(msgs[0], 0, MS_RCPT_DELIVERED, MS_STAGE_PACKAGE, "", "a");
	expect_rcpt(msgs[1], 0, MS_RCPT_DEFERRED, MS_STAGE_SESSION, "4.4.2", "not sent");
	for (size_t k = 0; k < 2; k++)
		ms_message_free(msgs[k]);
	free(body);
	session_free(&s);
}

/* A file is streamed in constant memory with its length announced first;
 * a file that shrinks under us ends the connection mid-package (Q8). */
static void test_file_streaming(void **state)
{
	(void)state;
	char path[] = "/tmp/test_qmtp.XXXXXX";
	int fd = mkstemp(path);
	assert_true(fd >= 0);
	unlink(path);
	size_t size = 3u << 20;
	char line[80];
	memset(line, 'y', sizeof line);
	line[sizeof line - 1] = '\n';
	for (size_t w = 0; w < size; w += sizeof line)
		assert_int_equal(write(fd, line, sizeof line), (ssize_t)sizeof line);
	ms_error err;
	ms_message *m = ms_message_new("a@b.test", &err);
	ms_message_add_rcpt(m, "x@y.test", &err);
	ms_message_add_fd(m, fd, 0, UINT64_MAX, &err);
	ms_message_scan(m, &err);
	const char *steps[] = { "", "2:Kk,", NULL };
	ms_qmtp_opts o;
	fast_opts(&o);
	session s = run(steps, &o, &m, 1, 0);
	if (s.failed)
		fail_msg("session failed: %s", s.fatal.msg);
	expect_wire(&s);
	expect_rcpt(m, 0, MS_RCPT_DELIVERED, MS_STAGE_PACKAGE, "", "k");
	session_free(&s);
	/* Now the file shrinks after it was measured. */
	m->rcpts[0].state = MS_RCPT_PENDING;
	m->done = 0;
	assert_int_equal(ftruncate(fd, 1000), 0);
	s = run(steps, &o, &m, 1, 0);
	assert_true(s.failed);
	assert_int_equal(s.fatal.status, MS_ERR_IO);
	expect_rcpt(m, 0, MS_RCPT_DEFERRED, MS_STAGE_SESSION, "4.4.2", "shrank");
	assert_true(s.wirelen < 1100);
	session_free(&s);
	ms_message_free(m);
	close(fd);
}

/* A submit to a session that has failed reports at once; a message with no
 * recipients is refused without a result. */
/* TO_LF over the streaming engine: CRLF lines sent as LF lines, with CRLFs
 * straddling every 64 KiB chunk boundary (a CR held until the next read),
 * a bare CR at the very end, and the wire equal to ms_qmtp_package's. */
static void test_stream_to_lf(void **state)
{
	(void)state;
	size_t size = 3u << 20;
	char *data = malloc(size);
	assert_non_null(data);
	for (size_t i = 0; i < size; i++)
		data[i] = (i % 65536 == 65535) ? '\r' : (i % 65536 == 0 && i) ? '\n' : 'a' + (char)(i % 26);
	for (size_t i = 100; i + 1 < size; i += 997) {
		data[i] = '\r';
		data[i + 1] = '\n';
	}
	data[size - 1] = '\r';
	ms_error err;
	ms_message *m = ms_message_new("a@b.test", &err);
	ms_message_add_rcpt(m, "x@y.test", &err);
	ms_message_add_mem(m, data, size, &err);
	ms_message_scan(m, &err);
	assert_true(m->stats.crlf > 3000);
	const char *steps[] = { "", "2:Kk,", NULL };
	ms_qmtp_opts o;
	fast_opts(&o);
	o.encoding = MS_QMTP_ENC_TO_LF;
	static const size_t reads[] = { 0, 7 };
	for (size_t c = 0; c < 2; c++) {
		m->rcpts[0].state = MS_RCPT_PENDING;
		m->done = 0;
		session s = run(steps, &o, &m, 1, reads[c]);
		if (s.failed)
			fail_msg("session failed: %s", s.fatal.msg);
		expect_wire(&s);
		/* No CRLF left on the wire, and the length is the data's less one
		 * octet per CRLF. */
		assert_null(memmem(s.wire, s.wirelen, "\r\n", 2));
		char pre[32];
		int k = snprintf(pre, sizeof pre, "%llu:\012",
		                 (unsigned long long)(size - m->stats.crlf + 1));
		assert_memory_equal(s.wire, pre, (size_t)k);
		expect_rcpt(m, 0, MS_RCPT_DELIVERED, MS_STAGE_PACKAGE, "", "k");
		session_free(&s);
	}
	ms_message_free(m);
	free(data);
}

static void test_submit_after_failure(void **state)
{
	(void)state;
	ms_message *msgs[2] = { mk("a@b.test", "x@y.test", "one\n", 0),
		                    mk("a@b.test", "x@y.test", "two\n", 0) };
	const char *steps[] = { "#CLOSE", NULL };
	ms_qmtp_opts o;
	fast_opts(&o);
	session s = run(steps, &o, msgs, 2, 0);
	assert_true(s.failed);
	expect_rcpt(msgs[1], 0, MS_RCPT_DEFERRED, MS_STAGE_SESSION, "4.4.2", NULL);
	session_free(&s);
	ms_error err;
	ms_qmtp *q = ms_qmtp_new(&o, &err);
	ms_message *none = ms_message_new("a@b.test", &err);
	assert_int_equal(ms_qmtp_submit(q, none, &err), MS_ERR_USAGE);
	ms_message_free(none);
	ms_qmtp_free(q);
	for (size_t i = 0; i < 2; i++)
		ms_message_free(msgs[i]);
}

/* Net::QMTP's calls: connect to host and port, send one message at a time
 * and read its replies, reconnect, disconnect.  A forked TCP peer on
 * 127.0.0.1 serves two connections in turn. */
static void test_connect_reconnect(void **state)
{
	(void)state;
	int ls = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	assert_int_equal(bind(ls, (struct sockaddr *)&sa, sizeof sa), 0);
	assert_int_equal(listen(ls, 4), 0);
	socklen_t sl = sizeof sa;
	getsockname(ls, (struct sockaddr *)&sa, &sl);
	char port[16];
	snprintf(port, sizeof port, "%u", ntohs(sa.sin_port));
	signal(SIGPIPE, SIG_IGN);
	pid_t pid = fork();
	if (pid == 0) {
		for (int k = 0; k < 2; k++) {
			int c = accept(ls, NULL, NULL);
			int devnull = open("/dev/null", O_WRONLY);
			const char *steps[] = { "", k ? "7:Ksecond," : "6:Kfirst,", NULL };
			if (fork() == 0)
				peer_child(c, devnull, steps);
			close(c);
			close(devnull);
		}
		while (wait(NULL) > 0)
			;
		_exit(0);
	}
	close(ls);
	ms_qmtp_opts o;
	fast_opts(&o);
	ms_error err;
	ms_qmtp *q = ms_qmtp_new(&o, &err);
	assert_int_equal(ms_qmtp_connect(q, "127.0.0.1", port, &err), MS_OK);
	ms_message *m1 = mk("", "x@y.test", "one\n", 0), *m2 = mk("a@b.test", "x@y.test", "two\n", 0);
	assert_int_equal(ms_qmtp_send(q, m1, &err), MS_OK);
	expect_rcpt(m1, 0, MS_RCPT_DELIVERED, MS_STAGE_PACKAGE, "", "first");
	assert_int_equal(ms_qmtp_reconnect(q, &err), MS_OK);
	assert_int_equal(ms_qmtp_send(q, m2, &err), MS_OK);
	expect_rcpt(m2, 0, MS_RCPT_DELIVERED, MS_STAGE_PACKAGE, "", "second");
	assert_int_equal(ms_qmtp_disconnect(q, &err), MS_OK);
	assert_int_equal(ms_qmtp_get_stats(q)->connections, 2);
	assert_int_equal(ms_qmtp_get_stats(q)->packages, 2);
	assert_false(ms_qmtp_failed(q, NULL));
	ms_qmtp_free(q);
	ms_message_free(m1);
	ms_message_free(m2);
	waitpid(pid, NULL, 0);
	/* Nothing listening: a connect error, reported as such. */
	q = ms_qmtp_new(&o, &err);
	assert_int_equal(ms_qmtp_connect(q, "127.0.0.1", port, &err), MS_ERR_CONNECT);
	ms_qmtp_free(q);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_packages),
		cmocka_unit_test(test_package_envelopes),
		cmocka_unit_test(test_replies),
		cmocka_unit_test(test_stream_per_recipient),
		cmocka_unit_test(test_per_package_replies),
		cmocka_unit_test(test_missing_reply_times_out),
		cmocka_unit_test(test_hostile_peers),
		cmocka_unit_test(test_early_reply),
		cmocka_unit_test(test_extra_reply),
		cmocka_unit_test(test_file_streaming),
		cmocka_unit_test(test_stream_to_lf),
		cmocka_unit_test(test_submit_after_failure),
		cmocka_unit_test(test_connect_reconnect),
	};
	return cmocka_run_group_tests_name("qmtp", tests, NULL, NULL);
}
