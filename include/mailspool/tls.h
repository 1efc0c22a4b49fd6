/*
 * mailspool/tls.h - TLS for a connection, with OpenSSL.
 *
 * RFC 3207 (STARTTLS), RFC 8314 (implicit TLS), RFC 6125 (host name
 * checks).  PROTOCOL-RULES R38-R42.
 *
 * ms_tls_handshake() runs a client handshake on an ms_io's socket (non-
 * blocking, bounded by a deadline) and, on success, swaps the io's
 * transport for one that encrypts: the protocol engines above never know.
 *
 * Policies (per route, as Postfix's smtp_tls_security_level):
 *   none     no TLS
 *   may      TLS when offered; certificate not checked; a failed handshake
 *            falls back to plain text on a new connection
 *   encrypt  TLS required; certificate not checked
 *   verify   TLS required; chain checked against the system CA store (or a
 *            CA file) and the server's name against the certificate
 *   dane     TLS required; the certificate matched against DNSSEC-validated
 *            TLSA records with OpenSSL's DANE support (RFC 7672)
 *
 * Invariants: TLS 1.2 or later; the io's input buffer must be empty when the
 * handshake starts (bytes that arrived before it would be read as if they
 * came inside TLS: response injection, R39) - the caller checks, this
 * refuses too.
 */
#ifndef MAILSPOOL_TLS_H
#define MAILSPOOL_TLS_H

#include <stdint.h>
#include "mailspool/error.h"
#include "mailspool/io.h"

typedef enum ms_tls_policy {
	MS_TLS_NONE = 0,
	MS_TLS_MAY,
	MS_TLS_ENCRYPT,
	MS_TLS_VERIFY,
	/* For a session: TLS required, the certificate authenticated by the
	 * TLSA records given (RFC 7672 3: DANE-EE(3) with no name or date
	 * checks, DANE-TA(2) with the chain and the name checked). */
	MS_TLS_DANE,
	/* Levels of the configuration, resolved per MX host before a session
	 * (lib/deliver.c): "dane" is DANE where DNSSEC-validated TLSA records
	 * exist and `may` elsewhere; "dane-only" defers where there are none. */
	MS_TLS_LEVEL_DANE,
	MS_TLS_LEVEL_DANE_ONLY,
	/* "mta-sts": MTA-STS where published (mailspool/sts.h), `may`
	 * elsewhere; "dane" honours MTA-STS too, after DANE. */
	MS_TLS_LEVEL_MTA_STS
} ms_tls_policy;

/* TLSA records (RFC 6698 2.1) of one server, as the DANE check takes them.
 * Association data over 64 octets (a full certificate, matching type 0)
 * is not kept: such a record counts as unusable. */
#define MS_TLSA_MAX 8
#define MS_TLSA_DATA_MAX 64
typedef struct ms_tlsa {
	unsigned char usage, selector, mtype, len;
	unsigned char data[MS_TLSA_DATA_MAX];
} ms_tlsa;
typedef struct ms_tlsa_set {
	char base[256];   /* the TLSA base domain: the MX host name */
	ms_tlsa r[MS_TLSA_MAX];
	size_t n;         /* usable records (usage 2 or 3, selector 0/1, mtype 0-2) */
	size_t unusable;  /* records seen and not usable */
} ms_tlsa_set;

typedef struct ms_tls_info {
	char protocol[32];     /* "TLSv1.3" */
	char cipher[64];
	char peer_subject[256];
	char peer_issuer[256];
	int verified;          /* chain and name checked and good */
	int dane;              /* authenticated by a TLSA record (verified is set too) */
	char verify_error[128];
} ms_tls_info;

/*
 * Handshake on io's socket.  `name` is the server's name to check (a DNS
 * name or an IP address; with `verify`); `ca_file` replaces the system CA
 * store when set.  MS_ERR_TEMP with a sentence on any failure, including a
 * certificate that does not verify.  observe (with `may` or `encrypt`):
 * the chain and name are checked as `verify` would and the result is
 * recorded in info (verified, verify_error), never enforced - MTA-STS's
 * testing mode.
 */
ms_status ms_tls_handshake(ms_io *io, ms_tls_policy policy, const char *name,
                           const char *ca_file, const ms_tlsa_set *tlsa, int observe,
                           int64_t deadline, ms_tls_info *info, ms_error *err);

const char *ms_tls_policy_name(ms_tls_policy p);
/* "none", "may", "encrypt", "verify", "dane", "dane-only", "mta-sts" ->
 * policy (the last three as configuration levels); -1 if unknown. */
int ms_tls_policy_parse(const char *s, ms_tls_policy *p);

#endif
