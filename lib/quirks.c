/*
 * quirks.c - per-server SMTP quirks with an expiry (see mailspool/quirks.h).
 */
#include "mailspool/quirks.h"

#include <pthread.h>
#include <stdlib.h>

#include "mailspool/io.h"
#include "mailspool/hmap.h"

typedef struct entry {
	unsigned flags;
	int64_t until;
} entry;

struct ms_quirks {
	pthread_mutex_t mu;
	ms_hmap map;
	int64_t ttl_ms;
};

ms_quirks *ms_quirks_new(int64_t ttl_ms)
{
	ms_quirks *q = calloc(1, sizeof *q);
	if (!q)
		return NULL;
	pthread_mutex_init(&q->mu, NULL);
	ms_hmap_init(&q->map);
	q->ttl_ms = ttl_ms;
	return q;
}

void ms_quirks_free(ms_quirks *q)
{
	if (!q)
		return;
	const char *k;
	void *v;
	for (size_t i = 0; (i = ms_hmap_next(&q->map, i, &k, &v)) != 0;)
		free(v);
	ms_hmap_free(&q->map);
	pthread_mutex_destroy(&q->mu);
	free(q);
}

unsigned ms_quirks_get(ms_quirks *q, const char *key)
{
	if (!q)
		return 0;
	unsigned flags = 0;
	pthread_mutex_lock(&q->mu);
	entry *e = ms_hmap_get(&q->map, key);
	if (e && e->until <= ms_now_ms())
		free(ms_hmap_del(&q->map, key));
	else if (e)
		flags = e->flags;
	pthread_mutex_unlock(&q->mu);
	return flags;
}

void ms_quirks_add(ms_quirks *q, const char *key, unsigned flags)
{
	if (!q || !flags)
		return;
	pthread_mutex_lock(&q->mu);
	entry *e = ms_hmap_get(&q->map, key);
	if (!e && (e = calloc(1, sizeof *e)) != NULL && ms_hmap_put(&q->map, key, e) != 0) {
		free(e);
		e = NULL;
	}
	if (e) {
		if ((e->flags | flags) != e->flags || e->until <= ms_now_ms())
			e->until = ms_now_ms() + q->ttl_ms; /* a new lesson restarts the clock */
		e->flags |= flags;
	}
	pthread_mutex_unlock(&q->mu);
}
