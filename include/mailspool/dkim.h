/*
 * mailspool/dkim.h - DKIM signatures made once, when a message is
 * committed to the queue (RFC 6376; Ed25519 per RFC 8463).
 *
 * The queue's half of a submission (lib/drop.c) calls ms_dkim_sign on the
 * data file it has just written, as the queue's owner: the signing domain
 * is the From: field's (its dkim.DOMAIN entry, or the nearest parent's;
 * the envelope sender's domain when there is no From:), one signature per
 * configured selector.  The result - the DKIM-Signature fields, folded,
 * CRLF-terminated - is stored in the envelope (its P record) and sent in
 * front of the data file by every attempt, so a message is signed once
 * whatever its retries, and what is sent is exactly what was signed.
 *
 * Canonicalisation, hashing and the signature itself are libopendkim's
 * (OpenDKIM's library, with OpenSSL underneath).  It is opened with dlopen
 * at the first signature, not linked: the set-id helper and the light
 * sendmail run for every message and must not pay for loading OpenSSL
 * when nothing is signed (INTERNALS "DKIM signing").
 *
 * Invariants: a key file is used only when it is a regular file of the
 * process's effective user (the queue's owner) that nobody else may read,
 * write or execute (mode 0600 or less); its bytes are wiped from memory
 * once signed.  A signer that is configured but fails refuses the
 * message (temporary), never commits it unsigned.  Nothing here exits,
 * prints or keeps state besides the opened library.
 */
#ifndef MAILSPOOL_DKIM_H
#define MAILSPOOL_DKIM_H

#include <stddef.h>
#include <stdint.h>
#include "mailspool/buf.h"
#include "mailspool/conf.h"
#include "mailspool/error.h"

#define MS_DKIM_KEY_MAX 16384

/* Sign the message in fd[0..size) - CRLF lines, header block first - for
 * the From: domain (else the domain of `sender`).  On MS_OK *prefix is
 * the DKIM-Signature fields (malloc'd, "DKIM-Signature: ...\r\n" each) or
 * NULL when no dkim entry covers the domain.  MS_ERR_TEMP: a configured
 * key is unusable or the library failed (the text says which). */
ms_status ms_dkim_sign(const ms_conf *c, int fd, uint64_t size, const char *sender,
                       char **prefix, ms_error *err);

/* Check every dkim entry: each key file readable as above and usable for
 * its algorithm (a test signature is made).  For the daemon's start and
 * `mailspool check-config`. */
ms_status ms_dkim_check(const ms_conf *c, ms_error *err);

/* Read a key file with the checks above into buf (NUL-terminated, at most
 * MS_DKIM_KEY_MAX bytes); the caller wipes it. */
ms_status ms_dkim_read_key(const char *path, char *buf, size_t cap, ms_error *err);

/* `mailspool dkim-keygen`: a new key (rsa-sha256 of `bits`, or
 * ed25519-sha256) written to path (created 0600 and given to uid/gid
 * unless they are -1, never over an existing file) and the TXT record that publishes it appended to txt as
 * "SELECTOR._domainkey.DOMAIN. IN TXT ( "v=DKIM1; k=...; p=..." )".
 * (lib/dkimkey.c: OpenSSL, so that the helper does not link it.) */
ms_status ms_dkim_keygen(ms_dkim_alg alg, unsigned bits, const char *path, long uid, long gid,
                         const char *domain, const char *selector, ms_buf *txt, ms_error *err);

/* The TXT record for an existing key file (same form). */
ms_status ms_dkim_txt_record(const char *path, const char *domain, const char *selector,
                             ms_buf *txt, ms_error *err);

#endif
