/*
 * mailspool/smtpin.h - the SMTP server side of `sendmail -bs`.
 *
 * PHP frameworks (Symfony Mailer, Laravel), some Perl and Java code talk
 * SMTP to the program `sendmail -bs` over its standard input and output
 * instead of piping a message into it.  This module is that dialogue: the
 * commands of RFC 5321 a submitter needs (EHLO/HELO, MAIL, RCPT, DATA, RSET,
 * NOOP, VRFY, HELP, QUIT) with PIPELINING (RFC 2920), 8BITMIME (RFC 6152),
 * SMTPUTF8 (RFC 6531), SIZE (RFC 1870) and ENHANCEDSTATUSCODES (RFC 2034).
 * Each message goes to the caller's `queue` callback, which puts it into
 * the spool through the same submission path as `sendmail` (with the same
 * checks and limits); its answer becomes the reply to the final dot.
 *
 * Invariants:
 *  - nothing read is held unbounded: a command line is at most
 *    MS_SMTPIN_LINE_MAX octets (longer ones are refused and skipped), the
 *    message goes to an unlinked temporary file as it arrives;
 *  - every address is checked by ms_addr_parse before it is accepted, so
 *    no CR, LF or NUL reaches the spool;
 *  - only CR LF . CR LF ends the data (a bare LF before a dot does not:
 *    the "SMTP smuggling" ambiguity of 2023 cannot arise here);
 *  - every read and write has a deadline (5 minutes for a command, 10 for
 *    a data block, RFC 5321 4.5.3.2); a peer that lets it pass gets
 *    421 and the session ends;
 *  - replies are buffered while more pipelined input is already waiting
 *    and written when the input runs dry (RFC 2920 3.1).
 *
 * The module never prints, exits or forks: it reads in_fd and writes out_fd.
 */
#ifndef MAILSPOOL_SMTPIN_H
#define MAILSPOOL_SMTPIN_H

#include <stddef.h>
#include <stdint.h>
#include "mailspool/error.h"

#define MS_SMTPIN_LINE_MAX 1000    /* a command line with its CRLF */
#define MS_SMTPIN_RCPTS_MAX 1000   /* recipients per message */

/* One message, as the dialogue collected it. */
typedef struct ms_smtpin_msg {
	const char *sender;            /* the wire mailbox; "" for <> */
	const char *const *rcpts;      /* wire mailboxes */
	size_t nrcpts;
	int fd;                        /* the data, unstuffed, CRLF, at offset 0 */
	int utf8;                      /* MAIL ... SMTPUTF8 */
} ms_smtpin_msg;

typedef struct ms_smtpin_ops {
	/* Queue the message; write its queue id (NUL-terminated) into id.
	 * MS_ERR_TEMP / MS_ERR_IO / MS_ERR_NOMEM become 451, MS_ERR_DENIED 554
	 * 5.7.1, anything else 554 5.6.0, each with err's text. */
	ms_status (*queue)(void *ctx, const ms_smtpin_msg *m, char *id, size_t idn,
	                   ms_error *err);
	void *ctx;
} ms_smtpin_ops;

typedef struct ms_smtpin_opts {
	const char *hostname;          /* for the greeting and EHLO reply */
	uint64_t max_size;             /* SIZE; 0: no limit */
	const char *tmp_dir;           /* for the data file; NULL: /tmp */
	int command_timeout_ms;        /* 0: 300 s */
	int data_timeout_ms;           /* 0: 600 s */
} ms_smtpin_opts;

typedef struct ms_smtpin_stats {
	size_t messages;               /* queued */
	size_t refused;                /* refused at the dot */
} ms_smtpin_stats;

/* Run one session to QUIT, end of input or a deadline.  MS_OK after QUIT
 * or a clean end of input; MS_ERR_TIMEOUT, MS_ERR_IO otherwise (err says
 * why).  st (may be NULL) counts the messages. */
ms_status ms_smtpin_run(int in_fd, int out_fd, const ms_smtpin_opts *o, const ms_smtpin_ops *ops,
                        ms_smtpin_stats *st, ms_error *err);

#endif
