/*
 * test_headers.c - header block reading, address lists, Bcc removal (-t).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mailspool/headers.h"

typedef struct collect {
	char all[1024];
} collect;

static int add(void *ctx, const char *a)
{
	collect *c = ctx;
	size_t n = strlen(c->all);
	snprintf(c->all + n, sizeof c->all - n, "%s%s", n ? "|" : "", a);
	return 0;
}

static void test_lists(void **state)
{
	(void)state;
	static const struct {
		const char *body;
		const char *want;
	} cases[] = {
		{ " a@x.test", "a@x.test" },
		{ " A <a@x.test>, b@y.test", "a@x.test|b@y.test" },
		{ " \"Last, First\" <f@x.test>", "f@x.test" },
		{ " f@x.test (Fred, the boss)", "f@x.test" },
		{ " team: a@x.test, B <b@x.test>;, c@x.test", "a@x.test|b@x.test|c@x.test" },
		{ " undisclosed-recipients:;", "" },
		{ " a@x.test,\r\n\tb@x.test", "a@x.test|b@x.test" },
		{ " <@relay.test:a@x.test>", "a@x.test" },
		{ " \"odd name\"@x.test", "\"odd name\"@x.test" },
		{ " a@[192.0.2.1]", "a@[192.0.2.1]" },
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		collect c = { "" };
		ms_hdr_parse_list(cases[i].body, strlen(cases[i].body), add, &c);
		if (strcmp(c.all, cases[i].want))
			fail_msg("case %zu: got \"%s\", want \"%s\"", i, c.all, cases[i].want);
	}
	/* No address list: refused, never run together into a wrong one. */
	static const char *const malformed[] = {
		" Name <a@x.test",          /* the > is missing */
		" a@x.test b@y.test",       /* the comma is missing */
		" Name a@x.test",           /* a phrase without <address> */
		" a@x.test, b c@y.test",
	};
	for (size_t i = 0; i < sizeof malformed / sizeof malformed[0]; i++) {
		collect c = { "" };
		int r = ms_hdr_parse_list(malformed[i], strlen(malformed[i]), add, &c);
		if (r != MS_HDR_MALFORMED)
			fail_msg("\"%s\": got %d (%s)", malformed[i], r, c.all);
	}
}

static void test_block_and_bcc(void **state)
{
	(void)state;
	const char msg[] = "From: a@x.test\nTo: b@x.test,\n c@x.test\nBcc: secret@x.test,\n\tother@x.test\n"
	                   "Cc: d@x.test\nbcc: s2@x.test\nSubject: hi\n\nTo: not@header.test\n";
	char path[] = "/tmp/test_headers.XXXXXX";
	int fd = mkstemp(path);
	assert_true(fd >= 0);
	unlink(path);
	assert_int_equal(write(fd, msg, sizeof msg - 1), (ssize_t)(sizeof msg - 1));
	ms_buf h;
	ms_buf_init(&h, MS_HDR_MAX);
	uint64_t body_off;
	ms_error err;
	assert_int_equal(ms_hdr_read(fd, &h, &body_off, &err), MS_OK);
	assert_int_equal(body_off, strstr(msg, "\n\n") - msg + 2);
	collect c = { "" };
	const char *f[] = { "To", "Cc", "Bcc" };
	for (int i = 0; i < 3; i++)
		ms_hdr_addresses(h.data, h.len, f[i], add, &c);
	assert_string_equal(c.all, "b@x.test|c@x.test|d@x.test|secret@x.test|other@x.test|s2@x.test");
	h.len = ms_hdr_remove(h.data, h.len, "Bcc");
	h.data[h.len] = '\0';
	assert_string_equal(h.data, "From: a@x.test\nTo: b@x.test,\n c@x.test\nCc: d@x.test\n"
	                            "Subject: hi\n\n");
	ms_buf_free(&h);
	close(fd);
}

static void test_crlf_and_no_body(void **state)
{
	(void)state;
	const char *msgs[] = { "To: a@x.test\r\n\r\nbody\r\n", "To: a@x.test\r\n", "\r\nbody" };
	const uint64_t offs[] = { 16, 14, 2 };
	for (int i = 0; i < 3; i++) {
		char path[] = "/tmp/test_headers.XXXXXX";
		int fd = mkstemp(path);
		unlink(path);
		assert_int_equal(write(fd, msgs[i], strlen(msgs[i])), (ssize_t)strlen(msgs[i]));
		ms_buf h;
		ms_buf_init(&h, MS_HDR_MAX);
		uint64_t off;
		ms_error err;
		assert_int_equal(ms_hdr_read(fd, &h, &off, &err), MS_OK);
		assert_int_equal(off, offs[i]);
		ms_buf_free(&h);
		close(fd);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_lists),
		cmocka_unit_test(test_block_and_bcc),
		cmocka_unit_test(test_crlf_and_no_body),
	};
	return cmocka_run_group_tests_name("headers", tests, NULL, NULL);
}
