/*
 * test_addr.c - envelope address checks (R11, I5, RFC 5321 4.1.2).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <string.h>

#include "mailspool/addr.h"

typedef struct acase {
	const char *in;
	size_t len; /* 0: strlen */
	ms_addr_role role;
	const char *want; /* NULL: refused */
	unsigned flags;
} acase;

#define S MS_ADDR_SENDER
#define R MS_ADDR_RECIPIENT
#define L64 "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
#define D63 "ddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd"

static const acase cases[] = {
	{ "a@b.test", 0, R, "a@b.test", 0 },
	{ "<a@b.test>", 0, R, "a@b.test", 0 },
	{ "", 0, S, "", MS_ADDR_NULL },
	{ "<>", 0, S, "", MS_ADDR_NULL },
	{ "", 0, R, NULL, 0 },
	{ "Postmaster", 0, R, "Postmaster", 0 },
	{ "postmaster", 0, S, NULL, 0 },
	{ "first.last+tag@sub.example.test", 0, R, "first.last+tag@sub.example.test", 0 },
	{ "a b@x.test", 0, R, "\"a b\"@x.test", 0 },            /* quoted as 4.1.2 requires */
	{ "a\"q@x.test", 0, R, "\"a\\\"q\"@x.test", 0 },
	{ "a>b@x.test", 0, R, "\"a>b\"@x.test", 0 },
	{ "\"quoted ok\"@x.test", 0, R, "\"quoted ok\"@x.test", 0 },
	{ ".a@x.test", 0, R, "\".a\"@x.test", 0 },
	{ "a..b@x.test", 0, R, "\"a..b\"@x.test", 0 },
	{ "a@[192.0.2.1]", 0, R, "a@[192.0.2.1]", 0 },
	{ "a@[IPv6:2001:db8::1]", 0, R, "a@[IPv6:2001:db8::1]", 0 },
	{ "a@[300.0.0.1]", 0, R, NULL, 0 },
	{ "j\xc3\xb6rg@x.test", 0, R, "j\xc3\xb6rg@x.test", MS_ADDR_UTF8 },
	{ "a@b\xc3\xbc.test", 0, R, "a@b\xc3\xbc.test", MS_ADDR_UTF8 },
	{ "a\xff@x.test", 0, R, NULL, 0 },                    /* not UTF-8 */
	{ "a@b>\r\nRCPT TO:<c@d", 0, R, NULL, 0 },             /* I5 injection */
	{ "a@b.test\r\n", 0, R, NULL, 0 },
	{ "a@b.test\n", 0, S, NULL, 0 },
	{ "a\x00@b.test", 9, R, NULL, 0 },                   /* NUL */
	{ "a\x7f@b.test", 0, R, NULL, 0 },
	{ "a@b>", 0, R, NULL, 0 },
	{ "nodomain", 0, R, NULL, 0 },
	{ "a@@x.test", 0, R, NULL, 0 },                     /* a typo, not local part "a@" */
	{ "a@b@x.test", 0, R, NULL, 0 },
	{ "\"a@b\"@x.test", 0, R, "\"a@b\"@x.test", 0 }, /* quoted: as meant */
	{ "a@", 0, R, NULL, 0 },
	{ "@b.test", 0, R, NULL, 0 },
	{ "a@-b.test", 0, R, NULL, 0 },
	{ "a@b-.test", 0, R, NULL, 0 },
	{ "a@b..test", 0, R, NULL, 0 },
	{ "a@b.test.", 0, R, NULL, 0 },
	{ "a@b_c.test", 0, R, NULL, 0 },
	{ L64 "@x.test", 0, R, L64 "@x.test", 0 },            /* 64: the limit */
	{ L64 "a@x.test", 0, R, NULL, 0 },                    /* 65 */
	{ "a@" D63 "." D63 "." D63 "." D63, 0, R, NULL, 0 },  /* path over 256 */
	{ "a@" D63 "x.test", 0, R, NULL, 0 },                 /* label over 63 */
};

static void test_table(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		const acase *c = &cases[i];
		char out[MS_ADDR_MAX + 1];
		unsigned fl = 0;
		ms_error err;
		size_t len = c->len ? c->len : strlen(c->in);
		ms_status st = ms_addr_parse(c->in, len, c->role, out, &fl, &err);
		if (!c->want) {
			if (st == MS_OK)
				fail_msg("case %zu: \"%s\" accepted as \"%s\"", i, c->in, out);
			assert_true(strlen(err.msg) > 0);
			continue;
		}
		if (st != MS_OK)
			fail_msg("case %zu: \"%s\" refused: %s", i, c->in, err.msg);
		assert_string_equal(out, c->want);
		assert_int_equal(fl, c->flags);
		/* Whatever is accepted fits a path and has no control bytes. */
		assert_true(strlen(out) + 2 <= MS_ADDR_PATH_MAX);
		for (const char *p = out; *p; p++)
			assert_true((unsigned char)*p >= 0x20 && *p != 0x7f);
	}
}

static void test_params(void **state)
{
	(void)state;
	assert_true(ms_addr_param_ok("SIZE=100"));
	assert_false(ms_addr_param_ok("a b"));
	assert_false(ms_addr_param_ok("a\r\nb"));
	assert_false(ms_addr_param_ok(""));
	assert_true(ms_addr_domain_ok("mail.example.test", 17, NULL));
	assert_false(ms_addr_domain_ok("mail example", 12, NULL));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_table),
		cmocka_unit_test(test_params),
	};
	return cmocka_run_group_tests_name("addresses", tests, NULL, NULL);
}
