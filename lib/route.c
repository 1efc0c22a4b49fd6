/*
 * route.c - route URLs (see mailspool/route.h).
 */
#include "mailspool/route.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "mailspool/addr.h"

const char *ms_proto_name(ms_proto p)
{
	return p == MS_PROTO_QMTP ? "qmtp" : "smtp";
}

static ms_status parse_query(const char *q, ms_route *r, const char *url, ms_error *err)
{
	while (*q) {
		const char *end = strchr(q, '&');
		size_t n = end ? (size_t)(end - q) : strlen(q);
		if (r->proto == MS_PROTO_QMTP && n == 15 && !strncmp(q, "replies=package", n))
			r->qmtp_replies = MS_QMTP_PER_PACKAGE;
		else if (r->proto == MS_PROTO_QMTP && n == 17 && !strncmp(q, "replies=recipient", n))
			r->qmtp_replies = MS_QMTP_PER_RECIPIENT;
		else if (r->proto == MS_PROTO_QMTP && n == 12 && !strncmp(q, "replies=auto", n))
			r->qmtp_replies = MS_QMTP_REPLIES_AUTO;
		else if (r->proto == MS_PROTO_QMTP && n == 14 && !strncmp(q, "encoding=to-lf", n))
			r->qmtp_encoding = MS_QMTP_ENC_TO_LF;
		else if (r->proto == MS_PROTO_SMTP && n == 11 && !strncmp(q, "chunking=no", n))
			r->smtp_off |= MS_ROUTE_NO_CHUNKING;
		else if (r->proto == MS_PROTO_SMTP && n == 16 && !strncmp(q, "cross_message=no", n))
			r->smtp_off |= MS_ROUTE_NO_CROSS;
		else if (r->proto == MS_PROTO_SMTP && n == 13 && !strncmp(q, "pipelining=no", n))
			r->smtp_off |= MS_ROUTE_NO_PIPELINING;
		else if (r->proto == MS_PROTO_SMTP && n == 13 && !strncmp(q, "rset_first=no", n))
			r->smtp_off |= MS_ROUTE_NO_RSET_FIRST;
		else
			return ms_error_set(err, MS_ERR_USAGE, "route \"%.200s\": unknown parameter \"%.*s\"",
			                    url, (int)(n > 64 ? 64 : n), q);
		q += n + (end ? 1 : 0);
	}
	return MS_OK;
}

ms_status ms_route_parse(const char *url, ms_route *r, ms_error *err)
{
	memset(r, 0, sizeof *r);
	if (!ms_addr_param_ok(url))
		return ms_error_set(err, MS_ERR_USAGE,
		                    "route URL must be printable ASCII without spaces");
	const char *p, *defport;
	if (!strncmp(url, "smtp://", 7)) {
		r->proto = MS_PROTO_SMTP;
		defport = "25";
	} else if (!strncmp(url, "smtps://", 8)) {
		r->proto = MS_PROTO_SMTP;
		r->implicit_tls = 1;
		defport = "465";
	} else if (!strncmp(url, "qmtp://", 7)) {
		r->proto = MS_PROTO_QMTP;
		defport = MS_QMTP_PORT;
	} else {
		return ms_error_set(err, MS_ERR_USAGE,
		                    "route \"%.200s\": want smtp://HOST[:PORT], smtps://HOST[:PORT] or "
		                    "qmtp://HOST[:PORT]",
		                    url);
	}
	p = url + (r->implicit_tls ? 8 : 7);
	const char *query = strchr(p, '?');
	size_t authority = query ? (size_t)(query - p) : strlen(p);
	const char *at = memchr(p, '@', authority);
	if (at) {
		if (r->proto == MS_PROTO_QMTP)
			return ms_error_set(err, MS_ERR_USAGE, "route \"%.200s\": QMTP has no AUTH user", url);
		size_t k = 0;
		for (const char *u = p; u < at; u++) {
			if (*u == ':')
				return ms_error_set(err, MS_ERR_USAGE,
				                    "route \"%.200s\": no password in a URL; use a password file",
				                    url);
			char ch = *u;
			if (ch == '%' && at - u > 2 && isxdigit((unsigned char)u[1]) &&
			    isxdigit((unsigned char)u[2])) {
				char hex[3] = { u[1], u[2], 0 };
				ch = (char)strtol(hex, NULL, 16);
				u += 2;
			}
			if ((unsigned char)ch < 0x20 || ch == 0x7f || k + 1 >= sizeof r->user)
				return ms_error_set(err, MS_ERR_USAGE, "route \"%.200s\": bad user name", url);
			r->user[k++] = ch;
		}
		r->user[k] = '\0';
		if (!k)
			return ms_error_set(err, MS_ERR_USAGE, "route \"%.200s\": empty user name", url);
		authority -= (size_t)(at + 1 - p);
		p = at + 1;
	}
	if (authority && p[authority - 1] == '/')
		authority--; /* smtp://host/ */
	const char *stop = p + authority, *hend, *colon = NULL;
	if (*p == '[') {
		hend = memchr(p, ']', authority);
		if (!hend)
			return ms_error_set(err, MS_ERR_USAGE, "route \"%.200s\": unclosed '['", url);
		p++;
		if (hend + 1 < stop) {
			if (hend[1] != ':')
				return ms_error_set(err, MS_ERR_USAGE, "route \"%.200s\": junk after ']'", url);
			colon = hend + 1;
		}
	} else {
		colon = memchr(p, ':', authority);
		hend = colon ? colon : stop;
	}
	size_t hl = (size_t)(hend - p);
	if (hl == 0 || hl > MS_ROUTE_HOST_MAX || memchr(p, '/', hl))
		return ms_error_set(err, MS_ERR_USAGE, "route \"%.200s\": bad host", url);
	memcpy(r->host, p, hl);
	r->host[hl] = '\0';
	const char *ps = colon ? colon + 1 : defport;
	size_t pl = colon ? (size_t)(stop - ps) : strlen(ps);
	if (pl == 0 || pl > 5 || strspn(ps, "0123456789") < pl)
		return ms_error_set(err, MS_ERR_USAGE, "route \"%.200s\": bad port", url);
	memcpy(r->port, ps, pl);
	r->port[pl] = '\0';
	long pn = strtol(r->port, NULL, 10);
	if (pn < 1 || pn > 65535)
		return ms_error_set(err, MS_ERR_USAGE, "route \"%.200s\": port out of range", url);
	return query ? parse_query(query + 1, r, url, err) : MS_OK;
}
