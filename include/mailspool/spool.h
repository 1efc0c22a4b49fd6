/*
 * mailspool/spool.h - the durable queue.
 *
 * Layout under spool_dir:
 *     tmp/      files being written (never read by anyone else)
 *     data/ID   message data, CRLF lines, immutable once committed
 *     env/ID    the envelope (mailspool/envelope.h); its presence IS the
 *               message being queued
 *     claim/ID  a dequeuer's lease on the message
 *     corrupt/  damaged files, moved aside and reported, never deleted
 *     wake/     the daemons' wake-up FIFOs
 *     usage     the usage log: "<unix time> <purpose> <octets> <id>" lines
 *
 * Everything belongs to one owner (mail_owner) and nobody else has any
 * access: submitters go through the set-id helper (SECURITY.md).  Every
 * path is opened relative to directory descriptors opened once with
 * O_NOFOLLOW, and every file is checked by fstat (regular, the owner's,
 * one link) before it is read, delivered, renamed or removed.
 *
 * Commit protocol (ms_spool_commit): data and envelope are written to tmp/
 * (O_CREAT|O_EXCL|O_NOFOLLOW) and fsynced; the data is renamed into data/ and
 * data/ fsynced; the envelope is renamed into env/ - the commit point - and
 * env/ fsynced; only then does the call succeed.  Any failed write, fsync,
 * close or rename fails the submission and removes what it made, so
 * nothing half-written is ever visible; an fsync is never retried.
 * Envelope updates replace the file the same way (tmp, fsync, rename, fsync
 * env/).
 *
 * Claims work for several dequeuers on one host or several hosts sharing the
 * directory over NFS: a claim is a token file created in tmp/ under a
 * host-unique name and link()ed to claim/ID; success is judged by the token's
 * link count, not link()'s return value, so a retransmitted NFS LINK cannot
 * fool it.  A claim is a lease renewed by touching it (on NFS the server
 * sets the time); another dequeuer breaks it only when it is older than the
 * lease plus the clock-skew tolerance, and only while holding claim/ID.break
 * (taken the same way), after checking again that it is the same stale file.
 *
 * Invariants: a message is listed iff env/ID exists; data/ID exists for
 * every listed message; a damaged envelope or a listed message without data
 * is moved to corrupt/ when found, never delivered or deleted.  An
 * envelope's mtime is never later than the time it is next due: a commit
 * leaves it at the commit time, an update sets it to the next due time
 * when that is in the future - so a scheduler can skip reading envelopes
 * whose mtime is still ahead.
 */
#ifndef MAILSPOOL_SPOOL_H
#define MAILSPOOL_SPOOL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include "mailspool/conf.h"
#include "mailspool/envelope.h"
#include "mailspool/error.h"

typedef struct ms_spool ms_spool;
typedef struct ms_spool_tx ms_spool_tx;

/* Open the spool of c (its directories are created, mode 0700, when
 * `create`).  spool_dir and every directory in it are opened once, never
 * through a symlink, and must belong to the owner of spool_dir with no
 * access for group or others (MS_ERR_TEMP naming the directory otherwise;
 * MS_ERR_DENIED when we may not open it). */
ms_status ms_spool_open(const ms_conf *c, int create, ms_spool **out, ms_error *err);
void ms_spool_close(ms_spool *sp);
const char *ms_spool_dir(const ms_spool *sp);
/* The uid owning the spool: every file used must be a regular file of
 * this uid with one link; anything else is moved aside, never used. */
uid_t ms_spool_owner(const ms_spool *sp);
/* Where to say that something was moved aside (one call per entry, once:
 * it is gone from the directory afterwards).  Unset: nothing is said. */
typedef void (*ms_spool_report_fn)(void *ctx, const char *line);
void ms_spool_set_report(ms_spool *sp, ms_spool_report_fn fn, void *ctx);

/* ---- submission ---- */

/* A fresh queue id: 13 hex digits of microseconds since the epoch, then
 * 16 random hex digits (unique without coordination; sorts by arrival). */
void ms_spool_new_id(char out[MS_ENV_ID_MAX + 1]);
/* A directory of the spool for state that is not the queue (sts/, the
 * MTA-STS policy cache; tlsrpt/, TLS-RPT counts): made 0700 when missing,
 * opened without following a symlink and checked as the spool's own
 * directories are.  *dfd is the caller's to close. */
ms_status ms_spool_state_dir(ms_spool *sp, const char *name, int *dfd, ms_error *err);

/* Start a new message: a fresh id and a data file in tmp/. */
ms_status ms_spool_begin(ms_spool *sp, ms_spool_tx **tx, ms_error *err);
const char *ms_spool_tx_id(const ms_spool_tx *tx);
/* Append data (buffered). */
ms_status ms_spool_tx_write(ms_spool_tx *tx, const void *p, size_t n, ms_error *err);
uint64_t ms_spool_tx_size(const ms_spool_tx *tx);
/* Everything written so far, readable with pread on *fd (the
 * transaction's own descriptor: not to be closed or written). */
ms_status ms_spool_tx_data(ms_spool_tx *tx, int *fd, ms_error *err);
/* Make it durable and visible; env's id and size are filled in.  The
 * transaction is finished either way. */
ms_status ms_spool_commit(ms_spool_tx *tx, ms_envelope *env, ms_error *err);
/* Throw it away (nothing was visible). */
void ms_spool_abort(ms_spool_tx *tx);

/* Refuse (MS_ERR_TEMP) when the file system would keep less than
 * min_free_space after `extra` more octets. */
ms_status ms_spool_space_ok(ms_spool *sp, uint64_t extra, ms_error *err);

/* ---- reading and updating ---- */

/* Every queued id, sorted (ids sort by arrival).  Free with ms_spool_ids_free. */
ms_status ms_spool_list(ms_spool *sp, char ***ids, size_t *n, ms_error *err);
/* The same, and each envelope's mtime as ms_spool_env_mtime gives it (-1:
 * gone meanwhile), from the stat the listing makes anyway; free *mtimes. */
ms_status ms_spool_list_mtimes(ms_spool *sp, char ***ids, int64_t **mtimes, size_t *n,
                               ms_error *err);
/* The same, but a name for which want(ctx, name) is 0 is not looked at
 * (no stat: on a shared volume a round trip each): its mtime is given as
 * MS_SPOOL_MTIME_UNSEEN.  For a scheduler whose index already knows those
 * messages to be another's. */
#define MS_SPOOL_MTIME_UNSEEN (-2)
typedef int (*ms_spool_want_fn)(void *ctx, const char *id);
ms_status ms_spool_list_some_mtimes(ms_spool *sp, ms_spool_want_fn want, void *ctx, char ***ids,
                                    int64_t **mtimes, size_t *n, ms_error *err);
void ms_spool_ids_free(char **ids, size_t n);
/* The destination hint a commit leaves beside an envelope (a user
 * extended attribute), for a scheduler that shares the spool with others
 * and wants to know whose a message is without reading it: the sender and
 * the one domain of every recipient still to try, when they have one.  An
 * update writes a new envelope without it (it is for the first look only).
 * 1 and both filled: it has one; 0: none (several domains, a file system
 * without user attributes, malformed): read the envelope to know; -1:
 * the envelope is gone.
 * Only a hint: whoever acts on the message reads the envelope first.
 * Safe from several threads at once on one handle (it only reads the env/
 * descriptor). */
#define MS_HINT_SENDER_MAX 512
#define MS_HINT_DOMAIN_MAX 255
int ms_spool_dest_hint(ms_spool *sp, const char *id, char sender[MS_HINT_SENDER_MAX + 1],
                       char domain[MS_HINT_DOMAIN_MAX + 1]);
/* Read and check an envelope.  MS_ERR_DATA: it was damaged and has been
 * moved to corrupt/ (err says so); MS_ERR_USAGE: no such message. */
ms_status ms_spool_read(ms_spool *sp, const char *id, ms_envelope *e, ms_error *err);
/* The same, and the envelope's mtime as ms_spool_env_mtime gives it, from
 * the descriptor it was read through (one stat fewer over a network). */
ms_status ms_spool_read_mtime(ms_spool *sp, const char *id, ms_envelope *e, int64_t *mtime,
                              ms_error *err);
/* Replace an envelope atomically (the caller holds the claim). */
ms_status ms_spool_update(ms_spool *sp, const ms_envelope *e, ms_error *err);
/* Open the data file for reading. */
/* Group commit: until ms_spool_batch_commit, ms_spool_update and
 * ms_spool_remove leave the env/ fsync (and removed messages' data) to the
 * commit, which does one fsync for all of them.  Nothing is durable before
 * the commit returns MS_OK: claims are released only after it. */
void ms_spool_batch_begin(ms_spool *sp);
ms_status ms_spool_batch_commit(ms_spool *sp, ms_error *err);
/* The daemon's own bounces may use a reserve under min_free_space (half
 * of it): between begin and end, the floor is min_free_space / 2. */
void ms_spool_reserve(ms_spool *sp, int on);
/* A reloaded configuration (spool_dir unchanged): leases, skew, floors. */
void ms_spool_reconf(ms_spool *sp, const ms_conf *c);
ms_status ms_spool_open_data(ms_spool *sp, const char *id, int *fd, ms_error *err);
/* Remove a message (envelope first: it stops being queued at once). */
ms_status ms_spool_remove(ms_spool *sp, const char *id, ms_error *err);

/* ---- claims ---- */

typedef struct ms_claim {
	char id[MS_ENV_ID_MAX + 1];
	dev_t dev;
	ino_t ino;   /* the claim file's identity: ours while claim/ID is this inode */
} ms_claim;

/* Claim id for `node` (a name unique to this dequeuer's host).  MS_OK: it is
 * ours; MS_ERR_TEMP: someone else holds a live claim (err names them). */
ms_status ms_spool_claim(ms_spool *sp, const char *id, const char *node, ms_claim *c,
                         ms_error *err);
/* Renew our leases on a clock of our own: a thread touches every claim
 * token of ours (each claim is a link to one) and the node lock (the
 * heartbeat; call after ms_spool_lock_node) every third of claim_lease,
 * whatever the caller is doing.  Stopped by ms_spool_close. */
ms_status ms_spool_keeper_start(ms_spool *sp, ms_error *err);
/* When the keeper last renewed everything (unix seconds, our clock); 0
 * when it has not or does not run. */
int64_t ms_spool_keeper_renewed(ms_spool *sp);
/* Extend the lease.  MS_ERR_TEMP if the claim is no longer ours. */
ms_status ms_spool_renew(ms_spool *sp, const ms_claim *c, ms_error *err);
/* Is the claim still ours? */
int ms_spool_claim_held(ms_spool *sp, const ms_claim *c);
ms_status ms_spool_release(ms_spool *sp, const ms_claim *c, ms_error *err);

/* When the envelope last changed (ns since the epoch); -1 if it is gone.
 * A scheduler compares it to what it saw to learn of changes cheaply. */
int64_t ms_spool_env_mtime(ms_spool *sp, const char *id);

/* ---- waking delivery daemons ----
 * A daemon listens on a FIFO wake/NODE.PID under the spool directory
 * (wake/ is the owner's alone; each FIFO is checked before it is written);
 * ms_spool_wake writes to every one ("n<ID>\n" for a new message, "n\n"
 * when its id is not known; "c" after release: envelopes changed, so
 * daemons read them again; "f" after flush: the same, and every
 * destination's back-off ends),
 * removing FIFOs nobody reads any more.  Never blocks. */
ms_status ms_spool_wake_listen(ms_spool *sp, const char *node, int *fd, ms_error *err);
/* wake/, opened once as every spool directory (for wakenet.c). */
int ms_spool_wake_dirfd(const ms_spool *sp);
void ms_spool_wake_unlisten(ms_spool *sp, const char *node, int fd);
void ms_spool_wake(ms_spool *sp, int changed); /* 1: envelopes edited; 2: flushed */
/* A new message: "n<ID>\n", so a daemon takes it at once without listing
 * the whole queue. */
void ms_spool_wake_id(ms_spool *sp, const char *id);

/* One daemon per node name on a spool: an exclusive lock (flock) on
 * spool_dir/lock.NODE, created as the owner's and checked like every spool
 * file, held until *fd is closed (close-on-exec: agents do not inherit
 * it).  MS_ERR_TEMP when another process holds it; *holder is its pid (0
 * if unknown). */
ms_status ms_spool_lock_node(ms_spool *sp, const char *node, int *fd, long *holder,
                             ms_error *err);

/* Every node that ever ran a daemon on this spool: fn(node, the lock
 * file's stat - its mtime is the node's heartbeat, touched by the lease
 * keeper every third of a lease). */
struct stat;
ms_status ms_spool_each_node(ms_spool *sp, void (*fn)(void *ctx, const char *node,
                                                      const struct stat *st),
                             void *ctx, ms_error *err);
/* Is no daemon of `node` alive?  1 only when its lock file exists and
 * nobody holds the lock (a verdict is kept a second). */
int ms_spool_node_dead(ms_spool *sp, const char *node);

/* A rate limit kept in the spool: 1 (and the stamp `name` in spool_dir
 * renewed) when it was last renewed at least `seconds` ago, else 0. */
int ms_spool_once_per(ms_spool *sp, const char *name, int64_t seconds);

/* ---- repair and accounting ---- */

typedef struct ms_sweep_report {
	size_t tmp_removed;      /* stale files in tmp/ (older than an hour) */
	size_t orphans_removed;  /* data/ files without an envelope (a crash mid-commit) */
	size_t claims_expired;   /* claims past lease + skew, or without a message */
	size_t corrupt;          /* envelopes moved to corrupt/ */
	size_t checked;          /* envelopes read and found sound */
} ms_sweep_report;
/* The start-up repair: what a crash left behind. */
ms_status ms_spool_sweep(ms_spool *sp, ms_sweep_report *r, ms_error *err);
/* The daemon's: the same but the envelopes are not read (each is read
 * when it is due, and a damaged one is moved aside then: reading them all
 * at start-up too cost every daemon of a cluster a round trip per queued
 * message and file); given up (MS_OK, the report so far) as soon as *stop
 * is set, since the daemon sweeps in the background and must be able to
 * stop. */
ms_status ms_spool_sweep_files(ms_spool *sp, ms_sweep_report *r, const volatile int *stop,
                               ms_error *err);

/* Only the claims: those of holders known dead (ms_spool_node_dead, or our
 * own node's other processes) and those on messages that are gone - what
 * a daemon that died left (a daemon calls it when it sees a node die).
 * The number removed. */
size_t ms_spool_sweep_claims(ms_spool *sp);

/* Append a usage line; purpose is a word ("spooled", "sent").  Inside a
 * batch (ms_spool_batch_begin) the line is written after the commit, with
 * the batch's others in one write, and not at all if the commit fails. */
ms_status ms_spool_usage(ms_spool *sp, const char *purpose, uint64_t octets, const char *id,
                         ms_error *err);
/* The same with the submitter's uid ("... ID uid=N"). */
ms_status ms_spool_usage_uid(ms_spool *sp, const char *purpose, uint64_t octets, const char *id,
                             uint32_t uid, ms_error *err);
/* Sum the usage log by UTC day and purpose: fn(day "YYYY-MM-DD", purpose,
 * events, octets) in order of day, then purpose. */
ms_status ms_spool_usage_sum(ms_spool *sp,
                             void (*fn)(void *ctx, const char *day, const char *purpose,
                                        uint64_t events, uint64_t octets),
                             void *ctx, ms_error *err);

#endif
