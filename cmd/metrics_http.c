/*
 * metrics_http.c - the daemon's metrics served over HTTP for Prometheus
 * (metrics_listen = ADDRESS:PORT), with GNU libmicrohttpd.
 *
 * Why HTTP and this library (INTERNALS.md has the longer argument): a
 * scrape is what Prometheus, VictoriaMetrics and the OpenTelemetry
 * collector do natively, KumoMTA serves its metrics the same way, and a
 * textfile for node_exporter would need a second program and a timer.
 * libmicrohttpd is the small, long-maintained HTTP server library of the
 * field (Debian packages it; it is what many C daemons embed); writing an
 * HTTP parser here would be the hand-written code the project avoids.
 *
 * Trust: the listener runs inside the daemon, which runs as mail_owner,
 * never root; requests are parsed by the library with a small connection
 * limit, memory limit and timeout; only GET or HEAD of /metrics is
 * answered, and the body is made only from counters (mailspool/metrics.h)
 * whose labels come from a fixed set - nothing from a request reaches it.
 * The listener's thread blocks every signal, so SIGTERM and SIGHUP reach
 * the scheduler's thread as before.
 *
 * The library is opened with dlopen when a daemon is told to listen, not
 * linked: linking it loaded GnuTLS, p11-kit, nettle, gmp and six more
 * libraries into every `mailspool` process (send, sendmail -odi, every
 * command) - start-up work and resident pages none of them uses.
 */
#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "metrics_http.h"
#include "mailspool/dl.h"
#include "mailspool/buf.h"

#if MHD_VERSION >= 0x00097002
typedef enum MHD_Result mhd_result;
#else
typedef int mhd_result;
#endif

#ifndef MS_MHD_SONAME
#define MS_MHD_SONAME "libmicrohttpd.so.12"
#endif

/* The library's functions we call, from dlsym. */
typedef struct mhd_api {
	void *dl;
	__typeof__(MHD_start_daemon) *start_daemon;
	__typeof__(MHD_stop_daemon) *stop_daemon;
	__typeof__(MHD_create_response_from_buffer) *create_response_from_buffer;
	__typeof__(MHD_add_response_header) *add_response_header;
	__typeof__(MHD_queue_response) *queue_response;
	__typeof__(MHD_destroy_response) *destroy_response;
} mhd_api;

struct metrics_http {
	struct MHD_Daemon *mhd;
	ms_metrics *m;
	mhd_api api;
};

/* Open the library and find its functions; 0, or -1 with why set. */
static int mhd_open(mhd_api *a, char *why, size_t whylen)
{
	const ms_dl_sym syms[] = {
		{ "MHD_start_daemon", (void **)&a->start_daemon },
		{ "MHD_stop_daemon", (void **)&a->stop_daemon },
		{ "MHD_create_response_from_buffer", (void **)&a->create_response_from_buffer },
		{ "MHD_add_response_header", (void **)&a->add_response_header },
		{ "MHD_queue_response", (void **)&a->queue_response },
		{ "MHD_destroy_response", (void **)&a->destroy_response },
	};
	a->dl = ms_dl_open(MS_MHD_SONAME, "metrics_listen", syms, sizeof syms / sizeof syms[0], why,
	                   whylen);
	return a->dl ? 0 : -1;
}

static mhd_result answer(void *cls, struct MHD_Connection *conn, const char *url,
                         const char *method, const char *version, const char *upload,
                         size_t *upload_len, void **state)
{
	(void)version;
	(void)upload;
	(void)state;
	metrics_http *h = cls;
	int get = !strcmp(method, "GET"), head = !strcmp(method, "HEAD");
	unsigned code = MHD_HTTP_OK;
	ms_buf body;
	ms_buf_init(&body, 4u << 20);
	const char *type = MS_METRICS_CONTENT_TYPE;
	if (*upload_len) {
		*upload_len = 0; /* no request bodies: ignored, then refused below */
		code = MHD_HTTP_METHOD_NOT_ALLOWED;
	} else if (!get && !head) {
		code = MHD_HTTP_METHOD_NOT_ALLOWED;
	} else if (strcmp(url, "/metrics")) {
		code = MHD_HTTP_NOT_FOUND;
	}
	if (code == MHD_HTTP_OK) {
		if (ms_metrics_render(h->m, (int64_t)time(NULL), &body) != MS_OK)
			code = MHD_HTTP_INTERNAL_SERVER_ERROR;
	}
	if (code != MHD_HTTP_OK) {
		ms_buf_reset(&body);
		ms_buf_appendstr(&body, code == MHD_HTTP_NOT_FOUND ? "only /metrics here\n"
		                        : code == MHD_HTTP_METHOD_NOT_ALLOWED ? "GET or HEAD only\n"
		                                                               : "out of memory\n");
		type = "text/plain; charset=us-ascii";
	}
	struct MHD_Response *r = h->api.create_response_from_buffer(
		head ? 0 : ms_buf_avail(&body), (void *)ms_buf_ptr(&body), MHD_RESPMEM_MUST_COPY);
	ms_buf_free(&body);
	if (!r)
		return MHD_NO;
	h->api.add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
	if (code == MHD_HTTP_METHOD_NOT_ALLOWED)
		h->api.add_response_header(r, MHD_HTTP_HEADER_ALLOW, "GET, HEAD");
	mhd_result ret = h->api.queue_response(conn, code, r);
	h->api.destroy_response(r);
	return ret;
}

/* "127.0.0.1:9725", "[::1]:9725" -> a socket address. */
static int parse_listen(const char *s, struct sockaddr_storage *ss, socklen_t *len)
{
	char host[64];
	const char *colon = strrchr(s, ':');
	if (!colon || colon == s || (size_t)(colon - s) >= sizeof host)
		return -1;
	snprintf(host, sizeof host, "%.*s", (int)(colon - s), s);
	char *end;
	unsigned long port = strtoul(colon + 1, &end, 10);
	if (!colon[1] || *end || port == 0 || port > 65535)
		return -1;
	memset(ss, 0, sizeof *ss);
	size_t hl = strlen(host);
	if (hl >= 2 && host[0] == '[' && host[hl - 1] == ']') {
		host[hl - 1] = '\0';
		struct sockaddr_in6 *a = (struct sockaddr_in6 *)ss;
		a->sin6_family = AF_INET6;
		a->sin6_port = htons((uint16_t)port);
		*len = sizeof *a;
		return inet_pton(AF_INET6, host + 1, &a->sin6_addr) == 1 ? 0 : -1;
	}
	struct sockaddr_in *a = (struct sockaddr_in *)ss;
	a->sin_family = AF_INET;
	a->sin_port = htons((uint16_t)port);
	*len = sizeof *a;
	return inet_pton(AF_INET, host, &a->sin_addr) == 1 ? 0 : -1;
}

metrics_http *metrics_http_start(const char *listen, ms_metrics *m, char *why, size_t whylen)
{
	struct sockaddr_storage ss;
	socklen_t len;
	if (parse_listen(listen, &ss, &len) != 0) {
		snprintf(why, whylen, "metrics_listen %s is not ADDRESS:PORT", listen);
		return NULL;
	}
	metrics_http *h = calloc(1, sizeof *h);
	if (!h) {
		snprintf(why, whylen, "out of memory");
		return NULL;
	}
	h->m = m;
	if (mhd_open(&h->api, why, whylen) != 0) {
		free(h);
		return NULL;
	}
	/* The listener's thread inherits this mask: every signal blocked. */
	sigset_t all, old;
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG;
	if (ss.ss_family == AF_INET6)
		flags |= MHD_USE_IPv6;
	h->mhd = h->api.start_daemon(flags, 0, NULL, NULL, answer, h,
	                          MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss,
	                          MHD_OPTION_CONNECTION_LIMIT, (unsigned)8,
	                          MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)10,
	                          MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)(32u << 10),
	                          MHD_OPTION_END);
	int e = errno;
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (!h->mhd) {
		snprintf(why, whylen, "cannot listen for metrics on %s: %s", listen,
		         e ? strerror(e) : "libmicrohttpd refused");
		dlclose(h->api.dl);
		free(h);
		return NULL;
	}
	(void)len;
	return h;
}

void metrics_http_stop(metrics_http *h)
{
	if (!h)
		return;
	h->api.stop_daemon(h->mhd);
	dlclose(h->api.dl);
	free(h);
}
