/* The DNS cache's limits, against a name server of our own on loopback
 * that holds every query 50 ms and answers NXDOMAIN: lookups of one domain
 * at once ask once; lookups of many domains at once keep at most
 * max_inflight queries outstanding, and every one is answered. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "mailspool/dnscache.h"
#include "mailspool/io.h"

#define HELD_MAX 4096

typedef struct held {
	struct sockaddr_in from;
	unsigned char q[512];
	ssize_t n;
	int64_t at;
} held;

typedef struct server {
	int fd;
	unsigned port;
	volatile int stop;
	pthread_mutex_t mu;
	size_t total, max_out, same;
	held h[HELD_MAX];
	size_t nh;
} server;

static void *serve(void *arg)
{
	server *s = arg;
	while (!s->stop) {
		struct pollfd p = { .fd = s->fd, .events = POLLIN };
		poll(&p, 1, 5);
		for (;;) {
			held x;
			socklen_t fl = sizeof x.from;
			x.n = recvfrom(s->fd, x.q, sizeof x.q, MSG_DONTWAIT, (struct sockaddr *)&x.from, &fl);
			if (x.n < 12)
				break;
			x.at = ms_now_ms();
			pthread_mutex_lock(&s->mu);
			s->total++;
			if (memmem(x.q, (size_t)x.n, "\x04same", 5))
				s->same++;
			if (s->nh < HELD_MAX)
				s->h[s->nh++] = x;
			if (s->nh > s->max_out)
				s->max_out = s->nh;
			pthread_mutex_unlock(&s->mu);
		}
		/* Answer what has waited 50 ms: NXDOMAIN, the question echoed. */
		int64_t now = ms_now_ms();
		pthread_mutex_lock(&s->mu);
		size_t k = 0;
		for (size_t i = 0; i < s->nh; i++) {
			held *x = &s->h[i];
			if (now - x->at < 50) {
				s->h[k++] = *x;
				continue;
			}
			x->q[2] = 0x81; /* QR, RD */
			x->q[3] = 0x83; /* RA, NXDOMAIN */
			memset(x->q + 6, 0, 6);
			sendto(s->fd, x->q, (size_t)x->n, 0, (struct sockaddr *)&x->from, sizeof x->from);
		}
		s->nh = k;
		pthread_mutex_unlock(&s->mu);
	}
	return NULL;
}

static void server_start(server *s, pthread_t *t)
{
	memset(s, 0, sizeof *s);
	pthread_mutex_init(&s->mu, NULL);
	s->fd = socket(AF_INET, SOCK_DGRAM, 0);
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	assert_int_equal(bind(s->fd, (struct sockaddr *)&a, sizeof a), 0);
	socklen_t l = sizeof a;
	getsockname(s->fd, (struct sockaddr *)&a, &l);
	s->port = ntohs(a.sin_port);
	pthread_create(t, NULL, serve, s);
}

typedef struct job {
	ms_dns_cache *c;
	ms_dns_opts o;
	char name[64];
	ms_status st;
} job;

static void *look(void *arg)
{
	job *j = arg;
	ms_dns_targets *tg = calloc(1, sizeof *tg);
	ms_error err;
	int hit;
	j->st = ms_dns_cache_targets(j->c, j->name, &j->o, tg, &err, &hit);
	free(tg);
	return NULL;
}

static void run_jobs(server *s, int same, size_t n, size_t max_inflight)
{
	char servers[64];
	snprintf(servers, sizeof servers, "127.0.0.1:%u", s->port);
	ms_dns_cache_opts co;
	ms_dns_cache_opts_default(&co);
	co.max_inflight = max_inflight;
	ms_dns_cache *c = ms_dns_cache_new(&co);
	job *jobs = calloc(n, sizeof *jobs);
	pthread_t *t = calloc(n, sizeof *t);
	for (size_t i = 0; i < n; i++) {
		jobs[i].c = c;
		ms_dns_opts_default(&jobs[i].o);
		jobs[i].o.servers = servers;
		jobs[i].o.timeout_ms = 10000;
		snprintf(jobs[i].name, sizeof jobs[i].name, same ? "same.test" : "d%zu.test", i);
		pthread_create(&t[i], NULL, look, &jobs[i]);
	}
	for (size_t i = 0; i < n; i++) {
		pthread_join(t[i], NULL);
		assert_int_equal(jobs[i].st, MS_ERR_PERM); /* NXDOMAIN, for every one */
	}
	free(t);
	free(jobs);
	ms_dns_cache_free(c);
}

static void test_one_domain_asks_once(void **state)
{
	(void)state;
	server s;
	pthread_t t;
	server_start(&s, &t);
	run_jobs(&s, 1, 100, 64);
	s.stop = 1;
	pthread_join(t, NULL);
	close(s.fd);
	assert_int_equal(s.same, 1);
}

static void test_many_domains_bounded(void **state)
{
	(void)state;
	server s;
	pthread_t t;
	server_start(&s, &t);
	run_jobs(&s, 0, 300, 16);
	s.stop = 1;
	pthread_join(t, NULL);
	close(s.fd);
	assert_int_equal(s.total, 300);
	assert_true(s.max_out <= 16);
	assert_true(s.max_out >= 8); /* and they do run side by side */
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_one_domain_asks_once),
		cmocka_unit_test(test_many_domains_bounded),
	};
	return cmocka_run_group_tests_name("dnscache", tests, NULL, NULL);
}
