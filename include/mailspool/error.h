/*
 * mailspool/error.h - error reporting for libmailspool.
 *
 * The library never exits and never prints.  Every fallible call returns an
 * ms_status and, when given an ms_error, fills it with a class and one human
 * sentence.  Programs map the class to an exit code (sysexits).
 *
 * Invariant: after a failing call that was given an ms_error, err->msg is a
 * NUL-terminated sentence and err->status equals the returned status.
 */
#ifndef MAILSPOOL_ERROR_H
#define MAILSPOOL_ERROR_H

#include <stddef.h>

typedef enum ms_status {
	MS_OK = 0,
	MS_ERR_USAGE,    /* the caller passed something invalid (address syntax, options) */
	MS_ERR_DATA,     /* message content that cannot be sent as it is */
	MS_ERR_NOMEM,    /* allocation failed or a named cap was exceeded */
	MS_ERR_IO,       /* a system call on a local file or socket failed */
	MS_ERR_TIMEOUT,  /* a deadline passed */
	MS_ERR_CONNECT,  /* could not reach the server */
	MS_ERR_PROTOCOL, /* the peer broke the protocol (garbage, over-long reply, ...) */
	MS_ERR_CLOSED,   /* the peer closed the connection */
	MS_ERR_TEMP,     /* the peer refused temporarily (4xx) */
	MS_ERR_PERM,     /* the peer refused permanently (5xx) */
	MS_ERR_DENIED    /* this user may not do that (file permissions, set-id rules) */
} ms_status;

#define MS_ERROR_MSG_MAX 512

typedef struct ms_error {
	ms_status status;
	char msg[MS_ERROR_MSG_MAX];
} ms_error;

/* Fill err (if non-NULL) with status and a printf-style sentence; returns status. */
ms_status ms_error_set(ms_error *err, ms_status status, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));


#endif
