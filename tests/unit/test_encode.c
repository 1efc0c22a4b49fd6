/*
 * test_encode.c - the DATA encoder (R13-R17, I1-I3), table-driven; every
 * input also fed one byte at a time, and random inputs checked for the
 * invariants: no bare CR or LF, and the only CRLF.CRLF is the terminator.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "mailspool/encode.h"

typedef struct ecase {
	const char *in;
	size_t len;
	const char *out;
} ecase;

#define E(s, o) { s, sizeof(s) - 1, o }

static const ecase cases[] = {
	E("", ".\r\n"),                                  /* empty body: just the dot */
	E("a\r\n", "a\r\n.\r\n"),                        /* R15: no extra CRLF */
	E("a", "a\r\n.\r\n"),                            /* R15: CRLF added */
	E(".", "..\r\n.\r\n"),                           /* I1 */
	E("..", "...\r\n.\r\n"),
	E(".x\n", "..x\r\n.\r\n"),
	E(". \n", ".. \r\n.\r\n"),
	E("a\n.\n", "a\r\n..\r\n.\r\n"),
	E("x\r.\r\n", "x\r\n..\r\n.\r\n"),               /* R14: notqmail's smuggling trap */
	E("x\n.\n", "x\r\n..\r\n.\r\n"),
	E("x\n.\r\n", "x\r\n..\r\n.\r\n"),
	E("x\r\n.\n", "x\r\n..\r\n.\r\n"),
	E("x\r.\r", "x\r\n..\r\n.\r\n"),
	E("a\r\r\n", "a\r\n\r\n.\r\n"),                  /* no bare CR survives */
	E("a\rb", "a\r\nb\r\n.\r\n"),
	E("a\r", "a\r\n.\r\n"),                          /* CR at EOF */
	E("a\nb\r\nc\rd", "a\r\nb\r\nc\r\nd\r\n.\r\n"),  /* mixed endings */
	E("x\r.\r\nMAIL FROM:<evil>\n", "x\r\n..\r\nMAIL FROM:<evil>\r\n.\r\n"),
	E("\r\n.\r\n", "\r\n..\r\n.\r\n"),
	E("h\xc3\xa9\n", "h\xc3\xa9\r\n.\r\n"),
};

static size_t encode(const char *in, size_t n, size_t step, char *out, ms_enc *e)
{
	size_t o = 0;
	ms_enc_init(e, 1);
	for (size_t i = 0; i < n; i += step)
		o += ms_enc_feed(e, in + i, i + step <= n ? step : n - i, out + o);
	o += ms_enc_finish(e, out + o, 1);
	out[o] = '\0';
	return o;
}

static void test_table(void **state)
{
	(void)state;
	char out[1024];
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		const ecase *c = &cases[i];
		for (size_t step = 1; step <= c->len + 1; step += c->len ? c->len : 1) {
			ms_enc e;
			size_t n = encode(c->in, c->len, step, out, &e);
			if (n != strlen(c->out) || memcmp(out, c->out, n) != 0)
				fail_msg("case %zu step %zu: got \"%s\"", i, step, out);
		}
	}
}

/* RFC 1870: SIZE counts CRLFs but not stuffing dots or the terminator. */
static void test_stats(void **state)
{
	(void)state;
	char out[64];
	ms_enc e;
	encode(".a\nbb\r\n", 7, 1, out, &e);
	assert_int_equal(e.size, 2 + 2 + 2 + 2);
	assert_int_equal(e.lines, 2);
	assert_int_equal(e.max_line, 2);
	assert_false(e.has_8bit);
	encode("a\x00z\xff", 4, 4, out, &e);
	assert_true(e.has_nul);
	assert_true(e.has_8bit);
	/* I3: 998 is allowed, 999 is not, measured without the CRLF. */
	char line[1200];
	char *big = malloc(4 * 1200 + 8);
	memset(line, 'x', 998);
	encode(line, 998, 998, big, &e);
	assert_int_equal(e.max_line, 998);
	memset(line, 'x', 999);
	encode(line, 999, 999, big, &e);
	assert_int_equal(e.max_line, 999);
	free(big);
}

/* Random bytes from a small alphabet: invariants hold for any split. */
static void test_random_invariants(void **state)
{
	(void)state;
	static const char alpha[] = { '\r', '\n', '.', 'a', ' ' };
	char in[64], out[4 * 64 + 8];
	srand(12345);
	for (int iter = 0; iter < 200000; iter++) {
		size_t n = (size_t)(rand() % 24);
		for (size_t i = 0; i < n; i++)
			in[i] = alpha[rand() % 5];
		ms_enc e;
		size_t o = encode(in, n, (size_t)(rand() % 5) + 1, out, &e);
		assert_true(o >= 3 && !memcmp(out + o - 3, ".\r\n", 3));
		for (size_t i = 0; i < o; i++) {
			if (out[i] == '\r')
				assert_true(i + 1 < o && out[i + 1] == '\n');
			if (out[i] == '\n')
				assert_true(i > 0 && out[i - 1] == '\r');
		}
		/* The only "\r\n.\r\n" (or a leading ".\r\n") is the terminator. */
		for (size_t i = 0; i + 5 < o; i++)
			assert_false(!memcmp(out + i, "\r\n.\r\n", 5));
		if (o > 3)
			assert_false(!memcmp(out, ".\r\n", 3));
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_table),
		cmocka_unit_test(test_stats),
		cmocka_unit_test(test_random_invariants),
	};
	return cmocka_run_group_tests_name("data encoder", tests, NULL, NULL);
}
