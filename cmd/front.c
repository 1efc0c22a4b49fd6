/*
 * front.c - the front ends every program of ours shares: submission (in-
 * process for the owner, through the set-id helper for everyone else),
 * mailq, and hold/release/delete/flush.  Linked into the main program and
 * into the light sendmail (light.c), which carries no SMTP, TLS or DNS
 * code so that a submission does not pay for loading OpenSSL and c-ares.
 *
 * Commands that change a message take its claim first (node "admin"), so
 * they never race a dequeuer: a message being delivered is reported as busy
 * (exit 75) and left alone.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "mailspool/buf.h"
#include "mailspool/drop.h"
#include "mailspool/dsnreq.h"
#include "mailspool/spawn.h"
#include "mailspool/transcript.h"

int cli_dsn_option(char kind, const char *v, const char *who, unsigned *notify, int *ret,
                   const char **envid)
{
	ms_error err;
	ms_dsn_ret r;
	if ((kind == 'N' && ms_dsn_notify_parse(v, notify, &err) != MS_OK) ||
	    (kind == 'R' && ms_dsn_ret_parse(v, &r, &err) != MS_OK) ||
	    (kind == 'V' && ms_dsn_envid_check(v, &err) != MS_OK)) {
		fprintf(stderr, "%s: %s\n", who, err.msg);
		return EX_USAGE_;
	}
	if (kind == 'R')
		*ret = (int)r;
	if (kind == 'V')
		*envid = v;
	return 0;
}

int cli_mode_parse(const char *s)
{
	return !strcmp(s, "queue") ? CLI_QUEUE
	       : !strcmp(s, "now") ? CLI_NOW
	       : !strcmp(s, "background") ? CLI_BACKGROUND
	                                  : -1;
}

/* The helper's -C for a submission: an explicit -C, else
 * $MAILSPOOL_CONFIG (the helper accepts either only from root and the
 * owner, and says so to anyone else); set by cli_open_for_submit. */
static const char *helper_conf;

/* The helper's argv: its path, then args (NULL-terminated, at most 6). */
static void helper_argv(const char *const *args, char *argv[8])
{
	size_t k = 0;
	argv[k++] = (char *)MS_DROP_PROGRAM;
	for (; args[k - 1] && k < 7; k++)
		argv[k] = (char *)args[k - 1];
	argv[k] = NULL;
}

static ms_status submit_via_helper(const ms_conf *conf, const ms_submit_opts *o, int fd,
                                   ms_submit_result *res, ms_error *err)
{
	const char *args[] = { "submit", helper_conf ? "-C" : NULL, helper_conf, NULL };
	int to, from;
	char *argv[8];
	helper_argv(args, argv);
	signal(SIGPIPE, SIG_IGN); /* a helper that refuses and leaves: its answer says why */
	pid_t pid = ms_spawn(MS_DROP_PROGRAM, argv, &to, &from);
	if (pid < 0)
		return ms_error_set(err, MS_ERR_TEMP, "cannot run %s: %s", MS_DROP_PROGRAM,
		                    strerror(errno));
	ms_drop_pipe p;
	ms_submit_sink sink = ms_drop_pipe_sink(&p, to, from);
	ms_status st = ms_submit_to(&sink, conf, o, fd, res, err);
	if (p.to_fd >= 0)
		close(p.to_fd);
	close(from);
	int status = ms_spawn_wait(pid);
	/* A helper that refused before reading (it said why on stderr) has
	 * no answer on stdout; its exit status is the answer. */
	if (st == MS_ERR_IO && WIFEXITED(status) && WEXITSTATUS(status) == EX_NOPERM_)
		st = ms_error_set(err, MS_ERR_DENIED, "the queue program refused the submission");
	else if (st == MS_ERR_IO && WIFEXITED(status) && WEXITSTATUS(status) == EX_CONFIG_)
		st = ms_error_set(err, MS_ERR_TEMP, "the queue is not set up (see above)");
	return st;
}

int cli_run_helper(const char *const *args)
{
	char *argv[8];
	helper_argv(args, argv);
	fflush(NULL);
	pid_t pid = ms_spawn(MS_DROP_PROGRAM, argv, NULL, NULL);
	if (pid < 0) {
		fprintf(stderr, "%s: cannot run %s: %s\n", progname, MS_DROP_PROGRAM, strerror(errno));
		return EX_UNAVAILABLE_;
	}
	int status = ms_spawn_wait(pid);
	return WIFEXITED(status) ? WEXITSTATUS(status) : EX_SOFTWARE_;
}

int cli_open_for_submit(const char *conf_path, ms_conf *conf, ms_spool **sp)
{
	int r = cli_load_conf(conf_path, conf);
	if (r)
		return r;
	int required;
	const char *path = ms_conf_path(conf_path, &required);
	helper_conf = required ? path : NULL;
	*sp = NULL;
	/* Who owns the spool is what the spool says (one stat, no user
	 * database lookup on this path that runs once per message); an
	 * owner that is not mail_owner is refused by the spool's checks. */
	struct stat st;
	if (stat(conf->spool_dir, &st) == 0 ? st.st_uid == geteuid() : cli_caller_is_admin(conf))
		return cli_open_loaded(conf, sp, 1); /* the owner: in-process */
	return 0;
}

ms_status cli_queue_message(ms_spool *sp, const ms_conf *conf, const ms_submit_opts *o, int fd,
                            ms_submit_result *res, ms_error *err)
{
	/* The owner commits in-process; everyone else through the set-id
	 * helper, which checks everything again. */
	return sp ? ms_submit(sp, conf, o, fd, res, err) : submit_via_helper(conf, o, fd, res, err);
}

int cli_submit(ms_spool *sp, const ms_conf *conf, const ms_submit_opts *o, int fd,
               const char *name, int quiet, FILE *json, int *first, cli_mode mode)
{
	ms_submit_result res;
	ms_error err;
	ms_submit_opts so = *o;
	if (mode == CLI_NOW && sp)
		so.flags |= MS_ENV_HOLD; /* no daemon may take it meanwhile */
	ms_status st = cli_queue_message(sp, conf, &so, fd, &res, &err);
	if (st != MS_OK) {
		fprintf(stderr, "%s: %s%s%s; nothing was queued\n", progname, name ? name : "",
		        name ? ": " : "", err.msg);
		return st == MS_ERR_DENIED ? EX_NOPERM_ : cli_exit_for(st);
	}
	if (mode != CLI_QUEUE && !sp) {
		/* Only the queue's owner delivers: the daemon takes it now. */
		if (!quiet && !json)
			printf("%s%squeued as %s; delivered by the daemon (only the queue's owner "
			       "delivers)\n", name ? name : "", name ? ": " : "", res.id);
		mode = CLI_QUEUE;
		quiet = 1;
	}
	if (mode != CLI_QUEUE) {
		if (json && first && !*first)
			fputc(',', json);
		if (json)
			fputs("{\"file\":", json);
		if (first)
			*first = 0;
		return cli_deliver_now(sp, conf, res.id, name, quiet, json, mode);
	}
	/* (The queue side woke the daemons with the new id: mailspool/drop.h.) */
	if (json) {
		ms_buf b;
		ms_buf_init(&b, 0);
		ms_json_string(&b, name ? name : "-", strlen(name ? name : "-"));
		fprintf(json, "%s{\"file\":%s,\"id\":\"%s\",\"size\":%llu,\"recipients\":%zu}",
		        first && !*first ? "," : "", ms_buf_ptr(&b), res.id, (unsigned long long)res.size, res.nrcpts);
		ms_buf_free(&b);
		if (first)
			*first = 0;
	} else if (!quiet) {
		printf("%s%squeued as %s (%zu recipient%s, %llu octets)\n", name ? name : "",
		       name ? ": " : "", res.id, res.nrcpts, res.nrcpts == 1 ? "" : "s",
		       (unsigned long long)res.size);
	}
	return EX_OK_;
}

static const struct option common_lo[] = {
	{ "config", required_argument, NULL, 'C' },
	{ "json", no_argument, NULL, 'j' },
	{ "help", no_argument, NULL, 'h' },
	{ NULL, 0, NULL, 0 },
};

/* -C FILE, --json, --help; returns -1 to go on, or an exit code. */
int cli_common_opts(int argc, char **argv, const char *usage, const char **conf, int *json)
{
	int c;
	optind = 1;
	while ((c = getopt_long(argc, argv, "C:h", common_lo, NULL)) != -1) {
		switch (c) {
		case 'C': *conf = optarg; break;
		case 'j':
			if (!json) {
				fprintf(stderr, "usage: %s %s\n", progname, usage);
				return EX_USAGE_;
			}
			*json = 1;
			break;
		case 'h': printf("usage: %s %s\n", progname, usage); return EX_OK_;
		default: fprintf(stderr, "usage: %s %s\n", progname, usage); return EX_USAGE_;
		}
	}
	return -1;
}

int cli_mailq(const char *confp, int json)
{
	ms_conf conf;
	int r = cli_load_conf(confp, &conf);
	if (r)
		return r;
	if (!cli_caller_is_admin(&conf)) {
		/* Users list through the helper (authorized_mailq_users). */
		const char *args[] = { "list", json ? "--json" : NULL, NULL };
		return cli_run_helper(args);
	}
	ms_spool *sp;
	if ((r = cli_become_owner(&conf, "list the queue")) || (r = cli_open_loaded(&conf, &sp, 1)))
		return r;
	r = cli_list_queue(sp, json);
	ms_spool_close(sp);
	return r;
}

int cmd_queue(int argc, char **argv)
{
	int json = 0;
	const char *confp = NULL;
	int r = cli_common_opts(argc, argv, "queue [-C FILE] [--json]", &confp, &json);
	if (r >= 0)
		return r;
	return cli_mailq(confp, json);
}

/* hold, release, delete, flush: one change per message, under its claim. */
int cmd_hold(int argc, char **argv)
{
	const char *what = argv[0];
	int is_flush = !strcmp(what, "flush");
	char usage[96];
	snprintf(usage, sizeof usage, "%s [-C FILE] %s", what, is_flush ? "[ID...]" : "ID...");
	const char *confp = NULL;
	int r = cli_common_opts(argc, argv, usage, &confp, NULL);
	if (r >= 0)
		return r;
	if (!is_flush && optind >= argc) {
		fprintf(stderr, "usage: %s %s\n", progname, usage);
		return EX_USAGE_;
	}
	ms_conf conf;
	ms_spool *sp;
	if ((r = cli_load_conf(confp, &conf)))
		return r;
	if (is_flush && !cli_caller_is_admin(&conf)) {
		/* flush stays open to users: through the helper, rate-limited. */
		const char *args[8] = { "flush" };
		size_t k = 1;
		for (int i = optind; i < argc && k < 7; i++)
			args[k++] = argv[i];
		args[k] = NULL;
		return cli_run_helper(args);
	}
	char verb[32];
	snprintf(verb, sizeof verb, "%s messages", what);
	if ((r = cli_become_owner(&conf, verb)) || (r = cli_open_loaded(&conf, &sp, 1)))
		return r;
	int rc = cli_change(sp, &conf, what, argv + optind, (size_t)(argc - optind));
	ms_spool_close(sp);
	return rc;
}

