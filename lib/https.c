/*
 * https.c - one HTTPS GET through libcurl opened at run time (see
 * mailspool/https.h).
 */
#include "mailspool/https.h"

#include <curl/curl.h>
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "mailspool/dl.h"
#include "mailspool/version.h"

#ifndef MS_CURL_SONAME
#define MS_CURL_SONAME "libcurl.so.4"
#endif

static struct {
	void *dl;
	char why[256];
	__typeof__(curl_global_init) *global_init;
	__typeof__(curl_easy_init) *easy_init;
	__typeof__(curl_easy_setopt) *setopt;
	__typeof__(curl_easy_perform) *perform;
	__typeof__(curl_easy_getinfo) *getinfo;
	__typeof__(curl_easy_cleanup) *cleanup;
	__typeof__(curl_easy_strerror) *strerror;
	__typeof__(curl_slist_append) *slist_append;
	__typeof__(curl_slist_free_all) *slist_free_all;
} api;
static pthread_once_t api_once = PTHREAD_ONCE_INIT;

static void api_open(void)
{
	const ms_dl_sym syms[] = {
		{ "curl_global_init", (void **)&api.global_init },
		{ "curl_easy_init", (void **)&api.easy_init },
		{ "curl_easy_setopt", (void **)&api.setopt },
		{ "curl_easy_perform", (void **)&api.perform },
		{ "curl_easy_getinfo", (void **)&api.getinfo },
		{ "curl_easy_cleanup", (void **)&api.cleanup },
		{ "curl_easy_strerror", (void **)&api.strerror },
		{ "curl_slist_append", (void **)&api.slist_append },
		{ "curl_slist_free_all", (void **)&api.slist_free_all },
	};
	api.dl = ms_dl_open(MS_CURL_SONAME, "MTA-STS", syms, sizeof syms / sizeof syms[0], api.why,
	                    sizeof api.why);
	/* Once, before any thread uses it (curl_global_init is not
	 * thread-safe in every build). */
	if (api.dl && api.global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
		snprintf(api.why, sizeof api.why, "libcurl did not start");
		dlclose(api.dl);
		api.dl = NULL;
	}
}

typedef struct sink {
	ms_buf *body;
	size_t max;
	int over;
} sink;

static size_t on_body(char *p, size_t size, size_t n, void *ctx)
{
	sink *s = ctx;
	size_t k = size * n;
	if (ms_buf_avail(s->body) + k > s->max || ms_buf_append(s->body, p, k) != MS_OK) {
		s->over = 1;
		return 0; /* curl stops with CURLE_WRITE_ERROR */
	}
	return k;
}

ms_status ms_https_get(const ms_https_req *rq, ms_buf *body, ms_https_resp *rs, ms_error *err)
{
	memset(rs, 0, sizeof *rs);
	pthread_once(&api_once, api_open);
	if (!api.dl)
		return ms_error_set(err, MS_ERR_USAGE, "%s", api.why);
	char url[600], resolve[400];
	snprintf(url, sizeof url, "https://%s:%u%s", rq->host, rq->port, rq->path);
	/* An IPv6 address goes in brackets in the resolve entry. */
	snprintf(resolve, sizeof resolve, strchr(rq->addr, ':') ? "%s:%u:[%s]" : "%s:%u:%s",
	         rq->host, rq->port, rq->addr);
	CURL *h = api.easy_init();
	struct curl_slist *rl = api.slist_append(NULL, resolve);
	if (!h || !rl) {
		if (h)
			api.cleanup(h);
		api.slist_free_all(rl);
		return ms_error_set(err, MS_ERR_NOMEM, "out of memory");
	}
	char ua[64];
	snprintf(ua, sizeof ua, "mailspool/%s", MS_VERSION);
	sink s = { body, rq->max_body, 0 };
	api.setopt(h, CURLOPT_URL, url);
	api.setopt(h, CURLOPT_RESOLVE, rl);
	api.setopt(h, CURLOPT_PROTOCOLS_STR, "https");
	api.setopt(h, CURLOPT_FOLLOWLOCATION, 0L); /* RFC 8461 3.3: no redirects */
	api.setopt(h, CURLOPT_NOPROXY, "*");
	api.setopt(h, CURLOPT_NOSIGNAL, 1L);
	api.setopt(h, CURLOPT_SSL_VERIFYPEER, 1L);
	api.setopt(h, CURLOPT_SSL_VERIFYHOST, 2L);
	api.setopt(h, CURLOPT_SSLVERSION, (long)CURL_SSLVERSION_TLSv1_2);
	if (rq->ca_file && *rq->ca_file)
		api.setopt(h, CURLOPT_CAINFO, rq->ca_file);
	api.setopt(h, CURLOPT_TIMEOUT_MS, (long)rq->timeout_ms);
	api.setopt(h, CURLOPT_CONNECTTIMEOUT_MS, (long)rq->timeout_ms);
	api.setopt(h, CURLOPT_USERAGENT, ua);
	api.setopt(h, CURLOPT_WRITEFUNCTION, on_body);
	api.setopt(h, CURLOPT_WRITEDATA, &s);
	CURLcode rc = api.perform(h);
	ms_status st = MS_OK;
	if (rc != CURLE_OK) {
		ms_status kind = rc == CURLE_OPERATION_TIMEDOUT  ? MS_ERR_TIMEOUT
		                 : rc == CURLE_COULDNT_CONNECT  ? MS_ERR_CONNECT
		                                                : MS_ERR_PROTOCOL;
		st = s.over ? ms_error_set(err, MS_ERR_PROTOCOL, "%s: larger than %zu octets", url,
		                           rq->max_body)
		            : ms_error_set(err, kind, "%s: %s", url, api.strerror(rc));
	} else {
		char *ct = NULL;
		api.getinfo(h, CURLINFO_RESPONSE_CODE, &rs->status);
		if (api.getinfo(h, CURLINFO_CONTENT_TYPE, &ct) == CURLE_OK && ct)
			snprintf(rs->content_type, sizeof rs->content_type, "%s", ct);
	}
	api.cleanup(h);
	api.slist_free_all(rl);
	return st;
}
