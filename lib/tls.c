/*
 * tls.c - TLS for a connection, with OpenSSL (see mailspool/tls.h).
 */
#include "mailspool/tls.h"

#include <arpa/inet.h>
#include <errno.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct tls_conn {
	SSL_CTX *ctx;
	SSL *ssl;
} tls_conn;

/* The transport: OpenSSL's answers in read(2)/write(2) terms. */
static ssize_t map_io(SSL *ssl, int r)
{
	if (r > 0)
		return r;
	switch (SSL_get_error(ssl, r)) {
	case SSL_ERROR_WANT_READ:
	case SSL_ERROR_WANT_WRITE:
		errno = EAGAIN;
		return -1;
	case SSL_ERROR_ZERO_RETURN:
		return 0; /* close_notify */
	case SSL_ERROR_SYSCALL:
		if (errno == 0 || errno == EPIPE || errno == ECONNRESET) {
			if (errno == 0)
				return 0; /* EOF without close_notify */
			return -1;
		}
		return -1;
	default:
		ERR_clear_error();
		errno = EPROTO;
		return -1;
	}
}

static ssize_t tls_read(void *ctx, void *buf, size_t n)
{
	tls_conn *c = ctx;
	ERR_clear_error();
	return map_io(c->ssl, SSL_read(c->ssl, buf, n > INT32_MAX ? INT32_MAX : (int)n));
}

static ssize_t tls_write(void *ctx, const void *buf, size_t n)
{
	tls_conn *c = ctx;
	ERR_clear_error();
	return map_io(c->ssl, SSL_write(c->ssl, buf, n > INT32_MAX ? INT32_MAX : (int)n));
}

static size_t tls_pending(void *ctx)
{
	tls_conn *c = ctx;
	return (size_t)SSL_pending(c->ssl);
}

static void tls_close(void *ctx)
{
	tls_conn *c = ctx;
	SSL_shutdown(c->ssl); /* one try: a close_notify if the socket takes it */
	SSL_free(c->ssl);
	SSL_CTX_free(c->ctx);
	free(c);
}

static void ssl_error(char *out, size_t n)
{
	unsigned long e = ERR_get_error();
	if (e)
		ERR_error_string_n(e, out, n);
	else
		snprintf(out, n, "%s", errno ? strerror(errno) : "connection closed");
	ERR_clear_error();
}

static int is_ip(const char *name)
{
	unsigned char buf[16];
	return inet_pton(AF_INET, name, buf) == 1 || inet_pton(AF_INET6, name, buf) == 1;
}

static void x509_name(X509_NAME *nm, char *out, size_t n)
{
	out[0] = '\0';
	if (!nm)
		return;
	BIO *b = BIO_new(BIO_s_mem());
	if (!b)
		return;
	X509_NAME_print_ex(b, nm, 0, XN_FLAG_RFC2253);
	int k = BIO_read(b, out, (int)n - 1);
	out[k > 0 ? k : 0] = '\0';
	BIO_free(b);
}

ms_status ms_tls_handshake(ms_io *io, ms_tls_policy policy, const char *name,
                           const char *ca_file, const ms_tlsa_set *tlsa, int observe,
                           int64_t deadline, ms_tls_info *info, ms_error *err)
{
	memset(info, 0, sizeof *info);
	if (ms_buf_avail(&io->in) > 0)
		return ms_error_set(err, MS_ERR_PROTOCOL,
		                    "bytes arrived before the TLS handshake (response injection)");
	tls_conn *c = calloc(1, sizeof *c);
	char why[256];
	if (!c || !(c->ctx = SSL_CTX_new(TLS_client_method()))) {
		free(c);
		return ms_error_set(err, MS_ERR_NOMEM, "cannot create a TLS context");
	}
	SSL_CTX_set_min_proto_version(c->ctx, TLS1_2_VERSION);
	SSL_CTX_set_mode(c->ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
	SSL_CTX_set_options(c->ctx, SSL_OP_IGNORE_UNEXPECTED_EOF);
	int dane = policy == MS_TLS_DANE;
	int verify = policy == MS_TLS_VERIFY || dane;
	/* Checked as verify would, not enforced (MTA-STS testing). */
	int check = verify || (observe && name && *name);
	if (verify && (!name || !*name)) {
		tls_close(c);
		return ms_error_set(err, MS_ERR_USAGE,
		                    "TLS verify needs the server's name to check the certificate against");
	}
	if (dane && (!tlsa || !tlsa->n)) {
		tls_close(c);
		return ms_error_set(err, MS_ERR_USAGE, "TLS dane needs TLSA records");
	}
	if (dane) {
		/* The TLSA records are the only trust anchors (RFC 7672 3): no CA
		 * store; a chain that matches none fails the handshake. */
		if (SSL_CTX_dane_enable(c->ctx) <= 0) {
			ssl_error(why, sizeof why);
			tls_close(c);
			return ms_error_set(err, MS_ERR_USAGE, "cannot enable DANE: %s", why);
		}
		SSL_CTX_set_verify(c->ctx, SSL_VERIFY_PEER, NULL);
	} else if (check) {
		int ok = ca_file && *ca_file ? SSL_CTX_load_verify_locations(c->ctx, ca_file, NULL)
		                             : SSL_CTX_set_default_verify_paths(c->ctx);
		if (!ok) {
			ssl_error(why, sizeof why);
			tls_close(c);
			return ms_error_set(err, MS_ERR_USAGE, "cannot load CA certificates%s%s: %s",
			                    ca_file ? " from " : "", ca_file ? ca_file : "", why);
		}
		SSL_CTX_set_verify(c->ctx, verify ? SSL_VERIFY_PEER : SSL_VERIFY_NONE, NULL);
	} else {
		SSL_CTX_set_verify(c->ctx, SSL_VERIFY_NONE, NULL);
	}
	if (!(c->ssl = SSL_new(c->ctx)) || !SSL_set_fd(c->ssl, io->fd)) {
		tls_close(c);
		return ms_error_set(err, MS_ERR_NOMEM, "cannot create a TLS session");
	}
	if (dane) {
		/* The MX host name is the reference identifier (and SNI) for
		 * DANE-TA(2); DANE-EE(3) checks no name (RFC 7672 3.1.1). */
		SSL_set_tlsext_host_name(c->ssl, tlsa->base);
		size_t usable = 0;
		if (SSL_dane_enable(c->ssl, tlsa->base) <= 0) {
			ssl_error(why, sizeof why);
			tls_close(c);
			return ms_error_set(err, MS_ERR_USAGE, "cannot enable DANE: %s", why);
		}
		SSL_dane_set_flags(c->ssl, DANE_FLAG_NO_DANE_EE_NAMECHECKS);
		for (size_t i = 0; i < tlsa->n; i++)
			if (SSL_dane_tlsa_add(c->ssl, tlsa->r[i].usage, tlsa->r[i].selector,
			                      tlsa->r[i].mtype, tlsa->r[i].data, tlsa->r[i].len) > 0)
				usable++;
		if (!usable) {
			tls_close(c);
			return ms_error_set(err, MS_ERR_USAGE, "no TLSA record of %s is usable",
			                    tlsa->base);
		}
	} else if (name && *name) {
		if (!is_ip(name))
			SSL_set_tlsext_host_name(c->ssl, name); /* SNI: names only */
		if (check) {
			X509_VERIFY_PARAM *vp = SSL_get0_param(c->ssl);
			X509_VERIFY_PARAM_set_hostflags(vp, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
			int ok = is_ip(name) ? X509_VERIFY_PARAM_set1_ip_asc(vp, name)
			                     : X509_VERIFY_PARAM_set1_host(vp, name, 0);
			if (!ok) {
				tls_close(c);
				return ms_error_set(err, MS_ERR_USAGE, "cannot check the name \"%.100s\"", name);
			}
		}
	}
	for (;;) {
		ERR_clear_error();
		int r = SSL_connect(c->ssl);
		if (r == 1)
			break;
		int e = SSL_get_error(c->ssl, r);
		if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) {
			long vr = SSL_get_verify_result(c->ssl);
			if (dane && vr != X509_V_OK)
				snprintf(why, sizeof why,
				         "the certificate matches no TLSA record of %.200s (DANE): %s",
				         tlsa->base, X509_verify_cert_error_string(vr));
			else if (verify && vr != X509_V_OK)
				snprintf(why, sizeof why, "certificate not trusted: %s",
				         X509_verify_cert_error_string(vr));
			else
				ssl_error(why, sizeof why);
			tls_close(c);
			return ms_error_set(err, MS_ERR_TEMP, "TLS handshake failed: %s", why);
		}
		struct pollfd pfd = { .fd = io->fd, .events = e == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT };
		int64_t left = deadline - ms_now_ms();
		if (left <= 0) {
			tls_close(c);
			return ms_error_set(err, MS_ERR_TIMEOUT, "TLS handshake timed out");
		}
		if (poll(&pfd, 1, left > 60000 ? 60000 : (int)left) < 0 && errno != EINTR) {
			tls_close(c);
			return ms_error_set(err, MS_ERR_IO, "poll failed: %s", strerror(errno));
		}
	}
	snprintf(info->protocol, sizeof info->protocol, "%s", SSL_get_version(c->ssl));
	snprintf(info->cipher, sizeof info->cipher, "%s", SSL_get_cipher_name(c->ssl));
	X509 *peer = SSL_get1_peer_certificate(c->ssl);
	if (peer) {
		x509_name(X509_get_subject_name(peer), info->peer_subject, sizeof info->peer_subject);
		x509_name(X509_get_issuer_name(peer), info->peer_issuer, sizeof info->peer_issuer);
		X509_free(peer);
	}
	long vr = SSL_get_verify_result(c->ssl);
	info->verified = check && vr == X509_V_OK;
	info->dane = dane && info->verified && SSL_get0_dane_authority(c->ssl, NULL, NULL) >= 0;
	if (dane && !info->dane) {
		/* (SSL_VERIFY_PEER makes a mismatch fail above; this is the
		 * belt to those braces.) */
		tls_close(c);
		return ms_error_set(err, MS_ERR_TEMP, "TLS handshake failed: no TLSA record of %s "
		                                      "matched", tlsa->base);
	}
	snprintf(info->verify_error, sizeof info->verify_error, "%s",
	         !check              ? "not checked (policy)"
	         : info->verified    ? ""
	                             : X509_verify_cert_error_string(vr));
	/* From here on every byte goes through TLS. */
	io->tr.read = tls_read;
	io->tr.write = tls_write;
	io->tr.pending = tls_pending;
	io->tr.close = tls_close;
	io->tr.ctx = c;
	return MS_OK;
}
