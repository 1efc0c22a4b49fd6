/*
 * error.c - the ms_error struct: one status and one human sentence.
 *
 * Messages are truncated at MS_ERROR_MSG_MAX; vsnprintf never overflows.
 */
#include "mailspool/error.h"

#include <stdarg.h>
#include <stdio.h>

ms_status ms_error_set(ms_error *err, ms_status status, const char *fmt, ...)
{
	if (err) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(err->msg, sizeof err->msg, fmt, ap);
		va_end(ap);
		err->status = status;
	}
	return status;
}

void ms_error_clear(ms_error *err)
{
	if (err) {
		err->status = MS_OK;
		err->msg[0] = '\0';
	}
}

const char *ms_status_name(ms_status status)
{
	switch (status) {
	case MS_OK: return "ok";
	case MS_ERR_USAGE: return "invalid argument";
	case MS_ERR_DATA: return "invalid data";
	case MS_ERR_NOMEM: return "out of memory";
	case MS_ERR_IO: return "I/O error";
	case MS_ERR_TIMEOUT: return "timeout";
	case MS_ERR_CONNECT: return "connection failed";
	case MS_ERR_PROTOCOL: return "protocol error";
	case MS_ERR_CLOSED: return "connection closed";
	case MS_ERR_TEMP: return "temporary failure";
	case MS_ERR_PERM: return "permanent failure";
	}
	return "unknown error";
}
