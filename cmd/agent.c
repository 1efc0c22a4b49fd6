/*
 * agent.c - mailspool-deliver, the delivery agent: the daemon starts a few
 * (delivery_agents), each drives many sessions at once (mailspool/agent.h
 * has the grammars and the threads; the work is the library's
 * ms_agent_serve).
 *
 *     mailspool-deliver --parent PID [-C FILE]   < work   > results
 *
 * It runs as the queue's owner (the daemon gave up root before starting
 * it), reads the spool's data files and never writes the spool.  It dies
 * with its scheduler: PDEATHSIG, and the scheduler's pid is checked after
 * setting it, so an agent whose scheduler is already gone exits at once -
 * whatever process 1 is (a daemon may itself be PID 1 in a container).
 * It can be run alone, for tests: without --parent it does not watch.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <unistd.h>

#include "cli.h"
#include "mailspool/agent.h"

const char *progname = "mailspool-deliver";

int main(int argc, char **argv)
{
	const char *confp = NULL;
	long parent = 0;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--parent") && i + 1 < argc) {
			char *end;
			parent = strtol(argv[++i], &end, 10);
			if (*end || parent <= 0) {
				fprintf(stderr, "%s: bad --parent\n", progname);
				return EX_USAGE_;
			}
		} else if (!strcmp(argv[i], "-C") && i + 1 < argc) {
			confp = argv[++i];
		} else {
			fprintf(stderr, "usage: %s [--parent PID] [-C FILE] < work > results\n", progname);
			return EX_USAGE_;
		}
	}
	if (parent) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (getppid() != (pid_t)parent)
			return EX_SOFTWARE_; /* the scheduler died before we watched it */
	}
	signal(SIGPIPE, SIG_IGN);
	/* One data file open per message: make room for the group. */
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	ms_conf *conf = malloc(sizeof *conf);
	if (!conf)
		return EX_SOFTWARE_;
	ms_spool *sp;
	int r = cli_load_conf(confp, conf);
	if (!r)
		r = cli_open_loaded(conf, &sp, 0);
	if (r) {
		free(conf);
		return r;
	}
	ms_error err;
	ms_agent_opts ao = { .tokens = conf->agent_uncommitted,
		                 .idle_ms = conf->connection_reuse_time * 1000,
		                 .max_idle = conf->max_deliveries };
	ms_status st = ms_agent_serve(conf, sp, &ao, STDIN_FILENO, STDOUT_FILENO, &err);
	if (st != MS_OK)
		fprintf(stderr, "%s: %s\n", progname, err.msg);
	ms_spool_close(sp);
	free(conf);
	return st == MS_OK ? EX_OK_ : EX_SOFTWARE_;
}
