/* MTA-STS policy files and MX patterns (RFC 8461 3.2, 4.1). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "mailspool/sts.h"

static int parse(const char *t, ms_sts_policy *p)
{
	char why[64];
	return ms_sts_parse(t, strlen(t), p, why, sizeof why);
}

static void test_parse(void **state)
{
	(void)state;
	ms_sts_policy p;
	assert_int_equal(parse("version: STSv1\r\nmode: enforce\r\nmx: mail.Example.COM.\r\n"
	                       "mx: *.example.net\r\nmax_age: 604800\r\nextension: ignored\r\n",
	                       &p),
	                 0);
	assert_int_equal(p.mode, MS_STS_ENFORCE);
	assert_int_equal(p.max_age, 604800);
	assert_int_equal(p.nmx, 2);
	assert_string_equal(p.mx[0], "mail.example.com");
	assert_int_equal(parse("version: STSv1\nmode: none\nmax_age: 0\n", &p), 0);
	assert_int_equal(p.mode, MS_STS_NONE);
	static const char *const bad[] = {
		"mode: enforce\nmx: a.b\nmax_age: 1\n",                      /* no version */
		"version: STSv2\nmode: enforce\nmx: a.b\nmax_age: 1\n",      /* wrong version */
		"version: STSv1\nmode: strict\nmx: a.b\nmax_age: 1\n",       /* unknown mode */
		"version: STSv1\nmode: enforce\nmx: a.b\n",                  /* no max_age */
		"version: STSv1\nmode: enforce\nmx: a.b\nmax_age: 31557601\n", /* over a year */
		"version: STSv1\nmode: enforce\nmx: a.b\nmax_age: -1\n",
		"version: STSv1\nmode: testing\nmax_age: 60\n",              /* no mx */
		"",
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
		if (parse(bad[i], &p) == 0)
			fail_msg("accepted: %s", bad[i]);
}

static void test_mx_patterns(void **state)
{
	(void)state;
	ms_sts_policy p;
	assert_int_equal(parse("version: STSv1\nmode: enforce\nmx: mail.example.com\n"
	                       "mx: *.example.net\nmax_age: 60\n",
	                       &p),
	                 0);
	assert_true(ms_sts_mx_ok(&p, "mail.example.com"));
	assert_true(ms_sts_mx_ok(&p, "MAIL.example.com."));
	assert_true(ms_sts_mx_ok(&p, "mx1.example.net"));
	assert_false(ms_sts_mx_ok(&p, "example.net"));          /* '*' is one label */
	assert_false(ms_sts_mx_ok(&p, "a.b.example.net"));      /* and only one */
	assert_false(ms_sts_mx_ok(&p, "mail.example.com.evil"));
	assert_false(ms_sts_mx_ok(&p, "xmail.example.com"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_parse),
		cmocka_unit_test(test_mx_patterns),
	};
	return cmocka_run_group_tests_name("sts", tests, NULL, NULL);
}
