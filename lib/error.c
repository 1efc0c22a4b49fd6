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

