/*
 * mailspool/agent.h - the delivery agent: a long-lived process that
 * drives many delivery sessions at once, and the two grammars by which
 * the daemon's scheduler talks to it.
 *
 * The scheduler never delivers and never forks a copy of itself: it
 * starts a few agents (delivery_agents, about one per core) with
 * posix_spawn (the program mailspool-deliver, cmd/agent.c), writes units
 * of work to their standard input as messages become due, and reads
 * results from their standard output.  An agent runs as the queue's
 * owner, opens each data file itself (checked as every spool file is) and
 * never writes the queue (its only writes are the spool's MTA-STS cache,
 * sts/, and its TLS-RPT counts, tlsrpt/).
 *
 * Inside an agent each unit (one destination's messages) runs on its own
 * thread with a small stack, over one session at a time
 * (mailspool/deliver.h); the agent shares among its units a DNS cache
 * (mailspool/dnscache.h) and a pool of idle sessions (mailspool/pool.h),
 * so two domains with the same MX hosts ride one connection and a
 * session's greeting, EHLO and TLS are paid once.  A slow or hostile
 * server holds only its own unit's thread.
 *
 * Bounded duplicates: an agent holds at most `tokens` results between a
 * server's reply and hearing that the scheduler committed them (A lines):
 * a session whose next result finds no token waits before reporting it.
 * A scheduler killed at any moment therefore leaves at most that many
 * messages delivered but not recorded per agent, plus at most one per
 * session whose final dot was out and whose reply was not yet read (each
 * is sent again by the next holder).  A unit also carries a
 * deadline within its claims' lease: no message of it is started after
 * it, so a scheduler that stops (SIGSTOP) and loses its claims cannot have
 * its agents go on with mail another daemon now holds.
 *
 * Work, one record per line, every string escaped as envelope fields are
 * (ms_env_escape, after '='), so each is one token:
 *     K <unit> <deadline> <conn-messages> =<unit key>   a unit begins
 *     M <item> <queue id> <size> =<sender> <recipients> =<destination key>
 *       <ret> =<envid>                             (the DSN request, RFC 3461)
 *     P =<prefix>              at most once, right after its M: header lines
 *                              to send before the data file (DKIM signatures)
 *     T <envelope recipient index> =<address> <notify> =<orcpt>  (that many per M)
 *     E                                            the unit is complete
 *                    (a unit without M records only resolves its key: S, X)
 *     L <time>                 the scheduler's claims hold until then: no
 *                              message is started later (renewed as it goes)
 *     A <n>                    n more results were committed (tokens back)
 * Results, as soon as each message is decided:
 *     R <unit> <item> <rcpt> <state> <code> <dsn> <enh|-> =<relay> =<text> =<tls>
 *                              (<dsn> 1: delivered to a server offering DSN;
 *                              <tls>: ms_message.tls, "" if no server answered)
 *     D <unit> <item> <token>  every result of that message was sent
 *     N <unit> <item> <token>  not attempted (its session broke before a
 *                              server saw it, or the deadline came): the
 *                              scheduler sends it again, no attempt counted
 *     S <unit> =<site>         the MX rollup key of the unit's destination
 *     U <unit>                 no address of the destination answered
 *     H <unit>                 a server asked us to slow down (421, 4.7.x)
 *     C <unit> <connections> <reused> <tls verified> <tls unverified>
 *       <plain> <dns ok> <dns temporary> <dns permanent> <dns cached>
 *                              what the unit's sessions and lookups were
 *                              (for the metrics; before X)
 *     X <unit>                 every message of the unit was reported
 * <token> is 1 when the message held one of the agent's tokens: the
 * scheduler returns it with A once the result is committed.
 *
 * Invariants: a unit over MS_AGENT_WORK_MAX octets or a malformed line
 * ends the agent before that unit is delivered; the scheduler reads
 * results line by line with a capped line length and settles nothing an
 * agent did not report (a dead agent's messages are deferred).
 */
#ifndef MAILSPOOL_AGENT_H
#define MAILSPOOL_AGENT_H

#include <stddef.h>
#include <stdint.h>
#include "mailspool/buf.h"
#include "mailspool/conf.h"
#include "mailspool/envelope.h"
#include "mailspool/error.h"
#include "mailspool/metrics.h"
#include "mailspool/sched.h"
#include "mailspool/spool.h"

#define MS_AGENT_WORK_MAX (64u << 20) /* one unit */
/* A result line's cap: text and relay fully escaped, and the fields. */
#define MS_AGENT_LINE_MAX (MS_ENV_TEXT_MAX * 3 + MS_RELAY_DESC_MAX * 3 + 128)
#define MS_AGENT_TOKENS_DEFAULT 48
#define MS_AGENT_STACK (256u << 10) /* per unit thread */

/* Scheduler side: one unit's records. */
ms_status ms_agent_work_begin(ms_buf *b, uint64_t unit, int64_t deadline, size_t conn_messages,
                              const char *key);
ms_status ms_agent_work_message(ms_buf *b, size_t item, const ms_envelope *e, const size_t *idx,
                                size_t n, const char *dest);
ms_status ms_agent_work_end(ms_buf *b);

/* Scheduler side: one result line (NUL-terminated, no LF). */
typedef struct ms_agent_result {
	int kind;       /* 'R' 'D' 'N' 'S' 'U' 'H' 'C' 'X', or 0: not ours (ignored) */
	uint64_t unit;
	size_t item;
	int token;      /* D, N */
	ms_sched_result r; /* R */
	char site[MS_DEST_MAX]; /* S */
	ms_metrics_conn conn;   /* C */
} ms_agent_result;
void ms_agent_parse_result(const char *line, ms_agent_result *out);

typedef struct ms_agent_opts {
	size_t tokens;       /* uncommitted messages at most (MS_AGENT_TOKENS_DEFAULT) */
	int64_t idle_ms;     /* sessions parked this long for reuse (conf connection_reuse_time) */
	size_t max_idle;     /* sessions parked at once */
} ms_agent_opts;

/* Agent side: serve units from in_fd until it ends, results to out_fd;
 * returns when every unit has been reported.  MS_ERR_USAGE: malformed work
 * (the units already running are finished first). */
ms_status ms_agent_serve(const ms_conf *conf, ms_spool *sp, const ms_agent_opts *o, int in_fd,
                         int out_fd, ms_error *err);

#endif
