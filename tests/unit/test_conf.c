/*
 * test_conf.c - mailspool.conf checks that must hold however long the file
 * is: a key set twice anywhere, dns_servers checked when read, relay
 * credentials without a user to give them for.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "mailspool/conf.h"
#include "mailspool/net.h"
#include "mailspool/tls.h"

static ms_status load_text(const char *text, ms_conf *c, ms_error *err)
{
	char path[] = "/tmp/ms-conf-XXXXXX";
	int fd = mkstemp(path);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
	close(fd);
	ms_status st = ms_conf_load(c, path, 1, err);
	unlink(path);
	return st;
}

/* A repeated key is found past the first 256 keys too (it was not). */
static void test_repeated_key_anywhere(void **state)
{
	(void)state;
	char *text = malloc(1 << 16);
	size_t n = 0;
	for (int i = 0; i < 120; i++)
		n += (size_t)sprintf(text + n, "route.d%d.test = mx\n", i);
	for (int i = 0; i < 60; i++)
		n += (size_t)sprintf(text + n, "destination.p%d.test.rate = 10\n"
		                               "destination.p%d.test.concurrency = 2\n",
		                     i, i);
	ms_conf c;
	ms_error err;
	assert_int_equal(load_text(text, &c, &err), MS_OK); /* 240 distinct keys */
	sprintf(text + n, "destination.p59.test.rate = 20\n");
	assert_int_equal(load_text(text, &c, &err), MS_ERR_USAGE);
	assert_non_null(strstr(err.msg, "destination.p59.test.rate is set twice"));
	free(text);
}

static void test_dns_servers_checked_when_read(void **state)
{
	(void)state;
	static const char *const good[] = { "127.0.0.1", "127.0.0.1:5353,192.0.2.1", "::1",
		                                "[::1]:53, 192.0.2.7:53" };
	static const char *const bad[] = { "nonsense", "127.0.0.1:", "127.0.0.1:0",
		                               "127.0.0.1:70000", "[::1", "[::1]x", "1.2.3.4,",
		                               "999.1.1.1" };
	char text[256];
	ms_conf c;
	ms_error err;
	for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
		snprintf(text, sizeof text, "dns_servers = %s\n", good[i]);
		if (load_text(text, &c, &err) != MS_OK)
			fail_msg("%s refused: %s", good[i], err.msg);
	}
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		snprintf(text, sizeof text, "dns_servers = %s\n", bad[i]);
		if (load_text(text, &c, &err) != MS_ERR_USAGE)
			fail_msg("%s accepted", bad[i]);
		assert_non_null(strstr(err.msg, "dns_servers"));
	}
}

static void test_relay_credentials_need_a_user(void **state)
{
	(void)state;
	ms_conf c;
	ms_error err;
	assert_int_equal(load_text("relay.a.url = smtp://h:587\nrelay.a.password_eval = echo x\n", &c,
	                           &err),
	                 MS_ERR_USAGE);
	assert_non_null(strstr(err.msg, "names no user"));
	assert_int_equal(load_text("relay.a.url = smtp://me@h:587\nrelay.a.password_eval = echo x\n",
	                           &c, &err),
	                 MS_OK);
	assert_int_equal(load_text("relay.a.url = smtp://h:587\n", &c, &err), MS_OK);
}

/* The null-client and connection keys: good values taken, bad ones named. */
static void test_new_keys(void **state)
{
	(void)state;
	ms_conf c;
	ms_error err;
	assert_int_equal(load_text("aliases = /etc/aliases\nadmin_address = ops@example.org\n"
	                           "log_format = json\nmetrics_listen = [::1]:9725\n"
	                           "delay_warning = 4h\ninet_protocols = ipv4\n"
	                           "address_preference = ipv6\nbind_address = 192.0.2.1, [2001:db8::1]\n"
	                           "tls_security_level = verify\ndestination.x.test.tls = none\n"
	                           "destination.x.test.bind_address = 192.0.2.9\n",
	                           &c, &err),
	                 MS_OK);
	assert_string_equal(c.aliases, "/etc/aliases");
	assert_string_equal(c.admin_address, "ops@example.org");
	assert_true(c.log_json);
	assert_string_equal(c.metrics_listen, "[::1]:9725");
	assert_int_equal(c.delay_warning, 4 * 3600);
	assert_int_equal(c.inet_protocols, MS_NET_V4);
	assert_int_equal(c.address_preference, 6);
	assert_int_equal(ms_conf_tls_for(&c, "x.test", "mx.x.test"), MS_TLS_NONE);
	assert_int_equal(ms_conf_tls_for(&c, "y.test", "mx.y.test"), MS_TLS_VERIFY);
	ms_net_opts o;
	ms_net_opts_for(&c, "x.test", NULL, &o);
	assert_string_equal(o.bind4, "192.0.2.9");
	ms_net_opts_for(&c, "y.test", NULL, &o);
	assert_string_equal(o.bind4, "192.0.2.1");
	assert_string_equal(o.bind6, "2001:db8::1");
	/* The default: may, with DANE where published; dane-only by pattern. */
	assert_int_equal(load_text("destination.d.test.tls = dane-only\n", &c, &err), MS_OK);
	assert_int_equal(ms_conf_tls_for(&c, "y.test", NULL), MS_TLS_LEVEL_DANE);
	assert_int_equal(ms_conf_tls_for(&c, "d.test", NULL), MS_TLS_LEVEL_DANE_ONLY);
	static const char *const bad[] = {
		"aliases = relative/path\n",  "admin_address = root\n", "log_format = xml\n",
		"metrics_listen = localhost\n", "delay_warning = soon\n", "inet_protocols = ipv5\n",
		"address_preference = both\n", "bind_address = 192.0.2.1 192.0.2.2\n",
		"bind_address = mail.example.org\n", "tls_security_level = strict\n",
		"destination.x.test.tls = sometimes\n",
		"relay.r.url = smtp://127.0.0.1\nrelay.r.tls = dane\n", /* a relay has no TLSA */
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
		assert_int_equal(load_text(bad[i], &c, &err), MS_ERR_USAGE);
}

static void test_dkim_keys(void **state)
{
	(void)state;
	ms_conf c;
	ms_error err;
	assert_int_equal(load_text("dkim.Example.ORG.selector = r1 e1\n"
	                           "dkim.example.org.key_file = /k/r1.pem /k/e1.pem\n"
	                           "dkim.example.org.algorithm = rsa-sha256 ed25519-sha256\n"
	                           "dkim.example.org.canonicalization = simple/relaxed\n"
	                           "dkim.other.test.selector = s\ndkim.other.test.key_file = /k/s\n"
	                           "dkim.other.test.headers = From:To:Subject\n",
	                           &c, &err),
	                 MS_OK);
	const ms_conf_dkim *d = ms_conf_dkim_for(&c, "example.org");
	assert_non_null(d);
	assert_string_equal(d->domain, "example.org");
	assert_int_equal(d->nsigs, 2);
	assert_string_equal(d->sigs[1].selector, "e1");
	assert_string_equal(d->sigs[1].key_file, "/k/e1.pem");
	assert_int_equal(d->sigs[0].alg, MS_DKIM_ALG_RSA_SHA256);
	assert_int_equal(d->sigs[1].alg, MS_DKIM_ALG_ED25519_SHA256);
	assert_false(d->relaxed_header);
	assert_true(d->relaxed_body);
	/* A subdomain signs with its parent's entry; an unrelated one not. */
	assert_ptr_equal(ms_conf_dkim_for(&c, "news.example.org"), d);
	assert_null(ms_conf_dkim_for(&c, "example.net"));
	assert_null(ms_conf_dkim_for(&c, "badexample.org"));
	d = ms_conf_dkim_for(&c, "OTHER.test");
	assert_non_null(d);
	assert_int_equal(d->sigs[0].alg, MS_DKIM_ALG_RSA_SHA256); /* the default */
	assert_true(d->relaxed_header && d->relaxed_body);
	assert_string_equal(d->headers, "From:To:Subject");
	static const char *const bad[] = {
		"dkim.x.test.selector = s\n",                                   /* no key */
		"dkim.x.test.key_file = /k\n",                                  /* no selector */
		"dkim.x.test.selector = s t\ndkim.x.test.key_file = /k\n",      /* too few keys */
		"dkim.x.test.selector = s\ndkim.x.test.key_file = /k /l\n",     /* too many */
		"dkim.x.test.selector = s\ndkim.x.test.key_file = rel.pem\n",   /* relative */
		"dkim.x.test.selector = s;x\ndkim.x.test.key_file = /k\n",      /* selector */
		"dkim.x.test.selector = s\ndkim.x.test.key_file = /k\ndkim.x.test.algorithm = dsa\n",
		"dkim.x.test.selector = s\ndkim.x.test.key_file = /k\n"
		"dkim.x.test.canonicalization = loose\n",
		"dkim.x.test.headers = From To\n", "dkim.x.test.colour = red\n", "dkim.selector = s\n",
		"dkim.x.test.selector = a b c d e\ndkim.x.test.key_file = /1 /2 /3 /4 /5\n",
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
		if (load_text(bad[i], &c, &err) != MS_ERR_USAGE)
			fail_msg("accepted: %s", bad[i]);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_repeated_key_anywhere),
		cmocka_unit_test(test_dns_servers_checked_when_read),
		cmocka_unit_test(test_relay_credentials_need_a_user),
		cmocka_unit_test(test_new_keys),
		cmocka_unit_test(test_dkim_keys),
	};
	return cmocka_run_group_tests_name("configuration", tests, NULL, NULL);
}
