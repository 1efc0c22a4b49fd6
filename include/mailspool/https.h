/*
 * mailspool/https.h - one HTTPS GET, for MTA-STS policies (RFC 8461 3.3).
 *
 * libcurl does the HTTP and the TLS (with OpenSSL), opened with dlopen at
 * the first fetch: linked, it would load its dozen protocol libraries into
 * every mailspool process, most of which never fetch anything.
 *
 * Invariants: HTTPS only, certificate and name verified (the system store
 * or ca_file), TLS 1.2 or later; no redirects, no proxy from the
 * environment, no cookies; the host's address is the one given (resolved
 * by our own resolver, dns_servers) so that curl does no DNS; the body is
 * capped and the whole fetch has a deadline.  Nothing here prints or
 * installs signal handlers (CURLOPT_NOSIGNAL).
 */
#ifndef MAILSPOOL_HTTPS_H
#define MAILSPOOL_HTTPS_H

#include <stddef.h>
#include "mailspool/buf.h"
#include "mailspool/error.h"

typedef struct ms_https_req {
	const char *host;     /* the name in the URL and the certificate */
	unsigned port;        /* 443 */
	const char *addr;     /* numeric address to connect to */
	const char *path;     /* "/.well-known/mta-sts.txt" */
	const char *ca_file;  /* NULL: the system store */
	int timeout_ms;
	size_t max_body;
} ms_https_req;

typedef struct ms_https_resp {
	long status;          /* HTTP status code */
	char content_type[128];
} ms_https_resp;

/* GET; body receives at most max_body octets (more is an error).
 * MS_ERR_CONNECT/MS_ERR_TIMEOUT/MS_ERR_PROTOCOL with curl's reason;
 * MS_ERR_USAGE when libcurl cannot be opened. */
ms_status ms_https_get(const ms_https_req *rq, ms_buf *body, ms_https_resp *rs, ms_error *err);

#endif
