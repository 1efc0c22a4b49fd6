/* fuzz_submit - the whole submission path, both halves.
 * Byte 0 chooses:
 *  even: the submitter's side (ms_submit_to) - byte 1's bits are -t and the
 *        "." rule, then the arguments (sender and recipients, separated by
 *        spaces, up to a NUL), then the message.  The prepared stream must
 *        keep the spool's invariants (CRLF lines of at most 998 octets, no
 *        NUL), its envelope must serialise and parse back, and the whole of
 *        it must be accepted by the queue side - what an honest submitter
 *        sends is never refused there.
 *  odd:  the set-id helper's side (ms_drop_serve) on the raw bytes, into a
 *        real spool in /dev/shm: whatever it commits must read back sound.
 * Under ASan/UBSan this is where a header block that overruns a buffer,
 * or a hand-off that confuses the helper, shows up. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ftw.h>
#include <sys/mman.h>
#include <unistd.h>

#include "mailspool/drop.h"
#include "mailspool/submit.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static ms_conf conf;
static ms_spool *sp;
static char *tmpdir;

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st, (void)flag, (void)ftw;
	return remove(path);
}

static void cleanup(void)
{
	ms_spool_close(sp);
	nftw(tmpdir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

static void setup(void)
{
	if (sp)
		return;
	static char dir[] = "/dev/shm/ms-fuzz-submit.XXXXXX";
	static char alt[] = "/tmp/ms-fuzz-submit.XXXXXX";
	char *d = mkdtemp(dir);
	if (!d)
		d = mkdtemp(alt);
	if (!d)
		abort();
	ms_conf_defaults(&conf);
	snprintf(conf.spool_dir, sizeof conf.spool_dir, "%s/spool", d);
	snprintf(conf.hostname, sizeof conf.hostname, "fuzz.example.test");
	conf.min_free_space = 0;
	conf.max_message_size = 1 << 20;
	if (ms_spool_open(&conf, 1, &sp, NULL) != MS_OK)
		abort();
	tmpdir = d;
	atexit(cleanup);
}

/* The checking sink: the spool's invariants, then the queue side itself. */
typedef struct check {
	int after_cr;
	size_t line;
	ms_drop_local local;
	ms_submit_sink inner;
} check;

static ms_status c_begin(void *ctx, ms_error *err)
{
	check *c = ctx;
	return c->inner.begin(c->inner.ctx, err);
}

static ms_status c_write(void *ctx, const void *p, size_t n, ms_error *err)
{
	check *c = ctx;
	const unsigned char *s = p;
	for (size_t i = 0; i < n; i++) {
		if (c->after_cr && s[i] != '\n')
			abort(); /* a bare CR left the submitter */
		if (s[i] == '\0' || (s[i] == '\n' && !c->after_cr))
			abort();
		c->after_cr = s[i] == '\r';
		c->line = s[i] == '\n' ? 0 : s[i] == '\r' ? c->line : c->line + 1;
		if (c->line > 998)
			abort();
	}
	return c->inner.write(c->inner.ctx, p, n, err);
}

static ms_status c_commit(void *ctx, const ms_envelope *env, ms_submit_result *res,
                          ms_error *err)
{
	check *c = ctx;
	ms_buf b;
	ms_buf_init(&b, 0);
	ms_envelope back, e = *env;
	snprintf(e.id, sizeof e.id, "submission");
	if (ms_env_serialize(&e, &b, NULL) != MS_OK ||
	    ms_env_parse(ms_buf_ptr(&b), ms_buf_avail(&b), &back, NULL) != MS_OK ||
	    back.nrcpts != env->nrcpts)
		abort();
	ms_env_free(&back);
	ms_buf_free(&b);
	ms_status st = c->inner.commit(c->inner.ctx, env, res, err);
	/* The submitter checked everything the queue checks, except space. */
	if (st != MS_OK && st != MS_ERR_IO && st != MS_ERR_TEMP)
		abort();
	return st;
}

static void c_abort(void *ctx)
{
	check *c = ctx;
	c->inner.abort(c->inner.ctx);
}

static int memfd_of(const uint8_t *p, size_t n)
{
	int fd = memfd_create("fuzz", 0);
	if (fd < 0 || write(fd, p, n) != (ssize_t)n || lseek(fd, 0, SEEK_SET) != 0)
		abort();
	return fd;
}

static void drain(void)
{
	char **ids;
	size_t n;
	if (ms_spool_list(sp, &ids, &n, NULL) != MS_OK)
		abort();
	for (size_t i = 0; i < n; i++) {
		ms_envelope e;
		if (ms_spool_read(sp, ids[i], &e, NULL) != MS_OK)
			abort(); /* committed, then unsound */
		ms_env_free(&e);
		ms_spool_remove(sp, ids[i], NULL);
	}
	ms_spool_ids_free(ids, n);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 2)
		return 0;
	setup();
	if (data[0] & 1) {
		int fd = memfd_of(data + 1, size - 1);
		ms_submit_result res;
		ms_error err;
		ms_drop_serve(sp, &conf, 1000, fd, &res, &err);
		close(fd);
		drain();
		return 0;
	}
	const uint8_t *p = data + 2, *end = data + size;
	const uint8_t *nul = memchr(p, 0, (size_t)(end - p));
	size_t alen = nul ? (size_t)(nul - p) : 0;
	char *args = malloc(alen + 1);
	memcpy(args, p, alen);
	args[alen] = '\0';
	const char *rcpts[64];
	size_t nr = 0;
	char *save, *sender = strtok_r(args, " ", &save);
	for (char *t; nr < 64 && (t = strtok_r(NULL, " ", &save));)
		rcpts[nr++] = t;
	const uint8_t *msg = nul ? nul + 1 : p;
	int fd = memfd_of(msg, (size_t)(end - msg));
	ms_submit_opts o = { .sender = sender, .user = "fuzz", .uid = 1000, .rcpts = rcpts,
		                 .nrcpts = nr, .from_headers = data[1] & 1, .dot_ends = (data[1] >> 1) & 1 };
	check c = { 0 };
	c.local = (ms_drop_local){ .sp = sp, .conf = &conf, .uid = 1000 };
	c.inner = ms_drop_local_sink(&c.local);
	ms_submit_sink sink = { c_begin, c_write, c_commit, c_abort, &c };
	ms_submit_result res;
	ms_error err;
	ms_submit_to(&sink, &conf, &o, fd, &res, &err);
	close(fd);
	free(args);
	drain();
	return 0;
}
