/*
 * tls_policy.c - the names of the TLS policies (mailspool/tls.h), apart
 * from the handshake so that the configuration can be read by programs
 * that link no TLS code (the set-id helper).
 */
#include "mailspool/tls.h"

#include <string.h>

const char *ms_tls_policy_name(ms_tls_policy p)
{
	static const char *names[] = { "none", "may", "encrypt", "verify", "dane", "dane",
		                            "dane-only", "mta-sts" };
	return (unsigned)p < sizeof names / sizeof names[0] ? names[p] : "?";
}

int ms_tls_policy_parse(const char *s, ms_tls_policy *p)
{
	/* (MS_TLS_DANE is a session's resolved policy, never configured:
	 * "dane" names the level.) */
	static const ms_tls_policy levels[] = { MS_TLS_NONE, MS_TLS_MAY, MS_TLS_ENCRYPT,
		                                    MS_TLS_VERIFY, MS_TLS_LEVEL_DANE,
		                                    MS_TLS_LEVEL_DANE_ONLY, MS_TLS_LEVEL_MTA_STS };
	for (size_t i = 0; i < sizeof levels / sizeof levels[0]; i++)
		if (!strcmp(s, ms_tls_policy_name(levels[i]))) {
			*p = levels[i];
			return 0;
		}
	return -1;
}

