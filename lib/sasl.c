/*
 * sasl.c - SASL mechanisms for SMTP AUTH (see mailspool/sasl.h).
 */
#include "mailspool/sasl.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define SHA_LEN 32
#define MAX_CHALLENGE 12288 /* R37: AUTH lines up to 12288 octets */
#define SCRAM_MAX_ITER 1000000

typedef enum mech { M_PLAIN, M_LOGIN, M_SCRAM, M_XOAUTH2 } mech;

struct ms_sasl {
	mech m;
	char *user, *secret;
	int step;
	/* SCRAM */
	char nonce[64];
	char *client_first_bare;
	unsigned char server_sig[SHA_LEN];
	int server_verified;
	char *xoauth_error; /* the JSON a failing XOAUTH2 server sent */
};

static const char *const names[] = { "PLAIN", "LOGIN", "SCRAM-SHA-256", "XOAUTH2" };

/* ---- base64 ------------------------------------------------------------- */

char *ms_b64_encode(const void *p, size_t n)
{
	char *out = malloc(4 * ((n + 2) / 3) + 1);
	if (out)
		EVP_EncodeBlock((unsigned char *)out, p, (int)n);
	return out;
}

long ms_b64_decode(const char *s, unsigned char *out, size_t cap)
{
	size_t n = strlen(s);
	if (n % 4)
		return -1;
	size_t pad = 0;
	for (size_t i = 0; i < n; i++) {
		char c = s[i];
		int ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
		         c == '+' || c == '/';
		if (c == '=' && i >= n - 2) {
			pad++;
			continue;
		}
		if (!ok || pad)
			return -1;
	}
	if (n / 4 * 3 > cap)
		return -1;
	if (n == 0)
		return 0;
	/* The bits the padding leaves over must be zero: one spelling per
	 * byte string (RFC 4648 3.5). */
	if (pad) {
		static const char alpha[] =
			"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
		long v = (long)(strchr(alpha, s[n - pad - 1]) - alpha);
		if (v & (pad == 1 ? 0x3 : 0xF))
			return -1;
	}
	int k = EVP_DecodeBlock(out, (const unsigned char *)s, (int)n);
	return k < 0 ? -1 : (long)(k - (long)pad);
}

/* ---- helpers ----------------------------------------------------------- */

const char *ms_sasl_choose(const char *offered, const char *allowed)
{
	if (!offered || !allowed)
		return NULL;
	char a[256];
	snprintf(a, sizeof a, "%s", allowed);
	for (char *save, *m = strtok_r(a, " ", &save); m; m = strtok_r(NULL, " ", &save)) {
		const char *p = offered;
		size_t ml = strlen(m);
		while (*p) {
			p += strspn(p, " ");
			size_t l = strcspn(p, " ");
			if (l == ml && !strncasecmp(p, m, l))
				for (size_t i = 0; i < 4; i++)
					if (!strcasecmp(m, names[i]))
						return names[i];
			p += l;
		}
	}
	return NULL;
}

ms_sasl *ms_sasl_new(const char *mechname, const char *user, const char *secret, ms_error *err)
{
	ms_sasl *s = calloc(1, sizeof *s);
	if (!s) {
		ms_error_set(err, MS_ERR_NOMEM, "out of memory");
		return NULL;
	}
	int found = 0;
	for (size_t i = 0; i < 4; i++)
		if (!strcasecmp(mechname, names[i])) {
			s->m = (mech)i;
			found = 1;
		}
	if (!found || !(s->user = strdup(user ? user : "")) || !(s->secret = strdup(secret ? secret : ""))) {
		ms_sasl_free(s);
		ms_error_set(err, found ? MS_ERR_NOMEM : MS_ERR_USAGE, "unknown SASL mechanism %.40s",
		             mechname);
		return NULL;
	}
	unsigned char r[18];
	if (RAND_bytes(r, sizeof r) == 1) {
		char *b = ms_b64_encode(r, sizeof r);
		if (b) {
			snprintf(s->nonce, sizeof s->nonce, "%s", b);
			free(b);
		}
	}
	return s;
}

void ms_sasl_free(ms_sasl *s)
{
	if (!s)
		return;
	if (s->secret) {
		OPENSSL_cleanse(s->secret, strlen(s->secret));
		free(s->secret);
	}
	free(s->user);
	free(s->client_first_bare);
	free(s->xoauth_error);
	OPENSSL_cleanse(s, sizeof *s);
	free(s);
}

const char *ms_sasl_mech(const ms_sasl *s)
{
	return names[s->m];
}

void ms_sasl_set_nonce(ms_sasl *s, const char *nonce)
{
	snprintf(s->nonce, sizeof s->nonce, "%s", nonce);
}

static ms_status b64_out(const void *p, size_t n, char **resp, ms_error *err)
{
	*resp = n ? ms_b64_encode(p, n) : strdup("=");
	if (!*resp)
		return ms_error_set(err, MS_ERR_NOMEM, "out of memory");
	return MS_OK;
}

/* SCRAM "saslname": '=' and ',' escaped (RFC 5802 5.1). */
static void saslname(const char *in, char *out, size_t n)
{
	size_t k = 0;
	for (; *in && k + 4 < n; in++) {
		if (*in == '=')
			k += (size_t)snprintf(out + k, n - k, "=3D");
		else if (*in == ',')
			k += (size_t)snprintf(out + k, n - k, "=2C");
		else
			out[k++] = *in;
	}
	out[k] = '\0';
}

static void hmac(const unsigned char *key, size_t klen, const void *msg, size_t mlen,
                 unsigned char out[SHA_LEN])
{
	unsigned int len = SHA_LEN;
	HMAC(EVP_sha256(), key, (int)klen, msg, mlen, out, &len);
}

/* ---- the mechanisms ---------------------------------------------------- */

ms_status ms_sasl_initial(ms_sasl *s, char **resp, ms_error *err)
{
	*resp = NULL;
	switch (s->m) {
	case M_PLAIN: {
		/* authzid NUL authcid NUL passwd; no authzid. */
		size_t ul = strlen(s->user), pl = strlen(s->secret);
		char *b = malloc(ul + pl + 2);
		if (!b)
			return ms_error_set(err, MS_ERR_NOMEM, "out of memory");
		b[0] = '\0';
		memcpy(b + 1, s->user, ul);
		b[ul + 1] = '\0';
		memcpy(b + ul + 2, s->secret, pl);
		ms_status st = b64_out(b, ul + pl + 2, resp, err);
		OPENSSL_cleanse(b, ul + pl + 2);
		free(b);
		s->step = 1;
		return st;
	}
	case M_LOGIN:
		return MS_OK; /* waits for "Username:" */
	case M_SCRAM: {
		char name[512], bare[700];
		saslname(s->user, name, sizeof name);
		snprintf(bare, sizeof bare, "n=%s,r=%s", name, s->nonce);
		if (!(s->client_first_bare = strdup(bare)))
			return ms_error_set(err, MS_ERR_NOMEM, "out of memory");
		char first[720];
		int n = snprintf(first, sizeof first, "n,,%s", bare);
		s->step = 1;
		return b64_out(first, (size_t)n, resp, err);
	}
	case M_XOAUTH2: {
		size_t n = strlen(s->user) + strlen(s->secret) + 32;
		char *b = malloc(n);
		if (!b)
			return ms_error_set(err, MS_ERR_NOMEM, "out of memory");
		int k = snprintf(b, n, "user=%s\001auth=Bearer %s\001\001", s->user, s->secret);
		ms_status st = b64_out(b, (size_t)k, resp, err);
		OPENSSL_cleanse(b, n);
		free(b);
		s->step = 1;
		return st;
	}
	}
	return MS_OK;
}

/* SCRAM: the server-first message -> client-final (RFC 5802 3). */
static ms_status scram_final(ms_sasl *s, const char *sf, char **resp, ms_error *err)
{
	const char *r = NULL, *salt = NULL, *it = NULL;
	char copy[2048];
	snprintf(copy, sizeof copy, "%s", sf);
	for (char *save, *f = strtok_r(copy, ",", &save); f; f = strtok_r(NULL, ",", &save)) {
		if (!strncmp(f, "r=", 2))
			r = f + 2;
		else if (!strncmp(f, "s=", 2))
			salt = f + 2;
		else if (!strncmp(f, "i=", 2))
			it = f + 2;
		else if (!strncmp(f, "m=", 2))
			return ms_error_set(err, MS_ERR_PROTOCOL, "SCRAM: unsupported mandatory extension");
	}
	size_t nl = strlen(s->nonce);
	if (!r || !salt || !it || strncmp(r, s->nonce, nl) || strlen(r) == nl)
		return ms_error_set(err, MS_ERR_PROTOCOL, "SCRAM: malformed server-first message");
	char *end;
	long iter = strtol(it, &end, 10);
	if (*end || iter < 1 || iter > SCRAM_MAX_ITER)
		return ms_error_set(err, MS_ERR_PROTOCOL, "SCRAM: bad iteration count");
	unsigned char saltb[512];
	long sl = ms_b64_decode(salt, saltb, sizeof saltb);
	if (sl <= 0)
		return ms_error_set(err, MS_ERR_PROTOCOL, "SCRAM: bad salt");
	unsigned char salted[SHA_LEN], ckey[SHA_LEN], skey[SHA_LEN], stored[SHA_LEN], csig[SHA_LEN],
		proof[SHA_LEN];
	/* RFC 7677: the password should be SASLprep'ed; we send it as given
	 * (ASCII passwords are unchanged by SASLprep). */
	if (!PKCS5_PBKDF2_HMAC(s->secret, (int)strlen(s->secret), saltb, (int)sl, (int)iter,
	                       EVP_sha256(), SHA_LEN, salted))
		return ms_error_set(err, MS_ERR_NOMEM, "PBKDF2 failed");
	hmac(salted, SHA_LEN, "Client Key", 10, ckey);
	hmac(salted, SHA_LEN, "Server Key", 10, skey);
	unsigned int sl2 = SHA_LEN;
	EVP_Digest(ckey, SHA_LEN, stored, &sl2, EVP_sha256(), NULL);
	char without_proof[2200], auth[5000];
	snprintf(without_proof, sizeof without_proof, "c=biws,r=%s", r);
	int al = snprintf(auth, sizeof auth, "%s,%s,%s", s->client_first_bare, sf, without_proof);
	hmac(stored, SHA_LEN, auth, (size_t)al, csig);
	for (int i = 0; i < SHA_LEN; i++)
		proof[i] = ckey[i] ^ csig[i];
	hmac(skey, SHA_LEN, auth, (size_t)al, s->server_sig);
	char *p64 = ms_b64_encode(proof, SHA_LEN);
	char final[2300];
	int fl = snprintf(final, sizeof final, "%s,p=%s", without_proof, p64 ? p64 : "");
	free(p64);
	OPENSSL_cleanse(salted, sizeof salted);
	OPENSSL_cleanse(ckey, sizeof ckey);
	OPENSSL_cleanse(skey, sizeof skey);
	s->step = 2;
	return b64_out(final, (size_t)fl, resp, err);
}

static int scram_check_server(ms_sasl *s, const char *text)
{
	if (strncmp(text, "v=", 2))
		return 0;
	unsigned char v[64];
	char sig[128];
	snprintf(sig, sizeof sig, "%.*s", (int)strcspn(text + 2, ","), text + 2);
	return ms_b64_decode(sig, v, sizeof v) == SHA_LEN && !CRYPTO_memcmp(v, s->server_sig, SHA_LEN);
}

ms_status ms_sasl_step(ms_sasl *s, const char *challenge, char **resp, ms_error *err)
{
	*resp = NULL;
	if (strlen(challenge) > MAX_CHALLENGE)
		return ms_error_set(err, MS_ERR_PROTOCOL, "AUTH challenge too long");
	unsigned char *dec = malloc(MAX_CHALLENGE);
	if (!dec)
		return ms_error_set(err, MS_ERR_NOMEM, "out of memory");
	long n = ms_b64_decode(challenge, dec, MAX_CHALLENGE - 1);
	if (n < 0) {
		free(dec);
		return ms_error_set(err, MS_ERR_PROTOCOL, "AUTH challenge is not valid base64");
	}
	dec[n] = '\0';
	ms_status st = MS_OK;
	switch (s->m) {
	case M_PLAIN:
		/* The initial response went with AUTH; an empty challenge asks
		 * for it again (servers that do not take initial responses). */
		if (n == 0) {
			s->step = 0;
			st = ms_sasl_initial(s, resp, err);
		} else {
			st = ms_error_set(err, MS_ERR_PROTOCOL, "unexpected PLAIN challenge");
		}
		break;
	case M_LOGIN:
		/* "Username:" then "Password:" (servers word them variously). */
		if (s->step == 0)
			st = b64_out(s->user, strlen(s->user), resp, err);
		else if (s->step == 1)
			st = b64_out(s->secret, strlen(s->secret), resp, err);
		else
			st = ms_error_set(err, MS_ERR_PROTOCOL, "unexpected LOGIN challenge");
		s->step++;
		break;
	case M_SCRAM:
		if (s->step == 1)
			st = scram_final(s, (const char *)dec, resp, err);
		else if (s->step == 2) {
			if (!scram_check_server(s, (const char *)dec)) {
				st = ms_error_set(err, MS_ERR_PROTOCOL,
				                  "SCRAM: the server's signature is wrong (it does not know the "
				                  "password)");
			} else {
				s->server_verified = 1;
				s->step = 3;
				st = b64_out("", 0, resp, err);
				if (st == MS_OK) {
					free(*resp);
					*resp = strdup(""); /* an empty line, RFC 4954 4 */
				}
			}
		} else
			st = ms_error_set(err, MS_ERR_PROTOCOL, "unexpected SCRAM challenge");
		break;
	case M_XOAUTH2:
		/* A JSON error: answer with an empty line, the 535 follows. */
		free(s->xoauth_error);
		s->xoauth_error = strdup((const char *)dec);
		*resp = strdup("");
		break;
	}
	free(dec);
	if (st == MS_OK && !*resp)
		return ms_error_set(err, MS_ERR_NOMEM, "out of memory");
	return st;
}

ms_status ms_sasl_finish(ms_sasl *s, const char *text, ms_error *err)
{
	if (s->m != M_SCRAM || s->server_verified)
		return MS_OK;
	/* Some servers put server-final in the 235 itself. */
	unsigned char dec[256];
	char b[256];
	snprintf(b, sizeof b, "%.*s", (int)strcspn(text, " "), text);
	long n = ms_b64_decode(b, dec, sizeof dec - 1);
	if (n > 0) {
		dec[n] = '\0';
		if (scram_check_server(s, (const char *)dec))
			return MS_OK;
	}
	return ms_error_set(err, MS_ERR_PROTOCOL,
	                    "SCRAM: the server accepted without proving it knows the password");
}
