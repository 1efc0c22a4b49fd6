/*
 * headers.c - header block reading, address lists and Bcc removal.
 *
 * The address-list parser is deliberately forgiving in what it reads (real
 * mail has odd headers) and strict in what it yields: every address it
 * returns is checked again by ms_addr_parse before use.
 */
#include "mailspool/headers.h"

#include <errno.h>
#include <string.h>
#include <time.h>
#include <strings.h>
#include <unistd.h>

size_t ms_hdr_line_len(const char *p, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (p[i] == '\n')
			return i + 1;
		if (p[i] == '\r')
			return i + 1 < n && p[i + 1] == '\n' ? i + 2 : i + 1;
	}
	return n;
}

/* Is this line (with its end) empty? */
static int empty_line(const char *p, size_t len)
{
	return len > 0 && (p[0] == '\n' || p[0] == '\r');
}

ms_status ms_hdr_read(int fd, ms_buf *hdr, uint64_t *body_off, ms_error *err)
{
	char chunk[8192];
	uint64_t off = 0;
	size_t from = 0; /* lines before this offset are complete and not empty */
	ms_buf_reset(hdr);
	for (;;) {
		ssize_t n = pread(fd, chunk, sizeof chunk, (off_t)off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return ms_error_set(err, MS_ERR_IO, "cannot read message: %s", strerror(errno));
		if (n == 0) {
			*body_off = off; /* headers only, no body */
			return MS_OK;
		}
		size_t start = ms_buf_avail(hdr);
		if (start + (size_t)n > MS_HDR_MAX)
			return ms_error_set(err, MS_ERR_DATA, "header block longer than %u bytes",
			                    MS_HDR_MAX);
		ms_buf_append(hdr, chunk, (size_t)n);
		const char *p = ms_buf_ptr(hdr);
		size_t len = ms_buf_avail(hdr);
		/* The block ends at the first empty line, line ends being CRLF,
		 * LF or a bare CR (the rule the encoder applies).  The walk goes
		 * on from the last complete line: a CR at the end of what was
		 * read may still become a CRLF. */
		size_t i = from;
		while (i < len) {
			size_t ll = ms_hdr_line_len(p + i, len - i);
			int complete = (p[i + ll - 1] == '\n') || (p[i + ll - 1] == '\r' && i + ll < len);
			if (!complete)
				break;
			from = i + ll;
			if (empty_line(p + i, ll)) {
				hdr->len = hdr->off + i + ll;
				hdr->data[hdr->len] = '\0';
				*body_off = i + ll;
				return MS_OK;
			}
			i += ll;
		}
		off += (uint64_t)n;
	}
}

/* Length of the field starting at p (through its last continuation line). */
static size_t field_len(const char *p, size_t len)
{
	size_t i = 0;
	for (;;) {
		i += ms_hdr_line_len(p + i, len - i);
		if (i >= len || (p[i] != ' ' && p[i] != '\t'))
			return i;
	}
}

static int name_is(const char *p, size_t flen, const char *name)
{
	size_t n = strlen(name);
	return flen > n && p[n] == ':' && strncasecmp(p, name, n) == 0;
}

/* Bounded buffer for one address while parsing. */
typedef struct acc {
	char s[1024];
	size_t n;
	int overflow;
} acc;

static void acc_put(acc *a, char c)
{
	if (a->n + 1 < sizeof a->s)
		a->s[a->n++] = c;
	else
		a->overflow = 1;
}

static int emit(acc *a, int (*fn)(void *, const char *), void *ctx, int *count)
{
	a->s[a->n] = '\0';
	int r = 0;
	if (a->n > 0 && !a->overflow) {
		(*count)++;
		r = fn(ctx, a->s);
	}
	a->n = 0;
	a->overflow = 0;
	return r;
}

int ms_hdr_parse_list(const char *b, size_t len, int (*fn)(void *ctx, const char *addr),
                      void *ctx)
{
	acc plain = { .n = 0 }, angle = { .n = 0 };
	int in_angle = 0, have_angle = 0, count = 0;
	/* Words apart outside <>, with no <address> to follow them ("a@x.test
	 * b@y.test", "Name a@x.test"), are no address: run together they
	 * would be a wrong one. */
	int gap = 0, words = 0;
	for (size_t i = 0; i < len; i++) {
		char c = b[i];
		acc *cur = in_angle ? &angle : &plain;
		if (!in_angle && gap && c != ' ' && c != '\t' && c != '\r' && c != '\n' &&
		    c != '(' && c != '<' && c != ',' && c != ';' && c != ':') {
			words = 1;
			gap = 0;
		}
		if (c == '(') { /* comment, nested, with quoted-pairs */
			int depth = 1;
			while (++i < len && depth > 0) {
				if (b[i] == '\\')
					i++;
				else if (b[i] == '(')
					depth++;
				else if (b[i] == ')')
					depth--;
			}
			i--;
			continue;
		}
		if (c == '"') { /* quoted string: kept with its quotes */
			acc_put(cur, c);
			while (++i < len && b[i] != '"') {
				if (b[i] == '\\' && i + 1 < len)
					acc_put(cur, b[i++]);
				if (b[i] != '\r' && b[i] != '\n')
					acc_put(cur, b[i]);
			}
			acc_put(cur, '"');
			continue;
		}
		if (c == '[') { /* domain literal */
			while (i < len && b[i] != ']') {
				acc_put(cur, b[i]);
				i++;
			}
			if (i < len)
				acc_put(cur, ']');
			continue;
		}
		if (c == ' ' || c == '\t' || c == '\r' || c == '\n') {
			gap = !in_angle && plain.n > 0;
			continue;
		}
		if (c == '<' && !in_angle) {
			in_angle = 1;
			angle.n = 0;
			continue;
		}
		if (c == '>' && in_angle) {
			in_angle = 0;
			have_angle = 1;
			continue;
		}
		if (c == ':' && in_angle) {
			angle.n = 0; /* obsolete route "@a,@b:" before the address */
			continue;
		}
		if (c == ':' && !in_angle) {
			plain.n = 0; /* group name */
			gap = words = 0;
			continue;
		}
		if ((c == ',' || c == ';') && !in_angle) {
			if (words && !have_angle)
				return MS_HDR_MALFORMED;
			int r = have_angle ? emit(&angle, fn, ctx, &count) : emit(&plain, fn, ctx, &count);
			plain.n = 0;
			have_angle = gap = words = 0;
			if (r)
				return -1;
			continue;
		}
		acc_put(cur, c);
	}
	if (in_angle || (words && !have_angle))
		return MS_HDR_MALFORMED; /* "Name <a@x.test" without its ">" */
	int r = have_angle ? emit(&angle, fn, ctx, &count) : emit(&plain, fn, ctx, &count);
	return r ? -1 : count;
}

int ms_hdr_addresses(const char *hdr, size_t len, const char *name,
                     int (*fn)(void *ctx, const char *addr), void *ctx)
{
	int total = 0;
	size_t i = 0;
	while (i < len) {
		size_t fl = field_len(hdr + i, len - i);
		if (name_is(hdr + i, fl, name)) {
			size_t n = strlen(name) + 1;
			int r = ms_hdr_parse_list(hdr + i + n, fl - n, fn, ctx);
			if (r < 0)
				return r;
			total += r;
		}
		i += fl;
	}
	return total;
}

size_t ms_hdr_remove(char *hdr, size_t len, const char *name)
{
	size_t i = 0;
	while (i < len) {
		size_t fl = field_len(hdr + i, len - i);
		if (name_is(hdr + i, fl, name)) {
			memmove(hdr + i, hdr + i + fl, len - i - fl);
			len -= fl;
			continue;
		}
		i += fl;
	}
	return len;
}

void ms_hdr_date(int64_t t, char *out, size_t n)
{
	time_t tt = (time_t)t;
	struct tm tm;
	localtime_r(&tt, &tm);
	strftime(out, n, "%a, %d %b %Y %H:%M:%S %z", &tm);
}
