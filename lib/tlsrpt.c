/*
 * tlsrpt.c - TLS-RPT aggregate counts and the RFC 8460 report (see
 * mailspool/tlsrpt.h; RFC 8460 4).
 */
#include "mailspool/tlsrpt.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "mailspool/envelope.h"
#include "mailspool/hmap.h"
#include "mailspool/io.h"
#include "mailspool/transcript.h"

#define LINE_MAX_ 3500 /* under PIPE_BUF: one write, never interleaved */
#define FIELD_MAX 600

struct ms_tlsrpt {
	int dfd;
};

ms_tlsrpt *ms_tlsrpt_new(ms_spool *sp)
{
	/* Without its directory nothing is counted (delivery goes on). */
	int dfd = -1;
	ms_error err;
	if (!sp || ms_spool_state_dir(sp, MS_TLSRPT_DIR, &dfd, &err) != MS_OK)
		dfd = -1;
	ms_tlsrpt *r = calloc(1, sizeof *r);
	if (!r) {
		if (dfd >= 0)
			close(dfd);
		return NULL;
	}
	r->dfd = dfd;
	return r;
}

void ms_tlsrpt_free(ms_tlsrpt *r)
{
	if (!r)
		return;
	if (r->dfd >= 0)
		close(r->dfd);
	free(r);
}

static void put(ms_buf *b, const char *s)
{
	size_t n = strlen(s);
	ms_buf_append(b, " =", 2);
	ms_env_escape(b, s, n > FIELD_MAX ? FIELD_MAX : n);
}

void ms_tlsrpt_add(ms_tlsrpt *r, const char *domain, const char *policy_type,
                   const char *policy_strings, const char *mx, int ok, const char *result_type,
                   const char *reason)
{
	if (!r || r->dfd < 0 || !domain || !*domain)
		return;
	time_t now = time(NULL);
	struct tm tm;
	gmtime_r(&now, &tm);
	char day[16];
	strftime(day, sizeof day, "%Y-%m-%d", &tm);
	ms_buf b;
	ms_buf_init(&b, LINE_MAX_);
	ms_buf_printf(&b, "T %lld", (long long)now);
	put(&b, domain);
	put(&b, policy_type);
	put(&b, policy_strings ? policy_strings : "");
	put(&b, mx ? mx : "");
	ms_buf_printf(&b, " %d", ok ? 1 : 0);
	put(&b, ok ? "" : result_type ? result_type : "validation-failure");
	put(&b, ok || !reason ? "" : reason);
	ms_buf_append(&b, "\n", 1);
	int fd = openat(r->dfd, day, O_WRONLY | O_APPEND | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd >= 0) {
		struct stat st;
		/* (A record lost is a count short in a report, nothing more.) */
		if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_uid == geteuid() &&
		    ms_buf_avail(&b) < LINE_MAX_)
			(void)!write(fd, ms_buf_ptr(&b), ms_buf_avail(&b));
		close(fd);
	}
	ms_buf_free(&b);
}

/* ---- reading a day back ---- */

typedef struct fail_row {
	char *result, *mx, *reason;
	uint64_t n;
} fail_row;

typedef struct policy_row {
	char *type, *strings;
	char *mx[16];
	size_t nmx;
	uint64_t ok, failed;
	fail_row *fails;
	size_t nfails;
} policy_row;

typedef struct domain_row {
	char *domain;
	policy_row *p;
	size_t np;
} domain_row;

static char *field(const char **p, const char *end)
{
	while (*p < end && **p == ' ')
		(*p)++;
	if (*p >= end || **p != '=')
		return NULL;
	const char *s = ++*p;
	while (*p < end && **p != ' ' && **p != '\n')
		(*p)++;
	return ms_env_unescape(s, (size_t)(*p - s), 4 * FIELD_MAX);
}

static int same(const char *a, const char *b)
{
	return !strcmp(a, b);
}

static void add_row(domain_row *d, char *type, char *strings, char *mx, int ok, char *result,
                    char *reason)
{
	policy_row *p = NULL;
	for (size_t i = 0; i < d->np && !p; i++)
		if (same(d->p[i].type, type) && same(d->p[i].strings, strings))
			p = &d->p[i];
	if (!p) {
		policy_row *np = realloc(d->p, (d->np + 1) * sizeof *np);
		if (!np)
			goto drop;
		d->p = np;
		p = &d->p[d->np++];
		memset(p, 0, sizeof *p);
		p->type = type;
		p->strings = strings;
		type = strings = NULL;
	}
	if (ok) {
		p->ok++;
	} else {
		/* One failure detail per result, reason and MX host. */
		p->failed++;
		fail_row *f = NULL;
		for (size_t i = 0; i < p->nfails && !f; i++)
			if (same(p->fails[i].result, result) && same(p->fails[i].reason, reason) &&
			    same(p->fails[i].mx, mx))
				f = &p->fails[i];
		if (!f) {
			fail_row *nf = realloc(p->fails, (p->nfails + 1) * sizeof *nf);
			char *mxc = strdup(mx);
			if (nf && mxc) {
				p->fails = nf;
				f = &p->fails[p->nfails++];
				f->result = result;
				f->reason = reason;
				f->mx = mxc;
				f->n = 0;
				result = reason = NULL;
			} else {
				if (nf)
					p->fails = nf;
				free(mxc);
			}
		}
		if (f)
			f->n++;
	}
	/* The MX hosts the policy was applied to (RFC 8460 4.4 mx-host). */
	int known = 0;
	for (size_t i = 0; i < p->nmx && !known; i++)
		known = same(p->mx[i], mx);
	if (!known && *mx && p->nmx < 16) {
		p->mx[p->nmx++] = mx;
		mx = NULL;
	}
drop:
	free(type);
	free(strings);
	free(mx);
	free(result);
	free(reason);
}

static void json_lines(ms_buf *b, const char *s)
{
	ms_buf_appendstr(b, "[");
	int first = 1;
	for (const char *p = s; *p;) {
		const char *nl = strchr(p, '\n');
		size_t n = nl ? (size_t)(nl - p) : strlen(p);
		if (n) {
			ms_buf_appendstr(b, first ? "" : ",");
			ms_json_string(b, p, n);
			first = 0;
		}
		p += n + (nl ? 1 : 0);
	}
	ms_buf_appendstr(b, "]");
}

static void report_one(ms_buf *b, const ms_tlsrpt_opts *o, const domain_row *d)
{
	ms_buf_appendstr(b, "{\"organization-name\":");
	ms_json_string(b, o->org, strlen(o->org));
	ms_buf_printf(b, ",\"date-range\":{\"start-datetime\":\"%sT00:00:00Z\","
	                 "\"end-datetime\":\"%sT23:59:59Z\"},\"contact-info\":",
	              o->day, o->day);
	ms_json_string(b, o->contact, strlen(o->contact));
	char id[600];
	snprintf(id, sizeof id, "%s_%s@%s", o->day, d->domain, o->report_host);
	ms_buf_appendstr(b, ",\"report-id\":");
	ms_json_string(b, id, strlen(id));
	ms_buf_appendstr(b, ",\"policies\":[");
	for (size_t i = 0; i < d->np; i++) {
		const policy_row *p = &d->p[i];
		ms_buf_appendstr(b, i ? ",{\"policy\":{\"policy-type\":" : "{\"policy\":{\"policy-type\":");
		ms_json_string(b, p->type, strlen(p->type));
		if (strcmp(p->type, "no-policy-found")) {
			ms_buf_appendstr(b, ",\"policy-string\":");
			json_lines(b, p->strings);
		}
		ms_buf_appendstr(b, ",\"policy-domain\":");
		ms_json_string(b, d->domain, strlen(d->domain));
		if (!strcmp(p->type, "sts") && p->nmx) {
			ms_buf_appendstr(b, ",\"mx-host\":[");
			for (size_t k = 0; k < p->nmx; k++) {
				ms_buf_appendstr(b, k ? "," : "");
				ms_json_string(b, p->mx[k], strlen(p->mx[k]));
			}
			ms_buf_appendstr(b, "]");
		}
		ms_buf_printf(b, "},\"summary\":{\"total-successful-session-count\":%llu,"
		                 "\"total-failure-session-count\":%llu}",
		              (unsigned long long)p->ok, (unsigned long long)p->failed);
		if (p->nfails) {
			ms_buf_appendstr(b, ",\"failure-details\":[");
			for (size_t k = 0; k < p->nfails; k++) {
				const fail_row *f = &p->fails[k];
				ms_buf_appendstr(b, k ? ",{\"result-type\":" : "{\"result-type\":");
				ms_json_string(b, f->result, strlen(f->result));
				if (*f->mx) {
					ms_buf_appendstr(b, ",\"receiving-mx-hostname\":");
					ms_json_string(b, f->mx, strlen(f->mx));
				}
				ms_buf_printf(b, ",\"failed-session-count\":%llu", (unsigned long long)f->n);
				if (*f->reason) {
					ms_buf_appendstr(b, ",\"failure-reason-code\":");
					ms_json_string(b, f->reason, strlen(f->reason));
				}
				ms_buf_appendstr(b, "}");
			}
			ms_buf_appendstr(b, "]");
		}
		ms_buf_appendstr(b, "}");
	}
	ms_buf_appendstr(b, "]}");
}

ms_status ms_tlsrpt_report(int dfd, const ms_tlsrpt_opts *o, ms_buf *out, ms_error *err)
{
	if (strlen(o->day) != 10 || strspn(o->day, "0123456789-") != 10)
		return ms_error_set(err, MS_ERR_USAGE, "a day is YYYY-MM-DD");
	int fd = openat(dfd, o->day, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
	if (fd < 0)
		return ms_error_set(err, MS_ERR_USAGE, "no TLS-RPT data for %s", o->day);
	struct stat st;
	char *buf = NULL;
	ssize_t got = -1;
	if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_uid == geteuid() &&
	    (buf = malloc((size_t)st.st_size + 1)))
		got = pread(fd, buf, (size_t)st.st_size, 0);
	close(fd);
	if (got < 0) {
		free(buf);
		return ms_error_set(err, MS_ERR_IO, "cannot read the TLS-RPT data for %s", o->day);
	}
	domain_row *dom = NULL;
	size_t nd = 0;
	const char *p = buf, *end = buf + got;
	while (p < end) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		if (!nl)
			break; /* a line being written */
		const char *q = p;
		long long t;
		int used = 0;
		char *f[7] = { 0 };
		int ok = -1;
		if (sscanf(q, "T %lld%n", &t, &used) == 1) {
			q += used;
			f[0] = field(&q, nl);
			f[1] = field(&q, nl);
			f[2] = field(&q, nl);
			f[3] = field(&q, nl);
			int k = 0;
			if (sscanf(q, " %d%n", &ok, &k) == 1)
				q += k;
			f[4] = field(&q, nl);
			f[5] = field(&q, nl);
		}
		int good = f[0] && f[1] && f[2] && f[3] && f[4] && f[5] && (ok == 0 || ok == 1) &&
		           q == nl && (!o->domain || !strcasecmp(f[0], o->domain));
		if (good) {
			domain_row *d = NULL;
			for (size_t i = 0; i < nd && !d; i++)
				if (same(dom[i].domain, f[0]))
					d = &dom[i];
			if (!d) {
				domain_row *nd2 = realloc(dom, (nd + 1) * sizeof *nd2);
				if (nd2) {
					dom = nd2;
					d = &dom[nd++];
					d->domain = f[0];
					f[0] = NULL;
					d->p = NULL;
					d->np = 0;
				}
			}
			if (d) {
				add_row(d, f[1], f[2], f[3], ok, f[4], f[5]);
				f[1] = f[2] = f[3] = f[4] = f[5] = NULL;
			}
		}
		for (int i = 0; i < 7; i++)
			free(f[i]);
		p = nl + 1;
	}
	free(buf);
	ms_status rs = MS_OK;
	if (!nd) {
		rs = ms_error_set(err, MS_ERR_USAGE, "no TLS-RPT data for %s%s%s", o->day,
		                  o->domain ? " and " : "", o->domain ? o->domain : "");
	} else {
		if (!o->domain)
			ms_buf_appendstr(out, "[");
		for (size_t i = 0; i < nd; i++) {
			if (i)
				ms_buf_appendstr(out, ",\n");
			report_one(out, o, &dom[i]);
		}
		ms_buf_appendstr(out, o->domain ? "\n" : "]\n");
	}
	for (size_t i = 0; i < nd; i++) {
		for (size_t k = 0; k < dom[i].np; k++) {
			policy_row *pr = &dom[i].p[k];
			free(pr->type);
			free(pr->strings);
			for (size_t m = 0; m < pr->nmx; m++)
				free(pr->mx[m]);
			for (size_t m = 0; m < pr->nfails; m++) {
				free(pr->fails[m].result);
				free(pr->fails[m].mx);
				free(pr->fails[m].reason);
			}
			free(pr->fails);
		}
		free(dom[i].p);
		free(dom[i].domain);
	}
	free(dom);
	return rs;
}
