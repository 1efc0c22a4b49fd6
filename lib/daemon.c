/*
 * daemon.c - the delivery daemon's scheduler (see mailspool/daemon.h).
 *
 * Data: `idx`, a sorted array of every queued id with its due time and
 * envelope mtime (binary search); `slot`s, claimed messages with their
 * envelope and the results gathered so far; `dest`s, destinations (a
 * domain, or after MX rollup a site: the set of MX hosts several domains
 * share) in a hash map, each with its waiting items, running units,
 * back-off and shaping; `unit`s, work handed to an agent, in a hash map by
 * id; `agentp`s, the few long-lived delivery agents (mailspool/agent.h).
 *
 * Cost per message: one envelope read and plan, one claim, one hand-off
 * line to an agent, its result lines, and a share of one group commit;
 * destination and unit lookups are hash lookups, so nothing grows with
 * the number of destinations per message.
 *
 * Fault rules (INTERNALS.md, "Faults stay small"):
 *  - results are committed in groups (mailspool/spool.h batch: one env/
 *    fsync per group) and only then are the claims released and the
 *    agents' tokens given back, so at most agent_uncommitted messages per
 *    agent are delivered but unrecorded at any instant;
 *  - before a unit is handed out and before a message is settled, its
 *    claim is checked: a message whose claim is gone (we were paused past
 *    the lease, another daemon took it) is neither sent nor settled;
 *  - a unit's deadline is half a lease away: an agent starts no message
 *    of it later (a paused scheduler's agents stop on their own);
 *  - messages an agent reports as not attempted (N) go straight back to
 *    their destination's queue with no attempt recorded, at most
 *    MS_DAEMON_UNTRIED_MAX times per claim (a message that breaks every
 *    session it rides on is then counted as attempted).
 */
#include "mailspool/daemon.h"
#include "mailspool/metrics.h"

#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "mailspool/agent.h"
#include "mailspool/cluster.h"
#include "mailspool/deliver.h"
#include "mailspool/dkim.h"
#include "mailspool/envelope.h"
#include "mailspool/hmap.h"
#include "mailspool/io.h"
#include "mailspool/printable.h"
#include "mailspool/spawn.h"
#include "mailspool/spool.h"
#include "mailspool/fscheck.h"
#include "mailspool/wakenet.h"

#define LINE_MAX_ MS_AGENT_LINE_MAX
#define LIST_MIN_MS 1000
#define TAKE_BATCH 1000 /* envelopes read per walk of the index */
/* ... and for at most this long: on a network file system an envelope
 * read costs milliseconds, and while the loop reads, no result is
 * committed and no agent gets its tokens back (1000 reads took 17 s on
 * GlusterFS: deliveries came in bursts, 96 every 17 s). */
#define TAKE_BUDGET_MS 100
#define SITE_TTL_S 3600 /* a domain's MX rollup is remembered this long */
/* A queued message of another node's destination is read again after at
 * most this many scans without a reason (others_unchanged). */
#define UNREAD_SCANS 10
#define AGENTS_MAX 64

struct dest;

typedef struct entry {
	char id[MS_ENV_ID_MAX + 1];
	char fresh;    /* came by the wake FIFO while the start-up listing ran
	                * (beside id: an entry stays 64 octets, a million 64 MB) */
	unsigned char unread; /* scans it was not read again for: its one
	                       * destination is another live node's (see schedule) */
	unsigned char hinted; /* its destination hint was looked at (judged_by_hint) */
	int busy;      /* claimed by us */
	int64_t due;   /* INT64_MIN: not read yet */
	int64_t mtime; /* of the envelope when last read */
	struct dest *x; /* its one destination when last read (NULL: several) */
} entry;

typedef struct slot {
	ms_envelope env;
	ms_claim claim;
	int groups_left;
	int lost;                 /* the claim stopped being ours */
	int untried;              /* times handed back not attempted */
	int queued;               /* in the settle queue */
	int bounce_due;           /* a bounce not queued before is to be tried */
	ms_sched_result *res;
	size_t nres, capres;
	int *toks;                /* agents owed a token once this is committed */
	size_t ntoks, captoks;
} slot;

typedef struct item {
	slot *s;
	size_t *idx; /* envelope recipient indexes for this destination */
	size_t n;
	char *dkey;  /* the recipients' destination key (mx:DOMAIN, url:, relays:) */
	int done;
} item;

typedef struct dest {
	char *key;
	item *wait;  /* waiting for a unit */
	size_t nwait, capwait;
	size_t active;   /* units running */
	size_t inflight; /* messages the running units hold */
	int64_t backoff_until;
	int agent;
	int ready;       /* in the ready list */
	int resolving;   /* an MX domain whose site is being asked (a resolve unit) */
	int probing;     /* its back-off ended: one message tries it first */
	int probe_out;   /* that message is out */
	int64_t probe_at; /* since then (a probe lost on the way is given up after a while) */
	int64_t resolved_until; /* its site (or that it has none) is known until then */
	/* With other live nodes: messages read while its site was asked, whose
	 * owner (the site's) is known with the answer; read again then. */
	char (*site_wait)[MS_ENV_ID_MAX + 1];
	size_t nsite_wait, capsite_wait;
	/* Shaping: configured limits, and the current ones after throttling. */
	size_t conc_max, conc_cur, conn_msgs;
	double rate_max, rate_cur; /* messages per minute; 0: none */
	double bucket;             /* messages that may start now (rate) */
	int64_t bucket_ms;
	int64_t last_throttle, last_raise;
	int64_t win_start;         /* messages handed out since then (the rate it gets) */
	size_t win_count;
} dest;

typedef struct unit {
	uint64_t id;
	dest *x;
	int agent;
	int resolve;     /* no messages: asks for x's site */
	item *items;
	size_t n;
} unit;

typedef struct agentp {
	pid_t pid;
	int in_fd, out_fd;
	char buf[LINE_MAX_];
	size_t blen;
	int eof, reaped, status, alive;
	size_t owed;        /* tokens to give back (A) */
	size_t units;       /* running */
	int64_t respawn_ms; /* when to start it again */
} agentp;

typedef struct site_ent {
	char site[MS_DEST_MAX];
	int64_t until;
} site_ent;

typedef struct sched_state {
	const ms_daemon_opts *o;
	ms_conf *c;
	ms_spool *sp;
	entry *idx;
	size_t nidx;
	int64_t env_mtime;        /* env/ directory, when last listed */
	ms_hmap dests;            /* key -> dest */
	dest **ready;             /* dests with waiting items */
	size_t nready, capready;
	ms_hmap units;            /* "%llu" -> unit */
	uint64_t next_unit;
	size_t sessions;          /* units running, all agents */
	ms_hmap sites;            /* dkey -> site_ent */
	agentp agents[AGENTS_MAX];
	size_t nagents;
	size_t claimed;           /* slots held */
	slot **slots;
	size_t nslots, capslots;
	slot **settleq;           /* complete, waiting for the group commit */
	size_t nsettle, capsettle;
	int64_t last_scan, last_renew;
	int wake_fd;
	int stopping;
	int64_t stop_deadline;
	int dirty;                /* the index changed since the last full look */
	int64_t earliest;         /* the earliest due time of an entry not taken */
	/* New ids from the wake FIFO ("n<ID>\n"): taken before the index is
	 * walked, and without listing env/. */
	char (*fresh)[MS_ENV_ID_MAX + 1];
	size_t nfresh, capfresh;
	char wbuf[512];           /* a wake message split between reads */
	size_t wlen;
	int relist_wanted;        /* a bare wake-up: something new, id unknown */
	int64_t last_full_list;
	int listed_once;          /* the first listing is the queue we found, not arrivals */
	int64_t gauges_at;        /* metrics gauges last updated (s) */
	/* Several daemons on one spool (mailspool/cluster.h): who is alive,
	 * so who delivers to which destination; and wake-ups to and from
	 * other hosts (mailspool/wakenet.h). */
	ms_peers *peers;
	int64_t peers_ms;         /* last looked at (monotonic) */
	int peers_looks;          /* times looked: nothing is taken before two
	                           * (a node starting with us may not have its
	                           * lock file yet at the first) */
	ms_wakenet *wnet;
	struct lister *ls;        /* the start-up listing and sweep, while they run */
	struct hint_ans *hints;   /* destination hints fetched ahead (fetch_hints), by id */
	size_t nhints;
} sched_state;

static int64_t now_s(void)
{
	return (int64_t)time(NULL);
}


static void logf_(sched_state *d, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void logf_(sched_state *d, const char *fmt, ...)
{
	if (!d->o->log)
		return;
	char line[MS_LOG_LINE_MAX];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(line, sizeof line, fmt, ap);
	va_end(ap);
	/* Messages quote domains, ids and errors that came from outside. */
	char safe[MS_LOG_LINE_MAX];
	d->o->log(d->o->log_ctx, ms_printable_str(line, safe, sizeof safe));
}

static entry *find_entry(sched_state *d, const char *id);

/* ---- metrics (mailspool/metrics.h; NULL when nobody serves them) ---- */

#define METRIC(d, stmt)                                      \
	do {                                                     \
		ms_metrics *m_ = (d)->o->metrics;                    \
		if (m_) {                                            \
			pthread_mutex_lock(&m_->lock);                   \
			stmt;                                            \
			pthread_mutex_unlock(&m_->lock);                 \
		}                                                    \
	} while (0)

/* A destination key's route kind: url:, relays:, or MX (mx:, site:). */
static int route_kind(const char *key)
{
	return !strncmp(key, "url:", 4) ? MS_METRIC_URL
	       : !strncmp(key, "relays:", 7) ? MS_METRIC_RELAYS : MS_METRIC_MX;
}

/* The arrival time an id carries (spool.h: microseconds in 13 hex digits). */
static int64_t id_arrival(const char *id)
{
	int64_t us = 0;
	for (int i = 0; i < 13 && id[i]; i++) {
		char c = id[i];
		int v = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
		if (v < 0)
			return 0;
		us = us * 16 + v;
	}
	return us / 1000000;
}

/* The gauges, at most once a second (counting the backed-off
 * destinations walks them all). */
static void update_gauges(sched_state *d)
{
	ms_metrics *m = d->o->metrics;
	int64_t now = now_s();
	if (!m || now == d->gauges_at)
		return;
	d->gauges_at = now;
	size_t off = 0, queued = 0;
	const char *k;
	void *v;
	for (size_t i = 0; (i = ms_hmap_next(&d->dests, i, &k, &v)) != 0;)
		off += ((dest *)v)->backoff_until > now;
	/* Entries of removed messages stay in the index (due INT64_MAX) until
	 * the next listing: not counted.  The index is in id order, which is
	 * arrival order: the first one left is the oldest. */
	int64_t oldest = 0;
	for (size_t i = 0; i < d->nidx; i++)
		if (d->idx[i].due != INT64_MAX) {
			if (!queued++)
				oldest = id_arrival(d->idx[i].id);
		}
	pthread_mutex_lock(&m->lock);
	m->queue_messages = queued;
	m->oldest_arrival = oldest;
	m->sessions = d->sessions;
	m->claimed = d->claimed;
	m->destinations = d->dests.n;
	m->backed_off = off;
	m->agents = d->nagents;
	pthread_mutex_unlock(&m->lock);
}

/* Merge a listing (ids sorted, with their envelopes' mtimes; mtimes NULL:
 * stat them here) into the index: known ids keep what we know.  Entries
 * the listing lacks stay when they are claimed or came by the wake FIFO
 * after the listing began (keep_fresh: a listing made in the background). */
static ms_status relist_merge(sched_state *d, char **ids, const int64_t *mtimes, size_t n,
                              int keep_fresh, ms_error *err)
{
	int64_t now = now_s();
	size_t extra = 0;
	for (size_t j = 0; keep_fresh && j < d->nidx; j++)
		extra += d->idx[j].busy || d->idx[j].fresh;
	entry *nidx = calloc(n + extra ? n + extra : 1, sizeof *nidx);
	if (!nidx)
		return ms_error_set(err, MS_ERR_NOMEM, "out of memory");
	size_t j = 0, k = 0, arrived = 0;
	for (size_t i = 0; i < n; i++) {
		while (j < d->nidx && strcmp(d->idx[j].id, ids[i]) < 0) {
			if (keep_fresh && (d->idx[j].busy || d->idx[j].fresh))
				nidx[k++] = d->idx[j];
			j++;
		}
		if (j < d->nidx && !strcmp(d->idx[j].id, ids[i])) {
			nidx[k] = d->idx[j++];
			/* Taken for gone by a stat (recheck_mtimes), but listed:
			 * read it. */
			if (nidx[k].due == INT64_MAX && nidx[k].mtime == -1 && !nidx[k].busy)
				nidx[k].due = INT64_MIN;
			/* A listing made just now also does recheck_mtimes' work: a
			 * changed envelope is read again (what it lacks is gone). */
			else if (!keep_fresh && mtimes && !nidx[k].busy &&
			         mtimes[i] != nidx[k].mtime && mtimes[i] != MS_SPOOL_MTIME_UNSEEN)
				nidx[k].due = INT64_MIN;
		} else {
			arrived++;
			/* New to us: its mtime says when it is due at the earliest
			 * (spool.h); only one that may be due now is read. */
			snprintf(nidx[k].id, sizeof nidx[k].id, "%s", ids[i]);
			int64_t m = mtimes ? mtimes[i] : ms_spool_env_mtime(d->sp, ids[i]);
			/* (Within clock_skew of now it is read now: the host that
			 * committed it may run ahead of us, and its mtime is then
			 * that host's now, not a due time.) */
			nidx[k].due = m / 1000000000 > now + d->c->clock_skew ? m / 1000000000 : INT64_MIN;
			nidx[k].mtime = m;
		}
		nidx[k++].fresh = 0;
	}
	for (; keep_fresh && j < d->nidx; j++)
		if (d->idx[j].busy || d->idx[j].fresh)
			nidx[k++] = d->idx[j];
	if (d->listed_once)
		METRIC(d, m_->received += arrived);
	d->listed_once = 1;
	free(d->idx);
	d->idx = nidx;
	d->nidx = k;
	d->dirty = 1;
	return MS_OK;
}

/* A queued message known to be another live node's (its one destination
 * is theirs): its envelope's changes are not ours to watch - its owner
 * acts on them, others_unchanged reads it within UNREAD_SCANS scans, and
 * a change of nodes looks at it again - so it costs a scan no stat. */
static int others_known(sched_state *d, const entry *e)
{
	return !e->busy && e->x && e->due != INT64_MAX && e->due != INT64_MIN && !e->x->resolving &&
	       ms_peers_live(d->peers) > 1 && !ms_peers_owns(d->peers, e->x->key);
}

static int want_mtime(void *ctx, const char *id)
{
	sched_state *d = ctx;
	entry *e = find_entry(d, id);
	return !e || !others_known(d, e);
}

static ms_status relist(sched_state *d, ms_error *err)
{
	char **ids;
	int64_t *mt;
	size_t n;
	ms_status st = ms_spool_list_some_mtimes(d->sp, want_mtime, d, &ids, &mt, &n, err);
	if (st != MS_OK)
		return st;
	st = relist_merge(d, ids, mt, n, 0, err);
	ms_spool_ids_free(ids, n);
	free(mt);
	return st;
}

/* ---- the start-up lister ---- */

/* The first listing of env/ (a name and a stat per message) and the
 * start-up sweep (tmp/, orphaned data, claims; no envelope is read: each
 * is read when it is due) run in a thread with a spool handle
 * of its own: with a million queued they take minutes, and meanwhile the
 * loop goes on taking fresh ids from the wake FIFO, so new mail does not
 * wait for them.  The thread only reads, and the sweep's repairs are the
 * same it always made while submitters commit; what it reports is kept
 * here and logged by the loop (the log sink is not the thread's). */
typedef struct lister {
	pthread_t t;
	ms_conf conf;         /* a copy: a reload may change the daemon's meanwhile */
	pthread_mutex_t mu;
	volatile int stop;    /* the daemon stops: give up */
	int listed, swept;    /* under mu: the listing is ready / the sweep done */
	int joined, merged;   /* (the loop's own) */
	ms_status list_st, sweep_st;
	ms_error list_err, sweep_err;
	char **ids;
	int64_t *mtimes;
	size_t n;
	int64_t env_mtime;    /* env/ when the listing began */
	ms_sweep_report sw;
	char **notes;         /* what the sweep moved aside, for the log */
	size_t nnotes;
} lister;

static void lister_note(void *ctx, const char *line)
{
	lister *l = ctx;
	pthread_mutex_lock(&l->mu);
	char **v = realloc(l->notes, (l->nnotes + 1) * sizeof *v);
	if (v) {
		l->notes = v;
		if ((v[l->nnotes] = strdup(line)))
			l->nnotes++;
	}
	pthread_mutex_unlock(&l->mu);
}

static void *lister_run(void *arg)
{
	lister *l = arg;
	ms_spool *sp = NULL;
	ms_error err = { 0 };
	ms_status st = ms_spool_open(&l->conf, 0, &sp, &err);
	char **ids = NULL;
	int64_t *mt = NULL;
	size_t n = 0;
	int64_t envm = 0;
	if (st == MS_OK) {
		ms_spool_set_report(sp, lister_note, l);
		envm = ms_spool_env_mtime(sp, ".");
		st = ms_spool_list_mtimes(sp, &ids, &mt, &n, &err);
	}
	pthread_mutex_lock(&l->mu);
	l->list_st = l->stop && st == MS_OK ? MS_ERR_TEMP : st;
	l->list_err = err;
	l->ids = ids;
	l->mtimes = mt;
	l->n = n;
	l->env_mtime = envm;
	l->listed = 1;
	pthread_mutex_unlock(&l->mu);
	ms_sweep_report sw;
	memset(&sw, 0, sizeof sw);
	ms_status ss = sp && !l->stop ? ms_spool_sweep_files(sp, &sw, &l->stop, &err) : MS_OK;
	ms_spool_close(sp);
	pthread_mutex_lock(&l->mu);
	l->sweep_st = ss;
	l->sweep_err = err;
	l->sw = sw;
	l->swept = 1;
	pthread_mutex_unlock(&l->mu);
	return NULL;
}

static void lister_free(lister *l)
{
	if (l->ids)
		ms_spool_ids_free(l->ids, l->n);
	free(l->mtimes);
	for (size_t i = 0; i < l->nnotes; i++)
		free(l->notes[i]);
	free(l->notes);
	pthread_mutex_destroy(&l->mu);
	free(l);
}

static void log_sweep(sched_state *d, const ms_sweep_report *sw)
{
	/* (Damaged envelopes are found when they are read, and logged then.) */
	if (sw->tmp_removed + sw->orphans_removed + sw->claims_expired)
		logf_(d, "start-up repair: %zu temporary files, %zu orphaned data files, %zu expired "
		         "claims removed",
		      sw->tmp_removed, sw->orphans_removed, sw->claims_expired);
}

/* Start the lister; 0, or -1 when no thread could be made (then the
 * caller lists and sweeps in line). */
static int lister_start(sched_state *d)
{
	lister *l = calloc(1, sizeof *l);
	if (!l)
		return -1;
	l->conf = *d->c;
	pthread_mutex_init(&l->mu, NULL);
	pthread_attr_t at;
	pthread_attr_init(&at);
	pthread_attr_setstacksize(&at, 256u << 10);
	int r = pthread_create(&l->t, &at, lister_run, l);
	pthread_attr_destroy(&at);
	if (r != 0) {
		lister_free(l);
		return -1;
	}
	d->ls = l;
	return 0;
}

/* What the lister has for the loop: its listing merged once, its notes
 * and sweep report logged; joined when both are done. */
static void lister_poll(sched_state *d)
{
	lister *l = d->ls;
	if (!l)
		return;
	pthread_mutex_lock(&l->mu);
	int listed = l->listed, swept = l->swept;
	char **notes = l->notes;
	size_t nnotes = l->nnotes;
	l->notes = NULL;
	l->nnotes = 0;
	pthread_mutex_unlock(&l->mu);
	for (size_t i = 0; i < nnotes; i++) {
		logf_(d, "%s", notes[i]);
		free(notes[i]);
	}
	free(notes);
	if (listed && !l->merged) {
		ms_error err;
		l->merged = 1;
		if (l->list_st == MS_OK) {
			d->env_mtime = l->env_mtime;
			if (relist_merge(d, l->ids, l->mtimes, l->n, 1, &err) != MS_OK)
				logf_(d, "cannot list the queue: %s", err.msg);
		} else if (!l->stop) {
			logf_(d, "cannot list the queue: %s", l->list_err.msg);
		}
		if (l->ids)
			ms_spool_ids_free(l->ids, l->n);
		l->ids = NULL;
		free(l->mtimes);
		l->mtimes = NULL;
#ifdef __GLIBC__
		/* The listing was the thread's (its own malloc arena): what it
		 * freed goes back to the system now, or the next listing, made
		 * here, would come on top of it (a million names: 56 MB). */
		malloc_trim(0);
#endif
		if (l->list_st != MS_OK)
			d->relist_wanted = 1; /* the loop lists in line next */
	}
	if (!swept)
		return;
	if (!l->joined)
		pthread_join(l->t, NULL);
	if (l->sweep_st != MS_OK && !l->stop)
		logf_(d, "start-up sweep: %s", l->sweep_err.msg);
	log_sweep(d, &l->sw);
	lister_free(l);
	d->ls = NULL;
}

/* Still listing: the index is not the whole queue yet. */
static int listing(const sched_state *d)
{
	if (!d->ls)
		return 0;
	pthread_mutex_lock(&d->ls->mu);
	int done = d->ls->listed;
	pthread_mutex_unlock(&d->ls->mu);
	return !done || !d->ls->merged;
}

/* Envelopes changed behind our back (flush, release, another daemon) are
 * read again: found by their mtime. */
static void recheck_mtimes(sched_state *d)
{
	for (size_t i = 0; i < d->nidx; i++) {
		entry *e = &d->idx[i];
		if (e->busy || e->due == INT64_MIN || others_known(d, e))
			continue;
		int64_t m = ms_spool_env_mtime(d->sp, e->id);
		if (m == -1) {
			/* Gone (another node delivered it): not opened to learn that
			 * again; the next listing drops it, or reads it should it
			 * be there after all. */
			e->mtime = -1;
			e->due = INT64_MAX;
		} else if (m != e->mtime) {
			e->due = INT64_MIN;
			d->dirty = 1;
		}
	}
}

static int64_t env_dir_mtime(sched_state *d)
{
	return ms_spool_env_mtime(d->sp, "."); /* env/ itself */
}


/* Room for one more element in the array *arrp (n in use, *cap allocated):
 * doubled from `first`. */
static int grow(void *arrp, size_t *cap, size_t n, size_t size, size_t first)
{
	if (n < *cap)
		return 0;
	size_t nc = *cap ? *cap * 2 : first;
	void *p = realloc(*(void **)arrp, nc * size);
	if (!p)
		return -1;
	*(void **)arrp = p;
	*cap = nc;
	return 0;
}

/* ---- destinations and shaping ------------------------------------------ */

/* The shape for a destination: its own domain (from the item that made
 * it), or any MX host of its site. */
static const ms_conf_shape *shape_for(const ms_conf *c, const char *key, const char *dkey)
{
	for (size_t i = 0; i < c->nshapes; i++) {
		const char *pat = c->shapes[i].pattern;
		if (dkey && !strncmp(dkey, "mx:", 3) && ms_conf_pattern_match(pat, dkey + 3))
			return &c->shapes[i];
		if (!strncmp(key, "mx:", 3) && ms_conf_pattern_match(pat, key + 3))
			return &c->shapes[i];
		if (!strncmp(key, "site:", 5)) {
			char names[MS_DEST_MAX];
			snprintf(names, sizeof names, "%s", key + 5);
			for (char *sv, *t = strtok_r(names, ",", &sv); t; t = strtok_r(NULL, ",", &sv))
				if (ms_conf_pattern_match(pat, t))
					return &c->shapes[i];
		}
	}
	return NULL;
}

static void dest_shape(sched_state *d, dest *x, const char *dkey)
{
	const ms_conf_shape *sh = shape_for(d->c, x->key, dkey);
	x->conc_max = sh && sh->concurrency ? sh->concurrency : d->c->destination_concurrency;
	x->conn_msgs = sh && sh->conn_messages ? sh->conn_messages : d->c->connection_messages;
	x->rate_max = (double)(sh && sh->rate ? sh->rate : d->c->destination_rate);
	x->conc_cur = x->conc_max;
	x->rate_cur = x->rate_max;
	x->bucket = x->rate_max > 0 ? 1 : 0;
	x->bucket_ms = ms_now_ms();
}

static size_t key_hash(const char *s)
{
	size_t h = 5381;
	for (; *s; s++)
		h = h * 33 + (unsigned char)*s;
	return h;
}

static dest *dest_get(sched_state *d, const char *key, const char *dkey)
{
	dest *x = ms_hmap_get(&d->dests, key);
	if (x)
		return x;
	if (!(x = calloc(1, sizeof *x)) || !(x->key = strdup(key))) {
		free(x);
		return NULL;
	}
	if (ms_hmap_put(&d->dests, key, x) < 0) {
		free(x->key);
		free(x);
		return NULL;
	}
	/* One agent per destination, so its parked sessions are found again.
	 * A site goes to the agent of the domain that made it: that agent
	 * resolved the domain (asking for its site), so its DNS cache holds
	 * the answer the first unit needs. */
	x->agent = (int)(key_hash(dkey ? dkey : key) % (d->nagents ? d->nagents : 1));
	dest_shape(d, x, dkey);
	return x;
}

/* The destination an item's recipients go to now: the site its domain
 * rolled up into, while that is fresh; else its own key. */
static void ask_site(sched_state *d, dest *x, int64_t now);

static dest *dest_for_item(sched_state *d, const char *dkey, int64_t now)
{
	site_ent *se = ms_hmap_get(&d->sites, dkey);
	if (se && se->until > now)
		return dest_get(d, se->site, dkey);
	dest *x = dest_get(d, dkey, dkey);
	if (x && !strncmp(dkey, "mx:", 3) && x->resolved_until <= now && !x->resolving)
		ask_site(d, x, now);
	return x;
}

static void mark_ready(sched_state *d, dest *x)
{
	if (x->ready || grow(&d->ready, &d->capready, d->nready, sizeof *d->ready, 64) < 0)
		return;
	x->ready = 1;
	d->ready[d->nready++] = x;
}

static int push_item(sched_state *d, dest *x, item it)
{
	if (grow(&x->wait, &x->capwait, x->nwait, sizeof *x->wait, 16) < 0)
		return -1;
	x->wait[x->nwait++] = it;
	mark_ready(d, x);
	return 0;
}

/* A throttling reply: half the concurrency and half the rate at once. */
static void throttle(sched_state *d, dest *x, int64_t now)
{
	size_t was = x->conc_cur;
	x->conc_cur = x->active > 1 ? x->active / 2 : 1;
	if (x->conc_cur > was)
		x->conc_cur = was;
	/* Without a configured rate, the rate it was getting is the start. */
	int64_t span = now - x->win_start > 1 ? now - x->win_start : 1;
	double got = (double)x->win_count * 60.0 / (double)span;
	double per_min = x->rate_cur > 0 ? x->rate_cur : got > 1 ? got : 1;
	x->rate_cur = per_min / 2 < 1 ? 1 : per_min / 2;
	if (x->bucket > 1)
		x->bucket = 1;
	x->last_throttle = x->last_raise = now;
	logf_(d, "%s: the server asks us to slow down: concurrency %zu, rate %.0f/min", x->key,
	      x->conc_cur, x->rate_cur);
}

/* Recover gradually: one more connection and half again the rate per
 * destination_recovery without a throttle, up to the configured limits. */
static void recover(sched_state *d, dest *x, int64_t now)
{
	if (!x->last_throttle || now - x->last_raise < d->c->destination_recovery)
		return;
	x->last_raise = now;
	if (x->conc_cur < x->conc_max)
		x->conc_cur++;
	if (x->rate_cur > 0) {
		x->rate_cur *= 1.5;
		/* A configured rate is the ceiling; without one the limit the
		 * throttle set goes when the concurrency is back in full. */
		if (x->rate_max > 0 ? x->rate_cur >= x->rate_max : x->conc_cur == x->conc_max)
			x->rate_cur = x->rate_max;
	}
	if (x->conc_cur == x->conc_max && x->rate_cur == x->rate_max) {
		x->last_throttle = 0;
		logf_(d, "%s: back to its limits: concurrency %zu%s", x->key, x->conc_max,
		      x->rate_max > 0 ? "" : ", no rate limit");
	}
}

static void refill(dest *x, int64_t ms)
{
	if (x->rate_cur <= 0)
		return;
	x->bucket += (double)(ms - x->bucket_ms) * x->rate_cur / 60000.0;
	/* A burst of at most one second's worth (at least one message). */
	double cap = x->rate_cur / 60 > 1 ? x->rate_cur / 60 : 1;
	if (x->bucket > cap)
		x->bucket = cap;
	x->bucket_ms = ms;
}

/* ---- slots and settling ----------------------------------------------- */

static int cmp_entry(const void *a, const void *b)
{
	return strcmp(((const entry *)a)->id, ((const entry *)b)->id);
}

static entry *find_entry(sched_state *d, const char *id)
{
	entry key;
	snprintf(key.id, sizeof key.id, "%s", id);
	return bsearch(&key, d->idx, d->nidx, sizeof *d->idx, cmp_entry);
}

static void slot_free(slot *s)
{
	ms_env_free(&s->env);
	free(s->res);
	free(s->toks);
	free(s);
}

static void remove_slot(sched_state *d, slot *s)
{
	for (size_t i = 0; i < d->nslots; i++)
		if (d->slots[i] == s) {
			d->slots[i] = d->slots[--d->nslots];
			break;
		}
	d->claimed--;
	slot_free(s);
}

static int add_result(slot *s, const ms_sched_result *r)
{
	if (grow(&s->res, &s->capres, s->nres, sizeof *s->res, 4) < 0)
		return -1;
	s->res[s->nres++] = *r;
	return 0;
}

static void queue_settle(sched_state *d, slot *s)
{
	if (s->queued)
		return;
	if (grow(&d->settleq, &d->capsettle, d->nsettle, sizeof *d->settleq, 64) < 0) {
		s->lost = 1; /* cannot even remember it: its claim lapses, another run redoes it */
		return;
	}
	s->queued = 1;
	d->settleq[d->nsettle++] = s;
}

static void item_done(sched_state *d, item *it)
{
	if (it->done)
		return;
	it->done = 1;
	free(it->idx);
	it->idx = NULL;
	free(it->dkey);
	it->dkey = NULL;
	if (--it->s->groups_left == 0)
		queue_settle(d, it->s);
}

/* Defer what an item still has, with `why` (an attempt is recorded). */
static void item_defer(sched_state *d, item *it, const char *why)
{
	for (size_t r = 0; r < it->n && !d->stopping; r++) {
		ms_sched_result res = { .rcpt = it->idx[r], .state = MS_RCPT_DEFERRED };
		snprintf(res.enh, sizeof res.enh, "4.3.0");
		snprintf(res.text, sizeof res.text, "%s", why);
		snprintf(res.relay, sizeof res.relay, "none");
		add_result(it->s, &res);
	}
	item_done(d, it);
}

static void add_fresh(sched_state *d, const char *id);

/* After results could not be recorded (a full disk): the first retry
 * tier, at most a minute - not at once, or the delivered recipients
 * would get the message again. */
static int64_t settle_retry(const ms_conf *c)
{
	return ms_sched_retry_soon(c, 60);
}

/* Apply one slot's results (inside the group commit). */
static void settle_one(sched_state *d, slot *s, entry *e)
{
	ms_error err;
	if (s->lost || !ms_spool_claim_held(d->sp, &s->claim)) {
		/* Paused past the lease, or the claim was broken: the new holder
		 * decides; nothing of ours is written. */
		if (!s->lost)
			logf_(d, "%s: claim lost during delivery; its results are left to the new holder",
			      s->env.id);
		s->lost = 1;
		return;
	}
	if (!s->nres && !s->bounce_due)
		return;
	ms_sched_opts so = { .conf = d->c, .bounce = 1, .log = d->o->log, .log_ctx = d->o->log_ctx };
	ms_sched_summary sum;
	ms_status st = ms_sched_settle(d->sp, &so, &s->env, s->res, s->nres, &sum, &err);
	if (sum.bounce_id[0])
		add_fresh(d, sum.bounce_id); /* (its submission woke the others) */
	METRIC(d, {
		for (int k_ = 0; k_ < 3; k_++)
			m_->reports[k_] += sum.reports[k_];
		m_->report_failures += sum.report_failures;
	});
	if (st != MS_OK) {
		/* The envelope could not be written (a full disk): not again
		 * at once, or the delivered recipients would get it again. */
		logf_(d, "%s: cannot record the results: %s; next look in %llds", s->env.id, err.msg,
		      (long long)settle_retry(d->c));
		if (e)
			e->due = now_s() + settle_retry(d->c);
	} else if (e) {
		e->due = sum.removed ? INT64_MAX : sum.next_due;
		e->mtime = sum.removed ? 0 : ms_spool_env_mtime(d->sp, s->env.id);
	}
}

static void agent_say(sched_state *d, int k, const char *p, size_t n);

/* The group commit: every complete slot's results, one env/ fsync, then
 * claims released and tokens given back. */
static void settle_queued(sched_state *d)
{
	if (!d->nsettle)
		return;
	ms_error err;
	ms_spool_batch_begin(d->sp);
	for (size_t i = 0; i < d->nsettle; i++)
		settle_one(d, d->settleq[i], find_entry(d, d->settleq[i]->env.id));
	if (ms_spool_batch_commit(d->sp, &err) != MS_OK)
		logf_(d, "cannot commit %zu results: %s", d->nsettle, err.msg);
	for (size_t i = 0; i < d->nsettle; i++) {
		slot *s = d->settleq[i];
		entry *e = find_entry(d, s->env.id);
		if (!s->lost)
			ms_spool_release(d->sp, &s->claim, NULL);
		if (e) {
			e->busy = 0;
			if (s->lost || (!s->nres && !s->bounce_due))
				e->due = INT64_MIN;
		}
		for (size_t k = 0; k < s->ntoks; k++)
			if (s->toks[k] >= 0 && (size_t)s->toks[k] < d->nagents)
				d->agents[s->toks[k]].owed++;
		remove_slot(d, s);
	}
	d->nsettle = 0;
	d->dirty = 1;
}

/* Tokens back to the agents: for what was committed, and for what came
 * back not attempted (nothing to commit). */
static void give_tokens(sched_state *d)
{
	for (size_t k = 0; k < d->nagents; k++)
		if (d->agents[k].owed && d->agents[k].alive) {
			char line[32];
			int n = snprintf(line, sizeof line, "A %zu\n", d->agents[k].owed);
			d->agents[k].owed = 0;
			agent_say(d, (int)k, line, (size_t)n);
		}
}

/* ---- agents ------------------------------------------------------------ */

/* How long after a renewal (or a hand-off) agents may start messages:
 * two thirds of the lease, at least a second. */
static int64_t until_s(const ms_conf *c)
{
	int64_t t = c->claim_lease * 2 / 3;
	return t < 1 ? 1 : t;
}

/* From when the agents' deadline counts: now while the lease keeper keeps
 * up (it renewed within a third of a lease and a second: the next round
 * is due before our claims could age), else its last round - a process
 * that was paused, or a keeper that cannot write, gives its agents less
 * time, never more than the leases others see. */
static int64_t lease_base(sched_state *d, int64_t now)
{
	int64_t r = ms_spool_keeper_renewed(d->sp);
	if (r <= 0 || now - r <= (d->c->claim_lease + 2) / 3 + 1)
		return now;
	return r;
}

static void agent_start(sched_state *d, int k)
{
	agentp *a = &d->agents[k];
	char parent[32];
	snprintf(parent, sizeof parent, "%ld", (long)getpid());
	const char *conf = d->c->path[0] ? d->c->path : NULL;
	char *argv[] = { (char *)d->o->agent, "--parent", parent, conf ? "-C" : NULL,
		             (char *)conf, NULL };
	int to, from;
	pid_t pid = ms_spawn(d->o->agent, argv, &to, &from);
	if (pid < 0) {
		logf_(d, "cannot run the delivery agent %s: %s", d->o->agent, strerror(errno));
		a->respawn_ms = ms_now_ms() + 1000;
		return;
	}
	fcntl(from, F_SETFL, O_NONBLOCK);
	memset(a, 0, sizeof *a);
	a->pid = pid;
	a->in_fd = to;
	a->out_fd = from;
	a->alive = 1;
}

/* Agents read their work as it comes (their main thread does nothing
 * else), so this write does not wait on the network.  One that died gives
 * EPIPE (SIGPIPE is ignored) and is reaped as dead. */
static void agent_say(sched_state *d, int k, const char *p, size_t n)
{
	agentp *a = &d->agents[k];
	while (n > 0 && a->in_fd >= 0) {
		ssize_t w = write(a->in_fd, p, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0) {
			close(a->in_fd);
			a->in_fd = -1;
			return;
		}
		p += w;
		n -= (size_t)w;
	}
}

static unit *unit_find(sched_state *d, uint64_t id)
{
	char k[24];
	snprintf(k, sizeof k, "%llu", (unsigned long long)id);
	return ms_hmap_get(&d->units, k);
}

/* e waits for x's site (see dest.site_wait); -1 without memory. */
static int wait_for_site(dest *x, const char *id)
{
	if (grow(&x->site_wait, &x->capsite_wait, x->nsite_wait, sizeof *x->site_wait, 16) < 0)
		return -1;
	snprintf(x->site_wait[x->nsite_wait++], sizeof *x->site_wait, "%s", id);
	return 0;
}

/* x's site is known (to: the site's destination, or NULL/x when it has
 * none): what waited for it goes on.  A message whose one destination was
 * x now goes to `to`; when that is another live node's it is left unread
 * (see others_unchanged), else it is read again at once, as is any
 * message of several destinations. */
static void site_known(sched_state *d, dest *x, dest *to)
{
	int64_t now = now_s();
	for (size_t i = 0; i < x->nsite_wait; i++) {
		entry *e = find_entry(d, x->site_wait[i]);
		if (!e || e->busy || e->due == INT64_MAX)
			continue;
		if (e->x == x && to) {
			e->x = to;
			if (ms_peers_live(d->peers) > 1 && !ms_peers_owns(d->peers, to->key)) {
				e->due = now + d->c->queue_scan_interval;
				continue;
			}
		}
		e->due = INT64_MIN;
		d->dirty = 1;
	}
	free(x->site_wait);
	x->site_wait = NULL;
	x->nsite_wait = x->capsite_wait = 0;
}

/* A unit is over: whatever it did not report is deferred with `why`. */
static void unit_end(sched_state *d, unit *u, const char *why)
{
	if (u->resolve) {
		/* The site is known (or that there is none): what waited for the
		 * answer moves to the site's queue, or goes on its own. */
		dest *x = u->x;
		x->resolving = 0;
		x->resolved_until = now_s() + SITE_TTL_S;
		site_ent *se = ms_hmap_get(&d->sites, x->key);
		dest *to = se ? dest_get(d, se->site, x->key) : NULL;
		site_known(d, x, se && se->until > now_s() ? to : NULL);
		if (to && to != x) {
			for (size_t i = 0; i < x->nwait; i++)
				if (push_item(d, to, x->wait[i]) < 0)
					item_done(d, &x->wait[i]);
			x->nwait = 0;
		} else if (x->nwait) {
			mark_ready(d, x);
		}
		d->agents[u->agent].units--;
		char k[24];
		snprintf(k, sizeof k, "%llu", (unsigned long long)u->id);
		ms_hmap_del(&d->units, k);
		free(u);
		return;
	}
	for (size_t i = 0; i < u->n; i++)
		if (!u->items[i].done)
			item_defer(d, &u->items[i], why);
	u->x->active--;
	u->x->inflight -= u->n;
	if (u->x->nwait)
		mark_ready(d, u->x);
	d->sessions--;
	d->agents[u->agent].units--;
	char k[24];
	snprintf(k, sizeof k, "%llu", (unsigned long long)u->id);
	ms_hmap_del(&d->units, k);
	free(u->items);
	free(u);
}

/* One result line from agent k. */
static void agent_line(sched_state *d, int k, const char *line)
{
	ms_agent_result r;
	ms_agent_parse_result(line, &r);
	if (!r.kind)
		return; /* not ours: ignored */
	unit *u = unit_find(d, r.unit);
	if (!u || u->agent != k)
		return;
	int64_t now = now_s();
	item *it = r.item < u->n ? &u->items[r.item] : NULL;
	switch (r.kind) {
	case 'R':
		if (it && !it->done) {
			add_result(it->s, &r.r);
			int res = r.r.state == MS_RCPT_DELIVERED ? MS_METRIC_DELIVERED
			          : r.r.state == MS_RCPT_FAILED  ? MS_METRIC_FAILED
			                                         : MS_METRIC_DEFERRED;
			METRIC(d, m_->rcpts[route_kind(u->x->key)][res]++);
		}
		break;
	case 'C':
		METRIC(d, {
			ms_metrics_conn *c_ = &m_->conn;
			c_->connections += r.conn.connections;
			c_->reused += r.conn.reused;
			c_->tls_verified += r.conn.tls_verified;
			c_->tls_unverified += r.conn.tls_unverified;
			c_->plain += r.conn.plain;
			c_->dns_ok += r.conn.dns_ok;
			c_->dns_temp += r.conn.dns_temp;
			c_->dns_perm += r.conn.dns_perm;
			c_->dns_cached += r.conn.dns_cached;
		});
		break;
	case 'D':
		if (!it || it->done)
			break;
		if (r.token && grow(&it->s->toks, &it->s->captoks, it->s->ntoks, sizeof(int), 2) == 0)
			it->s->toks[it->s->ntoks++] = k;
		else if (r.token)
			d->agents[k].owed++;
		item_done(d, it);
		break;
	case 'N':
		if (!it || it->done)
			break;
		if (r.token)
			d->agents[k].owed++; /* nothing of it to commit */
		if (!d->stopping && !it->s->lost && it->s->untried < MS_DAEMON_UNTRIED_MAX) {
			/* Not attempted: straight back to its destination, no attempt
			 * recorded, no tier consumed (at most MS_DAEMON_UNTRIED_MAX
			 * times per claim, so a server that throttles or drops every
			 * session still meets the tiers). */
			it->s->untried++;
			item again = *it;
			dest *x = dest_for_item(d, again.dkey, now);
			if (x && push_item(d, x, again) == 0) {
				it->done = 1; /* the copy in the queue owns idx and dkey now */
				it->idx = NULL;
				it->dkey = NULL;
				break;
			}
		}
		if (d->stopping || it->s->lost)
			item_done(d, it); /* released untouched */
		else
			item_defer(d, it, "not attempted: every session it was given broke first");
		break;
	case 'S':
		if (u->resolve) {
			site_ent *se = ms_hmap_get(&d->sites, u->x->key);
			if (!se && (se = malloc(sizeof *se)) && ms_hmap_put(&d->sites, u->x->key, se) < 0) {
				free(se);
				se = NULL;
			}
			if (se) {
				snprintf(se->site, sizeof se->site, "%s", r.site);
				se->until = now + SITE_TTL_S;
			}
			break;
		}
		for (size_t i = 0; i < u->n; i++) {
			const char *dk = u->items[i].dkey;
			if (!dk || strncmp(dk, "mx:", 3) || ms_hmap_get(&d->sites, dk))
				continue;
			site_ent *se = malloc(sizeof *se);
			if (!se)
				break;
			snprintf(se->site, sizeof se->site, "%s", r.site);
			se->until = now + SITE_TTL_S;
			if (ms_hmap_put(&d->sites, dk, se) < 0)
				free(se);
		}
		break;
	case 'U':
		METRIC(d, m_->unreachable++);
		u->x->backoff_until = now + d->c->destination_backoff;
		u->x->probing = 1; /* when it ends, one message goes first */
		u->x->probe_out = 0;
		logf_(d, "%s: no server answered; not tried again for %llds", u->x->key,
		      (long long)d->c->destination_backoff);
		/* What waits for it is released untouched: no attempt against a
		 * destination known to be down (read again when the back-off
		 * ends). */
		for (size_t i = 0; i < u->x->nwait; i++)
			item_done(d, &u->x->wait[i]);
		u->x->nwait = 0;
		break;
	case 'H':
		METRIC(d, m_->throttled++);
		throttle(d, u->x, now);
		break;
	case 'X':
		if (u->x->probing && u->x->backoff_until <= now && !u->resolve) {
			/* The probe got through (no U before its X): all may go. */
			u->x->probing = u->x->probe_out = 0;
			mark_ready(d, u->x);
			d->dirty = 1;
		}
		unit_end(d, u, "the delivery agent ended the work without reporting it");
		break;
	}
}

static void agent_read(sched_state *d, int k)
{
	agentp *a = &d->agents[k];
	for (;;) {
		char *start = a->buf, *nl;
		while ((nl = memchr(start, '\n', a->blen - (size_t)(start - a->buf)))) {
			*nl = '\0';
			agent_line(d, k, start);
			start = nl + 1;
		}
		a->blen -= (size_t)(start - a->buf);
		memmove(a->buf, start, a->blen);
		if (a->blen == sizeof a->buf - 1)
			a->blen = 0; /* a line past the cap: drop it */
		ssize_t n = read(a->out_fd, a->buf + a->blen, sizeof a->buf - 1 - a->blen);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return; /* EAGAIN */
		if (n == 0) {
			a->eof = 1;
			return;
		}
		a->blen += (size_t)n;
	}
}

/* An agent has ended: what it did not report is deferred (a message that
 * kills its agent must not be retried in a loop), or released untouched
 * when we are stopping. */
static void agent_end(sched_state *d, int k)
{
	agentp *a = &d->agents[k];
	char why[128];
	if (WIFSIGNALED(a->status))
		snprintf(why, sizeof why, "the delivery process was killed by signal %d",
		         WTERMSIG(a->status));
	else
		snprintf(why, sizeof why, "the delivery process ended (status %d) before reporting",
		         WEXITSTATUS(a->status));
	const char *key;
	void *v;
	for (int again = 1; again;) {
		again = 0;
		for (size_t i = 0; (i = ms_hmap_next(&d->units, i, &key, &v)) != 0;)
			if (((unit *)v)->agent == k) {
				unit_end(d, v, why);
				again = 1; /* the map changed: walk it again */
				break;
			}
	}
	if (a->in_fd >= 0)
		close(a->in_fd);
	close(a->out_fd);
	a->in_fd = a->out_fd = -1;
	a->alive = 0;
	a->respawn_ms = ms_now_ms() + 1000;
	if (!d->stopping)
		logf_(d, "delivery agent %d (pid %ld) ended: %s; another starts", k, (long)a->pid, why);
}

static void reap(sched_state *d)
{
	for (size_t k = 0; k < d->nagents; k++) {
		agentp *a = &d->agents[k];
		if (!a->alive)
			continue;
		if (!a->reaped) {
			int status;
			if (waitpid(a->pid, &status, WNOHANG) == a->pid) {
				a->reaped = 1;
				a->status = status;
			}
		}
		if (a->reaped && !a->eof)
			agent_read(d, (int)k);
		if (a->reaped && a->eof)
			agent_end(d, (int)k);
	}
}

/* ---- scheduling ------------------------------------------------------ */

/* How long the others wait for a probe's answer before one of them tries. */
static int64_t probe_patience(const ms_conf *c)
{
	return c->connect_timeout * 2 + 30;
}

/* When a message of x (queue id `id`) is not ours to take now because of
 * the other nodes, the time to look at it again; 0 when it is ours.  Not
 * ours: x's site is being asked (the site's owner delivers it, and who
 * that is, is known with the answer - the domain's owner taking it
 * meanwhile would be a second node at that site: id waits for the
 * answer), or another live node delivers to x (cluster.h: looked at again
 * at the next scan, or at once when the nodes change). */
static int64_t others_until(sched_state *d, dest *x, const char *id, int64_t now)
{
	if (ms_peers_live(d->peers) < 2)
		return 0;
	if (x->resolving)
		return now + (wait_for_site(x, id) == 0 ? 5 : 1);
	if (!ms_peers_owns(d->peers, x->key))
		return now + d->c->queue_scan_interval;
	return 0;
}

/* ---- destination hints fetched ahead ---- */

/* A hint lookup is a round trip or two on a shared volume, and a walk of
 * the index meets many messages not looked at yet, most of them other
 * nodes': their hints are asked for together, HINT_THREADS at a time,
 * before the walk, instead of one after the other inside it. */
#define HINT_BATCH 64
#define HINT_THREADS 8

typedef struct hint_ans {
	char id[MS_ENV_ID_MAX + 1];
	int got; /* ms_spool_dest_hint's answer; -2: not asked yet */
	char sender[MS_HINT_SENDER_MAX + 1];
	char domain[MS_HINT_DOMAIN_MAX + 1];
} hint_ans;

typedef struct hint_job {
	ms_spool *sp; /* (ms_spool_dest_hint only reads its env/ descriptor) */
	hint_ans *v;
	size_t n, next;
	pthread_mutex_t mu;
} hint_job;

static void *hint_worker(void *arg)
{
	hint_job *j = arg;
	for (;;) {
		pthread_mutex_lock(&j->mu);
		size_t i = j->next;
		while (i < j->n && j->v[i].got != -2)
			i++;
		j->next = i + 1;
		pthread_mutex_unlock(&j->mu);
		if (i >= j->n)
			return NULL;
		j->v[i].got = ms_spool_dest_hint(j->sp, j->v[i].id, j->v[i].sender, j->v[i].domain);
	}
}

/* What judged_by_hint looks at: a message not looked at yet, due. */
static int wants_hint(const entry *e, int64_t now)
{
	return !e->busy && !e->hinted && !e->x && e->due <= now;
}

static int cmp_hint(const void *a, const void *b)
{
	return strcmp(((const hint_ans *)a)->id, ((const hint_ans *)b)->id);
}

/* id's answer among the first n of d->hints (sorted), or NULL. */
static hint_ans *hint_find(sched_state *d, size_t n, const char *id)
{
	hint_ans key;
	snprintf(key.id, sizeof key.id, "%s", id);
	return n ? bsearch(&key, d->hints, n, sizeof *d->hints, cmp_hint) : NULL;
}

/* Before a walk: the hints of the next HINT_BATCH messages it will judge
 * by their hint, those fetched before and not used yet kept. */
static void fetch_hints(sched_state *d, int64_t now)
{
	if (ms_peers_live(d->peers) < 2 || d->peers_looks < 2)
		return;
	if (!d->hints && !(d->hints = malloc(HINT_BATCH * sizeof *d->hints)))
		return;
	size_t keep = 0;
	for (size_t i = 0; i < d->nhints; i++) {
		entry *e = find_entry(d, d->hints[i].id);
		if (e && wants_hint(e, now))
			d->hints[keep++] = d->hints[i];
	}
	d->nhints = keep;
	size_t old = keep, fresh = 0;
	for (size_t i = 0; i < d->nidx && d->nhints < HINT_BATCH; i++) {
		entry *e = &d->idx[i];
		if (!wants_hint(e, now) || hint_find(d, old, e->id))
			continue;
		hint_ans *a = &d->hints[d->nhints++];
		memcpy(a->id, e->id, sizeof a->id);
		a->got = -2;
		fresh++;
	}
	if (fresh > 1) {
		hint_job j = { .sp = d->sp, .v = d->hints, .n = d->nhints, .next = old };
		pthread_mutex_init(&j.mu, NULL);
		pthread_t t[HINT_THREADS - 1];
		size_t nt = 0;
		pthread_attr_t at;
		pthread_attr_init(&at);
		pthread_attr_setstacksize(&at, 64u << 10);
		while (nt < HINT_THREADS - 1 && nt + 1 < fresh &&
		       pthread_create(&t[nt], &at, hint_worker, &j) == 0)
			nt++;
		pthread_attr_destroy(&at);
		hint_worker(&j); /* this thread too; without workers, it alone */
		for (size_t k = 0; k < nt; k++)
			pthread_join(t[k], NULL);
		pthread_mutex_destroy(&j.mu);
	} else {
		d->nhints = old; /* one alone: judged_by_hint asks for it itself */
	}
	qsort(d->hints, d->nhints, sizeof *d->hints, cmp_hint);
}

/* With other live nodes, a message not looked at yet is first judged by
 * the destination hint its commit left beside the envelope (spool.h): a
 * lookup and an attribute read, where reading the envelope costs an open,
 * a read, a close and a stat of its data, each a round trip on a shared
 * volume - and two of every three messages are another node's.  1: left
 * to its owner (or to its site's answer, as take does it); 0: read it.
 * A wrong hint costs time, never mail: whoever acts reads the envelope,
 * and others_unchanged reads it within UNREAD_SCANS scans. */
static int judged_by_hint(sched_state *d, entry *e, int64_t now)
{
	if (e->hinted || e->x || ms_peers_live(d->peers) < 2)
		return 0;
	e->hinted = 1;
	char sender[MS_HINT_SENDER_MAX + 1], rcpt[MS_HINT_DOMAIN_MAX + 2], key[MS_DEST_MAX];
	ms_error kerr;
	rcpt[0] = '@';
	hint_ans *a = hint_find(d, d->nhints, e->id);
	if (a && a->got == -2)
		a = NULL; /* (not asked after all) */
	int got = a ? a->got : ms_spool_dest_hint(d->sp, e->id, sender, rcpt + 1);
	if (a && got == 1) {
		memcpy(sender, a->sender, sizeof sender);
		memcpy(rcpt + 1, a->domain, sizeof a->domain);
	}
	if (got < 0) {
		/* Delivered by its owner meanwhile: as recheck_mtimes drops it */
		e->mtime = -1;
		e->due = INT64_MAX;
		return 1;
	}
	if (got == 0 || ms_dest_for(d->c, sender, rcpt, key, sizeof key, &kerr) != MS_OK)
		return 0;
	dest *x = dest_for_item(d, key, now);
	int64_t theirs = x ? others_until(d, x, e->id, now) : 0;
	if (!theirs)
		return 0; /* ours: read it */
	e->x = x; /* (when its site is being asked, site_known moves it on) */
	e->due = theirs;
	if (!x->resolving)
		METRIC(d, m_->left_by_hint++);
	return 1;
}

/* Read a due message, plan it, claim it, queue its recipients per
 * destination.  The plan is made once; it is made again only when the
 * envelope changed between the read and the claim. */
static void take(sched_state *d, entry *e, int64_t now)
{
	if (d->peers_looks < 2) {
		e->due = now + 1; /* who delivers what is known in a second: read then */
		return;
	}
	if (judged_by_hint(d, e, now))
		return;
	slot *s = calloc(1, sizeof *s);
	ms_error err;
	if (!s)
		return;
	int64_t seen;
	ms_status st = ms_spool_read_mtime(d->sp, e->id, &s->env, &seen, &err);
	if (st == MS_OK)
		METRIC(d, m_->envelopes_read++);
	if (st != MS_OK) {
		if (st == MS_ERR_DATA)
			logf_(d, "%s", err.msg);
		e->due = INT64_MAX; /* gone or moved aside: the next listing drops it */
		free(s);
		return;
	}
	e->mtime = seen;
	e->unread = 0;
	ms_sched_plan plan;
	if (ms_sched_plan_make(d->c, &s->env, now, &plan, &err) != MS_OK) {
		slot_free(s);
		e->due = now + settle_retry(d->c);
		return;
	}
	/* Nothing due after all, or only destinations in back-off: no claim. */
	int64_t later = INT64_MAX;
	int any = plan.nunroutable > 0 || plan.bounce_due;
	e->x = NULL;
	for (size_t g = 0; g < plan.ngroups; g++) {
		dest *x = dest_for_item(d, plan.groups[g].key, now);
		if (plan.ngroups == 1)
			e->x = x; /* remembered: while x is down, e is not read again */
		int64_t theirs = x ? others_until(d, x, e->id, now) : 0;
		if (theirs) {
			if (theirs < later)
				later = theirs;
		} else if (x && x->backoff_until > now) {
			if (x->backoff_until < later)
				later = x->backoff_until;
		} else if (x && x->probing && x->probe_out && now - x->probe_at < probe_patience(d->c)) {
			if (now + 2 < later)
				later = now + 2; /* its probe is out: wait for the answer */
		} else {
			if (x && x->probing) {
				x->probe_out = 1; /* this one is the probe */
				x->probe_at = now;
			}
			any = 1;
		}
	}
	if (plan.ngroups == 0 && plan.nunroutable == 0 && !plan.bounce_due)
		later = (s->env.flags & MS_ENV_HOLD) ? INT64_MAX : ms_env_next_due(&s->env);
	if (!any) {
		ms_sched_plan_free(&plan);
		slot_free(s);
		e->due = later;
		return;
	}
	if (ms_spool_claim(d->sp, e->id, d->o->node, &s->claim, &err) != MS_OK) {
		ms_sched_plan_free(&plan);
		slot_free(s);
		e->due = now + 5; /* someone else is on it: look again soon */
		return;
	}
	/* Under the claim: the envelope as it is now (re-read only if it
	 * changed since our read - or went: -1). */
	int64_t held_mtime = ms_spool_env_mtime(d->sp, e->id);
	if (held_mtime != seen) {
		ms_sched_plan_free(&plan);
		ms_env_free(&s->env);
		ms_env_init(&s->env);
		METRIC(d, m_->envelopes_read++); /* (or its attempt: a rare case) */
		if (ms_spool_read(d->sp, e->id, &s->env, &err) != MS_OK ||
		    ms_sched_plan_make(d->c, &s->env, now, &plan, &err) != MS_OK) {
			ms_spool_release(d->sp, &s->claim, NULL);
			slot_free(s);
			e->due = INT64_MIN; /* read again next time */
			return;
		}
		held_mtime = ms_spool_env_mtime(d->sp, e->id);
	}
	if (grow(&d->slots, &d->capslots, d->nslots, sizeof *d->slots, 256) < 0) {
		ms_sched_plan_free(&plan);
		ms_spool_release(d->sp, &s->claim, NULL);
		slot_free(s);
		return;
	}
	d->slots[d->nslots++] = s;
	d->claimed++;
	e->busy = 1;
	e->mtime = held_mtime;
	for (size_t i = 0; i < plan.nunroutable; i++)
		add_result(s, &plan.unroutable[i]); /* deferred now, with the reason */
	s->bounce_due = plan.bounce_due;
	s->groups_left = 1; /* held while items are made */
	for (size_t g = 0; g < plan.ngroups; g++) {
		dest *x = dest_for_item(d, plan.groups[g].key, now);
		if (!x || x->backoff_until > now)
			continue; /* left due; tried when the back-off ends */
		item it = { .s = s, .idx = plan.groups[g].idx, .n = plan.groups[g].n,
			        .dkey = strdup(plan.groups[g].key) };
		if (!it.dkey || push_item(d, x, it) < 0) {
			free(it.dkey);
			continue;
		}
		plan.groups[g].idx = NULL; /* the item has it now */
		s->groups_left++;
	}
	ms_sched_plan_free(&plan);
	if (--s->groups_left == 0)
		queue_settle(d, s); /* nothing handed out: settled (or released) at once */
}

/* How many messages we hold claimed at once (claim_window), so that other
 * daemons sharing the spool get their part and leases stay few. */
static size_t claim_limit(const ms_conf *c)
{
	/* At least 100, so that a tiny window still fills a session's
	 * pipeline; at most MS_DAEMON_CLAIMED_MAX, so that the claims one
	 * daemon renews every lease/3 stay a bounded amount of work (each is a
	 * file touched) and other daemons sharing the spool find work left. */
	size_t n = c->claim_window;
	return n < 100 ? 100 : n > MS_DAEMON_CLAIMED_MAX ? MS_DAEMON_CLAIMED_MAX : n;
}

/* Ask x's agent for x's site: a unit without messages. */
static void ask_site(sched_state *d, dest *x, int64_t now)
{
	agentp *a = &d->agents[x->agent];
	if (!a->alive || a->in_fd < 0)
		return; /* asked when it is back; meanwhile x goes on its own */
	unit *u = calloc(1, sizeof *u);
	if (!u)
		return;
	u->x = x;
	u->agent = x->agent;
	u->resolve = 1;
	u->id = ++d->next_unit;
	char k[24];
	snprintf(k, sizeof k, "%llu", (unsigned long long)u->id);
	ms_buf work;
	ms_buf_init(&work, 4096);
	if (ms_agent_work_begin(&work, u->id, lease_base(d, now) + until_s(d->c), 0, x->key) != MS_OK ||
	    ms_agent_work_end(&work) != MS_OK || ms_hmap_put(&d->units, k, u) < 0) {
		ms_buf_free(&work);
		free(u);
		return;
	}
	x->resolving = 1;
	a->units++;
	agent_say(d, x->agent, ms_buf_ptr(&work), ms_buf_avail(&work));
	ms_buf_free(&work);
}

/* Hand up to `count` waiting items of x to its agent as one unit. */
static int launch(sched_state *d, dest *x, size_t count, int64_t now)
{
	agentp *a = &d->agents[x->agent];
	if (!a->alive || a->in_fd < 0)
		return -1;
	unit *u = calloc(1, sizeof *u);
	if (!u || !(u->items = malloc(count * sizeof *u->items))) {
		free(u);
		return -1;
	}
	/* Claims are checked before every hand-off: one lost (we were paused
	 * past the lease) is not sent. */
	size_t n = 0, taken = 0;
	for (; taken < x->nwait && n < count; taken++) {
		item *it = &x->wait[taken];
		if (it->s->lost || !ms_spool_claim_held(d->sp, &it->s->claim)) {
			it->s->lost = 1;
			item_done(d, it);
			continue;
		}
		u->items[n++] = *it;
	}
	memmove(x->wait, x->wait + taken, (x->nwait - taken) * sizeof *x->wait);
	x->nwait -= taken;
	if (n == 0) {
		free(u->items);
		free(u);
		return 0;
	}
	u->n = n;
	u->x = x;
	u->agent = x->agent;
	u->id = ++d->next_unit;
	char k[24];
	snprintf(k, sizeof k, "%llu", (unsigned long long)u->id);
	ms_buf work;
	ms_buf_init(&work, MS_AGENT_WORK_MAX);
	/* No message of the unit starts after two thirds of a lease unless we
	 * renew (L): our claims hold that long even if we stop now. */
	ms_status st = ms_agent_work_begin(&work, u->id, lease_base(d, now) + until_s(d->c),
	                                   x->conn_msgs, x->key);
	for (size_t i = 0; i < n && st == MS_OK; i++)
		st = ms_agent_work_message(&work, i, &u->items[i].s->env, u->items[i].idx, u->items[i].n,
		                           u->items[i].dkey);
	if (st == MS_OK)
		st = ms_agent_work_end(&work);
	if (st != MS_OK || ms_hmap_put(&d->units, k, u) < 0) {
		ms_buf_free(&work);
		for (size_t i = 0; i < n; i++)
			push_item(d, x, u->items[i]);
		free(u->items);
		free(u);
		return -1;
	}
	x->active++;
	x->inflight += n;
	d->sessions++;
	a->units++;
	agent_say(d, x->agent, ms_buf_ptr(&work), ms_buf_avail(&work));
	ms_buf_free(&work);
	if (x->rate_cur > 0)
		x->bucket -= (double)n;
	if (now - x->win_start >= 60) {
		x->win_start = now;
		x->win_count = 0;
	}
	x->win_count += n;
	return 0;
}

/* Units for one destination with waiting work, within its limits. */
static void schedule_dest(sched_state *d, dest *x, int64_t now, int64_t ms)
{
	recover(d, x, now);
	refill(x, ms);
	if (x->backoff_until > now) {
		/* Down: what reached its queue meanwhile (handed back) goes back
		 * to the index untouched. */
		for (size_t i = 0; i < x->nwait; i++)
			item_done(d, &x->wait[i]);
		x->nwait = 0;
		return;
	}
	if (x->resolving)
		return; /* its site comes first */
	while (x->nwait > 0 && x->active < x->conc_cur && d->sessions < d->c->max_deliveries &&
	       !d->stopping) {
		/* Connections for everything this destination has, waiting or
		 * in flight; a small group waits for the running one (its
		 * session is parked and taken again when it is done). */
		size_t total = x->nwait + x->inflight;
		/* want: sessions for all of it at conn_msgs each (rounded up),
		 * within the destination's current concurrency. */
		size_t want = (total + x->conn_msgs - 1) / x->conn_msgs;
		if (want > x->conc_cur)
			want = x->conc_cur;
		if (x->active > 0 && x->active >= want)
			break;
		/* The waiting messages are spread evenly over the sessions still
		 * to start (rounded up, so none is left over), each capped by
		 * conn_msgs and the unit size, then by the rate's bucket. */
		size_t add = x->active >= want ? 1 : want - x->active;
		size_t per = (x->nwait + add - 1) / add;
		if (per > x->conn_msgs)
			per = x->conn_msgs;
		if (per > MS_DAEMON_GROUP_MAX)
			per = MS_DAEMON_GROUP_MAX;
		if (x->rate_cur > 0) {
			if (x->bucket < 1)
				break; /* the rate: wait for the bucket */
			if ((double)per > x->bucket)
				per = (size_t)x->bucket;
		}
		if (launch(d, x, per < x->nwait ? per : x->nwait, now) < 0)
			break;
	}
}

/* Whether e, read before and found to go only to another live node's
 * destination, can be left unread this scan.  What would make us its
 * deliverer is looked for without reading: a change of the nodes marks
 * every message unread (look_at_peers), a changed envelope mtime marks it
 * (recheck_mtimes, every scan).  What is not seen that way is a new MX
 * rollup of its domain (its site is asked again only when a message of it
 * is read), so it is read at least every UNREAD_SCANS scans, well within
 * SITE_TTL_S.  Each skip saves an envelope read: on a shared volume with
 * caches off an open, a read and a close, each a round trip. */
static int others_unchanged(sched_state *d, entry *e)
{
	if (e->unread >= UNREAD_SCANS || e->x->resolving || ms_peers_live(d->peers) < 2 ||
	    ms_peers_owns(d->peers, e->x->key))
		return 0;
	e->unread++;
	return 1;
}

static void schedule(sched_state *d)
{
	int64_t now = now_s();
	/* The index is walked only when something changed or is due: with
	 * 100,000 deferred messages a result or a wake-up must not cost a
	 * walk. */
	if ((d->dirty || d->earliest <= now) && !d->stopping) {
		int64_t earliest = INT64_MAX;
		int full = 1;
		size_t taken = 0;
		fetch_hints(d, now);
		int64_t t0 = ms_now_ms();
		for (size_t i = 0; i < d->nidx; i++) {
			entry *e = &d->idx[i];
			if (!e->busy && e->due <= now && e->x && e->due != INT64_MIN) {
				/* Its destination is down, or being probed, or another
				 * node's: not read. */
				if (e->x->backoff_until > now)
					e->due = e->x->backoff_until;
				else if (e->x->probing && e->x->probe_out &&
				         now - e->x->probe_at < probe_patience(d->c))
					e->due = now + 2;
				else if (others_unchanged(d, e))
					e->due = now + d->c->queue_scan_interval;
			}
			if (!e->busy && e->due <= now) {
				if (d->claimed >= claim_limit(d->c) || taken == TAKE_BATCH ||
				    (taken && ms_now_ms() - t0 >= TAKE_BUDGET_MS)) {
					full = 0;
					earliest = now;
					break;
				}
				take(d, e, now);
				taken++;
			}
			if (!e->busy && e->due < earliest)
				earliest = e->due;
		}
		d->earliest = earliest;
		d->dirty = !full;
	}
	for (size_t k = 0; k < d->nagents && !d->stopping; k++)
		if (!d->agents[k].alive && ms_now_ms() >= d->agents[k].respawn_ms)
			agent_start(d, (int)k);
	/* Only destinations with waiting work are looked at. */
	int64_t ms = ms_now_ms();
	size_t keep = 0;
	for (size_t i = 0; i < d->nready; i++) {
		dest *x = d->ready[i];
		if (!d->stopping)
			schedule_dest(d, x, now, ms);
		/* A throttled one stays until it has recovered, work or not. */
		if (x->nwait || x->last_throttle)
			d->ready[keep++] = x;
		else
			x->ready = 0;
	}
	d->nready = keep;
}

/* Tell the agents how long they now hold: two thirds of a lease from the
 * keeper's last renewal (spool.h: it renews every claim of ours on its own
 * clock, a third of a lease apart). */
static void renew(sched_state *d)
{
	int64_t now = now_s();
	char line[48];
	int n = snprintf(line, sizeof line, "L %lld\n",
	                 (long long)(lease_base(d, now) + until_s(d->c)));
	for (size_t k = 0; k < d->nagents; k++)
		if (d->agents[k].alive)
			agent_say(d, (int)k, line, (size_t)n);
}

static int64_t next_due(sched_state *d)
{
	return d->dirty ? INT64_MIN : d->earliest;
}

static int idle(sched_state *d)
{
	if (d->sessions || d->nsettle)
		return 0;
	for (size_t i = 0; i < d->nready; i++)
		if (d->ready[i]->nwait)
			return 0;
	return 1; /* (throttled destinations recovering have no work) */
}

static void reload(sched_state *d)
{
	ms_conf *nc = malloc(sizeof *nc);
	ms_error err;
	if (!nc)
		return;
	if (ms_conf_load(nc, d->o->conf_path, d->o->conf_required, &err) != MS_OK) {
		logf_(d, "configuration not reloaded: %s", err.msg);
	} else if (strcmp(nc->spool_dir, d->c->spool_dir)) {
		logf_(d, "configuration not reloaded: spool_dir cannot change while running");
	} else if (ms_dkim_check(nc, &err) != MS_OK) {
		/* As at start: a key that cannot sign keeps the old settings. */
		logf_(d, "configuration not reloaded: %s", err.msg);
	} else {
		/* The same spool handle: our claim tokens, the lease keeper and
		 * the node lock live in it. */
		ms_spool_reconf(d->sp, nc);
		*d->c = *nc;
		const char *k;
		void *v;
		for (size_t i = 0; (i = ms_hmap_next(&d->dests, i, &k, &v)) != 0;) {
			((dest *)v)->backoff_until = 0;
			dest_shape(d, v, NULL);
		}
		logf_(d, "configuration reloaded from %s", d->c->path[0] ? d->c->path : "defaults");
	}
	free(nc);
}

static void add_fresh(sched_state *d, const char *id)
{
	if (!ms_env_id_ok(id) ||
	    grow(&d->fresh, &d->capfresh, d->nfresh, sizeof *d->fresh, 64) < 0) {
		d->relist_wanted = 1; /* found by the next listing instead */
		return;
	}
	snprintf(d->fresh[d->nfresh++], MS_ENV_ID_MAX + 1, "%s", id);
}

/* `mailspool flush`: everything due now, destinations down included - as
 * Postfix's flush ignores its dead-destination state.  Their messages are
 * read again with the changed envelopes. */
static void flush_backoff(sched_state *d)
{
	const char *k;
	void *v;
	size_t n = 0;
	for (size_t i = 0; (i = ms_hmap_next(&d->dests, i, &k, &v)) != 0;) {
		dest *x = v;
		if (x->backoff_until) {
			x->backoff_until = 0;
			x->probing = x->probe_out = 0;
			n++;
		}
	}
	if (n)
		logf_(d, "flush: the back-off of %zu destination(s) ends now", n);
	d->dirty = 1;
}

/* Wake-up messages: "n<ID>\n" a new message ("n\n": something new, id
 * unknown), 'c' envelopes changed (release), 'f' flush: changed, and every
 * destination's back-off ends.  Each arrives whole (one FIFO write of at
 * most PIPE_BUF octets, or one datagram), but a read may end inside one:
 * the rest waits in wbuf.  What came by the FIFO is relayed to the other
 * hosts' daemons (wakenet.h), whole messages only.  Returns 2 when
 * something changed, else 1. */
static size_t wake_messages(sched_state *d, char *p, size_t n, int *what)
{
	size_t i = 0;
	while (i < n) {
		if (p[i] == 'n') {
			char *nl = memchr(p + i, '\n', n - i);
			if (!nl)
				break; /* the rest comes with the next read */
			*nl = '\0';
			if (p[i + 1])
				add_fresh(d, p + i + 1);
			else
				d->relist_wanted = 1;
			*nl = '\n';
			i = (size_t)(nl - p) + 1;
		} else {
			if (p[i] == 'c')
				*what = 2;
			else if (p[i] == 'f')
				*what = 2, flush_backoff(d);
			else
				d->relist_wanted = 1; /* not ours: a listing finds whatever it was */
			i++;
		}
	}
	return i;
}

static int drain_wake(sched_state *d)
{
	ssize_t n;
	int what = 1;
	while ((n = read(d->wake_fd, d->wbuf + d->wlen, sizeof d->wbuf - 1 - d->wlen)) > 0) {
		d->wlen += (size_t)n;
		size_t used = wake_messages(d, d->wbuf, d->wlen, &what);
		ms_wakenet_relay(d->wnet, d->sp, d->wbuf, used);
		memmove(d->wbuf, d->wbuf + used, d->wlen - used);
		d->wlen -= used;
		if (d->wlen == sizeof d->wbuf - 1) {
			d->wlen = 0; /* an id that never ends: a listing instead */
			d->relist_wanted = 1;
		}
	}
	return what;
}

/* Datagrams from other hosts: whole messages each, never relayed on. */
static int drain_wakenet(sched_state *d)
{
	char buf[4096];
	int what = 1;
	size_t n = ms_wakenet_recv(d->wnet, buf, sizeof buf);
	if (wake_messages(d, buf, n, &what) < n)
		d->relist_wanted = 1; /* (a MAC'd message cut short: never ours) */
	return what;
}

/* Who is alive on the spool, once a second; when that changed, every
 * message is looked at again (destinations changed hands). */
static void look_at_peers(sched_state *d)
{
	int64_t ms = ms_now_ms();
	if (ms - d->peers_ms < 1000)
		return;
	size_t before = ms_peers_live(d->peers);
	d->peers_ms = ms;
	int changed = ms_peers_refresh(d->peers, d->sp, d->c);
	if (++d->peers_looks == 2)
		d->dirty = 1; /* what waited for the second look goes now */
	if (!changed)
		return;
	logf_(d, "nodes alive on this spool: %zu (were %zu); destinations shared again",
	      ms_peers_live(d->peers), before);
	if (ms_peers_live(d->peers) < before) {
		/* A node went: what its daemon left in claim/ (claims on messages
		 * it had finished, claims of a dead process) goes now. */
		size_t n = ms_spool_sweep_claims(d->sp);
		if (n)
			logf_(d, "%zu claim(s) of departed nodes removed", n);
	}
	/* Looked at again: one whose one destination is known is judged by
	 * that destination's owner first (schedule: another node's is not
	 * read); the others are read. */
	int64_t now = now_s();
	for (size_t i = 0; i < d->nidx; i++) {
		entry *e = &d->idx[i];
		if (!e->busy && e->due != INT64_MAX)
			e->due = e->x ? now : INT64_MIN;
	}
	d->dirty = 1;
}

static int cmp_id(const void *a, const void *b)
{
	return strcmp(a, b);
}

/* New ids into the index (one merge for the lot), then taken at once:
 * a fresh message does not wait for a walk of a million others. */
static void take_fresh(sched_state *d)
{
	if (!d->nfresh)
		return;
	int64_t now = now_s();
	qsort(d->fresh, d->nfresh, sizeof *d->fresh, cmp_id);
	size_t nnew = 0;
	for (size_t i = 0; i < d->nfresh; i++) {
		if (i && !strcmp(d->fresh[i], d->fresh[i - 1]))
			continue;
		entry *e = find_entry(d, d->fresh[i]);
		if (e) {
			if (!e->busy)
				e->due = INT64_MIN;
		} else {
			memmove(d->fresh[nnew++], d->fresh[i], MS_ENV_ID_MAX + 1);
		}
	}
	if (nnew) {
		entry *m = malloc((d->nidx + nnew) * sizeof *m);
		if (!m) {
			d->relist_wanted = 1;
			d->nfresh = 0;
			return;
		}
		size_t a = 0, b = 0, k = 0;
		while (a < d->nidx || b < nnew) {
			if (b == nnew || (a < d->nidx && strcmp(d->idx[a].id, d->fresh[b]) < 0)) {
				m[k++] = d->idx[a++];
			} else {
				memset(&m[k], 0, sizeof m[k]);
				snprintf(m[k].id, sizeof m[k].id, "%s", d->fresh[b++]);
				METRIC(d, m_->received++);
				m[k].due = INT64_MIN;
				m[k].fresh = d->ls != NULL; /* the listing may not have it */
				k++;
			}
		}
		free(d->idx);
		d->idx = m;
		d->nidx = k;
	}
	for (size_t i = 0; i < d->nfresh && d->claimed < claim_limit(d->c); i++) {
		entry *e = find_entry(d, d->fresh[i]);
		if (e && !e->busy && e->due <= now)
			take(d, e, now);
	}
	d->nfresh = 0;
	d->dirty = 1;
}

/* Stop: waiting work is released, agents get no more work (their input
 * ends: they start nothing new and finish what is in flight). */
static void begin_stop(sched_state *d)
{
	d->stopping = 1;
	d->stop_deadline = ms_now_ms() + MS_DAEMON_GRACE_MS;
	logf_(d, "stopping: %zu sessions in flight", d->sessions);
	for (size_t i = 0; i < d->nready; i++) {
		dest *x = d->ready[i];
		for (size_t k = 0; k < x->nwait; k++)
			item_done(d, &x->wait[k]);
		x->nwait = 0;
		x->ready = 0;
	}
	d->nready = 0;
	for (size_t k = 0; k < d->nagents; k++)
		if (d->agents[k].in_fd >= 0) {
			close(d->agents[k].in_fd);
			d->agents[k].in_fd = -1;
		}
}

static int agents_alive(sched_state *d)
{
	for (size_t k = 0; k < d->nagents; k++)
		if (d->agents[k].alive)
			return 1;
	return 0;
}

static size_t default_agents(void)
{
	long n = sysconf(_SC_NPROCESSORS_ONLN);
	return n < 1 ? 1 : n > 16 ? 16 : (size_t)n;
}

static void free_all(sched_state *d)
{
	const char *k;
	void *v;
	for (size_t i = 0; (i = ms_hmap_next(&d->dests, i, &k, &v)) != 0;) {
		dest *x = v;
		free(x->wait);
		free(x->site_wait);
		free(x->key);
		free(x);
	}
	ms_hmap_free(&d->dests);
	for (size_t i = 0; (i = ms_hmap_next(&d->sites, i, &k, &v)) != 0;)
		free(v);
	ms_hmap_free(&d->sites);
	ms_hmap_free(&d->units);
	free(d->ready);
	free(d->fresh);
	free(d->hints);
	free(d->settleq);
	free(d->slots);
	free(d->idx);
}

ms_status ms_daemon_run(const ms_daemon_opts *o, ms_error *err)
{
	sched_state D;
	memset(&D, 0, sizeof D);
	sched_state *d = &D;
	d->o = o;
	d->c = o->conf;
	d->wake_fd = -1;
	ms_hmap_init(&d->dests);
	ms_hmap_init(&d->units);
	ms_hmap_init(&d->sites);
	ms_status st = ms_spool_open(d->c, 1, &d->sp, err);
	if (st != MS_OK)
		return st;
	/* A second daemon under the same node name would claim as us and
	 * settle our claims: refused before it touches anything. */
	int lock_fd;
	long holder;
	if ((st = ms_spool_lock_node(d->sp, o->node, &lock_fd, &holder, err)) != MS_OK) {
		ms_spool_close(d->sp);
		return st;
	}
	ms_spool_set_report(d->sp, o->log, o->log_ctx); /* what is moved aside */
	/* A file system that would make several daemons deliver twice is
	 * refused before anything is touched (fscheck.h). */
	char fskind[32];
	if ((st = ms_fscheck(d->c->spool_dir, fskind, sizeof fskind, err)) != MS_OK ||
	    (st = ms_spool_keeper_start(d->sp, err)) != MS_OK ||
	    !(d->peers = ms_peers_new(o->node))) {
		if (st == MS_OK)
			st = ms_error_set(err, MS_ERR_NOMEM, "out of memory");
		ms_spool_close(d->sp);
		close(lock_fd);
		return st;
	}
	/* Listening first: what is submitted while we list and sweep names
	 * itself on the FIFO and is taken at once. */
	if (!o->once && ((st = ms_spool_wake_listen(d->sp, o->node, &d->wake_fd, err)) != MS_OK ||
	                 (st = ms_wakenet_open(d->sp, d->c->wake_address, o->node, &d->wnet, err)) !=
	                     MS_OK)) {
		if (d->wake_fd >= 0)
			ms_spool_wake_unlisten(d->sp, o->node, d->wake_fd);
		ms_peers_free(d->peers);
		ms_spool_close(d->sp);
		close(lock_fd);
		return st;
	}
	if (lister_start(d) < 0) {
		/* No thread: the sweep in line, and the first round lists. */
		ms_sweep_report sw;
		if (ms_spool_sweep_files(d->sp, &sw, NULL, err) != MS_OK) {
			if (d->wake_fd >= 0)
				ms_spool_wake_unlisten(d->sp, o->node, d->wake_fd);
			ms_spool_close(d->sp);
			close(lock_fd);
			return err->status;
		}
		log_sweep(d, &sw);
	}
	d->nagents = d->c->delivery_agents ? d->c->delivery_agents : default_agents();
	if (d->nagents > AGENTS_MAX)
		d->nagents = AGENTS_MAX;
	for (size_t k = 0; k < d->nagents; k++) {
		d->agents[k].in_fd = d->agents[k].out_fd = -1;
		agent_start(d, (int)k);
	}
	logf_(d, "daemon started: node %s, spool %s (%s), %zu delivery agents, up to %zu sessions",
	      o->node, d->c->spool_dir, fskind, d->nagents, d->c->max_deliveries);
	int woken = d->ls ? 2 : 3; /* 3: the first round lists env/ (else the lister does) */
	int64_t last_list = 0;
	struct pollfd *pf = calloc(d->nagents + 2, sizeof *pf);
	if (!pf)
		st = ms_error_set(err, MS_ERR_NOMEM, "out of memory");
	while (pf) {
		int64_t now = now_s();
		if (o->reload && *o->reload) {
			*o->reload = 0;
			reload(d);
			woken = 1;
		}
		if (o->stop && *o->stop && !d->stopping)
			begin_stop(d);
		if (d->stopping && ms_now_ms() >= d->stop_deadline)
			for (size_t k = 0; k < d->nagents; k++)
				if (d->agents[k].alive && !d->agents[k].reaped)
					kill(d->agents[k].pid, SIGKILL);
		if (d->stopping && !agents_alive(d))
			break;
		lister_poll(d);
		look_at_peers(d);
		/* What is queued: new messages name themselves on the wake FIFO,
		 * so env/ is listed only at start, when a wake-up gives no id,
		 * every queue_scan_interval (other hosts' submissions), and in
		 * --once mode when there is nothing else to do; each time only if
		 * env/ changed.  Our own updates change env/ all the time: they
		 * are not a reason.  env/ is looked at only when one of those
		 * holds: on a shared volume every look is a round trip, and this
		 * loop turns for every result. */
		int64_t ms = ms_now_ms();
		int scan_due = now - d->last_full_list >= d->c->queue_scan_interval;
		int asked = woken == 3 || d->relist_wanted || scan_due || (o->once && idle(d));
		int may_list = !d->stopping && !listing(d) && asked &&
		               ms - last_list >= (woken == 3 ? 0 : LIST_MIN_MS);
		int64_t dm = may_list || o->once ? env_dir_mtime(d) : d->env_mtime;
		if (may_list && dm != d->env_mtime) {
			d->env_mtime = dm;
			last_list = ms;
			d->relist_wanted = 0;
			d->last_full_list = now;
			if (relist(d, err) != MS_OK)
				logf_(d, "cannot list the queue: %s", err->msg);
			else
				d->last_scan = now; /* the listing's mtimes were the scan */
		} else if (may_list && scan_due) {
			d->last_full_list = now; /* nothing new: looked at again a scan later */
		}
		if (!d->stopping)
			take_fresh(d);
		if (!d->stopping && (woken >= 2 || now - d->last_scan >= d->c->queue_scan_interval)) {
			recheck_mtimes(d);
			d->last_scan = now;
		}
		woken = 0;
		/* Renewal on its own clock, before any work of this round. */
		if (now - d->last_renew >= (d->c->claim_lease + 2) / 3) {
			renew(d);
			d->last_renew = now;
		}
		if (!d->stopping)
			schedule(d);
		settle_queued(d);
		give_tokens(d);
		update_gauges(d);
		/* --once: done when nothing runs or waits and nothing is due
		 * (a bounce queued meanwhile is due, and goes too). */
		if (o->once && !d->stopping && idle(d) && !listing(d) && dm == d->env_mtime &&
		    d->peers_looks >= 2 && next_due(d) > now_s())
			begin_stop(d);
		/* Wait for results, a wake-up, or the next due message. */
		pf[0].fd = d->wake_fd;
		pf[0].events = POLLIN;
		for (size_t k = 0; k < d->nagents; k++) {
			agentp *a = &d->agents[k];
			pf[k + 1].fd = a->alive && !a->eof ? a->out_fd : -1;
			pf[k + 1].events = POLLIN;
		}
		int64_t wait_s = d->c->queue_scan_interval;
		int64_t nd = next_due(d);
		if (nd <= now)
			wait_s = 0;
		else if (nd - now < wait_s) /* (nd > now: no overflow) */
			wait_s = nd - now;
		int64_t lease_wait = (d->c->claim_lease + 2) / 3 - (now - d->last_renew);
		if (d->nslots && lease_wait < wait_s)
			wait_s = lease_wait < 0 ? 0 : lease_wait;
		int timeout = (int)(wait_s * 1000);
		if ((d->sessions || d->nready || d->stopping || d->ls) && timeout > 200)
			timeout = 200; /* rates, respawns, reaping */
		if (timeout < 50 && !idle(d))
			timeout = 50;
		if (nd <= now && d->claimed >= claim_limit(d->c))
			timeout = 200;
		if (o->once && timeout > LIST_MIN_MS)
			timeout = LIST_MIN_MS; /* --once: look again soon whether all is done */
		if (o->metrics && timeout > 1000)
			timeout = 1000; /* gauges a scrape may read: at most a second old */
		if (d->nsettle)
			timeout = 0;
		pf[d->nagents + 1].fd = ms_wakenet_fd(d->wnet);
		pf[d->nagents + 1].events = POLLIN;
		if (timeout > 1000)
			timeout = 1000; /* the other nodes, looked at once a second */
		int r = poll(pf, (nfds_t)(d->nagents + 2), timeout);
		if (r > 0 && (pf[0].revents & POLLIN))
			woken = drain_wake(d);
		if (r > 0 && (pf[d->nagents + 1].revents & POLLIN)) {
			int w2 = drain_wakenet(d);
			woken = w2 > woken ? w2 : woken;
		}
		for (size_t k = 0; k < d->nagents; k++)
			if (r > 0 && pf[k + 1].revents && d->agents[k].alive)
				agent_read(d, (int)k);
		reap(d);
	}
	free(pf);
	if (d->ls) {
		/* Stopping before the lister is done: it gives up. */
		d->ls->stop = 1;
		pthread_join(d->ls->t, NULL); /* it has set swept on its way out */
		d->ls->joined = 1;
		lister_poll(d);
	}
	/* Whatever the agents reported is applied; claims never outlive the
	 * daemon. */
	for (size_t k = 0; k < d->nagents; k++)
		if (d->agents[k].alive) {
			kill(d->agents[k].pid, SIGKILL);
			waitpid(d->agents[k].pid, &d->agents[k].status, 0);
			d->agents[k].reaped = 1;
			agent_read(d, (int)k);
			agent_end(d, (int)k);
		}
	for (size_t i = 0; i < d->nslots; i++)
		if (d->slots[i]->groups_left > 0) {
			d->slots[i]->groups_left = 0;
			queue_settle(d, d->slots[i]);
		}
	settle_queued(d);
	free_all(d);
	ms_peers_free(d->peers);
	ms_wakenet_close(d->wnet);
	if (d->wake_fd >= 0)
		ms_spool_wake_unlisten(d->sp, o->node, d->wake_fd);
	logf_(d, "daemon stopped");
	ms_spool_close(d->sp);
	close(lock_fd);
	return st;
}
