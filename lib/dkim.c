/*
 * dkim.c - DKIM signatures at commit, through libopendkim opened at run
 * time (see mailspool/dkim.h).  RFC 6376 (signing, 5; header choice,
 * 5.4), RFC 8463 (ed25519-sha256).
 */
#include "mailspool/dkim.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <opendkim/dkim.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mailspool/dl.h"
#include "mailspool/envelope.h"
#include "mailspool/headers.h"

#ifndef MS_OPENDKIM_SONAME
#define MS_OPENDKIM_SONAME "libopendkim.so.11"
#endif

/* The library's functions we call, from dlsym (once per process). */
static struct {
	void *dl;
	char why[256];
	__typeof__(dkim_init) *init;
	__typeof__(dkim_close) *close;
	__typeof__(dkim_options) *options;
	__typeof__(dkim_sign) *sign;
	__typeof__(dkim_chunk) *chunk;
	__typeof__(dkim_eom) *eom;
	__typeof__(dkim_getsighdr_d) *getsighdr_d;
	__typeof__(dkim_free) *free;
	__typeof__(dkim_geterror) *geterror;
	__typeof__(dkim_getresultstr) *resultstr;
} api;
static pthread_once_t api_once = PTHREAD_ONCE_INIT;

static void api_open(void)
{
	const ms_dl_sym syms[] = {
		{ "dkim_init", (void **)&api.init },         { "dkim_close", (void **)&api.close },
		{ "dkim_options", (void **)&api.options },   { "dkim_sign", (void **)&api.sign },
		{ "dkim_chunk", (void **)&api.chunk },       { "dkim_eom", (void **)&api.eom },
		{ "dkim_getsighdr_d", (void **)&api.getsighdr_d },
		{ "dkim_free", (void **)&api.free },         { "dkim_geterror", (void **)&api.geterror },
		{ "dkim_getresultstr", (void **)&api.resultstr },
	};
	api.dl = ms_dl_open(MS_OPENDKIM_SONAME, "DKIM signing", syms, sizeof syms / sizeof syms[0],
	                    api.why, sizeof api.why);
}

static ms_status api_ready(ms_error *err)
{
	pthread_once(&api_once, api_open);
	return api.dl ? MS_OK : ms_error_set(err, MS_ERR_TEMP, "%s", api.why);
}

ms_status ms_dkim_read_key(const char *path, char *buf, size_t cap, ms_error *err)
{
	int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	if (fd < 0)
		return ms_error_set(err, errno == EACCES ? MS_ERR_DENIED : MS_ERR_IO,
		                    "cannot open DKIM key %s: %s", path, strerror(errno));
	struct stat st;
	ms_status s = MS_OK;
	if (fstat(fd, &st) < 0)
		s = ms_error_set(err, MS_ERR_IO, "cannot stat DKIM key %s: %s", path, strerror(errno));
	else if (!S_ISREG(st.st_mode))
		s = ms_error_set(err, MS_ERR_DENIED, "DKIM key %s is not a regular file", path);
	else if (st.st_uid != geteuid())
		s = ms_error_set(err, MS_ERR_DENIED,
		                 "DKIM key %s must belong to the queue's owner (uid %u), not uid %u",
		                 path, (unsigned)geteuid(), (unsigned)st.st_uid);
	else if (st.st_mode & 077)
		/* A key others can read is a key others can sign with. */
		s = ms_error_set(err, MS_ERR_DENIED,
		                 "DKIM key %s is open to others (mode %04o): chmod 600 it", path,
		                 (unsigned)(st.st_mode & 07777));
	else if ((uint64_t)st.st_size >= cap || st.st_size == 0)
		s = ms_error_set(err, MS_ERR_DATA, "DKIM key %s: empty or over %zu bytes", path, cap - 1);
	size_t n = 0;
	while (s == MS_OK && n < (size_t)st.st_size) {
		ssize_t k = read(fd, buf + n, cap - 1 - n);
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0) {
			s = ms_error_set(err, MS_ERR_IO, "cannot read DKIM key %s", path);
			break;
		}
		n += (size_t)k;
	}
	close(fd);
	if (s == MS_OK)
		buf[n] = '\0';
	return s;
}

/* RFC 6376 5.4.1's fields worth signing, and those signed once more than
 * they occur (5.4.2) so that nobody can add one after us. */
static const char *const sign_default[] = {
	"from", "sender", "reply-to", "subject", "date", "message-id", "to", "cc",
	"mime-version", "content-type", "content-transfer-encoding", "content-id",
	"content-description", "resent-date", "resent-from", "resent-sender", "resent-to",
	"resent-cc", "resent-message-id", "in-reply-to", "references", "list-id", "list-help",
	"list-unsubscribe", "list-unsubscribe-post", "list-subscribe", "list-post", "list-owner",
	"list-archive", NULL
};
static const char *const oversign_default[] = { "from",    "reply-to", "subject", "date",
	                                            "to",      "cc",       "message-id",
	                                            "mime-version", "content-type", NULL };
static const char *const oversign_from[] = { "from", NULL };

#define MAX_LISTED 64

/* .headers "From:To:Subject" as the library's list, From added. */
static void split_headers(const char *spec, char *copy, size_t cap, const char **list)
{
	snprintf(copy, cap, "%s", spec);
	size_t n = 0;
	int from = 0;
	for (char *sv, *w = strtok_r(copy, ":", &sv); w && n < MAX_LISTED - 2;
	     w = strtok_r(NULL, ":", &sv)) {
		from |= !strcasecmp(w, "from");
		list[n++] = w;
	}
	if (!from)
		list[n++] = "from";
	list[n] = NULL;
}

/* The first From: address's domain (lower case), "" when none. */
typedef struct first_domain {
	char domain[256];
} first_domain;

static int take_domain(void *ctx, const char *addr)
{
	first_domain *f = ctx;
	const char *at = strrchr(addr, '@');
	if (!f->domain[0] && at && at[1] && strlen(at + 1) < sizeof f->domain) {
		size_t i = 0;
		for (const char *p = at + 1; *p; p++)
			f->domain[i++] = (char)tolower((unsigned char)*p);
		f->domain[i] = '\0';
	}
	return 0;
}

/* A library handle per header choice, made once per process and shared:
 * dkim_init and the header lists (which the library compiles into
 * regular expressions) cost more than an Ed25519 signature, and the
 * library's own filter shares one handle among all its threads. */
#define MAX_LIBS 8
static struct {
	char headers[MS_CONF_VALUE_MAX];
	DKIM_LIB *lib;
} libs[MAX_LIBS];
static size_t nlibs;
static pthread_mutex_t libs_mu = PTHREAD_MUTEX_INITIALIZER;

static DKIM_LIB *lib_new(const char *headers)
{
	DKIM_LIB *lib = api.init(NULL, NULL);
	if (!lib)
		return NULL;
	char copy[MS_CONF_VALUE_MAX];
	const char *list[MAX_LISTED];
	const char *const *sign = sign_default, *const *over = oversign_default;
	if (headers[0]) {
		split_headers(headers, copy, sizeof copy, list);
		sign = list;
		over = oversign_from;
	}
	/* (The library takes the NULL-terminated array itself, with the size
	 * of a pointer to it, as OpenDKIM's own filter passes it; it keeps
	 * compiled copies, not the array.) */
	if (api.options(lib, DKIM_OP_SETOPT, DKIM_OPTS_SIGNHDRS, (void *)sign, sizeof sign) !=
	        DKIM_STAT_OK ||
	    api.options(lib, DKIM_OP_SETOPT, DKIM_OPTS_OVERSIGNHDRS, (void *)over, sizeof over) !=
	        DKIM_STAT_OK) {
		api.close(lib);
		return NULL;
	}
	return lib;
}

/* The shared handle for this header choice; NULL when the library fails
 * or the table is full (then the caller makes and closes its own). */
static DKIM_LIB *lib_for(const char *headers, int *owned)
{
	DKIM_LIB *lib = NULL;
	*owned = 0;
	pthread_mutex_lock(&libs_mu);
	for (size_t i = 0; i < nlibs && !lib; i++)
		if (!strcmp(libs[i].headers, headers))
			lib = libs[i].lib;
	if (!lib && (lib = lib_new(headers))) {
		if (nlibs < MAX_LIBS) {
			snprintf(libs[nlibs].headers, sizeof libs[nlibs].headers, "%s", headers);
			libs[nlibs++].lib = lib;
		} else {
			*owned = 1;
		}
	}
	pthread_mutex_unlock(&libs_mu);
	return lib;
}

/* One signature in progress. */
typedef struct signer {
	DKIM_LIB *lib;
	int lib_owned;
	DKIM *dkim;
} signer;

static void signer_free(signer *s)
{
	if (s->dkim)
		api.free(s->dkim);
	if (s->lib && s->lib_owned)
		api.close(s->lib);
	s->dkim = NULL;
	s->lib = NULL;
}

static ms_status signer_start(signer *s, const ms_conf_dkim *d, const ms_conf_dkim_sig *g,
                              ms_error *err)
{
	static char key[MS_DKIM_KEY_MAX];
	static pthread_mutex_t key_mu = PTHREAD_MUTEX_INITIALIZER;
	memset(s, 0, sizeof *s);
	if (!(s->lib = lib_for(d->headers, &s->lib_owned)))
		return ms_error_set(err, MS_ERR_TEMP, "DKIM: the library did not start");
	/* The key lives in one buffer, wiped as soon as the library has its
	 * own copy (dkim_sign copies it). */
	pthread_mutex_lock(&key_mu);
	ms_status st = ms_dkim_read_key(g->key_file, key, sizeof key, err);
	DKIM_STAT ds = DKIM_STAT_OK;
	if (st == MS_OK) {
		int alg = g->alg == MS_DKIM_ALG_ED25519_SHA256 ? DKIM_SIGN_ED25519SHA256
		                                               : DKIM_SIGN_RSASHA256;
		s->dkim = api.sign(s->lib, (const unsigned char *)"mailspool", NULL,
		                   (dkim_sigkey_t)key, (const unsigned char *)g->selector,
		                   (const unsigned char *)d->domain,
		                   d->relaxed_header ? DKIM_CANON_RELAXED : DKIM_CANON_SIMPLE,
		                   d->relaxed_body ? DKIM_CANON_RELAXED : DKIM_CANON_SIMPLE, alg, -1,
		                   &ds);
	}
	explicit_bzero(key, sizeof key);
	pthread_mutex_unlock(&key_mu);
	if (st != MS_OK) {
		/* The operator's to fix; the message waits with its submitter. */
		signer_free(s);
		if (err)
			err->status = MS_ERR_TEMP;
		return MS_ERR_TEMP;
	}
	if (!s->dkim) {
		signer_free(s);
		return ms_error_set(err, MS_ERR_TEMP, "DKIM %s/%s: %s", d->domain, g->selector,
		                    api.resultstr(ds));
	}
	return MS_OK;
}

/* The finished signature as "DKIM-Signature: ...\r\n" appended to out. */
static ms_status signer_finish(signer *s, const ms_conf_dkim *d, const ms_conf_dkim_sig *g,
                               ms_buf *out, ms_error *err)
{
	static const char name[] = "DKIM-Signature: ";
	DKIM_STAT ds = api.chunk(s->dkim, NULL, 0);
	if (ds == DKIM_STAT_OK)
		ds = api.eom(s->dkim, NULL);
	unsigned char *h = NULL;
	size_t hl = 0;
	if (ds == DKIM_STAT_OK)
		ds = api.getsighdr_d(s->dkim, sizeof name - 1, &h, &hl);
	if (ds != DKIM_STAT_OK) {
		const char *why = api.geterror(s->dkim);
		return ms_error_set(err, MS_ERR_TEMP, "DKIM %s/%s (%s): %s", d->domain, g->selector,
		                    g->key_file, why && *why ? why : api.resultstr(ds));
	}
	/* The library folds with CRLF and a tab, as the message's own lines
	 * end; the field must not carry anything else (it goes on the wire). */
	for (size_t i = 0; i < hl; i++)
		if (!h[i] || (h[i] == '\r' && (i + 1 >= hl || h[i + 1] != '\n')) ||
		    (h[i] == '\n' && (i == 0 || h[i - 1] != '\r')))
			return ms_error_set(err, MS_ERR_TEMP, "DKIM: the library made a malformed field");
	ms_status st = ms_buf_appendstr(out, name);
	if (st == MS_OK)
		st = ms_buf_append(out, h, hl);
	if (st == MS_OK)
		st = ms_buf_append(out, "\r\n", 2);
	return st == MS_OK ? MS_OK : ms_error_set(err, MS_ERR_NOMEM, "out of memory");
}

/* Sign fd[0..size) with every signature of d; the fields go to out. */
static ms_status sign_with(const ms_conf_dkim *d, int fd, uint64_t size, ms_buf *out,
                           ms_error *err)
{
	signer s[MS_CONF_DKIM_SIGS];
	size_t n = 0;
	ms_status st = MS_OK;
	for (; n < d->nsigs && st == MS_OK; n++)
		if ((st = signer_start(&s[n], d, &d->sigs[n], err)) != MS_OK)
			break;
	static const size_t chunk = 64 * 1024;
	unsigned char *buf = st == MS_OK ? malloc(chunk) : NULL;
	if (st == MS_OK && !buf)
		st = ms_error_set(err, MS_ERR_NOMEM, "out of memory");
	for (uint64_t off = 0; st == MS_OK && off < size;) {
		size_t want = size - off < chunk ? (size_t)(size - off) : chunk;
		ssize_t k = pread(fd, buf, want, (off_t)off);
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0) {
			st = ms_error_set(err, MS_ERR_IO, "cannot read the message to sign it");
			break;
		}
		for (size_t i = 0; i < n && st == MS_OK; i++)
			if (api.chunk(s[i].dkim, buf, (size_t)k) != DKIM_STAT_OK)
				st = ms_error_set(err, MS_ERR_TEMP, "DKIM %s/%s: %s", d->domain,
				                  d->sigs[i].selector, api.geterror(s[i].dkim));
		off += (uint64_t)k;
	}
	free(buf);
	for (size_t i = 0; i < n && st == MS_OK; i++)
		st = signer_finish(&s[i], d, &d->sigs[i], out, err);
	for (size_t i = 0; i < n; i++)
		signer_free(&s[i]);
	return st;
}

ms_status ms_dkim_sign(const ms_conf *c, int fd, uint64_t size, const char *sender,
                       char **prefix, ms_error *err)
{
	*prefix = NULL;
	if (!c->ndkim)
		return MS_OK;
	/* Whose mail is it: RFC 5322.From's domain, the one DMARC aligns. */
	first_domain f = { "" };
	ms_buf hdr;
	ms_buf_init(&hdr, MS_HDR_MAX);
	uint64_t body_off = 0;
	ms_status st = ms_hdr_read(fd, &hdr, &body_off, err);
	if (st == MS_OK)
		ms_hdr_addresses(ms_buf_ptr(&hdr), ms_buf_avail(&hdr), "From", take_domain, &f);
	ms_buf_free(&hdr);
	if (st != MS_OK)
		return st;
	if (!f.domain[0])
		take_domain(&f, sender ? sender : "");
	const ms_conf_dkim *d = f.domain[0] ? ms_conf_dkim_for(c, f.domain) : NULL;
	if (!d)
		return MS_OK;
	if ((st = api_ready(err)) != MS_OK)
		return st;
	ms_buf out;
	ms_buf_init(&out, MS_ENV_PREFIX_MAX);
	st = sign_with(d, fd, size, &out, err);
	if (st == MS_OK && !(*prefix = strndup(ms_buf_ptr(&out), ms_buf_avail(&out))))
		st = ms_error_set(err, MS_ERR_NOMEM, "out of memory");
	ms_buf_free(&out);
	return st;
}

ms_status ms_dkim_check(const ms_conf *c, ms_error *err)
{
	if (!c->ndkim)
		return MS_OK;
	ms_status st = api_ready(err);
	/* A test signature over a small message, through a pipe-free memory
	 * file, proves each key and algorithm together. */
	static const char msg[] = "From: check@invalid\r\nSubject: check\r\n\r\ncheck\r\n";
	FILE *tmp = st == MS_OK ? tmpfile() : NULL;
	if (st == MS_OK && (!tmp || fwrite(msg, 1, sizeof msg - 1, tmp) != sizeof msg - 1 ||
	                    fflush(tmp) != 0))
		st = ms_error_set(err, MS_ERR_IO, "cannot make a file to test the DKIM keys");
	for (size_t i = 0; i < c->ndkim && st == MS_OK; i++) {
		ms_buf out;
		ms_buf_init(&out, MS_ENV_PREFIX_MAX);
		st = sign_with(&c->dkim[i], fileno(tmp), sizeof msg - 1, &out, err);
		ms_buf_free(&out);
	}
	if (tmp)
		fclose(tmp);
	return st;
}
