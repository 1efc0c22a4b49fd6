/*
 * daemon.c - `mailspool daemon`: signals, the log, detaching; the work is
 * the library's (mailspool/daemon.h).
 *
 * Log lines go to log_file: syslog (facility mail), stderr, or a file
 * opened for appending (each line written with one write(2), so several
 * daemons can share it).
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "metrics_http.h"
#include "mailspool/addr.h"
#include "mailspool/buf.h"
#include "mailspool/daemon.h"
#include "mailspool/dkim.h"
#include "mailspool/transcript.h"

static volatile sig_atomic_t stop_flag, reload_flag, reopen_flag;

static void on_stop(int sig)
{
	(void)sig;
	stop_flag = 1;
}

static void on_hup(int sig)
{
	(void)sig;
	reload_flag = 1;
	reopen_flag = 1;
}

typedef struct log_sink {
	int fd;      /* -1: syslog */
	int also_stderr;
	const char *path; /* log_file, reopened after SIGHUP; NULL: syslog or stderr */
	int json;         /* log_format = json */
} log_sink;

/* After SIGHUP the log file is opened again by name, so that logrotate's
 * rename-then-HUP moves the next line to the new file (the daemon runs as
 * the owner by then: the directory must let it create the file, or
 * logrotate's `create` make it).  Failing that, the old file is kept. */
static void reopen_log(log_sink *l)
{
	reopen_flag = 0;
	int fd = open(l->path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
	if (fd < 0) {
		char msg[600];
		int n = snprintf(msg, sizeof msg, "mailspool[%ld]: cannot reopen log_file %.400s: %s\n",
		                 (long)getpid(), l->path, strerror(errno));
		if (n > 0)
			(void)!write(l->fd, msg, (size_t)n < sizeof msg ? (size_t)n : sizeof msg - 1);
		return;
	}
	close(l->fd);
	l->fd = fd;
}

/* A queue id at the start of a text line ("ID: removed"): its length. */
static size_t leading_id(const char *line)
{
	size_t n = strspn(line, "0123456789abcdef");
	return n >= 16 && n <= MS_ENV_ID_MAX && line[n] == ':' && line[n + 1] == ' ' ? n : 0;
}

/* log_format = json: records from the library come as JSON objects; text
 * lines (daemon events) are wrapped as {"text": ...}; both get the time
 * and pid first. */
static int json_record(const char *line, const char *ts, ms_buf *out)
{
	ms_buf_printf(out, "{\"ts\":\"%s\",\"pid\":%ld,", ts, (long)getpid());
	if (line[0] == '{')
		return ms_buf_printf(out, "%s\n", line + 1) == MS_OK;
	size_t id = leading_id(line);
	if (id) {
		ms_buf_printf(out, "\"id\":\"%.*s\",", (int)id, line);
		line += id + 2;
	}
	ms_buf_appendstr(out, "\"text\":");
	ms_json_string(out, line, strlen(line));
	return ms_buf_appendstr(out, "}\n") == MS_OK;
}

static void log_line(void *ctx, const char *line)
{
	log_sink *l = ctx;
	/* Fields from outside were escaped where the line was made; this is
	 * the last defence for the line as a whole (a JSON record has its
	 * control bytes escaped already, so nothing changes in it). */
	char safe[MS_LOG_JSON_MAX];
	size_t k = 0, cap = l->json ? sizeof safe : MS_LOG_LINE_MAX;
	for (const char *p = line; *p && k + 1 < cap; p++)
		safe[k++] = (unsigned char)*p < 0x20 || *p == 0x7f ? '?' : *p;
	safe[k] = '\0';
	line = safe;
	if (reopen_flag && l->path)
		reopen_log(l);
	char ts[40];
	struct timespec now;
	clock_gettime(CLOCK_REALTIME, &now);
	struct tm tm;
	gmtime_r(&now.tv_sec, &tm);
	size_t tl = strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(ts + tl, sizeof ts - tl, ".%03ldZ", now.tv_nsec / 1000000);
	ms_buf rec;
	ms_buf_init(&rec, MS_LOG_JSON_MAX + 256);
	if (l->json) {
		if (!json_record(line, ts, &rec))
			goto out;
	} else if (ms_buf_printf(&rec, "%s mailspool[%ld]: %s\n", ts, (long)getpid(), line) != MS_OK)
		goto out;
	if (l->fd < 0)
		syslog(LOG_MAIL | LOG_INFO, "%.*s", (int)ms_buf_avail(&rec) - 1,
		       l->json ? ms_buf_ptr(&rec) : line);
	if (l->fd >= 0)
		(void)!write(l->fd, ms_buf_ptr(&rec), ms_buf_avail(&rec));
	if (l->also_stderr && l->fd != STDERR_FILENO)
		(void)!write(STDERR_FILENO, ms_buf_ptr(&rec), ms_buf_avail(&rec));
out:
	ms_buf_free(&rec);
}

/* The agent beside this program when it runs from a build tree (as the
 * tests do), else the installed one.  The daemon is never set-id, so
 * where it runs from is its own caller's choice. */
static const char *agent_program(void)
{
	static char path[4096];
	ssize_t n = readlink("/proc/self/exe", path, sizeof path - 32);
	if (n > 0) {
		path[n] = '\0';
		char *slash = strrchr(path, '/');
		if (slash) {
			snprintf(slash + 1, 32, "mailspool-deliver");
			if (access(path, X_OK) == 0)
				return path;
		}
	}
	return MS_AGENT_PROGRAM;
}

static void usage_daemon(FILE *f)
{
	fprintf(f,
	        "usage: %s daemon [-C FILE] [--foreground] [--once] [--node NAME]\n"
	        "\n"
	        "Deliver the spool: due messages are claimed, grouped by destination (MX\n"
	        "lookup, or route.DOMAIN / default_route in the configuration) and sent\n"
	        "over one pipelined connection per destination (more for large groups);\n"
	        "temporary failures are retried on the retry tiers, permanent ones and\n"
	        "exhausted tiers bounce to the sender.  Several daemons may share a spool,\n"
	        "on one host or several.\n"
	        "\n"
	        "  --foreground   stay attached; log to standard error too\n"
	        "  --once         deliver what is due now, then exit\n"
	        "  --node NAME    this dequeuer's name in claims (default: the host name)\n"
	        "\n"
	        "Signals: TERM/INT stop (in-flight deliveries get %d s to finish), HUP\n"
	        "rereads the configuration.  'mailspool flush' wakes it.\n",
	        progname, MS_DAEMON_GRACE_MS / 1000);
}

int cmd_daemon(int argc, char **argv)
{
	enum { O_FG = 256, O_ONCE, O_NODE, O_HELP };
	static const struct option opts[] = { { "foreground", no_argument, NULL, O_FG },
		                                  { "once", no_argument, NULL, O_ONCE },
		                                  { "node", required_argument, NULL, O_NODE },
		                                  { "help", no_argument, NULL, O_HELP },
		                                  { NULL, 0, NULL, 0 } };
	const char *confp = NULL, *node = NULL;
	int fg = 0, once = 0, c;
	optind = 1;
	while ((c = getopt_long(argc, argv, "C:", opts, NULL)) != -1) {
		switch (c) {
		case 'C': confp = optarg; break;
		case O_FG: fg = 1; break;
		case O_ONCE: once = 1; break;
		case O_NODE: node = optarg; break;
		case O_HELP: usage_daemon(stdout); return EX_OK_;
		default: usage_daemon(stderr); return EX_USAGE_;
		}
	}
	if (optind < argc) {
		usage_daemon(stderr);
		return EX_USAGE_;
	}
	char host[256];
	if (!node) {
		ms_addr_hostname(host, sizeof host);
		node = host;
	}
	for (const char *p = node; *p; p++)
		if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
		      *p == '-' || *p == '_' || *p == '.') ||
		    p - node > 63) {
			fprintf(stderr, "%s daemon: --node wants up to 64 of [A-Za-z0-9._-]\n", progname);
			return EX_USAGE_;
		}
	int required;
	const char *path = ms_conf_path(confp, &required);
	ms_conf *conf = malloc(sizeof *conf);
	ms_error err;
	if (!conf)
		return EX_SOFTWARE_;
	if (ms_conf_load(conf, path, required, &err) != MS_OK) {
		fprintf(stderr, "%s daemon: %s\n", progname, err.msg);
		free(conf);
		return EX_USAGE_;
	}
	/* The spool must be the owner's, and the daemon runs as the owner:
	 * root only opens the log first (it may be a file only root can
	 * create) and then gives up root for good, with no way back (no new
	 * privileges through exec either); its agents inherit all of it. */
	uid_t owner;
	gid_t group;
	int r = cli_owner(conf, &owner, &group);
	if (r) {
		free(conf);
		return r;
	}
	if (getuid() != owner && getuid() != 0) {
		fprintf(stderr, "%s daemon: only root and the queue's owner (%s) may run the daemon\n",
		        progname, conf->mail_owner);
		free(conf);
		return EX_NOPERM_;
	}
	log_sink sink = { -1, fg || once, NULL, conf->log_json };
	if (!strcmp(conf->log_file, "stderr")) {
		sink.fd = STDERR_FILENO;
	} else if (strcmp(conf->log_file, "syslog")) {
		sink.fd = open(conf->log_file, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
		sink.path = conf->log_file;
		if (sink.fd < 0) {
			fprintf(stderr, "%s daemon: cannot open log_file %s: %s\n", progname,
			        conf->log_file, strerror(errno));
			free(conf);
			return EX_CANTCREAT_;
		}
	} else {
		openlog("mailspool", LOG_PID, LOG_MAIL);
	}
	if ((r = cli_drop_to(owner, group))) {
		free(conf);
		return r;
	}
	prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
	ms_spool *check;
	if ((r = cli_open_loaded(conf, &check, 1))) {
		free(conf);
		return r;
	}
	if (ms_spool_owner(check) != owner) {
		fprintf(stderr, "%s daemon: %s belongs to uid %u, not to mail_owner %s (uid %u): run "
		                "'mailspool setup'\n",
		        progname, conf->spool_dir, (unsigned)ms_spool_owner(check), conf->mail_owner,
		        (unsigned)owner);
		ms_spool_close(check);
		free(conf);
		return EX_CONFIG_;
	}
	ms_spool_close(check);
	/* The DKIM keys, as the owner that will sign with them: one open to
	 * others, or one that cannot sign, stops the start (exit 78). */
	if (ms_dkim_check(conf, &err) != MS_OK) {
		fprintf(stderr, "%s daemon: %s\n", progname, err.msg);
		free(conf);
		return EX_CONFIG_;
	}
	if (!fg && !once) {
		if (daemon(0, 0) < 0) {
			fprintf(stderr, "%s daemon: cannot detach: %s\n", progname, strerror(errno));
			free(conf);
			return EX_SOFTWARE_;
		}
		sink.also_stderr = 0;
	}
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_stop;
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	sa.sa_handler = on_hup;
	sigaction(SIGHUP, &sa, NULL);
	signal(SIGPIPE, SIG_IGN); /* a dead agent is an EPIPE, not our end */
	ms_daemon_opts o = { .conf = conf, .conf_path = path, .conf_required = required,
		                 .node = node, .once = once, .stop = &stop_flag, .reload = &reload_flag,
		                 .log = log_line, .log_ctx = &sink, .agent = agent_program() };
	if (owner == 0)
		log_line(&sink, "warning: mail_owner is root: delivery runs with every privilege");
	/* metrics_listen: started after detaching (a fork keeps no threads)
	 * and as the owner; a configuration reload does not move it. */
	ms_metrics metrics;
	metrics_http *mh = NULL;
	if (conf->metrics_listen[0]) {
		char why[300];
		ms_metrics_init(&metrics);
		if (!(mh = metrics_http_start(conf->metrics_listen, &metrics, why, sizeof why))) {
			fprintf(stderr, "%s daemon: %s\n", progname, why);
			log_line(&sink, why);
			ms_metrics_destroy(&metrics);
			free(conf);
			return EX_UNAVAILABLE_;
		}
		o.metrics = &metrics;
	}
	ms_status st = ms_daemon_run(&o, &err);
	if (mh) {
		metrics_http_stop(mh);
		ms_metrics_destroy(&metrics);
	}
	if (st != MS_OK)
		fprintf(stderr, "%s daemon: %s\n", progname, err.msg);
	if (sink.fd > STDERR_FILENO)
		close(sink.fd);
	free(conf);
	return st == MS_OK ? EX_OK_ : cli_exit_for(st);
}
