/*
 * tls_policy.c - the names of the TLS policies (mailspool/tls.h), apart
 * from the handshake so that the configuration can be read by programs
 * that link no TLS code (the set-id helper).
 */
#include "mailspool/tls.h"

#include <string.h>

const char *ms_tls_policy_name(ms_tls_policy p)
{
	static const char *names[] = { "none", "may", "encrypt", "verify" };
	return (unsigned)p < 4 ? names[p] : "?";
}

int ms_tls_policy_parse(const char *s, ms_tls_policy *p)
{
	for (int i = 0; i < 4; i++)
		if (!strcmp(s, ms_tls_policy_name((ms_tls_policy)i))) {
			*p = (ms_tls_policy)i;
			return 0;
		}
	return -1;
}

