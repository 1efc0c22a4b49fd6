/*
 * mailspool/addr.h - envelope address syntax (RFC 5321 4.1.2, 4.1.3, 4.5.3.1).
 *
 * Turns what a user typed ("a@b", "<a@b>", "a b@c", "" for the null sender)
 * into the mailbox that goes between the angle brackets of MAIL FROM / RCPT
 * TO, quoting the local part when it is not a dot-string, and refuses
 * anything that could break the command line or exceed a limit.
 *
 * Invariants of every accepted address:
 *  - no byte below 0x20, no DEL, no NUL: CR/LF injection is impossible;
 *  - local part <= 64 octets, domain <= 255, path (with <>) <= 256;
 *  - the domain is a hostname of LDH labels or an address literal
 *    [IPv4] / [IPv6:...];
 *  - non-ASCII (well-formed UTF-8 only) sets MS_ADDR_UTF8: such an address
 *    may be sent only with SMTPUTF8 (RFC 6531).
 */
#ifndef MAILSPOOL_ADDR_H
#define MAILSPOOL_ADDR_H

#include <stddef.h>
#include "mailspool/error.h"

#define MS_ADDR_LOCAL_MAX 64
#define MS_ADDR_DOMAIN_MAX 255
#define MS_ADDR_PATH_MAX 256 /* including "<" and ">" */
#define MS_ADDR_MAX (MS_ADDR_PATH_MAX - 2)

typedef enum ms_addr_role { MS_ADDR_SENDER, MS_ADDR_RECIPIENT } ms_addr_role;

enum { MS_ADDR_UTF8 = 1u << 0, MS_ADDR_NULL = 1u << 1 };

/*
 * Check in[0..len) and write the wire mailbox (without <>) to out, which must
 * hold MS_ADDR_MAX + 1 bytes.  The sender may be empty (null sender, written
 * as ""); a recipient may be "postmaster" without a domain (RFC 5321 4.1.1.3).
 */
ms_status ms_addr_parse(const char *in, size_t len, ms_addr_role role, char *out,
                        unsigned *flags, ms_error *err);

/*
 * The unquoted form of a wire mailbox, as QMTP and qmail carry envelope
 * addresses: a quoted local part loses its quotes and quoted-pairs
 * ("a b"@x becomes a b@x).  out holds MS_ADDR_MAX + 1 bytes; the result is
 * never longer than the wire form.
 */
void ms_addr_unquote(const char *wire, char *out);

/* This host's name when it is a valid domain, else "localhost" (for EHLO,
 * default senders, Message-IDs). */
void ms_addr_hostname(char *out, size_t n);

/* Check a domain or address literal (also used for the EHLO name). */
int ms_addr_domain_ok(const char *d, size_t len, unsigned *flags);

/* The first c in s outside a quoted string (a backslash escapes the next
 * byte), or s's terminating NUL. */
const char *ms_addr_unquoted_chr(const char *s, int c);

/* Check an ESMTP parameter value or other token for the command line:
 * printable ASCII only, no spaces.  */
int ms_addr_param_ok(const char *s);

#endif
