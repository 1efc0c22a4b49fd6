/*
 * hmap.c - a string-keyed hash map (see mailspool/hmap.h).
 */
#include "mailspool/hmap.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static uint64_t hash(const char *s)
{
	uint64_t h = 1469598103934665603ull;
	for (; *s; s++)
		h = (h ^ (unsigned char)*s) * 1099511628211ull;
	return h;
}

void ms_hmap_init(ms_hmap *m)
{
	memset(m, 0, sizeof *m);
}

void ms_hmap_free(ms_hmap *m)
{
	for (size_t i = 0; i < m->cap; i++)
		free(m->v[i].key);
	free(m->v);
	ms_hmap_init(m);
}

static size_t find(const ms_hmap *m, const char *key)
{
	size_t mask = m->cap - 1, i = (size_t)hash(key) & mask;
	while (m->v[i].key && strcmp(m->v[i].key, key))
		i = (i + 1) & mask;
	return i;
}

void *ms_hmap_get(const ms_hmap *m, const char *key)
{
	if (!m->cap)
		return NULL;
	size_t i = find(m, key);
	return m->v[i].key ? m->v[i].val : NULL;
}

static int grow(ms_hmap *m)
{
	size_t nc = m->cap ? m->cap * 2 : 64;
	ms_hmap_slot *nv = calloc(nc, sizeof *nv);
	if (!nv)
		return -1;
	ms_hmap old = *m;
	m->v = nv;
	m->cap = nc;
	for (size_t i = 0; i < old.cap; i++)
		if (old.v[i].key)
			m->v[find(m, old.v[i].key)] = old.v[i];
	free(old.v);
	return 0;
}

int ms_hmap_put(ms_hmap *m, const char *key, void *val)
{
	if ((m->n + 1) * 4 > m->cap * 3 && grow(m) < 0)
		return -1;
	size_t i = find(m, key);
	if (!m->v[i].key) {
		if (!(m->v[i].key = strdup(key)))
			return -1;
		m->n++;
	}
	m->v[i].val = val;
	return 0;
}

void *ms_hmap_del(ms_hmap *m, const char *key)
{
	if (!m->cap)
		return NULL;
	size_t mask = m->cap - 1, i = find(m, key);
	if (!m->v[i].key)
		return NULL;
	void *val = m->v[i].val;
	free(m->v[i].key);
	m->v[i].key = NULL;
	m->n--;
	/* Move back every entry of the run that probed past slot i. */
	for (size_t j = (i + 1) & mask; m->v[j].key; j = (j + 1) & mask) {
		size_t home = (size_t)hash(m->v[j].key) & mask;
		/* j's entry may stay only if its home lies cyclically in (i, j]. */
		if ((j > i && (home <= i || home > j)) || (j < i && home <= i && home > j)) {
			m->v[i] = m->v[j];
			m->v[j].key = NULL;
			i = j;
		}
	}
	return val;
}

size_t ms_hmap_next(const ms_hmap *m, size_t cursor, const char **key, void **val)
{
	for (size_t i = cursor; i < m->cap; i++)
		if (m->v[i].key) {
			*key = m->v[i].key;
			*val = m->v[i].val;
			return i + 1;
		}
	return 0;
}
