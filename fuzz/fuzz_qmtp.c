/* fuzz_qmtp - QMTP reply netstrings on arbitrary input, as the engine reads
 * them: netstrings parsed one after another (capped at MS_QMTP_REPLY_MAX),
 * each payload mapped to K/Z/D.
 * Invariants: no crash; the parser's answer for the whole input agrees with
 * its answer for every prefix (MORE until the deciding byte, and never OK
 * for a prefix where the whole says BAD); a parsed netstring lies inside the
 * input and ends in ','; a mapped reply has a state matching its status
 * byte, an enhanced code of the matching class, and no control bytes in its
 * text. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mailspool/netstring.h"
#include "mailspool/qmtp.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_reply(const char *p, size_t n)
{
	ms_qmtp_reply r;
	if (ms_qmtp_parse_reply(p, n, &r, NULL) != MS_OK)
		return;
	char want = r.status == 'K' ? '2' : r.status == 'Z' ? '4' : '5';
	ms_rcpt_state st = r.status == 'K'   ? MS_RCPT_DELIVERED
	                   : r.status == 'Z' ? MS_RCPT_DEFERRED
	                                     : MS_RCPT_FAILED;
	if (r.state != st || (r.enh[0] && r.enh[0] != want))
		abort();
	for (const char *t = r.text; *t; t++)
		if ((unsigned char)*t < 0x20 || *t == 0x7f)
			abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *in = (const char *)data;
	size_t off = 0;
	while (off < size) {
		const char *pl;
		size_t len, used;
		ms_ns_result r = ms_ns_parse(in + off, size - off, MS_QMTP_REPLY_MAX, &pl, &len, &used,
		                             NULL);
		/* Split independence: a prefix never decides differently. */
		size_t cut = (size - off) / 2;
		const char *pl2;
		size_t len2, used2;
		ms_ns_result r2 = ms_ns_parse(in + off, cut, MS_QMTP_REPLY_MAX, &pl2, &len2, &used2, NULL);
		if (r2 == MS_NS_OK && (r != MS_NS_OK || used2 != used || len2 != len))
			abort();
		if (r2 == MS_NS_BAD && r != MS_NS_BAD)
			abort();
		if (r != MS_NS_OK)
			break;
		if (used > size - off || pl < in + off || pl + len + 1 != in + off + used ||
		    pl[len] != ',' || len > MS_QMTP_REPLY_MAX)
			abort();
		check_reply(pl, len);
		off += used;
	}
	return 0;
}
