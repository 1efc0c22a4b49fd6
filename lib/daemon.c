/*
 * daemon.c - the delivery daemon's scheduler and workers (see
 * mailspool/daemon.h).
 *
 * Data: `idx`, a sorted array of every queued id with its due time and
 * envelope mtime; `slot`s, claimed messages with their envelope and the
 * results gathered so far; `dest`s, destinations with their waiting work,
 * active agents and back-off; `job`s, running delivery agents.  Agents
 * are programs of their own (mailspool-deliver) started with posix_spawn:
 * the work goes to their standard input and results come back in the
 * grammar of mailspool/agent.h; they only read the data files.
 */
#include "mailspool/daemon.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>


#include "mailspool/agent.h"
#include "mailspool/deliver.h"
#include "mailspool/printable.h"
#include "mailspool/spawn.h"
#include "mailspool/envelope.h"
#include "mailspool/spool.h"

#define LINE_MAX_ MS_AGENT_LINE_MAX
#define LIST_MIN_MS 1000
#define SETTLE_RETRY_S 60
#define SETTLE_BATCH 32
#define TAKE_BATCH 1000 /* envelopes read per walk of the index */

typedef struct entry {
	char id[MS_ENV_ID_MAX + 1];
	int64_t due;   /* INT64_MIN: not read yet */
	int64_t mtime; /* of the envelope when last read */
	int busy;      /* claimed by us */
} entry;

typedef struct slot {
	ms_envelope env;
	ms_claim claim;
	int groups_left;
	int lost;                 /* the claim stopped being ours */
	ms_sched_result *res;
	size_t nres, capres;
} slot;

typedef struct item {
	slot *s;
	size_t *idx; /* envelope recipient indexes for this destination */
	size_t n;
	int done;
} item;

typedef struct dest {
	char key[MS_DEST_MAX];
	item *wait;  /* waiting for a worker */
	size_t nwait, capwait;
	size_t active;
	size_t inflight; /* messages the active workers hold */
	int64_t backoff_until;
} dest;

typedef struct job {
	pid_t pid;
	int fd;
	dest *d;
	item *items;
	size_t n;
	char buf[LINE_MAX_];
	size_t blen;
	int eof, reaped, unreachable;
	int more;   /* complete lines still buffered */
	int status; /* waitpid's */
} job;

typedef struct sched_state {
	const ms_daemon_opts *o;
	ms_conf *c;
	ms_spool *sp;
	entry *idx;
	size_t nidx;
	int64_t env_mtime;        /* env/ directory, when last listed */
	dest **dests;
	size_t ndests;
	job **jobs;
	size_t njobs;
	size_t claimed;           /* slots held */
	slot **slots;
	size_t nslots, capslots;
	int64_t last_scan, last_renew;
	int wake_fd;
	int stopping;
	int64_t stop_deadline;
	int dirty;                /* the index changed since the last full look */
	int64_t earliest;         /* the earliest due time of an entry not taken */
} sched_state;

static int64_t now_s(void)
{
	return (int64_t)time(NULL);
}

static int64_t mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
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

/* Merge a fresh listing into the index: known ids keep what we know. */
static ms_status relist(sched_state *d, ms_error *err)
{
	int64_t now = now_s();
	char **ids;
	size_t n;
	ms_status st = ms_spool_list(d->sp, &ids, &n, err);
	if (st != MS_OK)
		return st;
	entry *nidx = calloc(n ? n : 1, sizeof *nidx);
	if (!nidx) {
		ms_spool_ids_free(ids, n);
		return ms_error_set(err, MS_ERR_NOMEM, "out of memory");
	}
	size_t j = 0;
	for (size_t i = 0; i < n; i++) {
		while (j < d->nidx && strcmp(d->idx[j].id, ids[i]) < 0)
			j++;
		if (j < d->nidx && !strcmp(d->idx[j].id, ids[i])) {
			nidx[i] = d->idx[j];
		} else {
			/* New to us: its mtime says when it is due at the earliest
			 * (spool.h); only one that may be due now is read. */
			snprintf(nidx[i].id, sizeof nidx[i].id, "%s", ids[i]);
			int64_t m = ms_spool_env_mtime(d->sp, ids[i]);
			nidx[i].due = m / 1000000000 > now ? m / 1000000000 : INT64_MIN;
			nidx[i].mtime = m;
		}
	}
	/* A busy entry stays even if another listing missed it. */
	ms_spool_ids_free(ids, n);
	free(d->idx);
	d->idx = nidx;
	d->nidx = n;
	d->dirty = 1;
	return MS_OK;
}

/* Envelopes changed behind our back (flush, release, another daemon) are
 * read again: found by their mtime. */
static void recheck_mtimes(sched_state *d)
{
	for (size_t i = 0; i < d->nidx; i++) {
		entry *e = &d->idx[i];
		if (e->busy || e->due == INT64_MIN)
			continue;
		int64_t m = ms_spool_env_mtime(d->sp, e->id);
		if (m != e->mtime) {
			e->due = INT64_MIN;
			d->dirty = 1;
		}
	}
}

static int64_t env_dir_mtime(sched_state *d)
{
	return ms_spool_env_mtime(d->sp, "."); /* env/ itself */
}

static dest *dest_get(sched_state *d, const char *key)
{
	for (size_t i = 0; i < d->ndests; i++)
		if (!strcmp(d->dests[i]->key, key))
			return d->dests[i];
	dest **nd = realloc(d->dests, (d->ndests + 1) * sizeof *nd);
	if (!nd)
		return NULL;
	d->dests = nd;
	dest *x = calloc(1, sizeof *x);
	if (!x)
		return NULL;
	snprintf(x->key, sizeof x->key, "%s", key);
	d->dests[d->ndests++] = x;
	return x;
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

static int push_item(dest *x, item it)
{
	if (grow(&x->wait, &x->capwait, x->nwait, sizeof *x->wait, 64) < 0)
		return -1;
	x->wait[x->nwait++] = it;
	return 0;
}

static void slot_free(slot *s)
{
	ms_env_free(&s->env);
	free(s->res);
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

/* Every group of the message is back: apply, write, release. */
static void settle(sched_state *d, slot *s)
{
	entry *e = find_entry(d, s->env.id);
	ms_error err;
	if (s->lost) {
		logf_(d, "%s: claim lost during delivery; its results are left to the new holder",
		      s->env.id);
	} else if (s->nres) {
		ms_sched_opts so = { .conf = d->c, .bounce = 1, .log = d->o->log,
			                 .log_ctx = d->o->log_ctx };
		ms_sched_summary sum;
		ms_status st = ms_sched_settle(d->sp, &so, &s->env, s->res, s->nres, &sum, &err);
		if (sum.bounce_id[0])
			ms_spool_wake(d->sp, 0);
		if (st != MS_OK) {
			/* The envelope could not be written (a full disk): not again
			 * at once, or the delivered recipients would get it again. */
			logf_(d, "%s: cannot record the results: %s; next look in %ds", s->env.id, err.msg,
			      SETTLE_RETRY_S);
			if (e)
				e->due = now_s() + SETTLE_RETRY_S;
		} else if (e) {
			e->due = sum.removed ? INT64_MAX : sum.next_due;
			e->mtime = ms_spool_env_mtime(d->sp, s->env.id);
		}
	}
	ms_spool_release(d->sp, &s->claim, NULL);
	if (e) {
		e->busy = 0;
		if (s->lost || !s->nres)
			e->due = INT64_MIN;
	}
	d->dirty = 1;
	remove_slot(d, s);
}

static void item_done(sched_state *d, item *it)
{
	if (it->done)
		return;
	it->done = 1;
	free(it->idx);
	it->idx = NULL;
	if (--it->s->groups_left == 0)
		settle(d, it->s);
}

static int add_result(slot *s, const ms_sched_result *r)
{
	if (grow(&s->res, &s->capres, s->nres, sizeof *s->res, 4) < 0)
		return -1;
	s->res[s->nres++] = *r;
	return 0;
}

/* The work for a job: its destination and every message's recipients. */
static ms_status job_work(const job *j, ms_buf *b)
{
	ms_status st = ms_agent_work_begin(b, j->d->key);
	for (size_t i = 0; i < j->n && st == MS_OK; i++)
		st = ms_agent_work_message(b, i, &j->items[i].s->env, j->items[i].idx, j->items[i].n);
	return st == MS_OK ? ms_agent_work_end(b) : st;
}

/* Start the delivery agent (a program of its own, never a fork of ours)
 * with its work on its standard input and its results on a pipe. */
static pid_t spawn_agent(sched_state *d, const ms_buf *work, int *out_fd)
{
	char parent[32];
	snprintf(parent, sizeof parent, "%ld", (long)getpid());
	const char *conf = d->c->path[0] ? d->c->path : NULL;
	char *argv[] = { (char *)d->o->agent, "--parent", parent, conf ? "-C" : NULL,
		             (char *)conf, NULL };
	int to;
	pid_t pid = ms_spawn(d->o->agent, argv, &to, out_fd);
	if (pid < 0) {
		logf_(d, "cannot run the delivery agent %s: %s", d->o->agent, strerror(errno));
		return -1;
	}
	/* The agent reads all of its work before it delivers anything, so
	 * this write does not wait on the network; one that dies early gives
	 * EPIPE (SIGPIPE is ignored) and is reaped as dead. */
	const char *p = ms_buf_ptr(work);
	for (size_t n = ms_buf_avail(work); n > 0;) {
		ssize_t w = write(to, p, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			break;
		p += w;
		n -= (size_t)w;
	}
	close(to);
	return pid;
}

/* Hand up to `count` waiting items of x to a new agent. */
static int launch(sched_state *d, dest *x, size_t count)
{
	job *j = calloc(1, sizeof *j);
	if (!j)
		return -1;
	j->items = malloc(count * sizeof *j->items);
	if (!j->items) {
		free(j);
		return -1;
	}
	memcpy(j->items, x->wait, count * sizeof *j->items);
	memmove(x->wait, x->wait + count, (x->nwait - count) * sizeof *x->wait);
	x->nwait -= count;
	j->n = count;
	j->d = x;
	ms_buf work;
	ms_buf_init(&work, MS_AGENT_WORK_MAX);
	int fd = -1;
	pid_t pid = job_work(j, &work) == MS_OK ? spawn_agent(d, &work, &fd) : -1;
	ms_buf_free(&work);
	if (pid < 0)
		goto fail;
	fcntl(fd, F_SETFL, O_NONBLOCK);
	j->pid = pid;
	j->fd = fd;
	job **nj = realloc(d->jobs, (d->njobs + 1) * sizeof *nj);
	if (!nj) {
		kill(pid, SIGKILL);
		close(fd);
		waitpid(pid, NULL, 0);
		goto fail;
	}
	d->jobs = nj;
	d->jobs[d->njobs++] = j;
	x->active++;
	x->inflight += count;
	return 0;
fail:
	/* Put the work back for the next round. */
	for (size_t i = 0; i < count; i++)
		push_item(x, j->items[i]);
	free(j->items);
	free(j);
	return -1;
}

/* One line from an agent; 1 when it completed a message. */
static int job_line(sched_state *d, job *j, char *line)
{
	size_t it;
	ms_sched_result r;
	switch (ms_agent_parse_result(line, &it, &r)) {
	case 'U':
		j->unreachable = 1;
		return 0;
	case 'D':
		if (it >= j->n)
			return 0;
		item_done(d, &j->items[it]);
		return 1;
	case 'R':
		if (it < j->n && !j->items[it].done)
			add_result(j->items[it].s, &r);
		return 0;
	default:
		return 0; /* not ours: ignored */
	}
}

/* Read a worker's lines.  At most SETTLE_BATCH messages are settled per
 * call (each is an fsynced envelope), so that a worker reporting thousands
 * of results does not keep the scheduler from new work; j->more says
 * complete lines are still buffered, and the loop comes back at once. */
static void job_read(sched_state *d, job *j)
{
	size_t settled = 0;
	for (;;) {
		char *start = j->buf, *nl;
		while (settled < SETTLE_BATCH &&
		       (nl = memchr(start, '\n', j->blen - (size_t)(start - j->buf)))) {
			*nl = '\0';
			settled += job_line(d, j, start);
			start = nl + 1;
		}
		j->blen -= (size_t)(start - j->buf);
		memmove(j->buf, start, j->blen);
		j->more = settled >= SETTLE_BATCH;
		if (j->more)
			return;
		if (j->blen == sizeof j->buf - 1)
			j->blen = 0; /* a line past the cap: drop it */
		ssize_t n = read(j->fd, j->buf + j->blen, sizeof j->buf - 1 - j->blen);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return; /* EAGAIN */
		if (n == 0) {
			j->eof = 1;
			return;
		}
		j->blen += (size_t)n;
	}
}

/* A worker has ended.  What it did not report: when we are stopping (we
 * killed it) released untouched; otherwise it died, and its recipients are
 * deferred with that reason so the tiers go on (a message that kills its
 * worker must not be retried in a loop). */
static void job_end(sched_state *d, size_t k, int status)
{
	job *j = d->jobs[k];
	char why[128];
	if (WIFSIGNALED(status))
		snprintf(why, sizeof why, "the delivery process was killed by signal %d",
		         WTERMSIG(status));
	else
		snprintf(why, sizeof why, "the delivery process ended (status %d) before reporting",
		         WEXITSTATUS(status));
	for (size_t i = 0; i < j->n; i++) {
		item *it = &j->items[i];
		if (it->done)
			continue;
		for (size_t r = 0; r < it->n && !d->stopping; r++) {
			ms_sched_result res = { .rcpt = it->idx[r], .state = MS_RCPT_DEFERRED };
			snprintf(res.enh, sizeof res.enh, "4.3.0");
			snprintf(res.text, sizeof res.text, "%s", why);
			snprintf(res.relay, sizeof res.relay, "none");
			add_result(it->s, &res);
		}
		item_done(d, it);
	}
	if (j->unreachable) {
		j->d->backoff_until = now_s() + d->c->destination_backoff;
		logf_(d, "%s: no server answered; not tried again for %llds", j->d->key,
		      (long long)d->c->destination_backoff);
	}
	j->d->active--;
	j->d->inflight -= j->n;
	close(j->fd);
	free(j->items);
	free(j);
	d->jobs[k] = d->jobs[--d->njobs];
}

static void reap(sched_state *d)
{
	for (size_t k = 0; k < d->njobs;) {
		job *j = d->jobs[k];
		if (!j->reaped) {
			int status;
			pid_t r = waitpid(j->pid, &status, WNOHANG);
			if (r == j->pid) {
				j->reaped = 1;
				j->status = status;
			}
		}
		if (j->reaped && !j->eof)
			job_read(d, j);
		if (j->reaped && j->eof)
			job_end(d, k, j->status);
		else
			k++;
	}
}

/* ---- scheduling ------------------------------------------------------ */

/* Read a due message, claim it, queue its recipients per destination. */
static void take(sched_state *d, entry *e, int64_t now)
{
	ms_envelope env;
	ms_error err;
	ms_status st = ms_spool_read(d->sp, e->id, &env, &err);
	if (st != MS_OK) {
		if (st == MS_ERR_DATA)
			logf_(d, "%s", err.msg);
		e->due = INT64_MAX; /* gone or moved aside: the next listing drops it */
		return;
	}
	e->mtime = ms_spool_env_mtime(d->sp, e->id);
	ms_sched_plan plan;
	if (ms_sched_plan_make(d->c, &env, now, &plan, &err) != MS_OK) {
		ms_env_free(&env);
		e->due = now + SETTLE_RETRY_S;
		return;
	}
	/* Nothing due after all, or only destinations in back-off: no claim. */
	int64_t later = INT64_MAX;
	int any = plan.nunroutable > 0;
	for (size_t g = 0; g < plan.ngroups; g++) {
		dest *x = dest_get(d, plan.groups[g].key);
		if (x && x->backoff_until > now) {
			if (x->backoff_until < later)
				later = x->backoff_until;
		} else {
			any = 1;
		}
	}
	if (plan.ngroups == 0 && plan.nunroutable == 0)
		later = (env.flags & MS_ENV_HOLD) ? INT64_MAX : ms_env_next_due(&env);
	ms_sched_plan_free(&plan);
	ms_env_free(&env);
	if (!any) {
		e->due = later;
		return;
	}
	slot *s = calloc(1, sizeof *s);
	if (!s)
		return;
	if (ms_spool_claim(d->sp, e->id, d->o->node, &s->claim, &err) != MS_OK) {
		free(s);
		e->due = now + 5; /* someone else is on it: look again soon */
		return;
	}
	/* Under the claim, the envelope as it is now. */
	if (ms_spool_read(d->sp, e->id, &s->env, &err) != MS_OK ||
	    grow(&d->slots, &d->capslots, d->nslots, sizeof *d->slots, 256) < 0 ||
	    ms_sched_plan_make(d->c, &s->env, now, &plan, &err) != MS_OK) {
		ms_spool_release(d->sp, &s->claim, NULL);
		slot_free(s);
		e->due = INT64_MIN; /* read again next time */
		return;
	}
	d->slots[d->nslots++] = s;
	d->claimed++;
	e->busy = 1;
	e->mtime = ms_spool_env_mtime(d->sp, e->id);
	for (size_t i = 0; i < plan.nunroutable; i++)
		add_result(s, &plan.unroutable[i]); /* deferred now, with the reason */
	s->groups_left = 1; /* held while items are made */
	for (size_t g = 0; g < plan.ngroups; g++) {
		dest *x = dest_get(d, plan.groups[g].key);
		if (!x || x->backoff_until > now)
			continue; /* left due; tried when the back-off ends */
		item it = { .s = s, .idx = plan.groups[g].idx, .n = plan.groups[g].n };
		if (push_item(x, it) < 0)
			continue;
		plan.groups[g].idx = NULL; /* the item has it now */
		s->groups_left++;
	}
	ms_sched_plan_free(&plan);
	if (--s->groups_left == 0)
		settle(d, s); /* nothing handed out: settled (or released) at once */
}

/* How many messages we hold claimed at once: what our workers can start
 * soon (twice a connection's share for every connection), so that other
 * daemons sharing the spool get their part and leases stay few. */
static size_t claim_limit(const ms_conf *c)
{
	size_t n = c->max_deliveries * c->connection_messages * 2;
	return n < 100 ? 100 : n > MS_DAEMON_CLAIMED_MAX ? MS_DAEMON_CLAIMED_MAX : n;
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
		for (size_t i = 0; i < d->nidx; i++) {
			entry *e = &d->idx[i];
			if (!e->busy && e->due <= now) {
				if (d->claimed >= claim_limit(d->c) || taken == TAKE_BATCH) {
					/* More is due than we may hold, or than we read in one
					 * go (workers start between batches): look again. */
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
	/* Workers: one per destination with work, more for large groups. */
	for (size_t i = 0; i < d->ndests && !d->stopping; i++) {
		dest *x = d->dests[i];
		if (x->nwait == 0 || x->active >= d->c->destination_concurrency)
			continue;
		/* Connections for everything this destination has, waiting or
		 * in flight (messages arrive here a batch of reads at a time). */
		size_t total = x->nwait + x->inflight;
		size_t want = (total + d->c->connection_messages - 1) / d->c->connection_messages;
		if (want > d->c->destination_concurrency)
			want = d->c->destination_concurrency;
		if (x->active > 0 && x->active >= want)
			continue; /* a small group waits for the running connection */
		size_t add = x->active >= want ? 1 : want - x->active;
		size_t per = (x->nwait + add - 1) / add;
		if (per > MS_DAEMON_GROUP_MAX)
			per = MS_DAEMON_GROUP_MAX;
		for (size_t k = 0; k < add && x->nwait > 0 && d->njobs < d->c->max_deliveries; k++)
			if (launch(d, x, per < x->nwait ? per : x->nwait) < 0)
				break;
	}
}

static void renew(sched_state *d)
{
	for (size_t i = 0; i < d->nslots; i++) {
		slot *s = d->slots[i];
		if (!s->lost && ms_spool_renew(d->sp, &s->claim, NULL) != MS_OK)
			s->lost = 1;
	}
}

static int64_t next_due(sched_state *d)
{
	return d->dirty ? INT64_MIN : d->earliest;
}

static int idle(sched_state *d)
{
	if (d->njobs)
		return 0;
	for (size_t i = 0; i < d->ndests; i++)
		if (d->dests[i]->nwait)
			return 0;
	return 1;
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
	} else {
		ms_spool *sp;
		if (ms_spool_open(nc, 0, &sp, &err) != MS_OK) {
			logf_(d, "configuration not reloaded: %s", err.msg);
		} else {
			ms_spool_close(d->sp);
			d->sp = sp;
			ms_spool_set_report(d->sp, d->o->log, d->o->log_ctx);
			*d->c = *nc;
			for (size_t i = 0; i < d->ndests; i++)
				d->dests[i]->backoff_until = 0;
			logf_(d, "configuration reloaded from %s", d->c->path[0] ? d->c->path : "defaults");
		}
	}
	free(nc);
}

/* Read the wake FIFO: 'n' a new message, 'c' envelopes changed (flush,
 * release).  Returns 2 when something changed, else 1. */
static int drain_wake(sched_state *d)
{
	char b[256];
	ssize_t n;
	int what = 1;
	while ((n = read(d->wake_fd, b, sizeof b)) > 0)
		if (memchr(b, 'c', (size_t)n))
			what = 2;
	return what;
}

ms_status ms_daemon_run(const ms_daemon_opts *o, ms_error *err)
{
	sched_state D;
	memset(&D, 0, sizeof D);
	sched_state *d = &D;
	d->o = o;
	d->c = o->conf;
	d->wake_fd = -1;
	ms_status st = ms_spool_open(d->c, 1, &d->sp, err);
	if (st != MS_OK)
		return st;
	ms_spool_set_report(d->sp, o->log, o->log_ctx); /* what is moved aside */
	ms_sweep_report sw;
	if (ms_spool_sweep(d->sp, &sw, err) != MS_OK) {
		ms_spool_close(d->sp);
		return err->status;
	}
	if (sw.tmp_removed + sw.orphans_removed + sw.claims_expired + sw.corrupt)
		logf_(d, "start-up repair: %zu temporary files, %zu orphaned data files, %zu expired "
		         "claims removed; %zu damaged envelopes moved to corrupt/",
		      sw.tmp_removed, sw.orphans_removed, sw.claims_expired, sw.corrupt);
	if (!o->once && (st = ms_spool_wake_listen(d->sp, o->node, &d->wake_fd, err)) != MS_OK) {
		ms_spool_close(d->sp);
		return st;
	}
	logf_(d, "daemon started: node %s, spool %s, up to %zu deliveries", o->node,
	      d->c->spool_dir, d->c->max_deliveries);
	int woken = 2;
	int64_t last_list = 0;
	for (;;) {
		int64_t now = now_s();
		if (o->reload && *o->reload) {
			*o->reload = 0;
			reload(d);
			woken = 1;
		}
		if (o->stop && *o->stop && !d->stopping) {
			d->stopping = 1;
			d->stop_deadline = mono_ms() + MS_DAEMON_GRACE_MS;
			logf_(d, "stopping: %zu deliveries in flight", d->njobs);
			for (size_t i = 0; i < d->ndests; i++) { /* waiting work is released */
				dest *x = d->dests[i];
				for (size_t k = 0; k < x->nwait; k++)
					item_done(d, &x->wait[k]);
				x->nwait = 0;
			}
		}
		if (d->stopping && mono_ms() >= d->stop_deadline)
			for (size_t i = 0; i < d->njobs; i++)
				kill(d->jobs[i]->pid, SIGKILL);
		if (d->stopping && d->njobs == 0)
			break;
		/* What is queued: a listing when env/ changed (at most every
		 * LIST_MIN_MS, as our own updates change it too; at once for a
		 * new submission), mtimes when told or now and then. */
		int64_t dm = env_dir_mtime(d), ms = mono_ms();
		if (!d->stopping && dm != d->env_mtime &&
		    (woken || ms - last_list >= LIST_MIN_MS || (o->once && idle(d)))) {
			d->env_mtime = dm;
			last_list = ms;
			if (relist(d, err) != MS_OK)
				logf_(d, "cannot list the queue: %s", err->msg);
		}
		if (!d->stopping && (woken == 2 || now - d->last_scan >= d->c->queue_scan_interval)) {
			recheck_mtimes(d);
			d->last_scan = now;
		}
		woken = 0;
		if (now - d->last_renew >= (d->c->claim_lease + 2) / 3) {
			renew(d);
			d->last_renew = now;
		}
		if (!d->stopping)
			schedule(d);
		/* --once: done when nothing runs or waits and nothing is due
		 * (a bounce queued meanwhile is due, and goes too). */
		if (o->once && idle(d) && dm == d->env_mtime && next_due(d) > now_s())
			break;
		/* Wait for results, a wake-up, or the next due message. */
		size_t nfds = d->njobs + 1;
		struct pollfd *pf = calloc(nfds, sizeof *pf);
		if (!pf) {
			st = ms_error_set(err, MS_ERR_NOMEM, "out of memory");
			break;
		}
		pf[0].fd = d->wake_fd;
		pf[0].events = POLLIN;
		for (size_t i = 0; i < d->njobs; i++) {
			pf[i + 1].fd = d->jobs[i]->eof ? -1 : d->jobs[i]->fd;
			pf[i + 1].events = POLLIN;
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
		if (d->njobs && timeout > 200)
			timeout = 200; /* reap exited workers promptly */
		if (timeout < 50 && !idle(d))
			timeout = 50;
		if (nd <= now && d->claimed >= claim_limit(d->c))
			timeout = 200;
		for (size_t i = 0; i < d->njobs; i++)
			if (d->jobs[i]->more)
				timeout = 0; /* results already read wait to be settled */
		int r = poll(pf, (nfds_t)nfds, timeout);
		if (r > 0 && (pf[0].revents & POLLIN))
			woken = drain_wake(d);
		for (size_t i = 0; i < d->njobs; i++)
			if ((r > 0 && pf[i + 1].revents) || d->jobs[i]->more)
				job_read(d, d->jobs[i]);
		free(pf);
		reap(d);
	}
	/* Claims never outlive the daemon. */
	while (d->nslots)
		settle(d, d->slots[0]);
	for (size_t i = 0; i < d->ndests; i++) {
		free(d->dests[i]->wait);
		free(d->dests[i]);
	}
	free(d->dests);
	free(d->jobs);
	free(d->slots);
	free(d->idx);
	if (d->wake_fd >= 0)
		ms_spool_wake_unlisten(d->sp, o->node, d->wake_fd);
	logf_(d, "daemon stopped");
	ms_spool_close(d->sp);
	return st;
}
