/*
 * setup.c - `mailspool setup`: the root step that makes the queue's owner
 * and the spool, idempotently (make install runs it; run it again after
 * changing mail_owner or spool_dir).
 *
 *   1. The group and user mail_owner (system accounts, no login shell, no
 *      home of their own), made with groupadd/useradd when missing.
 *   2. spool_dir and tmp data env claim corrupt wake: owned by mail_owner,
 *      mode 0700 (made, or corrected when they exist).  A symlink where a
 *      directory should be is refused, never followed.
 *   3. The helper (mailspool-drop): owned by mail_owner, mode 6755 (set-user-
 *      and set-group-ID to the owner; never to root).
 *
 * Everything is done relative to descriptors opened without following
 * symlinks, so a spool a previous owner could write cannot redirect it.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli.h"
#include "mailspool/spawn.h"


static int run(char *const argv[])
{
	pid_t pid = ms_spawn(argv[0], argv, NULL, NULL);
	if (pid < 0) {
		fprintf(stderr, "%s setup: cannot run %s: %s\n", progname, argv[0], strerror(errno));
		return -1;
	}
	int status = ms_spawn_wait(pid);
	return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -1;
}

/* A directory of the owner, mode 0700: made, or corrected. */
static int own_dir(int parent, const char *name, const char *shown, uid_t uid, gid_t gid)
{
	if (mkdirat(parent, name, 0700) == 0)
		printf("made %s\n", shown);
	else if (errno != EEXIST) {
		fprintf(stderr, "%s setup: cannot make %s: %s\n", progname, shown, strerror(errno));
		return -1;
	}
	int fd = openat(parent, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0) {
		fprintf(stderr, "%s setup: %s is not a directory (a symbolic link?): %s\n", progname,
		        shown, strerror(errno));
		return -1;
	}
	struct stat st;
	if (fstat(fd, &st) < 0 || ((st.st_uid != uid || st.st_gid != gid) && fchown(fd, uid, gid) < 0) ||
	    ((st.st_mode & 07777) != 0700 && fchmod(fd, 0700) < 0)) {
		fprintf(stderr, "%s setup: cannot set owner and mode of %s: %s\n", progname, shown,
		        strerror(errno));
		close(fd);
		return -1;
	}
	if (st.st_uid != uid || (st.st_mode & 07777) != 0700)
		printf("%s: owner %u, mode 0700 (was %u, %04o)\n", shown, (unsigned)uid,
		       (unsigned)st.st_uid, (unsigned)(st.st_mode & 07777));
	return fd;
}

int cmd_setup(int argc, char **argv)
{
	static const struct option lo[] = { { "config", required_argument, NULL, 'C' },
		                                { "help", no_argument, NULL, 'h' },
		                                { NULL, 0, NULL, 0 } };
	const char *confp = NULL;
	int c;
	optind = 1;
	while ((c = getopt_long(argc, argv, "C:h", lo, NULL)) != -1) {
		if (c == 'C') {
			confp = optarg;
		} else {
			fprintf(c == 'h' ? stdout : stderr,
			        "usage: %s setup [-C FILE]\n\nAs root: make the queue's owner (mail_owner), "
			        "the spool (spool_dir, mode 0700)\nand the set-id helper %s; "
			        "idempotent.\n",
			        progname, MS_DROP_PROGRAM);
			return c == 'h' ? EX_OK_ : EX_USAGE_;
		}
	}
	if (getuid() != 0 || geteuid() != 0) {
		fprintf(stderr, "%s setup: must be run as root\n", progname);
		return EX_NOPERM_;
	}
	ms_conf conf;
	int r = cli_load_conf(confp, &conf);
	if (r)
		return r;
	if (!strcmp(conf.mail_owner, "root")) {
		fprintf(stderr, "%s setup: mail_owner is root; setup makes a queue owner that is not "
		                "(set mail_owner to an unprivileged user, such as mailspool)\n",
		        progname);
		return EX_CONFIG_;
	}
	/* 1. The owner. */
	if (!getpwnam(conf.mail_owner)) {
		char *ga[] = { "/usr/sbin/groupadd", "--system", "-f", conf.mail_owner, NULL };
		char *ua[] = { "/usr/sbin/useradd", "--system", "--gid", conf.mail_owner,
			           "--home-dir", conf.spool_dir, "--no-create-home",
			           "--shell", "/usr/sbin/nologin", "--comment", "mailspool queue owner",
			           conf.mail_owner, NULL };
		if (run(ga) < 0 || run(ua) < 0) {
			fprintf(stderr, "%s setup: could not make the user %s\n", progname, conf.mail_owner);
			return EX_SOFTWARE_;
		}
		printf("made user and group %s\n", conf.mail_owner);
	}
	uid_t uid;
	gid_t gid;
	if ((r = cli_owner(&conf, &uid, &gid)))
		return r;
	/* 2. The spool: its parent is trusted (root's), the rest is checked. */
	char parent[MS_CONF_PATH_MAX];
	snprintf(parent, sizeof parent, "%s", conf.spool_dir);
	char *slash = strrchr(parent, '/');
	const char *base = slash + 1;
	if (slash == parent)
		snprintf(parent, sizeof parent, "/");
	else
		*slash = '\0';
	base = conf.spool_dir + (base - parent);
	int pfd = open(parent, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (pfd < 0 || !*base) {
		fprintf(stderr, "%s setup: cannot open %s: %s\n", progname, parent, strerror(errno));
		return EX_CANTCREAT_;
	}
	int root = own_dir(pfd, base, conf.spool_dir, uid, gid);
	close(pfd);
	if (root < 0)
		return EX_CANTCREAT_;
	static const char *const subdirs[] = { "tmp", "data", "env", "claim", "corrupt", "wake" };
	for (size_t i = 0; i < sizeof subdirs / sizeof subdirs[0]; i++) {
		char shown[MS_CONF_PATH_MAX + 16];
		snprintf(shown, sizeof shown, "%s/%s", conf.spool_dir, subdirs[i]);
		int fd = own_dir(root, subdirs[i], shown, uid, gid);
		if (fd < 0) {
			close(root);
			return EX_CANTCREAT_;
		}
		close(fd);
	}
	close(root);
	/* 3. The helper, when it is installed where this program looks. */
	int hfd = open(MS_DROP_PROGRAM, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	struct stat hs;
	if (hfd >= 0 && fstat(hfd, &hs) == 0 && S_ISREG(hs.st_mode)) {
		if (fchown(hfd, uid, gid) < 0 || fchmod(hfd, 06755) < 0) {
			fprintf(stderr, "%s setup: cannot make %s set-id %s: %s\n", progname,
			        MS_DROP_PROGRAM, conf.mail_owner, strerror(errno));
			close(hfd);
			return EX_SOFTWARE_;
		}
		printf("%s: owner %s, mode 6755\n", MS_DROP_PROGRAM, conf.mail_owner);
	} else {
		printf("note: %s is not installed; users cannot submit until it is (make install)\n",
		       MS_DROP_PROGRAM);
	}
	if (hfd >= 0)
		close(hfd);
	printf("spool %s ready for %s (uid %u)\n", conf.spool_dir, conf.mail_owner, (unsigned)uid);
	return EX_OK_;
}
