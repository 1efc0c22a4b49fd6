/*
 * queue.c - the queue commands: queue (mailq), show, hold, release, delete,
 * flush, stats, sweep; and the helpers every command shares.
 *
 * Commands that change a message take its claim first (node "admin"), so
 * they never race a dequeuer: a message being delivered is reported as busy
 * (exit 75) and left alone.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>

#include "mailspool/drop.h"

#include "cli.h"
#include "mailspool/sched.h"
#include "mailspool/buf.h"
#include "mailspool/headers.h"
#include "mailspool/transcript.h"

/* ---- shared helpers ------------------------------------------------------ */

int cli_mode_parse(const char *s)
{
	return !strcmp(s, "queue") ? CLI_QUEUE
	       : !strcmp(s, "now") ? CLI_NOW
	       : !strcmp(s, "background") ? CLI_BACKGROUND
	                                  : -1;
}

static const char *result_word(ms_rcpt_state s)
{
	return s == MS_RCPT_DELIVERED ? "delivered" : s == MS_RCPT_FAILED ? "failed" : "deferred";
}

/* Modes now and background: claim the message just queued, attempt every
 * recipient through the daemon's routing, report each.  Now: the message
 * was queued held (no daemon touches it) and is removed whatever happened.
 * Background: results are recorded as the daemon would, without bounces
 * (the caller is told); what failed temporarily stays queued. */
static int deliver_now(ms_spool *sp, const ms_conf *conf, const char *id, const char *name,
                       int quiet, FILE *json, cli_mode mode)
{
	ms_claim cl;
	ms_error err;
	const char *pre = name ? name : "", *sep = name ? ": " : "";
	if (ms_spool_claim(sp, id, conf->hostname, &cl, &err) != MS_OK) {
		if (!quiet)
			printf("%s%squeued as %s (a daemon is delivering it)\n", pre, sep, id);
		return EX_OK_;
	}
	ms_envelope e;
	ms_sched_result *res = NULL;
	size_t n = 0;
	ms_status st = ms_spool_read(sp, id, &e, &err);
	if (st == MS_OK) {
		e.flags &= ~(uint32_t)MS_ENV_HOLD;
		st = ms_sched_attempt(sp, conf, &e, NULL, &res, &n, &err);
	}
	size_t failed = 0, deferred = 0;
	if (st == MS_OK) {
		ms_sched_summary sum;
		ms_sched_opts so = { .conf = conf, .bounce = 0 };
		if (mode == CLI_NOW)
			st = ms_spool_remove(sp, id, &err);
		else
			st = ms_sched_settle(sp, &so, &e, res, n, &sum, &err);
	} else if (mode == CLI_NOW) {
		ms_spool_remove(sp, id, NULL);
	}
	ms_spool_release(sp, &cl, NULL);
	if (st != MS_OK) {
		fprintf(stderr, "%s: %s%s%s: %s\n", progname, pre, sep, id, err.msg);
		if (n == 0) {
			ms_env_free(&e);
			free(res);
			return mode == CLI_NOW ? cli_exit_for(st) : EX_TEMPFAIL_;
		}
	}
	if (json) {
		ms_buf b;
		ms_buf_init(&b, 0);
		ms_json_string(&b, name ? name : "-", strlen(name ? name : "-"));
		fprintf(json, "%s,\"id\":\"%s\",\"mode\":\"%s\",\"recipients\":[", ms_buf_ptr(&b), id,
		        mode == CLI_NOW ? "now" : "background");
		ms_buf_free(&b);
	}
	for (size_t i = 0; i < n; i++) {
		const ms_sched_result *r = &res[i];
		failed += r->state == MS_RCPT_FAILED;
		deferred += r->state != MS_RCPT_FAILED && r->state != MS_RCPT_DELIVERED;
		const char *addr = r->rcpt < e.nrcpts ? e.rcpts[r->rcpt].addr : "?";
		if (json) {
			ms_buf b;
			ms_buf_init(&b, 0);
			ms_buf_appendstr(&b, i ? ",{\"address\":" : "{\"address\":");
			ms_json_string(&b, addr, strlen(addr));
			ms_buf_printf(&b, ",\"state\":\"%s\",\"code\":%d,\"enhanced\":", result_word(r->state),
			              r->code);
			ms_json_string(&b, r->enh, strlen(r->enh));
			ms_buf_appendstr(&b, ",\"text\":");
			ms_json_string(&b, r->text, strlen(r->text));
			ms_buf_appendstr(&b, ",\"relay\":");
			ms_json_string(&b, r->relay, strlen(r->relay));
			ms_buf_appendstr(&b, "}");
			fputs(ms_buf_ptr(&b), json);
			ms_buf_free(&b);
		} else if (!quiet || r->state != MS_RCPT_DELIVERED) {
			FILE *out = r->state == MS_RCPT_DELIVERED ? stdout : stderr;
			fprintf(out, "%s%s%s: <%s> %s via %s (", pre, sep, id, addr, result_word(r->state),
			        r->relay);
			cli_put_reply(out, r->code, r->enh, r->text);
			fprintf(out, ")%s\n", mode == CLI_BACKGROUND && r->state == MS_RCPT_DEFERRED
			                           ? "; queued for retry"
			                           : "");
		}
	}
	if (json)
		fputs("]}", json);
	ms_env_free(&e);
	free(res);
	if (failed)
		return EX_UNAVAILABLE_;
	return deferred && mode == CLI_NOW ? EX_TEMPFAIL_ : EX_OK_;
}

/* Where the helper's -C comes from: an explicit -C, else
 * $MAILSPOOL_CONFIG (the helper accepts either only from root and the
 * owner, and says so to anyone else). */
static const char *helper_conf;

void cli_submit_conf(const char *conf_path)
{
	int required;
	const char *p = ms_conf_path(conf_path, &required);
	helper_conf = required ? p : NULL;
}

/* Start the helper with pipes on its standard input and output. */
static pid_t spawn_helper(const char *const *args, int *to, int *from)
{
	int in[2], out[2];
	if (pipe2(in, O_CLOEXEC) < 0)
		return -1;
	if (pipe2(out, O_CLOEXEC) < 0) {
		close(in[0]);
		close(in[1]);
		return -1;
	}
	posix_spawn_file_actions_t fa;
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, in[0], STDIN_FILENO);
	posix_spawn_file_actions_adddup2(&fa, out[1], STDOUT_FILENO);
	char *argv[8];
	size_t k = 0;
	argv[k++] = (char *)MS_DROP_PROGRAM;
	for (; args[k - 1] && k < 7; k++)
		argv[k] = (char *)args[k - 1];
	argv[k] = NULL;
	pid_t pid;
	extern char **environ;
	int e = posix_spawn(&pid, MS_DROP_PROGRAM, &fa, NULL, argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	close(in[0]);
	close(out[1]);
	if (e) {
		close(in[1]);
		close(out[0]);
		errno = e;
		return -1;
	}
	*to = in[1];
	*from = out[0];
	return pid;
}

static ms_status submit_via_helper(const ms_conf *conf, const ms_submit_opts *o, int fd,
                                   ms_submit_result *res, ms_error *err)
{
	const char *args[] = { "submit", helper_conf ? "-C" : NULL, helper_conf, NULL };
	int to, from;
	signal(SIGPIPE, SIG_IGN); /* a helper that refuses and leaves: its answer says why */
	pid_t pid = spawn_helper(args, &to, &from);
	if (pid < 0)
		return ms_error_set(err, MS_ERR_TEMP, "cannot run %s: %s", MS_DROP_PROGRAM,
		                    strerror(errno));
	ms_drop_pipe p;
	ms_submit_sink sink = ms_drop_pipe_sink(&p, to, from);
	ms_status st = ms_submit_to(&sink, conf, o, fd, res, err);
	if (p.to_fd >= 0)
		close(p.to_fd);
	close(from);
	int status;
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	return st;
}

int cli_run_helper(const char *const *args)
{
	char *argv[8];
	size_t k = 0;
	argv[k++] = (char *)MS_DROP_PROGRAM;
	for (; args[k - 1] && k < 7; k++)
		argv[k] = (char *)args[k - 1];
	argv[k] = NULL;
	fflush(NULL);
	pid_t pid;
	extern char **environ;
	int e = posix_spawn(&pid, MS_DROP_PROGRAM, NULL, NULL, argv, environ);
	if (e) {
		fprintf(stderr, "%s: cannot run %s: %s\n", progname, MS_DROP_PROGRAM, strerror(e));
		return EX_UNAVAILABLE_;
	}
	int status;
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	return WIFEXITED(status) ? WEXITSTATUS(status) : EX_SOFTWARE_;
}

int cli_open_for_submit(const char *conf_path, ms_conf *conf, ms_spool **sp)
{
	int r = cli_load_conf(conf_path, conf);
	if (r)
		return r;
	cli_submit_conf(conf_path);
	*sp = NULL;
	struct passwd *pw = getpwnam(conf->mail_owner);
	if (pw && geteuid() == pw->pw_uid)
		return cli_open_loaded(conf, sp, 1); /* the owner: in-process */
	return 0;
}

int cli_submit(ms_spool *sp, const ms_conf *conf, const ms_submit_opts *o, int fd,
               const char *name, int quiet, FILE *json, int *first, cli_mode mode)
{
	ms_submit_result res;
	ms_error err;
	ms_submit_opts so = *o;
	if (mode == CLI_NOW && sp)
		so.flags |= MS_ENV_HOLD; /* no daemon may take it meanwhile */
	/* The owner commits in-process; everyone else through the set-id
	 * helper, which checks everything again. */
	ms_status st = sp ? ms_submit(sp, conf, &so, fd, &res, &err)
	                  : submit_via_helper(conf, &so, fd, &res, &err);
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
		return deliver_now(sp, conf, res.id, name, quiet, json, mode);
	}
	if (sp)
		ms_spool_wake(sp, 0);
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

/* ---- commands ---------------------------------------------------------- */

static const struct option common_lo[] = {
	{ "config", required_argument, NULL, 'C' },
	{ "json", no_argument, NULL, 'j' },
	{ "help", no_argument, NULL, 'h' },
	{ NULL, 0, NULL, 0 },
};

/* -C FILE, --json, --help; returns -1 to go on, or an exit code. */
static int common_opts(int argc, char **argv, const char *usage, const char **conf, int *json)
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

/* Options, configuration, the owner's identity and the spool: -1 when the
 * command may go on (the spool is open), else the exit code.  Only root
 * and the owner get past cli_become_owner (`what` says what was refused). */
static int begin(int argc, char **argv, const char *usage, int *json, ms_conf *conf,
                 ms_spool **sp, const char *what)
{
	const char *confp = NULL;
	int r = common_opts(argc, argv, usage, &confp, json);
	if (r >= 0)
		return r;
	if ((r = cli_load_conf(confp, conf)) || (r = cli_become_owner(conf, what)))
		return r;
	r = cli_open_loaded(conf, sp, 1);
	return r ? r : -1;
}

int cli_mailq(const char *confp, int json)
{
	ms_conf conf;
	int r = cli_load_conf(confp, &conf);
	if (r)
		return r;
	if (!cli_caller_is_admin(&conf)) {
		/* Users list through the helper (authorized_mailq_users). */
		cli_submit_conf(confp);
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
	int r = common_opts(argc, argv, "queue [-C FILE] [--json]", &confp, &json);
	if (r >= 0)
		return r;
	return cli_mailq(confp, json);
}

int cmd_show(int argc, char **argv)
{
	int json = 0;
	ms_conf conf;
	ms_spool *sp;
	int r = begin(argc, argv, "show [-C FILE] [--json] ID", &json, &conf, &sp, "show messages");
	if (r >= 0)
		return r;
	if (optind + 1 != argc) {
		fprintf(stderr, "usage: %s show [-C FILE] [--json] ID\n", progname);
		ms_spool_close(sp);
		return EX_USAGE_;
	}
	const char *id = argv[optind];
	ms_envelope e;
	ms_error err;
	ms_status st = ms_spool_read(sp, id, &e, &err);
	if (st != MS_OK) {
		fprintf(stderr, "%s: %s\n", progname, err.msg);
		ms_spool_close(sp);
		return st == MS_ERR_USAGE ? EX_NOINPUT_ : EX_TEMPFAIL_;
	}
	/* The header block of the stored message. */
	ms_buf hdr;
	ms_buf_init(&hdr, MS_HDR_MAX);
	int fd;
	uint64_t body_off = 0;
	if (ms_spool_open_data(sp, id, &fd, &err) == MS_OK) {
		ms_hdr_read(fd, &hdr, &body_off, &err);
		close(fd);
	}
	ms_buf b;
	ms_buf_init(&b, 0);
	if (json) {
		cli_json_envelope(&b, &e, 1);
		b.len--; /* reopen the object for the headers */
		ms_buf_appendstr(&b, ",\"headers\":");
		ms_json_string(&b, ms_buf_ptr(&hdr), ms_buf_avail(&hdr));
		ms_buf_appendstr(&b, "}\n");
		fwrite(ms_buf_ptr(&b), 1, ms_buf_avail(&b), stdout);
	} else {
		char at[32];
		cli_fmt_time(e.arrival, at, sizeof at);
		printf("Queue ID:  %s%s\nArrival:   %s\nSize:      %llu octets\nUser:      %u\n"
		       "Sender:    <",
		       e.id, e.flags & MS_ENV_HOLD ? " (held)" : "", at, (unsigned long long)e.size,
		       (unsigned)e.uid);
		cli_put_safe(stdout, e.sender);
		printf(">\nRecipients:\n");
		for (size_t i = 0; i < e.nrcpts; i++) {
			const ms_env_rcpt *r2 = &e.rcpts[i];
			char nx[32];
			cli_fmt_time(r2->next, nx, sizeof nx);
			printf("  <");
			cli_put_safe(stdout, r2->addr);
			printf(">  %s, %u attempt%s, tier %u", ms_env_state_name(r2->state),
			       (unsigned)r2->attempts, r2->attempts == 1 ? "" : "s", (unsigned)r2->tier);
			if (r2->state == MS_ENV_PENDING || r2->state == MS_ENV_DEFERRED)
				printf(", next attempt %s", nx);
			printf("\n");
			for (size_t k = 0; k < r2->nhist; k++) {
				char when[32];
				cli_fmt_time(r2->hist[k].when, when, sizeof when);
				printf("    %s  ", when);
				cli_put_reply(stdout, r2->hist[k].code, r2->hist[k].enh, r2->hist[k].text);
				printf("\n");
			}
		}
		printf("Headers:\n");
		const char *h = ms_buf_ptr(&hdr);
		for (size_t i = 0; i < ms_buf_avail(&hdr); i++)
			if (h[i] != '\r')
				putchar((unsigned char)h[i] < 0x20 && h[i] != '\n' && h[i] != '\t' ? ' ' : h[i]);
	}
	ms_buf_free(&b);
	ms_buf_free(&hdr);
	ms_env_free(&e);
	ms_spool_close(sp);
	return EX_OK_;
}

/* hold, release, delete, flush: one change per message, under its claim. */
int cmd_hold(int argc, char **argv)
{
	const char *what = argv[0];
	int is_flush = !strcmp(what, "flush");
	char usage[96];
	snprintf(usage, sizeof usage, "%s [-C FILE] %s", what, is_flush ? "[ID...]" : "ID...");
	const char *confp = NULL;
	int r = common_opts(argc, argv, usage, &confp, NULL);
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
		cli_submit_conf(confp);
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
	char **ids = argv + optind;
	size_t n = (size_t)(argc - optind);
	char **all = NULL;
	size_t nall = 0;
	ms_error err;
	if (is_flush && n == 0) {
		if (ms_spool_list(sp, &all, &nall, &err) != MS_OK) {
			fprintf(stderr, "%s: %s\n", progname, err.msg);
			ms_spool_close(sp);
			return EX_TEMPFAIL_;
		}
		ids = all;
		n = nall;
	}
	int rc = cli_change(sp, &conf, what, ids, n);
	ms_spool_ids_free(all, nall);
	ms_spool_close(sp);
	return rc;
}

typedef struct stats_ctx {
	int json, first;
} stats_ctx;

static void stats_row(void *ctx, const char *day, const char *purpose, uint64_t events,
                      uint64_t octets)
{
	stats_ctx *s = ctx;
	if (s->json)
		printf("%s\n  {\"day\":\"%s\",\"purpose\":\"%s\",\"events\":%llu,\"octets\":%llu}",
		       s->first ? "" : ",", day, purpose, (unsigned long long)events,
		       (unsigned long long)octets);
	else
		printf("%s  %-10s %8llu messages %14llu octets\n", day, purpose,
		       (unsigned long long)events, (unsigned long long)octets);
	s->first = 0;
}

int cmd_stats(int argc, char **argv)
{
	int json = 0;
	ms_conf conf;
	ms_spool *sp;
	int r = begin(argc, argv, "stats [-C FILE] [--json]", &json, &conf, &sp, "read the usage log");
	if (r >= 0)
		return r;
	stats_ctx s = { json, 1 };
	if (json)
		printf("{\"usage\":[");
	ms_error err;
	ms_status st = ms_spool_usage_sum(sp, stats_row, &s, &err);
	if (json)
		printf("\n]}\n");
	ms_spool_close(sp);
	if (st != MS_OK) {
		fprintf(stderr, "%s: %s\n", progname, err.msg);
		return EX_TEMPFAIL_;
	}
	return EX_OK_;
}

int cmd_sweep(int argc, char **argv)
{
	int json = 0;
	ms_conf conf;
	ms_spool *sp;
	int r = begin(argc, argv, "sweep [-C FILE] [--json]", &json, &conf, &sp, "repair the spool");
	if (r >= 0)
		return r;
	ms_sweep_report rep;
	ms_error err;
	ms_status st = ms_spool_sweep(sp, &rep, &err);
	ms_spool_close(sp);
	if (st != MS_OK) {
		fprintf(stderr, "%s: %s\n", progname, err.msg);
		return EX_TEMPFAIL_;
	}
	if (json)
		printf("{\"checked\":%zu,\"corrupt\":%zu,\"tmp_removed\":%zu,\"orphans_removed\":%zu,"
		       "\"claims_expired\":%zu}\n",
		       rep.checked, rep.corrupt, rep.tmp_removed, rep.orphans_removed, rep.claims_expired);
	else
		printf("%zu messages sound, %zu moved to corrupt/, %zu stale temporary files and %zu "
		       "orphaned data files removed, %zu expired claims broken\n",
		       rep.checked, rep.corrupt, rep.tmp_removed, rep.orphans_removed, rep.claims_expired);
	return rep.corrupt ? EX_TEMPFAIL_ : EX_OK_;
}
