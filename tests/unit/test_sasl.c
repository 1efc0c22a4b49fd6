/*
 * test_sasl.c - SASL mechanisms: RFC 7677's SCRAM-SHA-256 example, PLAIN
 * and LOGIN encodings, XOAUTH2, strict base64, mechanism choice.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "mailspool/sasl.h"

static char *b64(const char *s)
{
	return ms_b64_encode(s, strlen(s));
}

static void test_scram_rfc7677(void **state)
{
	(void)state;
	ms_sasl *s = ms_sasl_new("SCRAM-SHA-256", "user", "pencil", NULL);
	ms_sasl_set_nonce(s, "rOprNGfwEbeRWgbNEkqO");
	char *r;
	assert_int_equal(ms_sasl_initial(s, &r, NULL), MS_OK);
	char *want = b64("n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
	assert_string_equal(r, want);
	free(r);
	free(want);
	char *sf = b64("r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
	               "s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096");
	assert_int_equal(ms_sasl_step(s, sf, &r, NULL), MS_OK);
	want = b64("c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
	           "p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=");
	assert_string_equal(r, want);
	free(r);
	free(want);
	/* A forged server signature is refused. */
	char *bad = b64("v=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=");
	ms_error err;
	assert_int_equal(ms_sasl_step(s, bad, &r, &err), MS_ERR_PROTOCOL);
	free(bad);
	char *good = b64("v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=");
	assert_int_equal(ms_sasl_step(s, good, &r, NULL), MS_OK);
	assert_string_equal(r, "");
	free(r);
	assert_int_equal(ms_sasl_finish(s, "2.7.0 ok", NULL), MS_OK);
	free(good);
	free(sf);
	ms_sasl_free(s);
	/* A server that skips the proof does not pass. */
	s = ms_sasl_new("SCRAM-SHA-256", "user", "pencil", NULL);
	assert_int_equal(ms_sasl_initial(s, &r, NULL), MS_OK);
	free(r);
	assert_int_equal(ms_sasl_finish(s, "2.7.0 ok", &err), MS_ERR_PROTOCOL);
	/* A server nonce that does not extend ours is refused. */
	sf = b64("r=someoneelse,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096");
	assert_int_equal(ms_sasl_step(s, sf, &r, &err), MS_ERR_PROTOCOL);
	free(sf);
	ms_sasl_free(s);
}

static void test_plain_login_xoauth2(void **state)
{
	(void)state;
	char *r;
	ms_sasl *s = ms_sasl_new("PLAIN", "tim", "tanstaaftanstaaf", NULL);
	assert_int_equal(ms_sasl_initial(s, &r, NULL), MS_OK);
	assert_string_equal(r, "AHRpbQB0YW5zdGFhZnRhbnN0YWFm"); /* RFC 4954's example */
	free(r);
	ms_sasl_free(s);
	s = ms_sasl_new("LOGIN", "alice", "s3cret", NULL);
	assert_int_equal(ms_sasl_initial(s, &r, NULL), MS_OK);
	assert_null(r);
	assert_int_equal(ms_sasl_step(s, "VXNlcm5hbWU6", &r, NULL), MS_OK);
	assert_string_equal(r, "YWxpY2U=");
	free(r);
	assert_int_equal(ms_sasl_step(s, "UGFzc3dvcmQ6", &r, NULL), MS_OK);
	assert_string_equal(r, "czNjcmV0");
	free(r);
	ms_error err;
	assert_int_equal(ms_sasl_step(s, "not base64!", &r, &err), MS_ERR_PROTOCOL);
	ms_sasl_free(s);
	s = ms_sasl_new("XOAUTH2", "a@b.test", "tok", NULL);
	assert_int_equal(ms_sasl_initial(s, &r, NULL), MS_OK);
	const char *raw = "user=a@b.test\001auth=Bearer tok\001\001";
	char *want = ms_b64_encode(raw, strlen(raw));
	assert_string_equal(r, want);
	free(want);
	free(r);
	assert_int_equal(ms_sasl_step(s, "eyJzdGF0dXMiOiI0MDEifQ==", &r, NULL), MS_OK);
	assert_string_equal(r, "");
	free(r);
	ms_sasl_free(s);
}

static void test_b64_and_choice(void **state)
{
	(void)state;
	unsigned char out[64];
	assert_int_equal(ms_b64_decode("", out, sizeof out), 0);
	assert_int_equal(ms_b64_decode("YQ==", out, sizeof out), 1);
	assert_int_equal(ms_b64_decode("YWI=", out, sizeof out), 2);
	assert_int_equal(ms_b64_decode("YWJj", out, sizeof out), 3);
	assert_int_equal(ms_b64_decode("YQ=", out, sizeof out), -1);
	assert_int_equal(ms_b64_decode("Y=Q=", out, sizeof out), -1);
	assert_int_equal(ms_b64_decode("YW\nJj", out, sizeof out), -1);
	assert_int_equal(ms_b64_decode("YW*j", out, sizeof out), -1);
	assert_int_equal(ms_b64_decode("YR==", out, sizeof out), -1); /* stray bits */
	assert_int_equal(ms_b64_decode("YWJ=", out, sizeof out), -1);
	assert_string_equal(ms_sasl_choose("LOGIN PLAIN SCRAM-SHA-256", MS_SASL_DEFAULT_MECHS),
	                    "SCRAM-SHA-256");
	assert_string_equal(ms_sasl_choose("login plain", MS_SASL_DEFAULT_MECHS), "PLAIN");
	assert_string_equal(ms_sasl_choose("CRAM-MD5 LOGIN", MS_SASL_DEFAULT_MECHS), "LOGIN");
	assert_null(ms_sasl_choose("CRAM-MD5 GSSAPI", MS_SASL_DEFAULT_MECHS));
	assert_null(ms_sasl_choose("PLAINX", MS_SASL_DEFAULT_MECHS));
	assert_string_equal(ms_sasl_choose("PLAIN XOAUTH2", "XOAUTH2"), "XOAUTH2");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_scram_rfc7677),
		cmocka_unit_test(test_plain_login_xoauth2),
		cmocka_unit_test(test_b64_and_choice),
	};
	return cmocka_run_group_tests_name("sasl", tests, NULL, NULL);
}
