/*
 * pool.c - idle delivery sessions kept for reuse (see mailspool/pool.h).
 *
 * The table is a plain array searched linearly: it holds at most
 * max_idle entries and a take costs one pass of string compares, small
 * next to the round trip a reuse saves.
 */
#include "mailspool/pool.h"

#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mailspool/io.h"

typedef struct parked {
	char key[MS_POOL_KEY_MAX];
	ms_client *c;
	size_t carried;
	int64_t since_ms;
} parked;

struct ms_pool {
	pthread_mutex_t mu;
	parked *v;
	size_t n, max;
	int64_t idle_ms;
	ms_pool_stats st;
};

static void quit(ms_client *c)
{
	ms_error err;
	ms_client_close(c, &err); /* QUIT, bounded by its timeout */
	ms_client_free(c);
}

static void *quit_thread(void *arg)
{
	quit(arg);
	return NULL;
}

/* QUIT many sessions at once: one round trip for all, not one each (a
 * thread per session; those that cannot get one are closed in line). */
static void quit_all(ms_client **cs, size_t n)
{
	pthread_t *t = calloc(n ? n : 1, sizeof *t);
	char *started = calloc(n ? n : 1, 1);
	pthread_attr_t at;
	pthread_attr_init(&at);
	pthread_attr_setstacksize(&at, 128u << 10);
	for (size_t i = 0; i < n; i++)
		if (!t || !started || pthread_create(&t[i], &at, quit_thread, cs[i]) != 0)
			quit(cs[i]);
		else
			started[i] = 1;
	pthread_attr_destroy(&at);
	for (size_t i = 0; t && started && i < n; i++)
		if (started[i])
			pthread_join(t[i], NULL);
	free(t);
	free(started);
}

ms_pool *ms_pool_new(int64_t idle_ms, size_t max_idle)
{
	ms_pool *p = calloc(1, sizeof *p);
	if (!p)
		return NULL;
	p->max = max_idle ? max_idle : 1;
	p->v = calloc(p->max, sizeof *p->v);
	if (!p->v) {
		free(p);
		return NULL;
	}
	p->idle_ms = idle_ms;
	pthread_mutex_init(&p->mu, NULL);
	return p;
}

void ms_pool_free(ms_pool *p)
{
	if (!p)
		return;
	ms_client **cs = malloc((p->n ? p->n : 1) * sizeof *cs);
	for (size_t i = 0; i < p->n; i++)
		if (cs)
			cs[i] = p->v[i].c;
		else
			quit(p->v[i].c);
	if (cs)
		quit_all(cs, p->n);
	free(cs);
	pthread_mutex_destroy(&p->mu);
	free(p->v);
	free(p);
}

ms_client *ms_pool_take(ms_pool *p, const char *key, size_t *carried)
{
	for (;;) {
		ms_client *c = NULL;
		pthread_mutex_lock(&p->mu);
		/* The most recently parked first: the warmest connection. */
		for (size_t i = p->n; i-- > 0;)
			if (!strcmp(p->v[i].key, key)) {
				c = p->v[i].c;
				*carried = p->v[i].carried;
				p->v[i] = p->v[--p->n];
				break;
			}
		pthread_mutex_unlock(&p->mu);
		if (!c)
			return NULL;
		if (ms_client_reusable(c)) {
			pthread_mutex_lock(&p->mu);
			p->st.reused++;
			pthread_mutex_unlock(&p->mu);
			return c;
		}
		pthread_mutex_lock(&p->mu);
		p->st.stale++;
		pthread_mutex_unlock(&p->mu);
		ms_client_free(c); /* closed by the server: no QUIT to send */
	}
}

int ms_pool_has(ms_pool *p, const char *key)
{
	int found = 0;
	pthread_mutex_lock(&p->mu);
	for (size_t i = 0; i < p->n && !found; i++)
		found = !strcmp(p->v[i].key, key);
	pthread_mutex_unlock(&p->mu);
	return found;
}

void ms_pool_put(ms_pool *p, const char *key, ms_client *c, size_t carried)
{
	if (!ms_client_reusable(c) || p->idle_ms <= 0 || strlen(key) >= MS_POOL_KEY_MAX) {
		quit(c);
		return;
	}
	ms_client_set_result(c, NULL, NULL);
	ms_client_set_transcript(c, NULL);
	ms_client *evict = NULL;
	pthread_mutex_lock(&p->mu);
	if (p->n == p->max) {
		/* Full: the oldest parked session makes room. */
		size_t old = 0;
		for (size_t i = 1; i < p->n; i++)
			if (p->v[i].since_ms < p->v[old].since_ms)
				old = i;
		evict = p->v[old].c;
		p->v[old] = p->v[--p->n];
	}
	parked *e = &p->v[p->n++];
	snprintf(e->key, sizeof e->key, "%s", key);
	e->c = c;
	e->carried = carried;
	e->since_ms = ms_now_ms();
	p->st.parked++;
	pthread_mutex_unlock(&p->mu);
	if (evict)
		quit(evict);
}

size_t ms_pool_expire(ms_pool *p)
{
	int64_t now = ms_now_ms();
	pthread_mutex_lock(&p->mu);
	size_t cap = p->n ? p->n : 1, n = 0, m = 0;
	ms_client **cs = malloc(cap * sizeof *cs), **watched = malloc(cap * sizeof *watched);
	struct pollfd *pf = malloc(cap * sizeof *pf);
	for (size_t i = 0; cs && watched && pf && i < p->n;) {
		int fd = ms_client_idle_fd(p->v[i].c);
		if (now - p->v[i].since_ms >= p->idle_ms || fd < 0) {
			cs[n++] = p->v[i].c;
			p->v[i] = p->v[--p->n];
			p->st.expired++;
		} else {
			pf[m].fd = fd;
			pf[m].events = POLLIN;
			pf[m].revents = 0;
			watched[m++] = p->v[i].c;
			i++;
		}
	}
	pthread_mutex_unlock(&p->mu);
	/* One poll for every parked session, outside the lock (a poll each,
	 * under it, was a lock convoy with thousands parked): a readable idle
	 * session is its server closing. */
	if (m && poll(pf, m, 0) > 0) {
		pthread_mutex_lock(&p->mu);
		for (size_t k = 0; k < m; k++) {
			if (!pf[k].revents)
				continue;
			for (size_t i = 0; i < p->n; i++)
				if (p->v[i].c == watched[k]) { /* still parked: taken meanwhile is fine */
					cs[n++] = p->v[i].c;
					p->v[i] = p->v[--p->n];
					p->st.expired++;
					break;
				}
		}
		pthread_mutex_unlock(&p->mu);
	}
	pthread_mutex_lock(&p->mu);
	size_t left = p->n;
	pthread_mutex_unlock(&p->mu);
	if (cs)
		quit_all(cs, n);
	free(cs);
	free(watched);
	free(pf);
	return left;
}

ms_pool_stats ms_pool_get_stats(ms_pool *p)
{
	pthread_mutex_lock(&p->mu);
	ms_pool_stats s = p->st;
	s.idle = p->n;
	pthread_mutex_unlock(&p->mu);
	return s;
}
