/*
 * spool.c - the durable queue (see mailspool/spool.h).
 *
 * Every function that makes something durable follows the same rule: a
 * failed write(), fsync(), close() or rename() is a failure of the whole
 * operation, whatever is left is removed, and nothing is retried.  After a
 * failed fsync the kernel may have dropped the dirty pages; retrying would
 * only report success for data that is gone.
 */
#include "mailspool/spool.h"
#include "mailspool/hmap.h"
#include "mailspool/io.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/time.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#define TX_BUF (64u * 1024)
#define HINT_XATTR "user.mailspool.dest" /* ms_spool_dest_hint */
#define STALE_TMP_SECS 3600
#define USAGE_BATCH_MAX (256u << 10) /* usage lines a batch keeps (then written at once) */
#define PATH_MAX_ (MS_CONF_PATH_MAX + 64)

struct ms_spool {
	ms_conf conf;
	char dir[MS_CONF_PATH_MAX];
	/* Opened once, each without following a symlink and checked by fstat;
	 * every path below is relative to one of them. */
	int dfd_root, dfd_tmp, dfd_data, dfd_env, dfd_claim, dfd_corrupt, dfd_wake;
	uid_t owner; /* of spool_dir: every directory and file must be its */
	ms_spool_report_fn report;
	void *report_ctx;
	/* Group commit (ms_spool_batch_begin): env/ is fsynced once at the
	 * end, and the data files of removed messages go only after that. */
	int batching, batch_dirty;
	char (*batch_removed)[MS_ENV_ID_MAX + 1];
	size_t nbatch_removed, capbatch_removed;
	/* Usage lines of the batch, appended to the log in one write after
	 * the commit: a line counts what was committed (a message sent again
	 * after a failed commit is not counted twice), and the log costs a
	 * batch one open and write, not one per message (on a shared volume
	 * six round trips and a replicated lock on one file all hosts share). */
	ms_buf batch_usage;
	uint64_t floor; /* min_free_space in force (lowered for our own bounces) */
	/* Our claim token (tmp/claim.NODE.PID.RANDOM), linked to every claim
	 * we make until it has MS_CLAIM_TOKEN_LINKS names (link_claim). */
	struct {
		char name[300];
		char node[65]; /* as the token name has it (64 at most) */
		pid_t pid;
		dev_t dev;
		ino_t ino;
		size_t links;
		int64_t touched;
	} tok;
	/* Claims judged without clocks (claim_stale): what we saw of each
	 * claim we could not take, and when by our own monotonic clock. */
	ms_hmap seen;
	/* The node lock we hold (ms_spool_lock_node), and its name: a claim of
	 * this node made by another process is a dead predecessor's. */
	int lock_fd;
	char lock_node[65];
	/* Verdicts on other nodes' liveness (node_dead), kept a second. */
	ms_hmap dead;
	struct keeper *keeper; /* renews our leases on its own clock */
};

/* Names one claim token gets before a fresh one is made: far below every
 * file system's link limit (ext4 65,000, some 32,000). */
#define MS_CLAIM_TOKEN_LINKS 4096

/* What a node name may hold, as it is read back from claims and lock
 * file names. */
#define NODE_CHARS "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_"

struct ms_spool_tx {
	ms_spool *sp;
	char id[MS_ENV_ID_MAX + 1];
	char dname[MS_ENV_ID_MAX + 8], ename[MS_ENV_ID_MAX + 8];
	int fd;
	char *buf;
	size_t blen;
	uint64_t size;
	int failed;
};

static const char *const subdirs[] = { "tmp", "data", "env", "claim", "corrupt", "wake" };
#define NSUBDIRS 6

/* ---- small helpers ------------------------------------------------------ */


static ms_status sys_err(ms_error *err, const char *what, const char *name)
{
	int e = errno;
	/* ENOSPC, EDQUOT and I/O errors are worth trying again later. */
	return ms_error_set(err, MS_ERR_IO, "%s %s: %s", what, name, strerror(e));
}

static int64_t now_s(void)
{
	return (int64_t)time(NULL);
}

/* A random hex string of 2*n digits. */
static void rand_hex(char *out, size_t n)
{
	unsigned char r[16];
	if (n > sizeof r)
		n = sizeof r;
	if (getrandom(r, n, 0) != (ssize_t)n) {
		/* getrandom on Linux >= 3.17 does not fail for small sizes;
		 * fall back to time and pid so ids stay unique enough. */
		struct timeval tv;
		gettimeofday(&tv, NULL);
		uint64_t x = (uint64_t)tv.tv_usec ^ ((uint64_t)getpid() << 20) ^ (uint64_t)tv.tv_sec;
		for (size_t i = 0; i < n; i++)
			r[i] = (unsigned char)(x >> (8 * (i % 8)));
	}
	for (size_t i = 0; i < n; i++)
		snprintf(out + 2 * i, 3, "%02x", r[i]);
}

/* Write a whole file in dirfd under name, durably; O_EXCL.  A hint
 * (hlen > 0) goes beside it as the destination-hint attribute; where the
 * file system has no user attributes, the file simply has none. */
static ms_status write_file_hinted(int dfd, const char *name, const char *p, size_t n,
                                   const char *hint, size_t hlen, ms_error *err)
{
	int fd = openat(dfd, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd < 0)
		return sys_err(err, "cannot create", name);
	if (hlen)
		(void)fsetxattr(fd, HINT_XATTR, hint, hlen, 0);
	if (ms_write_all(fd, p, n) < 0) {
		sys_err(err, "cannot write", name);
		close(fd);
		unlinkat(dfd, name, 0);
		return MS_ERR_IO;
	}
	if (fsync(fd) < 0) {
		sys_err(err, "cannot fsync", name);
		close(fd);
		unlinkat(dfd, name, 0);
		return MS_ERR_IO;
	}
	if (close(fd) < 0) {
		sys_err(err, "cannot close", name);
		unlinkat(dfd, name, 0);
		return MS_ERR_IO;
	}
	return MS_OK;
}

static ms_status write_file(int dfd, const char *name, const char *p, size_t n, ms_error *err)
{
	return write_file_hinted(dfd, name, p, n, NULL, 0, err);
}

/* ---- destination hints ------------------------------------------------ */

/* The hint of e: "SENDER\nDOMAIN" when every recipient still to try has
 * the one DOMAIN (lower case), else nothing (0).  Its length, or 0. */
static size_t hint_make(const ms_envelope *e, char *out, size_t cap)
{
	const char *dom = NULL;
	size_t dl = 0;
	for (size_t i = 0; i < e->nrcpts; i++) {
		const ms_env_rcpt *r = &e->rcpts[i];
		if (r->state != MS_ENV_PENDING && r->state != MS_ENV_DEFERRED)
			continue;
		const char *at = strrchr(r->addr, '@');
		if (!at || !at[1])
			return 0;
		if (!dom) {
			dom = at + 1;
			dl = strlen(dom);
		} else if (strlen(at + 1) != dl || strncasecmp(dom, at + 1, dl)) {
			return 0; /* several domains: read to be known */
		}
	}
	size_t sl = strlen(e->sender);
	if (!dom || dl > MS_HINT_DOMAIN_MAX || sl > MS_HINT_SENDER_MAX || sl + 1 + dl > cap)
		return 0;
	memcpy(out, e->sender, sl);
	out[sl] = '\n';
	for (size_t i = 0; i < dl; i++)
		out[sl + 1 + i] = (char)tolower((unsigned char)dom[i]);
	return sl + 1 + dl;
}

int ms_spool_dest_hint(ms_spool *sp, const char *id, char sender[MS_HINT_SENDER_MAX + 1],
                       char domain[MS_HINT_DOMAIN_MAX + 1])
{
	if (!ms_env_id_ok(id))
		return 0;
	/* By the directory descriptor's name in /proc (there is no
	 * getxattr relative to a descriptor in our C library): the id is a
	 * plain name, and lgetxattr follows no symlink it might be. */
	char path[64 + MS_ENV_ID_MAX];
	snprintf(path, sizeof path, "/proc/self/fd/%d/%s", sp->dfd_env, id);
	char v[MS_HINT_SENDER_MAX + MS_HINT_DOMAIN_MAX + 2];
	ssize_t n = lgetxattr(path, HINT_XATTR, v, sizeof v);
	struct stat st;
	if (n < 0 && errno == ENOENT && fstatat(sp->dfd_env, id, &st, AT_SYMLINK_NOFOLLOW) < 0 &&
	    errno == ENOENT)
		return -1; /* (asked by the descriptor too: /proc might not be there) */
	if (n <= 0 || (size_t)n >= sizeof v)
		return 0;
	/* Checked as strictly as an envelope: one LF, no CR or NUL. */
	const char *lf = memchr(v, '\n', (size_t)n);
	if (!lf || memchr(v, '\r', (size_t)n) || memchr(v, '\0', (size_t)n) ||
	    memchr(lf + 1, '\n', (size_t)(v + n - lf - 1)))
		return 0;
	size_t sl = (size_t)(lf - v), dl = (size_t)(v + n - lf - 1);
	if (sl > MS_HINT_SENDER_MAX || dl == 0 || dl > MS_HINT_DOMAIN_MAX)
		return 0;
	memcpy(sender, v, sl);
	sender[sl] = '\0';
	memcpy(domain, lf + 1, dl);
	domain[dl] = '\0';
	return 1;
}

/* A file of the spool we may read, deliver, rename or remove: a regular
 * file of the owner with one link (a hard link to someone else's file,
 * a FIFO or a device planted in the spool is never used). */
static const char *file_problem(const ms_spool *sp, const struct stat *st)
{
	if (!S_ISREG(st->st_mode))
		return "is not a regular file";
	if (st->st_uid != sp->owner)
		return "does not belong to the spool's owner";
	if (st->st_nlink != 1)
		return "has more than one link";
	return NULL;
}

/* Open a spool file for reading: no symlink followed, no FIFO waited on,
 * and checked by fstat before a byte is read.  -1 with errno; -2 when the
 * file is there but not one of ours (*why says how). */
static int open_checked_st(const ms_spool *sp, int dfd, const char *name, const char **why,
                           struct stat *out);

static int open_checked(const ms_spool *sp, int dfd, const char *name, const char **why)
{
	struct stat st;
	return open_checked_st(sp, dfd, name, why, &st);
}

/* The same, with what fstat said (the file's mtime, for one). */
static int open_checked_st(const ms_spool *sp, int dfd, const char *name, const char **why,
                           struct stat *out)
{
	int fd = openat(dfd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0) {
		if (errno == ELOOP) {
			*why = "is a symbolic link";
			return -2;
		}
		return -1;
	}
	struct stat st;
	if (fstat(fd, &st) < 0) {
		int e = errno;
		close(fd);
		errno = e;
		return -1;
	}
	if ((*why = file_problem(sp, &st))) {
		close(fd);
		return -2;
	}
	*out = st;
	return fd;
}

static ms_status read_file(const ms_spool *sp, int dfd, const char *name, size_t cap, ms_buf *out,
                           struct stat *st, ms_error *err)
{
	ms_buf_init(out, cap);
	const char *why = NULL;
	int fd = open_checked_st(sp, dfd, name, &why, st);
	if (fd == -2)
		return ms_error_set(err, MS_ERR_DATA, "%s %s", name, why);
	if (fd < 0)
		return errno == ENOENT ? ms_error_set(err, MS_ERR_USAGE, "no message %s", name)
		                       : sys_err(err, "cannot open", name);
	char chunk[16384];
	for (;;) {
		ssize_t r = read(fd, chunk, sizeof chunk);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			sys_err(err, "cannot read", name);
			close(fd);
			return MS_ERR_IO;
		}
		if (r == 0)
			break;
		if (ms_buf_append(out, chunk, (size_t)r) != MS_OK) {
			close(fd);
			return ms_error_set(err, MS_ERR_DATA, "%s is larger than %zu bytes", name, cap);
		}
	}
	close(fd);
	return MS_OK;
}

/* ---- open/close --------------------------------------------------------- */

static void keeper_stop(ms_spool *sp);

/* Empty a map whose values are malloc'd. */
static void forget_all(ms_hmap *m)
{
	const char *k;
	void *v;
	for (size_t i = 0; (i = ms_hmap_next(m, i, &k, &v)) != 0;)
		free(v);
	ms_hmap_free(m);
	ms_hmap_init(m);
}

/* A spool directory is the owner's alone: owned by it, no access for
 * group or others (nobody else may list, plant or remove anything). */
static ms_status check_dir(const ms_spool *sp, int fd, const char *name, ms_error *err)
{
	struct stat st;
	if (fstat(fd, &st) < 0)
		return ms_error_set(err, MS_ERR_IO, "cannot check %s/%s: %s", sp->dir, name,
		                    strerror(errno));
	if (st.st_uid != sp->owner || (st.st_mode & 077))
		return ms_error_set(err, MS_ERR_TEMP,
		                    "spool directory %s/%s has owner uid %u and mode %04o; it must "
		                    "belong to uid %u (the owner of %s) with mode 0700: run "
		                    "'mailspool setup'",
		                    sp->dir, name, (unsigned)st.st_uid, (unsigned)(st.st_mode & 07777),
		                    (unsigned)sp->owner, sp->dir);
	return MS_OK;
}

ms_status ms_spool_open(const ms_conf *c, int create, ms_spool **out, ms_error *err)
{
	ms_spool *sp = calloc(1, sizeof *sp);
	if (!sp)
		return ms_error_set(err, MS_ERR_NOMEM, "out of memory");
	sp->conf = *c;
	snprintf(sp->dir, sizeof sp->dir, "%s", c->spool_dir);
	int *fds[] = { &sp->dfd_tmp, &sp->dfd_data, &sp->dfd_env, &sp->dfd_claim, &sp->dfd_corrupt,
		           &sp->dfd_wake };
	sp->dfd_root = -1;
	sp->lock_fd = -1;
	ms_hmap_init(&sp->seen);
	ms_hmap_init(&sp->dead);
	ms_buf_init(&sp->batch_usage, USAGE_BATCH_MAX);
	for (size_t i = 0; i < NSUBDIRS; i++)
		*fds[i] = -1;
	if (create && mkdir(sp->dir, 0700) < 0 && errno != EEXIST) {
		ms_error_set(err, MS_ERR_IO, "cannot create spool %s: %s", sp->dir, strerror(errno));
		ms_spool_close(sp);
		return MS_ERR_IO;
	}
	/* The spool directory itself must not be a symlink: whoever could
	 * plant one could point every write of ours elsewhere. */
	sp->dfd_root = open(sp->dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	struct stat rst;
	if (sp->dfd_root < 0 || fstat(sp->dfd_root, &rst) < 0) {
		ms_error_set(err, errno == EACCES ? MS_ERR_DENIED : MS_ERR_IO,
		             "cannot open spool %s: %s", sp->dir,
		             errno == ELOOP ? "it is a symbolic link" : strerror(errno));
		ms_spool_close(sp);
		return err ? err->status : MS_ERR_IO;
	}
	sp->owner = rst.st_uid;
	ms_status st = check_dir(sp, sp->dfd_root, ".", err);
	for (size_t i = 0; i < NSUBDIRS && st == MS_OK; i++) {
		if (create && mkdirat(sp->dfd_root, subdirs[i], 0700) < 0 && errno != EEXIST) {
			st = ms_error_set(err, MS_ERR_IO, "cannot create %s/%s: %s", sp->dir, subdirs[i],
			                  strerror(errno));
			break;
		}
		*fds[i] = openat(sp->dfd_root, subdirs[i], O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (*fds[i] < 0) {
			int e = errno;
			st = ms_error_set(err, e == EACCES ? MS_ERR_DENIED : MS_ERR_IO,
			                  "cannot open spool directory %s/%s: %s", sp->dir, subdirs[i],
			                  e == ELOOP || e == ENOTDIR ? "not a directory (a symbolic link?)"
			                                             : strerror(e));
			break;
		}
		st = check_dir(sp, *fds[i], subdirs[i], err);
	}
	if (st != MS_OK) {
		ms_spool_close(sp);
		return st;
	}
	*out = sp;
	return MS_OK;
}

ms_status ms_spool_state_dir(ms_spool *sp, const char *name, int *dfd, ms_error *err)
{
	*dfd = -1;
	if (!*name || strchr(name, '/') || name[0] == '.')
		return ms_error_set(err, MS_ERR_USAGE, "bad state directory name");
	if (mkdirat(sp->dfd_root, name, 0700) < 0 && errno != EEXIST)
		return ms_error_set(err, MS_ERR_IO, "cannot create %s/%s: %s", sp->dir, name,
		                    strerror(errno));
	int fd = openat(sp->dfd_root, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return ms_error_set(err, MS_ERR_IO, "cannot open %s/%s: %s", sp->dir, name,
		                    errno == ELOOP || errno == ENOTDIR ? "not a directory" : strerror(errno));
	ms_status st = check_dir(sp, fd, name, err);
	if (st != MS_OK) {
		close(fd);
		return st;
	}
	*dfd = fd;
	return MS_OK;
}

void ms_spool_close(ms_spool *sp)
{
	if (!sp)
		return;
	int fds[] = { sp->dfd_root, sp->dfd_tmp,     sp->dfd_data, sp->dfd_env,
		          sp->dfd_claim, sp->dfd_corrupt, sp->dfd_wake };
	keeper_stop(sp);
	if (sp->tok.name[0] && sp->tok.pid == getpid() && sp->dfd_tmp >= 0)
		unlinkat(sp->dfd_tmp, sp->tok.name, 0); /* our claims keep the inode */
	forget_all(&sp->seen);
	forget_all(&sp->dead);
	for (size_t i = 0; i < sizeof fds / sizeof fds[0]; i++)
		if (fds[i] >= 0)
			close(fds[i]);
	free(sp->batch_removed);
	ms_buf_free(&sp->batch_usage);
	free(sp);
}

static void keeper_reconf(ms_spool *sp);

void ms_spool_reconf(ms_spool *sp, const ms_conf *c)
{
	sp->conf = *c; /* (spool_dir is the caller's to keep) */
	keeper_reconf(sp);
}

void ms_spool_reserve(ms_spool *sp, int on)
{
	sp->floor = on ? 1 : 0;
}

uid_t ms_spool_owner(const ms_spool *sp)
{
	return sp->owner;
}

void ms_spool_set_report(ms_spool *sp, ms_spool_report_fn fn, void *ctx)
{
	sp->report = fn;
	sp->report_ctx = ctx;
}

static void report(ms_spool *sp, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void report(ms_spool *sp, const char *fmt, ...)
{
	if (!sp->report)
		return;
	char line[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(line, sizeof line, fmt, ap);
	va_end(ap);
	sp->report(sp->report_ctx, line);
}

const char *ms_spool_dir(const ms_spool *sp)
{
	return sp->dir;
}

ms_status ms_spool_space_ok(ms_spool *sp, uint64_t extra, ms_error *err)
{
	struct statvfs v;
	if (fstatvfs(sp->dfd_data, &v) < 0)
		return ms_error_set(err, MS_ERR_IO, "cannot check free space: %s", strerror(errno));
	uint64_t avail = (uint64_t)v.f_bavail * (uint64_t)v.f_frsize;
	uint64_t floor = sp->floor ? sp->conf.min_free_space / 2 : sp->conf.min_free_space;
	if (avail < floor || avail - floor < extra)
		return ms_error_set(err, MS_ERR_TEMP,
		                    "spool file system has %llu bytes free, below the floor of %llu "
		                    "(min_free_space): try again later",
		                    (unsigned long long)avail, (unsigned long long)floor);
	return MS_OK;
}

/* ---- submission --------------------------------------------------------- */

void ms_spool_new_id(char out[MS_ENV_ID_MAX + 1])
{
	/* Ids sort by arrival: microseconds since the epoch in 13 hex digits,
	 * then 64 random bits. */
	struct timeval tv;
	gettimeofday(&tv, NULL);
	char rnd[17];
	rand_hex(rnd, 8);
	snprintf(out, MS_ENV_ID_MAX + 1, "%013llx%s",
	         (unsigned long long)tv.tv_sec * 1000000ull + (unsigned long long)tv.tv_usec, rnd);
}

ms_status ms_spool_begin(ms_spool *sp, ms_spool_tx **out, ms_error *err)
{
	ms_spool_tx *tx = calloc(1, sizeof *tx);
	if (!tx || !(tx->buf = malloc(TX_BUF))) {
		free(tx);
		return ms_error_set(err, MS_ERR_NOMEM, "out of memory");
	}
	tx->sp = sp;
	ms_spool_new_id(tx->id);
	snprintf(tx->dname, sizeof tx->dname, "%s.d", tx->id);
	snprintf(tx->ename, sizeof tx->ename, "%s.e", tx->id);
	/* Read and write: the queue side reads it back to sign it (DKIM). */
	tx->fd = openat(sp->dfd_tmp, tx->dname, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
	                0600);
	if (tx->fd < 0) {
		ms_status st = sys_err(err, "cannot create spool file", tx->dname);
		free(tx->buf);
		free(tx);
		return st;
	}
	*out = tx;
	return MS_OK;
}

const char *ms_spool_tx_id(const ms_spool_tx *tx)
{
	return tx->id;
}

uint64_t ms_spool_tx_size(const ms_spool_tx *tx)
{
	return tx->size;
}

static ms_status tx_flush(ms_spool_tx *tx, ms_error *err)
{
	if (tx->blen && ms_write_all(tx->fd, tx->buf, tx->blen) < 0) {
		tx->failed = 1;
		return sys_err(err, "cannot write spool file", tx->dname);
	}
	tx->blen = 0;
	return MS_OK;
}

ms_status ms_spool_tx_write(ms_spool_tx *tx, const void *p, size_t n, ms_error *err)
{
	if (tx->failed)
		return ms_error_set(err, MS_ERR_IO, "spool file %s already failed", tx->dname);
	const char *s = p;
	tx->size += n;
	while (n > 0) {
		if (tx->blen == TX_BUF && tx_flush(tx, err) != MS_OK)
			return MS_ERR_IO;
		size_t k = TX_BUF - tx->blen < n ? TX_BUF - tx->blen : n;
		memcpy(tx->buf + tx->blen, s, k);
		tx->blen += k;
		s += k;
		n -= k;
	}
	return MS_OK;
}

ms_status ms_spool_tx_data(ms_spool_tx *tx, int *fd, ms_error *err)
{
	if (tx->failed)
		return ms_error_set(err, MS_ERR_IO, "spool file %s already failed", tx->dname);
	ms_status st = tx_flush(tx, err);
	if (st == MS_OK)
		*fd = tx->fd;
	return st;
}

static void tx_free(ms_spool_tx *tx)
{
	if (tx->fd >= 0)
		close(tx->fd);
	free(tx->buf);
	free(tx);
}

void ms_spool_abort(ms_spool_tx *tx)
{
	if (!tx)
		return;
	unlinkat(tx->sp->dfd_tmp, tx->dname, 0);
	unlinkat(tx->sp->dfd_tmp, tx->ename, 0);
	tx_free(tx);
}

ms_status ms_spool_commit(ms_spool_tx *tx, ms_envelope *env, ms_error *err)
{
	ms_spool *sp = tx->sp;
	ms_status st = tx_flush(tx, err);
	/* 1. The data, durable in tmp/. */
	if (st == MS_OK && fsync(tx->fd) < 0)
		st = sys_err(err, "cannot fsync spool file", tx->dname);
	int fd = tx->fd;
	tx->fd = -1;
	if (close(fd) < 0 && st == MS_OK)
		st = sys_err(err, "cannot close spool file", tx->dname);
	if (st != MS_OK) {
		ms_spool_abort(tx);
		return st;
	}
	/* 2. The envelope, durable in tmp/. */
	memcpy(env->id, tx->id, sizeof env->id);
	env->size = tx->size;
	ms_buf b;
	ms_buf_init(&b, MS_ENV_FILE_MAX);
	st = ms_env_serialize(env, &b, err);
	char hint[MS_HINT_SENDER_MAX + MS_HINT_DOMAIN_MAX + 2];
	size_t hlen = st == MS_OK ? hint_make(env, hint, sizeof hint) : 0;
	if (st == MS_OK)
		st = write_file_hinted(sp->dfd_tmp, tx->ename, ms_buf_ptr(&b), ms_buf_avail(&b), hint,
		                       hlen, err);
	ms_buf_free(&b);
	if (st != MS_OK) {
		ms_spool_abort(tx);
		return st;
	}
	/* 3. The data into place: invisible until its envelope is there. */
	if (renameat(sp->dfd_tmp, tx->dname, sp->dfd_data, tx->id) < 0) {
		st = sys_err(err, "cannot move spool file", tx->dname);
		ms_spool_abort(tx);
		return st;
	}
	if (fsync(sp->dfd_data) < 0) {
		st = sys_err(err, "cannot fsync", "data/");
		unlinkat(sp->dfd_data, tx->id, 0);
		ms_spool_abort(tx);
		return st;
	}
	/* 4. The commit point: the envelope appears in env/. */
	if (renameat(sp->dfd_tmp, tx->ename, sp->dfd_env, tx->id) < 0) {
		st = sys_err(err, "cannot move envelope", tx->ename);
		unlinkat(sp->dfd_data, tx->id, 0);
		ms_spool_abort(tx);
		return st;
	}
	if (fsync(sp->dfd_env) < 0) {
		/* Not known to be durable: take it back rather than claim it. */
		st = sys_err(err, "cannot fsync", "env/");
		unlinkat(sp->dfd_env, tx->id, 0);
		unlinkat(sp->dfd_data, tx->id, 0);
		ms_spool_abort(tx);
		return st;
	}
	tx_free(tx);
	return MS_OK;
}

/* ---- reading and updating ----------------------------------------------- */

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

typedef struct named_mtime {
	char *id;
	int64_t mtime;
} named_mtime;

static int cmp_named(const void *a, const void *b)
{
	return strcmp(((const named_mtime *)a)->id, ((const named_mtime *)b)->id);
}

/* Sort ids and keep each mtime beside its id; -1 without memory. */
static int sort_with_mtimes(char **ids, int64_t *mt, size_t n)
{
	named_mtime *v = n > 1 ? malloc(n * sizeof *v) : NULL;
	if (n > 1 && !v)
		return -1;
	for (size_t i = 0; n > 1 && i < n; i++)
		v[i] = (named_mtime){ ids[i], mt[i] };
	if (v)
		qsort(v, n, sizeof *v, cmp_named);
	for (size_t i = 0; v && i < n; i++) {
		ids[i] = v[i].id;
		mt[i] = v[i].mtime;
	}
	free(v);
	return 0;
}

void ms_spool_ids_free(char **ids, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(ids[i]);
	free(ids);
}

/* A stream over one of the spool's open directories, from its start (the
 * descriptor itself stays ours). */
static DIR *open_dir(int dfd)
{
	int fd = fcntl(dfd, F_DUPFD_CLOEXEC, 0);
	DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
	if (!d && fd >= 0)
		close(fd);
	if (d)
		rewinddir(d);
	return d;
}

/* Move an entry that is no file of ours (a directory, symlink, FIFO, hard
 * link or foreign file planted in env/ or data/) to corrupt/ - the entry
 * itself, never what it points to - and report it once: gone from the
 * directory, it is not found again. */
static void set_aside(ms_spool *sp, int dfd, const char *dirname, const char *name,
                      const char *why)
{
	char aside[MS_ENV_ID_MAX + 64], rnd[9];
	rand_hex(rnd, 4);
	snprintf(aside, sizeof aside, "%.40s.%s.%s", name, dirname, rnd);
	if (renameat(dfd, name, sp->dfd_corrupt, aside) == 0) {
		fsync(sp->dfd_corrupt);
		report(sp, "%s/%s %s: moved to %s/corrupt/%s", dirname, name, why, sp->dir, aside);
	} else {
		/* (a directory of another user cannot be moved by us) */
		report(sp, "%s/%s %s and cannot be moved aside: %s; ignored", dirname, name, why,
		       strerror(errno));
	}
}

static int64_t mtime_ns(const struct stat *st)
{
	return (int64_t)st->st_mtim.tv_sec * 1000000000 + st->st_mtim.tv_nsec;
}

/* Is this listed name a file of ours?  NULL if so, else the problem;
 * *mtime (when asked for) is its mtime from the same stat, -1 when it went
 * meanwhile. */
static const char *entry_problem(const ms_spool *sp, int dfd, const struct dirent *de,
                                 int64_t *mtime)
{
	if (de->d_type != DT_REG && de->d_type != DT_UNKNOWN)
		return de->d_type == DT_LNK ? "is a symbolic link"
		       : de->d_type == DT_DIR ? "is a directory"
		                              : "is not a regular file";
	struct stat st;
	if (fstatat(dfd, de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
		if (mtime)
			*mtime = -1;
		return NULL; /* gone meanwhile */
	}
	if (mtime)
		*mtime = mtime_ns(&st);
	return file_problem(sp, &st);
}

/* Names in a spool directory that are queue ids; with `dirname`, entries
 * that are not files of ours are moved aside instead. */
static ms_status list_dir(ms_spool *sp, int dfd, const char *dirname, char ***ids,
                          int64_t **mtimes, size_t *n, ms_spool_want_fn want, void *ctx,
                          ms_error *err)
{
	*ids = NULL;
	*n = 0;
	if (mtimes)
		*mtimes = NULL;
	int64_t *mt = NULL;
	DIR *d = open_dir(dfd);
	if (!d)
		return ms_error_set(err, MS_ERR_IO, "cannot read spool: %s", strerror(errno));
	size_t cap = 0;
	struct dirent *de;
	ms_status st = MS_OK;
	while ((de = readdir(d))) {
		if (!ms_env_id_ok(de->d_name))
			continue;
		int64_t m = -1;
		/* (A name not looked at is not vouched for: whoever reads it
		 * checks it by fstat, as every read does.) */
		int look = !want || want(ctx, de->d_name);
		if (!look)
			m = MS_SPOOL_MTIME_UNSEEN;
		const char *why = dirname && look ? entry_problem(sp, dfd, de, &m) : NULL;
		if (why) {
			set_aside(sp, dfd, dirname, de->d_name, why);
			continue;
		}
		if (*n == cap) {
			size_t ncap = cap ? cap * 2 : 256;
			char **p = realloc(*ids, ncap * sizeof *p);
			int64_t *q = mtimes ? realloc(mt, ncap * sizeof *q) : NULL;
			if (p)
				*ids = p;
			if (q)
				mt = q;
			if (!p || (mtimes && !q)) {
				st = ms_error_set(err, MS_ERR_NOMEM, "out of memory");
				break;
			}
			cap = ncap;
		}
		if (mtimes)
			mt[*n] = m;
		if (!((*ids)[*n] = strdup(de->d_name))) {
			st = ms_error_set(err, MS_ERR_NOMEM, "out of memory");
			break;
		}
		(*n)++;
	}
	closedir(d);
	/* Names come in directory order: sorted (with their mtimes). */
	if (st == MS_OK && mtimes && sort_with_mtimes(*ids, mt, *n) < 0)
		st = ms_error_set(err, MS_ERR_NOMEM, "out of memory");
	if (st != MS_OK) {
		ms_spool_ids_free(*ids, *n);
		free(mt);
		*ids = NULL;
		*n = 0;
		return st;
	}
	if (mtimes)
		*mtimes = mt;
	else if (*n)
		qsort(*ids, *n, sizeof **ids, cmp_str);
	return MS_OK;
}

/* The same entries as list_dir, one at a time to fn and in directory
 * order, without holding a list: the sweep walks a million envelopes
 * beside the daemon's index, and a second copy of every name was the
 * larger part of the scheduler's peak memory.  Stops early when *stop is
 * set. */
static ms_status each_entry(ms_spool *sp, int dfd, const char *dirname,
                            void (*fn)(ms_spool *sp, const char *name, void *ctx), void *ctx,
                            const volatile int *stop, ms_error *err)
{
	DIR *d = open_dir(dfd);
	if (!d)
		return ms_error_set(err, MS_ERR_IO, "cannot read spool: %s", strerror(errno));
	struct dirent *de;
	while (!(stop && *stop) && (de = readdir(d))) {
		if (!ms_env_id_ok(de->d_name))
			continue;
		const char *why = entry_problem(sp, dfd, de, NULL);
		if (why) {
			set_aside(sp, dfd, dirname, de->d_name, why);
			continue;
		}
		fn(sp, de->d_name, ctx);
	}
	closedir(d);
	return MS_OK;
}

ms_status ms_spool_list(ms_spool *sp, char ***ids, size_t *n, ms_error *err)
{
	return list_dir(sp, sp->dfd_env, "env", ids, NULL, n, NULL, NULL, err);
}

ms_status ms_spool_list_mtimes(ms_spool *sp, char ***ids, int64_t **mtimes, size_t *n,
                               ms_error *err)
{
	return list_dir(sp, sp->dfd_env, "env", ids, mtimes, n, NULL, NULL, err);
}

ms_status ms_spool_list_some_mtimes(ms_spool *sp, ms_spool_want_fn want, void *ctx, char ***ids,
                                    int64_t **mtimes, size_t *n, ms_error *err)
{
	return list_dir(sp, sp->dfd_env, "env", ids, mtimes, n, want, ctx, err);
}

/* Move a damaged message aside: envelope and data go to corrupt/.  0
 * when the envelope was not there to move (removed meanwhile: the
 * message is gone, not damaged, and its data is left alone). */
static int to_corrupt(ms_spool *sp, const char *id)
{
	char name[MS_ENV_ID_MAX + 16];
	snprintf(name, sizeof name, "%s.env", id);
	if (renameat(sp->dfd_env, id, sp->dfd_corrupt, name) < 0 && errno == ENOENT)
		return 0;
	snprintf(name, sizeof name, "%s.data", id);
	renameat(sp->dfd_data, id, sp->dfd_corrupt, name);
	fsync(sp->dfd_corrupt);
	fsync(sp->dfd_env);
	return 1;
}

ms_status ms_spool_read(ms_spool *sp, const char *id, ms_envelope *e, ms_error *err)
{
	int64_t mtime;
	return ms_spool_read_mtime(sp, id, e, &mtime, err);
}

ms_status ms_spool_read_mtime(ms_spool *sp, const char *id, ms_envelope *e, int64_t *mtime,
                              ms_error *err)
{
	ms_env_init(e);
	*mtime = -1;
	if (!ms_env_id_ok(id))
		return ms_error_set(err, MS_ERR_USAGE, "\"%.64s\" is not a queue id", id);
	ms_buf b;
	struct stat est;
	ms_status st = read_file(sp, sp->dfd_env, id, MS_ENV_FILE_MAX, &b, &est, err);
	if (st == MS_OK)
		*mtime = mtime_ns(&est);
	if (st == MS_OK) {
		ms_error perr;
		st = ms_env_parse(ms_buf_ptr(&b), ms_buf_avail(&b), e, &perr);
		if (st == MS_OK && strcmp(e->id, id)) {
			ms_env_free(e);
			st = ms_error_set(&perr, MS_ERR_DATA, "damaged envelope: it names id %s", e->id);
		}
		struct stat ds;
		const char *dwhy = NULL;
		if (st == MS_OK && fstatat(sp->dfd_data, id, &ds, AT_SYMLINK_NOFOLLOW) < 0)
			dwhy = errno == ENOENT ? "missing" : "unreadable";
		else if (st == MS_OK && (dwhy = file_problem(sp, &ds)))
			;
		else if (st == MS_OK && (uint64_t)ds.st_size != e->size)
			dwhy = "not the size recorded";
		if (dwhy) {
			ms_env_free(e);
			struct stat es;
			if (fstatat(sp->dfd_env, id, &es, AT_SYMLINK_NOFOLLOW) < 0 && errno == ENOENT) {
				/* Removed while we read it (delivered: the envelope goes
				 * first, then the data): gone, not damaged. */
				ms_buf_free(&b);
				return ms_error_set(err, MS_ERR_USAGE, "no message %s", id);
			}
			st = ms_error_set(&perr, MS_ERR_DATA, "its data file %s", dwhy);
		}
		if (st != MS_OK) {
			st = to_corrupt(sp, id) ? ms_error_set(err, MS_ERR_DATA,
			                                       "message %s moved to %s/corrupt/: %s", id,
			                                       sp->dir, perr.msg)
			                        : ms_error_set(err, MS_ERR_USAGE, "no message %s", id);
		}
	} else if (st == MS_ERR_DATA) {
		char why[MS_ERROR_MSG_MAX];
		snprintf(why, sizeof why, "%s", err ? err->msg : "");
		if (to_corrupt(sp, id))
			ms_error_set(err, MS_ERR_DATA, "env/%s moved to %s/corrupt/: %s", id, sp->dir, why);
		else
			st = ms_error_set(err, MS_ERR_USAGE, "no message %s", id);
	}
	ms_buf_free(&b);
	return st;
}

ms_status ms_spool_update(ms_spool *sp, const ms_envelope *e, ms_error *err)
{
	ms_buf b;
	ms_buf_init(&b, MS_ENV_FILE_MAX);
	ms_status st = ms_env_serialize(e, &b, err);
	char tmp[MS_ENV_ID_MAX + 32], rnd[17];
	rand_hex(rnd, 8);
	snprintf(tmp, sizeof tmp, "%s.u%s", e->id, rnd);
	if (st == MS_OK)
		st = write_file(sp->dfd_tmp, tmp, ms_buf_ptr(&b), ms_buf_avail(&b), err);
	ms_buf_free(&b);
	if (st != MS_OK)
		return st;
	/* The due-time hint: the envelope's mtime is when it is next due, when
	 * that is later than now (a lost hint only makes a reader look). */
	int64_t due = ms_env_next_due(e);
	if (due != INT64_MAX && due > (int64_t)time(NULL)) {
		struct timespec ts[2] = { { 0, UTIME_OMIT }, { (time_t)due, 0 } };
		(void)utimensat(sp->dfd_tmp, tmp, ts, AT_SYMLINK_NOFOLLOW);
	}
	/* Never bring back an envelope that is gone: a rename would recreate
	 * a message another daemon delivered after breaking a claim we
	 * thought we held (the caller checked it just before; this closes
	 * the rest of that window but an instant). */
	struct stat cur;
	if (fstatat(sp->dfd_env, e->id, &cur, AT_SYMLINK_NOFOLLOW) < 0 && errno == ENOENT) {
		unlinkat(sp->dfd_tmp, tmp, 0);
		return ms_error_set(err, MS_ERR_USAGE, "no message %s (removed meanwhile)", e->id);
	}
	if (renameat(sp->dfd_tmp, tmp, sp->dfd_env, e->id) < 0) {
		st = sys_err(err, "cannot replace envelope", e->id);
		unlinkat(sp->dfd_tmp, tmp, 0);
		return st;
	}
	if (sp->batching) {
		sp->batch_dirty = 1;
		return MS_OK;
	}
	if (fsync(sp->dfd_env) < 0)
		return sys_err(err, "cannot fsync", "env/");
	return MS_OK;
}

void ms_spool_batch_begin(ms_spool *sp)
{
	sp->batching = 1;
}

static ms_status usage_write(ms_spool *sp, const char *lines, size_t n, ms_error *err);

ms_status ms_spool_batch_commit(ms_spool *sp, ms_error *err)
{
	ms_status st = MS_OK;
	sp->batching = 0;
	if (sp->batch_dirty && fsync(sp->dfd_env) < 0)
		st = sys_err(err, "cannot fsync", "env/");
	sp->batch_dirty = 0;
	/* Data goes only once its envelope's removal is durable: a crash
	 * before leaves a message that is sent again, never one without data. */
	for (size_t i = 0; st == MS_OK && i < sp->nbatch_removed; i++)
		if (unlinkat(sp->dfd_data, sp->batch_removed[i], 0) < 0 && errno != ENOENT)
			st = sys_err(err, "cannot remove data", sp->batch_removed[i]);
	sp->nbatch_removed = 0;
	/* (As before batching, a usage line that cannot be written costs the
	 * log that line, never the commit.) */
	if (st == MS_OK && ms_buf_avail(&sp->batch_usage))
		(void)usage_write(sp, ms_buf_ptr(&sp->batch_usage), ms_buf_avail(&sp->batch_usage),
		                  NULL);
	ms_buf_reset(&sp->batch_usage);
	return st;
}

ms_status ms_spool_open_data(ms_spool *sp, const char *id, int *fd, ms_error *err)
{
	if (!ms_env_id_ok(id))
		return ms_error_set(err, MS_ERR_USAGE, "\"%.64s\" is not a queue id", id);
	const char *why = NULL;
	*fd = open_checked(sp, sp->dfd_data, id, &why);
	if (*fd == -2) {
		*fd = -1;
		return ms_error_set(err, MS_ERR_DATA, "message data %s %s: not used", id, why);
	}
	if (*fd < 0)
		return sys_err(err, "cannot open message data", id);
	/* Opened without blocking on a FIFO; reads of a regular file never
	 * return EAGAIN, but the engines expect a blocking descriptor. */
	fcntl(*fd, F_SETFL, fcntl(*fd, F_GETFL) & ~O_NONBLOCK);
	return MS_OK;
}

ms_status ms_spool_remove(ms_spool *sp, const char *id, ms_error *err)
{
	if (!ms_env_id_ok(id))
		return ms_error_set(err, MS_ERR_USAGE, "\"%.64s\" is not a queue id", id);
	if (unlinkat(sp->dfd_env, id, 0) < 0)
		return errno == ENOENT ? ms_error_set(err, MS_ERR_USAGE, "no message %s", id)
		                       : sys_err(err, "cannot remove envelope", id);
	if (sp->batching) {
		if (sp->nbatch_removed == sp->capbatch_removed) {
			size_t nc = sp->capbatch_removed ? sp->capbatch_removed * 2 : 64;
			void *q = realloc(sp->batch_removed, nc * sizeof *sp->batch_removed);
			if (!q)
				goto now; /* no room to remember it: done the slow way */
			sp->batch_removed = q;
			sp->capbatch_removed = nc;
		}
		snprintf(sp->batch_removed[sp->nbatch_removed++], MS_ENV_ID_MAX + 1, "%s", id);
		sp->batch_dirty = 1;
		return MS_OK;
	}
now:
	if (fsync(sp->dfd_env) < 0)
		return sys_err(err, "cannot fsync", "env/");
	if (unlinkat(sp->dfd_data, id, 0) < 0 && errno != ENOENT)
		return sys_err(err, "cannot remove data", id);
	return MS_OK;
}

/* ---- claims ------------------------------------------------------------- */

/*
 * The link() trick: link a token file of ours to `name`, then look at what
 * `name` is.  On NFS a LINK whose reply was lost is retransmitted and fails
 * with EEXIST although it succeeded; the inode behind `name` tells the
 * truth either way.  One token serves many claims (a claim is then one
 * link, not a file created, written and unlinked: creating inodes was the
 * larger part of a claim's cost), so every claim we hold is the same inode
 * as its token: the lease (the inode's mtime) is touched when a claim is
 * made and by the keeper (below), which renews every claim on a token with
 * one touch.  A claim broken by another daemon is its inode, not ours -
 * which is how ms_spool_claim_held sees the loss.
 * Returns 1 if we made `name`, 0 if it existed, -1 on error.
 */

/* ---- the lease keeper ---- */

/* A thread that renews our leases on a clock of its own: the scheduler's
 * rounds can take minutes on a network file system (a thousand envelopes
 * read, a relist), and a lease renewed between rounds ran out while its
 * holder worked.  It touches every token that still has claims (one touch
 * renews up to MS_CLAIM_TOKEN_LINKS claims) and the node lock (the
 * heartbeat other nodes watch), every third of a lease; a token whose
 * claims are all released (one link left) and that is no longer the one
 * new claims go to is removed.  It shares nothing with the caller but the
 * token list, under its mutex, and its own descriptors. */
typedef struct tokref {
	char name[300];
	dev_t dev;
	ino_t ino;
	int current; /* new claims are linked to it */
} tokref;

typedef struct keeper {
	pthread_t t;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int stop;
	int dfd_tmp, lock_fd;  /* the thread's own (dup'd) */
	int64_t period_ms;
	tokref *toks;
	size_t ntoks, captoks;
	int64_t renewed;       /* unix seconds: the last round that renewed all */
} keeper;

static int64_t keeper_period_ms(const ms_conf *c)
{
	int64_t p = (int64_t)c->claim_lease * 1000 / 3;
	return p < 250 ? 250 : p;
}

/* One round: every token touched, the finished ones removed. */
static void keeper_round(keeper *k)
{
	int ok = 1;
	pthread_mutex_lock(&k->mu);
	for (size_t i = 0; i < k->ntoks;) {
		tokref *t = &k->toks[i];
		struct stat st;
		errno = 0;
		int gone = utimensat(k->dfd_tmp, t->name, NULL, AT_SYMLINK_NOFOLLOW) < 0 ||
		           fstatat(k->dfd_tmp, t->name, &st, AT_SYMLINK_NOFOLLOW) < 0 ||
		           st.st_ino != t->ino || st.st_dev != t->dev;
		if (gone && errno != ENOENT && errno != 0)
			ok = 0; /* (an I/O error: not renewed) */
		if (gone || (!t->current && st.st_nlink <= 1)) {
			if (!gone)
				unlinkat(k->dfd_tmp, t->name, 0);
			k->toks[i] = k->toks[--k->ntoks];
			continue;
		}
		i++;
	}
	if (k->lock_fd >= 0 && futimens(k->lock_fd, NULL) < 0)
		ok = 0;
	if (ok)
		k->renewed = now_s();
	pthread_mutex_unlock(&k->mu);
}

static void *keeper_run(void *arg)
{
	keeper *k = arg;
	pthread_mutex_lock(&k->mu);
	while (!k->stop) {
		pthread_mutex_unlock(&k->mu);
		keeper_round(k);
		pthread_mutex_lock(&k->mu);
		struct timespec ts;
		clock_gettime(CLOCK_MONOTONIC, &ts);
		int64_t ns = (int64_t)ts.tv_nsec + (k->period_ms % 1000) * 1000000;
		ts.tv_sec += (time_t)(k->period_ms / 1000 + ns / 1000000000);
		ts.tv_nsec = (long)(ns % 1000000000);
		while (!k->stop && pthread_cond_timedwait(&k->cv, &k->mu, &ts) == 0)
			;
	}
	pthread_mutex_unlock(&k->mu);
	return NULL;
}

ms_status ms_spool_keeper_start(ms_spool *sp, ms_error *err)
{
	if (sp->keeper)
		return MS_OK;
	keeper *k = calloc(1, sizeof *k);
	if (!k)
		return ms_error_set(err, MS_ERR_NOMEM, "out of memory");
	/* (close-on-exec: an agent holding the node's lock would keep the
	 * node "alive" after its daemon died) */
	k->dfd_tmp = fcntl(sp->dfd_tmp, F_DUPFD_CLOEXEC, 0);
	k->lock_fd = sp->lock_fd >= 0 ? fcntl(sp->lock_fd, F_DUPFD_CLOEXEC, 0) : -1;
	k->period_ms = keeper_period_ms(&sp->conf);
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_mutex_init(&k->mu, NULL);
	pthread_cond_init(&k->cv, &ca);
	pthread_condattr_destroy(&ca);
	if (sp->tok.name[0] && sp->tok.pid == getpid()) {
		k->toks = calloc(1, sizeof *k->toks);
		if (k->toks) {
			snprintf(k->toks[0].name, sizeof k->toks[0].name, "%s", sp->tok.name);
			k->toks[0].dev = sp->tok.dev;
			k->toks[0].ino = sp->tok.ino;
			k->toks[0].current = 1;
			k->ntoks = k->captoks = 1;
		}
	}
	if (k->dfd_tmp < 0 || pthread_create(&k->t, NULL, keeper_run, k) != 0) {
		ms_status st = ms_error_set(err, MS_ERR_IO, "cannot start the lease keeper: %s",
		                            strerror(errno ? errno : EAGAIN));
		if (k->dfd_tmp >= 0)
			close(k->dfd_tmp);
		if (k->lock_fd >= 0)
			close(k->lock_fd);
		free(k->toks);
		free(k);
		return st;
	}
	sp->keeper = k;
	return MS_OK;
}

static void keeper_reconf(ms_spool *sp)
{
	if (!sp->keeper)
		return;
	pthread_mutex_lock(&sp->keeper->mu);
	sp->keeper->period_ms = keeper_period_ms(&sp->conf);
	pthread_mutex_unlock(&sp->keeper->mu);
}

int64_t ms_spool_keeper_renewed(ms_spool *sp)
{
	if (!sp->keeper)
		return 0;
	pthread_mutex_lock(&sp->keeper->mu);
	int64_t t = sp->keeper->renewed;
	pthread_mutex_unlock(&sp->keeper->mu);
	return t;
}

static void keeper_stop(ms_spool *sp)
{
	keeper *k = sp->keeper;
	if (!k)
		return;
	pthread_mutex_lock(&k->mu);
	k->stop = 1;
	pthread_cond_signal(&k->cv);
	pthread_mutex_unlock(&k->mu);
	pthread_join(k->t, NULL);
	/* Our tokens' names go (the current one is the caller's, below);
	 * claims still linked keep their inodes, and released ones vanish. */
	for (size_t i = 0; i < k->ntoks; i++)
		if (!k->toks[i].current)
			unlinkat(k->dfd_tmp, k->toks[i].name, 0);
	close(k->dfd_tmp);
	if (k->lock_fd >= 0)
		close(k->lock_fd);
	pthread_mutex_destroy(&k->mu);
	pthread_cond_destroy(&k->cv);
	free(k->toks);
	free(k);
	sp->keeper = NULL;
}

/* A new current token: the keeper renews it from now on (and the old one
 * until its last claim is released). */
static void keeper_add(ms_spool *sp)
{
	keeper *k = sp->keeper;
	pthread_mutex_lock(&k->mu);
	for (size_t i = 0; i < k->ntoks; i++)
		k->toks[i].current = 0;
	if (k->ntoks == k->captoks) {
		size_t nc = k->captoks ? k->captoks * 2 : 4;
		tokref *q = realloc(k->toks, nc * sizeof *q);
		if (q) {
			k->toks = q;
			k->captoks = nc;
		}
	}
	if (k->ntoks < k->captoks) {
		tokref *t = &k->toks[k->ntoks++];
		snprintf(t->name, sizeof t->name, "%s", sp->tok.name);
		t->dev = sp->tok.dev;
		t->ino = sp->tok.ino;
		t->current = 1;
	}
	pthread_mutex_unlock(&k->mu);
}

/* ---- tokens ---- */

static void token_drop(ms_spool *sp)
{
	/* With a keeper, the name stays until the token's claims are all
	 * released: the keeper renews them through it. */
	if (sp->tok.name[0] && sp->tok.pid == getpid() && !sp->keeper)
		unlinkat(sp->dfd_tmp, sp->tok.name, 0);
	sp->tok.name[0] = '\0';
}

static int token_make(ms_spool *sp, const char *node, ms_error *err)
{
	token_drop(sp);
	char token[300], rnd[17], body[256];
	rand_hex(rnd, 8);
	snprintf(token, sizeof token, "claim.%.64s.%ld.%s", node, (long)getpid(), rnd);
	int fd = openat(sp->dfd_tmp, token, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
	                0600);
	if (fd < 0) {
		sys_err(err, "cannot create claim token", token);
		return -1;
	}
	int n = snprintf(body, sizeof body, "%.64s %ld %lld\n", node, (long)getpid(),
	                 (long long)now_s());
	struct stat st;
	int ok = ms_write_all(fd, body, (size_t)n) == 0 && fstat(fd, &st) == 0;
	close(fd);
	if (!ok) {
		sys_err(err, "cannot write claim token", token);
		unlinkat(sp->dfd_tmp, token, 0);
		return -1;
	}
	snprintf(sp->tok.name, sizeof sp->tok.name, "%s", token);
	snprintf(sp->tok.node, sizeof sp->tok.node, "%s", node);
	sp->tok.pid = getpid();
	sp->tok.dev = st.st_dev;
	sp->tok.ino = st.st_ino;
	sp->tok.links = 0;
	sp->tok.touched = now_s();
	if (sp->keeper)
		keeper_add(sp);
	return 0;
}

/* A token ready to link: ours (this process, this node), with room for a
 * name, touched this second (a claim's lease starts when it is made). */
static int token_ready(ms_spool *sp, const char *node, ms_error *err)
{
	char cut[sizeof sp->tok.node];
	snprintf(cut, sizeof cut, "%s", node);
	if (!sp->tok.name[0] || sp->tok.pid != getpid() || strcmp(sp->tok.node, cut) ||
	    sp->tok.links >= MS_CLAIM_TOKEN_LINKS)
		return token_make(sp, node, err);
	int64_t now = now_s();
	if (sp->tok.touched != now) {
		struct stat st;
		/* Gone (swept after an hour unused) or not ours any more: a
		 * fresh one. */
		if (utimensat(sp->dfd_tmp, sp->tok.name, NULL, AT_SYMLINK_NOFOLLOW) < 0 ||
		    fstatat(sp->dfd_tmp, sp->tok.name, &st, AT_SYMLINK_NOFOLLOW) < 0 ||
		    st.st_ino != sp->tok.ino || st.st_dev != sp->tok.dev)
			return token_make(sp, node, err);
		sp->tok.touched = now;
	}
	return 0;
}

static int link_claim(ms_spool *sp, int dfd, const char *name, const char *node,
                      struct stat *out, ms_error *err)
{
	for (int round = 0; round < 2; round++) {
		if (token_ready(sp, node, err) < 0)
			return -1;
		if (linkat(sp->dfd_tmp, sp->tok.name, dfd, name, 0) < 0 &&
		    (errno == EMLINK || errno == ENOENT) && round == 0) {
			/* The token is full after all, or gone: once more with a
			 * fresh one. */
			sp->tok.links = MS_CLAIM_TOKEN_LINKS;
			continue;
		}
		sp->tok.links++; /* the result is judged below, whatever link() said */
		struct stat st;
		if (fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
			return 0; /* released meanwhile: the caller tries again */
		if (st.st_ino == sp->tok.ino && st.st_dev == sp->tok.dev) {
			*out = st;
			return 1;
		}
		return 0;
	}
	return 0;
}

/* ---- staleness without clocks ---- */

/*
 * A claim is stale when its holder has stopped renewing it, and that is
 * judged without comparing anyone's clock with ours: hosts sharing a
 * GlusterFS volume stamp files with their own clocks (its ctime feature),
 * NFS with the server's, and a host whose clock is off by more than the
 * tolerance used to break live claims (duplicates) or to wait for ever.
 * Instead we watch the claim: the first time we find it held we note its
 * inode and mtime and the time by our own monotonic clock; it is stale
 * when, a lease plus clock_skew later by that clock, it is still the same
 * inode with the same mtime - nobody renewed it, whatever clocks stamped
 * it.  Faster, and certain: the holder is known dead (owner_dead).
 */
typedef struct seen_claim {
	dev_t dev;
	ino_t ino;
	struct timespec mtime;
	int64_t first_ms; /* monotonic */
} seen_claim;

#define SEEN_MAX 65536 /* claims watched at once (then forgotten: watched anew) */
#define DEAD_KEEP_MS 1000

static int same_claim(const seen_claim *o, const struct stat *st)
{
	return o->dev == st->st_dev && o->ino == st->st_ino &&
	       o->mtime.tv_sec == st->st_mtim.tv_sec && o->mtime.tv_nsec == st->st_mtim.tv_nsec;
}

/* The node named in a claim or token ("NODE PID TIME"), and its pid. */
static int claim_owner(int dfd, const char *name, char node[65], long *pid)
{
	char buf[256];
	int fd = openat(dfd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0)
		return -1;
	ssize_t r = read(fd, buf, sizeof buf - 1);
	close(fd);
	if (r <= 0)
		return -1;
	buf[r] = '\0';
	size_t n = strspn(buf, NODE_CHARS);
	if (n == 0 || n > 64 || buf[n] != ' ')
		return -1;
	memcpy(node, buf, n);
	node[n] = '\0';
	*pid = strtol(buf + n + 1, NULL, 10);
	return 0;
}

int ms_spool_node_dead(ms_spool *sp, const char *node)
{
	typedef struct { int dead; int64_t at; } verdict;
	int64_t now = ms_now_ms();
	verdict *v = ms_hmap_get(&sp->dead, node);
	if (v && now - v->at < DEAD_KEEP_MS)
		return v->dead;
	char name[96];
	snprintf(name, sizeof name, "lock.%.64s", node);
	int dead = 0;
	int fd = openat(sp->dfd_root, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
	struct stat st;
	if (fd >= 0 && fstat(fd, &st) == 0 && !file_problem(sp, &st) &&
	    flock(fd, LOCK_SH | LOCK_NB) == 0) {
		/* Nobody holds it: no daemon of that node is alive (a daemon
		 * holds its lock from start to exit; flock is seen across
		 * hosts on GlusterFS, and on NFS as a byte-range lock). */
		flock(fd, LOCK_UN);
		dead = 1;
	}
	if (fd >= 0)
		close(fd);
	if (!v && sp->dead.n < SEEN_MAX && (v = malloc(sizeof *v)) &&
	    ms_hmap_put(&sp->dead, node, v) < 0) {
		free(v);
		v = NULL;
	}
	if (v) {
		v->dead = dead;
		v->at = now;
	}
	return dead;
}

/* Is the process that made claim `name` known to be gone?  When it named
 * our own node but is not us (we hold the node's lock, so it has exited),
 * or its node's lock file exists and nobody holds it.  A node without a
 * lock file (an administrator's command) is judged by its lease alone. */
static int owner_dead(ms_spool *sp, int dfd, const char *name)
{
	char node[65];
	long pid;
	if (claim_owner(dfd, name, node, &pid) < 0)
		return 0;
	if (sp->lock_fd >= 0 && !strcmp(node, sp->lock_node))
		return pid != (long)getpid();
	return ms_spool_node_dead(sp, node);
}

/* Has the claim `name` (as `st` shows it) gone unrenewed for a lease plus
 * clock_skew by our clock, or is its holder dead? */
static int claim_stale(ms_spool *sp, int dfd, const char *name, const struct stat *st)
{
	if (owner_dead(sp, dfd, name))
		return 1;
	int64_t now = ms_now_ms();
	seen_claim *o = ms_hmap_get(&sp->seen, name);
	if (o && same_claim(o, st))
		return now - o->first_ms > ((int64_t)sp->conf.claim_lease + sp->conf.clock_skew) * 1000;
	if (!o) {
		if (sp->seen.n >= SEEN_MAX)
			forget_all(&sp->seen);
		if (!(o = malloc(sizeof *o)))
			return 0;
		if (ms_hmap_put(&sp->seen, name, o) < 0) {
			free(o);
			return 0;
		}
	}
	o->dev = st->st_dev;
	o->ino = st->st_ino;
	o->mtime = st->st_mtim;
	o->first_ms = now;
	return 0;
}

static void forget_seen(ms_spool *sp, const char *name)
{
	free(ms_hmap_del(&sp->seen, name));
}

/* Remove claim/name if it is still the stale file `seen` (same inode, not
 * renewed since), holding claim/name.break while deciding. */
static void break_stale(ms_spool *sp, const char *name, const char *node, const struct stat *seen)
{
	char brk[MS_ENV_ID_MAX + 16];
	snprintf(brk, sizeof brk, "%s.break", name);
	struct stat bst, cur;
	ms_error err;
	int got = link_claim(sp, sp->dfd_claim, brk, node, &bst, &err);
	if (got == 0) {
		/* Someone else is breaking it - or died doing so: a break
		 * lock is only ever held for an instant, so one unrenewed for
		 * a lease is abandoned. */
		if (fstatat(sp->dfd_claim, brk, &bst, AT_SYMLINK_NOFOLLOW) == 0 &&
		    claim_stale(sp, sp->dfd_claim, brk, &bst)) {
			unlinkat(sp->dfd_claim, brk, 0);
			forget_seen(sp, brk);
		}
		return;
	}
	if (got < 0)
		return;
	if (fstatat(sp->dfd_claim, name, &cur, AT_SYMLINK_NOFOLLOW) == 0 &&
	    cur.st_ino == seen->st_ino && cur.st_dev == seen->st_dev &&
	    cur.st_mtim.tv_sec == seen->st_mtim.tv_sec && cur.st_mtim.tv_nsec == seen->st_mtim.tv_nsec)
		unlinkat(sp->dfd_claim, name, 0);
	unlinkat(sp->dfd_claim, brk, 0);
	forget_seen(sp, name);
}

ms_status ms_spool_claim(ms_spool *sp, const char *id, const char *node, ms_claim *c,
                         ms_error *err)
{
	if (!ms_env_id_ok(id))
		return ms_error_set(err, MS_ERR_USAGE, "\"%.64s\" is not a queue id", id);
	/* Two attempts at most: the second follows either a claim released
	 * between our link() and our look at it, or a stale claim we broke.
	 * A claim found stale again on the second round is left to its holder
	 * (it may have just renewed): we never break twice in one call. */
	for (int attempt = 0; attempt < 2; attempt++) {
		struct stat st;
		int got = link_claim(sp, sp->dfd_claim, id, node, &st, err);
		if (got < 0)
			return MS_ERR_IO;
		if (got == 1) {
			/* The claim is this inode: a holder that broke ours and made
			 * its own has another one, which is how every later act
			 * (ms_spool_claim_held) knows the claim is no longer ours. */
			snprintf(c->id, sizeof c->id, "%s", id);
			c->dev = st.st_dev;
			c->ino = st.st_ino;
			if (attempt)
				forget_seen(sp, id);
			return MS_OK;
		}
		struct stat held;
		if (fstatat(sp->dfd_claim, id, &held, AT_SYMLINK_NOFOLLOW) < 0)
			continue; /* released meanwhile: try again */
		if (attempt == 0 && claim_stale(sp, sp->dfd_claim, id, &held)) {
			break_stale(sp, id, node, &held);
			continue;
		}
		char owner[65] = "";
		long pid = 0;
		if (claim_owner(sp->dfd_claim, id, owner, &pid) < 0)
			owner[0] = '\0';
		return ms_error_set(err, MS_ERR_TEMP, "message %s is claimed by %s (pid %ld)", id,
		                    owner[0] ? owner : "another process", pid);
	}
	return ms_error_set(err, MS_ERR_TEMP, "message %s is claimed by another process", id);
}

int ms_spool_claim_held(ms_spool *sp, const ms_claim *c)
{
	struct stat st;
	return fstatat(sp->dfd_claim, c->id, &st, AT_SYMLINK_NOFOLLOW) == 0 && st.st_ino == c->ino &&
	       st.st_dev == c->dev;
}

ms_status ms_spool_renew(ms_spool *sp, const ms_claim *c, ms_error *err)
{
	if (!ms_spool_claim_held(sp, c))
		return ms_error_set(err, MS_ERR_TEMP, "claim on %s was lost", c->id);
	/* The lease is the claim file's mtime: touching it is the renewal.
	 * The touch goes by name: should another daemon break the claim
	 * between the check and the touch, its new claim file is touched - a
	 * lease it holds anyway - and ours is not extended; the next check
	 * (every act makes one) finds the loss. */
	if (utimensat(sp->dfd_claim, c->id, NULL, AT_SYMLINK_NOFOLLOW) < 0)
		return sys_err(err, "cannot renew claim", c->id);
	return MS_OK;
}

ms_status ms_spool_release(ms_spool *sp, const ms_claim *c, ms_error *err)
{
	if (!ms_spool_claim_held(sp, c))
		return ms_error_set(err, MS_ERR_TEMP, "claim on %s was lost", c->id);
	if (unlinkat(sp->dfd_claim, c->id, 0) < 0)
		return sys_err(err, "cannot release claim", c->id);
	return MS_OK;
}

/* ---- sweep -------------------------------------------------------------- */

static int exists(int dfd, const char *name)
{
	struct stat st;
	return fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0;
}

/* data/ without env/: a commit that crashed between its two renames
 * (never reported as a success).  Young ones may be a commit in progress
 * right now.  The envelope is looked for first: a data file with one (all
 * but a crash's leftovers) costs that one look and no more (over a network
 * file system each look is a round trip; the checks of the file itself
 * are made when the message is read).  No listing of env/ is held for
 * this: beside the daemon's index, a million names would be its largest
 * allocation. */
static ms_status sweep_data(ms_spool *sp, ms_sweep_report *r, const volatile int *stop,
                            ms_error *err)
{
	DIR *d = open_dir(sp->dfd_data);
	if (!d)
		return ms_error_set(err, MS_ERR_IO, "cannot read data/: %s", strerror(errno));
	struct dirent *de;
	int64_t now = now_s();
	while (!(stop && *stop) && (de = readdir(d))) {
		const char *name = de->d_name, *why;
		struct stat ds;
		if (!ms_env_id_ok(name) || exists(sp->dfd_env, name))
			continue;
		if ((why = entry_problem(sp, sp->dfd_data, de, NULL)))
			set_aside(sp, sp->dfd_data, "data", name, why);
		else if (fstatat(sp->dfd_data, name, &ds, AT_SYMLINK_NOFOLLOW) == 0 &&
		         now - (int64_t)ds.st_mtime > STALE_TMP_SECS && !exists(sp->dfd_env, name) &&
		         unlinkat(sp->dfd_data, name, 0) == 0)
			r->orphans_removed++;
	}
	closedir(d);
	return MS_OK;
}

/* env/: every envelope must parse and have its data. */
static void sweep_env(ms_spool *sp, const char *id, void *ctx)
{
	ms_sweep_report *r = ctx;
	ms_envelope e;
	ms_error rerr;
	ms_status rs = ms_spool_read(sp, id, &e, &rerr);
	if (rs == MS_OK)
		r->checked++;
	else if (rs == MS_ERR_DATA)
		r->corrupt++;
	ms_env_free(&e);
}

/* claim/: claims of dead holders and claims on messages that are gone -
 * never a claim for its age: clocks differ between hosts, and a live
 * holder's unrenewed claims are broken when they are wanted. */
size_t ms_spool_sweep_claims(ms_spool *sp)
{
	size_t n = 0;
	DIR *d = open_dir(sp->dfd_claim);
	struct dirent *de;
	while (d && (de = readdir(d))) {
		struct stat cs;
		if (de->d_name[0] == '.' ||
		    fstatat(sp->dfd_claim, de->d_name, &cs, AT_SYMLINK_NOFOLLOW) < 0)
			continue;
		char base[MS_ENV_ID_MAX + 16];
		snprintf(base, sizeof base, "%.*s", (int)sizeof base - 1, de->d_name);
		char *dot = strchr(base, '.');
		if (dot)
			*dot = '\0';
		if ((!exists(sp->dfd_env, base) || owner_dead(sp, sp->dfd_claim, de->d_name)) &&
		    unlinkat(sp->dfd_claim, de->d_name, 0) == 0) {
			forget_seen(sp, de->d_name);
			n++;
		}
	}
	if (d)
		closedir(d);
	return n;
}

static ms_status sweep(ms_spool *sp, ms_sweep_report *r, const volatile int *stop,
                       int read_envelopes, ms_error *err)
{
	memset(r, 0, sizeof *r);
	int64_t now = now_s();
	/* tmp/: anything not touched for an hour belongs to a dead writer. */
	DIR *d = open_dir(sp->dfd_tmp);
	if (!d)
		return ms_error_set(err, MS_ERR_IO, "cannot read tmp/: %s", strerror(errno));
	struct dirent *de;
	while ((de = readdir(d))) {
		struct stat st;
		if (de->d_name[0] == '.' ||
		    fstatat(sp->dfd_tmp, de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0)
			continue;
		if (now - (int64_t)st.st_mtime > STALE_TMP_SECS &&
		    unlinkat(sp->dfd_tmp, de->d_name, 0) == 0)
			r->tmp_removed++;
	}
	closedir(d);
	ms_status st = sweep_data(sp, r, stop, err);
	if (st != MS_OK)
		return st;
	r->claims_expired = ms_spool_sweep_claims(sp);
	return read_envelopes ? each_entry(sp, sp->dfd_env, "env", sweep_env, r, stop, err) : MS_OK;
}

ms_status ms_spool_sweep(ms_spool *sp, ms_sweep_report *r, ms_error *err)
{
	return sweep(sp, r, NULL, 1, err);
}

ms_status ms_spool_sweep_files(ms_spool *sp, ms_sweep_report *r, const volatile int *stop,
                               ms_error *err)
{
	return sweep(sp, r, stop, 0, err);
}

/* ---- usage log ---------------------------------------------------------- */

/* Whole lines onto the usage log in one write(): O_APPEND keeps
 * concurrent writers' lines whole. */
static ms_status usage_write(ms_spool *sp, const char *lines, size_t n, ms_error *err)
{
	char p[PATH_MAX_];
	snprintf(p, sizeof p, "%s/usage", sp->dir);
	int fd = openat(sp->dfd_root, "usage",
	                O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK, 0600);
	if (fd < 0)
		return sys_err(err, "cannot open", p);
	struct stat ust;
	if (fstat(fd, &ust) < 0 || file_problem(sp, &ust)) {
		close(fd);
		return ms_error_set(err, MS_ERR_DATA, "%s is not a file of the spool's owner", p);
	}
	ssize_t w = write(fd, lines, n);
	ms_status st = w >= 0 && (size_t)w == n ? MS_OK : sys_err(err, "cannot write", p);
	close(fd);
	return st;
}

ms_status ms_spool_usage(ms_spool *sp, const char *purpose, uint64_t octets, const char *id,
                         ms_error *err)
{
	return ms_spool_usage_uid(sp, purpose, octets, id, UINT32_MAX, err);
}

ms_status ms_spool_usage_uid(ms_spool *sp, const char *purpose, uint64_t octets, const char *id,
                             uint32_t uid, ms_error *err)
{
	char line[256], who[32] = "";
	if (uid != UINT32_MAX)
		snprintf(who, sizeof who, " uid=%u", (unsigned)uid);
	int n = snprintf(line, sizeof line, "%lld %.32s %llu %.32s%s\n", (long long)now_s(), purpose,
	                 (unsigned long long)octets, id ? id : "-", who);
	if (sp->batching && ms_buf_append(&sp->batch_usage, line, (size_t)n) == MS_OK)
		return MS_OK; /* written after the commit (batch_usage); full: now */
	return usage_write(sp, line, (size_t)n, err);
}

typedef struct usage_row {
	char day[11];
	char purpose[33];
	uint64_t events, octets;
} usage_row;

static int cmp_row(const void *a, const void *b)
{
	const usage_row *x = a, *y = b;
	int c = strcmp(x->day, y->day);
	return c ? c : strcmp(x->purpose, y->purpose);
}

ms_status ms_spool_usage_sum(ms_spool *sp,
                             void (*fn)(void *ctx, const char *day, const char *purpose,
                                        uint64_t events, uint64_t octets),
                             void *ctx, ms_error *err)
{
	char p[PATH_MAX_];
	snprintf(p, sizeof p, "%s/usage", sp->dir);
	const char *why = NULL;
	int ufd = open_checked(sp, sp->dfd_root, "usage", &why);
	if (ufd == -2)
		return ms_error_set(err, MS_ERR_DATA, "%s %s", p, why);
	FILE *f = ufd >= 0 ? fdopen(ufd, "r") : NULL;
	if (!f) {
		if (ufd >= 0)
			close(ufd);
		return errno == ENOENT ? MS_OK : sys_err(err, "cannot open", p);
	}
	usage_row *rows = NULL;
	size_t n = 0, cap = 0;
	char line[512];
	ms_status st = MS_OK;
	while (fgets(line, sizeof line, f)) {
		long long t;
		char purpose[33];
		unsigned long long octets;
		if (sscanf(line, "%lld %32s %llu", &t, purpose, &octets) != 3)
			continue; /* a torn line from a crash: skip it */
		time_t tt = (time_t)t;
		struct tm tm;
		char day[11];
		if (!gmtime_r(&tt, &tm) || !strftime(day, sizeof day, "%Y-%m-%d", &tm))
			continue;
		size_t i = 0;
		while (i < n && (strcmp(rows[i].day, day) || strcmp(rows[i].purpose, purpose)))
			i++;
		if (i == n) {
			if (n == cap) {
				size_t ncap = cap ? cap * 2 : 16;
				usage_row *q = realloc(rows, ncap * sizeof *q);
				if (!q) {
					st = ms_error_set(err, MS_ERR_NOMEM, "out of memory");
					break;
				}
				rows = q;
				cap = ncap;
			}
			memset(&rows[n], 0, sizeof rows[n]);
			memcpy(rows[n].day, day, sizeof day);
			snprintf(rows[n].purpose, sizeof rows[n].purpose, "%s", purpose);
			n++;
		}
		rows[i].events++;
		rows[i].octets += octets;
	}
	fclose(f);
	if (st == MS_OK) {
		if (n)
			qsort(rows, n, sizeof *rows, cmp_row);
		for (size_t i = 0; i < n; i++)
			fn(ctx, rows[i].day, rows[i].purpose, rows[i].events, rows[i].octets);
	}
	free(rows);
	return st;
}

/* ---- change detection and wake-ups ------------------------------------- */

int64_t ms_spool_env_mtime(ms_spool *sp, const char *id)
{
	struct stat st;
	if (fstatat(sp->dfd_env, id, &st, AT_SYMLINK_NOFOLLOW) < 0)
		return -1;
	return mtime_ns(&st);
}

/* Wake FIFOs live in wake/, a directory only the owner can write: no one
 * else can plant a name there, and each entry is checked before use. */
static void wake_name(const char *node, char *out, size_t n)
{
	snprintf(out, n, "%.64s.%ld", node, (long)getpid());
}

int ms_spool_wake_dirfd(const ms_spool *sp)
{
	return sp->dfd_wake;
}

ms_status ms_spool_lock_node(ms_spool *sp, const char *node, int *fd, long *holder,
                             ms_error *err)
{
	char name[96];
	*fd = -1;
	*holder = 0;
	snprintf(name, sizeof name, "lock.%.64s", node);
	int lfd = openat(sp->dfd_root, name, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (lfd < 0)
		return sys_err(err, "cannot open", name);
	struct stat st;
	if (fstat(lfd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_uid != sp->owner ||
	    st.st_nlink != 1) {
		close(lfd);
		return ms_error_set(err, MS_ERR_IO, "%s is not our lock file", name);
	}
	/* Another node's liveness test holds it shared for an instant
	 * (ms_spool_node_dead): a few tries before it counts as taken. */
	int lr;
	for (int i = 0; (lr = flock(lfd, LOCK_EX | LOCK_NB)) < 0 && errno == EWOULDBLOCK && i < 20; i++)
		nanosleep(&(struct timespec){ 0, 50 * 1000000 }, NULL);
	if (lr < 0) {
		int e = errno;
		char buf[32] = "";
		ssize_t n = pread(lfd, buf, sizeof buf - 1, 0);
		if (n > 0)
			buf[n] = '\0', *holder = strtol(buf, NULL, 10);
		close(lfd);
		if (e == EWOULDBLOCK)
			return ms_error_set(err, MS_ERR_TEMP,
			                    "another daemon (pid %ld) runs with node name %s on this spool",
			                    *holder, node);
		errno = e;
		return sys_err(err, "cannot lock", name);
	}
	/* Ours: the pid, for the next one's message. */
	char pid[32];
	int k = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
	if (ftruncate(lfd, 0) < 0 || pwrite(lfd, pid, (size_t)k, 0) != k) {
		close(lfd);
		return sys_err(err, "cannot write", name);
	}
	*fd = lfd;
	sp->lock_fd = lfd; /* (still the caller's to close, after ms_spool_close) */
	snprintf(sp->lock_node, sizeof sp->lock_node, "%.64s", node);
	return MS_OK;
}

/* Is `name` in wake/ an endpoint of `node` (NODE.PID or NODE.PID.udp)? */
static int endpoint_of(const char *name, const char *node)
{
	size_t n = strlen(node);
	if (strncmp(name, node, n) || name[n] != '.')
		return 0;
	const char *p = name + n + 1;
	size_t d = strspn(p, "0123456789");
	return d > 0 && (!p[d] || !strcmp(p + d, ".udp"));
}

ms_status ms_spool_wake_listen(ms_spool *sp, const char *node, int *fd, ms_error *err)
{
	char name[128];
	wake_name(node, name, sizeof name);
	/* Endpoints our node left behind (we hold its lock: their daemons
	 * are gone) go; nobody else's is ever removed - a FIFO another host
	 * listens on cannot be opened here (ENXIO), and that proves nothing. */
	DIR *d = open_dir(sp->dfd_wake);
	struct dirent *de;
	while (d && (de = readdir(d)))
		if (endpoint_of(de->d_name, node))
			unlinkat(sp->dfd_wake, de->d_name, 0);
	if (d)
		closedir(d);
	if (mkfifoat(sp->dfd_wake, name, 0600) < 0)
		return sys_err(err, "cannot make wake/", name);
	/* Read-write, so the FIFO never reports EOF between writers. */
	if ((*fd = openat(sp->dfd_wake, name, O_RDWR | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC)) < 0)
		return sys_err(err, "cannot open wake/", name);
	struct stat st;
	if (fstat(*fd, &st) < 0 || !S_ISFIFO(st.st_mode) || st.st_uid != sp->owner) {
		close(*fd);
		*fd = -1;
		return ms_error_set(err, MS_ERR_IO, "wake/%s is not our FIFO", name);
	}
	return MS_OK;
}

void ms_spool_wake_unlisten(ms_spool *sp, const char *node, int fd)
{
	char name[128], udp[140];
	wake_name(node, name, sizeof name);
	snprintf(udp, sizeof udp, "%s.udp", name);
	unlinkat(sp->dfd_wake, name, 0);
	unlinkat(sp->dfd_wake, udp, 0);
	if (fd >= 0)
		close(fd);
}

static void wake_with(ms_spool *sp, const char *msg, size_t n);

void ms_spool_wake(ms_spool *sp, int changed)
{
	/* "n\n": something new, no id (the daemon lists env/); "c": changed;
	 * "f": flushed (changed, and back-off ends). */
	if (changed == 2)
		wake_with(sp, "f", 1);
	else if (changed)
		wake_with(sp, "c", 1);
	else
		wake_with(sp, "n\n", 2);
}

void ms_spool_wake_id(ms_spool *sp, const char *id)
{
	char msg[MS_ENV_ID_MAX + 3];
	int n = snprintf(msg, sizeof msg, "n%s\n", id);
	if (n > 0 && (size_t)n < sizeof msg && ms_env_id_ok(id))
		wake_with(sp, msg, (size_t)n);
	else
		ms_spool_wake(sp, 0);
}

/* One write to every daemon's FIFO: at most PIPE_BUF octets, so it arrives
 * whole or not at all (a full FIFO is already awake; its reader relists).
 * A FIFO nobody here reads (ENXIO) is a daemon on another host, or a dead
 * one: nothing is removed (only a node's own daemon removes its
 * endpoints); daemons relay what they read to other hosts (wakenet.h). */
static void wake_with(ms_spool *sp, const char *msg, size_t n)
{
	DIR *d = open_dir(sp->dfd_wake);
	if (!d)
		return;
	struct dirent *de;
	while ((de = readdir(d))) {
		size_t len = strlen(de->d_name);
		if (de->d_name[0] == '.' || !strncmp(de->d_name, "key", 3) ||
		    (len > 4 && (!strcmp(de->d_name + len - 4, ".udp") ||
		                 !strcmp(de->d_name + len - 4, ".tmp"))))
			continue; /* (wakenet.h's files) */
		int fd = openat(sp->dfd_wake, de->d_name, O_WRONLY | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC);
		if (fd < 0) {
			continue; /* ENXIO: read on another host (its daemon relays), or nowhere */
		}
		struct stat st;
		if (fstat(fd, &st) == 0 && S_ISFIFO(st.st_mode) && st.st_uid == sp->owner)
			(void)!write(fd, msg, n);
		close(fd);
	}
	closedir(d);
}

int ms_spool_once_per(ms_spool *sp, const char *name, int64_t seconds)
{
	int fd = openat(sp->dfd_root, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
	                0600);
	if (fd >= 0) { /* the first time: allowed, and now stamped */
		close(fd);
		return 1;
	}
	fd = openat(sp->dfd_root, name, O_WRONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
	struct stat st;
	if (fd < 0 || fstat(fd, &st) < 0 || file_problem(sp, &st)) {
		if (fd >= 0)
			close(fd);
		return 1; /* no stamp to be had: not a reason to refuse */
	}
	int64_t now = now_s(), last = (int64_t)st.st_mtime;
	int allowed = last > now || now - last >= seconds; /* (a stamp from the future: a clock step) */
	if (allowed)
		futimens(fd, NULL);
	close(fd);
	return allowed;
}

/* ---- nodes ---------------------------------------------------------------- */

ms_status ms_spool_each_node(ms_spool *sp, void (*fn)(void *ctx, const char *node,
                                                      const struct stat *st),
                             void *ctx, ms_error *err)
{
	DIR *d = open_dir(sp->dfd_root);
	if (!d)
		return ms_error_set(err, MS_ERR_IO, "cannot read %s: %s", sp->dir, strerror(errno));
	struct dirent *de;
	while ((de = readdir(d))) {
		const char *node = de->d_name + 5;
		size_t n = strlen(node);
		struct stat st;
		if (strncmp(de->d_name, "lock.", 5) || n == 0 || n > 64 ||
		    strspn(node, NODE_CHARS) != n ||
		    fstatat(sp->dfd_root, de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 ||
		    file_problem(sp, &st))
			continue;
		fn(ctx, node, &st);
	}
	closedir(d);
	return MS_OK;
}
