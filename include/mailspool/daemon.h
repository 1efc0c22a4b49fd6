/*
 * mailspool/daemon.h - the delivery daemon: scheduler and workers.
 *
 * The scheduler (the calling process) keeps an index of queued ids with
 * when each is next due and its envelope's mtime; only messages that are
 * due are read, so a queue of 100,000 deferred messages costs a directory
 * listing (when env/ changed) and a comparison per entry, not 100,000
 * reads.  A due message is read, its due recipients grouped by destination
 * (mailspool/deliver.h), and it is claimed (the spool's NFS-safe claims,
 * renewed while held) and re-read under the claim - no more at once than
 * the workers can start soon, so daemons sharing a spool share the work.  Each destination's
 * waiting messages go to worker processes, one connection each: one
 * worker, or more for large groups (connection_messages per connection, up
 * to destination_concurrency), never more than max_deliveries at once.
 *
 * A worker is an exec'd delivery agent (mailspool/agent.h, the program
 * `agent`): it resolves, connects and delivers its group over one
 * pipelined session, and streams each recipient's result back over a pipe
 * as soon as its message is decided; it dies with the scheduler
 * (PDEATHSIG, checked against the pid it was given).  The library never
 * forks: agents are started with posix_spawn.  The
 * scheduler alone writes envelopes (mailspool/sched.h: tiers, bounces,
 * removal) and the log.  A slow or hostile destination holds only its own
 * worker; a destination nobody could be reached at is left alone for
 * destination_backoff (its messages are not even claimed).
 *
 * Wake-ups: the wake FIFO (submissions, flush, release), the earliest due
 * time in the index, queue_scan_interval (changes made by other daemons or
 * hosts, found by envelope mtimes).  Stop: *stop set (SIGTERM) - no new
 * work; workers get up to MS_DAEMON_GRACE_MS to finish, then are killed;
 * what they reported is applied, the rest is released untouched.
 *
 * Invariant: a message is settled only by the daemon holding its claim,
 * and only while the claim is still its own.
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
} ms_daemon_opts;

ms_status ms_daemon_run(const ms_daemon_opts *o, ms_error *err);

#endif
