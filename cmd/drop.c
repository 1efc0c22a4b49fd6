/*
 * drop.c - mailspool-drop, the only set-id program: installed set-user-ID
 * to mail_owner (never root), it is how anyone but the owner reaches the
 * queue.  Three things, nothing else:
 *
 *     mailspool-drop submit   a prepared message on stdin (mailspool/drop.h):
 *                             checked again, Received added, committed
 *     mailspool-drop list [--json]   the queue listing (authorized_mailq_users)
 *     mailspool-drop flush [ID...]   make queued mail due now (rate-limited
 *                             for users: once a minute)
 *
 * It trusts nothing of its caller: the environment is cleared before
 * anything runs, the configuration is the compiled-in MS_CONF_DEFAULT_PATH
 * (-C FILE only when the real uid is root or the owner), no path from the
 * caller is ever opened, descriptors 0-2 are made to exist, and the real
 * uid is what the message records.  Parsing of the submitter's input
 * (options, -t, headers) happened in the caller, with the caller's rights.
 */
#include <errno.h>
#include <fcntl.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "mailspool/drop.h"

const char *progname = "mailspool-drop";

#define FLUSH_INTERVAL_S 60

static int usage(void)
{
	fprintf(stderr, "usage: %s submit|list [--json]|flush [ID...] [-C FILE]\n"
	                "(run by mailspool, sendmail and mailq; not meant to be run by hand)\n",
	        progname);
	return EX_USAGE_;
}

/* Descriptors 0, 1 and 2 exist, so that nothing we open becomes one. */
static void sane_fds(void)
{
	for (int fd = 0; fd < 3; fd++)
		if (fcntl(fd, F_GETFD) < 0 && open("/dev/null", O_RDWR) != fd)
			_exit(EX_SOFTWARE_);
}

int main(int argc, char **argv)
{
	sane_fds();
	clearenv();
	umask(077);
	signal(SIGPIPE, SIG_IGN);
	if (argc < 2)
		return usage();
	const char *mode = argv[1], *confp = NULL;
	int json = 0, i;
	char **ids = NULL;
	size_t nids = 0;
	for (i = 2; i < argc; i++) {
		if (!strcmp(argv[i], "-C") && i + 1 < argc)
			confp = argv[++i];
		else if (!strcmp(argv[i], "--json") && !strcmp(mode, "list"))
			json = 1;
		else if (!strcmp(mode, "flush") && ms_env_id_ok(argv[i]))
			break;
		else
			return usage();
	}
	ids = argv + i;
	nids = (size_t)(argc - i);
	if (strcmp(mode, "submit") && strcmp(mode, "list") && strcmp(mode, "flush"))
		return usage();

	/* The real configuration names the owner; only root and the owner may
	 * name another one (as Postfix's alternate_config_directories). */
	ms_conf conf;
	int r = cli_load_conf(NULL, &conf);
	if (r)
		return r;
	/* Set-user- and set-group-ID to the owner, the owner is who we are
	 * (no user database lookup on this path that runs once per message);
	 * run by root, the configuration names it. */
	uid_t owner = geteuid();
	gid_t group = getegid();
	if (owner == 0 && (r = cli_owner(&conf, &owner, &group)))
		return r;
	uid_t ruid = getuid();
	int admin = ruid == 0 || ruid == owner;
	if (confp) {
		if (!admin) {
			fprintf(stderr, "%s: -C is for root and %s only\n", progname, conf.mail_owner);
			return EX_NOPERM_;
		}
		if ((r = cli_load_conf(confp, &conf)))
			return r;
		if (owner == 0 && (r = cli_owner(&conf, &owner, &group)))
			return r;
	}
	/* Whoever we run as must own the spool (checked once it is open):
	 * a helper set-user-ID to anyone else finds no spool of its own. */
	if ((r = cli_drop_to(owner, group)))
		return r;

	ms_spool *sp;
	if ((r = cli_open_loaded(&conf, &sp, 0)))
		return r;
	if (ms_spool_owner(sp) != owner) {
		fprintf(stderr, "%s: %s does not belong to uid %u: not installed set-user-ID %s? "
		                "(run 'mailspool setup' as root)\n",
		        progname, conf.spool_dir, (unsigned)owner, conf.mail_owner);
		ms_spool_close(sp);
		return EX_CONFIG_;
	}
	if (!strcmp(mode, "submit")) {
		ms_submit_result res;
		ms_error err;
		ms_status st = ms_drop_serve(sp, &conf, (uint32_t)ruid, STDIN_FILENO, &res, &err);
		char line[MS_DROP_REPLY_MAX];
		ms_drop_reply(st, &res, &err, line, sizeof line);
		(void)!write(STDOUT_FILENO, line, strlen(line));
		ms_spool_close(sp);
		return st == MS_OK ? EX_OK_ : st == MS_ERR_DENIED ? EX_NOPERM_ : cli_exit_for(st);
	}
	if (!strcmp(mode, "list")) {
		struct passwd *pw = getpwuid(ruid);
		if (!ms_conf_mailq_allowed(&conf, pw ? pw->pw_name : "")) {
			fprintf(stderr, "%s: you may not list the queue (authorized_mailq_users)\n",
			        progname);
			ms_spool_close(sp);
			return EX_NOPERM_;
		}
		r = cli_list_queue(sp, json);
		ms_spool_close(sp);
		return r;
	}
	/* flush */
	/* Users may flush at most once a minute: a flush rewrites every
	 * queued envelope (an fsync each), which in a loop would be a way to
	 * keep the disk busy. */
	if (!admin && !ms_spool_once_per(sp, "flush.stamp", FLUSH_INTERVAL_S)) {
		fprintf(stderr, "%s: the queue was flushed less than %d s ago; try later\n", progname,
		        FLUSH_INTERVAL_S);
		ms_spool_close(sp);
		return EX_TEMPFAIL_;
	}
	r = cli_change(sp, &conf, "flush", ids, nids);
	ms_spool_close(sp);
	return r;
}
