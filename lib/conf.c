/*
 * conf.c - the configuration file (see mailspool/conf.h).
 */
#include "mailspool/conf.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "mailspool/addr.h"
#include "mailspool/hmap.h"
#include "mailspool/net.h" /* MS_NET_V4, MS_NET_V6 */
#include "mailspool/route.h"
#include "mailspool/tls.h"

#define LINE_MAX_ 8192

void ms_conf_defaults(ms_conf *c)
{
	static const int64_t tiers[] = { 0, 1800, 4 * 3600, 8 * 3600, 16 * 3600, 24 * 3600,
		                             48 * 3600 };
	memset(c, 0, sizeof *c);
	snprintf(c->spool_dir, sizeof c->spool_dir, "/var/spool/mailspool");
	ms_addr_hostname(c->hostname, sizeof c->hostname);
	c->max_message_size = 50u << 20;
	c->min_free_space = 100u << 20;
	memcpy(c->retry_tiers, tiers, sizeof tiers);
	c->ntiers = sizeof tiers / sizeof tiers[0];
	c->claim_lease = 300;
	c->clock_skew = 60;
	c->dns_timeout = 30;
	snprintf(c->mx_port, sizeof c->mx_port, "25");
	c->mta_sts_port = 443;
	/* Opportunistic, and DANE where DNSSEC-validated TLSA records say so
	 * (Postfix's smtp_tls_security_level = dane) */
	c->tls_security_level = MS_TLS_LEVEL_DANE;
	c->mx_address_limit = 5;
	c->max_deliveries = 1000;
	c->connection_reuse_time = 5;
	c->claim_window = 20000;
	c->destination_recovery = 30;
	c->agent_uncommitted = MS_CONF_UNCOMMITTED_DEFAULT;
	c->destination_concurrency = 10;
	c->connection_messages = 100;
	c->destination_backoff = 300;
	c->queue_scan_interval = 60;
	c->connect_timeout = 30;
	c->smtp_chunking = c->smtp_cross_message = c->smtp_rset_first = 1;
	c->smtp_bdat_messages = 128;
	c->smtp_bdat_bytes = 8u << 20;
	c->smtp_session_messages = 1000;
	c->smtp_session_failures = 8;
	snprintf(c->log_file, sizeof c->log_file, "syslog");
	snprintf(c->mail_owner, sizeof c->mail_owner, "mailspool");
	snprintf(c->authorized_mailq_users, sizeof c->authorized_mailq_users, "anyone");
}

int ms_conf_mailq_allowed(const ms_conf *c, const char *name)
{
	if (!strcmp(name, "root") || !strcmp(name, c->mail_owner) ||
	    !strcmp(c->authorized_mailq_users, "anyone"))
		return 1;
	char list[MS_CONF_VALUE_MAX];
	snprintf(list, sizeof list, "%s", c->authorized_mailq_users);
	for (char *save, *t = strtok_r(list, " \t,", &save); t; t = strtok_r(NULL, " \t,", &save))
		if (!strcmp(t, name))
			return 1;
	return 0;
}

/* A user name as useradd takes it: [a-z_][a-z0-9_-]*, at most 32. */
static int user_name_ok(const char *s)
{
	size_t n = strlen(s);
	if (n == 0 || n > MS_CONF_USER_MAX || !(islower((unsigned char)s[0]) || s[0] == '_'))
		return 0;
	for (size_t i = 0; i < n; i++)
		if (!(islower((unsigned char)s[i]) || isdigit((unsigned char)s[i]) || s[i] == '_' ||
		      s[i] == '-'))
			return 0;
	return 1;
}

const char *ms_conf_path(const char *explicit_path, int *required)
{
	*required = 1;
	if (explicit_path && *explicit_path)
		return explicit_path;
	const char *e = getenv("MAILSPOOL_CONFIG");
	if (e && *e)
		return e;
	*required = 0;
	return MS_CONF_DEFAULT_PATH;
}

int64_t ms_conf_duration(const char *s)
{
	if (!isdigit((unsigned char)*s))
		return -1;
	char *end;
	errno = 0;
	long long v = strtoll(s, &end, 10);
	if (errno || v < 0)
		return -1;
	int64_t mul = 1;
	if (*end == 's')
		end++;
	else if (*end == 'm')
		mul = 60, end++;
	else if (*end == 'h')
		mul = 3600, end++;
	else if (*end == 'd')
		mul = 86400, end++;
	if (*end || v > INT64_MAX / mul / 1000)
		return -1;
	return v * mul;
}

uint64_t ms_conf_size(const char *s, int *ok)
{
	*ok = 0;
	if (!isdigit((unsigned char)*s))
		return 0;
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno)
		return 0;
	uint64_t mul = 1;
	if (*end == 'k' || *end == 'K')
		mul = 1024, end++;
	else if (*end == 'M')
		mul = 1024 * 1024, end++;
	else if (*end == 'G')
		mul = 1024 * 1024 * 1024, end++;
	if (*end || v > UINT64_MAX / mul)
		return 0;
	*ok = 1;
	return v * mul;
}

static char *trim(char *s)
{
	while (*s == ' ' || *s == '\t')
		s++;
	size_t n = strlen(s);
	while (n && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r' || s[n - 1] == '\n'))
		s[--n] = '\0';
	return s;
}

static ms_conf_relay *relay_named(ms_conf *c, const char *name, size_t n, int create)
{
	for (size_t i = 0; i < c->nrelays; i++)
		if (strlen(c->relays[i].name) == n && !strncmp(c->relays[i].name, name, n))
			return &c->relays[i];
	if (!create || c->nrelays == MS_CONF_MAX_RELAYS || n == 0 || n >= sizeof c->relays[0].name)
		return NULL;
	ms_conf_relay *r = &c->relays[c->nrelays++];
	memset(r, 0, sizeof *r);
	memcpy(r->name, name, n);
	r->tls = -1;
	return r;
}

static int set_str(char *dst, size_t n, const char *val)
{
	if (strlen(val) >= n)
		return -1;
	snprintf(dst, n, "%s", val);
	return 0;
}

/* dkim.DOMAIN.FIELD = value: the lists are split by dkim_complete. */
static const char *apply_dkim(ms_conf *c, const char *key, const char *val)
{
	const char *dom = key + 5, *dot = strrchr(dom, '.');
	size_t dn = dot ? (size_t)(dot - dom) : 0;
	if (!dot || !dn || dn > MS_CONF_HOST_MAX)
		return "wants dkim.DOMAIN.selector, .key_file, .algorithm, .headers or "
		       ".canonicalization";
	size_t i = 0;
	while (i < c->ndkim &&
	       (strlen(c->dkim[i].domain) != dn || strncasecmp(c->dkim[i].domain, dom, dn)))
		i++;
	if (i == c->ndkim) {
		if (c->ndkim == MS_CONF_MAX_DKIM)
			return "too many DKIM signing domains";
		ms_conf_dkim *d = &c->dkim[c->ndkim++];
		memset(d, 0, sizeof *d);
		for (size_t k = 0; k < dn; k++)
			d->domain[k] = (char)tolower((unsigned char)dom[k]);
		d->relaxed_header = d->relaxed_body = 1;
	}
	ms_conf_dkim *d = &c->dkim[i];
	const char *f = dot + 1;
	if (!strcmp(f, "selector"))
		return set_str(d->selector_list, sizeof d->selector_list, val) ? "is too long" : NULL;
	if (!strcmp(f, "key_file"))
		return set_str(d->key_list, sizeof d->key_list, val) ? "is too long" : NULL;
	if (!strcmp(f, "algorithm"))
		return set_str(d->alg_list, sizeof d->alg_list, val) ? "is too long" : NULL;
	if (!strcmp(f, "headers")) {
		/* Field names (RFC 5322 ftext) separated by colons; From is
		 * required by RFC 6376 5.4 and added when missing. */
		for (const char *p = val; *p; p++)
			if (*p != ':' && (*p < 33 || *p > 126))
				return "wants field names separated by colons (From:To:Subject)";
		return set_str(d->headers, sizeof d->headers, val) ? "is too long" : NULL;
	}
	if (!strcmp(f, "canonicalization")) {
		char h[16] = "", b[16] = "";
		if (sscanf(val, "%15[a-z]/%15[a-z]", h, b) < 1)
			return "wants relaxed/relaxed, simple/simple, relaxed/simple or simple/relaxed";
		if (!*b)
			snprintf(b, sizeof b, "simple"); /* RFC 6376 3.5: c=relaxed means relaxed/simple */
		int hr = !strcmp(h, "relaxed"), br = !strcmp(b, "relaxed");
		if ((!hr && strcmp(h, "simple")) || (!br && strcmp(b, "simple")) ||
		    strlen(val) != strlen(h) + (strchr(val, '/') ? strlen(b) + 1 : 0))
			return "wants relaxed/relaxed, simple/simple, relaxed/simple or simple/relaxed";
		d->relaxed_header = hr;
		d->relaxed_body = br;
		return NULL;
	}
	return "wants dkim.DOMAIN.selector, .key_file, .algorithm, .headers or .canonicalization";
}

/* A selector (RFC 6376 3.1): dot-separated labels of letters, digits and
 * hyphens. */
static int selector_ok(const char *s)
{
	size_t n = strlen(s);
	if (!n || n >= sizeof ((ms_conf_dkim_sig *)0)->selector || s[0] == '.' || s[n - 1] == '.' ||
	    strstr(s, ".."))
		return 0;
	for (; *s; s++)
		if (!isalnum((unsigned char)*s) && *s != '-' && *s != '.' && *s != '_')
			return 0;
	return 1;
}

/* Split one DKIM entry's lists: a selector per signature, as many key
 * files, and no algorithms or as many. */
static ms_status dkim_complete(ms_conf_dkim *d, const char *path, ms_error *err)
{
	char sel[sizeof d->selector_list], key[sizeof d->key_list], alg[sizeof d->alg_list];
	snprintf(sel, sizeof sel, "%s", d->selector_list);
	snprintf(key, sizeof key, "%s", d->key_list);
	snprintf(alg, sizeof alg, "%s", d->alg_list);
	char *s1, *s2, *s3;
	char *ws = strtok_r(sel, " \t,", &s1), *wk = strtok_r(key, " \t,", &s2),
	     *wa = strtok_r(alg, " \t,", &s3);
	int with_alg = wa != NULL;
	d->nsigs = 0;
	for (; ws; ws = strtok_r(NULL, " \t,", &s1), wk = strtok_r(NULL, " \t,", &s2),
	           wa = with_alg ? strtok_r(NULL, " \t,", &s3) : NULL) {
		if (d->nsigs == MS_CONF_DKIM_SIGS)
			return ms_error_set(err, MS_ERR_USAGE, "%s: dkim.%s: at most %d selectors", path,
			                    d->domain, MS_CONF_DKIM_SIGS);
		if (!selector_ok(ws))
			return ms_error_set(err, MS_ERR_USAGE, "%s: dkim.%s.selector: bad selector %.64s",
			                    path, d->domain, ws);
		if (!wk || wk[0] != '/' || strlen(wk) >= MS_CONF_VALUE_MAX)
			return ms_error_set(err, MS_ERR_USAGE,
			                    "%s: dkim.%s.key_file wants an absolute path per selector",
			                    path, d->domain);
		ms_conf_dkim_sig *g = &d->sigs[d->nsigs++];
		snprintf(g->selector, sizeof g->selector, "%s", ws);
		snprintf(g->key_file, sizeof g->key_file, "%s", wk);
		g->alg = MS_DKIM_ALG_RSA_SHA256;
		if (with_alg) {
			if (wa && !strcmp(wa, "rsa-sha256"))
				g->alg = MS_DKIM_ALG_RSA_SHA256;
			else if (wa && !strcmp(wa, "ed25519-sha256"))
				g->alg = MS_DKIM_ALG_ED25519_SHA256;
			else
				return ms_error_set(err, MS_ERR_USAGE,
				                    "%s: dkim.%s.algorithm wants rsa-sha256 or "
				                    "ed25519-sha256 per selector",
				                    path, d->domain);
		}
	}
	if (!d->nsigs)
		return ms_error_set(err, MS_ERR_USAGE, "%s: dkim.%s wants a selector", path, d->domain);
	if (wk || (with_alg && wa))
		return ms_error_set(err, MS_ERR_USAGE,
		                    "%s: dkim.%s: more key files or algorithms than selectors", path,
		                    d->domain);
	return MS_OK;
}

/* relay.NAME.FIELD = value */
static const char *apply_relay(ms_conf *c, const char *key, const char *val)
{
	const char *name = key + 6, *dot = strchr(name, '.');
	if (!dot)
		return "wants relay.NAME.FIELD";
	ms_conf_relay *r = relay_named(c, name, (size_t)(dot - name), 1);
	if (!r)
		return "names too many relays, or a bad name";
	const char *f = dot + 1;
	if (!strcmp(f, "url")) {
		ms_route rt;
		if (ms_route_parse(val, &rt, NULL) != MS_OK)
			return "wants a route URL such as smtp://user@host:587";
		return set_str(r->url, sizeof r->url, val) ? "is too long" : NULL;
	}
	if (!strcmp(f, "tls")) {
		ms_tls_policy p;
		/* A relay has no MX records to take TLSA records from. */
		if (ms_tls_policy_parse(val, &p) < 0 || p > MS_TLS_VERIFY)
			return "wants none, may, encrypt or verify";
		r->tls = (int)p;
		return NULL;
	}
	if (!strcmp(f, "auth_plaintext")) {
		if (strcmp(val, "yes") && strcmp(val, "no"))
			return "wants yes or no";
		r->auth_plaintext = !strcmp(val, "yes");
		return NULL;
	}
	struct {
		const char *name;
		char *dst;
		size_t n;
	} strs[] = { { "tls_ca_file", r->tls_ca_file, sizeof r->tls_ca_file },
		         { "tls_name", r->tls_name, sizeof r->tls_name },
		         { "password_file", r->password_file, sizeof r->password_file },
		         { "password_eval", r->password_eval, sizeof r->password_eval },
		         { "oauth_token_eval", r->oauth_token_eval, sizeof r->oauth_token_eval },
		         { "auth_mechs", r->auth_mechs, sizeof r->auth_mechs } };
	for (size_t i = 0; i < sizeof strs / sizeof strs[0]; i++)
		if (!strcmp(f, strs[i].name))
			return set_str(strs[i].dst, strs[i].n, val) ? "is too long" : NULL;
	return "is not a known relay field";
}

/* A list of relay names into indexes (names may be defined later: they are
 * created here and checked for a url at the end). */
static const char *relay_list(ms_conf *c, char *val, int *out, size_t *n)
{
	*n = 0;
	for (char *save, *t = strtok_r(val, " \t,", &save); t; t = strtok_r(NULL, " \t,", &save)) {
		ms_conf_relay *r = relay_named(c, t, strlen(t), 1);
		if (!r || *n == MS_CONF_MAX_RELAYS)
			return "names too many relays";
		out[(*n)++] = (int)(r - c->relays);
	}
	return *n ? NULL : "wants relay names";
}

/* A route's value: "mx", a route URL, "relays", or relay names. */
static const char *route_value(ms_conf *c, ms_conf_route *r, char *val)
{
	if (!strcmp(val, "mx")) {
		r->kind = MS_ROUTE_MX;
		return NULL;
	}
	if (!strcmp(val, "relays")) {
		r->kind = MS_ROUTE_SENDER_RELAYS;
		return NULL;
	}
	if (strstr(val, "://")) {
		ms_route rt;
		if (ms_route_parse(val, &rt, NULL) != MS_OK)
			return "wants mx, a route URL such as smtp://host:25, or relay names";
		r->kind = MS_ROUTE_URL;
		return set_str(r->url, sizeof r->url, val) ? "is too long" : NULL;
	}
	r->kind = MS_ROUTE_RELAYS;
	return relay_list(c, val, r->relays, &r->nrelays);
}

static int parse_count(const char *val, size_t *out, size_t max)
{
	char *end;
	errno = 0;
	unsigned long v = strtoul(val, &end, 10);
	if (errno || *end || !isdigit((unsigned char)*val) || v == 0 || v > max)
		return -1;
	*out = v;
	return 0;
}

/* dns_servers: what the resolver takes (c-ares' "host:port" list), checked
 * when the file is read rather than at the first delivery. */
static int dns_server_ok(const char *s, size_t n)
{
	char buf[80], *port = NULL;
	if (n == 0 || n >= sizeof buf)
		return 0;
	memcpy(buf, s, n);
	buf[n] = '\0';
	char *host = buf;
	unsigned char a[16];
	if (buf[0] == '[') { /* [v6] or [v6]:port */
		char *close = strchr(buf, ']');
		if (!close || (close[1] && close[1] != ':'))
			return 0;
		*close = '\0';
		host = buf + 1;
		port = close[1] ? close + 2 : NULL;
		if (inet_pton(AF_INET6, host, a) != 1)
			return 0;
	} else if (inet_pton(AF_INET6, buf, a) == 1) {
		return 1; /* a bare v6 address */
	} else {
		char *colon = strchr(buf, ':');
		if (colon) {
			*colon = '\0';
			port = colon + 1;
		}
		if (inet_pton(AF_INET, host, a) != 1)
			return 0;
	}
	if (!port)
		return 1;
	char *end;
	long p = strtol(port, &end, 10);
	return *port && !*end && p > 0 && p < 65536;
}

/* A TLS level for MX delivery: none, may, encrypt, verify, dane,
 * dane-only, mta-sts. */
static const char *tls_level(const char *val, int *out)
{
	ms_tls_policy p;
	if (ms_tls_policy_parse(val, &p) < 0)
		return "wants none, may, encrypt, verify, dane, dane-only or mta-sts";
	*out = (int)p;
	return NULL;
}

int ms_conf_parse_bind(const char *s, char bind4[46], char bind6[46])
{
	char copy[200];
	if (strlen(s) >= sizeof copy)
		return -1;
	snprintf(copy, sizeof copy, "%s", s);
	bind4[0] = bind6[0] = '\0';
	for (char *sv, *w = strtok_r(copy, " \t,", &sv); w; w = strtok_r(NULL, " \t,", &sv)) {
		unsigned char bin[16];
		size_t n = strlen(w);
		if (n >= 2 && w[0] == '[' && w[n - 1] == ']') {
			w[n - 1] = '\0';
			w++;
		}
		char *slot = inet_pton(AF_INET, w, bin) == 1    ? bind4
		             : inet_pton(AF_INET6, w, bin) == 1 ? bind6
		                                                : NULL;
		if (!slot || *slot)
			return -1; /* not a numeric address, or its family given twice */
		snprintf(slot, 46, "%s", w);
	}
	return 0;
}

static int bind_ok(const char *val)
{
	char b4[46], b6[46];
	return ms_conf_parse_bind(val, b4, b6) == 0;
}

static int dns_servers_ok(const char *v)
{
	while (*v) {
		size_t n = strcspn(v, ",");
		const char *s = v;
		while (n && (*s == ' ' || *s == '\t'))
			s++, n--;
		while (n && (s[n - 1] == ' ' || s[n - 1] == '\t'))
			n--;
		if (!dns_server_ok(s, n))
			return 0;
		v += strcspn(v, ",");
		if (*v == ',' && !*++v)
			return 0; /* a trailing comma */
	}
	return 1;
}

/* Apply one key; returns NULL or what is wrong with the value. */
static const char *apply(ms_conf *c, const char *key, char *val)
{
	int ok;
	if (!strncmp(key, "dkim.", 5))
		return apply_dkim(c, key, val);
	if (!strncmp(key, "relay.", 6))
		return apply_relay(c, key, val);
	if (!strcmp(key, "relays"))
		return relay_list(c, val, c->default_relays, &c->ndefault_relays);
	if (!strncmp(key, "sender_relays.", 14)) {
		if (c->nsender_relays == MS_CONF_MAX_SENDER_RELAYS)
			return "has too many entries";
		ms_conf_sender_relays *s = &c->sender_relays[c->nsender_relays];
		if (set_str(s->key, sizeof s->key, key + 14) || !s->key[0])
			return "wants sender_relays.ADDRESS or sender_relays.DOMAIN";
		const char *why = relay_list(c, val, s->relays, &s->n);
		if (!why)
			c->nsender_relays++;
		return why;
	}
	if (!strncmp(key, "route.", 6)) {
		const char *d = key + 6;
		if (c->nroutes == MS_CONF_MAX_ROUTES)
			return "has too many entries";
		if (!ms_addr_domain_ok(d + (d[0] == '.'), strlen(d + (d[0] == '.')), NULL))
			return "wants route.DOMAIN or route..DOMAIN (its subdomains)";
		ms_conf_route *r = &c->routes[c->nroutes];
		memset(r, 0, sizeof *r);
		if (set_str(r->domain, sizeof r->domain, d))
			return "is too long";
		const char *why = route_value(c, r, val);
		if (!why)
			c->nroutes++;
		return why;
	}
	if (!strncmp(key, "destination.", 12)) {
		/* destination.PATTERN.{concurrency,connection_messages,rate} */
		const char *pat = key + 12, *dot = strrchr(pat, '.');
		if (!dot || dot == pat || (size_t)(dot - pat) >= sizeof c->shapes[0].pattern)
			return "wants destination.PATTERN.concurrency, .connection_messages or .rate";
		size_t i = 0;
		while (i < c->nshapes && (strlen(c->shapes[i].pattern) != (size_t)(dot - pat) ||
		                          strncasecmp(c->shapes[i].pattern, pat, (size_t)(dot - pat))))
			i++;
		if (i == c->nshapes) {
			if (c->nshapes == MS_CONF_MAX_SHAPES)
				return "too many destination patterns";
			memset(&c->shapes[i], 0, sizeof c->shapes[i]);
			c->shapes[i].tls = -1;
			for (size_t k = 0; k < (size_t)(dot - pat); k++)
				c->shapes[i].pattern[k] = (char)tolower((unsigned char)pat[k]);
			c->nshapes++;
		}
		ms_conf_shape *sh = &c->shapes[i];
		if (!strcmp(dot + 1, "tls")) {
			const char *why = tls_level(val, &sh->tls);
			return why;
		}
		if (!strcmp(dot + 1, "bind_address")) {
			if (!bind_ok(val) || strlen(val) >= sizeof sh->bind_address)
				return "wants one IPv4 and/or one IPv6 address";
			snprintf(sh->bind_address, sizeof sh->bind_address, "%s", val);
			return NULL;
		}
		size_t *dst = !strcmp(dot + 1, "concurrency")           ? &sh->concurrency
		              : !strcmp(dot + 1, "connection_messages") ? &sh->conn_messages
		              : !strcmp(dot + 1, "rate")                ? &sh->rate
		                                                        : NULL;
		if (!dst)
			return "wants destination.PATTERN.concurrency, .connection_messages, .rate, "
			       ".bind_address or .tls";
		return parse_count(val, dst, 1000000) ? "wants a positive number" : NULL;
	}
	if (!strcmp(key, "destination_rate"))
		return parse_count(val, &c->destination_rate, 1000000) ? "wants a positive number" : NULL;
	if (!strcmp(key, "default_route"))
		return route_value(c, &c->default_route, val);
	struct {
		const char *name;
		size_t *dst;
		size_t max;
	} counts[] = { { "mx_address_limit", &c->mx_address_limit, 32 },
		           { "max_deliveries", &c->max_deliveries, 100000 },
		           { "delivery_agents", &c->delivery_agents, 64 },
		           { "claim_window", &c->claim_window, 20000 },
		           { "agent_uncommitted", &c->agent_uncommitted, 63 },
		           { "destination_concurrency", &c->destination_concurrency, 1000 },
		           { "connection_messages", &c->connection_messages, 1000000 },
		           { "smtp_bdat_messages", &c->smtp_bdat_messages, 4096 },
		           { "smtp_session_messages", &c->smtp_session_messages, 1000000 },
		           { "smtp_session_failures", &c->smtp_session_failures, 1000000 } };
	for (size_t i = 0; i < sizeof counts / sizeof counts[0]; i++)
		if (!strcmp(key, counts[i].name))
			return parse_count(val, counts[i].dst, counts[i].max) ? "wants a positive number"
			                                                      : NULL;
	struct {
		const char *name;
		int64_t *dst;
		int zero_ok;
	} durations[] = { { "dns_timeout", &c->dns_timeout, 0 },
		              { "destination_backoff", &c->destination_backoff, 1 },
		              { "queue_scan_interval", &c->queue_scan_interval, 0 },
		              { "connect_timeout", &c->connect_timeout, 0 },
		              { "command_timeout", &c->command_timeout, 1 },
		              { "connection_reuse_time", &c->connection_reuse_time, 1 },
		              { "destination_recovery", &c->destination_recovery, 0 } };
	for (size_t i = 0; i < sizeof durations / sizeof durations[0]; i++)
		if (!strcmp(key, durations[i].name)) {
			int64_t d = ms_conf_duration(val);
			if (d < 0 || (d == 0 && !durations[i].zero_ok) || d > 86400)
				return "wants a duration such as 30s (at most 1d)";
			*durations[i].dst = d;
			return NULL;
		}
	struct {
		const char *name;
		int *dst;
	} flags[] = { { "smtp_chunking", &c->smtp_chunking },
		          { "smtp_cross_message", &c->smtp_cross_message },
		          { "smtp_rset_first", &c->smtp_rset_first } };
	for (size_t i = 0; i < sizeof flags / sizeof flags[0]; i++)
		if (!strcmp(key, flags[i].name)) {
			if (strcmp(val, "yes") && strcmp(val, "no"))
				return "wants yes or no";
			*flags[i].dst = !strcmp(val, "yes");
			return NULL;
		}
	if (!strcmp(key, "smtp_bdat_bytes")) {
		int good = 1;
		uint64_t v = ms_conf_size(val, &good);
		if (!good || v == 0)
			return "wants a size such as 8M";
		c->smtp_bdat_bytes = v;
		return NULL;
	}
	if (!strcmp(key, "dns_servers")) {
		if (!dns_servers_ok(val))
			return "wants addresses (a.b.c.d, a.b.c.d:port, [v6]:port) separated by commas";
		return set_str(c->dns_servers, sizeof c->dns_servers, val) ? "is too long" : NULL;
	}
	if (!strcmp(key, "mail_owner")) {
		if (!user_name_ok(val))
			return "wants a user name";
		snprintf(c->mail_owner, sizeof c->mail_owner, "%s", val);
		return NULL;
	}
	if (!strcmp(key, "authorized_mailq_users")) {
		char copy[MS_CONF_VALUE_MAX];
		if (set_str(copy, sizeof copy, val))
			return "is too long";
		for (char *save, *t = strtok_r(copy, " \t,", &save); t; t = strtok_r(NULL, " \t,", &save))
			if (strcmp(t, "anyone") && !user_name_ok(t))
				return "wants anyone or user names";
		return set_str(c->authorized_mailq_users, sizeof c->authorized_mailq_users, val)
		           ? "is too long"
		           : NULL;
	}
	if (!strcmp(key, "tls_security_level"))
		return tls_level(val, &c->tls_security_level);
	if (!strcmp(key, "tls_ca_file")) {
		if (*val && val[0] != '/')
			return "wants an absolute path";
		return set_str(c->tls_ca_file, sizeof c->tls_ca_file, val) ? "is too long" : NULL;
	}
	if (!strcmp(key, "inet_protocols")) {
		unsigned f = 0;
		char copy[64];
		if (set_str(copy, sizeof copy, val))
			return "wants all, ipv4 or ipv6";
		for (char *sv, *t = strtok_r(copy, " \t,", &sv); t; t = strtok_r(NULL, " \t,", &sv))
			f |= !strcmp(t, "all") ? MS_NET_V4 | MS_NET_V6 : !strcmp(t, "ipv4") ? MS_NET_V4
			     : !strcmp(t, "ipv6") ? MS_NET_V6 : 1u << 8;
		if (!f || f > (MS_NET_V4 | MS_NET_V6))
			return "wants all, ipv4 or ipv6 (or ipv4, ipv6)";
		c->inet_protocols = f;
		return NULL;
	}
	if (!strcmp(key, "address_preference")) {
		if (strcmp(val, "any") && strcmp(val, "ipv4") && strcmp(val, "ipv6"))
			return "wants any, ipv4 or ipv6";
		c->address_preference = !strcmp(val, "ipv4") ? 4 : !strcmp(val, "ipv6") ? 6 : 0;
		return NULL;
	}
	if (!strcmp(key, "bind_address")) {
		if (!bind_ok(val) || set_str(c->bind_address, sizeof c->bind_address, val))
			return "wants one IPv4 and/or one IPv6 address";
		return NULL;
	}
	if (!strcmp(key, "metrics_listen")) {
		const char *colon = strrchr(val, ':');
		if (*val && (!colon || colon == val || !colon[1] ||
		             strspn(colon + 1, "0123456789") != strlen(colon + 1)))
			return "wants ADDRESS:PORT (127.0.0.1:9725, [::1]:9725)";
		return set_str(c->metrics_listen, sizeof c->metrics_listen, val) ? "is too long" : NULL;
	}
	if (!strcmp(key, "wake_address")) {
		unsigned char bin[16];
		if (*val && inet_pton(AF_INET, val, bin) != 1 && inet_pton(AF_INET6, val, bin) != 1)
			return "wants one IPv4 or IPv6 address (this host's, as other hosts reach it)";
		return set_str(c->wake_address, sizeof c->wake_address, val) ? "is too long" : NULL;
	}
	if (!strcmp(key, "log_format")) {
		if (strcmp(val, "text") && strcmp(val, "json"))
			return "wants text or json";
		c->log_json = !strcmp(val, "json");
		return NULL;
	}
	if (!strcmp(key, "aliases")) {
		if (*val && val[0] != '/')
			return "wants an absolute path";
		return set_str(c->aliases, sizeof c->aliases, val) ? "is too long" : NULL;
	}
	if (!strcmp(key, "admin_address")) {
		char wire[MS_ADDR_MAX + 1];
		if (*val && (!strchr(val, '@') ||
		             ms_addr_parse(val, strlen(val), MS_ADDR_RECIPIENT, wire, NULL, NULL) != MS_OK))
			return "wants a full address (user@domain)";
		return set_str(c->admin_address, sizeof c->admin_address, val) ? "is too long" : NULL;
	}
	if (!strcmp(key, "delay_warning")) {
		int64_t d = ms_conf_duration(val);
		if (d < 0)
			return "wants a duration such as 4h (0: off)";
		c->delay_warning = d;
		return NULL;
	}
	if (!strcmp(key, "log_file")) {
		if (strcmp(val, "syslog") && strcmp(val, "stderr") && val[0] != '/')
			return "wants syslog, stderr or an absolute path";
		return set_str(c->log_file, sizeof c->log_file, val) ? "is too long" : NULL;
	}
	if (!strcmp(key, "mta_sts_port")) {
		size_t port;
		if (parse_count(val, &port, 65535) || !port)
			return "wants a port number";
		c->mta_sts_port = (unsigned)port;
		return NULL;
	}
	if (!strcmp(key, "mx_port")) {
		size_t port;
		if (parse_count(val, &port, 65535))
			return "wants a port number";
		snprintf(c->mx_port, sizeof c->mx_port, "%zu", port);
		return NULL;
	}
	if (!strcmp(key, "spool_dir")) {
		if (val[0] != '/' || strlen(val) >= sizeof c->spool_dir)
			return "wants an absolute path";
		snprintf(c->spool_dir, sizeof c->spool_dir, "%s", val);
	} else if (!strcmp(key, "hostname")) {
		if (!ms_addr_domain_ok(val, strlen(val), NULL) || val[0] == '[')
			return "wants a host name";
		snprintf(c->hostname, sizeof c->hostname, "%s", val);
	} else if (!strcmp(key, "max_message_size")) {
		c->max_message_size = ms_conf_size(val, &ok);
		if (!ok)
			return "wants a size such as 50M";
	} else if (!strcmp(key, "min_free_space")) {
		c->min_free_space = ms_conf_size(val, &ok);
		if (!ok)
			return "wants a size such as 100M";
	} else if (!strcmp(key, "retry_tiers")) {
		size_t n = 0;
		int64_t prev = -1;
		for (char *save, *t = strtok_r(val, " \t,", &save); t; t = strtok_r(NULL, " \t,", &save)) {
			int64_t d = ms_conf_duration(t);
			if (d < 0)
				return "wants durations such as 0 30m 4h";
			if (d <= prev)
				return "wants increasing durations";
			if (n == MS_CONF_MAX_TIERS)
				return "has too many tiers";
			c->retry_tiers[n++] = prev = d;
		}
		if (n == 0)
			return "wants at least one duration";
		c->ntiers = n;
	} else if (!strcmp(key, "claim_lease")) {
		if ((c->claim_lease = ms_conf_duration(val)) <= 0)
			return "wants a duration such as 5m";
	} else if (!strcmp(key, "clock_skew")) {
		if ((c->clock_skew = ms_conf_duration(val)) < 0)
			return "wants a duration such as 60s";
	} else {
		return "is not a known key";
	}
	return NULL;
}

/* A relay is complete: it has a URL, and credentials only with a user to
 * give them for (the command line refuses the same thing). */
static ms_status relay_complete(const ms_conf_relay *r, const char *path, ms_error *err)
{
	if (!r->url[0])
		return ms_error_set(err, MS_ERR_USAGE, "%s: relay %s is named but has no relay.%s.url",
		                    path, r->name, r->name);
	ms_route rt;
	ms_error rerr;
	if (ms_route_parse(r->url, &rt, &rerr) != MS_OK)
		return ms_error_set(err, MS_ERR_USAGE, "%s: relay.%s.url: %.300s", path, r->name,
		                    rerr.msg);
	const char *cred = r->password_file[0]      ? "password_file"
	                   : r->password_eval[0]    ? "password_eval"
	                   : r->oauth_token_eval[0] ? "oauth_token_eval"
	                                            : NULL;
	if (cred && !rt.user[0])
		return ms_error_set(err, MS_ERR_USAGE,
		                    "%s: relay.%s.%s is given but relay.%s.url names no user "
		                    "(smtp://USER@HOST)",
		                    path, r->name, cred, r->name);
	return MS_OK;
}

ms_status ms_conf_load(ms_conf *c, const char *path, int required, ms_error *err)
{
	ms_conf_defaults(c);
	FILE *f = fopen(path, "re");
	if (!f) {
		if (!required && errno == ENOENT)
			return MS_OK;
		return ms_error_set(err, MS_ERR_IO, "cannot read configuration %s: %s", path,
		                    strerror(errno));
	}
	snprintf(c->path, sizeof c->path, "%s", path);
	char line[LINE_MAX_];
	ms_hmap seen; /* every key set so far: a second setting is an error */
	ms_hmap_init(&seen);
	size_t lineno = 0;
	ms_status st = MS_OK;
	while (fgets(line, sizeof line, f)) {
		lineno++;
		if (!strchr(line, '\n') && !feof(f)) {
			st = ms_error_set(err, MS_ERR_USAGE, "%s:%zu: line too long", path, lineno);
			break;
		}
		char *s = trim(line);
		if (!*s || *s == '#')
			continue;
		char *eq = strchr(s, '=');
		if (!eq) {
			st = ms_error_set(err, MS_ERR_USAGE, "%s:%zu: want key = value", path, lineno);
			break;
		}
		*eq = '\0';
		char *key = trim(s), *val = trim(eq + 1);
		if (ms_hmap_get(&seen, key)) {
			st = ms_error_set(err, MS_ERR_USAGE, "%s:%zu: %.64s is set twice", path, lineno,
			                  key);
			break;
		}
		const char *why = apply(c, key, val);
		if (why) {
			st = ms_error_set(err, MS_ERR_USAGE, "%s:%zu: %.64s %s", path, lineno, key, why);
			break;
		}
		if (ms_hmap_put(&seen, key, c) != 0) {
			st = ms_error_set(err, MS_ERR_NOMEM, "out of memory");
			break;
		}
	}
	for (size_t i = 0; st == MS_OK && i < c->nrelays; i++)
		st = relay_complete(&c->relays[i], path, err);
	for (size_t i = 0; st == MS_OK && i < c->ndkim; i++)
		st = dkim_complete(&c->dkim[i], path, err);
	ms_hmap_free(&seen);
	if (st == MS_OK && ferror(f))
		st = ms_error_set(err, MS_ERR_IO, "cannot read configuration %s", path);
	fclose(f);
	return st;
}

size_t ms_conf_relays_for(const ms_conf *c, const char *sender, const ms_conf_relay **out,
                          size_t max)
{
	const ms_conf_sender_relays *hit = NULL;
	const char *at = strrchr(sender, '@');
	for (size_t i = 0; i < c->nsender_relays && !hit; i++)
		if (!strcasecmp(c->sender_relays[i].key, sender))
			hit = &c->sender_relays[i];
	for (size_t i = 0; i < c->nsender_relays && !hit && at; i++)
		if (!strcasecmp(c->sender_relays[i].key, at + 1))
			hit = &c->sender_relays[i];
	const int *idx = hit ? hit->relays : c->default_relays;
	size_t n = hit ? hit->n : c->ndefault_relays, k = 0;
	for (size_t i = 0; i < n && k < max; i++)
		out[k++] = &c->relays[idx[i]];
	return k;
}

int ms_conf_tls_for(const ms_conf *c, const char *domain, const char *mxhost)
{
	for (size_t i = 0; i < c->nshapes; i++)
		if (c->shapes[i].tls >= 0 &&
		    ((domain && ms_conf_pattern_match(c->shapes[i].pattern, domain)) ||
		     (mxhost && ms_conf_pattern_match(c->shapes[i].pattern, mxhost))))
			return c->shapes[i].tls;
	return c->tls_security_level;
}

const ms_conf_dkim *ms_conf_dkim_for(const ms_conf *c, const char *domain)
{
	for (const char *d = domain; d && *d; d = strchr(d, '.') ? strchr(d, '.') + 1 : NULL)
		for (size_t i = 0; i < c->ndkim; i++)
			if (!strcasecmp(c->dkim[i].domain, d))
				return &c->dkim[i];
	return NULL;
}

int ms_conf_pattern_match(const char *pat, const char *name)
{
	size_t lp = strlen(pat), ln = strlen(name);
	if (pat[0] == '*' && pat[1] == '.')
		pat++, lp--;
	if (pat[0] == '.')
		return ln > lp && !strcasecmp(name + ln - lp, pat);
	return !strcasecmp(pat, name);
}

const ms_conf_route *ms_conf_route_for(const ms_conf *c, const char *domain)
{
	for (size_t i = 0; i < c->nroutes; i++)
		if (!strcasecmp(c->routes[i].domain, domain))
			return &c->routes[i];
	/* route..example.org covers every name under example.org. */
	for (const char *d = strchr(domain, '.'); d; d = strchr(d + 1, '.'))
		for (size_t i = 0; i < c->nroutes; i++)
			if (c->routes[i].domain[0] == '.' && !strcasecmp(c->routes[i].domain, d))
				return &c->routes[i];
	return &c->default_route;
}
