/*
 * smtpin.c - the SMTP server dialogue of `sendmail -bs` (mailspool/smtpin.h).
 *
 * One session, one transaction at a time: the state is "greeted or not",
 * "MAIL given or not" and the recipients accepted so far.  Input is read
 * into a fixed buffer; replies collect in an output buffer that is written
 * only when the input buffer holds no further command (RFC 2920 3.1: a
 * server may not wait for a pipelined client's next command before
 * answering what it has, and need not answer before it has read what is
 * already there).
 */
#include "mailspool/smtpin.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "mailspool/addr.h"
#include "mailspool/buf.h"
#include "mailspool/io.h"

#define IN_CAP (64u * 1024)
#define OUT_CAP (64u * 1024)
#define MAX_ERRORS 20    /* bad commands before the session is ended (Postfix: 20) */
#define DATA_CHUNK (64u * 1024)

typedef struct sess {
	int in, out;
	const ms_smtpin_opts *o;
	const ms_smtpin_ops *ops;
	ms_smtpin_stats *st;
	ms_error *err;
	char ibuf[IN_CAP];
	size_t ipos, ilen;
	int eof;
	ms_buf obuf;
	int greeted;
	/* the transaction */
	int have_mail, utf8;
	char sender[MS_ADDR_MAX + 1];
	char **rcpts;
	size_t nrcpts;
	unsigned errors;
	ms_status fatal; /* the session cannot go on (input ended inside DATA) */
} sess;

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Wait until fd is ready for `events` or the deadline passes. */
static ms_status wait_fd(sess *s, int fd, short events, int timeout_ms)
{
	int64_t end = now_ms() + timeout_ms;
	for (;;) {
		int64_t left = end - now_ms();
		if (left <= 0)
			return ms_error_set(s->err, MS_ERR_TIMEOUT, "the client sent nothing for %d s",
			                    timeout_ms / 1000);
		struct pollfd p = { .fd = fd, .events = events };
		int r = poll(&p, 1, (int)left);
		if (r > 0)
			return MS_OK;
		if (r < 0 && errno != EINTR)
			return ms_error_set(s->err, MS_ERR_IO, "poll: %s", strerror(errno));
	}
}

static ms_status flush_out(sess *s)
{
	while (ms_buf_avail(&s->obuf)) {
		ssize_t w = write(s->out, ms_buf_ptr(&s->obuf), ms_buf_avail(&s->obuf));
		if (w > 0) {
			ms_buf_consume(&s->obuf, (size_t)w);
			continue;
		}
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0 && errno == EAGAIN) {
			/* A client that does not read its replies gets the command
			 * deadline, like one that sends nothing. */
			if (wait_fd(s, s->out, POLLOUT, s->o->command_timeout_ms) != MS_OK)
				return MS_ERR_TIMEOUT;
			continue;
		}
		return ms_error_set(s->err, MS_ERR_IO, "cannot write a reply: %s", strerror(errno));
	}
	ms_buf_reset(&s->obuf);
	return MS_OK;
}

/* More input into ibuf (replies written first: the client may be waiting
 * for them before it sends more).  1: data, 0: end of input, -1: error. */
static int fill(sess *s, int timeout_ms)
{
	if (s->ipos < s->ilen)
		return 1;
	if (s->eof)
		return 0;
	if (flush_out(s) != MS_OK)
		return -1;
	for (;;) {
		if (wait_fd(s, s->in, POLLIN, timeout_ms) != MS_OK)
			return -1;
		ssize_t r = read(s->in, s->ibuf, sizeof s->ibuf);
		if (r > 0) {
			s->ipos = 0;
			s->ilen = (size_t)r;
			return 1;
		}
		if (r == 0) {
			s->eof = 1;
			return 0;
		}
		if (errno != EINTR && errno != EAGAIN) {
			ms_error_set(s->err, MS_ERR_IO, "cannot read a command: %s", strerror(errno));
			return -1;
		}
	}
}

/* A reply line (or lines: text may hold "\n" between lines).  Text from
 * elsewhere (an error message) is made printable first. */
static void reply(sess *s, int code, const char *enh, const char *text)
{
	const char *p = text;
	do {
		const char *nl = strchr(p, '\n');
		size_t len = nl ? (size_t)(nl - p) : strlen(p);
		ms_buf_printf(&s->obuf, "%d%c", code, nl ? '-' : ' ');
		if (enh)
			ms_buf_printf(&s->obuf, "%s ", enh);
		for (size_t i = 0; i < len && i < 400; i++) {
			char c = p[i];
			ms_buf_append(&s->obuf, c >= 0x20 && c < 0x7f ? &c : "?", 1);
		}
		ms_buf_append(&s->obuf, "\r\n", 2);
		p = nl ? nl + 1 : NULL;
	} while (p);
}

static void reset_txn(sess *s)
{
	for (size_t i = 0; i < s->nrcpts; i++)
		free(s->rcpts[i]);
	free(s->rcpts);
	s->rcpts = NULL;
	s->nrcpts = 0;
	s->have_mail = s->utf8 = 0;
	s->sender[0] = '\0';
}

/* One command line into line (without CRLF, NUL-terminated).  1: a line;
 * 2: a line too long (skipped to its end); 3: a line holding NUL or CR;
 * 0: end of input; -1: error. */
static int read_command(sess *s, char *line, size_t cap)
{
	size_t n = 0;
	int toolong = 0;
	for (;;) {
		int r = fill(s, s->o->command_timeout_ms);
		if (r <= 0)
			return r < 0 ? -1 : 0; /* a last line without LF is dropped */
		const char *p = s->ibuf + s->ipos;
		size_t avail = s->ilen - s->ipos;
		const char *lf = memchr(p, '\n', avail);
		size_t take = lf ? (size_t)(lf - p) + 1 : avail;
		if (!toolong && n + take <= cap) {
			memcpy(line + n, p, take);
			n += take;
		} else {
			toolong = 1;
		}
		s->ipos += take;
		if (lf)
			break;
	}
	if (toolong)
		return 2;
	n--; /* the LF */
	if (n && line[n - 1] == '\r')
		n--;
	line[n] = '\0';
	/* A NUL would cut the command short, a lone CR is no line end:
	 * neither belongs in a command. */
	return memchr(line, '\0', n) || memchr(line, '\r', n) ? 3 : 1;
}

/* Does the line start with the verb (case-insensitive), followed by its
 * end or a space?  *arg: what follows the spaces. */
static int verb_is(const char *line, const char *verb, const char **arg)
{
	size_t n = strlen(verb);
	if (strncasecmp(line, verb, n) || (line[n] && line[n] != ' '))
		return 0;
	const char *a = line + n;
	while (*a == ' ')
		a++;
	*arg = a;
	return 1;
}

/* "FROM:<path> params" or "TO:<path> params": the path's content into
 * path (without <>), the parameters' start into *params.  0 if malformed. */
static int split_path(const char *arg, const char *key, char *path, size_t cap,
                      const char **params)
{
	size_t kn = strlen(key);
	if (strncasecmp(arg, key, kn))
		return 0;
	const char *p = arg + kn;
	while (*p == ' ')
		p++; /* "MAIL FROM: <a@b>", which some clients send */
	if (*p != '<')
		return 0;
	const char *q = ms_addr_unquoted_chr(++p, '>');
	if (*q != '>' || (size_t)(q - p) >= cap)
		return 0;
	/* A source route (@a,@b:x@y) is accepted and ignored (RFC 5321 4.1.2,
	 * C.). */
	if (*p == '@') {
		const char *colon = memchr(p, ':', (size_t)(q - p));
		if (!colon)
			return 0;
		p = colon + 1;
	}
	memcpy(path, p, (size_t)(q - p));
	path[q - p] = '\0';
	*params = q + 1;
	return 1;
}

/* Next "KEY[=VALUE]" of a parameter list; 0 at the end. */
static int next_param(const char **p, char *key, size_t kcap, char *val, size_t vcap)
{
	while (**p == ' ')
		(*p)++;
	if (!**p)
		return 0;
	const char *e = strchr(*p, ' ');
	size_t len = e ? (size_t)(e - *p) : strlen(*p);
	const char *eq = memchr(*p, '=', len);
	size_t kl = eq ? (size_t)(eq - *p) : len;
	size_t vl = eq ? len - kl - 1 : 0;
	snprintf(key, kcap, "%.*s", (int)kl, *p);
	snprintf(val, vcap, "%.*s", (int)vl, eq ? eq + 1 : "");
	*p += len;
	return 1;
}

/* Refuse the command and count it: a client making error after error is
 * ended (a program gone wrong, or input that is no SMTP at all). */
static void refuse(sess *s, int code, const char *enh, const char *text)
{
	reply(s, code, enh, text);
	s->errors++;
}

static void do_ehlo(sess *s, const char *arg, int extended)
{
	if (!*arg) {
		refuse(s, 501, "5.5.4", extended ? "Syntax: EHLO hostname" : "Syntax: HELO hostname");
		return;
	}
	reset_txn(s);
	s->greeted = 1;
	if (!extended) {
		ms_buf_printf(&s->obuf, "250 %s\r\n", s->o->hostname);
		return;
	}
	ms_buf_printf(&s->obuf, "250-%s\r\n250-PIPELINING\r\n", s->o->hostname);
	if (s->o->max_size)
		ms_buf_printf(&s->obuf, "250-SIZE %llu\r\n", (unsigned long long)s->o->max_size);
	else
		ms_buf_printf(&s->obuf, "250-SIZE\r\n");
	ms_buf_printf(&s->obuf, "250-8BITMIME\r\n250-SMTPUTF8\r\n250 ENHANCEDSTATUSCODES\r\n");
}

/* Check a mailbox: "" only for the sender; a bare local name (root) is
 * let through for the submission path to qualify or alias.  0 and a reply
 * if refused. */
static int check_mailbox(sess *s, const char *path, ms_addr_role role, char *wire, int *utf8)
{
	ms_error e;
	unsigned flags = 0;
	if (role == MS_ADDR_RECIPIENT && *path && !strchr(path, '@') &&
	    strcasecmp(path, "postmaster")) {
		char full[MS_ADDR_LOCAL_MAX + 16];
		size_t n = strlen(path);
		if (n <= MS_ADDR_LOCAL_MAX) {
			memcpy(full, path, n);
			memcpy(full + n, "@localhost", sizeof "@localhost");
		}
		if (n > MS_ADDR_LOCAL_MAX ||
		    ms_addr_parse(full, strlen(full), role, wire, &flags, &e) != MS_OK) {
			refuse(s, 501, "5.1.3", "Bad recipient address syntax");
			return 0;
		}
		memcpy(wire, path, strlen(path) + 1); /* at most 64 octets: checked */
	} else if (ms_addr_parse(path, strlen(path), role, wire, &flags, &e) != MS_OK) {
		refuse(s, 501, role == MS_ADDR_SENDER ? "5.1.7" : "5.1.3", e.msg);
		return 0;
	}
	*utf8 = (flags & MS_ADDR_UTF8) != 0;
	return 1;
}

static void do_mail(sess *s, const char *arg)
{
	char path[MS_SMTPIN_LINE_MAX], key[32], val[64], wire[MS_ADDR_MAX + 1];
	const char *params;
	if (s->have_mail) {
		refuse(s, 503, "5.5.1", "Error: nested MAIL command");
		return;
	}
	if (!split_path(arg, "FROM:", path, sizeof path, &params)) {
		refuse(s, 501, "5.5.4", "Syntax: MAIL FROM:<address>");
		return;
	}
	int utf8 = 0, want_utf8 = 0;
	while (next_param(&params, key, sizeof key, val, sizeof val)) {
		if (!strcasecmp(key, "SIZE")) {
			char *end;
			errno = 0;
			unsigned long long n = strtoull(val, &end, 10);
			if (!*val || *end || errno) {
				refuse(s, 501, "5.5.4", "Bad SIZE parameter");
				return;
			}
			if (s->o->max_size && n > s->o->max_size) {
				refuse(s, 552, "5.3.4", "Message size exceeds fixed limit");
				return;
			}
		} else if (!strcasecmp(key, "BODY")) {
			if (strcasecmp(val, "7BIT") && strcasecmp(val, "8BITMIME")) {
				refuse(s, 501, "5.5.4", "Bad BODY parameter");
				return;
			}
		} else if (!strcasecmp(key, "SMTPUTF8") && !*val) {
			want_utf8 = 1;
		} else {
			refuse(s, 555, "5.5.4", "Unsupported MAIL parameter");
			return;
		}
	}
	if (!check_mailbox(s, path, MS_ADDR_SENDER, wire, &utf8))
		return;
	if (utf8 && !want_utf8) {
		refuse(s, 553, "5.6.7", "A UTF-8 address needs the SMTPUTF8 parameter");
		return;
	}
	snprintf(s->sender, sizeof s->sender, "%s", wire);
	s->have_mail = 1;
	s->utf8 = want_utf8;
	reply(s, 250, "2.1.0", "Ok");
}

static void do_rcpt(sess *s, const char *arg)
{
	char path[MS_SMTPIN_LINE_MAX], key[32], val[64], wire[MS_ADDR_MAX + 1];
	const char *params;
	if (!s->have_mail) {
		refuse(s, 503, "5.5.1", "Error: need MAIL command");
		return;
	}
	if (!split_path(arg, "TO:", path, sizeof path, &params)) {
		refuse(s, 501, "5.5.4", "Syntax: RCPT TO:<address>");
		return;
	}
	if (next_param(&params, key, sizeof key, val, sizeof val)) {
		refuse(s, 555, "5.5.4", "Unsupported RCPT parameter");
		return;
	}
	int utf8 = 0;
	if (!check_mailbox(s, path, MS_ADDR_RECIPIENT, wire, &utf8))
		return;
	if (utf8 && !s->utf8) {
		refuse(s, 553, "5.6.7", "A UTF-8 address needs SMTPUTF8 on MAIL");
		return;
	}
	if (s->nrcpts >= MS_SMTPIN_RCPTS_MAX) {
		/* RFC 5321 4.5.3.1.8: 452 and the client sends the rest later. */
		reply(s, 452, "4.5.3", "Error: too many recipients");
		return;
	}
	char **nr = realloc(s->rcpts, (s->nrcpts + 1) * sizeof *nr);
	char *copy = strdup(wire);
	if (!nr || !copy) {
		free(copy);
		if (nr)
			s->rcpts = nr;
		reply(s, 452, "4.3.0", "Error: out of memory");
		return;
	}
	s->rcpts = nr;
	s->rcpts[s->nrcpts++] = copy;
	reply(s, 250, "2.1.5", "Ok");
}

/* The data file: unlinked from the start, so nothing is left behind
 * whatever happens to this process. */
static int data_file(const char *dir)
{
	int fd = open(dir ? dir : "/tmp", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
	if (fd < 0)
		fd = memfd_create("mailspool-bs", MFD_CLOEXEC);
	return fd;
}

typedef struct data_out {
	int fd;
	char buf[DATA_CHUNK];
	size_t len;
	uint64_t size;
	int over, failed;
	uint64_t max;
} data_out;

static void data_put(data_out *d, const char *p, size_t n)
{
	d->size += n;
	if (d->max && d->size > d->max)
		d->over = 1;
	if (d->over || d->failed)
		return;
	while (n) {
		size_t k = n < sizeof d->buf - d->len ? n : sizeof d->buf - d->len;
		memcpy(d->buf + d->len, p, k);
		d->len += k;
		p += k;
		n -= k;
		if (d->len == sizeof d->buf) {
			if (ms_write_all(d->fd, d->buf, d->len) < 0) {
				d->failed = 1;
				return;
			}
			d->len = 0;
		}
	}
}

/* Read the data to CR LF . CR LF, unstuffing leading dots (RFC 5321
 * 4.5.2), into d.  MS_OK at the end; an error if the input ended or
 * timed out first. */
static ms_status read_data(sess *s, data_out *d)
{
	enum { BOL, DOT, DOTCR, MID, CR } st = BOL;
	for (;;) {
		int r = fill(s, s->o->data_timeout_ms);
		if (r < 0)
			return s->err ? s->err->status : MS_ERR_IO;
		if (r == 0)
			return ms_error_set(s->err, MS_ERR_CLOSED, "the input ended inside DATA");
		const char *p = s->ibuf + s->ipos, *end = s->ibuf + s->ilen;
		const char *run = p; /* octets copied as they are, in one go */
		for (; p < end; p++) {
			char c = *p;
			switch (st) {
			case BOL:
				if (c == '.') {
					data_put(d, run, (size_t)(p - run));
					run = p + 1; /* the dot is held back */
					st = DOT;
				} else {
					st = c == '\r' ? CR : MID;
				}
				break;
			case DOT:
				if (c == '\r') {
					run = p + 1;
					st = DOTCR;
				} else {
					st = MID; /* the dot stays dropped: that was stuffing */
				}
				break;
			case DOTCR:
				if (c == '\n') {
					s->ipos = (size_t)(p + 1 - s->ibuf);
					return MS_OK;
				}
				data_put(d, "\r", 1); /* ".\rX": the CR was data */
				run = p;
				st = c == '\r' ? CR : MID;
				break;
			case MID:
				if (c == '\r')
					st = CR;
				break;
			case CR:
				st = c == '\n' ? BOL : c == '\r' ? CR : MID;
				break;
			}
		}
		if (st != DOT && st != DOTCR)
			data_put(d, run, (size_t)(p - run));
		s->ipos = s->ilen;
	}
}

static void do_data(sess *s)
{
	if (!s->have_mail) {
		refuse(s, 503, "5.5.1", "Error: need MAIL command");
		return;
	}
	if (!s->nrcpts) {
		refuse(s, 554, "5.5.1", "Error: no valid recipients");
		return;
	}
	data_out *d = calloc(1, sizeof *d);
	if (!d || (d->fd = data_file(s->o->tmp_dir)) < 0) {
		free(d);
		reply(s, 451, "4.3.0", "Error: cannot make a file for the message");
		return;
	}
	d->max = s->o->max_size;
	reply(s, 354, NULL, "End data with <CR><LF>.<CR><LF>");
	ms_status rst = read_data(s, d);
	if (rst != MS_OK) {
		close(d->fd);
		free(d);
		s->fatal = rst; /* nothing sensible can follow */
		return;
	}
	if (!d->over && !d->failed && d->len && ms_write_all(d->fd, d->buf, d->len) < 0)
		d->failed = 1;
	if (d->over) {
		reply(s, 552, "5.3.4", "Message size exceeds fixed limit");
		if (s->st)
			s->st->refused++;
	} else if (d->failed || lseek(d->fd, 0, SEEK_SET) != 0) {
		reply(s, 451, "4.3.0", "Error: cannot keep the message for queuing");
		if (s->st)
			s->st->refused++;
	} else {
		ms_smtpin_msg m = { .sender = s->sender, .rcpts = (const char *const *)s->rcpts,
			                .nrcpts = s->nrcpts, .fd = d->fd, .utf8 = s->utf8 };
		char id[64] = "", text[MS_ERROR_MSG_MAX + 32];
		ms_error e = { 0 };
		ms_status q = s->ops->queue(s->ops->ctx, &m, id, sizeof id, &e);
		if (q == MS_OK) {
			snprintf(text, sizeof text, "Ok: queued as %s", id);
			reply(s, 250, "2.0.0", text);
			if (s->st)
				s->st->messages++;
		} else {
			int temp = q == MS_ERR_TEMP || q == MS_ERR_IO || q == MS_ERR_NOMEM;
			reply(s, temp ? 451 : 554, temp ? "4.3.0" : q == MS_ERR_DENIED ? "5.7.1" : "5.6.0",
			      e.msg[0] ? e.msg : "Error: not queued");
			if (s->st)
				s->st->refused++;
		}
	}
	close(d->fd);
	free(d);
	reset_txn(s);
}

ms_status ms_smtpin_run(int in_fd, int out_fd, const ms_smtpin_opts *o, const ms_smtpin_ops *ops,
                        ms_smtpin_stats *st, ms_error *err)
{
	ms_smtpin_opts opts = *o;
	if (!opts.command_timeout_ms)
		opts.command_timeout_ms = 300 * 1000;
	if (!opts.data_timeout_ms)
		opts.data_timeout_ms = 600 * 1000;
	sess *s = calloc(1, sizeof *s);
	char *line = malloc(MS_SMTPIN_LINE_MAX + 1);
	ms_error local;
	if (!s || !line) {
		free(s);
		free(line);
		return ms_error_set(err, MS_ERR_NOMEM, "out of memory");
	}
	s->in = in_fd;
	s->out = out_fd;
	s->o = &opts;
	s->ops = ops;
	s->st = st;
	s->err = err ? err : &local;
	ms_buf_init(&s->obuf, OUT_CAP);
	if (st)
		memset(st, 0, sizeof *st);
	ms_status ret = MS_OK;
	ms_buf_printf(&s->obuf, "220 %s ESMTP mailspool\r\n", opts.hostname);
	for (;;) {
		if (s->fatal) {
			ret = s->fatal;
			if (ret == MS_ERR_TIMEOUT)
				reply(s, 421, "4.4.2", "Error: timeout exceeded");
			break;
		}
		if (s->errors >= MAX_ERRORS) {
			reply(s, 421, "4.7.0", "Error: too many errors");
			break;
		}
		int r = read_command(s, line, MS_SMTPIN_LINE_MAX);
		if (r == 0)
			break; /* end of input: like QUIT without the reply */
		if (r < 0) {
			ret = s->err->status;
			if (ret == MS_ERR_TIMEOUT) {
				reply(s, 421, "4.4.2", "Error: timeout exceeded");
				/* best effort: the client may be gone */
			}
			break;
		}
		const char *arg;
		if (r == 2) {
			refuse(s, 500, "5.5.2", "Error: line too long");
		} else if (r == 3) {
			refuse(s, 500, "5.5.2", "Error: NUL or bare CR in a command");
		} else if (verb_is(line, "EHLO", &arg)) {
			do_ehlo(s, arg, 1);
		} else if (verb_is(line, "HELO", &arg)) {
			do_ehlo(s, arg, 0);
		} else if (verb_is(line, "MAIL", &arg)) {
			do_mail(s, arg);
		} else if (verb_is(line, "RCPT", &arg)) {
			do_rcpt(s, arg);
		} else if (verb_is(line, "DATA", &arg)) {
			if (*arg)
				refuse(s, 501, "5.5.4", "Syntax: DATA");
			else
				do_data(s);
		} else if (verb_is(line, "RSET", &arg)) {
			reset_txn(s);
			reply(s, 250, "2.0.0", "Ok");
		} else if (verb_is(line, "NOOP", &arg)) {
			reply(s, 250, "2.0.0", "Ok");
		} else if (verb_is(line, "VRFY", &arg)) {
			reply(s, 252, "2.5.2", "Cannot VRFY user; try RCPT to attempt delivery");
		} else if (verb_is(line, "HELP", &arg)) {
			reply(s, 214, "2.0.0", "Commands: EHLO HELO MAIL RCPT DATA RSET NOOP VRFY QUIT");
		} else if (verb_is(line, "QUIT", &arg)) {
			reply(s, 221, "2.0.0", "Bye");
			break;
		} else if (verb_is(line, "BDAT", &arg) || verb_is(line, "STARTTLS", &arg) ||
		           verb_is(line, "AUTH", &arg) || verb_is(line, "EXPN", &arg)) {
			/* Not offered: a local pipe needs neither TLS nor a login. */
			refuse(s, 502, "5.5.1", "Error: command not implemented");
		} else {
			refuse(s, 500, "5.5.2", "Error: command not recognized");
		}
	}
	if (flush_out(s) != MS_OK && ret == MS_OK)
		ret = s->err->status;
	reset_txn(s);
	ms_buf_free(&s->obuf);
	free(line);
	free(s);
	return ret;
}
