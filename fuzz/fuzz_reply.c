/* fuzz_reply - the SMTP reply reader on arbitrary input, fed in two splits.
 * Invariants: no crash; a reply that comes out has a code 200..599 and an
 * enhanced code that agrees with its class. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mailspool/reply.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void feed(const uint8_t *data, size_t size, size_t split)
{
	ms_reply_reader rr;
	ms_buf in;
	ms_error err;
	ms_reply_reader_init(&rr);
	ms_buf_init(&in, 0);
	for (size_t off = 0; off < size;) {
		size_t n = split && split < size - off ? split : size - off;
		ms_buf_append(&in, data + off, n);
		off += n;
		for (;;) {
			ms_reply r;
			int done = 0;
			if (ms_reply_read(&rr, &in, &r, &done, &err) != MS_OK)
				goto out;
			if (!done)
				break;
			if (r.code < 200 || r.code > 599)
				abort();
			if (r.enh[0] && r.enh[0] - '0' != r.code / 100)
				abort();
			ms_reply_free(&r);
		}
	}
out:
	ms_reply_reader_free(&rr);
	ms_buf_free(&in);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	feed(data, size, 0);
	feed(data, size, 1 + (size % 7));
	return 0;
}
