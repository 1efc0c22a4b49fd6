/*
 * mailspool/drop.h - the queue side of a submission, and the hand-off
 * between a submitter and the set-id helper (SECURITY.md).
 *
 * Submission has two halves with different rights.  Everything that parses
 * the submitter's input (options, -t, header fields, line ends) runs with
 * the submitter's own rights (mailspool/submit.h) and produces a message
 * that is already in the spool's form: CRLF lines of at most 998 octets, no
 * NUL.  The queue side (ms_drop) runs as the spool's owner - in the set-id
 * helper mailspool-drop for anyone else, in-process for the owner itself -
 * and trusts none of it: it checks the data again as it streams into the
 * spool (every CR followed by LF, every LF preceded by CR, no NUL, lines
 * within 998 octets, the size within max_message_size of its own
 * configuration), puts its own Received field on top recording the real
 * uid, checks the envelope again (every address through ms_addr_parse; the
 * caller's uid, arrival, id, states and history are replaced), and commits
 * with the spool's protocol (mailspool/spool.h).
 *
 * The hand-off (submitter -> helper, on the helper's standard input):
 *     "MSDROP 1\n"
 *     netstring(chunk) ...         message data, chunks of 1..65536 octets
 *     "0:,"                        end of data (a cut stream never has it)
 *     netstring(envelope)          the envelope file format (envelope.h)
 * and back, on the helper's standard output, one line:
 *     "ok ID SIZE NRCPTS\n"  or  "error CLASS TEXT\n"
 * with CLASS one of usage, data, temp, io, denied.  A stream that ends
 * anywhere before the envelope is complete commits nothing.
 */
#ifndef MAILSPOOL_DROP_H
#define MAILSPOOL_DROP_H

#include <stddef.h>
#include <stdint.h>
#include "mailspool/conf.h"
#include "mailspool/envelope.h"
#include "mailspool/error.h"
#include "mailspool/spool.h"
#include "mailspool/submit.h"

#define MS_DROP_MAGIC "MSDROP 1\n"
#define MS_DROP_CHUNK_MAX 65536
#define MS_DROP_REPLY_MAX 1024

/* ---- the queue side (runs as the spool's owner) ---- */

typedef struct ms_drop ms_drop;

/* Start a message from real uid `uid`: free space checked, a spool file
 * opened, the Received field written. */
ms_status ms_drop_begin(ms_spool *sp, const ms_conf *conf, uint32_t uid, ms_drop **out,
                        ms_error *err);
/* Data in the spool's form, checked as it comes (MS_ERR_DATA: refused). */
ms_status ms_drop_write(ms_drop *d, const void *p, size_t n, ms_error *err);
/* Check env (sender, recipients, flags: only MS_ENV_HOLD is taken) and
 * commit; the drop is finished either way. */
ms_status ms_drop_commit(ms_drop *d, const ms_envelope *env, ms_submit_result *res,
                         ms_error *err);
void ms_drop_abort(ms_drop *d);

/* The in-process sink for ms_submit_to: straight into sp as `uid`. */
typedef struct ms_drop_local {
	ms_spool *sp;
	const ms_conf *conf;
	uint32_t uid;
	ms_drop *d;
} ms_drop_local;
ms_submit_sink ms_drop_local_sink(ms_drop_local *l);

/* The helper's whole job: read one hand-off from in_fd and commit it.
 * The reply line is for the caller to write (ms_drop_reply). */
ms_status ms_drop_serve(ms_spool *sp, const ms_conf *conf, uint32_t uid, int in_fd,
                        ms_submit_result *res, ms_error *err);
/* The reply line for a result. */
void ms_drop_reply(ms_status st, const ms_submit_result *res, const ms_error *err, char *out,
                   size_t n);

/* ---- the submitter's side ---- */

/* A sink writing the hand-off to to_fd and reading the reply from from_fd
 * (a helper the caller started; the caller ignores SIGPIPE). */
typedef struct ms_drop_pipe {
	int to_fd, from_fd;
	char *buf;
	size_t len;
} ms_drop_pipe;
ms_submit_sink ms_drop_pipe_sink(ms_drop_pipe *p, int to_fd, int from_fd);
/* Parse a reply line (MS_OK with res filled, or the error it reports). */
ms_status ms_drop_parse_reply(const char *line, ms_submit_result *res, ms_error *err);

#endif
