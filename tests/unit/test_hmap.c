/*
 * test_hmap.c - the hash map (insert, replace, lookup, removal without
 * tombstones, iteration), the plan that groups a message's recipients by
 * destination with it, the throttle-reply rule, and the site of an MX set.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mailspool/conf.h"
#include "mailspool/deliver.h"
#include "mailspool/dns.h"
#include "mailspool/hmap.h"
#include "mailspool/sched.h"

static void test_hmap_basics(void **state)
{
	(void)state;
	ms_hmap m;
	ms_hmap_init(&m);
	assert_null(ms_hmap_get(&m, "x"));
	assert_null(ms_hmap_del(&m, "x"));
	char key[32];
	/* Enough to grow the table several times. */
	for (uintptr_t i = 1; i <= 20000; i++) {
		snprintf(key, sizeof key, "k%lu", (unsigned long)i);
		assert_int_equal(ms_hmap_put(&m, key, (void *)i), 0);
	}
	assert_int_equal(m.n, 20000);
	assert_true(m.n * 4 <= m.cap * 3);
	snprintf(key, sizeof key, "k%d", 777);
	assert_int_equal(ms_hmap_put(&m, key, (void *)(uintptr_t)1), 0); /* replace */
	assert_int_equal(m.n, 20000);
	assert_ptr_equal(ms_hmap_get(&m, key), (void *)(uintptr_t)1);
	/* Remove every odd key: every even one must still be found (the
	 * runs were shifted back, not cut). */
	for (uintptr_t i = 1; i <= 20000; i += 2) {
		snprintf(key, sizeof key, "k%lu", (unsigned long)i);
		assert_non_null(ms_hmap_del(&m, key));
	}
	assert_int_equal(m.n, 10000);
	for (uintptr_t i = 2; i <= 20000; i += 2) {
		snprintf(key, sizeof key, "k%lu", (unsigned long)i);
		assert_ptr_equal(ms_hmap_get(&m, key), (void *)i);
	}
	for (uintptr_t i = 1; i <= 20000; i += 2) {
		snprintf(key, sizeof key, "k%lu", (unsigned long)i);
		assert_null(ms_hmap_get(&m, key));
	}
	size_t seen = 0;
	const char *k;
	void *v;
	for (size_t i = 0; (i = ms_hmap_next(&m, i, &k, &v)) != 0;)
		seen++;
	assert_int_equal(seen, 10000);
	ms_hmap_free(&m);
}

/* 40,000 recipients over 10,000 domains: one group per domain, each with
 * its recipients in order (the old grouping was quadratic here). */
static void test_plan_many_domains(void **state)
{
	(void)state;
	ms_conf *c = malloc(sizeof *c);
	assert_non_null(c);
	ms_conf_defaults(c);
	ms_envelope e;
	ms_env_init(&e);
	assert_int_equal(ms_env_set_sender(&e, "a@x.test", NULL), MS_OK);
	char addr[64];
	for (int i = 0; i < 40000; i++) {
		snprintf(addr, sizeof addr, "u%d@d%d.test", i, i % 10000);
		assert_int_equal(ms_env_add_rcpt(&e, addr, 0, NULL), MS_OK);
	}
	ms_sched_plan p;
	assert_int_equal(ms_sched_plan_make(c, &e, (int64_t)time(NULL), &p, NULL), MS_OK);
	assert_int_equal(p.ngroups, 10000);
	size_t total = 0;
	for (size_t g = 0; g < p.ngroups; g++) {
		assert_int_equal(p.groups[g].n, 4);
		for (size_t k = 0; k < p.groups[g].n; k++) {
			size_t r = p.groups[g].idx[k];
			snprintf(addr, sizeof addr, "mx:d%zu.test", r % 10000);
			assert_string_equal(p.groups[g].key, addr);
			if (k)
				assert_true(r > p.groups[g].idx[k - 1]);
		}
		total += p.groups[g].n;
	}
	assert_int_equal(total, 40000);
	ms_sched_plan_free(&p);
	ms_env_free(&e);
	free(c);
}

static void test_throttle_replies(void **state)
{
	(void)state;
	assert_true(ms_deliver_throttle_reply(421, "4.7.0", "too many connections"));
	assert_true(ms_deliver_throttle_reply(451, "4.7.1", "slow down"));
	assert_true(ms_deliver_throttle_reply(452, "", "Too many concurrent SMTP connections"));
	assert_true(ms_deliver_throttle_reply(450, "4.2.0", "rate limit exceeded"));
	assert_false(ms_deliver_throttle_reply(451, "4.3.0", "try again later"));
	assert_false(ms_deliver_throttle_reply(550, "5.7.1", "too many connections"));
	assert_false(ms_deliver_throttle_reply(250, "2.0.0", "ok"));
}

static void test_site_of_an_mx_set(void **state)
{
	(void)state;
	ms_dns_targets *t = calloc(1, sizeof *t);
	assert_non_null(t);
	const char *names[] = { "mx2.b.test", "mx1.b.test", "mx2.b.test" };
	for (size_t i = 0; i < 3; i++) {
		snprintf(t->t[i].name, sizeof t->t[i].name, "%s", names[i]);
		snprintf(t->t[i].addr, sizeof t->t[i].addr, "192.0.2.%zu", i + 1);
	}
	t->n = 3;
	char site[MS_DEST_MAX];
	ms_deliver_site(t, site, sizeof site);
	assert_string_equal(site, "site:mx1.b.test,mx2.b.test"); /* sorted, once each */
	t->implicit = 1;
	ms_deliver_site(t, site, sizeof site);
	assert_string_equal(site, ""); /* a domain's own address is no site */
	free(t);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_hmap_basics),
		cmocka_unit_test(test_plan_many_domains),
		cmocka_unit_test(test_throttle_replies),
		cmocka_unit_test(test_site_of_an_mx_set),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
