/*
 * mailspool/sasl.h - SASL mechanisms for SMTP AUTH, client side.
 *
 * RFC 4954 (SMTP AUTH), RFC 4616 (PLAIN), draft-murchison-sasl-login
 * (LOGIN), RFC 5802 and RFC 7677 (SCRAM-SHA-256), Google's XOAUTH2.
 * PROTOCOL-RULES R37, H11.
 *
 * A mechanism is a small state machine: an optional initial response, then
 * one response per 334 challenge.  Challenges and responses are base64 as
 * on the wire.  SCRAM checks the server's signature, so a server that does
 * not know the password cannot pass as one that does.
 *
 * Invariants: challenges are decoded strictly (a bad one is an error the
 * caller answers with "*", RFC 4954 4); secrets are wiped from memory when
 * the mechanism is freed; nothing here does I/O.
 */
#ifndef MAILSPOOL_SASL_H
#define MAILSPOOL_SASL_H

#include <stddef.h>
#include "mailspool/error.h"

typedef struct ms_sasl ms_sasl;

/* Mechanisms we speak, strongest first (XOAUTH2 only when a token is
 * configured: it is a different kind of secret). */
#define MS_SASL_DEFAULT_MECHS "SCRAM-SHA-256 PLAIN LOGIN"

/* The first mechanism of `allowed` (space separated, in our order of
 * preference) that the server `offered`; NULL if none. */
const char *ms_sasl_choose(const char *offered, const char *allowed);

ms_sasl *ms_sasl_new(const char *mech, const char *user, const char *secret, ms_error *err);
void ms_sasl_free(ms_sasl *s);
const char *ms_sasl_mech(const ms_sasl *s);
/* Tests only: the client nonce SCRAM would otherwise draw at random. */
void ms_sasl_set_nonce(ms_sasl *s, const char *nonce);

/* The initial response for "AUTH MECH <resp>", base64 ("=" for an empty
 * one), or *resp = NULL when the mechanism waits for a challenge.  The
 * caller frees *resp. */
ms_status ms_sasl_initial(ms_sasl *s, char **resp, ms_error *err);
/* Answer a 334 challenge (its text).  MS_ERR_PROTOCOL: the challenge is not
 * valid base64 or not what the mechanism expects (answer "*"). */
ms_status ms_sasl_step(ms_sasl *s, const char *challenge, char **resp, ms_error *err);
/* The server said 235 (with `text`): is that consistent with what it
 * proved?  SCRAM requires the server signature to have been checked. */
ms_status ms_sasl_finish(ms_sasl *s, const char *text, ms_error *err);

/* Strict base64 (RFC 4648, padded).  Decode returns -1 on bad input. */
char *ms_b64_encode(const void *p, size_t n);
long ms_b64_decode(const char *s, unsigned char *out, size_t cap);

#endif
