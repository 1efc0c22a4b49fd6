/*
 * mailspool/route.h - where a session goes and how it speaks, as a URL.
 *
 *     smtp://[USER@]HOST[:PORT]                 SMTP, port 25 by default
 *     smtps://[USER@]HOST[:PORT]                SMTP in TLS from the first byte
 *                                               (RFC 8314), port 465 by default
 *     qmtp://HOST[:PORT][?replies=package][&encoding=to-lf]
 *                                               QMTP, port 209 by default
 *
 * USER (percent-encoded, so user%40example.org) is the AUTH user name; a
 * password never goes in a URL.
 *
 * HOST is a name, an IPv4 address or a bracketed IPv6 literal ([::1]).
 * `replies=package` marks a QMTP server that answers once per package
 * instead of once per recipient (mailfront 2.12); `replies=recipient` is
 * the default, as the protocol specifies.
 *
 * Invariant: a parsed route holds only printable ASCII without spaces; a
 * URL with anything else is refused.
 */
#ifndef MAILSPOOL_ROUTE_H
#define MAILSPOOL_ROUTE_H

#include "mailspool/error.h"
#include "mailspool/qmtp.h"

#define MS_ROUTE_HOST_MAX 255

typedef enum ms_proto { MS_PROTO_SMTP = 0, MS_PROTO_QMTP } ms_proto;

typedef struct ms_route {
	ms_proto proto;
	char host[MS_ROUTE_HOST_MAX + 1];
	char port[6];
	ms_qmtp_replies qmtp_replies;
	ms_qmtp_encoding qmtp_encoding; /* AUTO unless the URL says */
	int implicit_tls;          /* smtps:// */
	char user[256];            /* AUTH user from the URL, "" if none */
	unsigned smtp_off;         /* MS_ROUTE_NO_*: SMTP shapes the URL turns off */
} ms_route;

/* smtp://HOST?chunking=no&cross_message=no&pipelining=no&rset_first=no */
enum {
	MS_ROUTE_NO_CHUNKING = 1u << 0,
	MS_ROUTE_NO_CROSS = 1u << 1,
	MS_ROUTE_NO_PIPELINING = 1u << 2,
	MS_ROUTE_NO_RSET_FIRST = 1u << 3,
};

/* Parse a route URL; MS_ERR_USAGE with a sentence naming the problem. */
ms_status ms_route_parse(const char *url, ms_route *r, ms_error *err);
const char *ms_proto_name(ms_proto p);

#endif
