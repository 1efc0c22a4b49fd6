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
       EX_SOFTWARE_ = 70, EX_CANTCREAT_ = 73, EX_IOERR_ = 74, EX_TEMPFAIL_ = 75, EX_NOPERM_ = 77,
       EX_CONFIG_ = 78 };

/* Where make install puts the helper programs (make LIBEXECDIR=...). */
#ifndef MS_LIBEXECDIR
#define MS_LIBEXECDIR "/usr/local/libexec/mailspool"
#endif
#ifndef MS_BINDIR
#define MS_BINDIR "/usr/local/bin"
#endif
#define MS_DROP_PROGRAM MS_LIBEXECDIR "/mailspool-drop"
#define MS_AGENT_PROGRAM MS_LIBEXECDIR "/mailspool-deliver"

/* ---- privileges (priv.c) ---- */
#include <sys/types.h>
/* mail_owner's uid and gid; prints the error and returns an exit code. */
int cli_owner(const ms_conf *c, uid_t *uid, gid_t *gid);
/* Is the caller root or mail_owner? */
int cli_caller_is_admin(const ms_conf *c);
/* Become mail_owner before touching the queue: nothing to do for the
 * owner; root gives up root for good; anyone else is refused (77, "only
 * root and the queue's owner may WHAT").  Returns 0 or an exit code. */
int cli_become_owner(const ms_conf *c, const char *what);
/* setgroups, setgid, setuid to uid/gid, verified. */
int cli_drop_to(uid_t uid, gid_t gid);

extern const char *progname;

/* Load the configuration (-C path or NULL) and open its spool; prints the
 * error and returns an exit code, or 0. */
int cli_open_spool(const char *conf_path, ms_conf *conf, ms_spool **sp, int create);
/* Load the configuration only. */
int cli_load_conf(const char *conf_path, ms_conf *conf);
/* Open the spool of a loaded configuration (after cli_become_owner). */
int cli_open_loaded(const ms_conf *conf, ms_spool **sp, int create);
/* hold, release, delete, flush of ids under their claims (listing.c);
 * flush without ids: everything queued.  Returns an exit code. */
int cli_change(ms_spool *sp, const ms_conf *conf, const char *what, char **ids, size_t n);
/* Run the set-id helper with these arguments (argv[0] excluded), its
 * standard streams ours: for mailq and flush by users.  Returns its exit
 * code. */
int cli_run_helper(const char *const *args);
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

/* Load the configuration for a submission: the spool when the caller is
 * its owner (in-process), else *sp = NULL (through the helper). */
int cli_open_for_submit(const char *conf_path, ms_conf *conf, ms_spool **sp);
/* Queue one message read from fd (and in modes now/background deliver it
 * at once); prints a line per message (per recipient when delivering;
 * nothing when quiet and all went well), or a JSON object to `json` (a
 * comma first unless *first), and returns an exit code. */
int cli_submit(ms_spool *sp, const ms_conf *conf, const ms_submit_opts *o, int fd,
               const char *name, int quiet, FILE *json, int *first, cli_mode mode);
/* One DSN option (RFC 3461) - kind 'N' the NOTIFY list, 'R' RET, 'V' the
 * ENVID - checked and stored in the field it sets; on a bad value prints
 * "WHO: why" and returns EX_USAGE_, else 0.  (send's --notify, --ret,
 * --envid and sendmail's -N, -R, -V.) */
int cli_dsn_option(char kind, const char *v, const char *who, unsigned *notify, int *ret,
                   const char **envid);
/* Queue one message read from fd, quietly: in-process for the owner,
 * through the set-id helper for everyone else (for sendmail -bs). */
ms_status cli_queue_message(ms_spool *sp, const ms_conf *conf, const ms_submit_opts *o, int fd,
                            ms_submit_result *res, ms_error *err);
/* Modes now and background for the owner (queue.c); NULL in the light
 * sendmail, which hands such submissions to the main program. */
typedef int (*cli_deliver_fn)(ms_spool *sp, const ms_conf *conf, const char *id,
                              const char *name, int quiet, FILE *json, cli_mode mode);
extern cli_deliver_fn cli_deliver_now;
/* -C FILE, --json, --help; returns -1 to go on, or an exit code. */
int cli_common_opts(int argc, char **argv, const char *usage, const char **conf, int *json);
int cmd_daemon(int argc, char **argv);
int cmd_setup(int argc, char **argv);
int cmd_dkim_keygen(int argc, char **argv); /* dkim.c */

int cmd_queue(int argc, char **argv);
int cmd_show(int argc, char **argv);
int cmd_hold(int argc, char **argv);   /* hold, release, delete, flush by argv[0] */
int cmd_stats(int argc, char **argv);
int cmd_sweep(int argc, char **argv);
int cmd_tls_report(int argc, char **argv);
/* Printing (listing.c): text from outside made printable; a reply;
 * local time; an envelope as JSON. */
void cli_put_safe(FILE *f, const char *s);
void cli_put_reply(FILE *f, int code, const char *enh, const char *text);
void cli_fmt_time(int64_t t, char *out, size_t n);
struct ms_buf;
void cli_json_envelope(struct ms_buf *b, const ms_envelope *e, int with_history);
/* The queue listing (mailq, sendmail -bp, mailspool queue). */
int cli_list_queue(ms_spool *sp, int json);
/* mailq: in-process for root and the owner, else through the helper. */
int cli_mailq(const char *confp, int json);
int cmd_sendmail(int argc, char **argv);
/* sendmail -bi, newaliases: check the aliases file; an exit code. */
int cli_check_aliases(const char *confp);
/* newaliases [-C FILE]: the same. */
int cmd_newaliases(int argc, char **argv);
int cmd_mailq(int argc, char **argv);

#endif
