/*
 * netstring.c - strict netstrings (see mailspool/netstring.h).
 */
#include "mailspool/netstring.h"

#include <string.h>

ms_ns_result ms_ns_parse(const char *p, size_t n, size_t cap, const char **payload,
                         size_t *len, size_t *used, ms_error *err)
{
	uint64_t v = 0;
	size_t i = 0;
	for (; i < n && p[i] >= '0' && p[i] <= '9'; i++) {
		/* "Extra zeros at the front of [len] are prohibited": a 0 is
		 * only allowed as the whole length. */
		if (i == 1 && p[0] == '0') {
			ms_error_set(err, MS_ERR_PROTOCOL, "netstring length has a leading zero");
			return MS_NS_BAD;
		}
		if (v > (UINT64_MAX - 9) / 10) {
			ms_error_set(err, MS_ERR_PROTOCOL, "netstring length too large");
			return MS_NS_BAD;
		}
		v = v * 10 + (uint64_t)(p[i] - '0');
		/* Checked digit by digit, so an endless run of digits is
		 * refused before it can overflow or be waited for. */
		if (v > cap) {
			ms_error_set(err, MS_ERR_PROTOCOL, "netstring length over the limit of %zu bytes",
			             cap);
			return MS_NS_BAD;
		}
	}
	if (i == n)
		return MS_NS_MORE;
	if (i == 0) {
		ms_error_set(err, MS_ERR_PROTOCOL, "netstring does not start with a length");
		return MS_NS_BAD;
	}
	if (p[i] != ':') {
		ms_error_set(err, MS_ERR_PROTOCOL, "netstring length not followed by ':'");
		return MS_NS_BAD;
	}
	size_t start = i + 1;
	if (n - start < v + 1)
		return MS_NS_MORE;
	if (p[start + v] != ',') {
		ms_error_set(err, MS_ERR_PROTOCOL, "netstring not terminated by ','");
		return MS_NS_BAD;
	}
	*payload = p + start;
	*len = (size_t)v;
	*used = start + (size_t)v + 1;
	return MS_NS_OK;
}

size_t ms_ns_prefix(char out[MS_NS_PREFIX_MAX], uint64_t len)
{
	char tmp[MS_NS_PREFIX_MAX];
	size_t k = 0;
	do {
		tmp[k++] = (char)('0' + len % 10);
		len /= 10;
	} while (len);
	for (size_t i = 0; i < k; i++)
		out[i] = tmp[k - 1 - i];
	out[k] = ':';
	return k + 1;
}

uint64_t ms_ns_size(uint64_t len)
{
	char tmp[MS_NS_PREFIX_MAX];
	return ms_ns_prefix(tmp, len) + len + 1;
}

ms_status ms_ns_append(ms_buf *b, const void *p, size_t n)
{
	char pre[MS_NS_PREFIX_MAX];
	size_t k = ms_ns_prefix(pre, n);
	ms_status st = ms_buf_append(b, pre, k);
	if (st == MS_OK)
		st = ms_buf_append(b, p, n);
	if (st == MS_OK)
		st = ms_buf_append(b, ",", 1);
	return st;
}
