/*
 * test_spool.c - the spool: commit, read, update, remove, damage handling,
 * the sweep, and claims contended by two and then eight processes.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#include "mailspool/spool.h"
#include "mailspool/submit.h"
#include "tmpspool.h"

/* Short leases, no skew: claims can be taken over within the test. */
static void short_leases(ms_conf *c)
{
	c->claim_lease = 1;
	c->clock_skew = 0;
}

static void fresh_spool(ms_conf *c, ms_spool **sp)
{
	tmp_spool(c, sp, short_leases);
}

static size_t count_dir(const char *sub)
{
	char p[256];
	snprintf(p, sizeof p, "%s/spool/%s", root, sub);
	DIR *d = opendir(p);
	size_t n = 0;
	struct dirent *de;
	while (d && (de = readdir(d)))
		n += de->d_name[0] != '.';
	if (d)
		closedir(d);
	return n;
}

/* Queue a message to rcpts through ms_submit from a string. */
static void queue_to(ms_spool *sp, const ms_conf *c, const char *msg, const char **rcpts,
                     size_t nrcpts, char *id)
{
	int pv[2];
	assert_int_equal(pipe(pv), 0);
	assert_int_equal(write(pv[1], msg, strlen(msg)), (ssize_t)strlen(msg));
	close(pv[1]);
	ms_submit_opts o = { .sender = "s@example.test", .user = "tester", .rcpts = rcpts,
		                 .nrcpts = nrcpts };
	ms_submit_result res;
	ms_error err;
	if (ms_submit(sp, c, &o, pv[0], &res, &err) != MS_OK)
		fail_msg("submit: %s", err.msg);
	close(pv[0]);
	if (id)
		memcpy(id, res.id, sizeof res.id);
}

static void queue_one(ms_spool *sp, const ms_conf *c, const char *msg, char *id)
{
	const char *rcpts[] = { "a@example.test", "b@example.test" };
	queue_to(sp, c, msg, rcpts, 2, id);
}

/* The destination hint: left by a commit when every recipient has one
 * domain (lower-cased), not otherwise, not after an update; a malformed
 * one is no hint. */
static void test_destination_hint(void **state)
{
	(void)state;
	ms_conf c;
	ms_spool *sp;
	fresh_spool(&c, &sp);
	char one[MS_ENV_ID_MAX + 1], two[MS_ENV_ID_MAX + 1];
	const char *same[] = { "a@Example.TEST", "b@example.test" };
	const char *mixed[] = { "a@example.test", "b@other.test" };
	queue_to(sp, &c, "Subject: x\n\nbody\n", same, 2, one);
	queue_to(sp, &c, "Subject: y\n\nbody\n", mixed, 2, two);
	char sender[MS_HINT_SENDER_MAX + 1], domain[MS_HINT_DOMAIN_MAX + 1];
	char path[512];
	snprintf(path, sizeof path, "%s/spool/env/%s", root, one);
	if (setxattr(path, "user.mailspool.probe", "1", 1, 0) < 0 && errno == ENOTSUP) {
		tmp_spool_remove(sp);
		skip(); /* a file system without user attributes: nothing to test */
	}
	assert_int_equal(ms_spool_dest_hint(sp, one, sender, domain), 1);
	assert_string_equal(sender, "s@example.test");
	assert_string_equal(domain, "example.test");
	assert_int_equal(ms_spool_dest_hint(sp, two, sender, domain), 0);
	assert_int_equal(ms_spool_dest_hint(sp, "../env", sender, domain), 0);
	/* Malformed: two line feeds, a CR, no domain. */
	static const char *const bad[] = { "s@x\nexample.test\nmore", "s@x\r\nexample.test",
		                                "s@x\n" };
	for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
		assert_int_equal(setxattr(path, "user.mailspool.dest", bad[i], strlen(bad[i]), 0), 0);
		assert_int_equal(ms_spool_dest_hint(sp, one, sender, domain), 0);
	}
	/* An update writes a new envelope, without a hint. */
	ms_envelope e;
	ms_error err;
	assert_int_equal(ms_spool_read(sp, one, &e, &err), MS_OK);
	assert_int_equal(ms_spool_update(sp, &e, &err), MS_OK);
	ms_env_free(&e);
	char v[64];
	snprintf(path, sizeof path, "%s/spool/env/%s", root, one);
	assert_int_equal(getxattr(path, "user.mailspool.dest", v, sizeof v), -1);
	assert_int_equal(ms_spool_dest_hint(sp, one, sender, domain), 0);
	/* Gone: said so. */
	assert_int_equal(ms_spool_remove(sp, one, &err), MS_OK);
	assert_int_equal(ms_spool_dest_hint(sp, one, sender, domain), -1);
	tmp_spool_remove(sp);
}

static void test_commit_read_update_remove(void **state)
{
	(void)state;
	ms_conf c;
	ms_spool *sp;
	fresh_spool(&c, &sp);
	char id[MS_ENV_ID_MAX + 1];
	queue_one(sp, &c, "Subject: x\n\nbody\n", id);
	char **ids;
	size_t n;
	ms_error err;
	assert_int_equal(ms_spool_list(sp, &ids, &n, &err), MS_OK);
	assert_int_equal(n, 1);
	assert_string_equal(ids[0], id);
	ms_spool_ids_free(ids, n);
	ms_envelope e;
	assert_int_equal(ms_spool_read(sp, id, &e, &err), MS_OK);
	assert_string_equal(e.sender, "s@example.test");
	assert_int_equal(e.nrcpts, 2);
	/* The data: CRLF lines, with the added fields. */
	int fd;
	assert_int_equal(ms_spool_open_data(sp, id, &fd, &err), MS_OK);
	char buf[1024];
	ssize_t k = read(fd, buf, sizeof buf - 1);
	close(fd);
	assert_true(k > 0);
	buf[k] = '\0';
	assert_int_equal((uint64_t)k, e.size);
	assert_non_null(strstr(buf, "Subject: x\r\nFrom: s@example.test\r\nDate: "));
	assert_non_null(strstr(buf, "\r\nMessage-ID: <"));
	assert_non_null(strstr(buf, "\r\n\r\nbody\r\n"));
	/* Update and read back. */
	e.flags |= MS_ENV_HOLD;
	assert_int_equal(ms_env_record_attempt(&e.rcpts[1], 77, 451, "4.3.0", "later", NULL, &err), MS_OK);
	assert_int_equal(ms_spool_update(sp, &e, &err), MS_OK);
	ms_env_free(&e);
	assert_int_equal(ms_spool_read(sp, id, &e, &err), MS_OK);
	assert_true(e.flags & MS_ENV_HOLD);
	assert_string_equal(e.rcpts[1].text, "later");
	ms_env_free(&e);
	assert_int_equal(count_dir("tmp"), 0);
	assert_int_equal(ms_spool_remove(sp, id, &err), MS_OK);
	assert_int_equal(count_dir("env") + count_dir("data"), 0);
	assert_int_equal(ms_spool_read(sp, id, &e, &err), MS_ERR_USAGE);
	tmp_spool_remove(sp);
}

/* A committed envelope cut short at every offset goes to corrupt/, with its
 * data, and is never read as a message. */
static void test_truncation_moves_to_corrupt(void **state)
{
	(void)state;
	ms_conf c;
	ms_spool *sp;
	fresh_spool(&c, &sp);
	char id[MS_ENV_ID_MAX + 1], path[256], save[8192];
	queue_one(sp, &c, "Subject: y\n\nbody\n", id);
	snprintf(path, sizeof path, "%s/spool/env/%s", root, id);
	int fd = open(path, O_RDONLY);
	ssize_t len = read(fd, save, sizeof save);
	close(fd);
	assert_true(len > 0);
	char dpath[256], cpath[256], cdpath[256];
	snprintf(dpath, sizeof dpath, "%s/spool/data/%s", root, id);
	snprintf(cpath, sizeof cpath, "%s/spool/corrupt/%s.env", root, id);
	snprintf(cdpath, sizeof cdpath, "%s/spool/corrupt/%s.data", root, id);
	for (ssize_t cut = 0; cut < len; cut++) {
		fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0640);
		assert_int_equal(write(fd, save, (size_t)cut), cut);
		close(fd);
		ms_envelope e;
		ms_error err;
		if (ms_spool_read(sp, id, &e, &err) != MS_ERR_DATA)
			fail_msg("envelope cut at %zd of %zd was read", cut, len);
		assert_non_null(strstr(err.msg, "corrupt"));
		struct stat st;
		assert_int_equal(stat(path, &st), -1); /* no longer queued */
		assert_int_equal(stat(cpath, &st), 0);
		/* Put the data back for the next round. */
		assert_int_equal(rename(cdpath, dpath), 0);
		unlink(cpath);
	}
	/* Data missing or of the wrong size: damaged too. */
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0640);
	assert_int_equal(write(fd, save, (size_t)len), len);
	close(fd);
	fd = open(dpath, O_WRONLY | O_APPEND);
	assert_int_equal(write(fd, "x", 1), 1);
	close(fd);
	ms_envelope e;
	ms_error err;
	assert_int_equal(ms_spool_read(sp, id, &e, &err), MS_ERR_DATA);
	assert_int_equal(count_dir("corrupt"), 2);
	tmp_spool_remove(sp);
}

static void test_sweep(void **state)
{
	(void)state;
	ms_conf c;
	ms_spool *sp;
	fresh_spool(&c, &sp);
	char id[MS_ENV_ID_MAX + 1], p[256];
	queue_one(sp, &c, "Subject: z\n\nbody\n", id);
	/* What a crash leaves: an old tmp file, an old orphaned data file, a
	 * young one (a commit in progress: kept), a claim of a node whose
	 * daemon is gone (its lock file free), a claim on nothing, and a
	 * claim of a node without a lock file (judged by its lease when it is
	 * wanted, never by its age: kept). */
	struct timespec old[2] = { { time(NULL) - 7200, 0 }, { time(NULL) - 7200, 0 } };
	const char *files[] = { "tmp/deadbeef.d", "data/00000orphan", "data/00000young",
		                    "claim/00000gone" };
	for (size_t i = 0; i < 4; i++) {
		snprintf(p, sizeof p, "%s/spool/%s", root, files[i]);
		int fd = open(p, O_WRONLY | O_CREAT, 0640);
		close(fd);
		if (i < 2)
			utimensat(AT_FDCWD, p, old, 0);
	}
	ms_claim cl, cl2;
	ms_error err;
	char id2[MS_ENV_ID_MAX + 1];
	queue_one(sp, &c, "Subject: y\n\nbody\n", id2);
	assert_int_equal(ms_spool_claim(sp, id, "dead-node", &cl, &err), MS_OK);
	assert_int_equal(ms_spool_claim(sp, id2, "admin-node", &cl2, &err), MS_OK);
	snprintf(p, sizeof p, "%s/spool/lock.dead-node", root);
	close(open(p, O_WRONLY | O_CREAT, 0600));
	ms_sweep_report r;
	assert_int_equal(ms_spool_sweep(sp, &r, &err), MS_OK);
	assert_int_equal(r.tmp_removed, 1);
	assert_int_equal(r.orphans_removed, 1);
	assert_int_equal(r.claims_expired, 2);
	assert_false(ms_spool_claim_held(sp, &cl));
	assert_true(ms_spool_claim_held(sp, &cl2));
	assert_int_equal(ms_spool_release(sp, &cl2, &err), MS_OK);
	assert_int_equal(r.checked, 2);
	assert_int_equal(r.corrupt, 0);
	assert_int_equal(count_dir("data"), 3); /* the messages' and the young orphan */
	tmp_spool_remove(sp);
}

/* The daemon's sweep reads no envelope (a damaged one is found when it is
 * read) and looks only at data files the listing of env/ lacks; the
 * listing's mtimes are the envelopes'. */
static void test_sweep_files_and_listing(void **state)
{
	(void)state;
	ms_conf c;
	ms_spool *sp;
	fresh_spool(&c, &sp);
	char ids[3][MS_ENV_ID_MAX + 1], p[256], q[256];
	for (int i = 0; i < 3; i++)
		queue_one(sp, &c, "Subject: s\n\nbody\n", ids[i]);
	snprintf(p, sizeof p, "%s/spool/env/%s", root, ids[1]);
	int fd = open(p, O_WRONLY | O_TRUNC);
	assert_int_equal(write(fd, "garbage\n", 8), 8);
	close(fd);
	struct timespec later[2] = { { time(NULL) + 3600, 0 }, { time(NULL) + 3600, 0 } };
	snprintf(p, sizeof p, "%s/spool/env/%s", root, ids[2]);
	assert_int_equal(utimensat(AT_FDCWD, p, later, 0), 0);
	struct timespec old[2] = { { time(NULL) - 7200, 0 }, { time(NULL) - 7200, 0 } };
	snprintf(p, sizeof p, "%s/spool/data/00000orphan", root);
	close(open(p, O_WRONLY | O_CREAT, 0640));
	utimensat(AT_FDCWD, p, old, 0);
	snprintf(p, sizeof p, "%s/spool/data/00000planted", root);
	snprintf(q, sizeof q, "%s/spool/usage", root);
	assert_int_equal(symlink(q, p), 0);

	char **v, **w;
	int64_t *mt;
	size_t n, m;
	ms_error err;
	assert_int_equal(ms_spool_list_mtimes(sp, &v, &mt, &n, &err), MS_OK);
	assert_int_equal(ms_spool_list(sp, &w, &m, &err), MS_OK);
	assert_int_equal(n, 3);
	assert_int_equal(m, 3);
	for (size_t i = 0; i < n; i++) {
		assert_string_equal(v[i], w[i]);
		assert_true(mt[i] > 0);
		assert_true(mt[i] == ms_spool_env_mtime(sp, v[i]));
	}
	assert_string_equal(v[2], ids[2]);
	assert_true(mt[2] / 1000000000 == later[1].tv_sec);
	ms_spool_ids_free(v, n);
	ms_spool_ids_free(w, m);
	free(mt);

	ms_sweep_report r;
	assert_int_equal(ms_spool_sweep_files(sp, &r, NULL, &err), MS_OK);
	assert_int_equal(r.orphans_removed, 1);
	assert_int_equal(r.checked, 0);
	assert_int_equal(r.corrupt, 0);
	assert_int_equal(count_dir("env"), 3);     /* the damaged one too: not read */
	assert_int_equal(count_dir("data"), 3);    /* the messages' */
	assert_int_equal(count_dir("corrupt"), 1); /* the planted link, set aside */
	ms_envelope e;
	assert_int_equal(ms_spool_read(sp, ids[1], &e, &err), MS_ERR_DATA); /* found when read */
	assert_int_equal(count_dir("env"), 2);
	tmp_spool_remove(sp);
}

static size_t usage_lines(void)
{
	char p[256], line[256];
	snprintf(p, sizeof p, "%s/spool/usage", root);
	FILE *f = fopen(p, "r");
	size_t n = 0;
	while (f && fgets(line, sizeof line, f))
		n += strstr(line, " sent ") != NULL;
	if (f)
		fclose(f);
	return n;
}

/* Usage lines of a batch reach the log after its commit, all at once;
 * outside a batch at once. */
static void test_usage_lines_follow_the_commit(void **state)
{
	(void)state;
	ms_conf c;
	ms_spool *sp;
	fresh_spool(&c, &sp);
	ms_error err;
	assert_int_equal(ms_spool_usage(sp, "sent", 10, "0000000000000aaaa", &err), MS_OK);
	assert_int_equal(usage_lines(), 1);
	ms_spool_batch_begin(sp);
	for (int i = 0; i < 3; i++)
		assert_int_equal(ms_spool_usage(sp, "sent", 10, "0000000000000bbbb", &err), MS_OK);
	assert_int_equal(usage_lines(), 1);
	assert_int_equal(ms_spool_batch_commit(sp, &err), MS_OK);
	assert_int_equal(usage_lines(), 4);
	ms_spool_batch_begin(sp);
	assert_int_equal(ms_spool_batch_commit(sp, &err), MS_OK); /* nothing pending: nothing */
	assert_int_equal(usage_lines(), 4);
	tmp_spool_remove(sp);
}

/* N processes claim every message of a spool at once: each is claimed by
 * exactly one of them. */
static void contend(int procs, int msgs)
{
	ms_conf c;
	ms_spool *sp;
	fresh_spool(&c, &sp);
	c.claim_lease = 300; /* nobody breaks anybody here */
	char (*ids)[MS_ENV_ID_MAX + 1] = calloc((size_t)msgs, sizeof *ids);
	for (int i = 0; i < msgs; i++)
		queue_one(sp, &c, "Subject: c\n\nbody\n", ids[i]);
	int *owner = mmap(NULL, (size_t)msgs * sizeof *owner, PROT_READ | PROT_WRITE,
	                  MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	int *wins = mmap(NULL, (size_t)msgs * sizeof *wins, PROT_READ | PROT_WRITE,
	                 MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	memset(wins, 0, (size_t)msgs * sizeof *wins);
	for (int p = 0; p < procs; p++) {
		if (fork() == 0) {
			ms_spool *mine;
			ms_error err;
			if (ms_spool_open(&c, 0, &mine, &err) != MS_OK)
				_exit(2);
			char node[32];
			snprintf(node, sizeof node, "node%d", p);
			/* Start at different places so they collide everywhere. */
			for (int k = 0; k < msgs; k++) {
				int i = (k + p * msgs / procs) % msgs;
				ms_claim cl;
				if (ms_spool_claim(mine, ids[i], node, &cl, &err) == MS_OK) {
					__atomic_add_fetch(&wins[i], 1, __ATOMIC_SEQ_CST);
					owner[i] = p;
				}
			}
			ms_spool_close(mine);
			_exit(0);
		}
	}
	int status;
	while (wait(&status) > 0)
		assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	for (int i = 0; i < msgs; i++)
		if (wins[i] != 1)
			fail_msg("message %d claimed %d times by %d processes", i, wins[i], procs);
	munmap(owner, (size_t)msgs * sizeof *owner);
	munmap(wins, (size_t)msgs * sizeof *wins);
	free(ids);
	tmp_spool_remove(sp);
}

static void test_two_claimants(void **state)
{
	(void)state;
	contend(2, 200);
}

static void test_eight_claimants(void **state)
{
	(void)state;
	contend(8, 200);
}

/* A claimant killed while holding a claim: nobody may take it during the
 * lease; after lease + skew another takes it over; the dead one's claim is
 * no longer its own. */
static void test_takeover_after_lease(void **state)
{
	(void)state;
	ms_conf c;
	ms_spool *sp;
	fresh_spool(&c, &sp);
	c.claim_lease = 2;
	c.clock_skew = 1;
	ms_spool_close(sp);
	ms_error err;
	assert_int_equal(ms_spool_open(&c, 0, &sp, &err), MS_OK);
	char id[MS_ENV_ID_MAX + 1];
	queue_one(sp, &c, "Subject: k\n\nbody\n", id);
	pid_t pid = fork();
	if (pid == 0) {
		ms_claim cl;
		if (ms_spool_claim(sp, id, "doomed", &cl, NULL) != MS_OK)
			_exit(1);
		kill(getpid(), SIGKILL);
	}
	int status;
	waitpid(pid, &status, 0);
	assert_true(WIFSIGNALED(status));
	time_t t0 = time(NULL);
	ms_claim mine;
	assert_int_equal(ms_spool_claim(sp, id, "survivor", &mine, &err), MS_ERR_TEMP);
	assert_non_null(strstr(err.msg, "doomed"));
	while (ms_spool_claim(sp, id, "survivor", &mine, &err) != MS_OK) {
		assert_int_equal(err.status, MS_ERR_TEMP);
		assert_true(time(NULL) - t0 < 10);
		usleep(200000);
	}
	assert_true(time(NULL) - t0 >= 2); /* not before the lease (plus skew) ran out */
	assert_true(ms_spool_claim_held(sp, &mine));
	assert_int_equal(ms_spool_renew(sp, &mine, &err), MS_OK);
	assert_int_equal(ms_spool_release(sp, &mine, &err), MS_OK);
	assert_false(ms_spool_claim_held(sp, &mine));
	assert_int_equal(ms_spool_release(sp, &mine, &err), MS_ERR_TEMP);
	tmp_spool_remove(sp);
}

/* The lease keeper renews our claims whatever we do; a claim whose node's
 * daemon is gone (its lock free) is broken at once, one whose node's lock
 * is held is not. */
static void test_keeper_and_dead_nodes(void **state)
{
	(void)state;
	ms_conf c;
	ms_spool *sp, *other;
	fresh_spool(&c, &sp);
	c.claim_lease = 1;
	c.clock_skew = 0;
	ms_spool_close(sp);
	ms_error err;
	assert_int_equal(ms_spool_open(&c, 0, &sp, &err), MS_OK);
	assert_int_equal(ms_spool_open(&c, 0, &other, &err), MS_OK);
	int lfd;
	long holder;
	assert_int_equal(ms_spool_lock_node(sp, "keeper", &lfd, &holder, &err), MS_OK);
	assert_int_equal(ms_spool_keeper_start(sp, &err), MS_OK);
	ms_claim mine, theirs;
	assert_int_equal(ms_spool_claim(sp, "kept0", "keeper", &mine, &err), MS_OK);
	/* Watched for three leases: always renewed, never stale. */
	for (int i = 0; i < 15; i++) {
		assert_int_equal(ms_spool_claim(other, "kept0", "other", &theirs, &err), MS_ERR_TEMP);
		usleep(200000);
	}
	assert_true(ms_spool_keeper_renewed(sp) > 0);
	assert_true(ms_spool_claim_held(sp, &mine));
	assert_false(ms_spool_node_dead(other, "keeper")); /* its lock is held */
	assert_true(ms_spool_node_dead(other, "never-ran") == 0); /* no lock file: unknown */
	/* The daemon goes (its lock with it): its claims are broken at once. */
	ms_spool_close(sp);
	close(lfd);
	usleep(1100000); /* (a verdict is kept a second) */
	assert_true(ms_spool_node_dead(other, "keeper"));
	assert_int_equal(ms_spool_claim(other, "kept0", "other", &theirs, &err), MS_OK);
	assert_int_equal(ms_spool_open(&c, 0, &sp, &err), MS_OK);
	ms_spool_close(other);
	tmp_spool_remove(sp);
}

/* One token serves many claims: 5,000 claims are one or two inodes (a
 * fresh token after MS_CLAIM_TOKEN_LINKS names), each still its own claim
 * (released alone, lost alone), and a claim made with an old token starts
 * a full lease; closing the spool leaves tmp/ empty. */
static void test_claims_share_a_token(void **state)
{
	(void)state;
	ms_conf c;
	ms_spool *sp;
	fresh_spool(&c, &sp);
	c.claim_lease = 2;
	c.clock_skew = 0;
	ms_spool_close(sp);
	ms_error err;
	assert_int_equal(ms_spool_open(&c, 0, &sp, &err), MS_OK);
	enum { N = 5000 };
	ms_claim *cl = calloc(N, sizeof *cl);
	assert_non_null(cl);
	char id[32];
	for (int i = 0; i < N; i++) {
		snprintf(id, sizeof id, "tok%05d", i);
		assert_int_equal(ms_spool_claim(sp, id, "holder", &cl[i], &err), MS_OK);
	}
	assert_int_equal(count_dir("tmp"), 1); /* the current token only */
	size_t inodes = 1;
	for (int i = 1; i < N; i++)
		inodes += cl[i].ino != cl[i - 1].ino;
	assert_int_equal(inodes, 2);
	for (int i = 0; i < N; i++)
		assert_true(ms_spool_claim_held(sp, &cl[i]));
	/* Released alone. */
	assert_int_equal(ms_spool_release(sp, &cl[7], &err), MS_OK);
	assert_false(ms_spool_claim_held(sp, &cl[7]));
	assert_true(ms_spool_claim_held(sp, &cl[6]) && ms_spool_claim_held(sp, &cl[8]));
	/* Another claimant cannot take one of ours while the lease runs, and
	 * a claim made now with the old token is not stale to it. */
	ms_spool *other;
	assert_int_equal(ms_spool_open(&c, 0, &other, &err), MS_OK);
	ms_claim theirs;
	assert_int_equal(ms_spool_claim(other, "tok00008", "other", &theirs, &err), MS_ERR_TEMP);
	assert_int_equal(ms_spool_claim(other, "tok04999", "other", &theirs, &err), MS_ERR_TEMP);
	sleep(3); /* past the lease by the clock, but watched only once so far */
	ms_claim late;
	assert_int_equal(ms_spool_claim(sp, "tokLATE", "holder", &late, &err), MS_OK);
	assert_int_equal(late.ino, cl[N - 1].ino); /* the current token, touched */
	assert_int_equal(ms_spool_claim(other, "tokLATE", "other", &theirs, &err), MS_ERR_TEMP);
	/* The touch renewed every claim on that token: tok04999, watched for
	 * three seconds, changed meanwhile - not stale.  tok00008 is on the
	 * first token, which nobody touched: unrenewed for a lease while the
	 * other watched, it is broken - alone; the rest stay ours. */
	assert_int_equal(ms_spool_claim(other, "tok04999", "other", &theirs, &err), MS_ERR_TEMP);
	assert_int_equal(ms_spool_claim(other, "tok00008", "other", &theirs, &err), MS_OK);
	assert_false(ms_spool_claim_held(sp, &cl[8]));
	assert_true(ms_spool_claim_held(sp, &cl[9]));
	assert_int_equal(ms_spool_renew(sp, &cl[8], &err), MS_ERR_TEMP);
	assert_int_equal(ms_spool_renew(sp, &cl[9], &err), MS_OK);
	ms_spool_close(other);
	free(cl);
	ms_spool_close(sp);
	assert_int_equal(count_dir("tmp"), 0);
	assert_int_equal(ms_spool_open(&c, 0, &sp, &err), MS_OK);
	tmp_spool_remove(sp);
}

/* Refusals leave nothing behind. */
static void test_refusals_leave_nothing(void **state)
{
	(void)state;
	ms_conf c;
	ms_spool *sp;
	fresh_spool(&c, &sp);
	c.max_message_size = 100;
	static const char *const msgs[] = {
		"Subject: big\n\n" "0123456789012345678901234567890123456789012345678901234567890123456789"
		"0123456789012345678901234567890123456789\n",
		"Subject: nul\n\nA\0B\n",
	};
	for (size_t i = 0; i < 2; i++) {
		int pv[2];
		assert_int_equal(pipe(pv), 0);
		size_t len = i == 1 ? 19 : strlen(msgs[i]);
		assert_int_equal(write(pv[1], msgs[i], len), (ssize_t)len);
		close(pv[1]);
		const char *rcpts[] = { "a@example.test" };
		ms_submit_opts o = { .sender = "s@example.test", .rcpts = rcpts, .nrcpts = 1 };
		ms_submit_result res;
		ms_error err;
		assert_int_equal(ms_submit(sp, &c, &o, pv[0], &res, &err), MS_ERR_DATA);
		close(pv[0]);
	}
	c.max_message_size = 0;
	const char *bad[] = { "a@b>\r\nRCPT TO:<c@d" };
	ms_submit_opts o = { .sender = "s@example.test", .rcpts = bad, .nrcpts = 1 };
	ms_submit_result res;
	ms_error err;
	assert_int_equal(ms_submit(sp, &c, &o, 0, &res, &err), MS_ERR_USAGE);
	c.min_free_space = UINT64_MAX / 2;
	ms_spool_close(sp);
	assert_int_equal(ms_spool_open(&c, 0, &sp, &err), MS_OK);
	const char *good[] = { "a@example.test" };
	o.rcpts = good;
	assert_int_equal(ms_submit(sp, &c, &o, 0, &res, &err), MS_ERR_TEMP);
	assert_non_null(strstr(err.msg, "min_free_space"));
	assert_int_equal(count_dir("tmp") + count_dir("data") + count_dir("env"), 0);
	tmp_spool_remove(sp);
}

/* Header rewriting: Bcc removed with its continuation lines, fields that
 * exist are kept once, missing ones added; -F names quoted as a phrase. */
static void test_header_rewriting(void **state)
{
	(void)state;
	ms_conf c;
	ms_spool *sp;
	fresh_spool(&c, &sp);
	snprintf(c.hostname, sizeof c.hostname, "h.example.test");
	static const struct {
		const char *in, *full_name;
		const char *want_has[4], *want_not[3];
	} cases[] = {
		{ "From: a@b.test\r\nBcc: x@y.test,\r\n\tz@y.test\r\nSubject: s\r\n\r\nbody\r\n", NULL,
		  { "From: a@b.test\r\nSubject: s\r\nDate: ", "\r\n\r\nbody\r\n", NULL },
		  { "Bcc", "z@y.test", NULL } },
		{ "Subject: t\nMessage-ID: <keep@x>\nDate: Mon, 1 Jan 2024 00:00:00 +0000\n\nb\n",
		  "Smith, John \"JS\"",
		  { "Message-ID: <keep@x>\r\n", "From: \"Smith, John \\\"JS\\\"\" <s@example.test>\r\n",
		    "Date: Mon, 1 Jan 2024", NULL },
		  { "Message-ID: <0", NULL } },
		{ "bcc: lower@case.test\nSUBJECT: x\n\n", "Plain Name",
		  { "From: Plain Name <s@example.test>\r\n", "SUBJECT: x\r\n", NULL },
		  { "lower@case", NULL } },
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		int pv[2];
		assert_int_equal(pipe(pv), 0);
		assert_int_equal(write(pv[1], cases[i].in, strlen(cases[i].in)),
		                 (ssize_t)strlen(cases[i].in));
		close(pv[1]);
		const char *rcpts[] = { "r@example.test" };
		ms_submit_opts o = { .sender = "s@example.test", .full_name = cases[i].full_name,
			                 .rcpts = rcpts, .nrcpts = 1, .from_headers = 1 };
		ms_submit_result res;
		ms_error err;
		if (ms_submit(sp, &c, &o, pv[0], &res, &err) != MS_OK)
			fail_msg("case %zu: %s", i, err.msg);
		close(pv[0]);
		int fd;
		assert_int_equal(ms_spool_open_data(sp, res.id, &fd, &err), MS_OK);
		char buf[2048];
		ssize_t k = read(fd, buf, sizeof buf - 1);
		close(fd);
		buf[k > 0 ? k : 0] = '\0';
		for (size_t j = 0; cases[i].want_has[j]; j++)
			if (!strstr(buf, cases[i].want_has[j]))
				fail_msg("case %zu lacks \"%s\":\n%s", i, cases[i].want_has[j], buf);
		for (size_t j = 0; cases[i].want_not[j]; j++)
			if (strstr(buf, cases[i].want_not[j]))
				fail_msg("case %zu has \"%s\":\n%s", i, cases[i].want_not[j], buf);
		/* Bcc recipients are still recipients. */
		ms_envelope e;
		assert_int_equal(ms_spool_read(sp, res.id, &e, &err), MS_OK);
		assert_true(e.nrcpts >= 1);
		ms_env_free(&e);
	}
	tmp_spool_remove(sp);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_commit_read_update_remove),
		cmocka_unit_test(test_destination_hint),
		cmocka_unit_test(test_truncation_moves_to_corrupt),
		cmocka_unit_test(test_sweep),
		cmocka_unit_test(test_sweep_files_and_listing),
		cmocka_unit_test(test_usage_lines_follow_the_commit),
		cmocka_unit_test(test_two_claimants),
		cmocka_unit_test(test_eight_claimants),
		cmocka_unit_test(test_takeover_after_lease),
		cmocka_unit_test(test_claims_share_a_token),
		cmocka_unit_test(test_keeper_and_dead_nodes),
		cmocka_unit_test(test_refusals_leave_nothing),
		cmocka_unit_test(test_header_rewriting),
	};
	return cmocka_run_group_tests_name("spool", tests, NULL, NULL);
}
