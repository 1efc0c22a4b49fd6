/*
 * mailspool/daemon.h - the delivery daemon: the scheduler and its agents.
 *
 * The scheduler (the calling process) keeps an index of queued ids with
 * when each is next due, its envelope's mtime and its destination; only
 * messages that are due are read, and none whose destination is backed off,
 * so a queue of a million deferred messages costs a comparison per entry
 * per walk, not a million reads.  New messages name themselves on the wake
 * FIFO and are taken first.  A due message is read, its due recipients
 * grouped by destination (mailspool/deliver.h; domains sharing their MX
 * hosts are one destination, a site), claimed (the spool's NFS-safe
 * claims, renewed while held; at most claim_window at once, so daemons
 * sharing a spool share the work), and handed to a delivery agent in a
 * unit: per destination up to destination_concurrency units at once, one
 * per connection_messages waiting, never more than max_deliveries in all,
 * within the destination's rate.
 *
 * The agents (mailspool/agent.h, the program mailspool-deliver) are a
 * few long-lived processes started with posix_spawn - the library never
 * forks - each driving many sessions; they die with the scheduler
 * (PDEATHSIG, checked against the pid they were given).  The scheduler
 * alone writes envelopes (mailspool/sched.h: tiers, bounces, removal), in
 * group commits, and the log.  A slow or hostile destination holds only
 * its own session; one nobody could be reached at is left alone for
 * destination_backoff, then probed by one message; one that asks us to
 * slow down gets fewer sessions and a lower rate for a while.
 *
 * Wake-ups: the wake FIFO (submissions with their ids, flush, release),
 * the earliest due time in the index, claim renewals, queue_scan_interval
 * (changes made by other daemons or hosts, found by envelope mtimes).
 * Stop: *stop set (SIGTERM) - no new work; the agents' input ends, they
 * finish what is in flight within MS_DAEMON_GRACE_MS or are killed; what
 * they reported is applied, the rest is released untouched.
 *
 * Invariant: a message is settled only by the daemon holding its claim,
 * checked just before; agents start no message after the deadline the
 * scheduler last renewed, and hold at most agent_uncommitted results the
 * spool has not committed.
 */
#ifndef MAILSPOOL_DAEMON_H
#define MAILSPOOL_DAEMON_H

#include <signal.h>
#include "mailspool/conf.h"
#include "mailspool/error.h"
#include "mailspool/sched.h"

#define MS_DAEMON_GRACE_MS 5000
#define MS_DAEMON_GROUP_MAX 2000    /* messages handed to one unit */
#define MS_DAEMON_UNTRIED_MAX 5     /* not-attempted hand-backs per claim */
#define MS_DAEMON_CLAIMED_MAX 20000 /* messages claimed at once, at most (and at
                                     * most 2 x max_deliveries x connection_messages) */

typedef struct ms_daemon_opts {
	ms_conf *conf;                  /* reloaded in place on *reload */
	const char *conf_path;          /* for reloading */
	int conf_required;
	const char *node;               /* this dequeuer's name (claims, wake FIFO) */
	int once;                       /* deliver what is due now, then return */
	volatile sig_atomic_t *stop;    /* set by SIGTERM/SIGINT */
	volatile sig_atomic_t *reload;  /* set by SIGHUP */
	ms_log_fn log;
	void *log_ctx;
	const char *agent;              /* the delivery agent program (mailspool-deliver) */
	struct ms_metrics *metrics;     /* kept up to date when set (mailspool/metrics.h) */
} ms_daemon_opts;

ms_status ms_daemon_run(const ms_daemon_opts *o, ms_error *err);

#endif
