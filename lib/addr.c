/*
 * addr.c - envelope address checks and quoting (see mailspool/addr.h).
 *
 * Why refuse early: an address is copied into a command line; a CR or LF in
 * it would end that line and start another command of the attacker's choice
 * (PROTOCOL-RULES I5).  Every check happens before any byte reaches the wire.
 */
#include "mailspool/addr.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

static int is_atext(unsigned char c)
{
	if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
		return 1;
	return c >= 0x80 || strchr("!#$%&'*+-/=?^_`{|}~", c) != NULL;
}

/* Well-formed UTF-8 (no overlongs, no surrogates); 1 if all ASCII or valid. */
static int utf8_ok(const unsigned char *s, size_t n, int *nonascii)
{
	size_t i = 0;
	while (i < n) {
		unsigned c = s[i];
		if (c < 0x80) {
			i++;
			continue;
		}
		*nonascii = 1;
		size_t k;
		unsigned min;
		if (c >= 0xc2 && c <= 0xdf) { k = 1; min = 0x80; }
		else if (c >= 0xe0 && c <= 0xef) { k = 2; min = 0x800; }
		else if (c >= 0xf0 && c <= 0xf4) { k = 3; min = 0x10000; }
		else return 0;
		unsigned cp = c & (0x3f >> k);
		for (size_t j = 1; j <= k; j++) {
			if (i + j >= n || (s[i + j] & 0xc0) != 0x80)
				return 0;
			cp = (cp << 6) | (s[i + j] & 0x3f);
		}
		if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
			return 0;
		i += k + 1;
	}
	return 1;
}

int ms_addr_domain_ok(const char *d, size_t len, unsigned *flags)
{
	if (len == 0 || len > MS_ADDR_DOMAIN_MAX)
		return 0;
	if (d[0] == '[') {
		/* Address literal (4.1.3): [IPv4] or [IPv6:addr]. */
		char tmp[64];
		if (d[len - 1] != ']' || len - 2 >= sizeof tmp)
			return 0;
		memcpy(tmp, d + 1, len - 2);
		tmp[len - 2] = '\0';
		unsigned char bin[16];
		if (strncasecmp(tmp, "IPv6:", 5) == 0)
			return inet_pton(AF_INET6, tmp + 5, bin) == 1;
		return inet_pton(AF_INET, tmp, bin) == 1;
	}
	int nonascii = 0;
	if (!utf8_ok((const unsigned char *)d, len, &nonascii))
		return 0;
	size_t label = 0;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)d[i];
		if (c == '.') {
			if (label == 0 || d[i - 1] == '-')
				return 0;
			label = 0;
			continue;
		}
		int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		         (c >= '0' && c <= '9') || c >= 0x80 || (c == '-' && label > 0);
		if (!ok || ++label > 63)
			return 0;
	}
	if (label == 0 || d[len - 1] == '-')
		return 0; /* empty last label (trailing dot) or trailing hyphen */
	if (nonascii && flags)
		*flags |= MS_ADDR_UTF8;
	return 1;
}

static int dot_string_ok(const char *s, size_t n)
{
	if (n == 0 || s[0] == '.' || s[n - 1] == '.')
		return 0;
	for (size_t i = 0; i < n; i++) {
		if (s[i] == '.') {
			if (s[i + 1] == '.')
				return 0;
		} else if (!is_atext((unsigned char)s[i])) {
			return 0;
		}
	}
	return 1;
}

/* A quoted-string as given: "..." with qtextSMTP or quoted-pairSMTP. */
static int quoted_string_ok(const char *s, size_t n)
{
	if (n < 2 || s[0] != '"' || s[n - 1] != '"')
		return 0;
	for (size_t i = 1; i < n - 1; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c == '\\') {
			if (++i >= n - 1)
				return 0;
		} else if (c == '"') {
			return 0;
		}
	}
	return 1;
}

int ms_addr_param_ok(const char *s)
{
	if (!*s)
		return 0;
	for (; *s; s++)
		if ((unsigned char)*s <= 0x20 || (unsigned char)*s >= 0x7f)
			return 0;
	return 1;
}

ms_status ms_addr_parse(const char *in, size_t len, ms_addr_role role, char *out,
                        unsigned *flags, ms_error *err)
{
	unsigned fl = 0;
	const char *what = role == MS_ADDR_SENDER ? "sender" : "recipient";
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)in[i];
		if (c < 0x20 || c == 0x7f)
			return ms_error_set(err, MS_ERR_USAGE,
			                    "%s address contains a control character (0x%02x): refused",
			                    what, c);
	}
	/* One pair of angle brackets around the whole address is accepted. */
	if (len >= 2 && in[0] == '<' && in[len - 1] == '>') {
		in++;
		len -= 2;
	}
	if (len == 0) {
		if (role == MS_ADDR_SENDER) {
			out[0] = '\0';
			if (flags)
				*flags = MS_ADDR_NULL;
			return MS_OK;
		}
		return ms_error_set(err, MS_ERR_USAGE, "empty recipient address");
	}
	if (role == MS_ADDR_RECIPIENT && len == 10 && strncasecmp(in, "postmaster", 10) == 0) {
		memcpy(out, in, 10);
		out[10] = '\0';
		if (flags)
			*flags = 0;
		return MS_OK;
	}
	/* Split: a quoted local part ends at its closing quote; otherwise the
	 * domain follows the last '@'. */
	size_t at;
	if (in[0] == '"') {
		size_t i = 1;
		while (i < len && in[i] != '"')
			i += in[i] == '\\' ? 2 : 1;
		if (i >= len || i + 1 >= len || in[i + 1] != '@')
			return ms_error_set(err, MS_ERR_USAGE, "%s address \"%.*s\": bad quoted local part",
			                    what, (int)len, in);
		at = i + 1;
	} else {
		const char *a = NULL;
		size_t ats = 0;
		for (size_t i = 0; i < len; i++)
			if (in[i] == '@')
				a = in + i, ats++;
		if (!a)
			return ms_error_set(err, MS_ERR_USAGE,
			                    "%s address \"%.*s\" has no domain", what, (int)len, in);
		/* "a@@x" is a typo, not the local part "a@": an @ in a local part
		 * must be quoted by whoever means it. */
		if (ats > 1)
			return ms_error_set(err, MS_ERR_USAGE,
			                    "%s address \"%.*s\" has more than one @ (quote a local part "
			                    "that holds one)",
			                    what, (int)len, in);
		at = (size_t)(a - in);
	}
	const char *local = in, *domain = in + at + 1;
	size_t llen = at, dlen = len - at - 1;
	if (llen == 0)
		return ms_error_set(err, MS_ERR_USAGE, "%s address \"%.*s\" has an empty local part",
		                    what, (int)len, in);
	if (!ms_addr_domain_ok(domain, dlen, &fl))
		return ms_error_set(err, MS_ERR_USAGE, "%s address \"%.*s\": invalid domain", what,
		                    (int)len, in);
	int nonascii = 0;
	if (!utf8_ok((const unsigned char *)local, llen, &nonascii))
		return ms_error_set(err, MS_ERR_USAGE, "%s address \"%.*s\": invalid UTF-8", what,
		                    (int)len, in);
	if (nonascii)
		fl |= MS_ADDR_UTF8;

	/* Build the wire form: keep a valid dot-string or quoted-string,
	 * otherwise quote (RFC 5321 4.1.2: Quoted-string with quoted-pairs). */
	char lp[2 * MS_ADDR_LOCAL_MAX + 3];
	size_t lpn = 0;
	if (dot_string_ok(local, llen) || quoted_string_ok(local, llen)) {
		if (llen > MS_ADDR_LOCAL_MAX)
			goto toolong;
		memcpy(lp, local, llen);
		lpn = llen;
	} else {
		lp[lpn++] = '"';
		for (size_t i = 0; i < llen; i++) {
			if (lpn + 3 > sizeof lp)
				goto toolong;
			if (local[i] == '"' || local[i] == '\\')
				lp[lpn++] = '\\';
			lp[lpn++] = local[i];
		}
		lp[lpn++] = '"';
	}
	if (lpn > MS_ADDR_LOCAL_MAX)
		goto toolong;
	if (lpn + 1 + dlen > MS_ADDR_MAX)
		return ms_error_set(err, MS_ERR_USAGE,
		                    "%s address is longer than the %d octets a path may have", what,
		                    MS_ADDR_PATH_MAX);
	memcpy(out, lp, lpn);
	out[lpn] = '@';
	memcpy(out + lpn + 1, domain, dlen);
	out[lpn + 1 + dlen] = '\0';
	if (flags)
		*flags = fl;
	return MS_OK;
toolong:
	return ms_error_set(err, MS_ERR_USAGE, "%s address: local part longer than %d octets",
	                    what, MS_ADDR_LOCAL_MAX);
}

void ms_addr_unquote(const char *wire, char *out)
{
	size_t o = 0;
	if (wire[0] != '"') {
		snprintf(out, MS_ADDR_MAX + 1, "%s", wire);
		return;
	}
	/* Wire forms come from ms_addr_parse: the quoted part is well formed
	 * and closes before the '@'. */
	size_t i = 1;
	for (; wire[i] && wire[i] != '"'; i++) {
		if (wire[i] == '\\' && wire[i + 1])
			i++;
		out[o++] = wire[i];
	}
	if (wire[i] == '"')
		i++;
	snprintf(out + o, MS_ADDR_MAX + 1 - o, "%s", wire + i);
}

void ms_addr_hostname(char *out, size_t n)
{
	int ok = gethostname(out, n) == 0;
	out[n - 1] = '\0'; /* gethostname need not terminate a truncated name */
	if (!ok || !ms_addr_domain_ok(out, strlen(out), NULL))
		snprintf(out, n, "localhost");
}

const char *ms_addr_unquoted_chr(const char *s, int c)
{
	int quoted = 0;
	for (; *s && (quoted || *s != c); s++) {
		if (*s == '\\' && s[1])
			s++;
		else if (*s == '"')
			quoted = !quoted;
	}
	return s;
}
