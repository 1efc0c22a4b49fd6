/*
 * cluster.c - the daemons sharing a spool (see mailspool/cluster.h).
 *
 * Invariant: `live` is sorted and always holds `self`; `gen` changes
 * whenever it does.  A peer first seen counts as alive until it has gone
 * a lease (plus skew) without a heartbeat by our clock, or at once when
 * its lock is free.
 */
#include "mailspool/cluster.h"
#include "mailspool/io.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

typedef struct peer {
	char node[65];
	dev_t dev;
	ino_t ino;
	struct timespec beat;  /* the lock file's mtime when last seen */
	int64_t changed_ms;    /* when we saw it change (monotonic) */
	int seen;              /* in this refresh */
} peer;

struct ms_peers {
	char self[65];
	peer *v;
	size_t n, cap;
	char (*live)[65];
	size_t nlive;
};

ms_peers *ms_peers_new(const char *self)
{
	ms_peers *p = calloc(1, sizeof *p);
	if (!p || !(p->live = calloc(1, sizeof *p->live))) {
		free(p);
		return NULL;
	}
	snprintf(p->self, sizeof p->self, "%s", self);
	memcpy(p->live[0], p->self, sizeof p->self);
	p->nlive = 1;
	return p;
}

void ms_peers_free(ms_peers *p)
{
	if (!p)
		return;
	free(p->v);
	free(p->live);
	free(p);
}

typedef struct refresh_ctx {
	ms_peers *p;
	int64_t now;
} refresh_ctx;

static void saw_node(void *ctx, const char *node, const struct stat *st)
{
	refresh_ctx *r = ctx;
	ms_peers *p = r->p;
	peer *x = NULL;
	for (size_t i = 0; i < p->n && !x; i++)
		if (!strcmp(p->v[i].node, node))
			x = &p->v[i];
	if (!x) {
		if (p->n == p->cap) {
			size_t nc = p->cap ? p->cap * 2 : 8;
			peer *q = realloc(p->v, nc * sizeof *q);
			if (!q)
				return;
			p->v = q;
			p->cap = nc;
		}
		x = &p->v[p->n++];
		memset(x, 0, sizeof *x);
		snprintf(x->node, sizeof x->node, "%s", node);
		x->changed_ms = r->now;
	} else if (x->dev != st->st_dev || x->ino != st->st_ino ||
	           x->beat.tv_sec != st->st_mtim.tv_sec || x->beat.tv_nsec != st->st_mtim.tv_nsec) {
		x->changed_ms = r->now;
	}
	x->dev = st->st_dev;
	x->ino = st->st_ino;
	x->beat = st->st_mtim;
	x->seen = 1;
}

static int cmp_node(const void *a, const void *b)
{
	return strcmp(a, b);
}

int ms_peers_refresh(ms_peers *p, ms_spool *sp, const ms_conf *c)
{
	refresh_ctx r = { p, ms_now_ms() };
	for (size_t i = 0; i < p->n; i++)
		p->v[i].seen = 0;
	if (ms_spool_each_node(sp, saw_node, &r, NULL) != MS_OK)
		return 0; /* nothing learnt: the live set stays */
	int64_t patience = ((int64_t)c->claim_lease + c->clock_skew) * 1000;
	char (*live)[65] = calloc(p->n + 1, sizeof *live);
	if (!live)
		return 0;
	size_t n = 0;
	memcpy(live[n++], p->self, sizeof p->self);
	for (size_t i = 0; i < p->n; i++) {
		peer *x = &p->v[i];
		if (!x->seen || !strcmp(x->node, p->self) || r.now - x->changed_ms > patience ||
		    ms_spool_node_dead(sp, x->node))
			continue;
		memcpy(live[n++], x->node, sizeof x->node);
	}
	qsort(live, n, sizeof *live, cmp_node);
	int changed = n != p->nlive || memcmp(live, p->live, n * sizeof *live);
	free(p->live);
	p->live = live;
	p->nlive = n;
	return changed;
}

size_t ms_peers_live(const ms_peers *p)
{
	return p->nlive;
}

/* FNV-1a over node, a NUL, key; then a final mix so that near names
 * spread. */
static uint64_t score(const char *node, const char *key)
{
	uint64_t h = 1469598103934665603ull;
	for (const char *s = node; *s; s++)
		h = (h ^ (unsigned char)*s) * 1099511628211ull;
	h = (h ^ 0) * 1099511628211ull;
	for (const char *s = key; *s; s++)
		h = (h ^ (unsigned char)*s) * 1099511628211ull;
	h ^= h >> 33;
	h *= 0xff51afd7ed558ccdull;
	h ^= h >> 33;
	return h;
}

const char *ms_peers_owner(const ms_peers *p, const char *key)
{
	size_t best = 0;
	uint64_t bs = 0;
	for (size_t i = 0; i < p->nlive; i++) {
		uint64_t s = score(p->live[i], key);
		if (i == 0 || s > bs) {
			bs = s;
			best = i;
		}
	}
	return p->live[best];
}

int ms_peers_owns(const ms_peers *p, const char *key)
{
	return p->nlive == 1 || !strcmp(ms_peers_owner(p, key), p->self);
}
