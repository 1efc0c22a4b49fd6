/*
 * mailspool - command-line front end of libmailspool.
 *
 * Thin by design: parse arguments, build messages, call the library, print
 * what it reports and map it to an exit code (sysexits: 0 all delivered,
 * 64 usage, 65 bad message data, 69 permanent failure, 75 temporary).
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <openssl/crypto.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "mailspool/client.h"
#include "mailspool/headers.h"
#include "mailspool/net.h"
#include "mailspool/hmap.h"
#include "mailspool/relay.h"
#include "mailspool/io.h"
#include "mailspool/message.h"
#include "mailspool/smtp.h"
#include "mailspool/transcript.h"
#include "mailspool/version.h"

const char *progname = "mailspool";

static void usage_main(FILE *f)
{
	fprintf(f,
	        "usage: %s COMMAND [OPTIONS]      (mailspool %s)\n"
	        "\n"
	        "Commands:\n"
	        "  send     with --via: send messages to one SMTP or QMTP server over one\n"
	        "           connection; without: put them in the spool (--mode now or\n"
	        "           background: and deliver them at once)\n"
	        "  daemon   deliver the spool: MX routing, retries, bounces\n"
	        "  queue    list the spool (as mailq)\n"
	        "  show     one queued message: envelope, attempts, headers\n"
	        "  hold     keep queued messages from being delivered\n"
	        "  release  undo hold\n"
	        "  delete   remove queued messages\n"
	        "  flush    make queued messages (all, or those named) due now\n"
	        "  stats    the usage log summed by day and purpose\n"
	        "  sweep    repair what a crash left in the spool\n"
	        "  setup    (root) make the queue's owner, the spool and the set-id helper\n"
	        "  dkim-keygen  a DKIM key and the TXT record that publishes it\n"
	        "  tls-report   the TLS-RPT (RFC 8460) report of a day, as JSON\n"
	        "  version  this program's version and the library's (also --version)\n"
	        "\n"
	        "Run as sendmail (or '%s sendmail ...') it takes sendmail's options;\n"
	        "run as mailq it lists the queue.  Every command takes -C FILE for\n"
	        "the configuration (else $MAILSPOOL_CONFIG, else %s).\n"
	        "Run '%s COMMAND --help' for the options of a command.\n",
	        progname, MS_VERSION, progname, MS_CONF_DEFAULT_PATH, progname);
}

static void usage_send(FILE *f)
{
	fprintf(f,
	        "usage: %s send --via URL [OPTIONS] [FILE...]\n"
	        "       %s send [-C FILE] [-f SENDER] [-F NAME] [--to RCPT]... [-t] [--json] [-q]\n"
	        "               [--mode queue|now|background] [FILE...]\n"
	        "                                (no --via: through the spool and its routing)\n"
	        "\n"
	        "Send each FILE (standard input when none) as one message, all over one\n"
	        "connection.  SMTP with PIPELINING sends each message's MAIL, RCPTs and DATA\n"
	        "as one group, and the next message's group rides in the same write as the\n"
	        "previous message's data and final dot: about one round trip per message.\n"
	        "QMTP streams the messages back to back: about one round trip in all.\n"
	        "\n"
	        "Without --via, --mode says what happens to each message: queue (the\n"
	        "default) leaves it to the daemon; now delivers it at once through the\n"
	        "daemon's routing (MX or route.DOMAIN), prints each recipient's result,\n"
	        "queues nothing and exits non-zero on any failure; background delivers at\n"
	        "once and leaves what failed temporarily queued for retry.\n"
	        "\n"
	        "Options:\n"
	        "  --via URL             server: smtp://[USER@]HOST[:PORT] (port 25 by default;\n"
	        "                        IPv6 as smtp://[::1]:2525), smtps://[USER@]HOST[:PORT]\n"
	        "                        (TLS from the first byte, port 465), qmtp://HOST[:PORT]\n"
	        "                        (port 209), or 'relay': the relays the configuration\n"
	        "                        names for the sender, in failover order (-C FILE)\n"
	        "  -f, --from SENDER     envelope sender; -f '' is the null sender <>\n"
	        "                        (default: your login @ this host)\n"
	        "  --to RCPT             envelope recipient; repeat for more\n"
	        "  -t                    also take recipients from To, Cc and Bcc of each\n"
	        "                        message, and remove the Bcc header before sending\n"
	        "  --json                print results as JSON\n"
	        "  --transcript FILE     write the full protocol transcript to FILE\n"
	        "                        (message data summarised by size and SHA-256);\n"
	        "                        JSON when FILE ends in .json, '-' for stderr\n"
	        "  --transcript-bodies   keep message data in full in the transcript\n"
	        "  --timeout SECONDS     cap every reply and write timeout (SMTP defaults\n"
	        "                        follow RFC 5321 4.5.3.2: 5 min per command, 10 min\n"
	        "                        after the final dot; QMTP: 10 min for replies)\n"
	        "  --connect-timeout S   TCP connect timeout (default 30)\n"
	        "  -q, --quiet           print only failures and the summary\n"
	        "  -h, --help            this text\n"
	        "\n"
	        "SMTP only:\n"
	        "  --no-pipelining       lock-step SMTP even if the server offers PIPELINING\n"
	        "  --no-cross-message    wait for each message's final reply before starting\n"
	        "                        the next (two round trips per message)\n"
	        "  --no-chunking         DATA even if the server offers CHUNKING (BDAT)\n"
	        "  --notify LIST         DSN (RFC 3461): never, or success,failure,delay\n"
	        "  --ret full|hdrs       DSN: return the whole message or its headers\n"
	        "  --envid ID            DSN: the envelope id reports give back\n"
	        "  --no-rset-first       no RSET in front of a MAIL written behind the previous\n"
	        "                        message's data\n"
	        "  --bdat-window N       BDAT: messages with their reply outstanding (128)\n"
	        "  --bdat-window-bytes S BDAT: their octets (8M; one message always goes)\n"
	        "  --session-messages N  transactions per connection before a new one (1000)\n"
	        "  --helo NAME           name to give in EHLO/HELO (default: this host)\n"
	        "  -4, -6                connect over IPv4 only, IPv6 only (default: both,\n"
	        "                        raced as RFC 8305's Happy Eyeballs)\n"
	        "  --bind-address A      connect from this address (one IPv4, one IPv6)\n"
	        "  --max-rcpts N         recipients per transaction (default 100)\n"
	        "  --allow-long-lines    send lines longer than 998 octets instead of\n"
	        "                        refusing the message\n"
	        "  --tls POLICY          none, may (STARTTLS when offered; the default),\n"
	        "                        encrypt (required, certificate not checked) or verify\n"
	        "                        (required, chain and name checked; the default with\n"
	        "                        a user or smtps://)\n"
	        "  --tls-ca-file FILE    CA certificates for verify (default: the system's)\n"
	        "  --tls-name NAME       the name the certificate must carry (default: HOST)\n"
	        "  --user NAME           AUTH user (or smtp://NAME@HOST)\n"
	        "  --password-file FILE  AUTH password: the file's first line; refused when\n"
	        "                        group or others may read the file\n"
	        "  --password-eval CMD   AUTH password: the first line CMD prints\n"
	        "  --oauth-token-eval CMD  XOAUTH2 with the token CMD prints\n"
	        "  --auth-mechs LIST     allowed mechanisms, strongest first (default\n"
	        "                        \"SCRAM-SHA-256 PLAIN LOGIN\")\n"
	        "  --auth-plaintext      allow credentials over a connection without TLS\n"
	        "\n"
	        "QMTP only:\n"
	        "  --qmtp-replies MODE   auto (default): find out from the first message with\n"
	        "                        several recipients; recipient: one reply per\n"
	        "                        recipient, as the protocol says; package: one reply\n"
	        "                        per message, as mailfront 2.12 answers (also\n"
	        "                        qmtp://H?replies=package)\n"
	        "  --qmtp-encoding ENC   auto (default: CRLF when the data has CRLF line ends,\n"
	        "                        else LF), crlf or lf: these only declare the data's\n"
	        "                        line ends, the data is not rewritten; to-lf sends\n"
	        "                        CRLF lines as LF lines (for servers that refuse\n"
	        "                        the CRLF encoding, such as mailfront)\n"
	        "  --max-session SECONDS close the connection and open a new one (between\n"
	        "                        messages) after this long (default 3600: a QMTP\n"
	        "                        session should take at most an hour)\n"
	        "\n"
	        "Output: one line per recipient: its state (delivered, deferred, failed), the\n"
	        "stage that decided it (mail, rcpt, data, dot, package, ...), the server's\n"
	        "code, enhanced code and text; then a summary with messages per second and\n"
	        "round trips per message.\n"
	        "\n"
	        "Exit status: 0 every recipient delivered; 75 some temporary failure (try\n"
	        "again later); 69 permanent failures; 65 a message or address was unusable;\n"
	        "64 usage error.  Queued: 0 all queued; 65 an address or message was\n"
	        "refused (nothing of it queued); 75 try again (disk, space, I/O).\n",
	        progname, progname);
}

/* ---- per-run state ------------------------------------------------------ */

typedef struct item {
	const char *name;   /* file name or "-" */
	int fd;
	ms_buf hdr;         /* rewritten header block with -t */
} item;

typedef struct run {
	int json, quiet;
	ms_buf out;         /* JSON results */
	size_t nmsg;
	size_t delivered, deferred, failed, local_failed;
	size_t rcpt_delivered, rcpt_deferred, rcpt_failed;
	int first_json;
} run;

static void print_outcome_human(const char *name, const ms_rcpt *r)
{
	printf("%s: <%s> %s", name, r->addr, ms_rcpt_state_name(r->state));
	if (r->out.stage)
		printf(" (%s)", ms_stage_name(r->out.stage));
	if (r->out.code)
		printf(" %d", r->out.code);
	if (r->out.enh[0])
		printf(" %s", r->out.enh);
	if (r->out.text && r->out.text[0]) {
		const char *t = r->out.text;
		size_t el = strlen(r->out.enh);
		/* The enhanced code was printed already; do not repeat it. */
		if (el && !strncmp(t, r->out.enh, el) && t[el] == ' ')
			t += el + 1;
		putchar(' ');
		/* Server text is arbitrary bytes: print it safely. */
		for (const unsigned char *p = (const unsigned char *)t; *p; p++) {
			if (*p == '\n')
				fputs(" / ", stdout);
			else if (*p < 0x20 || *p >= 0x7f)
				printf("\\x%02x", *p);
			else
				putchar(*p);
		}
	}
	putchar('\n');
}

static void json_outcome(ms_buf *b, const ms_outcome *o)
{
	ms_buf_printf(b, "\"stage\":\"%s\",\"code\":%d,\"enhanced\":", ms_stage_name(o->stage),
	              o->code);
	ms_json_string(b, o->enh, strlen(o->enh));
	ms_buf_appendstr(b, ",\"text\":");
	const char *t = o->text ? o->text : "";
	ms_json_string(b, t, strlen(t));
}

static void on_result(void *ctx, ms_message *m)
{
	run *R = ctx;
	item *it = m->user;
	ms_counts c = ms_message_counts(m);
	R->rcpt_delivered += c.delivered;
	R->rcpt_deferred += c.deferred;
	R->rcpt_failed += c.failed;
	/* A message counts as delivered only when every recipient was; any
	 * deferral makes it deferred (it can be tried again). */
	if (c.deferred)
		R->deferred++;
	else if (c.failed)
		R->failed++;
	else
		R->delivered++;
	if (m->out.stage == MS_STAGE_LOCAL)
		R->local_failed++;
	if (R->json) {
		ms_buf *b = &R->out;
		ms_buf_appendstr(b, R->first_json ? "\n  {" : ",\n  {");
		R->first_json = 0;
		ms_buf_printf(b, "\"index\":%zu,\"file\":", m->id);
		ms_json_string(b, it->name, strlen(it->name));
		ms_buf_appendstr(b, ",\"sender\":");
		ms_json_string(b, m->sender, strlen(m->sender));
		ms_buf_printf(b, ",\"size\":%llu,\"transactions\":%zu,",
		              (unsigned long long)m->stats.size, m->transactions);
		json_outcome(b, &m->out);
		ms_buf_appendstr(b, ",\"recipients\":[");
		for (size_t i = 0; i < m->nrcpts; i++) {
			const ms_rcpt *r = &m->rcpts[i];
			ms_buf_appendstr(b, i ? ",{\"address\":" : "{\"address\":");
			ms_json_string(b, r->addr, strlen(r->addr));
			ms_buf_printf(b, ",\"state\":\"%s\",\"rcpt_code\":%d,\"accepted\":%s,",
			              ms_rcpt_state_name(r->state), r->rcpt_code,
			              r->rcpt_code / 100 == 2 || r->state == MS_RCPT_DELIVERED ? "true"
			                                                                       : "false");
			json_outcome(b, &r->out);
			ms_buf_appendstr(b, "}");
		}
		ms_buf_appendstr(b, "]}");
	} else {
		for (size_t i = 0; i < m->nrcpts; i++)
			if (!R->quiet || m->rcpts[i].state != MS_RCPT_DELIVERED)
				print_outcome_human(it->name, &m->rcpts[i]);
	}
	if (it->fd >= 0)
		close(it->fd);
	ms_buf_free(&it->hdr);
	free(it);
	ms_message_free(m);
}

/* ---- building messages ------------------------------------------------------- */

/* Copy standard input (or any unseekable input) to an unlinked temp file so
 * that it can be scanned and then streamed: never held in memory. */
static int spool_to_tmp(int in, ms_error *err)
{
	const char *dir = getenv("TMPDIR");
	char path[PATH_MAX];
	snprintf(path, sizeof path, "%s/mailspool.XXXXXX", dir && *dir ? dir : "/tmp");
	int fd = mkstemp(path);
	if (fd < 0) {
		ms_error_set(err, MS_ERR_IO, "cannot create temporary file: %s", strerror(errno));
		return -1;
	}
	unlink(path);
	char buf[65536];
	for (;;) {
		ssize_t n = read(in, buf, sizeof buf);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			ms_error_set(err, MS_ERR_IO, "cannot read input: %s", strerror(errno));
			close(fd);
			return -1;
		}
		if (n == 0)
			break;
		for (ssize_t w = 0; w < n;) {
			ssize_t k = write(fd, buf + w, (size_t)(n - w));
			if (k < 0 && errno == EINTR)
				continue;
			if (k < 0) {
				ms_error_set(err, MS_ERR_IO, "cannot write temporary file: %s", strerror(errno));
				close(fd);
				return -1;
			}
			w += k;
		}
	}
	return fd;
}

typedef struct send_opts {
	const char *sender;
	const char **rcpts;
	size_t nrcpts;
	int from_headers;
	unsigned notify;   /* --notify (RFC 3461), for every recipient */
	int ret;           /* --ret */
	const char *envid; /* --envid */
} send_opts;

typedef struct dedup_ctx {
	ms_message *m;
	ms_hmap seen; /* wire addresses already in m */
	ms_error *err;
	int bad;
} dedup_ctx;

static int add_header_rcpt(void *ctx, const char *addr)
{
	dedup_ctx *d = ctx;
	char wire[MS_ADDR_MAX + 1];
	if (ms_addr_parse(addr, strlen(addr), MS_ADDR_RECIPIENT, wire, NULL, d->err) != MS_OK) {
		d->bad = 1;
		return 1;
	}
	if (ms_hmap_get(&d->seen, wire))
		return 0; /* like sendmail: one copy per address */
	if (ms_hmap_put(&d->seen, wire, d) != 0) {
		ms_error_set(d->err, MS_ERR_NOMEM, "out of memory");
		d->bad = 1;
		return 1;
	}
	return ms_message_add_rcpt(d->m, addr, d->err) != MS_OK;
}

static ms_message *build_message(const send_opts *so, const char *name, size_t index,
                                 ms_error *err)
{
	int fd;
	if (!strcmp(name, "-")) {
		fd = spool_to_tmp(STDIN_FILENO, err);
		if (fd < 0)
			return NULL;
	} else {
		fd = open(name, O_RDONLY | O_CLOEXEC);
		if (fd < 0) {
			ms_error_set(err, MS_ERR_IO, "%s: %s", name, strerror(errno));
			return NULL;
		}
	}
	/* The exact length: what is sent is what was measured for SIZE=, and
	 * no read is spent finding the end of the file. */
	struct stat fst;
	if (fstat(fd, &fst) < 0) {
		ms_error_set(err, MS_ERR_IO, "%s: %s", name, strerror(errno));
		close(fd);
		return NULL;
	}
	if (!S_ISREG(fst.st_mode)) {
		int t = spool_to_tmp(fd, err); /* a pipe or device: copy it first */
		close(fd);
		if (t < 0)
			return NULL;
		fd = t;
		if (fstat(fd, &fst) < 0) {
			ms_error_set(err, MS_ERR_IO, "%s: %s", name, strerror(errno));
			close(fd);
			return NULL;
		}
	}
	uint64_t size = (uint64_t)fst.st_size;
	item *it = calloc(1, sizeof *it);
	ms_message *m = it ? ms_message_new(so->sender, err) : NULL;
	if (!m)
		goto fail;
	it->name = name;
	it->fd = fd;
	ms_buf_init(&it->hdr, MS_HDR_MAX);
	m->user = it;
	m->id = index;
	for (size_t i = 0; i < so->nrcpts; i++)
		if (ms_message_add_rcpt(m, so->rcpts[i], err) != MS_OK)
			goto fail;
	if (so->from_headers) {
		uint64_t body_off;
		if (ms_hdr_read(fd, &it->hdr, &body_off, err) != MS_OK)
			goto fail;
		dedup_ctx d = { .m = m, .err = err };
		ms_hmap_init(&d.seen);
		int bad = 0;
		for (size_t i = 0; i < m->nrcpts && !bad; i++)
			if ((bad = ms_hmap_put(&d.seen, m->rcpts[i].addr, &d) != 0))
				ms_error_set(err, MS_ERR_NOMEM, "out of memory");
		static const char *fields[] = { "To", "Cc", "Bcc" };
		for (size_t i = 0; i < 3 && !bad; i++) {
			int hr = ms_hdr_addresses(it->hdr.data, ms_buf_avail(&it->hdr), fields[i],
			                          add_header_rcpt, &d);
			if (hr == MS_HDR_MALFORMED)
				ms_error_set(err, MS_ERR_DATA,
				             "%s: a %s: field holds no valid address list (an unclosed <, or "
				             "words apart without an <address>)",
				             name, fields[i]);
			bad = hr < 0;
		}
		ms_hmap_free(&d.seen);
		if (bad)
			goto fail;
		it->hdr.len = ms_hdr_remove(it->hdr.data, it->hdr.len, "Bcc");
		if (ms_message_add_mem(m, it->hdr.data, it->hdr.len, err) != MS_OK ||
		    ms_message_add_fd(m, fd, (off_t)body_off, size - body_off, err) != MS_OK)
			goto fail;
	} else if (ms_message_add_fd(m, fd, 0, size, err) != MS_OK) {
		goto fail;
	}
	if (m->nrcpts == 0) {
		ms_error_set(err, MS_ERR_USAGE, "%s: no recipients (use --to or -t)", name);
		goto fail;
	}
	if (ms_message_set_dsn(m, so->ret, so->envid, err) != MS_OK)
		goto fail;
	for (size_t i = 0; so->notify && i < m->nrcpts; i++) {
		/* ORCPT: the address as given (RFC 3461 4.2), as the queue does. */
		char orcpt[MS_ADDR_MAX + 8];
		snprintf(orcpt, sizeof orcpt, "rfc822;%s", m->rcpts[i].addr);
		if (ms_message_rcpt_dsn(m, i, so->notify, orcpt, err) != MS_OK)
			goto fail;
	}
	return m;
fail:
	if (it)
		ms_buf_free(&it->hdr);
	free(it);
	ms_message_free(m);
	close(fd);
	return NULL;
}

static int default_sender(char *buf, size_t n)
{
	char host[256];
	ms_addr_hostname(host, sizeof host);
	return snprintf(buf, n, "%s@%s", cli_user(), host) >= (int)n ? -1 : 0;
}

static int parse_seconds(const char *s, int *ms)
{
	char *end;
	errno = 0;
	double v = strtod(s, &end);
	if (errno || *end || v <= 0 || v > 86400)
		return -1;
	*ms = (int)(v * 1000);
	return 0;
}

/* send without --via: each file (or stdin) queued as one message. */
static int queue_files(const send_opts *so, const char *confp, const char *full_name, int nfiles,
                       char **files, int json, int quiet, cli_mode mode)
{
	if (!so->nrcpts && !so->from_headers) {
		fprintf(stderr, "%s send: no recipients: give --to RCPT or -t\n", progname);
		return EX_USAGE_;
	}
	ms_conf conf;
	ms_spool *sp;
	int rc = cli_open_for_submit(confp, &conf, &sp);
	if (rc)
		return rc;
	ms_submit_opts o = { .sender = so->sender, .full_name = full_name, .user = cli_user(),
		                 .uid = (uint32_t)getuid(), .rcpts = so->rcpts, .nrcpts = so->nrcpts,
		                 .from_headers = so->from_headers, .dsn_notify = so->notify,
		                 .dsn_ret = so->ret, .dsn_envid = so->envid };
	char *stdin_only[] = { "-" };
	if (nfiles == 0) {
		files = stdin_only;
		nfiles = 1;
	}
	if (json)
		printf("{\"%s\":[", mode == CLI_QUEUE ? "queued" : "delivered");
	int worst = EX_OK_, first = 1;
	for (int i = 0; i < nfiles; i++) {
		int fd = strcmp(files[i], "-") ? open(files[i], O_RDONLY | O_CLOEXEC) : STDIN_FILENO;
		if (fd < 0) {
			fprintf(stderr, "%s send: %s: %s\n", progname, files[i], strerror(errno));
			worst = worst == EX_TEMPFAIL_ ? worst : EX_NOINPUT_;
			continue;
		}
		int r = cli_submit(sp, &conf, &o, fd, files[i], quiet, json ? stdout : NULL, &first, mode);
		if (fd != STDIN_FILENO)
			close(fd);
		if (r == EX_TEMPFAIL_ || (r && worst == EX_OK_))
			worst = r;
	}
	if (json)
		printf("]}\n");
	ms_spool_close(sp);
	return worst;
}

/* TLS and credentials for --via: the user from --user or the URL, one
 * source of its secret, and the TLS policy - `verify` when we log in,
 * `may` otherwise; smtps:// (TLS from the first byte) only encrypt or
 * verify.  The secret goes into secret (wiped by the caller).  Returns -1
 * to go on, or an exit code. */
static int send_security(ms_smtp_opts *o, const ms_route *route, const char *tls_arg,
                         const char *pwfile, const char *pweval, const char *oauth, char *secret,
                         size_t secretlen)
{
	if (!o->auth_user && route->user[0])
		o->auth_user = route->user;
	if ((pwfile != NULL) + (pweval != NULL) + (oauth != NULL) > 1) {
		fprintf(stderr, "%s send: give one of --password-file, --password-eval, "
		                "--oauth-token-eval\n", progname);
		return EX_USAGE_;
	}
	if ((pwfile || pweval || oauth) && !o->auth_user) {
		fprintf(stderr, "%s send: a password needs a user: --user NAME or smtp://NAME@host\n",
		        progname);
		return EX_USAGE_;
	}
	if (o->auth_user && !(pwfile || pweval || oauth)) {
		fprintf(stderr, "%s send: user %s needs --password-file, --password-eval or "
		                "--oauth-token-eval\n", progname, o->auth_user);
		return EX_USAGE_;
	}
	if (pwfile || pweval || oauth) {
		ms_error perr;
		if ((pwfile ? ms_secret_file(pwfile, secret, secretlen, &perr)
		            : ms_secret_command(pweval ? pweval : oauth, secret, secretlen, &perr)) !=
		    MS_OK) {
			fprintf(stderr, "%s send: %s\n", progname, perr.msg);
			return EX_USAGE_;
		}
		o->auth_secret = secret;
		if (oauth)
			o->auth_mechs = "XOAUTH2";
	}
	o->tls = o->auth_user ? MS_TLS_VERIFY : MS_TLS_MAY;
	if (tls_arg && ms_tls_policy_parse(tls_arg, &o->tls) < 0) {
		fprintf(stderr, "%s send: --tls wants none, may, encrypt or verify\n", progname);
		return EX_USAGE_;
	}
	if (route->implicit_tls) {
		if (tls_arg && o->tls < MS_TLS_ENCRYPT) {
			fprintf(stderr, "%s send: smtps:// is TLS from the first byte: --tls %s makes no "
			                "sense\n", progname, tls_arg);
			return EX_USAGE_;
		}
		if (!tls_arg)
			o->tls = MS_TLS_VERIFY;
	}
	return -1;
}

/* The sender (default: the login name at this host) and every --to,
 * checked once before anything is sent: a bad one is a usage error. */
static int send_addresses(send_opts *so, char *defsender, size_t n)
{
	ms_error err;
	if (!so->sender) {
		if (default_sender(defsender, n) < 0) {
			fprintf(stderr, "%s send: cannot make a default sender; use -f\n", progname);
			return EX_USAGE_;
		}
		so->sender = defsender;
	}
	char wire[MS_ADDR_MAX + 1];
	if (ms_addr_parse(so->sender, strlen(so->sender), MS_ADDR_SENDER, wire, NULL, &err) !=
	    MS_OK) {
		fprintf(stderr, "%s send: %s\n", progname, err.msg);
		return EX_USAGE_;
	}
	for (size_t i = 0; i < so->nrcpts; i++)
		if (ms_addr_parse(so->rcpts[i], strlen(so->rcpts[i]), MS_ADDR_RECIPIENT, wire, NULL,
		                  &err) != MS_OK) {
			fprintf(stderr, "%s send: %s\n", progname, err.msg);
			return EX_USAGE_;
		}
	if (!so->nrcpts && !so->from_headers) {
		fprintf(stderr, "%s send: no recipients: give --to RCPT or -t\n", progname);
		return EX_USAGE_;
	}
	return -1;
}

/* Every message in flight holds its file open: let the QMTP window (and
 * a long SMTP batch) have the descriptors it needs, or shrink the window
 * to what there is. */
static void raise_fd_limit(ms_qmtp_opts *qo)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
		return;
	if (rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max < 65536 ? rl.rlim_max : 65536;
		setrlimit(RLIMIT_NOFILE, &rl);
		getrlimit(RLIMIT_NOFILE, &rl);
	}
	if (rl.rlim_cur != RLIM_INFINITY && qo->window + 64 > rl.rlim_cur)
		qo->window = rl.rlim_cur > 128 ? (size_t)rl.rlim_cur - 64 : 64;
}

/* The summary: one JSON object (--json: the messages collected in R->out,
 * counts, timing, round trips, shape, TLS, AUTH, the session's error) or
 * one line, with a second for TLS and AUTH when they were used. */
static void print_summary(const run *R, const char *via, ms_proto proto, double secs,
                          const ms_client_stats *st, const ms_tls_info *tlsi, const char *authm,
                          const ms_error *session_error)
{
	double rate = secs > 0 ? (double)R->nmsg / secs : 0;
	double rtpm = R->nmsg ? (double)st->round_trips / (double)R->nmsg : 0;
	if (!R->json) {
		printf("%zu message%s: %zu delivered, %zu deferred, %zu failed; recipients: %zu "
		       "delivered, %zu deferred, %zu failed; %.3f s (%.1f messages/s, %.2f round "
		       "trips/message)\n",
		       R->nmsg, R->nmsg == 1 ? "" : "s", R->delivered, R->deferred, R->failed,
		       R->rcpt_delivered, R->rcpt_deferred, R->rcpt_failed, secs, rate, rtpm);
		if (tlsi || authm)
			printf("%s%s%s%s%s%s\n", tlsi ? "TLS " : "", tlsi ? tlsi->protocol : "",
			       tlsi ? (tlsi->verified ? ", certificate verified" : ", certificate not checked")
			            : "",
			       tlsi && authm ? "; " : "", authm ? "authenticated with " : "",
			       authm ? authm : "");
		return;
	}
	ms_buf tlsj, srv;
	ms_buf_init(&tlsj, 0);
	ms_buf_init(&srv, 0);
	char authj[64];
	snprintf(authj, sizeof authj, authm ? "\"%s\"" : "null", authm ? authm : "");
	if (tlsi) {
		ms_buf_appendstr(&tlsj, "{\"protocol\":");
		ms_json_string(&tlsj, tlsi->protocol, strlen(tlsi->protocol));
		ms_buf_appendstr(&tlsj, ",\"cipher\":");
		ms_json_string(&tlsj, tlsi->cipher, strlen(tlsi->cipher));
		ms_buf_appendstr(&tlsj, ",\"peer\":");
		ms_json_string(&tlsj, tlsi->peer_subject, strlen(tlsi->peer_subject));
		ms_buf_printf(&tlsj, ",\"verified\":%s}", tlsi->verified ? "true" : "false");
	} else {
		ms_buf_appendstr(&tlsj, "null");
	}
	printf("{\"protocol\":\"%s\",\"server\":", ms_proto_name(proto));
	ms_json_string(&srv, via, strlen(via));
	printf("%s,\"messages\":[%s\n],\"summary\":{\"messages\":%zu,\"delivered\":%zu,"
	       "\"deferred\":%zu,\"failed\":%zu,\"recipients_delivered\":%zu,"
	       "\"recipients_deferred\":%zu,\"recipients_failed\":%zu,\"seconds\":%.3f,"
	       "\"messages_per_second\":%.1f,\"round_trips\":%llu,"
	       "\"round_trips_per_message\":%.3f,\"transactions\":%llu,\"connections\":%llu,"
	       "\"bytes_sent\":%llu,\"writes\":%llu,\"pipelining\":%s,\"shape\":\"%s\","
	       "\"bdat\":%llu,\"resent\":%llu,\"tls\":%s,\"auth\":%s,\"session_error\":",
	       ms_buf_ptr(&srv), ms_buf_ptr(&R->out), R->nmsg, R->delivered, R->deferred, R->failed,
	       R->rcpt_delivered, R->rcpt_deferred, R->rcpt_failed, secs, rate,
	       (unsigned long long)st->round_trips, rtpm, (unsigned long long)st->transactions,
	       (unsigned long long)st->connections, (unsigned long long)st->bytes_out,
	       (unsigned long long)st->writes, st->pipelining ? "true" : "false",
	       st->shape ? st->shape : "none", (unsigned long long)st->bdat,
	       (unsigned long long)st->resent, ms_buf_ptr(&tlsj), authj);
	ms_buf_reset(&srv);
	if (session_error)
		ms_json_string(&srv, session_error->msg, strlen(session_error->msg));
	else
		ms_buf_appendstr(&srv, "null");
	printf("%s}}\n", ms_buf_ptr(&srv));
	ms_buf_free(&srv);
	ms_buf_free(&tlsj);
}

/* The transcript to tpath ("-": standard error; *.json: as JSON), then
 * freed.  0, or EX_CANTCREAT_ when it cannot be written. */
static int write_transcript(ms_transcript *tx, const char *tpath)
{
	int rc = 0;
	ms_buf tb;
	ms_buf_init(&tb, 0);
	size_t tl = strlen(tpath);
	if (tl > 5 && !strcmp(tpath + tl - 5, ".json"))
		ms_transcript_render_json(tx, &tb);
	else
		ms_transcript_render(tx, &tb);
	FILE *f = strcmp(tpath, "-") ? fopen(tpath, "w") : stderr;
	if (!f || fwrite(ms_buf_ptr(&tb), 1, ms_buf_avail(&tb), f) != ms_buf_avail(&tb)) {
		fprintf(stderr, "%s send: cannot write transcript %s\n", progname, tpath);
		rc = EX_CANTCREAT_;
	}
	if (f && f != stderr)
		fclose(f);
	ms_buf_free(&tb);
	ms_transcript_free(tx);
	return rc;
}

/* The send command; `rcpts` has room for every argument (the --to
 * values) and belongs to the caller, so that every return frees it. */
/* What send's command line says: the engines' options (SMTP and QMTP),
 * the messages' envelope, the output, and the options that decide what
 * else is allowed (smtp_only, qmtp_only, via_only name one for the error). */
typedef struct send_args {
	ms_smtp_opts *o;
	ms_qmtp_opts *qo;
	send_opts *so;
	run *R;
	const char *tls_arg, *pwfile, *pweval, *oauth, *confp, *full_name;
	const char *via_only, *smtp_only, *qmtp_only, *qreplies, *via, *tpath, *mode_arg;
	int tbodies, cap_ms, mode;
} send_args;

/* Parse send's options into a (optind: the first file).  -1 to go on, or
 * an exit code (--help: 0). */
static int parse_send_args(int argc, char **argv, send_args *a)
{
	enum { O_VIA = 256, O_TO, O_JSON, O_TRANSCRIPT, O_TBODIES, O_NOPIPE, O_NOCROSS, O_HELO,
	       O_MAXRCPT, O_LONG, O_TIMEOUT, O_CTIMEOUT, O_QREPLIES, O_QENC, O_MAXSESSION, O_TLS,
	       O_TLSCA, O_TLSNAME, O_USER, O_PWFILE, O_PWEVAL, O_OAUTH, O_MECHS, O_AUTHPLAIN,
	       O_MODE, O_NOCHUNK, O_NORSET, O_BDATWIN, O_BDATBYTES, O_SESSMSGS, O_NOTIFY, O_RET,
	       O_ENVID, O_BIND };
	static const struct option lo[] = {
		{ "via", required_argument, NULL, O_VIA },
		{ "mode", required_argument, NULL, O_MODE },
		{ "from", required_argument, NULL, 'f' },
		{ "to", required_argument, NULL, O_TO },
		{ "json", no_argument, NULL, O_JSON },
		{ "transcript", required_argument, NULL, O_TRANSCRIPT },
		{ "transcript-bodies", no_argument, NULL, O_TBODIES },
		{ "no-pipelining", no_argument, NULL, O_NOPIPE },
		{ "no-cross-message", no_argument, NULL, O_NOCROSS },
		{ "no-chunking", no_argument, NULL, O_NOCHUNK },
		{ "notify", required_argument, NULL, O_NOTIFY },
		{ "ret", required_argument, NULL, O_RET },
		{ "envid", required_argument, NULL, O_ENVID },
		{ "no-rset-first", no_argument, NULL, O_NORSET },
		{ "bdat-window", required_argument, NULL, O_BDATWIN },
		{ "bdat-window-bytes", required_argument, NULL, O_BDATBYTES },
		{ "session-messages", required_argument, NULL, O_SESSMSGS },
		{ "helo", required_argument, NULL, O_HELO },
		{ "max-rcpts", required_argument, NULL, O_MAXRCPT },
		{ "allow-long-lines", no_argument, NULL, O_LONG },
		{ "timeout", required_argument, NULL, O_TIMEOUT },
		{ "connect-timeout", required_argument, NULL, O_CTIMEOUT },
		{ "qmtp-replies", required_argument, NULL, O_QREPLIES },
		{ "bind-address", required_argument, NULL, O_BIND },
		{ "qmtp-encoding", required_argument, NULL, O_QENC },
		{ "max-session", required_argument, NULL, O_MAXSESSION },
		{ "tls", required_argument, NULL, O_TLS },
		{ "tls-ca-file", required_argument, NULL, O_TLSCA },
		{ "tls-name", required_argument, NULL, O_TLSNAME },
		{ "user", required_argument, NULL, O_USER },
		{ "password-file", required_argument, NULL, O_PWFILE },
		{ "password-eval", required_argument, NULL, O_PWEVAL },
		{ "oauth-token-eval", required_argument, NULL, O_OAUTH },
		{ "auth-mechs", required_argument, NULL, O_MECHS },
		{ "auth-plaintext", no_argument, NULL, O_AUTHPLAIN },
		{ "config", required_argument, NULL, 'C' },
		{ "full-name", required_argument, NULL, 'F' },
		{ "quiet", no_argument, NULL, 'q' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int c;
	optind = 1;
	while ((c = getopt_long(argc, argv, "f:tqhC:F:46", lo, NULL)) != -1) {
		if (c == O_TRANSCRIPT || c == O_TBODIES || c == O_TIMEOUT || c == O_CTIMEOUT)
			a->via_only = argv[optind - 1];
		switch (c) {
		case 'C': a->confp = optarg; break;
		case 'F': a->full_name = optarg; break;
		case O_VIA: a->via = optarg; break;
		case O_MODE:
			if ((a->mode = cli_mode_parse(optarg)) < 0) {
				fprintf(stderr, "%s send: --mode wants now, background or queue\n", progname);
				return EX_USAGE_;
			}
			a->mode_arg = optarg;
			break;
		case 'f': a->so->sender = optarg; break;
		case O_TO: a->so->rcpts[a->so->nrcpts++] = optarg; break;
		case 't': a->so->from_headers = 1; break;
		case O_JSON: a->R->json = 1; break;
		case O_TRANSCRIPT: a->tpath = optarg; break;
		case O_TBODIES: a->tbodies = 1; break;
		case O_NOPIPE:
			a->o->pipelining = MS_PIPELINING_OFF;
			a->smtp_only = "--no-pipelining";
			break;
		case O_NOCROSS: a->o->cross_message = 0; a->smtp_only = "--no-cross-message"; break;
		case O_NOCHUNK: a->o->chunking = MS_CHUNKING_OFF; a->smtp_only = "--no-chunking"; break;
		case O_NOTIFY:
		case O_RET:
		case O_ENVID: {
			char who[64];
			snprintf(who, sizeof who, "%s send", progname);
			if (cli_dsn_option(c == O_NOTIFY ? 'N' : c == O_RET ? 'R' : 'V', optarg, who,
			                   &a->so->notify, &a->so->ret, &a->so->envid))
				return EX_USAGE_;
			break;
		}
		case O_NORSET: a->o->rset_first = 0; a->smtp_only = "--no-rset-first"; break;
		case O_BDATWIN:
		case O_SESSMSGS: {
			char *end;
			long v = strtol(optarg, &end, 10);
			if (*end || v < 1 || v > 1000000) {
				fprintf(stderr, "%s send: %s wants 1..1000000\n", progname,
				        c == O_BDATWIN ? "--bdat-window" : "--session-messages");
				return EX_USAGE_;
			}
			if (c == O_BDATWIN)
				a->o->bdat_messages = (size_t)v;
			else
				a->o->session_messages = (size_t)v;
			a->smtp_only = c == O_BDATWIN ? "--bdat-window" : "--session-messages";
			break;
		}
		case O_BDATBYTES: {
			int good = 1;
			uint64_t v = ms_conf_size(optarg, &good);
			if (!good || v == 0) {
				fprintf(stderr, "%s send: --bdat-window-bytes wants a size such as 8M\n",
				        progname);
				return EX_USAGE_;
			}
			a->o->bdat_bytes = v;
			a->smtp_only = "--bdat-window-bytes";
			break;
		}
		case O_HELO: a->o->helo = optarg; a->smtp_only = "--helo"; break;
		case '4': a->o->net.families = MS_NET_V4; a->via_only = "-4"; break;
		case '6': a->o->net.families = MS_NET_V6; a->via_only = "-6"; break;
		case O_BIND:
			if (ms_net_parse_bind(optarg, &a->o->net) != 0) {
				fprintf(stderr, "%s send: --bind-address wants one IPv4 and/or one IPv6 "
				        "address\n", progname);
				return EX_USAGE_;
			}
			a->via_only = "--bind-address";
			break;
		case O_MAXRCPT: {
			char *end;
			long v = strtol(optarg, &end, 10);
			if (*end || v < 1 || v > 100000) {
				fprintf(stderr, "%s send: --max-rcpts wants 1..100000\n", progname);
				return EX_USAGE_;
			}
			a->o->max_rcpts = (size_t)v;
			a->smtp_only = "--max-rcpts";
			break;
		}
		case O_LONG: a->o->allow_long_lines = 1; a->smtp_only = "--allow-long-lines"; break;
		case O_QREPLIES:
			if (strcmp(optarg, "package") && strcmp(optarg, "recipient") &&
			    strcmp(optarg, "auto")) {
				fprintf(stderr, "%s send: --qmtp-replies wants auto, package or recipient\n",
				        progname);
				return EX_USAGE_;
			}
			a->qreplies = optarg;
			a->qmtp_only = "--qmtp-replies";
			break;
		case O_QENC:
			if (!strcmp(optarg, "auto"))
				a->qo->encoding = MS_QMTP_ENC_AUTO;
			else if (!strcmp(optarg, "crlf"))
				a->qo->encoding = MS_QMTP_ENC_CRLF;
			else if (!strcmp(optarg, "lf"))
				a->qo->encoding = MS_QMTP_ENC_LF;
			else if (!strcmp(optarg, "to-lf"))
				a->qo->encoding = MS_QMTP_ENC_TO_LF;
			else {
				fprintf(stderr, "%s send: --qmtp-encoding wants auto, crlf, lf or to-lf\n",
				        progname);
				return EX_USAGE_;
			}
			a->qmtp_only = "--qmtp-encoding";
			break;
		case O_TLS: a->tls_arg = optarg; a->smtp_only = "--tls"; break;
		case O_TLSCA: a->o->tls_ca_file = optarg; a->smtp_only = "--tls-ca-file"; break;
		case O_TLSNAME: a->o->tls_name = optarg; a->smtp_only = "--tls-name"; break;
		case O_USER: a->o->auth_user = optarg; a->smtp_only = "--user"; break;
		case O_PWFILE: a->pwfile = optarg; a->smtp_only = "--password-file"; break;
		case O_PWEVAL: a->pweval = optarg; a->smtp_only = "--password-eval"; break;
		case O_OAUTH: a->oauth = optarg; a->smtp_only = "--oauth-token-eval"; break;
		case O_MECHS: a->o->auth_mechs = optarg; a->smtp_only = "--auth-mechs"; break;
		case O_AUTHPLAIN: a->o->auth_plaintext = 1; a->smtp_only = "--auth-plaintext"; break;
		case O_MAXSESSION:
			if (parse_seconds(optarg, &a->qo->max_session_ms) < 0) {
				fprintf(stderr, "%s send: bad --max-session \"%s\"\n", progname, optarg);
				return EX_USAGE_;
			}
			a->qmtp_only = "--max-session";
			break;
		case O_TIMEOUT:
			if (parse_seconds(optarg, &a->cap_ms) < 0) {
				fprintf(stderr, "%s send: bad --timeout \"%s\"\n", progname, optarg);
				return EX_USAGE_;
			}
			break;
		case O_CTIMEOUT:
			if (parse_seconds(optarg, &a->o->timeouts.connect) < 0) {
				fprintf(stderr, "%s send: bad --connect-timeout \"%s\"\n", progname, optarg);
				return EX_USAGE_;
			}
			break;
		case 'q': a->R->quiet = 1; break;
		case 'h': usage_send(stdout); return EX_OK_;
		default: usage_send(stderr); return EX_USAGE_;
		}
	}
	if (a->cap_ms) {
		ms_smtp_timeouts *to = &a->o->timeouts;
		int *t[] = { &to->greeting, &to->ehlo, &to->mail, &to->rcpt, &to->data,
		             &to->data_block, &to->dot, &to->rset, &to->quit };
		for (size_t i = 0; i < sizeof t / sizeof t[0]; i++)
			if (*t[i] > a->cap_ms)
				*t[i] = a->cap_ms;
		if (a->qo->reply_timeout_ms > a->cap_ms)
			a->qo->reply_timeout_ms = a->cap_ms;
		if (a->qo->write_timeout_ms > a->cap_ms)
			a->qo->write_timeout_ms = a->cap_ms;
	}
	a->qo->connect_timeout_ms = a->o->timeouts.connect;
	return -1;
}

static int send_with(int argc, char **argv, const char **rcpts)
{
	ms_client_opts co;
	ms_client_opts_default(&co);
	ms_smtp_opts o = co.smtp;
	ms_qmtp_opts *qo = &co.qmtp;
	send_opts so = { 0 };
	char defsender[MS_ADDR_MAX + 1];
	run R = { .first_json = 1 };
	ms_buf_init(&R.out, 0);
	so.rcpts = rcpts;
	send_args A = { .o = &o, .qo = qo, .so = &so, .R = &R, .mode = CLI_QUEUE };
	int r = parse_send_args(argc, argv, &A);
	if (r >= 0) {
		ms_buf_free(&R.out);
		return r;
	}
	const char *via = A.via, *tpath = A.tpath, *tls_arg = A.tls_arg, *confp = A.confp;
	const char *full_name = A.full_name, *smtp_only = A.smtp_only, *qmtp_only = A.qmtp_only;
	const char *via_only = A.via_only, *mode_arg = A.mode_arg, *qreplies = A.qreplies;
	const char *pwfile = A.pwfile, *pweval = A.pweval, *oauth = A.oauth;
	int mode = A.mode, tbodies = A.tbodies;
	if (!via) {
		const char *bad = smtp_only ? smtp_only : qmtp_only ? qmtp_only : via_only;
		if (bad || R.json < 0) {
			fprintf(stderr, "%s send: %s applies to --via only\n", progname, bad);
			return EX_USAGE_;
		}
		return queue_files(&so, confp, full_name, argc - optind, argv + optind, R.json, R.quiet,
		                   (cli_mode)mode);
	}
	if (mode_arg) {
		fprintf(stderr, "%s send: --mode applies without --via only (--via sends now)\n",
		        progname);
		return EX_USAGE_;
	}
	/* --via relay: the relays the configuration names for this sender,
	 * each with its own TLS and credentials, in failover order. */
	int use_relays = !strcmp(via, "relay");
	ms_conf *rconf = NULL;
	if ((confp && !use_relays) || full_name) {
		fprintf(stderr, "%s send: %s applies to queueing (no --via) or --via relay only\n",
		        progname, full_name ? "-F" : "-C");
		return EX_USAGE_;
	}
	if (use_relays) {
		if (smtp_only || qmtp_only) {
			fprintf(stderr, "%s send: with --via relay, %s is set per relay in the "
			                "configuration\n", progname, smtp_only ? smtp_only : qmtp_only);
			return EX_USAGE_;
		}
		via = "smtp://relay"; /* parsed below only for its defaults */
	}
	ms_route route;
	ms_error err;
	if (ms_route_parse(via, &route, &err) != MS_OK) {
		fprintf(stderr, "%s send: --via: %s\n", progname, err.msg);
		return EX_USAGE_;
	}
	if (route.proto == MS_PROTO_QMTP && smtp_only) {
		fprintf(stderr, "%s send: %s applies to smtp:// only\n", progname, smtp_only);
		return EX_USAGE_;
	}
	if (route.proto == MS_PROTO_SMTP && qmtp_only) {
		fprintf(stderr, "%s send: %s applies to qmtp:// only\n", progname, qmtp_only);
		return EX_USAGE_;
	}
	if (qreplies)
		route.qmtp_replies = !strcmp(qreplies, "package")   ? MS_QMTP_PER_PACKAGE
		                     : !strcmp(qreplies, "recipient") ? MS_QMTP_PER_RECIPIENT
		                                                      : MS_QMTP_REPLIES_AUTO;
	/* TLS and credentials. */
	char secret[4096] = "";
	r = send_security(&o, &route, tls_arg, pwfile, pweval, oauth, secret, sizeof secret);
	if (r >= 0)
		return r;
	if ((r = send_addresses(&so, defsender, sizeof defsender)) >= 0) {
		OPENSSL_cleanse(secret, sizeof secret);
		return r;
	}
	char *stdin_only[] = { "-" };
	char **files = optind < argc ? argv + optind : stdin_only;
	size_t nfiles = optind < argc ? (size_t)(argc - optind) : 1;

	ms_transcript *tx = tpath ? ms_transcript_new(tbodies) : NULL;
	o.transcript = qo->transcript = tx;
	o.on_result = qo->on_result = on_result;
	o.ctx = qo->ctx = &R;
	co.smtp = o;
	qo->net = o.net; /* -4, -6, --bind-address: both protocols */
	raise_fd_limit(qo);
	const ms_conf_relay *relays[MS_CONF_MAX_RELAYS];
	size_t nrelays = 0;
	ms_message **held = NULL; /* --via relay: all messages, sent at the end */
	if (use_relays) {
		int required;
		const char *cpath = ms_conf_path(confp, &required);
		rconf = malloc(sizeof *rconf);
		if (!rconf || ms_conf_load(rconf, cpath, required, &err) != MS_OK) {
			fprintf(stderr, "%s send: %s\n", progname, rconf ? err.msg : "out of memory");
			free(rconf);
			return EX_USAGE_;
		}
		nrelays = ms_conf_relays_for(rconf, so.sender, relays, MS_CONF_MAX_RELAYS);
		if (!nrelays) {
			fprintf(stderr, "%s send: no relay in %s for sender %s (relays, sender_relays)\n",
			        progname, rconf->path[0] ? rconf->path : "the configuration", so.sender);
			free(rconf);
			return EX_USAGE_;
		}
		held = calloc(nfiles, sizeof *held);
	}
	ms_client *s = use_relays ? NULL : ms_client_new(&route, &co, &err);
	if (!s && !use_relays) {
		fprintf(stderr, "%s send: %s\n", progname, err.msg);
		return EX_USAGE_;
	}
	int64_t t0 = ms_now_ms();
	ms_error cerr;
	ms_status cst = use_relays ? MS_OK : ms_client_connect(s, &cerr);
	if (cst != MS_OK)
		fprintf(stderr, "%s send: %s\n", progname, cerr.msg);
	int bad_input = 0;
	for (size_t i = 0; i < nfiles; i++) {
		ms_message *m = build_message(&so, files[i], i + 1, &err);
		if (!m) {
			fprintf(stderr, "%s send: %s\n", progname, err.msg);
			bad_input = err.status == MS_ERR_IO ? EX_NOINPUT_ : EX_DATAERR_;
			continue;
		}
		if (use_relays) {
			held[R.nmsg++] = m;
			continue;
		}
		R.nmsg++;
		ms_error serr;
		if (ms_client_submit(s, m, &serr) != MS_OK && serr.status == MS_ERR_USAGE) {
			fprintf(stderr, "%s send: %s\n", progname, serr.msg);
			bad_input = EX_DATAERR_;
		}
	}
	ms_error qerr;
	ms_client_stats cs = { 0 };
	ms_error ferr = { 0 };
	int failed_session = 0;
	const ms_tls_info *tlsi = NULL;
	const char *authm = NULL;
	if (use_relays) {
		ms_relay_report rep;
		if (ms_relay_send(relays, nrelays, &o, held, R.nmsg, &rep, &qerr) != MS_OK)
			fprintf(stderr, "%s send: %s\n", progname, qerr.msg);
		cs.round_trips = rep.round_trips;
		cs.bytes_out = rep.bytes_out;
		cs.writes = rep.writes;
		cs.connections = rep.tried;
		cs.messages = R.nmsg;
		cs.pipelining = 1;
		if ((failed_session = rep.errors[0] != '\0'))
			snprintf(ferr.msg, sizeof ferr.msg, "%s", rep.errors);
		free(held);
		free(rconf);
	} else {
		ms_client_close(s, &qerr);
		cs = ms_client_get_stats(s);
		failed_session = ms_client_failed(s, &ferr);
		tlsi = ms_client_tls(s);
		authm = ms_client_auth_mech(s);
	}
	print_summary(&R, via, route.proto, (double)(ms_now_ms() - t0) / 1000.0, &cs, tlsi, authm,
	              failed_session ? &ferr : NULL);
	OPENSSL_cleanse(secret, sizeof secret);
	if (tx && (r = write_transcript(tx, tpath)) && !bad_input)
		bad_input = r;
	ms_client_free(s);
	ms_buf_free(&R.out);
	fflush(stdout);
	if (R.deferred)
		return EX_TEMPFAIL_;
	if (bad_input)
		return bad_input;
	if (R.failed)
		return R.local_failed == R.failed ? EX_DATAERR_ : EX_UNAVAILABLE_;
	return EX_OK_;
}

static int cmd_send(int argc, char **argv)
{
	const char **rcpts = calloc((size_t)argc, sizeof *rcpts);
	if (!rcpts)
		return EX_SOFTWARE_;
	int rc = send_with(argc, argv, rcpts);
	free(rcpts);
	return rc;
}

int main(int argc, char **argv)
{
	const char *base = strrchr(argv[0], '/');
	base = base ? base + 1 : argv[0];
	if (!strcmp(base, "sendmail")) {
		progname = "sendmail";
		return cmd_sendmail(argc, argv);
	}
	if (!strcmp(base, "mailq")) {
		progname = "mailq";
		return cmd_mailq(argc, argv);
	}
	if (!strcmp(base, "newaliases")) {
		progname = "newaliases";
		return cmd_newaliases(argc, argv);
	}
	if (argc < 2) {
		usage_main(stderr);
		return EX_USAGE_;
	}
	if (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "help")) {
		usage_main(stdout);
		return EX_OK_;
	}
	if (!strcmp(argv[1], "--version") || !strcmp(argv[1], "-V") ||
	    !strcmp(argv[1], "version")) {
		/* What the program was built with, and the library it runs on. */
		printf("mailspool %s (libmailspool %s)\n", MS_VERSION, ms_version());
		return EX_OK_;
	}
	static const struct {
		const char *name;
		int (*fn)(int, char **);
	} cmds[] = { { "send", cmd_send },       { "queue", cmd_queue },     { "show", cmd_show },
		         { "hold", cmd_hold },       { "release", cmd_hold },    { "delete", cmd_hold },
		         { "flush", cmd_hold },      { "stats", cmd_stats },     { "sweep", cmd_sweep },
		         { "sendmail", cmd_sendmail }, { "mailq", cmd_mailq },
		         { "daemon", cmd_daemon },   { "setup", cmd_setup },
		         { "dkim-keygen", cmd_dkim_keygen }, { "tls-report", cmd_tls_report } };
	for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++)
		if (!strcmp(argv[1], cmds[i].name))
			return cmds[i].fn(argc - 1, argv + 1);
	fprintf(stderr, "%s: unknown command \"%s\"\n", progname, argv[1]);
	usage_main(stderr);
	return EX_USAGE_;
}
