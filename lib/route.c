/*
 * route.c - route URLs (see mailspool/route.h).
 */
#include "mailspool/route.h"

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
	} else if (!strncmp(url, "qmtp://", 7)) {
		r->proto = MS_PROTO_QMTP;
		defport = MS_QMTP_PORT;
	} else {
		return ms_error_set(err, MS_ERR_USAGE,
		                    "route \"%.200s\": want smtp://HOST[:PORT] or qmtp://HOST[:PORT]",
		                    url);
	}
	p = url + 7;
	const char *query = strchr(p, '?');
	size_t authority = query ? (size_t)(query - p) : strlen(p);
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
	if (hl == 0 || hl > MS_ROUTE_HOST_MAX || memchr(p, '/', hl) || memchr(p, '@', hl))
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
