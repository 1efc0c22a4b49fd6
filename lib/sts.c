/*
 * sts.c - MTA-STS policies: parsing, matching, the cache and the fetch
 * (see mailspool/sts.h; RFC 8461 3-5).
 */
#include "mailspool/sts.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "mailspool/buf.h"
#include "mailspool/dns.h"
#include "mailspool/hmap.h"
#include "mailspool/https.h"
#include "mailspool/io.h"

const char *ms_sts_mode_name(ms_sts_mode m)
{
	return m == MS_STS_ENFORCE ? "enforce" : m == MS_STS_TESTING ? "testing" : "none";
}

static void trim(const char **b, const char **e)
{
	while (*b < *e && (**b == ' ' || **b == '\t'))
		(*b)++;
	while (*e > *b && ((*e)[-1] == ' ' || (*e)[-1] == '\t' || (*e)[-1] == '\r'))
		(*e)--;
}

int ms_sts_parse(const char *text, size_t n, ms_sts_policy *p, char *why, size_t wn)
{
	memset(p, 0, sizeof *p);
	int version = 0, mode = 0, age = 0;
	const char *s = text, *end = text + n;
	while (s < end) {
		const char *nl = memchr(s, '\n', (size_t)(end - s));
		const char *le = nl ? nl : end;
		const char *colon = memchr(s, ':', (size_t)(le - s));
		if (colon) {
			const char *kb = s, *ke = colon, *vb = colon + 1, *ve = le;
			trim(&kb, &ke);
			trim(&vb, &ve);
			size_t kl = (size_t)(ke - kb), vl = (size_t)(ve - vb);
			if (kl == 7 && !memcmp(kb, "version", 7)) {
				version = vl == 5 && !memcmp(vb, "STSv1", 5) ? 1 : -1;
			} else if (kl == 4 && !memcmp(kb, "mode", 4)) {
				mode = 1;
				if (vl == 7 && !memcmp(vb, "enforce", 7))
					p->mode = MS_STS_ENFORCE;
				else if (vl == 7 && !memcmp(vb, "testing", 7))
					p->mode = MS_STS_TESTING;
				else if (vl == 4 && !memcmp(vb, "none", 4))
					p->mode = MS_STS_NONE;
				else
					mode = -1;
			} else if (kl == 7 && !memcmp(kb, "max_age", 7)) {
				char num[16];
				int64_t v = 0;
				age = -1;
				if (vl && vl < sizeof num) {
					memcpy(num, vb, vl);
					num[vl] = '\0';
					char *e2;
					v = strtoll(num, &e2, 10);
					if (!*e2 && num[0] >= '0' && num[0] <= '9' && v >= 0 && v <= MS_STS_MAX_AGE) {
						p->max_age = v;
						age = 1;
					}
				}
			} else if (kl == 2 && !memcmp(kb, "mx", 2)) {
				if (vl && vl < sizeof p->mx[0] && p->nmx < MS_STS_MX_MAX) {
					for (size_t i = 0; i < vl; i++)
						p->mx[p->nmx][i] = (char)tolower((unsigned char)vb[i]);
					p->mx[p->nmx][vl] = '\0';
					if (p->mx[p->nmx][vl - 1] == '.')
						p->mx[p->nmx][vl - 1] = '\0';
					p->nmx++;
				}
			} /* other fields are ignored (RFC 8461 3.2) */
		}
		s = nl ? nl + 1 : end;
	}
	const char *bad = version != 1 ? "no \"version: STSv1\""
	                  : mode != 1  ? "no valid mode"
	                  : age != 1   ? "no valid max_age"
	                  : p->mode != MS_STS_NONE && !p->nmx ? "no mx patterns"
	                                                      : NULL;
	if (bad) {
		snprintf(why, wn, "%s", bad);
		return -1;
	}
	p->found = 1;
	return 0;
}

int ms_sts_mx_ok(const ms_sts_policy *p, const char *host)
{
	char h[256];
	size_t n = strlen(host);
	if (n >= sizeof h)
		return 0;
	memcpy(h, host, n + 1);
	if (n && h[n - 1] == '.')
		h[n - 1] = '\0';
	for (size_t i = 0; i < p->nmx; i++) {
		const char *pat = p->mx[i];
		if (pat[0] == '*' && pat[1] == '.') {
			/* One label, and only one, in place of the '*'. */
			const char *dot = strchr(h, '.');
			if (dot && dot > h && !strcasecmp(dot + 1, pat + 2))
				return 1;
		} else if (!strcasecmp(h, pat)) {
			return 1;
		}
	}
	return 0;
}

/* ---- the cache ---- */

/* A `_mta-sts` TXT answer kept for MS_STS_TXT_KEEP seconds: without it
 * every session to a domain cost a lookup (and thousands of sessions at
 * once a burst of them that a resolver's socket buffer drops). */
typedef struct txt_answer {
	int64_t until;
	int found;
	char id[33];
} txt_answer;

struct ms_sts_cache {
	pthread_mutex_t mu;
	ms_hmap mem; /* domain -> ms_sts_policy* */
	ms_hmap txt; /* domain -> txt_answer* */
	/* TXT lookups at once: a thousand sessions starting together sent a
	 * thousand queries in one burst, and the resolver dropped some (each
	 * drop a retry a second later). */
	pthread_cond_t slot_cv;
	size_t asking;
	int dfd;
};

#define STS_TXT_AT_ONCE 16
#define STS_TXT_MAX 100000 /* answers kept at most (the DNS cache's bound) */

ms_sts_cache *ms_sts_cache_new(ms_spool *sp)
{
	/* Without its directory the cache still works, in memory only. */
	int dfd = -1;
	ms_error err;
	if (!sp || ms_spool_state_dir(sp, MS_STS_DIR, &dfd, &err) != MS_OK)
		dfd = -1;
	ms_sts_cache *c = calloc(1, sizeof *c);
	if (!c) {
		if (dfd >= 0)
			close(dfd);
		return NULL;
	}
	pthread_mutex_init(&c->mu, NULL);
	ms_hmap_init(&c->mem);
	ms_hmap_init(&c->txt);
	pthread_cond_init(&c->slot_cv, NULL);
	c->dfd = dfd;
	return c;
}

/* A map and the values it owns. */
static void free_map(ms_hmap *m)
{
	const char *k;
	void *v;
	for (size_t i = 0; (i = ms_hmap_next(m, i, &k, &v)) != 0;)
		free(v);
	ms_hmap_free(m);
}

void ms_sts_cache_free(ms_sts_cache *c)
{
	if (!c)
		return;
	free_map(&c->mem);
	free_map(&c->txt);
	if (c->dfd >= 0)
		close(c->dfd);
	pthread_cond_destroy(&c->slot_cv);
	pthread_mutex_destroy(&c->mu);
	free(c);
}

/* The domain as a file name: lower case letters, digits, '-', '.', '_'. */
static int file_name(const char *domain, char *out, size_t n)
{
	size_t l = strlen(domain);
	if (!l || l >= n || domain[0] == '.')
		return 0;
	for (size_t i = 0; i <= l; i++) {
		char ch = (char)tolower((unsigned char)domain[i]);
		if (ch && !isalnum((unsigned char)ch) && ch != '-' && ch != '.' && ch != '_')
			return 0;
		out[i] = ch;
	}
	return 1;
}

/* File format: "MSSTS 1\nid ID\nfetched T\n\n" then the policy text. */
static int load_file(ms_sts_cache *c, const char *name, ms_sts_policy *p)
{
	if (c->dfd < 0)
		return 0;
	int fd = openat(c->dfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
	if (fd < 0)
		return 0;
	struct stat st;
	char *buf = NULL;
	int ok = fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_uid == geteuid() &&
	         st.st_size > 0 && st.st_size <= MS_STS_POLICY_MAX + 256 &&
	         (buf = malloc((size_t)st.st_size + 1)) &&
	         pread(fd, buf, (size_t)st.st_size, 0) == st.st_size;
	close(fd);
	if (ok) {
		buf[st.st_size] = '\0';
		char id[33];
		long long fetched = 0;
		int off = 0;
		char why[64];
		ok = sscanf(buf, "MSSTS 1\nid %32[0-9A-Za-z]\nfetched %lld\n\n%n", id, &fetched,
		            &off) == 2 &&
		     off > 0 &&
		     ms_sts_parse(buf + off, (size_t)(st.st_size - off), p, why, sizeof why) == 0;
		if (ok) {
			snprintf(p->id, sizeof p->id, "%s", id);
			p->fetched = fetched;
		}
	}
	free(buf);
	return ok;
}

static void save_file(ms_sts_cache *c, const char *name, const ms_sts_policy *p, const char *text,
                      size_t n)
{
	if (c->dfd < 0)
		return;
	char tmp[300];
	snprintf(tmp, sizeof tmp, ".%s.%ld", name, (long)getpid());
	int fd = openat(c->dfd, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd < 0)
		return;
	char head[128];
	int hl = snprintf(head, sizeof head, "MSSTS 1\nid %s\nfetched %lld\n\n", p->id,
	                  (long long)p->fetched);
	int ok = ms_write_all(fd, head, (size_t)hl) == 0 && ms_write_all(fd, text, n) == 0;
	if (close(fd) < 0 || !ok || renameat(c->dfd, tmp, c->dfd, name) < 0)
		unlinkat(c->dfd, tmp, 0);
}

static int fresh(const ms_sts_policy *p, int64_t now)
{
	return p->found && now < p->fetched + p->max_age;
}

/* Fetch and check the policy file; 0 with p and the text, or -1. */
static int fetch(const ms_conf *conf, const ms_dns_opts *dop, const char *domain,
                 ms_sts_policy *p, ms_buf *body, char *why, size_t wn)
{
	char host[300], addrs[4][46];
	if (wn < 2)
		return -1;
	snprintf(host, sizeof host, "mta-sts.%s", domain);
	size_t na = 0;
	ms_error err;
	if (ms_dns_host_addrs(host, dop, addrs, 4, &na, &err) != MS_OK || !na) {
		snprintf(why, wn, "%.300s", err.msg);
		return -1;
	}
	ms_https_req rq = { .host = host, .port = conf->mta_sts_port, .addr = addrs[0],
		                .path = "/.well-known/mta-sts.txt",
		                .ca_file = conf->tls_ca_file[0] ? conf->tls_ca_file : NULL,
		                .timeout_ms = 20000, .max_body = MS_STS_POLICY_MAX };
	ms_https_resp rs;
	if (ms_https_get(&rq, body, &rs, &err) != MS_OK) {
		snprintf(why, wn, "%.300s", err.msg);
		return -1;
	}
	/* RFC 8461 3.3: 200 and text/plain (parameters allowed), nothing else. */
	if (rs.status != 200) {
		snprintf(why, wn, "https://%s/.well-known/mta-sts.txt answered %ld", host, rs.status);
		return -1;
	}
	if (strncasecmp(rs.content_type, "text/plain", 10) ||
	    (rs.content_type[10] && rs.content_type[10] != ';' && rs.content_type[10] != ' ')) {
		snprintf(why, wn, "the policy's Content-Type is \"%.60s\", not text/plain",
		         rs.content_type);
		return -1;
	}
	char pw[64];
	if (ms_sts_parse(ms_buf_ptr(body), ms_buf_avail(body), p, pw, sizeof pw) < 0) {
		snprintf(why, wn, "the policy of %s is invalid: %s", domain, pw);
		return -1;
	}
	return 0;
}

/* The TXT record's id, from the answer kept or a lookup (a failed one is
 * not kept). */
static ms_status txt_id(ms_sts_cache *c, const char *key, const char *domain,
                        const ms_dns_opts *dop, int64_t now, char id[33], int *found)
{
	pthread_mutex_lock(&c->mu);
	txt_answer *t = ms_hmap_get(&c->txt, key);
	if (t && t->until > now) {
		*found = t->found;
		memcpy(id, t->id, 33);
		pthread_mutex_unlock(&c->mu);
		return MS_OK;
	}
	/* A slot, waiting at most one lookup's deadline (then asked anyway). */
	struct timespec until;
	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += dop->timeout_ms > 0 ? dop->timeout_ms / 1000 + 1 : 31;
	while (c->asking >= STS_TXT_AT_ONCE &&
	       pthread_cond_timedwait(&c->slot_cv, &c->mu, &until) == 0)
		;
	c->asking++;
	pthread_mutex_unlock(&c->mu);
	ms_error err;
	*found = 0;
	id[0] = '\0';
	ms_status st = ms_dns_sts_id(domain, dop, id, found, &err);
	pthread_mutex_lock(&c->mu);
	c->asking--;
	pthread_cond_signal(&c->slot_cv);
	if (st != MS_OK) {
		pthread_mutex_unlock(&c->mu);
		return st;
	}
	if (!ms_hmap_get(&c->txt, key) && c->txt.n >= STS_TXT_MAX) {
		/* Full: everything kept is forgotten (each costs one lookup
		 * again), so an agent that meets millions of domains stays
		 * bounded. */
		free_map(&c->txt);
		ms_hmap_init(&c->txt);
	}
	if (!(t = ms_hmap_get(&c->txt, key)) && (t = malloc(sizeof *t)) &&
	    ms_hmap_put(&c->txt, key, t) != 0) {
		free(t);
		t = NULL;
	}
	if (t) {
		t->until = now + MS_STS_TXT_KEEP;
		t->found = *found;
		memcpy(t->id, id, 33);
	}
	pthread_mutex_unlock(&c->mu);
	return MS_OK;
}

void ms_sts_policy_for(ms_sts_cache *c, const ms_conf *conf, const char *domain,
                       ms_sts_policy *out, char *note, size_t nn)
{
	memset(out, 0, sizeof *out);
	snprintf(note, nn, "no MTA-STS policy");
	char name[256];
	int as_file = file_name(domain, name, sizeof name);
	if (!as_file && strlen(domain) >= sizeof name)
		return;
	if (!as_file)
		snprintf(name, sizeof name, "%s", domain);
	int64_t now = (int64_t)time(NULL);
	/* What we have: memory, else the file. */
	ms_sts_policy cached;
	memset(&cached, 0, sizeof cached);
	pthread_mutex_lock(&c->mu);
	ms_sts_policy *m = ms_hmap_get(&c->mem, name);
	if (m)
		cached = *m;
	pthread_mutex_unlock(&c->mu);
	if (!m && as_file && load_file(c, name, &cached)) {
		pthread_mutex_lock(&c->mu);
		ms_sts_policy *copy = ms_hmap_get(&c->mem, name) ? NULL : malloc(sizeof *copy);
		if (copy) {
			*copy = cached;
			if (ms_hmap_put(&c->mem, name, copy) != 0)
				free(copy);
		}
		pthread_mutex_unlock(&c->mu);
	}
	ms_dns_opts dop;
	ms_dns_opts_default(&dop);
	dop.servers = conf->dns_servers[0] ? conf->dns_servers : NULL;
	dop.timeout_ms = (int)(conf->dns_timeout * 1000);
	char id[33];
	int found = 0;
	if (txt_id(c, name, domain, &dop, now, id, &found) != MS_OK || !found) {
		/* No record now, or no answer: a cached policy stays in force
		 * until it expires (RFC 8461 5.1). */
		if (fresh(&cached, now)) {
			*out = cached;
			snprintf(note, nn, "MTA-STS policy of %s (id %s, cached; %s)", domain, cached.id,
			         found ? "" : "no TXT record now");
		}
		return;
	}
	if (fresh(&cached, now) && !strcmp(cached.id, id)) {
		*out = cached;
		snprintf(note, nn, "MTA-STS policy of %s (id %s, cached)", domain, id);
		return;
	}
	ms_buf body;
	ms_buf_init(&body, MS_STS_POLICY_MAX);
	ms_sts_policy p;
	char why[400];
	if (fetch(conf, &dop, domain, &p, &body, why, sizeof why) == 0) {
		snprintf(p.id, sizeof p.id, "%s", id);
		p.fetched = now;
		*out = p;
		snprintf(note, nn, "MTA-STS policy of %s (id %s, fetched): mode %s", domain, id,
		         ms_sts_mode_name(p.mode));
		pthread_mutex_lock(&c->mu);
		ms_sts_policy *slot = ms_hmap_get(&c->mem, name);
		if (!slot && (slot = malloc(sizeof *slot)) && ms_hmap_put(&c->mem, name, slot) != 0) {
			free(slot);
			slot = NULL;
		}
		if (slot)
			*slot = p;
		pthread_mutex_unlock(&c->mu);
		if (as_file)
			save_file(c, name, &p, ms_buf_ptr(&body), ms_buf_avail(&body));
	} else if (fresh(&cached, now)) {
		*out = cached;
		snprintf(note, nn, "MTA-STS policy of %s: fetching id %s failed (%.200s); the cached "
		                   "policy (id %s) is used",
		         domain, id, why, cached.id);
	} else {
		snprintf(note, nn, "MTA-STS policy of %s: fetching id %s failed (%.300s); no policy",
		         domain, id, why);
	}
	ms_buf_free(&body);
}
