/*
 * aliases.c - the aliases file and admin_address (mailspool/aliases.h).
 *
 * The file is read whole into a hash map when a submission first meets a
 * local recipient (it is small, and read by the submitter's own process:
 * no privilege is involved, any user may send to any address anyway).
 */
#include "mailspool/aliases.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "mailspool/addr.h"
#include "mailspool/buf.h"

static void lower(char *s)
{
	for (; *s; s++)
		*s = (char)tolower((unsigned char)*s);
}

static void warnf(ms_aliases_warn_fn warn, void *ctx, const char *path, size_t line,
                  const char *fmt, ...) __attribute__((format(printf, 5, 6)));
static void warnf(ms_aliases_warn_fn warn, void *ctx, const char *path, size_t line,
                  const char *fmt, ...)
{
	if (!warn)
		return;
	char msg[512], text[300];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(text, sizeof text, fmt, ap);
	va_end(ap);
	snprintf(msg, sizeof msg, "%s:%zu: %s", path, line, text);
	warn(ctx, msg);
}

/* Trim spaces and tabs from both ends, in place. */
static char *trim(char *s)
{
	while (*s == ' ' || *s == '\t')
		s++;
	size_t n = strlen(s);
	while (n && (s[n - 1] == ' ' || s[n - 1] == '\t'))
		s[--n] = '\0';
	return s;
}

/* Split a target list at commas outside quotes; each target checked.
 * The kept ones go to out as NUL-separated strings. */
static void targets(char *list, ms_buf *out, const char *path, size_t line,
                    ms_aliases_warn_fn warn, void *ctx)
{
	char *p = list;
	while (*p) {
		char *start = p;
		p = start + (ms_addr_unquoted_chr(start, ',') - start);
		if (*p)
			*p++ = '\0';
		char *t = trim(start);
		if (!*t)
			continue;
		/* "|cmd" and "/file" may be quoted in the file. */
		const char *bare = t[0] == '"' ? t + 1 : t;
		if (bare[0] == '|' || bare[0] == '/' || !strncasecmp(bare, ":include:", 9)) {
			warnf(warn, ctx, path, line, "%.200s: no local delivery here; target skipped", t);
			continue;
		}
		for (const char *c = t; *c; c++)
			if ((unsigned char)*c < 0x20 || *c == 0x7f) {
				warnf(warn, ctx, path, line, "%s", "a control character; target skipped");
				t = NULL;
				break;
			}
		if (t)
			ms_buf_append(out, t, strlen(t) + 1);
	}
}

/* One logical entry (continuations joined): "name: targets". */
static ms_status entry(ms_aliases *a, char *text, const char *path, size_t line,
                       ms_aliases_warn_fn warn, void *ctx, ms_error *err)
{
	char *colon = strchr(text, ':');
	if (!colon)
		return ms_error_set(err, MS_ERR_USAGE, "%s:%zu: not \"name: address, ...\"", path, line);
	*colon = '\0';
	char *name = trim(text);
	size_t nl = strlen(name);
	if (nl >= 2 && name[0] == '"' && name[nl - 1] == '"') {
		name[nl - 1] = '\0';
		name++;
	}
	if (!*name || strchr(name, '@'))
		return ms_error_set(err, MS_ERR_USAGE, "%s:%zu: the name before ':' must be a local "
		                    "name", path, line);
	lower(name);
	ms_buf t;
	ms_buf_init(&t, MS_ALIASES_ENTRY_MAX);
	targets(colon + 1, &t, path, line, warn, ctx);
	if (!ms_buf_avail(&t)) {
		ms_buf_free(&t);
		warnf(warn, ctx, path, line, "%.200s: no address to send to; ignored", name);
		return MS_OK;
	}
	if (ms_hmap_get(&a->names, name)) {
		ms_buf_free(&t);
		warnf(warn, ctx, path, line, "%.200s: named again; the first entry is used", name);
		return MS_OK;
	}
	ms_buf_append(&t, "", 1); /* the list ends with an empty string */
	char *v = ms_buf_steal(&t);
	if (!v || ms_hmap_put(&a->names, name, v) != 0) {
		free(v);
		return ms_error_set(err, MS_ERR_NOMEM, "out of memory");
	}
	a->n++;
	return MS_OK;
}

ms_status ms_aliases_load(ms_aliases *a, const char *path, ms_aliases_warn_fn warn, void *ctx,
                          ms_error *err)
{
	memset(a, 0, sizeof *a);
	ms_hmap_init(&a->names);
	FILE *f = fopen(path, "re");
	if (!f)
		return ms_error_set(err, MS_ERR_IO, "cannot read the aliases file %s: %s", path,
		                    strerror(errno));
	ms_buf cur;
	ms_buf_init(&cur, MS_ALIASES_ENTRY_MAX);
	char *line = NULL;
	size_t cap = 0, lineno = 0, entry_line = 0;
	ssize_t len;
	ms_status st = MS_OK;
	while (st == MS_OK && (len = getline(&line, &cap, f)) >= 0) {
		lineno++;
		while (len && (line[len - 1] == '\n' || line[len - 1] == '\r'))
			line[--len] = '\0';
		if (memchr(line, '\0', (size_t)len)) {
			st = ms_error_set(err, MS_ERR_USAGE, "%s:%zu: a NUL byte", path, lineno);
			break;
		}
		int cont = line[0] == ' ' || line[0] == '\t';
		char *t = trim(line);
		if (*t == '#' || (!*t && !cont))
			continue; /* comments may sit among continuations */
		if (!cont && ms_buf_avail(&cur)) {
			ms_buf_append(&cur, "", 1);
			st = entry(a, (char *)ms_buf_ptr(&cur), path, entry_line, warn, ctx, err);
			ms_buf_reset(&cur);
		}
		if (cont && !ms_buf_avail(&cur)) {
			if (*t)
				st = ms_error_set(err, MS_ERR_USAGE, "%s:%zu: a continuation line without "
				                  "an entry", path, lineno);
			continue;
		}
		if (!cont)
			entry_line = lineno;
		if (st == MS_OK && (ms_buf_append(&cur, " ", cont) != MS_OK ||
		                    ms_buf_append(&cur, t, strlen(t)) != MS_OK))
			st = ms_error_set(err, MS_ERR_USAGE, "%s:%zu: an entry longer than %u octets",
			                  path, entry_line, MS_ALIASES_ENTRY_MAX);
	}
	if (st == MS_OK && ferror(f))
		st = ms_error_set(err, MS_ERR_IO, "cannot read the aliases file %s: %s", path,
		                  strerror(errno));
	if (st == MS_OK && ms_buf_avail(&cur)) {
		ms_buf_append(&cur, "", 1);
		st = entry(a, (char *)ms_buf_ptr(&cur), path, entry_line, warn, ctx, err);
	}
	free(line);
	ms_buf_free(&cur);
	fclose(f);
	if (st != MS_OK)
		ms_aliases_free(a);
	return st;
}

void ms_aliases_free(ms_aliases *a)
{
	const char *k;
	void *v;
	for (size_t i = 0; (i = ms_hmap_next(&a->names, i, &k, &v)) != 0;)
		free(v);
	ms_hmap_free(&a->names);
	a->n = 0;
}

/* The last unquoted @ of addr, or NULL. */
static const char *at_of(const char *addr)
{
	const char *at = NULL;
	int quoted = 0;
	for (const char *p = addr; *p; p++) {
		if (*p == '\\' && p[1])
			p++;
		else if (*p == '"')
			quoted = !quoted;
		else if (*p == '@' && !quoted)
			at = p;
	}
	return at;
}

int ms_aliases_is_local(const char *addr, const char *hostname)
{
	const char *at = at_of(addr);
	return !at || !strcasecmp(at + 1, hostname) || !strcasecmp(at + 1, "localhost");
}

typedef struct expansion {
	const ms_aliases *a;
	const char *host, *admin;
	ms_aliases_emit_fn emit;
	void *ctx;
	const char *chain[MS_ALIASES_DEPTH + 1]; /* the names being expanded */
	size_t depth;
	size_t steps;   /* targets visited so far */
} expansion;

/* A local name that ends here: admin_address, or the name itself. */
static int final_local(expansion *x, const char *name)
{
	return x->emit(x->ctx, x->admin && *x->admin ? x->admin : name);
}

static int expand(expansion *x, const char *name)
{
	char key[256];
	snprintf(key, sizeof key, "%s", name);
	lower(key);
	const char *targets = x->a ? ms_hmap_get(&x->a->names, key) : NULL;
	int looped = 0;
	for (size_t i = 0; i < x->depth; i++)
		looped |= !strcmp(x->chain[i], key);
	if (!targets || looped || x->depth >= MS_ALIASES_DEPTH)
		return final_local(x, name);
	x->chain[x->depth++] = key; /* lives in this frame, under every deeper one */
	int r = 0;
	for (const char *t = targets; *t && !r; t += strlen(t) + 1) {
		if (++x->steps > MS_ALIASES_STEPS_MAX) {
			r = -2;
			break;
		}
		if (t[0] == '\\') /* \name: local, not looked up again */
			r = final_local(x, t + 1);
		else if (ms_aliases_is_local(t, x->host)) {
			char lp[256]; /* lives in this frame, under the deeper ones */
			const char *at = at_of(t);
			snprintf(lp, sizeof lp, "%.*s", at ? (int)(at - t) : (int)strlen(t), t);
			r = expand(x, lp);
		} else
			r = x->emit(x->ctx, t);
	}
	x->depth--;
	return r;
}

int ms_aliases_expand(const ms_aliases *a, const char *addr, const char *hostname,
                      const char *admin_address, ms_aliases_emit_fn emit, void *ctx)
{
	expansion x = { .a = a, .host = hostname, .admin = admin_address, .emit = emit,
		            .ctx = ctx };
	const char *at = at_of(addr);
	char lp[256];
	snprintf(lp, sizeof lp, "%.*s", at ? (int)(at - addr) : (int)strlen(addr), addr);
	return expand(&x, lp);
}
