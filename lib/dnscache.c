/*
 * dnscache.c - MX answers kept for their TTL (see mailspool/dnscache.h).
 *
 * An entry stores only the targets it has (not the whole fixed-size
 * ms_dns_targets), so a cache of thousands of domains stays small.
 */
#include "mailspool/dnscache.h"

#include <ctype.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mailspool/hmap.h"
#include "mailspool/io.h"

typedef struct entry {
	int64_t expires_ms, made_ms;
	ms_status st;
	char msg[MS_ERROR_MSG_MAX];
	int implicit, secure, code;
	char enh[16];
	unsigned ttl;
	size_t n;
	ms_dns_target t[]; /* n of them */
} entry;

struct ms_dns_cache {
	pthread_mutex_t mu;
	pthread_cond_t slot_cv; /* a lookup finished: a slot is free (one waiter woken) */
	pthread_cond_t done_cv; /* a lookup finished: its answer is in (all of its waiters) */
	ms_dns_cache_opts o;
	ms_hmap map;
	ms_hmap pending;       /* domains being looked up (value: this cache) */
	size_t inflight;
	ms_dns_cache_stats st;
};

void ms_dns_cache_opts_default(ms_dns_cache_opts *o)
{
	o->max_ttl = 3600;
	o->negative_ttl = 300;
	o->temp_ttl = 5;
	o->max_entries = 100000;
	o->max_inflight = 32;
}

ms_dns_cache *ms_dns_cache_new(const ms_dns_cache_opts *o)
{
	ms_dns_cache *c = calloc(1, sizeof *c);
	if (!c)
		return NULL;
	if (o)
		c->o = *o;
	else
		ms_dns_cache_opts_default(&c->o);
	if (!c->o.max_inflight)
		c->o.max_inflight = 64;
	ms_hmap_init(&c->map);
	ms_hmap_init(&c->pending);
	pthread_mutex_init(&c->mu, NULL);
	pthread_cond_init(&c->slot_cv, NULL);
	pthread_cond_init(&c->done_cv, NULL);
	return c;
}

static void clear(ms_hmap *m)
{
	const char *k;
	void *v;
	for (size_t i = 0; (i = ms_hmap_next(m, i, &k, &v)) != 0;)
		free(v);
	ms_hmap_free(m);
}

void ms_dns_cache_free(ms_dns_cache *c)
{
	if (!c)
		return;
	clear(&c->map);
	ms_hmap_free(&c->pending);
	pthread_cond_destroy(&c->slot_cv);
	pthread_cond_destroy(&c->done_cv);
	pthread_mutex_destroy(&c->mu);
	free(c);
}

/* Full: keep the newer half (entries made after the median age, roughly:
 * those younger than the mean). */
static void shrink(ms_dns_cache *c, int64_t now)
{
	const char *k;
	void *v;
	int64_t sum = 0;
	size_t n = 0;
	for (size_t i = 0; (i = ms_hmap_next(&c->map, i, &k, &v)) != 0; n++)
		sum += now - ((entry *)v)->made_ms;
	int64_t mean = n ? sum / (int64_t)n : 0;
	ms_hmap keep;
	ms_hmap_init(&keep);
	for (size_t i = 0; (i = ms_hmap_next(&c->map, i, &k, &v)) != 0;) {
		entry *e = v;
		if (e->expires_ms > now && now - e->made_ms < mean && ms_hmap_put(&keep, k, e) == 0)
			continue;
		free(e);
	}
	ms_hmap_free(&c->map);
	c->map = keep;
}

static void lower(const char *in, char *out, size_t n)
{
	size_t i = 0;
	for (; in[i] && i + 1 < n; i++)
		out[i] = (char)tolower((unsigned char)in[i]);
	out[i] = '\0';
}

static ms_status answer(const entry *e, ms_dns_targets *out, ms_error *err)
{
	memset(out, 0, sizeof *out);
	out->n = e->n;
	memcpy(out->t, e->t, e->n * sizeof *e->t);
	out->implicit = e->implicit;
	out->secure = e->secure;
	out->code = e->code;
	out->ttl = e->ttl;
	snprintf(out->enh, sizeof out->enh, "%s", e->enh);
	if (e->st != MS_OK)
		return ms_error_set(err, e->st, "%s", e->msg);
	return MS_OK;
}

/* Wait on cv until deadline (ms, monotonic); 0 when the deadline passed. */
static int wait_until(ms_dns_cache *c, pthread_cond_t *cv, int64_t deadline)
{
	int64_t left = deadline - ms_now_ms();
	if (left <= 0)
		return 0;
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += (time_t)(left / 1000);
	ts.tv_nsec += (long)(left % 1000) * 1000000L;
	if (ts.tv_nsec >= 1000000000L) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000L;
	}
	pthread_cond_timedwait(cv, &c->mu, &ts);
	return 1;
}

ms_status ms_dns_cache_targets(ms_dns_cache *c, const char *domain, const ms_dns_opts *o,
                               ms_dns_targets *out, ms_error *err, int *hit)
{
	char key[MS_DNS_NAME_MAX + 1];
	lower(domain, key, sizeof key);
	int64_t now = ms_now_ms();
	/* How long a lookup may wait for another's answer or for a slot: as
	 * long as one lookup may take; then it goes ahead anyway, so that a
	 * queue of lookups behind dead name servers costs at most about two
	 * timeouts, never their number times one. */
	int64_t wait_deadline = now + (o && o->timeout_ms > 0 ? o->timeout_ms : 30000);
	pthread_mutex_lock(&c->mu);
	for (;;) {
		entry *e = ms_hmap_get(&c->map, key);
		if (e && e->expires_ms > ms_now_ms()) {
			ms_status st = answer(e, out, err);
			c->st.hits++;
			pthread_mutex_unlock(&c->mu);
			*hit = 1;
			return st;
		}
		/* The same domain being looked up: wait for that answer rather
		 * than ask again (5,000 sessions of one domain ask once). */
		int busy = ms_hmap_get(&c->pending, key) != NULL;
		if (!busy && c->inflight < c->o.max_inflight)
			break;
		/* (Separate conditions: a finished lookup wakes one waiter for
		 * its slot, and only the waiters of its own domain - a broadcast
		 * to all woke thousands per answer.) */
		if (busy && c->inflight < c->o.max_inflight)
			pthread_cond_signal(&c->slot_cv); /* a slot we leave: pass the wakeup on */
		if (!wait_until(c, busy ? &c->done_cv : &c->slot_cv, wait_deadline))
			break;
	}
	c->st.misses++;
	int mine = !ms_hmap_get(&c->pending, key) && ms_hmap_put(&c->pending, key, c) == 0;
	c->inflight++;
	pthread_mutex_unlock(&c->mu);
	*hit = 0;

	ms_error e2;
	ms_status st = ms_dns_targets_for(domain, o, out, &e2);
	if (err)
		*err = e2;
	unsigned ttl = 0;
	if (st == MS_OK)
		ttl = out->ttl < c->o.max_ttl ? out->ttl : c->o.max_ttl;
	else if (st == MS_ERR_PERM)
		ttl = c->o.negative_ttl;
	else if (st == MS_ERR_TEMP)
		ttl = c->o.temp_ttl;
	/* (Anything else - the resolver could not be set up - is not kept.) */
	entry *ne = ttl && (st == MS_OK || st == MS_ERR_PERM || st == MS_ERR_TEMP)
	                ? malloc(sizeof *ne + out->n * sizeof out->t[0])
	                : NULL;
	if (ne) {
		ne->made_ms = now;
		ne->expires_ms = now + (int64_t)ttl * 1000;
		ne->st = st;
		snprintf(ne->msg, sizeof ne->msg, "%s", st == MS_OK ? "" : e2.msg);
		ne->implicit = out->implicit;
		ne->secure = out->secure;
		ne->code = out->code;
		ne->ttl = out->ttl;
		snprintf(ne->enh, sizeof ne->enh, "%s", out->enh);
		ne->n = out->n;
		memcpy(ne->t, out->t, out->n * sizeof out->t[0]);
	}
	pthread_mutex_lock(&c->mu);
	if (ne) {
		if (c->map.n >= c->o.max_entries)
			shrink(c, now);
		entry *old = ms_hmap_get(&c->map, key);
		if (ms_hmap_put(&c->map, key, ne) < 0)
			free(ne);
		else
			free(old);
	}
	if (mine)
		ms_hmap_del(&c->pending, key);
	c->inflight--;
	pthread_cond_signal(&c->slot_cv);
	if (mine)
		pthread_cond_broadcast(&c->done_cv);
	pthread_mutex_unlock(&c->mu);
	return st;
}

ms_dns_cache_stats ms_dns_cache_get_stats(ms_dns_cache *c)
{
	pthread_mutex_lock(&c->mu);
	ms_dns_cache_stats s = c->st;
	s.entries = c->map.n;
	pthread_mutex_unlock(&c->mu);
	return s;
}
