/*
 * cli.h - what the parts of the mailspool program share.
 *
 * The program is thin: each command parses its arguments, calls the
 * library and maps the outcome to a sysexits code.  send.c and the SMTP/
 * QMTP path live in mailspool.c; the queue commands in queue.c; sendmail
 * and mailq compatibility in sendmail.c.
 */
#ifndef MAILSPOOL_CLI_H
#define MAILSPOOL_CLI_H

#include <stdio.h>
#include "mailspool/conf.h"
#include "mailspool/error.h"
#include "mailspool/spool.h"
#include "mailspool/submit.h"

enum { EX_OK_ = 0, EX_USAGE_ = 64, EX_DATAERR_ = 65, EX_NOINPUT_ = 66, EX_UNAVAILABLE_ = 69,
       EX_SOFTWARE_ = 70, EX_CANTCREAT_ = 73, EX_TEMPFAIL_ = 75 };

extern const char *progname;

/* Load the configuration (-C path or NULL) and open its spool; prints the
 * error and returns an exit code, or 0. */
int cli_open_spool(const char *conf_path, ms_conf *conf, ms_spool **sp, int create);
/* Exit code for a submission or queue error. */
int cli_exit_for(ms_status st);
/* The login name of the caller. */
const char *cli_user(void);

/* Delivery modes (send --mode, sendmail -od?). */
typedef enum cli_mode {
	CLI_QUEUE = 0,   /* Deferred: queue it, the daemon delivers */
	CLI_NOW,         /* Interactive: deliver now, report, queue nothing */
	CLI_BACKGROUND   /* deliver now; temporary failures stay queued for retry */
} cli_mode;
/* "queue", "now", "background" -> mode; -1 if unknown. */
int cli_mode_parse(const char *s);

/* Queue one message read from fd (and in modes now/background deliver it
 * at once); prints a line per message (per recipient when delivering;
 * nothing when quiet and all went well), or a JSON object to `json` (a
 * comma first unless *first), and returns an exit code. */
int cli_submit(ms_spool *sp, const ms_conf *conf, const ms_submit_opts *o, int fd,
               const char *name, int quiet, FILE *json, int *first, cli_mode mode);
int cmd_daemon(int argc, char **argv);

int cmd_queue(int argc, char **argv);
int cmd_show(int argc, char **argv);
int cmd_hold(int argc, char **argv);   /* hold, release, delete, flush by argv[0] */
int cmd_stats(int argc, char **argv);
int cmd_sweep(int argc, char **argv);
/* The queue listing (mailq, sendmail -bp, mailspool queue). */
int cli_list_queue(ms_spool *sp, int json);
int cmd_sendmail(int argc, char **argv);
int cmd_mailq(int argc, char **argv);

#endif
