/*
 * mailspool/agent.h - the delivery agent's two grammars: the work the
 * scheduler hands an agent, and the results the agent sends back.
 *
 * The daemon's scheduler never delivers and never forks a copy of itself:
 * for each group of messages to one destination it execs the agent
 * program (mailspool-deliver, cmd/agent.c), qmail-remote style, writes the
 * work to its standard input and reads results from its standard output.
 * The agent runs as the queue's owner, opens each data file itself
 * (checked as every spool file is), delivers the group over one session
 * (mailspool/deliver.h) and never writes the spool.
 *
 * Work, one record per line, every string escaped as envelope fields are
 * (ms_env_escape, after '='), so each is one token:
 *     K =<destination key>
 *     M <item> <queue id> <size> =<sender> <recipients>
 *     T <envelope recipient index> =<address>      (that many per M)
 *     E                                            end of the work
 * Results, as soon as each message is decided:
 *     R <item> <rcpt> <state> <code> <enh|-> =<relay> =<text>
 *     D <item>                 every result of that message was sent
 *     U                        no address of the destination answered
 *
 * Invariants: work over MS_AGENT_WORK_MAX octets, a malformed line or a
 * missing E is refused before anything is delivered; the scheduler reads
 * results line by line with a capped line length and settles nothing an
 * agent did not report (a dead agent's recipients are deferred).
 */
#ifndef MAILSPOOL_AGENT_H
#define MAILSPOOL_AGENT_H

#include <stddef.h>
#include "mailspool/buf.h"
#include "mailspool/conf.h"
#include "mailspool/envelope.h"
#include "mailspool/error.h"
#include "mailspool/sched.h"
#include "mailspool/spool.h"

#define MS_AGENT_WORK_MAX (256u << 20)
/* A result line's cap: text and relay fully escaped, and the fields. */
#define MS_AGENT_LINE_MAX (MS_ENV_TEXT_MAX * 3 + MS_RELAY_DESC_MAX * 3 + 128)

/* Scheduler side: the work records for one destination. */
ms_status ms_agent_work_begin(ms_buf *b, const char *key);
ms_status ms_agent_work_message(ms_buf *b, size_t item, const ms_envelope *e, const size_t *idx,
                                size_t n);
ms_status ms_agent_work_end(ms_buf *b);

/* Scheduler side: one result line (NUL-terminated, no LF).  Returns 'R'
 * with *item and *r filled, 'D' with *item, 'U', or 0 for a line that is
 * not one of ours (ignored). */
int ms_agent_parse_result(const char *line, size_t *item, ms_sched_result *r);

/* Agent side: read the work from in_fd, deliver it, write results to
 * out_fd.  MS_ERR_USAGE: the work was malformed (nothing was delivered). */
ms_status ms_agent_run(const ms_conf *conf, ms_spool *sp, int in_fd, int out_fd, ms_error *err);

#endif
