/*
 * mailspool/submit.h - putting a message into the spool, as sendmail does.
 *
 * Reads a message from a file descriptor (a file or a pipe, streamed: only
 * the header block is held in memory), and:
 *  - takes recipients from the arguments and, with -t, from To, Cc and Bcc
 *    (RFC 5322 address lists: groups, display names, comments, quoted local
 *    parts), one copy per address;
 *  - removes every Bcc field from the stored message;
 *  - adds From (with -F's name), Date and Message-ID when missing
 *    (RFC 5322 3.6: both Date and From are required; Message-ID should be);
 *  - normalises every line end to CRLF (a bare CR or LF ends a line), so the
 *    stored data needs no further rewriting before SMTP; the same rule
 *    splits the header block into fields for -t and Bcc removal, so no
 *    field can hide behind a bare CR (one header line rule);
 *  - refuses, before anything is visible: an invalid envelope address
 *    (named), no recipients, a line over 998 octets (RFC 5322 2.1.1), NUL
 *    bytes, a message over max_message_size, a spool below min_free_space;
 *  - hands the result to a sink (mailspool/drop.h): the queue side checks
 *    it again, adds Received (with the real uid), commits and logs
 *    "spooled" in the usage log.
 *
 * Without -i (dot_ends), a line holding only "." ends the input, as
 * sendmail's does.  A header block that is not followed by an empty line
 * ends at the first line that is not a header field; the empty line is
 * inserted.
 *
 * Errors: MS_ERR_USAGE (an address or no recipients) and MS_ERR_DATA (the
 * message) are the submitter's to fix; MS_ERR_TEMP (space) and MS_ERR_IO
 * are worth trying again.  Nothing is queued in either case.
 */
#ifndef MAILSPOOL_SUBMIT_H
#define MAILSPOOL_SUBMIT_H

#include <stddef.h>
#include <stdint.h>
#include "mailspool/conf.h"
#include "mailspool/envelope.h"
#include "mailspool/error.h"
#include "mailspool/spool.h"

typedef struct ms_submit_opts {
	const char *sender;      /* envelope sender; NULL: user@hostname; "" the null sender */
	const char *full_name;   /* -F: display name for an added From: (may be NULL) */
	const char *user;        /* login name of the submitter (default sender, From:) */
	uint32_t uid;
	const char *const *rcpts;
	size_t nrcpts;
	int from_headers;        /* -t */
	int dot_ends;            /* a line "." alone ends the input (sendmail without -i) */
	uint32_t flags;          /* envelope flags at commit (MS_ENV_HOLD) */
	/* RFC 3461 (sendmail -N, -R, -V): checked by ms_submit_to. */
	unsigned dsn_notify;     /* for every recipient; 0: not given */
	int dsn_ret;             /* ms_dsn_ret; 0: not given */
	const char *dsn_envid;   /* NULL: not given */
} ms_submit_opts;

typedef struct ms_submit_result {
	char id[MS_ENV_ID_MAX + 1];
	uint64_t size;
	size_t nrcpts;
} ms_submit_result;

/* Where the prepared message goes: the spool itself (the owner,
 * in-process) or the set-id helper (everyone else); mailspool/drop.h has
 * both.  begin comes first; write gets the message in the spool's form;
 * commit gets the envelope (sender, recipients, flags) and fills res;
 * abort throws away whatever began. */
typedef struct ms_submit_sink {
	ms_status (*begin)(void *ctx, ms_error *err);
	ms_status (*write)(void *ctx, const void *p, size_t n, ms_error *err);
	ms_status (*commit)(void *ctx, const ms_envelope *env, ms_submit_result *res,
	                    ms_error *err);
	void (*abort)(void *ctx);
	void *ctx;
} ms_submit_sink;

/* Prepare the message read from in_fd and hand it to sink. */
ms_status ms_submit_to(const ms_submit_sink *sink, const ms_conf *conf, const ms_submit_opts *o,
                       int in_fd, ms_submit_result *res, ms_error *err);

/* The same straight into sp (the caller is the spool's owner), recorded
 * as from o->uid. */
ms_status ms_submit(ms_spool *sp, const ms_conf *conf, const ms_submit_opts *o, int in_fd,
                    ms_submit_result *res, ms_error *err);

#endif
