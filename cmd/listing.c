/*
 * listing.c - what the queue commands and the set-id helper share: the
 * listing (mailq), changes under claims (hold, release, delete, flush),
 * loading the configuration and opening the spool.
 *
 * The helper links this file and not queue.c, so that the set-id program
 * holds no delivery code (SMTP, TLS, DNS).  Every string from outside is
 * printed through ms_printable (cli_put_safe).
 */
#include <errno.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "mailspool/buf.h"
#include "mailspool/printable.h"
#include "mailspool/transcript.h"

int cli_load_conf(const char *conf_path, ms_conf *conf)
{
	int required;
	const char *path = ms_conf_path(conf_path, &required);
	ms_error err;
	if (ms_conf_load(conf, path, required, &err) != MS_OK) {
		fprintf(stderr, "%s: %s\n", progname, err.msg);
		return err.status == MS_ERR_USAGE ? EX_USAGE_ : EX_TEMPFAIL_;
	}
	return 0;
}

static void report_stderr(void *ctx, const char *line)
{
	(void)ctx;
	fprintf(stderr, "%s: %s\n", progname, line);
}

int cli_open_loaded(const ms_conf *conf, ms_spool **sp, int create)
{
	ms_error err;
	if (ms_spool_open(conf, create, sp, &err) != MS_OK) {
		fprintf(stderr, "%s: %s\n", progname, err.msg);
		return err.status == MS_ERR_DENIED ? EX_NOPERM_ : EX_TEMPFAIL_;
	}
	ms_spool_set_report(*sp, report_stderr, NULL);
	return 0;
}

int cli_open_spool(const char *conf_path, ms_conf *conf, ms_spool **sp, int create)
{
	int r = cli_load_conf(conf_path, conf);
	return r ? r : cli_open_loaded(conf, sp, create);
}

int cli_exit_for(ms_status st)
{
	switch (st) {
	case MS_OK: return EX_OK_;
	case MS_ERR_USAGE:
	case MS_ERR_DATA: return EX_DATAERR_;
	default: return EX_TEMPFAIL_;
	}
}

const char *cli_user(void)
{
	struct passwd *pw = getpwuid(getuid());
	return pw ? pw->pw_name : "root";
}


/* "code enh text" as a server said it: the enhanced code only when the
 * text does not already start with it (SMTP texts do). */
void cli_put_reply(FILE *f, int code, const char *enh, const char *text)
{
	size_t el = strlen(enh);
	if (code)
		fprintf(f, "%d ", code);
	if (el && !(strncmp(text, enh, el) == 0 && (text[el] == ' ' || !text[el])))
		fprintf(f, "%s ", enh);
	cli_put_safe(f, text);
}

/* ---- listing ----------------------------------------------------------- */

void cli_fmt_time(int64_t t, char *out, size_t n)
{
	time_t tt = (time_t)t;
	struct tm tm;
	if (t <= 0 || !localtime_r(&tt, &tm) || !strftime(out, n, "%Y-%m-%d %H:%M:%S", &tm))
		snprintf(out, n, "-");
}

static void iso_time(int64_t t, char *out, size_t n)
{
	time_t tt = (time_t)t;
	struct tm tm;
	if (!gmtime_r(&tt, &tm) || !strftime(out, n, "%Y-%m-%dT%H:%M:%SZ", &tm))
		snprintf(out, n, "1970-01-01T00:00:00Z");
}

/* Text that came from a server, made safe for a terminal line. */
void cli_put_safe(FILE *f, const char *s)
{
	/* The one escaping for text from outside (mailspool/printable.h). */
	char b[MS_PRINTABLE_SIZE(256)];
	for (size_t n = strlen(s); n > 0;) {
		size_t k = n < 256 ? n : 256;
		fputs(ms_printable(s, k, b, sizeof b), f);
		s += k;
		n -= k;
	}
}

static void json_str(ms_buf *b, const char *s)
{
	ms_json_string(b, s, strlen(s));
}

void cli_json_envelope(ms_buf *b, const ms_envelope *e, int with_history)
{
	char at[32];
	iso_time(e->arrival, at, sizeof at);
	ms_buf_printf(b, "{\"id\":\"%s\",\"size\":%llu,\"arrival\":\"%s\",\"arrival_unix\":%lld,"
	                 "\"uid\":%u,\"sender\":",
	              e->id, (unsigned long long)e->size, at, (long long)e->arrival, (unsigned)e->uid);
	json_str(b, e->sender);
	int64_t due = ms_env_next_due(e);
	ms_buf_printf(b, ",\"held\":%s,\"next_attempt_unix\":", e->flags & MS_ENV_HOLD ? "true" : "false");
	if (due == INT64_MAX)
		ms_buf_appendstr(b, "null");
	else
		ms_buf_printf(b, "%lld", (long long)due);
	ms_buf_appendstr(b, ",\"recipients\":[");
	for (size_t i = 0; i < e->nrcpts; i++) {
		const ms_env_rcpt *r = &e->rcpts[i];
		ms_buf_appendstr(b, i ? ",{\"address\":" : "{\"address\":");
		json_str(b, r->addr);
		ms_buf_printf(b, ",\"state\":\"%s\",\"attempts\":%u,\"tier\":%u,\"next_attempt_unix\":%lld,"
		                 "\"last_attempt_unix\":%lld,\"last_reply\":{\"code\":%d,\"enhanced\":",
		              ms_env_state_name(r->state), (unsigned)r->attempts, (unsigned)r->tier,
		              (long long)r->next, (long long)r->last, r->code);
		json_str(b, r->enh);
		ms_buf_appendstr(b, ",\"text\":");
		json_str(b, r->text);
		ms_buf_appendstr(b, "}");
		if (with_history) {
			ms_buf_appendstr(b, ",\"history\":[");
			for (size_t k = 0; k < r->nhist; k++) {
				const ms_env_attempt *a = &r->hist[k];
				ms_buf_printf(b, "%s{\"time_unix\":%lld,\"code\":%d,\"enhanced\":", k ? "," : "",
				              (long long)a->when, a->code);
				json_str(b, a->enh);
				ms_buf_appendstr(b, ",\"text\":");
				json_str(b, a->text);
				ms_buf_appendstr(b, ",\"tls\":");
				json_str(b, a->tls[0] ? a->tls : "none");
				ms_buf_appendstr(b, "}");
			}
			ms_buf_appendstr(b, "]");
		}
		ms_buf_appendstr(b, "}");
	}
	ms_buf_appendstr(b, "]}");
}

static void human_envelope(FILE *f, const ms_envelope *e)
{
	char at[32], nx[32];
	cli_fmt_time(e->arrival, at, sizeof at);
	fprintf(f, "%-29s%s %10llu  %s  <", e->id, e->flags & MS_ENV_HOLD ? "!" : " ",
	        (unsigned long long)e->size, at);
	cli_put_safe(f, e->sender);
	fputs(">\n", f);
	for (size_t i = 0; i < e->nrcpts; i++) {
		const ms_env_rcpt *r = &e->rcpts[i];
		cli_fmt_time(r->next, nx, sizeof nx);
		fprintf(f, "    %-9s ", ms_env_state_name(r->state));
		cli_put_safe(f, r->addr);
		if (r->state == MS_ENV_PENDING || r->state == MS_ENV_DEFERRED)
			fprintf(f, "  next %s", nx);
		if (r->attempts)
			fprintf(f, "  attempts %u", (unsigned)r->attempts);
		if (r->text[0] || r->code) {
			fputs("  (", f);
			cli_put_reply(f, r->code, r->enh, r->text);
			fputs(")", f);
		}
		fputc('\n', f);
	}
}

/* Streams one message at a time: a queue of any size costs the memory of
 * its id list and one envelope. */
int cli_list_queue(ms_spool *sp, int json)
{
	char **ids;
	size_t n;
	ms_error err;
	if (ms_spool_list(sp, &ids, &n, &err) != MS_OK) {
		fprintf(stderr, "%s: %s\n", progname, err.msg);
		return EX_TEMPFAIL_;
	}
	uint64_t bytes = 0;
	size_t shown = 0, corrupt = 0;
	ms_buf b;
	ms_buf_init(&b, 0);
	if (json)
		fputs("{\"messages\":[", stdout);
	else if (n)
		printf("%-30s %10s  %-19s  %s\n", "Queue ID (! held)", "Size", "Arrival", "Sender / recipients");
	for (size_t i = 0; i < n; i++) {
		ms_envelope e;
		ms_status st = ms_spool_read(sp, ids[i], &e, &err);
		if (st == MS_ERR_USAGE)
			continue; /* delivered and removed since the listing */
		if (st != MS_OK) {
			fprintf(stderr, "%s: %s\n", progname, err.msg);
			corrupt += st == MS_ERR_DATA;
			continue;
		}
		bytes += e.size;
		if (json) {
			ms_buf_reset(&b);
			if (shown)
				ms_buf_appendstr(&b, ",");
			ms_buf_appendstr(&b, "\n  ");
			cli_json_envelope(&b, &e, 0);
			fwrite(ms_buf_ptr(&b), 1, ms_buf_avail(&b), stdout);
		} else {
			human_envelope(stdout, &e);
		}
		shown++;
		ms_env_free(&e);
	}
	if (json)
		printf("\n],\"count\":%zu,\"bytes\":%llu,\"corrupt\":%zu}\n", shown,
		       (unsigned long long)bytes, corrupt);
	else if (shown)
		printf("-- %llu Kbytes in %zu message%s.\n", (unsigned long long)(bytes + 1023) / 1024, shown,
		       shown == 1 ? "" : "s");
	else
		printf("Mail queue is empty\n");
	ms_buf_free(&b);
	ms_spool_ids_free(ids, n);
	return corrupt ? EX_TEMPFAIL_ : EX_OK_;
}

int cli_change(ms_spool *sp, const ms_conf *conf, const char *what, char **ids, size_t n)
{
	int is_flush = !strcmp(what, "flush");
	int rc = EX_OK_;
	ms_error err;
	char **all = NULL;
	size_t nall = 0;
	if (is_flush && n == 0) { /* flush without ids: everything queued */
		if (ms_spool_list(sp, &all, &nall, &err) != MS_OK) {
			fprintf(stderr, "%s: %s\n", progname, err.msg);
			return EX_TEMPFAIL_;
		}
		ids = all;
		n = nall;
	}
	char node[300];
	snprintf(node, sizeof node, "admin-%s", conf->hostname);
	int64_t now = (int64_t)time(NULL);
	for (size_t i = 0; i < n; i++) {
		const char *id = ids[i];
		ms_claim cl;
		ms_status st = ms_spool_claim(sp, id, node, &cl, &err);
		if (st != MS_OK) {
			fprintf(stderr, "%s: %s: %s\n", progname, id, err.msg);
			rc = st == MS_ERR_USAGE ? EX_DATAERR_ : EX_TEMPFAIL_;
			continue;
		}
		ms_envelope e;
		st = ms_spool_read(sp, id, &e, &err);
		if (st == MS_OK) {
			if (!strcmp(what, "delete")) {
				st = ms_spool_remove(sp, id, &err);
			} else {
				if (!strcmp(what, "hold"))
					e.flags |= MS_ENV_HOLD;
				else if (!strcmp(what, "release"))
					e.flags &= ~(uint32_t)MS_ENV_HOLD;
				else /* flush: due now (a held message stays held) */
					for (size_t k = 0; k < e.nrcpts; k++)
						if (e.rcpts[k].state == MS_ENV_PENDING ||
						    e.rcpts[k].state == MS_ENV_DEFERRED)
							e.rcpts[k].next = now;
				st = ms_spool_update(sp, &e, &err);
			}
			ms_env_free(&e);
		}
		ms_spool_release(sp, &cl, NULL);
		if (st != MS_OK) {
			fprintf(stderr, "%s: %s: %s\n", progname, id, err.msg);
			rc = st == MS_ERR_USAGE ? EX_NOINPUT_ : EX_TEMPFAIL_;
		} else if (!is_flush) {
			printf("%s: %s\n", id, !strcmp(what, "delete") ? "deleted" : !strcmp(what, "hold") ? "held" : "released");
		}
	}
	if (is_flush)
		printf("%zu message%s due now\n", n, n == 1 ? "" : "s");
	/* Running daemons read the changed envelopes; a flush also ends the
	 * back-off of destinations that were down. */
	ms_spool_wake(sp, is_flush ? 2 : 1);
	ms_spool_ids_free(all, nall);
	return rc;
}
