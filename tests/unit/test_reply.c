/*
 * test_reply.c - the reply reader (R1-R6, R36), table-driven, every input
 * also fed one byte at a time.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <string.h>

#include "mailspool/reply.h"

typedef struct rcase {
	const char *in;
	ms_status status; /* MS_OK: a reply must come out */
	int code;
	const char *enh;
	const char *text;
	unsigned flags;
} rcase;

static const rcase cases[] = {
	{ "250\r\n", MS_OK, 250, "", "", 0 },                  /* R1: no text, no space */
	{ "250 \r\n", MS_OK, 250, "", "", 0 },
	{ "250-a\r\n250\r\n", MS_OK, 250, "", "a\n", 0 },
	{ "250 2.1.5 ok\r\n", MS_OK, 250, "2.1.5", "2.1.5 ok", 0 },
	{ "550 5.1.1 no such user\r\n", MS_OK, 550, "5.1.1", "5.1.1 no such user", 0 },
	{ "250 5.1.1 odd\r\n", MS_OK, 250, "", "5.1.1 odd", MS_REPLY_ENH_MISMATCH }, /* R36 */
	{ "354 2.0.0 go\r\n", MS_OK, 354, "", "2.0.0 go", 0 },   /* never on 3xx */
	{ "250 2.01.5 x\r\n", MS_OK, 250, "", "2.01.5 x", 0 },   /* leading zero */
	{ "250 2.1234.5 x\r\n", MS_OK, 250, "", "2.1234.5 x", 0 },
	{ "299 odd but ok\r\n", MS_OK, 299, "", "odd but ok", 0 }, /* R2 */
	{ "451 4.3.0 later\r\n", MS_OK, 451, "4.3.0", "4.3.0 later", 0 },
	{ "250-ok\r\n550 5.7.1 no\r\n", MS_OK, 550, "5.7.1", "ok\n5.7.1 no", MS_REPLY_MIXED }, /* R3 */
	{ "250 ok\n", MS_OK, 250, "", "ok", MS_REPLY_BARE_LF },  /* R6 */
	{ "250 tab\there \xff\r\n", MS_OK, 250, "", "tab\there \xff", 0 },
	{ "600 x\r\n", MS_ERR_PROTOCOL, 0, NULL, NULL, 0 },   /* R2 */
	{ "099 x\r\n", MS_ERR_PROTOCOL, 0, NULL, NULL, 0 },
	{ "2500 x\r\n", MS_ERR_PROTOCOL, 0, NULL, NULL, 0 },
	{ "25a x\r\n", MS_ERR_PROTOCOL, 0, NULL, NULL, 0 },
	{ "260 x\r\n", MS_OK, 260, "", "x", 0 },
	{ "hello\r\n250 ok\r\n", MS_ERR_PROTOCOL, 0, NULL, NULL, 0 }, /* R4 */
	{ "25\r\n", MS_ERR_PROTOCOL, 0, NULL, NULL, 0 },
	{ "250_x\r\n", MS_ERR_PROTOCOL, 0, NULL, NULL, 0 },
};

static ms_status feed(const char *in, size_t step, ms_reply *out, int *done)
{
	ms_reply_reader rr;
	ms_buf b;
	ms_error err;
	ms_reply_reader_init(&rr);
	ms_buf_init(&b, 0);
	size_t n = strlen(in);
	ms_status st = MS_OK;
	*done = 0;
	for (size_t i = 0; i < n && !*done && st == MS_OK; i += step) {
		ms_buf_append(&b, in + i, i + step <= n ? step : n - i);
		st = ms_reply_read(&rr, &b, out, done, &err);
	}
	ms_reply_reader_free(&rr);
	ms_buf_free(&b);
	return st;
}

static void test_table(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		const rcase *c = &cases[i];
		for (size_t step = 1; step <= strlen(c->in); step += strlen(c->in) - 1) {
			ms_reply r;
			int done;
			ms_status st = feed(c->in, step, &r, &done);
			if (c->status != MS_OK) {
				if (st != c->status)
					fail_msg("case %zu \"%s\": want protocol error, got %d", i, c->in, st);
				continue;
			}
			if (st != MS_OK || !done)
				fail_msg("case %zu \"%s\" step %zu: no reply (st %d)", i, c->in, step, st);
			assert_int_equal(r.code, c->code);
			assert_string_equal(r.enh, c->enh);
			assert_string_equal(r.text, c->text);
			assert_int_equal(r.flags, c->flags);
			ms_reply_free(&r);
			if (step == strlen(c->in))
				break;
		}
	}
}

/* R5: an endless line or an endless continuation errors at the cap. */
static void test_caps(void **state)
{
	(void)state;
	ms_reply_reader rr;
	ms_buf b;
	ms_error err;
	ms_reply r;
	int done = 0;
	ms_reply_reader_init(&rr);
	ms_buf_init(&b, 0);
	ms_status st = MS_OK;
	for (int i = 0; i < 10000 && st == MS_OK; i++) {
		ms_buf_append(&b, "250-xxxxxxxx\r\n", 14);
		st = ms_reply_read(&rr, &b, &r, &done, &err);
	}
	assert_int_equal(st, MS_ERR_PROTOCOL);
	ms_buf_reset(&b);
	ms_reply_reader_free(&rr);
	ms_reply_reader_init(&rr);
	st = MS_OK;
	for (int i = 0; i < 1000 && st == MS_OK; i++) {
		ms_buf_append(&b, "xxxxxxxx", 8);
		st = ms_reply_read(&rr, &b, &r, &done, &err);
	}
	assert_int_equal(st, MS_ERR_PROTOCOL);
	ms_reply_reader_free(&rr);
	ms_buf_free(&b);
}

/* Two replies in one segment come out one at a time. */
static void test_two_in_one(void **state)
{
	(void)state;
	ms_reply_reader rr;
	ms_buf b;
	ms_error err;
	ms_reply r;
	int done;
	ms_reply_reader_init(&rr);
	ms_buf_init(&b, 0);
	ms_buf_appendstr(&b, "250 a\r\n354 b\r\n25");
	assert_int_equal(ms_reply_read(&rr, &b, &r, &done, &err), MS_OK);
	assert_true(done);
	assert_int_equal(r.code, 250);
	ms_reply_free(&r);
	assert_int_equal(ms_reply_read(&rr, &b, &r, &done, &err), MS_OK);
	assert_true(done);
	assert_int_equal(r.code, 354);
	ms_reply_free(&r);
	assert_int_equal(ms_reply_read(&rr, &b, &r, &done, &err), MS_OK);
	assert_false(done);
	assert_true(ms_reply_reader_busy(&rr, &b));
	ms_reply_reader_free(&rr);
	ms_buf_free(&b);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_table),
		cmocka_unit_test(test_caps),
		cmocka_unit_test(test_two_in_one),
	};
	return cmocka_run_group_tests_name("reply reader", tests, NULL, NULL);
}
