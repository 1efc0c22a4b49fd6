/*
 * dkimkey.c - DKIM keys: making one and the DNS record that publishes it
 * (RFC 6376 3.6.1, the "v=DKIM1; k=...; p=..." tag list; RFC 8463 3 for
 * ed25519, whose p= is the raw 32-byte public key, where RSA's is the
 * DER SubjectPublicKeyInfo).  OpenSSL does the work; this file is apart
 * from lib/dkim.c so that programs which sign without linking OpenSSL
 * (the set-id helper) do not pull it in.
 */
#include "mailspool/dkim.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mailspool/io.h"

/* The TXT record of key k, appended to txt, in 250-octet strings (a
 * character-string holds at most 255, RFC 1035 3.3). */
static ms_status txt_of(EVP_PKEY *k, const char *domain, const char *selector, ms_buf *txt,
                        ms_error *err)
{
	int ed = EVP_PKEY_is_a(k, "ED25519");
	if (!ed && !EVP_PKEY_is_a(k, "RSA"))
		return ms_error_set(err, MS_ERR_DATA, "a DKIM key is RSA or Ed25519");
	unsigned char raw[8192], *p = raw;
	size_t n = sizeof raw;
	if (ed) {
		if (EVP_PKEY_get_raw_public_key(k, raw, &n) != 1)
			return ms_error_set(err, MS_ERR_DATA, "cannot read the Ed25519 public key");
	} else {
		int len = i2d_PUBKEY(k, NULL);
		if (len <= 0 || (size_t)len > sizeof raw || i2d_PUBKEY(k, &p) != len)
			return ms_error_set(err, MS_ERR_DATA, "cannot encode the RSA public key");
		n = (size_t)len;
	}
	char b64[sizeof raw * 4 / 3 + 8];
	int bl = EVP_EncodeBlock((unsigned char *)b64, raw, (int)n);
	ms_status st = ms_buf_printf(txt, "%s._domainkey.%s. IN TXT ( \"v=DKIM1; k=%s; \"", selector,
	                             domain, ed ? "ed25519" : "rsa");
	for (int i = 0; st == MS_OK && i < bl; i += 250)
		st = ms_buf_printf(txt, " \"%s%.*s\"", i ? "" : "p=", bl - i < 250 ? bl - i : 250,
		                   b64 + i);
	if (st == MS_OK)
		st = ms_buf_appendstr(txt, " )\n");
	return st == MS_OK ? MS_OK : ms_error_set(err, MS_ERR_NOMEM, "out of memory");
}

ms_status ms_dkim_keygen(ms_dkim_alg alg, unsigned bits, const char *path, long uid, long gid,
                         const char *domain, const char *selector, ms_buf *txt, ms_error *err)
{
	if (alg != MS_DKIM_ALG_ED25519_SHA256 && (bits < 1024 || bits > 8192))
		return ms_error_set(err, MS_ERR_USAGE, "RSA keys have 1024 to 8192 bits (2048 is usual)");
	EVP_PKEY *k = alg == MS_DKIM_ALG_ED25519_SHA256 ? EVP_PKEY_Q_keygen(NULL, NULL, "ED25519")
	                                                : EVP_PKEY_Q_keygen(NULL, NULL, "RSA",
	                                                                    (size_t)bits);
	if (!k)
		return ms_error_set(err, MS_ERR_IO, "the key could not be made");
	ms_status st = txt_of(k, domain, selector, txt, err);
	BIO *mem = st == MS_OK ? BIO_new(BIO_s_mem()) : NULL;
	char *pem = NULL;
	long pl = 0;
	if (st == MS_OK && (!mem || PEM_write_bio_PrivateKey(mem, k, NULL, NULL, 0, NULL, NULL) != 1 ||
	                    (pl = BIO_get_mem_data(mem, &pem)) <= 0))
		st = ms_error_set(err, MS_ERR_NOMEM, "cannot encode the key");
	/* Created with no rights for anyone else from its first moment; an
	 * existing file (or a link planted there) is never written through. */
	int fd = -1;
	if (st == MS_OK &&
	    (fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600)) < 0)
		st = ms_error_set(err, errno == EEXIST ? MS_ERR_USAGE : MS_ERR_IO, "cannot create %s: %s",
		                  path, errno == EEXIST ? "it exists (keys are never overwritten)"
		                                        : strerror(errno));
	if (st == MS_OK && ((uid >= 0 && fchown(fd, (uid_t)uid, (gid_t)gid) < 0) ||
	                    ms_write_all(fd, pem, (size_t)pl) < 0 || fsync(fd) < 0))
		st = ms_error_set(err, MS_ERR_IO, "cannot write %s: %s", path, strerror(errno));
	if (fd >= 0 && close(fd) < 0 && st == MS_OK)
		st = ms_error_set(err, MS_ERR_IO, "cannot write %s: %s", path, strerror(errno));
	if (fd >= 0 && st != MS_OK)
		unlink(path);
	if (pem)
		OPENSSL_cleanse(pem, (size_t)pl);
	BIO_free(mem);
	EVP_PKEY_free(k);
	return st;
}

ms_status ms_dkim_txt_record(const char *path, const char *domain, const char *selector,
                             ms_buf *txt, ms_error *err)
{
	BIO *b = BIO_new_file(path, "r");
	if (!b)
		return ms_error_set(err, MS_ERR_IO, "cannot read %s", path);
	EVP_PKEY *k = PEM_read_bio_PrivateKey(b, NULL, NULL, NULL);
	BIO_free(b);
	if (!k)
		return ms_error_set(err, MS_ERR_DATA, "%s holds no PEM private key", path);
	ms_status st = txt_of(k, domain, selector, txt, err);
	EVP_PKEY_free(k);
	return st;
}
