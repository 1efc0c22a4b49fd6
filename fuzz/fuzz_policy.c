/* fuzz_policy - what comes from DNS and HTTPS for the TLS policies, on
 * arbitrary input: an MTA-STS policy file (RFC 8461 3.2) and a TLSA
 * answer (RFC 6698, as the DANE lookup reads it).  Invariants: no crash,
 * no read past the input; a parsed policy has a mode, a max_age within a
 * year and NUL-terminated mx patterns; TLSA records kept are usable ones
 * with their length within bounds. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mailspool/dns.h"
#include "mailspool/sts.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* The exact bytes, in a buffer of their own, so that any read past
	 * the end is the sanitizer's to see. */
	char *copy = malloc(size ? size : 1);
	if (!copy)
		return 0;
	memcpy(copy, data, size);
	ms_sts_policy p;
	char why[64];
	if (ms_sts_parse(copy, size, &p, why, sizeof why) == 0) {
		if (p.max_age < 0 || p.max_age > MS_STS_MAX_AGE || p.nmx > MS_STS_MX_MAX)
			abort();
		for (size_t i = 0; i < p.nmx; i++)
			if (!memchr(p.mx[i], '\0', sizeof p.mx[i]))
				abort();
		(void)ms_sts_mx_ok(&p, "mx1.example.com");
	}
	ms_tlsa_set set;
	if (size <= 65535 && ms_dns_parse_tlsa((const unsigned char *)copy, (int)size, &set) == 0) {
		if (set.n > MS_TLSA_MAX)
			abort();
		for (size_t i = 0; i < set.n; i++)
			if (set.r[i].len > MS_TLSA_DATA_MAX || (set.r[i].usage != 2 && set.r[i].usage != 3))
				abort();
	}
	free(copy);
	return 0;
}
