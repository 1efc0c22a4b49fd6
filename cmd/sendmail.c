/*
 * sendmail.c - the program run as `sendmail` or `mailq`.
 *
 * The command line of the traditional sendmail, as Postfix accepts it, so
 * that cron, git send-email, mutt, PHP's mail() and every other program that
 * pipes a message into /usr/sbin/sendmail work unchanged:
 *
 *     cron       sendmail -FCronDaemon -i -B8BITMIME -oem USER
 *     git        sendmail -i -f FROM RCPT...
 *     mutt       sendmail -oem -oi -f FROM -- RCPT...
 *     PHP        sendmail -t -i [-fFROM]
 *
 * Options are read up to the first argument that is not one (or "--"); the
 * rest are recipients.  Options may carry their value attached (-fFROM) or as
 * the next argument (-f FROM).  Historical options that change nothing here
 * are accepted and ignored, as Postfix does; options for modes we do not
 * have (-bd, -bv, ...) are refused with exit 64.
 *
 * -bs speaks SMTP on standard input and output (Symfony Mailer's and
 * Laravel's sendmail transport): the dialogue is the library's
 * (mailspool/smtpin.h); each message it collects is queued here through
 * the same path as a piped one.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "mailspool/aliases.h"
#include "mailspool/smtpin.h"
#include "mailspool/version.h"

/* sendmail --version, -bV, mailq --version, newaliases --version. */
static int print_version(void)
{
	printf("%s (mailspool %s)\n", progname, MS_VERSION);
	return EX_OK_;
}

static int usage_sendmail(void)
{
	fprintf(stderr,
	        "usage: %s [-t] [-i|-oi] [-f SENDER] [-F NAME] [-C FILE] [-odq|-odi|-odb] [-v] "
	        "[--] [RECIPIENT...] < message\n"
	        "       %s -bs          speak SMTP on standard input and output\n"
	        "       %s -bi          check the aliases file (as newaliases)\n"
	        "       %s -bp          list the queue (as mailq)\n"
	        "       %s -q           make every queued message due now\n",
	        progname, progname, progname, progname, progname);
	return EX_USAGE_;
}

/* The value of an option: attached (-fFROM) or the next argument. */
static const char *value(int argc, char **argv, int *i, const char *attached, int *bad)
{
	if (*attached)
		return attached;
	if (*i + 1 < argc)
		return argv[++*i];
	*bad = 1;
	return NULL;
}

static void alias_warning(void *ctx, const char *msg)
{
	(void)ctx;
	fprintf(stderr, "%s: warning: ", progname);
	cli_put_safe(stderr, msg);
	fputc('\n', stderr);
}

int cli_check_aliases(const char *confp)
{
	/* There is no database to build (the file is read as it is at each
	 * submission): -bi and newaliases check it and say what they found. */
	ms_conf conf;
	int r = cli_load_conf(confp, &conf);
	if (r)
		return r;
	if (!conf.aliases[0]) {
		printf("%s: no aliases file is configured (aliases =)%s%s\n", progname,
		       conf.admin_address[0] ? "; local names go to " : "", conf.admin_address);
		return EX_OK_;
	}
	ms_aliases a;
	ms_error err;
	if (ms_aliases_load(&a, conf.aliases, alias_warning, NULL, &err) != MS_OK) {
		fprintf(stderr, "%s: ", progname);
		cli_put_safe(stderr, err.msg);
		fputc('\n', stderr);
		return err.status == MS_ERR_IO ? EX_NOINPUT_ : EX_CONFIG_;
	}
	printf("%s: %s: %zu aliases\n", progname, conf.aliases, a.n);
	ms_aliases_free(&a);
	return EX_OK_;
}

/* What a -bs session queues with: the submitter's options and the
 * queue (in-process or through the helper). */
typedef struct bs_ctx {
	ms_spool *sp;
	const ms_conf *conf;
	const ms_submit_opts *o;
} bs_ctx;

static ms_status bs_queue(void *ctx, const ms_smtpin_msg *m, char *id, size_t idn, ms_error *err)
{
	bs_ctx *b = ctx;
	ms_submit_opts so = *b->o;
	ms_submit_result res;
	so.sender = m->sender;
	so.rcpts = m->rcpts;
	so.nrcpts = m->nrcpts;
	so.from_headers = 0; /* the recipients are the RCPTs */
	so.dot_ends = 0;     /* the dialogue ended the data already */
	ms_status st = cli_queue_message(b->sp, b->conf, &so, m->fd, &res, err);
	if (st == MS_OK)
		snprintf(id, idn, "%s", res.id);
	return st;
}

/* sendmail -bs: one SMTP session on stdin/stdout, every message queued
 * (the daemon delivers: a -od mode is not applied). */
static int serve_bs(ms_spool *sp, const ms_conf *conf, const ms_submit_opts *o)
{
	bs_ctx b = { .sp = sp, .conf = conf, .o = o };
	ms_smtpin_ops ops = { .queue = bs_queue, .ctx = &b };
	ms_smtpin_opts so = { .hostname = conf->hostname, .max_size = conf->max_message_size };
	ms_smtpin_stats st;
	ms_error err;
	/* A client that hangs up must not kill us with SIGPIPE mid-queue. */
	signal(SIGPIPE, SIG_IGN);
	ms_status r = ms_smtpin_run(0, 1, &so, &ops, &st, &err);
	if (r != MS_OK) {
		fprintf(stderr, "%s: -bs: %s\n", progname, err.msg);
		return r == MS_ERR_TIMEOUT ? EX_TEMPFAIL_ : EX_IOERR_;
	}
	return EX_OK_;
}

int cmd_sendmail(int argc, char **argv)
{
	/* sendmail runs once per message (cron, PHP) and uses nothing of
	 * OpenSSL (envelopes are summed with libmd): OpenSSL is never
	 * initialised here, so openssl.cnf is not read. */
	ms_submit_opts o = { 0 };
	const char *confp = NULL;
	int list = 0, flush = 0, verbose = 0, bad = 0, bs = 0, check_aliases = 0, i;
	cli_mode mode = CLI_QUEUE; /* -odq, -odd; -odi: now, -odb: background */
	o.dot_ends = 1;
	for (i = 1; i < argc && !bad; i++) {
		const char *a = argv[i];
		if (a[0] != '-' || !a[1])
			break;
		if (!strcmp(a, "--")) {
			i++;
			break;
		}
		if (!strcmp(a, "--version"))
			return print_version();
		char opt = a[1];
		const char *rest = a + 2;
		switch (opt) {
		case 't': o.from_headers = 1; break;
		case 'i': o.dot_ends = 0; break;
		case 'v': verbose = 1; break;
		case 'f':
		case 'r': o.sender = value(argc, argv, &i, rest, &bad); break;
		case 'F': o.full_name = value(argc, argv, &i, rest, &bad); break;
		case 'C': confp = value(argc, argv, &i, rest, &bad); break;
		/* DSN (RFC 3461): -N notify, -R return, -V envelope id. */
		case 'N': case 'R': case 'V': {
			const char *v = value(argc, argv, &i, rest, &bad);
			char who[64];
			snprintf(who, sizeof who, "%s: -%c", progname, opt);
			if (v && cli_dsn_option(opt, v, who, &o.dsn_notify, &o.dsn_ret, &o.dsn_envid))
				return EX_USAGE_;
			break;
		}
		/* Body type, hop count, label, log file: accepted, ignored. */
		case 'B': case 'h': case 'L': case 'X':
			value(argc, argv, &i, rest, &bad);
			break;
		case 'o':
			if (!*rest) { /* "-o x value" */
				value(argc, argv, &i, rest, &bad);
				break;
			}
			if (!strcmp(rest, "i"))
				o.dot_ends = 0;
			else if (rest[0] == 'd' && rest[1] && strchr("qibd", rest[1]) && !rest[2])
				mode = rest[1] == 'i' ? CLI_NOW : rest[1] == 'b' ? CLI_BACKGROUND : CLI_QUEUE;
			else if (rest[0] == 'd') {
				fprintf(stderr, "%s: unknown delivery mode %s\n", progname, a);
				return EX_USAGE_;
			}
			/* -oem, -om, -o7, -o8, -oA..., -oQ...: historical, ignored */
			break;
		case 'q': flush = 1; break; /* -q, -q30m, -qR...: flush once */
		case 'b':
			if (!strcmp(rest, "p"))
				list = 1;
			else if (!strcmp(rest, "m"))
				; /* read mail from stdin: the default */
			else if (!strcmp(rest, "s"))
				bs = 1;
			else if (!strcmp(rest, "V")) /* Exim's -bV */
				return print_version();
			else if (!strcmp(rest, "i"))
				check_aliases = 1;
			else {
				fprintf(stderr, "%s: -b%s is not supported\n", progname, rest);
				return EX_USAGE_;
			}
			break;
		case 'I': check_aliases = 1; break;
		case 'G': case 'U': case 'm': case 'n': case 'x': case 'c': case 'e':
			break; /* historical flags without effect here */
		default:
			fprintf(stderr, "%s: unknown option %s\n", progname, a);
			return usage_sendmail();
		}
	}
	if (bad) {
		fprintf(stderr, "%s: option %s needs a value\n", progname, argv[i - 1]);
		return usage_sendmail();
	}
	if (check_aliases)
		return cli_check_aliases(confp);
	if (list)
		return cli_mailq(confp, 0);
	if (flush) {
		char *fargv[] = { "flush", "-C", (char *)(confp ? confp : ""), NULL };
		return cmd_hold(confp ? 3 : 1, fargv);
	}
	if (bs && i < argc) {
		fprintf(stderr, "%s: -bs takes its recipients from RCPT commands, not arguments\n",
		        progname);
		return EX_USAGE_;
	}
	ms_conf conf;
	ms_spool *sp;
	int r = cli_open_for_submit(confp, &conf, &sp);
	if (r)
		return r;
	if (bs) {
		o.user = cli_user();
		o.uid = (uint32_t)getuid();
		r = serve_bs(sp, &conf, &o);
		ms_spool_close(sp);
		return r;
	}
	if (mode != CLI_QUEUE && sp && !cli_deliver_now) {
		/* The owner delivers now in-process: that needs the main program
		 * (the light one has no SMTP); nothing of stdin is read yet. */
		ms_spool_close(sp);
		char **nargv = calloc((size_t)argc + 2, sizeof *nargv);
		if (!nargv)
			return EX_SOFTWARE_;
		nargv[0] = "mailspool";
		nargv[1] = "sendmail";
		for (int k = 1; k < argc; k++)
			nargv[k + 1] = argv[k];
		execv(MS_BINDIR "/mailspool", nargv);
		fprintf(stderr, "%s: cannot run %s/mailspool: %s\n", progname, MS_BINDIR,
		        strerror(errno));
		free(nargv);
		return EX_UNAVAILABLE_;
	}
	o.rcpts = (const char *const *)(argv + i);
	o.nrcpts = (size_t)(argc - i);
	if (!o.nrcpts && !o.from_headers) {
		fprintf(stderr, "%s: no recipients: give them as arguments or use -t\n", progname);
		ms_spool_close(sp);
		return EX_USAGE_;
	}
	o.user = cli_user();
	o.uid = (uint32_t)getuid();
	r = cli_submit(sp, &conf, &o, 0, NULL, !verbose, NULL, NULL, mode);
	ms_spool_close(sp);
	return r;
}

int cmd_newaliases(int argc, char **argv)
{
	const char *confp = NULL;
	for (int i = 1; i < argc; i++) {
		if (!strncmp(argv[i], "-C", 2))
			confp = argv[i][2] ? argv[i] + 2 : i + 1 < argc ? argv[++i] : NULL;
		else if (!strcmp(argv[i], "--version"))
			return print_version();
	}
	return cli_check_aliases(confp);
}

int cmd_mailq(int argc, char **argv)
{
	const char *confp = NULL;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--version"))
			return print_version();
		if (!strncmp(argv[i], "-C", 2))
			confp = argv[i][2] ? argv[i] + 2 : i + 1 < argc ? argv[++i] : NULL;
		/* -v, -Ac, -q...: accepted, the listing is the same */
	}
	return cli_mailq(confp, 0);
}
