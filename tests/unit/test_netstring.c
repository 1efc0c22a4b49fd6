/*
 * test_netstring.c - strict netstrings (N1) and route URLs.
 *
 * Every vector is also fed one byte at a time: a valid netstring must say
 * "need more" at every proper prefix, and a bad one must be refused as soon
 * as the byte that makes it bad has arrived - never after waiting for more.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <string.h>

#include "mailspool/netstring.h"
#include "mailspool/route.h"

typedef struct nscase {
	const char *in;
	size_t len;          /* 0: strlen */
	size_t cap;
	ms_ns_result want;
	const char *payload; /* for MS_NS_OK */
	size_t bad_at;       /* for MS_NS_BAD: prefix length at which it is refused */
} nscase;

static const nscase cases[] = {
	{ "0:,", 0, 100, MS_NS_OK, "", 0 },
	{ "5:hello,", 0, 100, MS_NS_OK, "hello", 0 },
	{ "12:hello world!,", 0, 100, MS_NS_OK, "hello world!", 0 },
	{ "5:hello,trailing", 0, 100, MS_NS_OK, "hello", 0 },
	{ "3:a\0b,", 6, 100, MS_NS_OK, "a\0b", 0 },
	{ "3:,,,,", 0, 100, MS_NS_OK, ",,,", 0 },
	{ "5:hel", 0, 100, MS_NS_MORE, NULL, 0 },
	{ "5:hello", 0, 100, MS_NS_MORE, NULL, 0 },
	{ "123", 0, 1000, MS_NS_MORE, NULL, 0 },
	{ "05:hello,", 0, 100, MS_NS_BAD, NULL, 2 },   /* leading zero */
	{ "00:,", 0, 100, MS_NS_BAD, NULL, 2 },
	{ "5:hello!", 0, 100, MS_NS_BAD, NULL, 8 },    /* no comma */
	{ "5;hello,", 0, 100, MS_NS_BAD, NULL, 2 },    /* no colon */
	{ ":hello,", 0, 100, MS_NS_BAD, NULL, 1 },     /* no length */
	{ "x:,", 0, 100, MS_NS_BAD, NULL, 1 },         /* not a digit */
	{ "-1:,", 0, 100, MS_NS_BAD, NULL, 1 },
	{ " 5:hello,", 0, 100, MS_NS_BAD, NULL, 1 },
	{ "+5:hello,", 0, 100, MS_NS_BAD, NULL, 1 },
	{ "101:", 0, 100, MS_NS_BAD, NULL, 3 },        /* over the cap, seen at the 3rd digit */
	{ "999999999999999999999999:", 0, 4096, MS_NS_BAD, NULL, 4 },
	{ "99999999999999999999999999", 0, SIZE_MAX, MS_NS_BAD, NULL, 20 }, /* overflow */
};

static void test_vectors(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		const nscase *c = &cases[i];
		size_t len = c->len ? c->len : strlen(c->in);
		const char *pl = NULL;
		size_t plen = 0, used = 0;
		ms_error err = { 0 };
		ms_ns_result r = ms_ns_parse(c->in, len, c->cap, &pl, &plen, &used, &err);
		if (r != c->want)
			fail_msg("case %zu \"%s\": got %d want %d", i, c->in, r, c->want);
		if (r == MS_NS_OK) {
			size_t want_len = c->len ? 3 : strlen(c->payload);
			assert_int_equal(plen, want_len);
			assert_memory_equal(pl, c->payload, want_len);
			assert_int_equal(used, (size_t)(pl - c->in) + plen + 1);
		}
		if (r == MS_NS_BAD)
			assert_int_equal(err.status, MS_ERR_PROTOCOL);
		/* Byte by byte: MORE before the deciding byte, then the answer. */
		size_t decide = r == MS_NS_BAD ? c->bad_at : r == MS_NS_OK ? used : len + 1;
		for (size_t k = 0; k <= len && k < decide; k++) {
			ms_ns_result rk = ms_ns_parse(c->in, k, c->cap, &pl, &plen, &used, NULL);
			if (rk != MS_NS_MORE)
				fail_msg("case %zu \"%s\" prefix %zu: got %d want MORE", i, c->in, k, rk);
		}
		if (r == MS_NS_BAD && ms_ns_parse(c->in, c->bad_at, c->cap, &pl, &plen, &used, NULL) !=
		                          MS_NS_BAD)
			fail_msg("case %zu \"%s\": not refused at byte %zu", i, c->in, c->bad_at);
	}
}

static void test_encode(void **state)
{
	(void)state;
	char pre[MS_NS_PREFIX_MAX];
	assert_int_equal(ms_ns_prefix(pre, 0), 2);
	assert_memory_equal(pre, "0:", 2);
	assert_int_equal(ms_ns_prefix(pre, 1234567), 8);
	assert_memory_equal(pre, "1234567:", 8);
	assert_int_equal(ms_ns_prefix(pre, UINT64_MAX), 21);
	assert_memory_equal(pre, "18446744073709551615:", 21);
	assert_int_equal(ms_ns_size(0), 3);
	assert_int_equal(ms_ns_size(9), 12);
	assert_int_equal(ms_ns_size(10), 14);
	ms_buf b;
	ms_buf_init(&b, 0);
	assert_int_equal(ms_ns_append(&b, "hello", 5), MS_OK);
	assert_int_equal(ms_ns_append(&b, "", 0), MS_OK);
	assert_string_equal(ms_buf_ptr(&b), "5:hello,0:,");
	/* What we write, we parse back. */
	const char *pl;
	size_t plen, used;
	assert_int_equal(ms_ns_parse(ms_buf_ptr(&b), ms_buf_avail(&b), 10, &pl, &plen, &used, NULL),
	                 MS_NS_OK);
	assert_int_equal(used, 8);
	ms_buf_free(&b);
}

typedef struct rcase {
	const char *url;
	int ok;
	ms_proto proto;
	const char *host, *port;
	ms_qmtp_replies replies;
} rcase;

static const rcase routes[] = {
	{ "smtp://mx.example", 1, MS_PROTO_SMTP, "mx.example", "25", 0 },
	{ "smtp://127.0.0.1:2525", 1, MS_PROTO_SMTP, "127.0.0.1", "2525", 0 },
	{ "smtp://[::1]:2525", 1, MS_PROTO_SMTP, "::1", "2525", 0 },
	{ "smtp://[::1]", 1, MS_PROTO_SMTP, "::1", "25", 0 },
	{ "smtp://host/", 1, MS_PROTO_SMTP, "host", "25", 0 },
	{ "smtp://me%40example.org@relay.test:587", 1, MS_PROTO_SMTP, "relay.test", "587", 0 },
	{ "smtps://relay.test", 1, MS_PROTO_SMTP, "relay.test", "465", 0 },
	{ "qmtp://mx.example", 1, MS_PROTO_QMTP, "mx.example", "209", MS_QMTP_REPLIES_AUTO },
	{ "qmtp://h?replies=auto", 1, MS_PROTO_QMTP, "h", "209", MS_QMTP_REPLIES_AUTO },
	{ "qmtp://h:2209?replies=package", 1, MS_PROTO_QMTP, "h", "2209", MS_QMTP_PER_PACKAGE },
	{ "qmtp://h?replies=recipient", 1, MS_PROTO_QMTP, "h", "209", MS_QMTP_PER_RECIPIENT },
	{ "smtp://h?replies=package", 0, 0, NULL, NULL, 0 },   /* QMTP-only parameter */
	{ "qmtp://h?foo=bar", 0, 0, NULL, NULL, 0 },
	{ "http://h", 0, 0, NULL, NULL, 0 },
	{ "smtp://", 0, 0, NULL, NULL, 0 },
	{ "smtp://h:", 0, 0, NULL, NULL, 0 },
	{ "smtp://h:0", 0, 0, NULL, NULL, 0 },
	{ "smtp://h:65536", 0, 0, NULL, NULL, 0 },
	{ "smtp://h:25x", 0, 0, NULL, NULL, 0 },
	{ "smtp://[::1", 0, 0, NULL, NULL, 0 },
	{ "smtp://[::1]x", 0, 0, NULL, NULL, 0 },
	{ "smtp://user:secret@h", 0, 0, NULL, NULL, 0 },      /* no passwords in URLs */
	{ "qmtp://user@h", 0, 0, NULL, NULL, 0 },
	{ "smtp://@h", 0, 0, NULL, NULL, 0 },
	{ "smtp://h\r\n:25", 0, 0, NULL, NULL, 0 },
	{ "smtp://h x", 0, 0, NULL, NULL, 0 },
	/* SMTP shapes a route turns off (PROTOCOL-RULES P1-P6). */
	{ "smtp://h?chunking=no", 1, MS_PROTO_SMTP, "h", "25", 0 },
	{ "smtp://h?chunking=no&cross_message=no&pipelining=no&rset_first=no", 1, MS_PROTO_SMTP,
	  "h", "25", 0 },
	{ "smtp://h?chunking=yes", 0, 0, NULL, NULL, 0 },
	{ "qmtp://h?chunking=no", 0, 0, NULL, NULL, 0 },     /* SMTP-only parameter */
};

static void test_routes(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++) {
		const rcase *c = &routes[i];
		ms_route r;
		ms_error err;
		ms_status st = ms_route_parse(c->url, &r, &err);
		if ((st == MS_OK) != c->ok)
			fail_msg("route \"%s\": got %d (%s)", c->url, st, st ? err.msg : "");
		if (!c->ok) {
			assert_int_equal(err.status, MS_ERR_USAGE);
			continue;
		}
		assert_int_equal(r.proto, c->proto);
		assert_string_equal(r.host, c->host);
		assert_string_equal(r.port, c->port);
		assert_int_equal(r.qmtp_replies, c->replies);
	}
	ms_route r;
	assert_int_equal(ms_route_parse("smtp://h?chunking=no&rset_first=no", &r, NULL), MS_OK);
	assert_int_equal(r.smtp_off, MS_ROUTE_NO_CHUNKING | MS_ROUTE_NO_RSET_FIRST);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_vectors),
		cmocka_unit_test(test_encode),
		cmocka_unit_test(test_routes),
	};
	return cmocka_run_group_tests_name("netstring and routes", tests, NULL, NULL);
}
