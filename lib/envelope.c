/*
 * envelope.c - envelopes and their self-validating file format (see
 * mailspool/envelope.h).
 */
#include "mailspool/envelope.h"

#include <errno.h>
#include <sha2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAGIC "MSENV 1\n"
#define SHA_HEX 64

void ms_env_init(ms_envelope *e)
{
	memset(e, 0, sizeof *e);
}

void ms_env_free(ms_envelope *e)
{
	for (size_t i = 0; i < e->nrcpts; i++) {
		free(e->rcpts[i].addr);
		free(e->rcpts[i].text);
		free(e->rcpts[i].orcpt);
		for (size_t k = 0; k < e->rcpts[i].nhist; k++)
			free(e->rcpts[i].hist[k].text);
		free(e->rcpts[i].hist);
	}
	free(e->rcpts);
	free(e->sender);
	free(e->dsn_envid);
	free(e->prefix);
	ms_env_init(e);
}

static char *dup_n(const char *s, size_t n)
{
	char *d = malloc(n + 1);
	if (d) {
		memcpy(d, s, n);
		d[n] = '\0';
	}
	return d;
}

ms_status ms_env_set_sender(ms_envelope *e, const char *sender, ms_error *err)
{
	char *d = strdup(sender);
	if (!d)
		return ms_error_set(err, MS_ERR_NOMEM, "out of memory");
	free(e->sender);
	e->sender = d;
	return MS_OK;
}

static ms_env_rcpt *new_rcpt(ms_envelope *e, ms_error *err)
{
	if (e->nrcpts >= MS_ENV_MAX_RCPTS) {
		ms_error_set(err, MS_ERR_USAGE, "more than %d recipients", MS_ENV_MAX_RCPTS);
		return NULL;
	}
	if (e->nrcpts == e->cap) {
		size_t ncap = e->cap ? e->cap * 2 : 4;
		ms_env_rcpt *p = realloc(e->rcpts, ncap * sizeof *p);
		if (!p) {
			ms_error_set(err, MS_ERR_NOMEM, "out of memory");
			return NULL;
		}
		e->rcpts = p;
		e->cap = ncap;
	}
	ms_env_rcpt *r = &e->rcpts[e->nrcpts];
	memset(r, 0, sizeof *r);
	return r;
}

ms_status ms_env_add_rcpt(ms_envelope *e, const char *addr, int64_t next, ms_error *err)
{
	ms_env_rcpt *r = new_rcpt(e, err);
	if (!r)
		return err ? err->status : MS_ERR_NOMEM;
	r->addr = strdup(addr);
	r->text = strdup("");
	if (!r->addr || !r->text) {
		free(r->addr);
		free(r->text);
		return ms_error_set(err, MS_ERR_NOMEM, "out of memory");
	}
	r->next = next;
	e->nrcpts++;
	return MS_OK;
}

ms_status ms_env_set_reply(ms_env_rcpt *r, int code, const char *enh, const char *text,
                           ms_error *err)
{
	size_t n = strlen(text);
	char *t = dup_n(text, n < MS_ENV_TEXT_MAX ? n : MS_ENV_TEXT_MAX);
	if (!t)
		return ms_error_set(err, MS_ERR_NOMEM, "out of memory");
	free(r->text);
	r->text = t;
	r->code = code;
	snprintf(r->enh, sizeof r->enh, "%s", enh ? enh : "");
	return MS_OK;
}

/* Append an attempt to r's history (dropping the oldest when full). */
static ms_env_attempt *push_hist(ms_env_rcpt *r)
{
	if (r->nhist == MS_ENV_HISTORY) {
		free(r->hist[0].text);
		memmove(r->hist, r->hist + 1, (MS_ENV_HISTORY - 1) * sizeof *r->hist);
		r->nhist--;
	}
	if (!r->hist && !(r->hist = calloc(MS_ENV_HISTORY, sizeof *r->hist)))
		return NULL;
	ms_env_attempt *a = &r->hist[r->nhist];
	memset(a, 0, sizeof *a);
	return a;
}

ms_status ms_env_record_attempt(ms_env_rcpt *r, int64_t when, int code, const char *enh,
                                const char *text, const char *tls, ms_error *err)
{
	if (ms_env_set_reply(r, code, enh, text, err) != MS_OK)
		return MS_ERR_NOMEM;
	ms_env_attempt *a = push_hist(r);
	if (!a || !(a->text = strdup(r->text)))
		return ms_error_set(err, MS_ERR_NOMEM, "out of memory");
	a->when = when;
	a->code = code;
	snprintf(a->enh, sizeof a->enh, "%s", r->enh);
	snprintf(a->tls, sizeof a->tls, "%s", tls ? tls : "");
	r->nhist++;
	r->attempts++;
	r->last = when;
	return MS_OK;
}

int ms_env_id_ok(const char *id)
{
	size_t n = strlen(id);
	if (n == 0 || n > MS_ENV_ID_MAX)
		return 0;
	for (size_t i = 0; i < n; i++) {
		char c = id[i];
		if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		      c == '_' || c == '-'))
			return 0;
	}
	return 1;
}

const char *ms_env_state_name(ms_env_state s)
{
	static const char *names[] = { "pending", "deferred", "delivered", "failed", "bouncing" };
	return (unsigned)s < MS_ENV_NSTATES ? names[s] : "?";
}

int64_t ms_env_next_due(const ms_envelope *e)
{
	int64_t due = INT64_MAX;
	for (size_t i = 0; i < e->nrcpts; i++) {
		const ms_env_rcpt *r = &e->rcpts[i];
		if ((r->state == MS_ENV_PENDING || r->state == MS_ENV_DEFERRED ||
		     r->state == MS_ENV_BOUNCING) &&
		    r->next < due)
			due = r->next;
	}
	return due;
}

/* ---- writing ------------------------------------------------------------ */

ms_status ms_env_escape(ms_buf *b, const char *s, size_t n)
{
	static const char hex[] = "0123456789ABCDEF";
	if (ms_buf_reserve(b, 3 * n) != MS_OK)
		return MS_ERR_NOMEM;
	char *o = ms_buf_tail(b);
	size_t k = 0;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c <= 0x20 || c >= 0x7f || c == '%') {
			o[k++] = '%';
			o[k++] = hex[c >> 4];
			o[k++] = hex[c & 15];
		} else {
			o[k++] = (char)c;
		}
	}
	ms_buf_commit(b, k);
	return MS_OK;
}

static ms_status put_str(ms_buf *b, const char *s, size_t n)
{
	ms_status st = ms_buf_append(b, "=", 1);
	return st == MS_OK ? ms_env_escape(b, s, n) : st;
}

ms_status ms_env_serialize(const ms_envelope *e, ms_buf *out, ms_error *err)
{
	if (!ms_env_id_ok(e->id))
		return ms_error_set(err, MS_ERR_USAGE, "invalid queue id");
	size_t start = ms_buf_avail(out), records = 0;
	ms_status st = ms_buf_appendstr(out, MAGIC);
	const char *sender = e->sender ? e->sender : "";
	if (st == MS_OK)
		st = ms_buf_printf(out, "I %s\nA %lld\nU %u\nS ", e->id, (long long)e->arrival,
		                   (unsigned)e->uid);
	if (st == MS_OK)
		st = put_str(out, sender, strlen(sender));
	if (st == MS_OK)
		st = ms_buf_printf(out, "\nZ %llu\nF %u\n", (unsigned long long)e->size,
		                   (unsigned)e->flags);
	records = 6;
	if (st == MS_OK && (e->dsn_ret || e->dsn_envid)) {
		st = ms_buf_printf(out, "D %d ", e->dsn_ret);
		if (st == MS_OK)
			st = put_str(out, e->dsn_envid ? e->dsn_envid : "",
			             e->dsn_envid ? strlen(e->dsn_envid) : 0);
		if (st == MS_OK)
			st = ms_buf_appendstr(out, "\n");
		records++;
	}
	if (st == MS_OK && e->prefix) {
		if (strlen(e->prefix) > MS_ENV_PREFIX_MAX)
			return ms_error_set(err, MS_ERR_USAGE, "header prefix too long");
		st = ms_buf_appendstr(out, "P ");
		if (st == MS_OK)
			st = put_str(out, e->prefix, strlen(e->prefix));
		if (st == MS_OK)
			st = ms_buf_appendstr(out, "\n");
		records++;
	}
	for (size_t i = 0; i < e->nrcpts && st == MS_OK; i++) {
		const ms_env_rcpt *r = &e->rcpts[i];
		if ((unsigned)r->state >= MS_ENV_NSTATES)
			return ms_error_set(err, MS_ERR_USAGE, "invalid recipient state");
		st = ms_buf_printf(out, "R %u %u %u %lld %lld %d ", (unsigned)r->state,
		                   (unsigned)r->attempts, (unsigned)r->tier, (long long)r->next,
		                   (long long)r->last, r->code);
		if (st == MS_OK)
			st = put_str(out, r->enh, strlen(r->enh));
		if (st == MS_OK)
			st = ms_buf_appendstr(out, " ");
		if (st == MS_OK)
			st = put_str(out, r->addr, strlen(r->addr));
		if (st == MS_OK)
			st = ms_buf_appendstr(out, " ");
		if (st == MS_OK)
			st = put_str(out, r->text ? r->text : "", r->text ? strlen(r->text) : 0);
		if (st == MS_OK)
			st = ms_buf_appendstr(out, "\n");
		records++;
		if (st == MS_OK && (r->notify || r->orcpt)) {
			st = ms_buf_printf(out, "N %u ", r->notify);
			if (st == MS_OK)
				st = put_str(out, r->orcpt ? r->orcpt : "", r->orcpt ? strlen(r->orcpt) : 0);
			if (st == MS_OK)
				st = ms_buf_appendstr(out, "\n");
			records++;
		}
		for (size_t k = 0; k < r->nhist && st == MS_OK; k++) {
			const ms_env_attempt *a = &r->hist[k];
			st = ms_buf_printf(out, "H %lld %d ", (long long)a->when, a->code);
			if (st == MS_OK)
				st = put_str(out, a->enh, strlen(a->enh));
			if (st == MS_OK)
				st = ms_buf_appendstr(out, " ");
			if (st == MS_OK)
				st = put_str(out, a->text ? a->text : "", a->text ? strlen(a->text) : 0);
			if (st == MS_OK && a->tls[0] && (st = ms_buf_appendstr(out, " ")) == MS_OK)
				st = put_str(out, a->tls, strlen(a->tls));
			if (st == MS_OK)
				st = ms_buf_appendstr(out, "\n");
			records++;
		}
	}
	if (st == MS_OK)
		st = ms_buf_printf(out, "E %zu\n", records);
	if (st != MS_OK)
		return ms_error_set(err, MS_ERR_NOMEM, "out of memory");
	/* libmd's SHA-256 (lowercase hex), not OpenSSL's: the set-id helper
	 * writes envelopes and links no OpenSSL at all (INTERNALS.md). */
	char hex[SHA256_DIGEST_STRING_LENGTH];
	SHA256Data((const uint8_t *)ms_buf_ptr(out) + start, ms_buf_avail(out) - start, hex);
	if (ms_buf_printf(out, "C %s\n", hex) != MS_OK)
		return ms_error_set(err, MS_ERR_NOMEM, "out of memory");
	return MS_OK;
}

/* ---- reading ------------------------------------------------------------ */

typedef struct cursor {
	const char *p, *end; /* the current line's fields, without its LF */
} cursor;

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Next space-separated token. */
static int token(cursor *c, const char **t, size_t *n)
{
	if (c->p >= c->end)
		return 0;
	const char *sp = memchr(c->p, ' ', (size_t)(c->end - c->p));
	const char *e = sp ? sp : c->end;
	*t = c->p;
	*n = (size_t)(e - c->p);
	c->p = sp ? sp + 1 : c->end;
	return *n > 0;
}

static int num(cursor *c, int64_t min, int64_t max, int64_t *v)
{
	const char *t;
	size_t n;
	if (!token(c, &t, &n) || n > 20)
		return 0;
	int neg = t[0] == '-';
	if (neg && n == 1)
		return 0;
	int64_t x = 0;
	for (size_t i = neg; i < n; i++) {
		if (t[i] < '0' || t[i] > '9' || (i == (size_t)neg && t[i] == '0' && n > (size_t)neg + 1))
			return 0;
		int d = t[i] - '0';
		if (x > (INT64_MAX - d) / 10)
			return 0;
		x = x * 10 + d;
	}
	if (neg && x == 0)
		return 0; /* "-0": one spelling per number */
	if (neg)
		x = -x;
	if (x < min || x > max)
		return 0;
	*v = x;
	return 1;
}

static int u64(cursor *c, uint64_t *v)
{
	int64_t x;
	if (!num(c, 0, INT64_MAX, &x))
		return 0;
	*v = (uint64_t)x;
	return 1;
}

char *ms_env_unescape(const char *t, size_t n, size_t max)
{
	char *d = malloc(n + 1);
	if (!d)
		return NULL;
	size_t k = 0;
	for (size_t i = 0; i < n; i++) {
		if (t[i] == '%') {
			int hi = i + 2 < n ? hexval(t[i + 1]) : -1, lo = i + 2 < n ? hexval(t[i + 2]) : -1;
			if (hi < 0 || lo < 0) {
				free(d);
				return NULL;
			}
			unsigned char ch = (unsigned char)(hi << 4 | lo);
			/* Only what the writer escapes may be escaped: one
			 * spelling per byte string. */
			if (!(ch <= 0x20 || ch >= 0x7f || ch == '%')) {
				free(d);
				return NULL;
			}
			d[k++] = (char)ch;
			i += 2;
		} else if ((unsigned char)t[i] <= 0x20 || (unsigned char)t[i] >= 0x7f) {
			free(d);
			return NULL;
		} else {
			d[k++] = t[i];
		}
	}
	d[k] = '\0';
	if (k > max || memchr(d, '\0', k)) {
		/* NUL cannot live in a C string field: refuse rather than cut. */
		free(d);
		return NULL;
	}
	return d;
}

/* A "=..." string field, unescaped into a new allocation. */
static int str(cursor *c, char **out, size_t max)
{
	const char *t;
	size_t n;
	if (!token(c, &t, &n) || t[0] != '=')
		return 0;
	return (*out = ms_env_unescape(t + 1, n - 1, max)) != NULL;
}

static ms_status damaged(ms_envelope *e, ms_error *err, const char *why, size_t line)
{
	ms_env_free(e);
	return ms_error_set(err, MS_ERR_DATA, "damaged envelope (line %zu): %s", line, why);
}

ms_status ms_env_parse(const char *p, size_t n, ms_envelope *e, ms_error *err)
{
	ms_env_init(e);
	if (n > MS_ENV_FILE_MAX)
		return damaged(e, err, "file too large", 0);
	/* The checksum line is the last line: verify it before anything. */
	if (n < sizeof MAGIC - 1 || memcmp(p, MAGIC, sizeof MAGIC - 1))
		return damaged(e, err, "not an envelope (bad magic)", 1);
	if (p[n - 1] != '\n')
		return damaged(e, err, "truncated (no final line end)", 0);
	const char *last = p + n - 1;
	while (last > p && last[-1] != '\n')
		last--;
	size_t body = (size_t)(last - p);
	if (n - body != 2 + SHA_HEX + 1 || memcmp(last, "C ", 2))
		return damaged(e, err, "truncated (no checksum record)", 0);
	char hex[SHA256_DIGEST_STRING_LENGTH];
	SHA256Data((const uint8_t *)p, body, hex);
	if (strlen(hex) != SHA_HEX || memcmp(last + 2, hex, SHA_HEX))
		return damaged(e, err, "checksum mismatch", 0);
	/* Records, in their fixed order. */
	const char *q = p + sizeof MAGIC - 1, *stop = p + body;
	size_t line = 1, records = 0;
	int have_end = 0;
	char prev = 0; /* the previous record's type */
	static const char order[] = "IAUSZF";
	while (q < stop) {
		const char *nl = memchr(q, '\n', (size_t)(stop - q));
		if (!nl)
			return damaged(e, err, "truncated record", line + 1);
		line++;
		cursor c = { q, nl };
		q = nl + 1;
		if (have_end)
			return damaged(e, err, "record after E", line);
		const char *t;
		size_t tn;
		if (!token(&c, &t, &tn) || tn != 1)
			return damaged(e, err, "bad record type", line);
		char type = t[0];
		if ((records < 6 && type != order[records]) ||
		    (records >= 6 && !strchr("RHEDNP", type)) || (type == 'H' && e->nrcpts == 0) ||
		    (type == 'D' && prev != 'F') ||
		    (type == 'P' && prev != 'F' && prev != 'D') || (type == 'N' && prev != 'R'))
			return damaged(e, err, "record out of order", line);
		prev = type;
		int ok = 1;
		int64_t v;
		uint64_t u;
		switch (type) {
		case 'I': {
			char *id = NULL;
			ok = token(&c, &t, &tn) && tn <= MS_ENV_ID_MAX && (id = dup_n(t, tn)) &&
			     ms_env_id_ok(id);
			if (ok)
				memcpy(e->id, id, tn + 1);
			free(id);
			break;
		}
		case 'A': ok = num(&c, 0, INT64_MAX, &e->arrival); break;
		case 'U': ok = num(&c, 0, UINT32_MAX, &v) && ((e->uid = (uint32_t)v), 1); break;
		case 'S': ok = str(&c, &e->sender, 1024); break;
		case 'Z': ok = u64(&c, &e->size); break;
		case 'F': ok = num(&c, 0, UINT32_MAX, &v) && ((e->flags = (uint32_t)v), 1); break;
		case 'R': {
			ms_env_rcpt *r = new_rcpt(e, NULL);
			int64_t st, at, tier, code;
			char *enh = NULL;
			ok = r && num(&c, 0, MS_ENV_NSTATES - 1, &st) && num(&c, 0, UINT32_MAX, &at) &&
			     num(&c, 0, UINT32_MAX, &tier) && num(&c, INT64_MIN + 1, INT64_MAX, &r->next) &&
			     num(&c, 0, INT64_MAX, &r->last) && num(&c, 0, 999, &code) &&
			     str(&c, &enh, sizeof r->enh - 1) && str(&c, &r->addr, 1024) &&
			     str(&c, &r->text, MS_ENV_TEXT_MAX);
			if (r) {
				if (ok) {
					r->state = (ms_env_state)st;
					r->attempts = (uint32_t)at;
					r->tier = (uint32_t)tier;
					r->code = (int)code;
					memcpy(r->enh, enh, strlen(enh) + 1);
				}
				e->nrcpts++; /* so that ms_env_free frees what was read */
			}
			free(enh);
			break;
		}
		case 'H': {
			ms_env_rcpt *r = &e->rcpts[e->nrcpts - 1];
			ms_env_attempt *a = r->nhist < MS_ENV_HISTORY ? push_hist(r) : NULL;
			int64_t code;
			char *enh = NULL;
			char *tls = NULL;
			ok = a && num(&c, 0, INT64_MAX, &a->when) && num(&c, 0, 999, &code) &&
			     str(&c, &enh, sizeof a->enh - 1) && str(&c, &a->text, MS_ENV_TEXT_MAX);
			/* The TLS field came later: an attempt may have none. */
			if (ok && c.p != c.end && (ok = str(&c, &tls, MS_ENV_TLS_MAX - 1)))
				memcpy(a->tls, tls, strlen(tls) + 1);
			free(tls);
			if (a) {
				if (ok) {
					a->code = (int)code;
					memcpy(a->enh, enh, strlen(enh) + 1);
				}
				r->nhist++; /* so that ms_env_free frees what was read */
			}
			free(enh);
			break;
		}
		case 'D': {
			int64_t ret;
			ok = num(&c, 0, 2, &ret) && str(&c, &e->dsn_envid, 100);
			if (ok) {
				e->dsn_ret = (int)ret;
				if (!*e->dsn_envid) {
					free(e->dsn_envid);
					e->dsn_envid = NULL;
				}
			}
			break;
		}
		case 'P':
			ok = str(&c, &e->prefix, MS_ENV_PREFIX_MAX) && *e->prefix;
			break;
		case 'N': {
			ms_env_rcpt *r = &e->rcpts[e->nrcpts - 1];
			int64_t notify;
			ok = num(&c, 0, 15, &notify) && str(&c, &r->orcpt, 1024);
			if (ok) {
				r->notify = (unsigned)notify;
				if (!*r->orcpt) {
					free(r->orcpt);
					r->orcpt = NULL;
				}
			}
			break;
		}
		case 'E':
			ok = u64(&c, &u) && u == records;
			have_end = 1;
			break;
		default:
			return damaged(e, err, "unknown record", line);
		}
		if (!ok || c.p != c.end)
			return damaged(e, err, "bad field", line);
		if (type != 'E')
			records++;
	}
	if (!have_end)
		return damaged(e, err, "no E record", line);
	if (records < 6)
		return damaged(e, err, "missing records", line);
	return MS_OK;
}
