/*
 * test_smtp.c - the SMTP engine against scripted replies.
 *
 * Every scenario runs with the client's reads capped at 1, 2, 3, 5, 7 bytes
 * and unbounded, so replies are split at every byte (PROTOCOL-RULES H1), and
 * checks both the per-recipient outcomes and the exact bytes the client sent.
 */
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "mailspool/io.h"
#include "mailspool/message.h"
#include "mailspool/smtp.h"
#include "scripted.h"

static const size_t chunks[] = { 1, 2, 3, 5, 7, 0 };
#define NCHUNKS (sizeof chunks / sizeof chunks[0])

#define GREET "220 scripted ESMTP\r\n"
#define EHLO_PIPE "250-scripted\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 ENHANCEDSTATUSCODES\r\n"
#define EHLO_PLAIN "250-scripted\r\n250 8BITMIME\r\n"
#define OK "250 2.0.0 ok\r\n"
#define GO "354 go ahead\r\n"
#define BYE "221 bye\r\n"

typedef struct outcome_log {
	int reported;
} outcome_log;

static void on_res(void *ctx, ms_message *m)
{
	(void)m;
	((outcome_log *)ctx)->reported++;
}

static ms_message *mk(const char *from, const char *rcpts, const char *body)
{
	return sc_message(from, rcpts, body, 0);
}

typedef struct result {
	char *wire;
	size_t wirelen;
	ms_smtp_stats st;
	ms_status attach;
} result;

/* Run one session over the script and return what the client sent. */
static result run(const char *const *steps, ms_smtp_opts *o, ms_message **msgs, size_t n,
                  size_t chunk)
{
	scripted sc;
	outcome_log log = { 0 };
	result r = { 0 };
	ms_error err;
	sc_start(&sc, steps);
	o->read_chunk = chunk;
	o->on_result = on_res;
	o->ctx = &log;
	o->helo = "client.test";
	ms_smtp *s = ms_smtp_new(o, &err);
	assert_non_null(s);
	r.attach = ms_smtp_attach(s, sc.client_fd, &err);
	/* The greeting's text is kept for the caller. */
	if (steps[0] && !strncmp(steps[0], "220 ", 4))
		assert_int_equal(strncmp(ms_smtp_greeting(s), steps[0] + 4, strlen(steps[0]) - 6), 0);
	for (size_t i = 0; i < n; i++)
		ms_smtp_submit(s, msgs[i], &err);
	ms_smtp_quit(s, &err);
	r.st = *ms_smtp_get_stats(s);
	ms_smtp_free(s);
	r.wire = sc_finish(&sc, &r.wirelen);
	/* Every message is reported exactly once. */
	assert_int_equal(log.reported, (int)n);
	return r;
}

static void fast_opts(ms_smtp_opts *o)
{
	ms_smtp_opts_default(o);
	o->timeouts.quit = 300;
	o->timeouts.greeting = o->timeouts.ehlo = o->timeouts.mail = o->timeouts.rcpt = 3000;
	o->timeouts.data = o->timeouts.dot = o->timeouts.rset = o->timeouts.data_block = 3000;
}

static void expect_rcpt(const ms_message *m, size_t i, ms_rcpt_state st, ms_stage stage,
                        int code)
{
	const ms_rcpt *r = &m->rcpts[i];
	if (r->state != st || r->out.stage != stage || r->out.code != code)
		fail_msg("rcpt %zu <%s>: got %s/%s/%d (%s), want %s/%s/%d", i, r->addr,
		         ms_rcpt_state_name(r->state), ms_stage_name(r->out.stage), r->out.code,
		         r->out.text ? r->out.text : "", ms_rcpt_state_name(st), ms_stage_name(stage),
		         code);
}

/* Cross-message pipelining: body 1, dot and message 2's envelope together;
 * one wait per message. */
static void test_pipelined_stream(void **state)
{
	(void)state;
	const char *steps[] = { GREET, EHLO_PIPE, OK, OK, GO, OK, OK, OK, OK, GO, OK, OK, OK, OK, GO,
	                        OK, BYE, NULL };
	/* P1: every MAIL written behind a previous message's data has RSET
	 * in front of it. */
	const char *want = "EHLO client.test\r\n"
	                   "MAIL FROM:<a@x.test> BODY=8BITMIME\r\nRCPT TO:<b@x.test>\r\nDATA\r\n"
	                   "h\xc3\xa9llo\r\n.\r\n"
	                   "RSET\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nDATA\r\n"
	                   "..dot\r\n.\r\n"
	                   "RSET\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nDATA\r\n"
	                   ".\r\n"
	                   "QUIT\r\n";
	for (size_t c = 0; c < NCHUNKS; c++) {
		ms_smtp_opts o;
		fast_opts(&o);
		ms_message *m[3] = { mk("a@x.test", "b@x.test", "h\xc3\xa9llo\n"),
		                     mk("a@x.test", "b@x.test", ".dot"), mk("a@x.test", "b@x.test", "") };
		result r = run(steps, &o, m, 3, chunks[c]);
		assert_string_equal(r.wire, want);
		for (int i = 0; i < 3; i++) {
			expect_rcpt(m[i], 0, MS_RCPT_DELIVERED, MS_STAGE_DOT, 250);
			assert_string_equal(m[i]->rcpts[0].out.enh, "2.0.0");
			ms_message_free(m[i]);
		}
		/* greeting, EHLO, the first envelope, then one wait per message
		 * (each covers a dot and the next envelope; QUIT rides along). */
		assert_int_equal(r.st.round_trips, 2 + 1 + 3);
		free(r.wire);
	}
}

/* The write that carries message 1's dot also carries message 2's MAIL. */
static void test_cross_message_same_write(void **state)
{
	(void)state;
	const char *steps[] = { GREET, EHLO_PIPE, OK, OK, GO, OK, OK, OK, OK, GO, OK, BYE, NULL };
	ms_smtp_opts o;
	fast_opts(&o);
	ms_transcript *tx = ms_transcript_new(0);
	o.transcript = tx;
	ms_message *m[2] = { mk("a@x.test", "b@x.test", "one\n"), mk("a@x.test", "b@x.test", "two\n") };
	result r = run(steps, &o, m, 2, 0);
	/* Find the write boundary after the first "." and check that MAIL
	 * comes before it. */
	int seen_dot = 0, mail_after_dot = 0, ok = 0;
	for (size_t i = 0; i < ms_transcript_count(tx); i++) {
		const ms_tx_event *e = ms_transcript_event(tx, i);
		if (e->kind == MS_TX_SENT && !strcmp(e->text, ".") && !seen_dot)
			seen_dot = 1;
		else if (seen_dot && e->kind == MS_TX_SENT && !strncmp(e->text, "MAIL", 4))
			mail_after_dot = 1;
		else if (seen_dot && e->kind == MS_TX_WRITE) {
			ok = mail_after_dot;
			break;
		}
	}
	assert_true(ok);
	ms_transcript_free(tx);
	ms_message_free(m[0]);
	ms_message_free(m[1]);
	free(r.wire);
}

/* ---- single-message scenarios, table-driven ---------------------------- */

typedef struct want_rcpt {
	ms_rcpt_state state;
	ms_stage stage;     /* MS_STAGE_NONE ends the list */
	int code;
	const char *enh;    /* exact, when set */
	const char *text;   /* exact, when set */
	const char *has;    /* substring of the text, when set */
} want_rcpt;

typedef struct scenario {
	const char *name;
	const char *steps[24];
	const char *rcpts, *body;
	int every_split;    /* also with reads capped at 1, 2, 3, 5, 7 bytes */
	size_t max_rcpts;
	int data_timeout;   /* ms; the session must end within it plus slack */
	want_rcpt want[6];
	const char *wire_is, *wire_has, *wire_lacks;
	size_t transactions;
	int attach_fails;
} scenario;

#define D MS_RCPT_DELIVERED
#define F MS_RCPT_FAILED
#define T MS_RCPT_DEFERRED
#define TOO_MANY "452 4.5.3 too many\r\n"

static const scenario scenarios[] = {
	{ "R45 mixed recipients",
	  { GREET, EHLO_PIPE, OK, OK, "550 5.1.1 no such user\r\n", "450 4.2.0 try later\r\n", GO, OK,
	    BYE },
	  "ok@x.test,bad@x.test,later@x.test", "x\n", 1, 0, 0,
	  { { D, MS_STAGE_DOT, 250, "2.0.0", NULL, NULL },
	    { F, MS_STAGE_RCPT, 550, "5.1.1", "5.1.1 no such user", NULL },
	    { T, MS_STAGE_RCPT, 450, "4.2.0", NULL, NULL } } },
	{ "R22 every RCPT refused, then 354: only the dot",
	  { GREET, EHLO_PIPE, OK, "550 5.1.1 no\r\n", "550 5.1.1 no\r\n", GO,
	    "554 5.5.1 no valid recipients\r\n", BYE },
	  "b@x.test,c@x.test", "SECRET BODY\n", 1, 0, 0,
	  { { F, MS_STAGE_RCPT, 550, NULL, NULL, NULL }, { F, MS_STAGE_RCPT, 550, NULL, NULL, NULL } },
	  NULL, "DATA\r\n.\r\nQUIT\r\n", "SECRET" },
	{ "R8 EHLO refused: HELO, lock-step",
	  { GREET, "502 5.5.2 what?\r\n", "250 hi\r\n", OK, OK, GO, OK, BYE },
	  "b@x.test", "x\n", 1, 0, 0, { { D, MS_STAGE_DOT, 250, NULL, NULL, NULL } },
	  "EHLO client.test\r\nHELO client.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@x.test>\r\n"
	  "DATA\r\nx\r\n.\r\nQUIT\r\n" },
	{ "R4 garbage before the dot reply: never delivered",
	  { GREET, EHLO_PIPE, OK, OK, GO, "hello\r\n250 2.0.0 ok\r\n", BYE },
	  "b@x.test", "x\n", 1, 0, 0, { { T, MS_STAGE_DOT, 0, NULL, NULL, "outcome unknown" } } },
	{ "R44 closed after the dot, before its reply",
	  { GREET, EHLO_PIPE, OK, OK, GO, "#CLOSE" },
	  "b@x.test", "x\n", 1, 0, 0,
	  { { T, MS_STAGE_DOT, 0, NULL, NULL, "may be delivered more than once" } } },
	{ "R12 452: the rest in a second transaction",
	  { GREET, EHLO_PIPE, OK, OK, OK, TOO_MANY, TOO_MANY, GO, OK, OK, OK, OK, OK, GO, OK, BYE },
	  "r1@x.test,r2@x.test,r3@x.test,r4@x.test", "x\n", 1, 0, 0,
	  { { D, MS_STAGE_DOT, 250, NULL, NULL, NULL }, { D, MS_STAGE_DOT, 250, NULL, NULL, NULL },
	    { D, MS_STAGE_DOT, 250, NULL, NULL, NULL }, { D, MS_STAGE_DOT, 250, NULL, NULL, NULL } },
	  NULL,
	  "x\r\n.\r\nRSET\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<r3@x.test>\r\nRCPT TO:<r4@x.test>\r\nDATA\r\n",
	  NULL, 2 },
	{ "R12 452 with nobody accepted: deferred, no endless retry",
	  { GREET, EHLO_PIPE, OK, TOO_MANY, "503 5.5.1 no rcpts\r\n", OK, BYE },
	  "r1@x.test", "x\n", 0, 0, 0, { { T, MS_STAGE_RCPT, 452, NULL, NULL, NULL } } },
	{ "R11 more recipients than max_rcpts: several transactions",
	  { GREET, EHLO_PIPE, OK, OK, OK, GO, OK, OK, OK, OK, OK, GO, OK, OK, OK, OK, GO, OK, BYE },
	  "r1@x.test,r2@x.test,r3@x.test,r4@x.test,r5@x.test", "x\n", 0, 2, 0,
	  { { D, MS_STAGE_DOT, 250, NULL, NULL, NULL }, { D, MS_STAGE_DOT, 250, NULL, NULL, NULL },
	    { D, MS_STAGE_DOT, 250, NULL, NULL, NULL }, { D, MS_STAGE_DOT, 250, NULL, NULL, NULL },
	    { D, MS_STAGE_DOT, 250, NULL, NULL, NULL } },
	  NULL, NULL, NULL, 3 },
	{ "R43 no reply to DATA within its timeout",
	  { GREET, EHLO_PIPE, OK, OK, "" },
	  "b@x.test", "x\n", 0, 0, 300, { { T, MS_STAGE_SESSION, 0, NULL, NULL, "timed out" } } },
	{ "H3 more replies than commands: protocol error",
	  { GREET, EHLO_PIPE, OK "250 2.0.0 extra\r\n", OK, GO, OK, BYE },
	  "b@x.test", "x\n", 0, 0, 0, { { T, MS_STAGE_SESSION, 0, NULL, NULL, "protocol error" } } },
	{ "R3 R6 mixed codes take the last line; LF-only accepted",
	  { GREET, "250-scripted\n250 PIPELINING\n", OK, "250-ok\r\n550 5.7.1 no\r\n", OK, GO,
	    "250 2.0.0 ok\n", BYE },
	  "b@x.test,c@x.test", "x\n", 1, 0, 0,
	  { { F, MS_STAGE_RCPT, 550, "5.7.1", NULL, NULL }, { D, MS_STAGE_DOT, 250, NULL, NULL, NULL } } },
	{ "R2 code 600: protocol error, nothing accepted",
	  { GREET, EHLO_PIPE, OK, "600 what\r\n", OK, GO, OK, BYE },
	  "b@x.test", "x\n", 0, 0, 0, { { T, MS_STAGE_SESSION, 0, NULL, NULL, "malformed" } } },
	{ "R7 554 greeting: QUIT, deferred",
	  { "554 5.7.1 go away\r\n", BYE },
	  "b@x.test", "x\n", 0, 0, 0, { { T, MS_STAGE_SESSION, 0, NULL, NULL, "554" } },
	  "QUIT\r\n", NULL, NULL, 0, 1 },
};

static void check_rcpt(const char *name, const ms_message *m, size_t i, const want_rcpt *w)
{
	const ms_rcpt *r = &m->rcpts[i];
	const char *t = r->out.text ? r->out.text : "";
	if (r->state != w->state || r->out.stage != w->stage || r->out.code != w->code ||
	    (w->enh && strcmp(r->out.enh, w->enh)) || (w->text && strcmp(t, w->text)) ||
	    (w->has && !strstr(t, w->has)))
		fail_msg("%s: rcpt %zu <%s>: got %s/%s/%d/%s \"%s\"", name, i, r->addr,
		         ms_rcpt_state_name(r->state), ms_stage_name(r->out.stage), r->out.code,
		         r->out.enh, t);
}

static void test_single_message_scenarios(void **state)
{
	(void)state;
	for (size_t k = 0; k < sizeof scenarios / sizeof scenarios[0]; k++) {
		const scenario *sc = &scenarios[k];
		for (size_t c = sc->every_split ? 0 : NCHUNKS - 1; c < NCHUNKS; c++) {
			ms_smtp_opts o;
			fast_opts(&o);
			if (sc->max_rcpts)
				o.max_rcpts = sc->max_rcpts;
			if (sc->data_timeout)
				o.timeouts.data = sc->data_timeout;
			ms_message *m = mk("a@x.test", sc->rcpts, sc->body);
			int64_t t0 = ms_now_ms();
			result r = run(sc->steps, &o, &m, 1, chunks[c]);
			if (sc->data_timeout && ms_now_ms() - t0 > sc->data_timeout + 2200)
				fail_msg("%s: took %lld ms", sc->name, (long long)(ms_now_ms() - t0));
			if (sc->attach_fails && r.attach == MS_OK)
				fail_msg("%s: the session should have been refused", sc->name);
			for (size_t i = 0; i < 6 && sc->want[i].stage != MS_STAGE_NONE; i++) {
				check_rcpt(sc->name, m, i, &sc->want[i]);
				/* A delivered recipient was accepted at RCPT, and says so. */
				if (sc->want[i].state == MS_RCPT_DELIVERED && m->rcpts[i].rcpt_code / 100 != 2)
					fail_msg("%s: rcpt %zu lost its RCPT code", sc->name, i);
				if (sc->want[i].stage == MS_STAGE_RCPT &&
				    m->rcpts[i].rcpt_code != sc->want[i].code)
					fail_msg("%s: rcpt %zu RCPT code %d", sc->name, i, m->rcpts[i].rcpt_code);
			}
			if ((sc->wire_is && strcmp(r.wire, sc->wire_is)) ||
			    (sc->wire_has && !strstr(r.wire, sc->wire_has)) ||
			    (sc->wire_lacks && strstr(r.wire, sc->wire_lacks)))
				fail_msg("%s: read cap %zu: client sent \"%s\"", sc->name, chunks[c], r.wire);
			if (sc->transactions && m->transactions != sc->transactions)
				fail_msg("%s: %zu transactions", sc->name, m->transactions);
			ms_message_free(m);
			free(r.wire);
		}
	}
}

/* R23: MAIL refused: recipients get the MAIL reply; RSET before the next MAIL. */
static void test_mail_refused_then_rset(void **state)
{
	(void)state;
	const char *steps[] = { GREET, EHLO_PIPE, "553 5.1.8 bad sender\r\n", "503 5.5.1 need MAIL\r\n",
	                        "503 5.5.1 need MAIL\r\n", OK, OK, OK, GO, OK, BYE, NULL };
	for (size_t c = 0; c < NCHUNKS; c++) {
		ms_smtp_opts o;
		fast_opts(&o);
		ms_message *m[2] = { mk("a@x.test", "b@x.test", "one\n"), mk("a@x.test", "c@x.test", "two\n") };
		result r = run(steps, &o, m, 2, chunks[c]);
		expect_rcpt(m[0], 0, MS_RCPT_FAILED, MS_STAGE_MAIL, 553);
		assert_string_equal(m[0]->rcpts[0].out.enh, "5.1.8");
		expect_rcpt(m[1], 0, MS_RCPT_DELIVERED, MS_STAGE_DOT, 250);
		assert_non_null(strstr(r.wire, "DATA\r\nRSET\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<c@x.test>"));
		assert_null(strstr(r.wire, "one\r\n"));
		ms_message_free(m[0]);
		ms_message_free(m[1]);
		free(r.wire);
	}
}

/* R9: 421 in place of a RCPT reply: everything outstanding is deferred. */
static void test_421_mid_group(void **state)
{
	(void)state;
	const char *steps[] = { GREET, EHLO_PIPE, OK, OK, "421 4.3.2 shutting down\r\n#CLOSE", NULL };
	for (size_t c = 0; c < NCHUNKS; c++) {
		ms_smtp_opts o;
		fast_opts(&o);
		ms_message *m[2] = { mk("a@x.test", "b@x.test,c@x.test", "one\n"),
		                     mk("a@x.test", "d@x.test", "two\n") };
		result r = run(steps, &o, m, 2, chunks[c]);
		expect_rcpt(m[0], 0, MS_RCPT_DEFERRED, MS_STAGE_SESSION, 421);
		expect_rcpt(m[0], 1, MS_RCPT_DEFERRED, MS_STAGE_RCPT, 421);
		assert_string_equal(m[0]->rcpts[1].out.enh, "4.3.2");
		expect_rcpt(m[1], 0, MS_RCPT_DEFERRED, MS_STAGE_SESSION, 421);
		assert_non_null(strstr(m[1]->rcpts[0].out.text, "shutting down"));
		ms_message_free(m[0]);
		ms_message_free(m[1]);
		free(r.wire);
	}
}

/* No PIPELINING: lock-step, one command per wait. */
static void test_lockstep(void **state)
{
	(void)state;
	const char *steps[] = { GREET, EHLO_PLAIN, OK, "550 5.1.1 no\r\n", OK, GO, OK, OK, OK, GO, OK,
	                        BYE, NULL };
	const char *want = "EHLO client.test\r\n"
	                   "MAIL FROM:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nRCPT TO:<c@x.test>\r\nDATA\r\n"
	                   "one\r\n.\r\n"
	                   "MAIL FROM:<a@x.test>\r\nRCPT TO:<d@x.test>\r\nDATA\r\n"
	                   "two\r\n.\r\n"
	                   "QUIT\r\n";
	for (size_t c = 0; c < NCHUNKS; c++) {
		ms_smtp_opts o;
		fast_opts(&o);
		ms_message *m[2] = { mk("a@x.test", "b@x.test,c@x.test", "one\n"),
		                     mk("a@x.test", "d@x.test", "two\n") };
		result r = run(steps, &o, m, 2, chunks[c]);
		assert_string_equal(r.wire, want);
		expect_rcpt(m[0], 0, MS_RCPT_FAILED, MS_STAGE_RCPT, 550);
		expect_rcpt(m[0], 1, MS_RCPT_DELIVERED, MS_STAGE_DOT, 250);
		expect_rcpt(m[1], 0, MS_RCPT_DELIVERED, MS_STAGE_DOT, 250);
		/* greeting, EHLO, 5 + 4 commands, QUIT: every command waited for. */
		assert_int_equal(r.st.round_trips, 2 + 5 + 4 + 1);
		ms_message_free(m[0]);
		ms_message_free(m[1]);
		free(r.wire);
	}
}

/* R33, R34, R17: refused locally, nothing sent; the next message goes. */
static void test_local_refusals(void **state)
{
	(void)state;
	const char *steps[] = { GREET, "250-scripted\r\n250-PIPELINING\r\n250 SIZE 100\r\n", OK, OK,
	                        GO, OK, BYE, NULL };
	char big[300], longline[1200];
	memset(big, 'a', sizeof big - 1);
	big[sizeof big - 1] = '\0';
	memset(longline, 'b', sizeof longline - 1);
	longline[sizeof longline - 1] = '\0';
	ms_smtp_opts o;
	fast_opts(&o);
	ms_message *m[4] = { mk("a@x.test", "b@x.test", big), mk("a@x.test", "b@x.test", "caf\xc3\xa9\n"),
	                     mk("a@x.test", "b@x.test", longline), mk("a@x.test", "b@x.test", "fine\n") };
	result r = run(steps, &o, m, 4, 0);
	expect_rcpt(m[0], 0, MS_RCPT_FAILED, MS_STAGE_LOCAL, 0);
	assert_string_equal(m[0]->rcpts[0].out.enh, "5.3.4");
	expect_rcpt(m[1], 0, MS_RCPT_FAILED, MS_STAGE_LOCAL, 0);
	assert_string_equal(m[1]->rcpts[0].out.enh, "5.6.3");
	expect_rcpt(m[2], 0, MS_RCPT_FAILED, MS_STAGE_LOCAL, 0);
	expect_rcpt(m[3], 0, MS_RCPT_DELIVERED, MS_STAGE_DOT, 250);
	assert_string_equal(r.wire, "EHLO client.test\r\nMAIL FROM:<a@x.test> SIZE=6\r\n"
	                            "RCPT TO:<b@x.test>\r\nDATA\r\nfine\r\n.\r\nQUIT\r\n");
	for (int i = 0; i < 4; i++)
		ms_message_free(m[i]);
	free(r.wire);
}

/* R26: the server refuses the data early and closes while we write. */
static void test_early_552_during_body(void **state)
{
	(void)state;
	const char *steps[] = { GREET, EHLO_PIPE, OK, OK, GO "552 5.3.4 message too big\r\n#CLOSE",
	                        NULL };
	size_t n = 8u << 20;
	char *body = malloc(n + 1);
	for (size_t i = 0; i < n; i++)
		body[i] = (i % 70 == 69) ? '\n' : 'z';
	body[n] = '\0';
	ms_smtp_opts o;
	fast_opts(&o);
	ms_message *m = mk("a@x.test", "b@x.test", body);
	free(body);
	result r = run(steps, &o, &m, 1, 0);
	expect_rcpt(m, 0, MS_RCPT_FAILED, MS_STAGE_DOT, 552);
	ms_message_free(m);
	free(r.wire);
}

/* ms_smtp_progress alone (no flush) moves a pipelined stream to the end;
 * what goes on the wire is the same as with flush. */
static void test_progress_without_waiting(void **state)
{
	(void)state;
	const char *steps[] = { GREET, EHLO_PIPE, OK, OK, GO, OK, OK, OK, OK, GO, OK, BYE, NULL };
	scripted sc;
	outcome_log log = { 0 };
	ms_error err;
	ms_smtp_opts o;
	fast_opts(&o);
	o.on_result = on_res;
	o.ctx = &log;
	o.helo = "client.test";
	sc_start(&sc, steps);
	ms_smtp *s = ms_smtp_new(&o, &err);
	assert_int_equal(ms_smtp_attach(s, sc.client_fd, &err), MS_OK);
	ms_message *m[2] = { mk("a@x.test", "b@x.test", "one\n"), mk("a@x.test", "b@x.test", "two\n") };
	assert_int_equal(ms_smtp_submit(s, m[0], &err), MS_OK);
	assert_int_equal(ms_smtp_submit(s, m[1], &err), MS_OK);
	int64_t give_up = ms_now_ms() + 5000;
	while (log.reported < 2 && ms_now_ms() < give_up) {
		assert_int_equal(ms_smtp_progress(s, &err), MS_OK);
		usleep(1000);
	}
	assert_int_equal(log.reported, 2);
	expect_rcpt(m[0], 0, MS_RCPT_DELIVERED, MS_STAGE_DOT, 250);
	expect_rcpt(m[1], 0, MS_RCPT_DELIVERED, MS_STAGE_DOT, 250);
	ms_smtp_quit(s, &err);
	ms_smtp_free(s);
	char *wire = sc_finish(&sc, NULL);
	assert_string_equal(wire, "EHLO client.test\r\n"
	                          "MAIL FROM:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nDATA\r\none\r\n.\r\n"
	                          "RSET\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nDATA\r\ntwo\r\n.\r\n"
	                          "QUIT\r\n");
	free(wire);
	ms_message_free(m[0]);
	ms_message_free(m[1]);
}

/* Unreadable data: the message still gets exactly one result (deferred,
 * local), and the session goes on with the next message. */
static void test_unreadable_message(void **state)
{
	(void)state;
	const char *steps[] = { GREET, EHLO_PIPE, OK, OK, GO, OK, BYE, NULL };
	ms_smtp_opts o;
	fast_opts(&o);
	ms_error err;
	int dirfd = open("/", O_RDONLY);
	ms_message *bad = ms_message_new("a@x.test", &err);
	ms_message_add_rcpt(bad, "b@x.test", &err);
	ms_message_add_fd(bad, dirfd, 0, UINT64_MAX, &err);
	ms_message *m[2] = { bad, mk("a@x.test", "c@x.test", "fine\n") };
	result r = run(steps, &o, m, 2, 0);
	expect_rcpt(m[0], 0, MS_RCPT_DEFERRED, MS_STAGE_LOCAL, 0);
	expect_rcpt(m[1], 0, MS_RCPT_DELIVERED, MS_STAGE_DOT, 250);
	close(dirfd);
	ms_message_free(m[0]);
	ms_message_free(m[1]);
	free(r.wire);
}

#define EHLO_CHUNK "250-scripted\r\n250-PIPELINING\r\n250-CHUNKING\r\n250-SIZE 1000000\r\n250 8BITMIME\r\n"

/* P2: with CHUNKING and PIPELINING every message is MAIL SIZE=, RCPT and
 * "BDAT n LAST" with exactly n octets, CRLF-normalised and not
 * dot-stuffed; the next message follows without waiting (P1: RSET first). */
static void test_bdat_stream(void **state)
{
	(void)state;
	const char *steps[] = { GREET, EHLO_CHUNK, OK, OK, OK, OK, OK, OK, OK, OK, OK, OK, OK,
	                        BYE, NULL };
	const char *want = "EHLO client.test\r\n"
	                   "MAIL FROM:<a@x.test> SIZE=9\r\nRCPT TO:<b@x.test>\r\nBDAT 9 LAST\r\n"
	                   ".dot\r\nx\r\n"
	                   "RSET\r\nMAIL FROM:<a@x.test> SIZE=6\r\nRCPT TO:<b@x.test>\r\nBDAT 6 LAST\r\n"
	                   "a\r\nb\r\n"
	                   "RSET\r\nMAIL FROM:<a@x.test> SIZE=0\r\nRCPT TO:<b@x.test>\r\nBDAT 0 LAST\r\n"
	                   "QUIT\r\n";
	for (size_t c = 0; c < NCHUNKS; c++) {
		ms_smtp_opts o;
		fast_opts(&o);
		ms_message *m[3] = { mk("a@x.test", "b@x.test", ".dot\nx"),
		                     mk("a@x.test", "b@x.test", "a\rb\r\n"), mk("a@x.test", "b@x.test", "") };
		result r = run(steps, &o, m, 3, chunks[c]);
		assert_string_equal(r.wire, want);
		for (int i = 0; i < 3; i++) {
			expect_rcpt(m[i], 0, MS_RCPT_DELIVERED, MS_STAGE_DOT, 250);
			ms_message_free(m[i]);
		}
		assert_int_equal(r.st.bdat, 3);
		/* greeting, EHLO, then the whole stream (no 354 to wait for),
		 * and QUIT once it is answered. */
		if (chunks[c] == 0)
			assert_true(r.st.round_trips <= 2 + 1 + 1);
		free(r.wire);
	}
}

/* BDAT: a refused recipient keeps its RCPT reply, the others get the BDAT
 * reply; with nobody accepted the BDAT reply (554) concerns no one. */
static void test_bdat_refusals(void **state)
{
	(void)state;
	const char *steps[] = { GREET, EHLO_CHUNK, OK, "550 5.1.1 no such user\r\n", OK, OK,
	                        OK, OK, "550 5.1.1 no such user\r\n",
	                        "554 5.5.1 no valid recipients\r\n", OK, OK, OK, OK, BYE, NULL };
	for (size_t c = 0; c < NCHUNKS; c++) {
		ms_smtp_opts o;
		fast_opts(&o);
		ms_message *m[3] = { mk("a@x.test", "r1@x.test,r2@x.test", "one\n"),
		                     mk("a@x.test", "r3@x.test", "two\n"), mk("a@x.test", "r4@x.test", "3\n") };
		result r = run(steps, &o, m, 3, chunks[c]);
		expect_rcpt(m[0], 0, MS_RCPT_FAILED, MS_STAGE_RCPT, 550);
		expect_rcpt(m[0], 1, MS_RCPT_DELIVERED, MS_STAGE_DOT, 250);
		expect_rcpt(m[1], 0, MS_RCPT_FAILED, MS_STAGE_RCPT, 550);
		expect_rcpt(m[2], 0, MS_RCPT_DELIVERED, MS_STAGE_DOT, 250);
		for (int i = 0; i < 3; i++)
			ms_message_free(m[i]);
		free(r.wire);
	}
}

/* P2 window: with bdat_messages 1 each message waits for the previous
 * one's BDAT reply - one round trip per message, the same bytes. */
static void test_bdat_window_one(void **state)
{
	(void)state;
	const char *steps[] = { GREET, EHLO_CHUNK, OK, OK, OK, OK, OK, OK, OK, OK, OK, OK, BYE, NULL };
	ms_smtp_opts o;
	fast_opts(&o);
	o.bdat_messages = 1;
	ms_message *m[3] = { mk("a@x.test", "b@x.test", "1\n"), mk("a@x.test", "b@x.test", "2\n"),
	                     mk("a@x.test", "b@x.test", "3\n") };
	result r = run(steps, &o, m, 3, 0);
	/* Not riding behind unanswered data: no RSET is needed. */
	assert_null(strstr(r.wire, "RSET"));
	assert_int_equal(r.st.round_trips, 2 + 3); /* QUIT rides behind the last chunk */
	for (int i = 0; i < 3; i++) {
		expect_rcpt(m[i], 0, MS_RCPT_DELIVERED, MS_STAGE_DOT, 250);
		ms_message_free(m[i]);
	}
	free(r.wire);
}

/* P2: CHUNKING without PIPELINING, or turned off: DATA. */
static void test_bdat_fallbacks(void **state)
{
	(void)state;
	const char *nopipe[] = { GREET, "250-scripted\r\n250 CHUNKING\r\n", OK, OK, GO, OK, BYE, NULL };
	const char *off[] = { GREET, EHLO_CHUNK, OK, OK, GO, OK, BYE, NULL };
	ms_smtp_opts o;
	fast_opts(&o);
	ms_message *m = mk("a@x.test", "b@x.test", "1\n");
	result r = run(nopipe, &o, &m, 1, 0);
	assert_non_null(strstr(r.wire, "DATA\r\n"));
	assert_null(strstr(r.wire, "BDAT"));
	expect_rcpt(m, 0, MS_RCPT_DELIVERED, MS_STAGE_DOT, 250);
	ms_message_free(m);
	free(r.wire);
	fast_opts(&o);
	o.chunking = MS_CHUNKING_OFF;
	m = mk("a@x.test", "b@x.test", "1\n");
	r = run(off, &o, &m, 1, 0);
	assert_null(strstr(r.wire, "BDAT"));
	expect_rcpt(m, 0, MS_RCPT_DELIVERED, MS_STAGE_DOT, 250);
	ms_message_free(m);
	free(r.wire);
}

/* P2: the file grew between the scan and the send: not one octet beyond
 * the declared chunk goes out; the session ends, the message waits. */
static void test_bdat_data_changed(void **state)
{
	(void)state;
	const char *steps[] = { GREET, EHLO_CHUNK, OK, OK, "", NULL };
	char path[] = "/tmp/ms-bdat-XXXXXX";
	int fd = mkstemp(path);
	assert_true(fd >= 0);
	unlink(path);
	assert_int_equal(write(fd, "short\n", 6), 6);
	ms_error err;
	ms_message *m = ms_message_new("a@x.test", &err);
	ms_message_add_rcpt(m, "b@x.test", &err);
	ms_message_add_fd(m, fd, 0, UINT64_MAX, &err);
	assert_int_equal(ms_message_scan(m, &err), MS_OK);
	assert_int_equal(write(fd, "and longer now\n", 15), 15);
	ms_smtp_opts o;
	fast_opts(&o);
	result r = run(steps, &o, &m, 1, 0);
	assert_int_equal(m->rcpts[0].state, MS_RCPT_DEFERRED);
	assert_non_null(strstr(m->rcpts[0].out.text, "changed size"));
	assert_null(strstr(r.wire, "longer"));
	ms_message_free(m);
	close(fd);
	free(r.wire);
}

/* P3: a server that refuses commands written behind data (Haraka's "503
 * pipelined after end of DATA"): the message is sent again, alone, and
 * delivered - never failed; later messages do not ride either. */
static void test_rode_refused(void **state)
{
	(void)state;
	const char *r503 = "503 5.5.1 pipelined after end of DATA\r\n";
	const char *steps[] = { GREET, EHLO_PIPE, OK, OK, GO, OK, r503, r503, r503, r503,
	                        OK, OK, OK, GO, OK, OK, OK, GO, OK, BYE, NULL };
	for (size_t c = 0; c < NCHUNKS; c++) {
		ms_smtp_opts o;
		fast_opts(&o);
		ms_message *m[3] = { mk("a@x.test", "b@x.test", "one\n"), mk("a@x.test", "b@x.test", "two\n"),
		                     mk("a@x.test", "b@x.test", "three\n") };
		ms_transcript *tx = ms_transcript_new(0);
		o.transcript = tx;
		result r = run(steps, &o, m, 3, chunks[c]);
		for (int i = 0; i < 3; i++) {
			expect_rcpt(m[i], 0, MS_RCPT_DELIVERED, MS_STAGE_DOT, 250);
			ms_message_free(m[i]);
		}
		/* The refused group, then message 2 alone (after RSET), then 3. */
		assert_non_null(strstr(r.wire, "one\r\n.\r\nRSET\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@x.test>\r\n"
		                                "DATA\r\nRSET\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@x.test>\r\n"
		                                "DATA\r\ntwo\r\n.\r\nMAIL FROM:"));
		assert_true(r.st.resent == 1);
		free(r.wire);
		ms_transcript_free(tx);
	}
}

/* P3: a genuine refusal of a MAIL that rode (550, not 503): the message
 * goes again alone and then gets its answer; the server is not marked. */
static void test_rode_mail_550(void **state)
{
	(void)state;
	const char *r550 = "550 5.7.1 sender refused\r\n";
	const char *r503 = "503 5.5.1 no MAIL\r\n";
	const char *steps[] = { GREET, EHLO_PIPE, OK, OK, GO, OK, OK, r550, r503, r503,
	                        OK, r550, r503, r503, BYE, NULL };
	ms_smtp_opts o;
	fast_opts(&o);
	ms_message *m[2] = { mk("a@x.test", "b@x.test", "one\n"), mk("bad@x.test", "b@x.test", "two\n") };
	result r = run(steps, &o, m, 2, 0);
	expect_rcpt(m[0], 0, MS_RCPT_DELIVERED, MS_STAGE_DOT, 250);
	expect_rcpt(m[1], 0, MS_RCPT_FAILED, MS_STAGE_MAIL, 550);
	ms_message_free(m[0]);
	ms_message_free(m[1]);
	free(r.wire);
}

/* The transcript's data summary counts the octets it hashes: the wire
 * form (".dot" stuffed to "..dot" for DATA; as is for BDAT). */
static void test_data_summary_counts_what_it_hashes(void **state)
{
	(void)state;
	const char *data_steps[] = { GREET, EHLO_PIPE, OK, OK, GO, OK, BYE, NULL };
	const char *bdat_steps[] = { GREET, EHLO_CHUNK, OK, OK, OK, BYE, NULL };
	const char *const *steps[] = { data_steps, bdat_steps };
	const char *want[] = { "[message data: 7 octets in 1 lines", "[message data: 6 octets in 1 lines" };
	for (int k = 0; k < 2; k++) {
		ms_smtp_opts o;
		fast_opts(&o);
		ms_transcript *tx = ms_transcript_new(0);
		o.transcript = tx;
		ms_message *m = mk("a@x.test", "b@x.test", ".dot\n");
		result r = run(steps[k], &o, &m, 1, 0);
		int seen = 0;
		for (size_t i = 0; i < ms_transcript_count(tx); i++)
			seen |= !strncmp(ms_transcript_event(tx, i)->text, want[k], strlen(want[k]));
		assert_true(seen);
		ms_message_free(m);
		free(r.wire);
		ms_transcript_free(tx);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_single_message_scenarios),
		cmocka_unit_test(test_pipelined_stream),
		cmocka_unit_test(test_cross_message_same_write),
		cmocka_unit_test(test_mail_refused_then_rset),
		cmocka_unit_test(test_421_mid_group),
		cmocka_unit_test(test_lockstep),
		cmocka_unit_test(test_local_refusals),
		cmocka_unit_test(test_early_552_during_body),
		cmocka_unit_test(test_unreadable_message),
		cmocka_unit_test(test_progress_without_waiting),
		cmocka_unit_test(test_bdat_stream),
		cmocka_unit_test(test_bdat_refusals),
		cmocka_unit_test(test_bdat_window_one),
		cmocka_unit_test(test_bdat_fallbacks),
		cmocka_unit_test(test_bdat_data_changed),
		cmocka_unit_test(test_rode_refused),
		cmocka_unit_test(test_rode_mail_550),
		cmocka_unit_test(test_data_summary_counts_what_it_hashes),
	};
	return cmocka_run_group_tests_name("smtp engine", tests, NULL, NULL);
}
