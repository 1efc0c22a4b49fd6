/* fuzz_sasl - SASL challenges from a hostile server: for every mechanism,
 * the input (split at NULs into successive challenges) is fed after the
 * initial response.  Invariants: no crash; every response is valid base64
 * (or "*"-free: the caller sends "*" on error) and bounded; strict base64
 * decoding never writes past its buffer and agrees with re-encoding. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mailspool/sasl.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *in = malloc(size + 1);
	memcpy(in, data, size);
	in[size] = '\0';
	static const char *const mechs[] = { "PLAIN", "LOGIN", "SCRAM-SHA-256", "XOAUTH2" };
	for (size_t m = 0; m < 4; m++) {
		ms_sasl *s = ms_sasl_new(mechs[m], "user", "pencil", NULL);
		ms_sasl_set_nonce(s, "rOprNGfwEbeRWgbNEkqO");
		char *r = NULL;
		if (ms_sasl_initial(s, &r, NULL) == MS_OK)
			free(r);
		for (const char *c = in; c < in + size + 1;) {
			r = NULL;
			if (ms_sasl_step(s, c, &r, NULL) == MS_OK) {
				unsigned char tmp[16384];
				if (!r || (r[0] && ms_b64_decode(r, tmp, sizeof tmp) < 0 && strcmp(r, "=")))
					abort();
			}
			free(r);
			c += strlen(c) + 1;
		}
		ms_sasl_finish(s, in, NULL);
		ms_sasl_free(s);
	}
	unsigned char out[4096];
	long n = ms_b64_decode(in, out, sizeof out);
	if (n > 0) {
		char *back = ms_b64_encode(out, (size_t)n);
		if (strcmp(back, in))
			abort(); /* strict: one spelling */
		free(back);
	}
	free(in);
	return 0;
}
