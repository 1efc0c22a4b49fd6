/*
 * mailspool/hmap.h - a string-keyed hash map (open addressing, linear
 * probing, FNV-1a), for the scheduler's destinations and the agents' DNS
 * cache, where a linear search per recipient made grouping quadratic.
 *
 * Keys are copied; values are the caller's.  Invariant: the table is at
 * most 3/4 full, so a probe always ends at an empty slot; removal shifts
 * the following run back instead of leaving tombstones.  Not thread-safe.
 */
#ifndef MAILSPOOL_HMAP_H
#define MAILSPOOL_HMAP_H

#include <stddef.h>

typedef struct ms_hmap_slot {
	char *key;
	void *val;
} ms_hmap_slot;

typedef struct ms_hmap {
	ms_hmap_slot *v;
	size_t cap, n; /* cap: a power of two, or 0 */
} ms_hmap;

void ms_hmap_init(ms_hmap *m);
/* Frees the keys, not the values. */
void ms_hmap_free(ms_hmap *m);
void *ms_hmap_get(const ms_hmap *m, const char *key);
/* Insert or replace; -1 when out of memory (nothing changed). */
int ms_hmap_put(ms_hmap *m, const char *key, void *val);
/* The value removed, or NULL. */
void *ms_hmap_del(ms_hmap *m, const char *key);
/* Iterate: for (size_t i = 0; (i = ms_hmap_next(m, i, &k, &v)) != 0;) - the
 * cursor is 1-based; do not insert or delete while iterating. */
size_t ms_hmap_next(const ms_hmap *m, size_t cursor, const char **key, void **val);

#endif
