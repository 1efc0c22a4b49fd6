/*
 * test_envelope.c - the envelope file format and the configuration file.
 *
 * Round trips of hostile byte strings in every string field; truncation at
 * every byte offset and every single-byte change must be refused (never
 * half-read); records out of order, repeated or unknown are refused.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <openssl/sha.h>
#include <unistd.h>

#include "mailspool/conf.h"
#include "mailspool/envelope.h"

static void build(ms_envelope *e, const char *sender, const char *addr, const char *text)
{
	ms_env_init(e);
	snprintf(e->id, sizeof e->id, "0005e1f2a3b4c5d6e7f8a9b0c");
	e->arrival = 1795300000;
	e->uid = 1000;
	e->size = 4096;
	e->flags = MS_ENV_HOLD;
	assert_int_equal(ms_env_set_sender(e, sender, NULL), MS_OK);
	assert_int_equal(ms_env_add_rcpt(e, addr, 1795300000, NULL), MS_OK);
	assert_int_equal(ms_env_add_rcpt(e, "second@example.test", -5, NULL), MS_OK);
	ms_env_rcpt *r = &e->rcpts[0];
	r->state = MS_ENV_DEFERRED;
	r->tier = 2;
	r->next = 1795314400;
	assert_int_equal(ms_env_record_attempt(r, 1795300100, 451, "4.3.0", text,
	                                       "verified TLSv1.3 TLS_AES_256_GCM_SHA384", NULL),
	                 MS_OK);
	assert_int_equal(ms_env_record_attempt(r, 1795302000, 0, "", "", NULL, NULL), MS_OK);
	/* A DSN request (RFC 3461) for the message and the second recipient. */
	e->dsn_ret = 1;
	e->dsn_envid = strdup("ENV-1+x");
	e->rcpts[1].notify = 2 | 4;
	e->rcpts[1].orcpt = strdup("rfc822;second@example.test");
	/* Header lines signed at commit, sent before the data (DKIM). */
	e->prefix = strdup("DKIM-Signature: v=1; a=ed25519-sha256; d=example.test;\r\n"
	                   "\ts=s1; b=AbC+/=;\r\n");
}

static void expect_same(const ms_envelope *a, const ms_envelope *b)
{
	assert_string_equal(a->id, b->id);
	assert_int_equal(a->arrival, b->arrival);
	assert_int_equal(a->uid, b->uid);
	assert_string_equal(a->sender, b->sender);
	assert_int_equal(a->size, b->size);
	assert_int_equal(a->flags, b->flags);
	assert_int_equal(a->nrcpts, b->nrcpts);
	assert_int_equal(a->dsn_ret, b->dsn_ret);
	assert_true((a->dsn_envid == NULL) == (b->dsn_envid == NULL));
	if (a->dsn_envid)
		assert_string_equal(a->dsn_envid, b->dsn_envid);
	assert_true((a->prefix == NULL) == (b->prefix == NULL));
	if (a->prefix)
		assert_string_equal(a->prefix, b->prefix);
	for (size_t i = 0; i < a->nrcpts; i++) {
		const ms_env_rcpt *x = &a->rcpts[i], *y = &b->rcpts[i];
		assert_string_equal(x->addr, y->addr);
		assert_int_equal(x->notify, y->notify);
		assert_true((x->orcpt == NULL) == (y->orcpt == NULL));
		if (x->orcpt)
			assert_string_equal(x->orcpt, y->orcpt);
		assert_int_equal(x->state, y->state);
		assert_int_equal(x->attempts, y->attempts);
		assert_int_equal(x->tier, y->tier);
		assert_int_equal(x->next, y->next);
		assert_int_equal(x->last, y->last);
		assert_int_equal(x->code, y->code);
		assert_string_equal(x->enh, y->enh);
		assert_string_equal(x->text, y->text);
		assert_int_equal(x->nhist, y->nhist);
		for (size_t k = 0; k < x->nhist; k++) {
			assert_int_equal(x->hist[k].when, y->hist[k].when);
			assert_int_equal(x->hist[k].code, y->hist[k].code);
			assert_string_equal(x->hist[k].enh, y->hist[k].enh);
			assert_string_equal(x->hist[k].text, y->hist[k].text);
			assert_string_equal(x->hist[k].tls, y->hist[k].tls);
		}
	}
}

static const char *const nasty[] = {
	"", " ", "=", "%", "%41", "a b", "line\r\nR 0 0 0 0 0 0 = =x@y =", "\n", "E 3\nC 00",
	"\xc3\xa9t\xc3\xa9 UTF-8", "\x01\x1f\x7f\x80\xff", "trailing space ", "==%%==",
};

static void test_round_trip(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof nasty / sizeof nasty[0]; i++) {
		ms_envelope e, back;
		build(&e, nasty[i], *nasty[i] ? nasty[i] : "x@y", nasty[i]);
		ms_buf b;
		ms_buf_init(&b, 0);
		assert_int_equal(ms_env_serialize(&e, &b, NULL), MS_OK);
		ms_error err;
		if (ms_env_parse(ms_buf_ptr(&b), ms_buf_avail(&b), &back, &err) != MS_OK)
			fail_msg("field %zu: %s\n%s", i, err.msg, ms_buf_ptr(&b));
		expect_same(&e, &back);
		/* Serialising what was read gives the same bytes. */
		ms_buf b2;
		ms_buf_init(&b2, 0);
		assert_int_equal(ms_env_serialize(&back, &b2, NULL), MS_OK);
		assert_int_equal(ms_buf_avail(&b), ms_buf_avail(&b2));
		assert_memory_equal(ms_buf_ptr(&b), ms_buf_ptr(&b2), ms_buf_avail(&b));
		ms_buf_free(&b);
		ms_buf_free(&b2);
		ms_env_free(&e);
		ms_env_free(&back);
	}
}

static void test_damage_is_detected(void **state)
{
	(void)state;
	ms_envelope e, back;
	build(&e, "sender@example.test", "rcpt@example.test", "4.3.0 try later");
	ms_buf b;
	ms_buf_init(&b, 0);
	assert_int_equal(ms_env_serialize(&e, &b, NULL), MS_OK);
	const char *p = ms_buf_ptr(&b);
	size_t n = ms_buf_avail(&b);
	/* Truncated at every offset. */
	for (size_t k = 0; k < n; k++) {
		ms_error err;
		if (ms_env_parse(p, k, &back, &err) != MS_ERR_DATA)
			fail_msg("truncation at %zu of %zu was accepted", k, n);
	}
	/* Any single byte changed. */
	char *copy = malloc(n);
	for (size_t k = 0; k < n; k++) {
		memcpy(copy, p, n);
		copy[k] ^= 0x01;
		if (ms_env_parse(copy, n, &back, NULL) != MS_ERR_DATA)
			fail_msg("a flipped bit at %zu was accepted", k);
	}
	free(copy);
	ms_buf_free(&b);
	ms_env_free(&e);
}

/* Well-formed checksums over bad structure are still refused. */
static void test_structure(void **state)
{
	(void)state;
	static const char *const bodies[] = {
		"MSENV 1\nA 1\nI x\nU 0\nS =\nZ 0\nF 0\nE 6\n",         /* out of order */
		"MSENV 1\nI x\nA 1\nU 0\nS =\nZ 0\nF 0\nI y\nE 7\n",    /* repeated */
		"MSENV 1\nI x\nA 1\nU 0\nS =\nZ 0\nF 0\nQ 1\nE 7\n",    /* unknown */
		"MSENV 1\nI x\nA 1\nU 0\nS =\nZ 0\nF 0\nE 5\n",         /* wrong count */
		"MSENV 1\nI x\nA 01\nU 0\nS =\nZ 0\nF 0\nE 6\n",        /* leading zero */
		"MSENV 1\nI x\nA 1\nU 0\nS =a b\nZ 0\nF 0\nE 6\n",      /* unescaped space */
		"MSENV 1\nI x\nA 1\nU 0\nS =%61\nZ 0\nF 0\nE 6\n",      /* needless escape */
		"MSENV 1\nI x\nA 1\nU 0\nS =%00\nZ 0\nF 0\nE 6\n",      /* NUL */
		"MSENV 1\nI x\nA 1\nU 0\nS =\nZ 0\nF 0\nH 1 0 = =\nE 7\n", /* H before R */
		"MSENV 1\nI ../x\nA 1\nU 0\nS =\nZ 0\nF 0\nE 6\n",      /* bad id */
		"MSENV 1\nI x\nA 1\nU 0\nS =\nZ 0\nF 0\nR 9 0 0 0 0 0 = =a@b =\nE 7\n", /* state */
		"MSENV 2\nI x\nA 1\nU 0\nS =\nZ 0\nF 0\nE 6\n",         /* version */
		"MSENV 1\nI x\nA 1\nU 0\nS =\nZ 0\nF 0\nR 0 0 0 0 0 0 = =a@b =\nP =x\nE 8\n", /* P late */
		"MSENV 1\nI x\nA 1\nU 0\nS =\nZ 0\nF 0\nP =x\nP =y\nE 8\n", /* P twice */
		"MSENV 1\nI x\nA 1\nU 0\nS =\nZ 0\nF 0\nP =\nE 7\n",  /* empty prefix */
	};
	for (size_t i = 0; i < sizeof bodies / sizeof bodies[0]; i++) {
		/* Each gets a correct checksum, so only the structure is wrong. */
		char file[1024];
		unsigned char md[32];
		SHA256((const unsigned char *)bodies[i], strlen(bodies[i]), md);
		int k = snprintf(file, sizeof file, "%sC ", bodies[i]);
		for (int j = 0; j < 32; j++)
			k += snprintf(file + k, sizeof file - (size_t)k, "%02x", md[j]);
		k += snprintf(file + k, sizeof file - (size_t)k, "\n");
		ms_envelope e;
		ms_error err;
		if (ms_env_parse(file, (size_t)k, &e, &err) != MS_ERR_DATA)
			fail_msg("body %zu was accepted", i);
	}
	/* And the minimal valid one passes. */
	const char *minimal = "MSENV 1\nI x\nA 1\nU 0\nS =\nZ 0\nF 0\nE 6\n";
	char file[512];
	unsigned char md[32];
	SHA256((const unsigned char *)minimal, strlen(minimal), md);
	int k = snprintf(file, sizeof file, "%sC ", minimal);
	for (int j = 0; j < 32; j++)
		k += snprintf(file + k, sizeof file - (size_t)k, "%02x", md[j]);
	k += snprintf(file + k, sizeof file - (size_t)k, "\n");
	ms_envelope e;
	ms_error err;
	if (ms_env_parse(file, (size_t)k, &e, &err) != MS_OK)
		fail_msg("minimal envelope refused: %s", err.msg);
	assert_string_equal(e.sender, "");
	ms_env_free(&e);
}

static void test_history_cap(void **state)
{
	(void)state;
	ms_envelope e, back;
	build(&e, "a@b", "c@d", "x");
	for (int i = 0; i < 40; i++)
		ms_env_record_attempt(&e.rcpts[1], 1000 + i, 450, "4.0.0", "again", NULL, NULL);
	assert_int_equal(e.rcpts[1].nhist, MS_ENV_HISTORY);
	assert_int_equal(e.rcpts[1].attempts, 40);
	assert_int_equal(e.rcpts[1].hist[0].when, 1000 + 40 - MS_ENV_HISTORY);
	ms_buf b;
	ms_buf_init(&b, 0);
	ms_env_serialize(&e, &b, NULL);
	assert_int_equal(ms_env_parse(ms_buf_ptr(&b), ms_buf_avail(&b), &back, NULL), MS_OK);
	expect_same(&e, &back);
	assert_int_equal(ms_env_next_due(&back), -5);
	ms_buf_free(&b);
	ms_env_free(&e);
	ms_env_free(&back);
}

static void test_conf(void **state)
{
	(void)state;
	assert_int_equal(ms_conf_duration("0"), 0);
	assert_int_equal(ms_conf_duration("30m"), 1800);
	assert_int_equal(ms_conf_duration("4h"), 14400);
	assert_int_equal(ms_conf_duration("2d"), 172800);
	assert_int_equal(ms_conf_duration("90s"), 90);
	assert_int_equal(ms_conf_duration("x"), -1);
	assert_int_equal(ms_conf_duration("5w"), -1);
	assert_int_equal(ms_conf_duration("-5"), -1);
	int ok;
	assert_int_equal(ms_conf_size("50M", &ok), 50u << 20);
	assert_true(ok);
	ms_conf_size("5X", &ok);
	assert_false(ok);
	char path[] = "/tmp/test_conf.XXXXXX";
	int fd = mkstemp(path);
	const char *good = "# comment\n\nspool_dir = /tmp/spool\nhostname = mx.example.test\n"
	                   "retry_tiers = 0 1m 10m\nmax_message_size = 1M\nmin_free_space = 0\n"
	                   "claim_lease = 2m\nclock_skew = 5s\n";
	assert_int_equal(write(fd, good, strlen(good)), (ssize_t)strlen(good));
	close(fd);
	ms_conf c;
	ms_error err;
	assert_int_equal(ms_conf_load(&c, path, 1, &err), MS_OK);
	assert_string_equal(c.spool_dir, "/tmp/spool");
	assert_string_equal(c.hostname, "mx.example.test");
	assert_int_equal(c.ntiers, 3);
	assert_int_equal(c.retry_tiers[2], 600);
	assert_int_equal(c.max_message_size, 1u << 20);
	assert_int_equal(c.min_free_space, 0);
	assert_int_equal(c.claim_lease, 120);
	assert_int_equal(c.clock_skew, 5);
	static const char *const bad[] = { "spool_dri = /x\n", "spool_dir = relative\n",
		                               "retry_tiers = 1h 30m\n", "max_message_size = lots\n",
		                               "hostname = bad host\n", "just words\n",
		                               "hostname = a.b\nhostname = c.d\n" };
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		fd = open(path, O_WRONLY | O_TRUNC);
		assert_int_equal(write(fd, bad[i], strlen(bad[i])), (ssize_t)strlen(bad[i]));
		close(fd);
		if (ms_conf_load(&c, path, 1, &err) != MS_ERR_USAGE || !strstr(err.msg, path))
			fail_msg("bad conf %zu accepted (%s)", i, err.msg);
	}
	unlink(path);
	assert_int_equal(ms_conf_load(&c, path, 1, &err), MS_ERR_IO);
	assert_int_equal(ms_conf_load(&c, path, 0, &err), MS_OK); /* absent default: defaults */
	assert_int_equal(c.ntiers, 7);
	assert_int_equal(c.retry_tiers[6], 48 * 3600);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_round_trip),
		cmocka_unit_test(test_damage_is_detected),
		cmocka_unit_test(test_structure),
		cmocka_unit_test(test_history_cap),
		cmocka_unit_test(test_conf),
	};
	return cmocka_run_group_tests_name("envelope and conf", tests, NULL, NULL);
}
