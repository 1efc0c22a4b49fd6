/*
 * dsnreq.c - DSN request parameters (see mailspool/dsnreq.h).
 */
#include "mailspool/dsnreq.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

ms_status ms_dsn_notify_parse(const char *s, unsigned *out, ms_error *err)
{
	unsigned v = 0;
	char buf[64];
	if (!s || !*s || strlen(s) >= sizeof buf)
		return ms_error_set(err, MS_ERR_USAGE, "NOTIFY wants never or success,failure,delay");
	snprintf(buf, sizeof buf, "%s", s);
	for (char *save, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
		unsigned bit = !strcasecmp(t, "never")     ? MS_NOTIFY_NEVER
		               : !strcasecmp(t, "success") ? MS_NOTIFY_SUCCESS
		               : !strcasecmp(t, "failure") ? MS_NOTIFY_FAILURE
		               : !strcasecmp(t, "delay")   ? MS_NOTIFY_DELAY
		                                           : 0;
		if (!bit)
			return ms_error_set(err, MS_ERR_USAGE,
			                    "NOTIFY: unknown \"%.20s\" (never, success, failure, delay)", t);
		v |= bit;
	}
	/* RFC 3461 4.1: NEVER stands alone. */
	if (!v || ((v & MS_NOTIFY_NEVER) && v != MS_NOTIFY_NEVER))
		return ms_error_set(err, MS_ERR_USAGE, "NOTIFY: never cannot be combined");
	*out = v;
	return MS_OK;
}

void ms_dsn_notify_format(unsigned notify, char *out, size_t n)
{
	if (notify & MS_NOTIFY_NEVER) {
		snprintf(out, n, "NEVER");
		return;
	}
	snprintf(out, n, "%s%s%s%s%s", notify & MS_NOTIFY_SUCCESS ? "SUCCESS" : "",
	         (notify & MS_NOTIFY_SUCCESS) && (notify & (MS_NOTIFY_FAILURE | MS_NOTIFY_DELAY))
	             ? ","
	             : "",
	         notify & MS_NOTIFY_FAILURE ? "FAILURE" : "",
	         (notify & MS_NOTIFY_FAILURE) && (notify & MS_NOTIFY_DELAY) ? "," : "",
	         notify & MS_NOTIFY_DELAY ? "DELAY" : "");
}

ms_status ms_dsn_ret_parse(const char *s, ms_dsn_ret *out, ms_error *err)
{
	if (s && !strcasecmp(s, "full"))
		*out = MS_DSN_RET_FULL;
	else if (s && !strcasecmp(s, "hdrs"))
		*out = MS_DSN_RET_HDRS;
	else
		return ms_error_set(err, MS_ERR_USAGE, "RET wants full or hdrs");
	return MS_OK;
}

const char *ms_dsn_ret_name(ms_dsn_ret r)
{
	return r == MS_DSN_RET_FULL ? "FULL" : r == MS_DSN_RET_HDRS ? "HDRS" : NULL;
}

ms_status ms_dsn_envid_check(const char *s, ms_error *err)
{
	size_t n = s ? strlen(s) : 0;
	if (n == 0 || n > MS_DSN_ENVID_MAX)
		return ms_error_set(err, MS_ERR_USAGE, "envelope id wants 1-%d octets", MS_DSN_ENVID_MAX);
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)s[i] <= 0x20 || (unsigned char)s[i] >= 0x7f)
			return ms_error_set(err, MS_ERR_USAGE,
			                    "envelope id must be printable ASCII without spaces");
	return MS_OK;
}

ms_status ms_dsn_orcpt_check(const char *s, ms_error *err)
{
	const char *semi = s ? strchr(s, ';') : NULL;
	size_t n = s ? strlen(s) : 0;
	if (!semi || semi == s || !semi[1] || n > MS_DSN_ORCPT_MAX + 32)
		return ms_error_set(err, MS_ERR_USAGE, "ORCPT wants type;address");
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)s[i] <= 0x20 || (unsigned char)s[i] >= 0x7f)
			return ms_error_set(err, MS_ERR_USAGE,
			                    "ORCPT must be printable ASCII without spaces");
	return MS_OK;
}

int ms_dsn_notify_ok(unsigned notify)
{
	return notify <= 15 && (!(notify & MS_NOTIFY_NEVER) || notify == MS_NOTIFY_NEVER);
}

int ms_dsn_wants(unsigned notify, unsigned kind)
{
	if (notify == 0)
		return kind != MS_NOTIFY_SUCCESS;
	return (notify & kind) != 0;
}

ms_status ms_xtext_append(ms_buf *b, const char *s)
{
	static const char hex[] = "0123456789ABCDEF";
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		if (*p > 0x20 && *p < 0x7f && *p != '+' && *p != '=') {
			if (ms_buf_append(b, p, 1) != MS_OK)
				return MS_ERR_NOMEM;
		} else {
			char e[3] = { '+', hex[*p >> 4], hex[*p & 15] };
			if (ms_buf_append(b, e, 3) != MS_OK)
				return MS_ERR_NOMEM;
		}
	}
	return MS_OK;
}
