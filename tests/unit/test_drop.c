/* test_drop - the queue side of submission (what the set-id helper runs),
 * the hand-off between submitter and helper, one escaping for text from
 * outside, the header line rule, and the delivery agent's grammars. */
#include <dirent.h>
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>

#include "mailspool/agent.h"
#include "mailspool/drop.h"
#include "mailspool/headers.h"
#include "mailspool/printable.h"
#include "tmpspool.h"

static size_t queued(ms_spool *sp)
{
	char **ids;
	size_t n;
	assert_int_equal(ms_spool_list(sp, &ids, &n, NULL), MS_OK);
	ms_spool_ids_free(ids, n);
	return n;
}

static void envelope(ms_envelope *e, const char *sender, const char *rcpt)
{
	ms_env_init(e);
	assert_int_equal(ms_env_set_sender(e, sender, NULL), MS_OK);
	assert_int_equal(ms_env_add_rcpt(e, rcpt, 0, NULL), MS_OK);
}

static void test_printable(void **state)
{
	(void)state;
	static const struct {
		const char *in, *out;
	} t[] = {
		{ "plain text", "plain text" },
		{ "\x1b[2Kstatus=sent", "\\x1b[2Kstatus=sent" },
		{ "a\r\nb", "a\\x0d\\x0ab" },
		{ "back\\slash", "back\\\\slash" },
		{ "\x7f\xff\xc3\xa9", "\\x7f\\xff\\xc3\\xa9" },
		{ "", "" },
	};
	for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
		char out[128];
		assert_string_equal(ms_printable_str(t[i].in, out, sizeof out), t[i].out);
	}
	/* Cut, never inside an escape. */
	char small[6];
	assert_string_equal(ms_printable_str("ab\x1b" "cd", small, sizeof small), "ab");
}

static void test_header_line_rule(void **state)
{
	(void)state;
	static const struct {
		const char *p;
		size_t len;
	} t[] = { { "a\r\nb", 3 }, { "a\nb", 2 }, { "a\rb", 2 }, { "a\r", 2 }, { "abc", 3 },
		      { "\r\r", 1 } };
	for (size_t i = 0; i < sizeof t / sizeof t[0]; i++)
		assert_int_equal(ms_hdr_line_len(t[i].p, strlen(t[i].p)), t[i].len);
	/* Bcc removal and -t see the field behind a bare CR. */
	char hdr[] = "Subject: hi\rBcc: v@evil.test\r\nTo: a@x.test\r\n";
	size_t n = ms_hdr_remove(hdr, strlen(hdr), "Bcc");
	assert_int_equal(n, strlen("Subject: hi\rTo: a@x.test\r\n"));
	assert_memory_equal(hdr, "Subject: hi\rTo: a@x.test\r\n", n);
}

/* Data through ms_drop: what it refuses, and that a refusal leaves nothing. */
static void test_drop_checks_the_data(void **state)
{
	(void)state;
	ms_conf c;
	ms_spool *sp;
	tmp_spool(&c, &sp, NULL);
	static const char *const bad[] = { "a\rb\r\n", "a\nb\r\n", "nul\0x\r\n", "no end\r\n\r",
		                               "unterminated" };
	static const size_t badlen[] = { 5, 5, 8, 11, 12 };
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		ms_drop *d;
		ms_error err;
		assert_int_equal(ms_drop_begin(sp, &c, 1001, &d, &err), MS_OK);
		ms_status st = ms_drop_write(d, bad[i], badlen[i], &err);
		ms_envelope e;
		envelope(&e, "a@x.test", "b@y.test");
		ms_submit_result res;
		if (st == MS_OK)
			st = ms_drop_commit(d, &e, &res, &err);
		else
			ms_drop_abort(d);
		ms_env_free(&e);
		assert_int_equal(st, MS_ERR_DATA);
		assert_int_equal(queued(sp), 0);
	}
	/* A line of 999 octets. */
	char line[1001];
	memset(line, 'x', 999);
	memcpy(line + 999, "\r\n", 2);
	ms_drop *d;
	assert_int_equal(ms_drop_begin(sp, &c, 1001, &d, NULL), MS_OK);
	assert_int_equal(ms_drop_write(d, line, sizeof line, NULL), MS_ERR_DATA);
	ms_drop_abort(d);
	/* Over max_message_size, fed in small pieces. */
	c.max_message_size = 4096;
	assert_int_equal(ms_drop_begin(sp, &c, 1001, &d, NULL), MS_OK);
	ms_status st = MS_OK;
	for (int i = 0; i < 1000 && st == MS_OK; i++)
		st = ms_drop_write(d, "0123456789\r\n", 12, NULL);
	assert_int_equal(st, MS_ERR_DATA);
	ms_drop_abort(d);
	assert_int_equal(queued(sp), 0);
	tmp_spool_remove(sp);
}

/* What the submitter says of its envelope is not believed. */
static void test_drop_sets_what_the_queue_owns(void **state)
{
	(void)state;
	ms_conf c;
	ms_spool *sp;
	tmp_spool(&c, &sp, NULL);
	snprintf(c.hostname, sizeof c.hostname, "q.example.test");
	ms_drop *d;
	assert_int_equal(ms_drop_begin(sp, &c, 1001, &d, NULL), MS_OK);
	assert_int_equal(ms_drop_write(d, "Subject: x\r\n\r\nhi\r\n", 18, NULL), MS_OK);
	ms_envelope e;
	envelope(&e, "a@x.test", "b@y.test");
	e.uid = 0;
	e.arrival = 1;
	e.flags = 0xff;
	e.rcpts[0].state = MS_ENV_DELIVERED;
	e.rcpts[0].attempts = 7;
	ms_submit_result res;
	assert_int_equal(ms_drop_commit(d, &e, &res, NULL), MS_OK);
	ms_env_free(&e);
	ms_envelope got;
	assert_int_equal(ms_spool_read(sp, res.id, &got, NULL), MS_OK);
	assert_int_equal(got.uid, 1001);
	assert_true(got.arrival > 1000000000);
	assert_int_equal(got.flags, MS_ENV_HOLD); /* only hold is the submitter's */
	assert_int_equal(got.rcpts[0].state, MS_ENV_PENDING);
	assert_int_equal(got.rcpts[0].attempts, 0);
	ms_env_free(&got);
	int fd;
	assert_int_equal(ms_spool_open_data(sp, res.id, &fd, NULL), MS_OK);
	char buf[256];
	ssize_t k = read(fd, buf, sizeof buf - 1);
	close(fd);
	buf[k > 0 ? k : 0] = '\0';
	char want[128];
	snprintf(want, sizeof want, "Received: by q.example.test (mailspool, from userid 1001)\r\n\tid %s; ",
	         res.id);
	assert_memory_equal(buf, want, strlen(want));
	assert_non_null(strstr(buf, "\r\nSubject: x\r\n\r\nhi\r\n"));
	/* A bad address in the envelope is refused. */
	assert_int_equal(ms_drop_begin(sp, &c, 1001, &d, NULL), MS_OK);
	ms_env_init(&e);
	ms_env_set_sender(&e, "a@x.test", NULL);
	ms_env_add_rcpt(&e, "b@y.test\r\nRCPT TO:<c@z>", 0, NULL);
	assert_int_equal(ms_drop_commit(d, &e, &res, NULL), MS_ERR_USAGE);
	ms_env_free(&e);
	assert_int_equal(queued(sp), 1);
	tmp_spool_remove(sp);
}

/* The hand-off: the submitter's pipe sink into a child serving it. */
static ms_status handoff(ms_spool *sp, const ms_conf *c, const char *data, size_t n, size_t cut,
                         ms_submit_result *res)
{
	int to[2], back[2];
	assert_int_equal(pipe(to), 0);
	assert_int_equal(pipe(back), 0);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		close(to[1]);
		close(back[0]);
		ms_submit_result r;
		ms_error err;
		ms_status st = ms_drop_serve(sp, c, 1002, to[0], &r, &err);
		char line[MS_DROP_REPLY_MAX];
		ms_drop_reply(st, &r, &err, line, sizeof line);
		(void)!write(back[1], line, strlen(line));
		_exit(0);
	}
	close(to[0]);
	close(back[1]);
	ms_drop_pipe p;
	ms_submit_sink s = ms_drop_pipe_sink(&p, to[1], back[0]);
	ms_error err;
	ms_status st = s.begin(s.ctx, &err);
	if (st == MS_OK)
		st = s.write(s.ctx, data, n, &err);
	if (cut) {
		/* The submitter dies: the stream ends without its end marker. */
		s.abort(s.ctx);
		char line[MS_DROP_REPLY_MAX] = "";
		ssize_t k = read(back[0], line, sizeof line - 1);
		line[k > 0 ? k : 0] = '\0';
		st = ms_drop_parse_reply(line, res, &err);
	} else if (st == MS_OK) {
		ms_envelope e;
		envelope(&e, "a@x.test", "b@y.test");
		st = s.commit(s.ctx, &e, res, &err);
		ms_env_free(&e);
	}
	close(back[0]);
	int status;
	waitpid(pid, &status, 0);
	return st;
}

static void test_handoff(void **state)
{
	(void)state;
	ms_conf c;
	ms_spool *sp;
	tmp_spool(&c, &sp, NULL);
	ms_submit_result res;
	static char big[200000];
	for (size_t i = 0; i < sizeof big; i += 100) {
		memset(big + i, 'a' + (char)(i / 100 % 26), 98);
		memcpy(big + i + 98, "\r\n", 2);
	}
	assert_int_equal(handoff(sp, &c, big, sizeof big, 0, &res), MS_OK);
	assert_int_equal(res.nrcpts, 1);
	assert_int_equal(queued(sp), 1);
	assert_int_equal(handoff(sp, &c, big, sizeof big, 1, &res), MS_ERR_DATA);
	assert_int_equal(handoff(sp, &c, "bare\rcr\r\n", 9, 0, &res), MS_ERR_DATA);
	assert_int_equal(queued(sp), 1);
	/* Nothing left in tmp/ by the refusals. */
	char tmp[128];
	snprintf(tmp, sizeof tmp, "%s/spool/tmp", root);
	DIR *d = opendir(tmp);
	struct dirent *de;
	int files = 0;
	while ((de = readdir(d)))
		files += de->d_name[0] != '.';
	closedir(d);
	assert_int_equal(files, 0);
	/* Replies. */
	assert_int_equal(ms_drop_parse_reply("error denied -C is for root\n", &res, NULL),
	                 MS_ERR_DENIED);
	assert_int_equal(ms_drop_parse_reply("ok ../etc 1 1\n", &res, NULL), MS_ERR_IO);
	assert_int_equal(ms_drop_parse_reply("", &res, NULL), MS_ERR_IO);
	tmp_spool_remove(sp);
}

static void test_agent_grammar(void **state)
{
	(void)state;
	ms_agent_result r;
	ms_agent_parse_result("U 3", &r);
	assert_int_equal(r.kind, 'U');
	assert_int_equal(r.unit, 3);
	ms_agent_parse_result("D 3 7 1", &r);
	assert_int_equal(r.kind, 'D');
	assert_int_equal(r.item, 7);
	assert_int_equal(r.token, 1);
	ms_agent_parse_result("N 3 7 0", &r);
	assert_int_equal(r.kind, 'N');
	ms_agent_parse_result("D 3 7 2", &r);
	assert_int_equal(r.kind, 0);
	ms_agent_parse_result("D 3 7 1 x", &r);
	assert_int_equal(r.kind, 0);
	ms_agent_parse_result("S 3 =site:mx1.test,mx2.test", &r);
	assert_int_equal(r.kind, 'S');
	assert_string_equal(r.site, "site:mx1.test,mx2.test");
	ms_agent_parse_result("R 9 1 2 2 250 1 2.0.0 =mx[1.2.3.4]:25 =ok%20fine", &r);
	assert_int_equal(r.kind, 'R');
	assert_int_equal(r.r.dsn_passed, 1);
	assert_int_equal(r.unit, 9);
	assert_int_equal(r.item, 1);
	assert_int_equal(r.r.rcpt, 2);
	assert_int_equal(r.r.code, 250);
	assert_string_equal(r.r.relay, "mx[1.2.3.4]:25");
	assert_string_equal(r.r.text, "ok fine");
	ms_agent_parse_result("R 9 1 2 99 250 0 - =x =y", &r);
	assert_int_equal(r.kind, 0);
	ms_agent_parse_result("R 9 1 2 2 250 2 - =x =y", &r); /* dsn is 0 or 1 */
	assert_int_equal(r.kind, 0);
	ms_agent_parse_result("garbage", &r);
	assert_int_equal(r.kind, 0);
	/* Work the agent refuses before delivering anything of it. */
	ms_conf c;
	ms_spool *sp;
	tmp_spool(&c, &sp, NULL);
	static const char *const bad[] = {
		"M 0 abc 1 =a@x 1 =mx:x 0 =\nE\n",
		"K 1 9999999999 10 =mx:x.test\nM 0 abc 1 =a@x 2 =mx:x.test 0 =\nT 0 =b@y 0 =\nE\n",
		"K 1 9999999999 10 =mx:x.test\nM 0 ../x 1 =a@x 1 =mx:x.test 0 =\nT 0 =b@y 0 =\nE\n",
		"K 1 9999999999 10 =mx:x.test\nK 2 9999999999 10 =mx:x.test\n",
		"K 1 9999999999 10 =mx:x.test\nM 0 abc 1 =a@x 1\nT 0 =b@y 0 =\nE\n",
		/* The DSN request is checked as the queue checks it. */
		"K 1 9999999999 10 =mx:x.test\nM 0 abc 1 =a@x 1 =mx:x.test 3 =\nT 0 =b@y 0 =\nE\n",
		"K 1 9999999999 10 =mx:x.test\nM 0 abc 1 =a@x 1 =mx:x.test 0 =a%20b\nT 0 =b@y 0 =\nE\n",
		"K 1 9999999999 10 =mx:x.test\nM 0 abc 1 =a@x 1 =mx:x.test 0 =\nT 0 =b@y 3 =\nE\n",
		"K 1 9999999999 10 =mx:x.test\nM 0 abc 1 =a@x 1 =mx:x.test 0 =\nT 0 =b@y 2 =noseparator\nE\n",
		"A x\n",
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		int in[2], out[2];
		assert_int_equal(pipe(in), 0);
		assert_int_equal(pipe(out), 0);
		(void)!write(in[1], bad[i], strlen(bad[i]));
		close(in[1]);
		ms_error err;
		assert_int_equal(ms_agent_serve(&c, sp, NULL, in[0], out[1], &err), MS_ERR_USAGE);
		close(out[1]);
		char buf[16];
		assert_int_equal(read(out[0], buf, sizeof buf), 0); /* said nothing */
		close(in[0]);
		close(out[0]);
	}
	/* Work round trip: written by the scheduler's side, read by the agent,
	 * which reports the missing data file as deferred (an attempt, not
	 * "not attempted": its result holds a token), then the unit's end. */
	ms_envelope e;
	envelope(&e, "a@x.test", "b@y.test");
	ms_env_add_rcpt(&e, "c@y.test", 0, NULL);
	snprintf(e.id, sizeof e.id, "0000000000000abcd");
	e.dsn_ret = 1;
	e.dsn_envid = strdup("ENV-1");
	e.rcpts[1].notify = 6;
	e.rcpts[1].orcpt = strdup("rfc822;c@y.test");
	ms_buf w;
	ms_buf_init(&w, 0);
	size_t idx[] = { 1 };
	assert_int_equal(ms_agent_work_begin(&w, 5, 9999999999, 100, "mx:y.test"), MS_OK);
	assert_int_equal(ms_agent_work_message(&w, 0, &e, idx, 1, "mx:y.test"), MS_OK);
	assert_int_equal(ms_agent_work_end(&w), MS_OK);
	int in[2], out[2];
	assert_int_equal(pipe(in), 0);
	assert_int_equal(pipe(out), 0);
	(void)!write(in[1], ms_buf_ptr(&w), ms_buf_avail(&w));
	close(in[1]);
	assert_int_equal(ms_agent_serve(&c, sp, NULL, in[0], out[1], NULL), MS_OK);
	close(out[1]);
	char buf[4096];
	ssize_t k = read(out[0], buf, sizeof buf - 1);
	buf[k > 0 ? k : 0] = '\0';
	char *nl = strchr(buf, '\n');
	assert_non_null(nl);
	*nl = '\0';
	ms_agent_parse_result(buf, &r);
	assert_int_equal(r.kind, 'R');
	assert_int_equal(r.unit, 5);
	assert_int_equal(r.r.rcpt, 1); /* the envelope's index, not the group's */
	assert_int_equal(r.r.state, MS_RCPT_DEFERRED);
	/* Then the unit's connection facts (C, for the metrics), then X. */
	assert_true(!strncmp(nl + 1, "D 5 0 1\nC 5 ", 12));
	char *cline = strchr(nl + 1, '\n') + 1, *cnl = strchr(cline, '\n');
	*cnl = '\0';
	ms_agent_parse_result(cline, &r);
	assert_int_equal(r.kind, 'C');
	assert_int_equal(r.unit, 5);
	assert_string_equal(cnl + 1, "X 5\n");
	ms_agent_parse_result("C 7 3 1 2 0 1 4 1 0 9", &r);
	assert_int_equal(r.kind, 'C');
	assert_true(r.conn.connections == 3 && r.conn.reused == 1 && r.conn.tls_verified == 2 &&
	            r.conn.plain == 1 && r.conn.dns_ok == 4 && r.conn.dns_temp == 1 &&
	            r.conn.dns_cached == 9);
	ms_agent_parse_result("C 7 3 1 2", &r); /* short: not ours */
	assert_int_equal(r.kind, 0);
	close(in[0]);
	close(out[0]);
	ms_buf_free(&w);
	ms_env_free(&e);
	tmp_spool_remove(sp);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_printable),
		cmocka_unit_test(test_header_line_rule),
		cmocka_unit_test(test_drop_checks_the_data),
		cmocka_unit_test(test_drop_sets_what_the_queue_owns),
		cmocka_unit_test(test_handoff),
		cmocka_unit_test(test_agent_grammar),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
