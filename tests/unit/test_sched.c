/*
 * test_sched.c - what an attempt does to a queued message (retry tiers,
 * final states, bounces, removal), the RFC 3464 report itself, destination
 * keys from the configuration, and the DNS module's address literals.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "mailspool/deliver.h"
#include "mailspool/dns.h"
#include "mailspool/dsn.h"
#include "mailspool/sched.h"
#include "mailspool/submit.h"
#include "tmpspool.h"

static void our_name(ms_conf *c)
{
	snprintf(c->hostname, sizeof c->hostname, "mta.example.test");
}

static void fresh_spool(ms_conf *c, ms_spool **sp)
{
	tmp_spool(c, sp, our_name);
}

static void queue(ms_spool *sp, const ms_conf *c, const char *sender, const char *const *rcpts,
                  size_t n, char *id)
{
	static const char msg[] = "Subject: t\r\nMessage-ID: <orig@x.test>\r\n\r\nbody\r\n";
	int fd = memfd_create("m", 0);
	assert_int_equal(write(fd, msg, sizeof msg - 1), (ssize_t)(sizeof msg - 1));
	lseek(fd, 0, SEEK_SET);
	ms_submit_opts o = { .sender = sender, .rcpts = rcpts, .nrcpts = n };
	ms_submit_result res;
	ms_error err;
	assert_int_equal(ms_submit(sp, c, &o, fd, &res, &err), MS_OK);
	close(fd);
	strcpy(id, res.id);
}

static ms_sched_result result(size_t rcpt, ms_rcpt_state st, int code, const char *enh,
                              const char *text)
{
	ms_sched_result r;
	memset(&r, 0, sizeof r);
	r.rcpt = rcpt;
	r.state = st;
	r.code = code;
	snprintf(r.enh, sizeof r.enh, "%s", enh);
	snprintf(r.text, sizeof r.text, "%s", text);
	snprintf(r.relay, sizeof r.relay, "mx.dest.test[192.0.2.1]:25");
	return r;
}

static int nlines;
static char lines[16][MS_LOG_LINE_MAX];
static void logger(void *ctx, const char *line)
{
	(void)ctx;
	if (nlines < 16)
		snprintf(lines[nlines++], sizeof lines[0], "%s", line);
}

/* Tiers: each temporary failure waits the next tier; the last one bounces. */
static void test_tiers_then_bounce(void **state)
{
	(void)state;
	ms_conf c;
	ms_spool *sp;
	fresh_spool(&c, &sp);
	c.retry_tiers[0] = 0, c.retry_tiers[1] = 60, c.retry_tiers[2] = 600;
	c.ntiers = 3;
	const char *rcpts[] = { "a@dest.test", "b@dest.test" };
	char id[64];
	queue(sp, &c, "s@src.test", rcpts, 2, id);
	const int64_t t0 = (int64_t)time(NULL) + 10;
	ms_sched_opts o = { .conf = &c, .bounce = 1, .log = logger, .now = t0 };
	ms_error err;
	ms_envelope e;
	ms_sched_summary sum;
	size_t idx[2];
	assert_int_equal(ms_spool_read(sp, id, &e, &err), MS_OK);
	assert_int_equal(ms_sched_due(&e, o.now, idx), 2);
	/* a delivered, b deferred: b due 60 s later, a never again. */
	ms_sched_result r1[] = { result(0, MS_RCPT_DELIVERED, 250, "2.0.0", "ok"),
		                     result(1, MS_RCPT_DEFERRED, 451, "4.3.0", "later") };
	nlines = 0;
	assert_int_equal(ms_sched_settle(sp, &o, &e, r1, 2, &sum, &err), MS_OK);
	assert_int_equal(sum.delivered, 1);
	assert_int_equal(sum.deferred, 1);
	assert_int_equal(sum.next_due, t0 + 60);
	assert_false(sum.removed);
	/* The due-time hint: the envelope's mtime is when it is next due. */
	assert_int_equal(ms_spool_env_mtime(sp, id) / 1000000000, t0 + 60);
	assert_string_equal(sum.bounce_id, "");
	assert_non_null(strstr(lines[0], "to=<a@dest.test>, relay=mx.dest.test[192.0.2.1]:25"));
	assert_non_null(strstr(lines[0], "attempt=1, dsn=2.0.0, status=sent (250 ok)"));
	assert_non_null(strstr(lines[1], "dsn=4.3.0, status=deferred (451 later)"));
	ms_env_free(&e);
	/* Only b is due next time, and only when its tier says so. */
	assert_int_equal(ms_spool_read(sp, id, &e, &err), MS_OK);
	assert_int_equal(ms_sched_due(&e, t0 + 59, idx), 0);
	assert_int_equal(ms_sched_due(&e, t0 + 60, idx), 1);
	assert_int_equal(idx[0], 1);
	assert_int_equal(e.rcpts[1].tier, 1);
	/* Second failure: tier 2 (600 s). */
	o.now = t0 + 60;
	ms_sched_result r2[] = { result(1, MS_RCPT_DEFERRED, 451, "4.3.0", "later") };
	assert_int_equal(ms_sched_settle(sp, &o, &e, r2, 1, &sum, &err), MS_OK);
	assert_int_equal(sum.next_due, t0 + 660);
	ms_env_free(&e);
	/* Third failure at the last tier: exhausted, bounced, removed. */
	assert_int_equal(ms_spool_read(sp, id, &e, &err), MS_OK);
	o.now = t0 + 660;
	nlines = 0;
	assert_int_equal(ms_sched_settle(sp, &o, &e, r2, 1, &sum, &err), MS_OK);
	assert_int_equal(sum.failed, 1);
	assert_true(sum.removed);
	assert_true(sum.bounce_id[0] != '\0');
	assert_non_null(strstr(lines[0], "attempt=3, dsn=5.3.0, status=bounced (451 later)"));
	ms_env_free(&e);
	/* The bounce: from <>, to the sender, due now. */
	ms_envelope b;
	assert_int_equal(ms_spool_read(sp, sum.bounce_id, &b, &err), MS_OK);
	assert_string_equal(b.sender, "");
	assert_int_equal(b.nrcpts, 1);
	assert_string_equal(b.rcpts[0].addr, "s@src.test");
	/* A bounce that fails is not bounced (B1). */
	ms_sched_result r3[] = { result(0, MS_RCPT_FAILED, 550, "5.1.1", "no such user") };
	assert_int_equal(ms_sched_settle(sp, &o, &b, r3, 1, &sum, &err), MS_OK);
	assert_string_equal(sum.bounce_id, "");
	assert_true(sum.removed);
	ms_env_free(&b);
	char **ids;
	size_t n;
	assert_int_equal(ms_spool_list(sp, &ids, &n, &err), MS_OK);
	assert_int_equal(n, 0);
	ms_spool_ids_free(ids, n);
	tmp_spool_remove(sp);
}

/* Final states stay final; a held message has nothing due. */
static void test_final_states_and_hold(void **state)
{
	(void)state;
	ms_conf c;
	ms_spool *sp;
	fresh_spool(&c, &sp);
	const char *rcpts[] = { "a@dest.test", "b@dest.test" };
	char id[64];
	queue(sp, &c, "s@src.test", rcpts, 2, id);
	ms_sched_opts o = { .conf = &c, .bounce = 0, .now = (int64_t)time(NULL) + 1 };
	ms_error err;
	ms_envelope e;
	ms_sched_summary sum;
	size_t idx[2];
	assert_int_equal(ms_spool_read(sp, id, &e, &err), MS_OK);
	ms_sched_result r1[] = { result(0, MS_RCPT_FAILED, 550, "5.1.1", "gone"),
		                     result(1, MS_RCPT_DEFERRED, 421, "", "busy") };
	assert_int_equal(ms_sched_settle(sp, &o, &e, r1, 2, &sum, &err), MS_OK);
	assert_string_equal(sum.bounce_id, ""); /* bounce off: the caller reports */
	ms_sched_result again[] = { result(0, MS_RCPT_DELIVERED, 250, "", "ok") };
	assert_int_equal(ms_sched_settle(sp, &o, &e, again, 1, &sum, &err), MS_OK);
	assert_int_equal(e.rcpts[0].state, MS_ENV_FAILED);
	assert_int_equal(sum.delivered, 0);
	e.flags |= MS_ENV_HOLD;
	assert_int_equal(ms_sched_due(&e, INT64_MAX - 1, idx), 0);
	ms_env_free(&e);
	tmp_spool_remove(sp);
}

static void test_dsn_status(void **state)
{
	(void)state;
	char s[16];
	ms_dsn_status(550, "5.1.1", 1, s, sizeof s);
	assert_string_equal(s, "5.1.1");
	ms_dsn_status(451, "4.2.2", 1, s, sizeof s); /* failed: class 5 */
	assert_string_equal(s, "5.2.2");
	ms_dsn_status(451, "4.2.2", 0, s, sizeof s);
	assert_string_equal(s, "4.2.2");
	ms_dsn_status(554, "", 1, s, sizeof s);
	assert_string_equal(s, "5.0.0");
	ms_dsn_status(0, "junk", 1, s, sizeof s);
	assert_string_equal(s, "5.0.0");
}

/* The report: fields, 7-bit, lines within 998 octets, CRLF only. */
static void test_dsn_build(void **state)
{
	(void)state;
	char longtext[3000];
	memset(longtext, 'x', sizeof longtext - 1);
	longtext[sizeof longtext - 1] = '\0';
	ms_dsn_rcpt r[] = {
		{ .addr = "a@dest.test", .code = 550, .enh = "5.1.1", .text = "no\r\nsuch \xc3\xa9 user",
		  .remote_mta = "mx.dest.test", .last_attempt = 1700000000 },
		{ .addr = "b@dest.test", .code = 0, .enh = "5.1.10", .text = longtext },
	};
	static const char hdr[] = "Subject: caf\xc3\xa9\r\nMessage-ID: <o@x>\r\n\r\n";
	ms_dsn d = { .reporting_mta = "mta.example.test", .queue_id = "Q1", .sender = "s@src.test",
		         .arrival = 1700000000, .rcpts = r, .nrcpts = 2, .headers = hdr,
		         .headers_len = sizeof hdr - 1, .now = 1700000100 };
	ms_buf b;
	ms_buf_init(&b, 0);
	ms_error err;
	assert_int_equal(ms_dsn_build(&d, &b, &err), MS_OK);
	const char *p = ms_buf_ptr(&b);
	size_t n = ms_buf_avail(&b), line = 0;
	for (size_t i = 0; i < n; i++) {
		assert_true((unsigned char)p[i] < 0x80);
		assert_true(p[i] != '\0');
		if (p[i] == '\n') {
			assert_true(i > 0 && p[i - 1] == '\r');
			line = 0;
		} else if (p[i] == '\r') {
			assert_true(i + 1 < n && p[i + 1] == '\n');
		} else {
			assert_true(++line <= 998);
		}
	}
	char *s = strndup(p, n);
	assert_non_null(strstr(s, "Content-Type: multipart/report; report-type=delivery-status;"));
	assert_non_null(strstr(s, "\r\nReporting-MTA: dns; mta.example.test\r\n"));
	assert_non_null(strstr(s, "\r\nFinal-Recipient: rfc822; a@dest.test\r\nAction: failed\r\n"
	                          "Status: 5.1.1\r\nRemote-MTA: dns; mx.dest.test\r\n"
	                          "Diagnostic-Code: smtp; 550 no  such ?? user\r\n"));
	assert_non_null(strstr(s, "Final-Recipient: rfc822; b@dest.test\r\nAction: failed\r\n"
	                          "Status: 5.1.10\r\nDiagnostic-Code: X-mailspool; xxx"));
	assert_non_null(strstr(s, "Content-Type: text/rfc822-headers\r\n\r\nSubject: caf??\r\n"));
	assert_non_null(strstr(s, "Auto-Submitted: auto-replied\r\n"));
	free(s);
	ms_buf_free(&b);
}

static void test_destination_keys(void **state)
{
	(void)state;
	ms_conf c;
	ms_conf_defaults(&c);
	char key[MS_DEST_MAX];
	ms_error err;
	assert_int_equal(ms_dest_for(&c, "s@x.test", "u@Example.ORG", key, sizeof key, &err), MS_OK);
	assert_string_equal(key, "mx:example.org");
	assert_int_equal(ms_dest_for(&c, "s@x.test", "\"a@b\"@[192.0.2.1]", key, sizeof key, &err),
	                 MS_OK);
	assert_string_equal(key, "mx:[192.0.2.1]");
	assert_int_equal(ms_dest_for(&c, "s@x.test", "nodomain", key, sizeof key, &err), MS_ERR_USAGE);

	char path[] = "/tmp/test_sched_conf.XXXXXX";
	int fd = mkstemp(path);
	static const char conf[] = "relay.main.url = smtp://relay.test:587\n"
	                           "route.corp.test = smtp://10.0.0.1:2525\n"
	                           "route..corp.test = main\n"
	                           "route.q.test = qmtp://127.0.0.1:209\n"
	                           "default_route = relays\n"
	                           "relays = main\n"
	                           "mx_port = 2525\n"
	                           "dns_servers = 127.0.0.1:5353\n";
	assert_int_equal(write(fd, conf, sizeof conf - 1), (ssize_t)(sizeof conf - 1));
	close(fd);
	assert_int_equal(ms_conf_load(&c, path, 1, &err), MS_OK);
	unlink(path);
	assert_string_equal(c.mx_port, "2525");
	ms_dest_for(&c, "s@x.test", "u@corp.test", key, sizeof key, &err);
	assert_string_equal(key, "url:smtp://10.0.0.1:2525");
	ms_dest_for(&c, "s@x.test", "u@a.b.corp.test", key, sizeof key, &err);
	assert_string_equal(key, "relays:main");
	ms_dest_for(&c, "s@x.test", "u@q.test", key, sizeof key, &err);
	assert_string_equal(key, "url:qmtp://127.0.0.1:209");
	ms_dest_for(&c, "s@x.test", "u@elsewhere.test", key, sizeof key, &err);
	assert_string_equal(key, "relays:main");

	/* Bad values name the line. */
	static const char *const bad[] = { "route.x.test = ftp://a\n", "route.x.test = nosuchrelay\n",
		                               "mx_port = 0\n", "max_deliveries = -1\n",
		                               "log_file = relative\n", "route. = mx\n" };
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		char p2[] = "/tmp/test_sched_conf.XXXXXX";
		fd = mkstemp(p2);
		assert_int_equal(write(fd, bad[i], strlen(bad[i])), (ssize_t)strlen(bad[i]));
		close(fd);
		assert_int_equal(ms_conf_load(&c, p2, 1, &err), MS_ERR_USAGE);
		/* (an unknown relay name is found at the end of the file) */
		assert_non_null(strstr(err.msg, i == 1 ? "nosuchrelay" : ":1:"));
		unlink(p2);
	}
}

/* Address literals need no DNS (M5); malformed ones fail permanently. */
static void test_dns_literals(void **state)
{
	(void)state;
	ms_dns_opts o;
	ms_dns_opts_default(&o);
	ms_dns_targets t;
	ms_error err;
	assert_int_equal(ms_dns_targets_for("[192.0.2.7]", &o, &t, &err), MS_OK);
	assert_int_equal(t.n, 1);
	assert_string_equal(t.t[0].addr, "192.0.2.7");
	assert_int_equal(ms_dns_targets_for("[IPv6:2001:DB8::1]", &o, &t, &err), MS_OK);
	assert_string_equal(t.t[0].addr, "2001:db8::1");
	static const char *const bad[] = { "[300.1.1.1]", "[IPv6:zz::1]", "[192.0.2.1", "[]",
		                               "[2001:db8::1]" };
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		assert_int_equal(ms_dns_targets_for(bad[i], &o, &t, &err), MS_ERR_PERM);
		assert_int_equal(t.n, 0);
		assert_string_equal(t.enh, "5.1.2");
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_tiers_then_bounce),  cmocka_unit_test(test_final_states_and_hold),
		cmocka_unit_test(test_dsn_status),         cmocka_unit_test(test_dsn_build),
		cmocka_unit_test(test_destination_keys),   cmocka_unit_test(test_dns_literals),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
