/*
 * queue.c - the queue commands: queue (mailq), show, hold, release, delete,
 * flush, stats, sweep; and the helpers every command shares.
 *
 * Commands that change a message take its claim first (node "admin"), so
 * they never race a dequeuer: a message being delivered is reported as busy
 * (exit 75) and left alone.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "mailspool/sched.h"
#include "mailspool/buf.h"
#include "mailspool/headers.h"
#include "mailspool/transcript.h"

/* ---- shared helpers ------------------------------------------------------ */

int cli_open_spool(const char *conf_path, ms_conf *conf, ms_spool **sp, int create)
{
	int required;
	const char *path = ms_conf_path(conf_path, &required);
	ms_error err;
	if (ms_conf_load(conf, path, required, &err) != MS_OK) {
		fprintf(stderr, "%s: %s\n", progname, err.msg);
		return err.status == MS_ERR_USAGE ? EX_USAGE_ : EX_TEMPFAIL_;
	}
	if (ms_spool_open(conf, create, sp, &err) != MS_OK) {
		fprintf(stderr, "%s: %s\n", progname, err.msg);
		return EX_TEMPFAIL_;
	}
	return 0;
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

int cli_mode_parse(const char *s)
{
	return !strcmp(s, "queue") ? CLI_QUEUE
	       : !strcmp(s, "now") ? CLI_NOW
	       : !strcmp(s, "background") ? CLI_BACKGROUND
	                                  : -1;
}

static const char *result_word(ms_rcpt_state s)
{
	return s == MS_RCPT_DELIVERED ? "delivered" : s == MS_RCPT_FAILED ? "failed" : "deferred";
}

static void put_safe(FILE *f, const char *s);

/* "code enh text" as a server said it: the enhanced code only when the
 * text does not already start with it (SMTP texts do). */
static void put_reply(FILE *f, int code, const char *enh, const char *text)
{
	size_t el = strlen(enh);
	if (code)
		fprintf(f, "%d ", code);
	if (el && !(strncmp(text, enh, el) == 0 && (text[el] == ' ' || !text[el])))
		fprintf(f, "%s ", enh);
	put_safe(f, text);
}

/* Modes now and background: claim the message just queued, attempt every
 * recipient through the daemon's routing, report each.  Now: the message
 * was queued held (no daemon touches it) and is removed whatever happened.
 * Background: results are recorded as the daemon would, without bounces
 * (the caller is told); what failed temporarily stays queued. */
static int deliver_now(ms_spool *sp, const ms_conf *conf, const char *id, const char *name,
                       int quiet, FILE *json, cli_mode mode)
{
	ms_claim cl;
	ms_error err;
	const char *pre = name ? name : "", *sep = name ? ": " : "";
	if (ms_spool_claim(sp, id, conf->hostname, &cl, &err) != MS_OK) {
		if (!quiet)
			printf("%s%squeued as %s (a daemon is delivering it)\n", pre, sep, id);
		return EX_OK_;
	}
	ms_envelope e;
	ms_sched_result *res = NULL;
	size_t n = 0;
	ms_status st = ms_spool_read(sp, id, &e, &err);
	if (st == MS_OK) {
		e.flags &= ~(uint32_t)MS_ENV_HOLD;
		st = ms_sched_attempt(sp, conf, &e, NULL, &res, &n, &err);
	}
	size_t failed = 0, deferred = 0;
	if (st == MS_OK) {
		ms_sched_summary sum;
		ms_sched_opts so = { .conf = conf, .bounce = 0 };
		if (mode == CLI_NOW)
			st = ms_spool_remove(sp, id, &err);
		else
			st = ms_sched_settle(sp, &so, &e, res, n, &sum, &err);
	} else if (mode == CLI_NOW) {
		ms_spool_remove(sp, id, NULL);
	}
	ms_spool_release(sp, &cl, NULL);
	if (st != MS_OK) {
		fprintf(stderr, "%s: %s%s%s: %s\n", progname, pre, sep, id, err.msg);
		if (n == 0) {
			ms_env_free(&e);
			free(res);
			return mode == CLI_NOW ? cli_exit_for(st) : EX_TEMPFAIL_;
		}
	}
	if (json) {
		ms_buf b;
		ms_buf_init(&b, 0);
		ms_json_string(&b, name ? name : "-", strlen(name ? name : "-"));
		fprintf(json, "%s,\"id\":\"%s\",\"mode\":\"%s\",\"recipients\":[", ms_buf_ptr(&b), id,
		        mode == CLI_NOW ? "now" : "background");
		ms_buf_free(&b);
	}
	for (size_t i = 0; i < n; i++) {
		const ms_sched_result *r = &res[i];
		failed += r->state == MS_RCPT_FAILED;
		deferred += r->state != MS_RCPT_FAILED && r->state != MS_RCPT_DELIVERED;
		const char *addr = r->rcpt < e.nrcpts ? e.rcpts[r->rcpt].addr : "?";
		if (json) {
			ms_buf b;
			ms_buf_init(&b, 0);
			ms_buf_appendstr(&b, i ? ",{\"address\":" : "{\"address\":");
			ms_json_string(&b, addr, strlen(addr));
			ms_buf_printf(&b, ",\"state\":\"%s\",\"code\":%d,\"enhanced\":", result_word(r->state),
			              r->code);
			ms_json_string(&b, r->enh, strlen(r->enh));
			ms_buf_appendstr(&b, ",\"text\":");
			ms_json_string(&b, r->text, strlen(r->text));
			ms_buf_appendstr(&b, ",\"relay\":");
			ms_json_string(&b, r->relay, strlen(r->relay));
			ms_buf_appendstr(&b, "}");
			fputs(ms_buf_ptr(&b), json);
			ms_buf_free(&b);
		} else if (!quiet || r->state != MS_RCPT_DELIVERED) {
			FILE *out = r->state == MS_RCPT_DELIVERED ? stdout : stderr;
			fprintf(out, "%s%s%s: <%s> %s via %s (", pre, sep, id, addr, result_word(r->state),
			        r->relay);
			put_reply(out, r->code, r->enh, r->text);
			fprintf(out, ")%s\n", mode == CLI_BACKGROUND && r->state == MS_RCPT_DEFERRED
			                           ? "; queued for retry"
			                           : "");
		}
	}
	if (json)
		fputs("]}", json);
	ms_env_free(&e);
	free(res);
	if (failed)
		return EX_UNAVAILABLE_;
	return deferred && mode == CLI_NOW ? EX_TEMPFAIL_ : EX_OK_;
}

int cli_submit(ms_spool *sp, const ms_conf *conf, const ms_submit_opts *o, int fd,
               const char *name, int quiet, FILE *json, int *first, cli_mode mode)
{
	ms_submit_result res;
	ms_error err;
	ms_submit_opts so = *o;
	if (mode == CLI_NOW)
		so.flags |= MS_ENV_HOLD; /* no daemon may take it meanwhile */
	ms_status st = ms_submit(sp, conf, &so, fd, &res, &err);
	if (st != MS_OK) {
		fprintf(stderr, "%s: %s%s%s; nothing was queued\n", progname, name ? name : "",
		        name ? ": " : "", err.msg);
		return cli_exit_for(st);
	}
	if (mode != CLI_QUEUE) {
		if (json && first && !*first)
			fputc(',', json);
		if (json)
			fputs("{\"file\":", json);
		if (first)
			*first = 0;
		return deliver_now(sp, conf, res.id, name, quiet, json, mode);
	}
	ms_spool_wake(sp, 0);
	if (json) {
		ms_buf b;
		ms_buf_init(&b, 0);
		ms_json_string(&b, name ? name : "-", strlen(name ? name : "-"));
		fprintf(json, "%s{\"file\":%s,\"id\":\"%s\",\"size\":%llu,\"recipients\":%zu}",
		        first && !*first ? "," : "", ms_buf_ptr(&b), res.id, (unsigned long long)res.size, res.nrcpts);
		ms_buf_free(&b);
		if (first)
			*first = 0;
	} else if (!quiet) {
		printf("%s%squeued as %s (%zu recipient%s, %llu octets)\n", name ? name : "",
		       name ? ": " : "", res.id, res.nrcpts, res.nrcpts == 1 ? "" : "s",
		       (unsigned long long)res.size);
	}
	return EX_OK_;
}

/* ---- listing ----------------------------------------------------------- */

static void fmt_time(int64_t t, char *out, size_t n)
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
static void put_safe(FILE *f, const char *s)
{
	for (const unsigned char *p = (const unsigned char *)s; *p; p++)
		if (*p < 0x20 || *p == 0x7f)
			fputc(' ', f);
		else
			fputc(*p, f);
}

static void json_str(ms_buf *b, const char *s)
{
	ms_json_string(b, s, strlen(s));
}

static void json_envelope(ms_buf *b, const ms_envelope *e, int with_history)
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
	fmt_time(e->arrival, at, sizeof at);
	fprintf(f, "%-29s%s %10llu  %s  <", e->id, e->flags & MS_ENV_HOLD ? "!" : " ",
	        (unsigned long long)e->size, at);
	put_safe(f, e->sender);
	fputs(">\n", f);
	for (size_t i = 0; i < e->nrcpts; i++) {
		const ms_env_rcpt *r = &e->rcpts[i];
		fmt_time(r->next, nx, sizeof nx);
		fprintf(f, "    %-9s ", ms_env_state_name(r->state));
		put_safe(f, r->addr);
		if (r->state == MS_ENV_PENDING || r->state == MS_ENV_DEFERRED)
			fprintf(f, "  next %s", nx);
		if (r->attempts)
			fprintf(f, "  attempts %u", (unsigned)r->attempts);
		if (r->text[0] || r->code) {
			fputs("  (", f);
			put_reply(f, r->code, r->enh, r->text);
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
			json_envelope(&b, &e, 0);
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

/* ---- commands ---------------------------------------------------------- */

static const struct option common_lo[] = {
	{ "config", required_argument, NULL, 'C' },
	{ "json", no_argument, NULL, 'j' },
	{ "help", no_argument, NULL, 'h' },
	{ NULL, 0, NULL, 0 },
};

/* -C FILE, --json, --help; returns -1 to go on, or an exit code. */
static int common_opts(int argc, char **argv, const char *usage, const char **conf, int *json)
{
	int c;
	optind = 1;
	while ((c = getopt_long(argc, argv, "C:h", common_lo, NULL)) != -1) {
		switch (c) {
		case 'C': *conf = optarg; break;
		case 'j':
			if (!json) {
				fprintf(stderr, "usage: %s %s\n", progname, usage);
				return EX_USAGE_;
			}
			*json = 1;
			break;
		case 'h': printf("usage: %s %s\n", progname, usage); return EX_OK_;
		default: fprintf(stderr, "usage: %s %s\n", progname, usage); return EX_USAGE_;
		}
	}
	return -1;
}

/* Options, configuration and spool: -1 when the command may go on (the
 * spool is open), else the exit code. */
static int begin(int argc, char **argv, const char *usage, int *json, ms_conf *conf,
                 ms_spool **sp)
{
	const char *confp = NULL;
	int r = common_opts(argc, argv, usage, &confp, json);
	if (r >= 0)
		return r;
	r = cli_open_spool(confp, conf, sp, 1);
	return r ? r : -1;
}

int cmd_queue(int argc, char **argv)
{
	int json = 0;
	ms_conf conf;
	ms_spool *sp;
	int r = begin(argc, argv, "queue [-C FILE] [--json]", &json, &conf, &sp);
	if (r >= 0)
		return r;
	r = cli_list_queue(sp, json);
	ms_spool_close(sp);
	return r;
}

int cmd_show(int argc, char **argv)
{
	int json = 0;
	ms_conf conf;
	ms_spool *sp;
	int r = begin(argc, argv, "show [-C FILE] [--json] ID", &json, &conf, &sp);
	if (r >= 0)
		return r;
	if (optind + 1 != argc) {
		fprintf(stderr, "usage: %s show [-C FILE] [--json] ID\n", progname);
		ms_spool_close(sp);
		return EX_USAGE_;
	}
	const char *id = argv[optind];
	ms_envelope e;
	ms_error err;
	ms_status st = ms_spool_read(sp, id, &e, &err);
	if (st != MS_OK) {
		fprintf(stderr, "%s: %s\n", progname, err.msg);
		ms_spool_close(sp);
		return st == MS_ERR_USAGE ? EX_NOINPUT_ : EX_TEMPFAIL_;
	}
	/* The header block of the stored message. */
	ms_buf hdr;
	ms_buf_init(&hdr, MS_HDR_MAX);
	int fd;
	uint64_t body_off = 0;
	if (ms_spool_open_data(sp, id, &fd, &err) == MS_OK) {
		ms_hdr_read(fd, &hdr, &body_off, &err);
		close(fd);
	}
	ms_buf b;
	ms_buf_init(&b, 0);
	if (json) {
		json_envelope(&b, &e, 1);
		b.len--; /* reopen the object for the headers */
		ms_buf_appendstr(&b, ",\"headers\":");
		ms_json_string(&b, ms_buf_ptr(&hdr), ms_buf_avail(&hdr));
		ms_buf_appendstr(&b, "}\n");
		fwrite(ms_buf_ptr(&b), 1, ms_buf_avail(&b), stdout);
	} else {
		char at[32];
		fmt_time(e.arrival, at, sizeof at);
		printf("Queue ID:  %s%s\nArrival:   %s\nSize:      %llu octets\nUser:      %u\n"
		       "Sender:    <",
		       e.id, e.flags & MS_ENV_HOLD ? " (held)" : "", at, (unsigned long long)e.size,
		       (unsigned)e.uid);
		put_safe(stdout, e.sender);
		printf(">\nRecipients:\n");
		for (size_t i = 0; i < e.nrcpts; i++) {
			const ms_env_rcpt *r2 = &e.rcpts[i];
			char nx[32];
			fmt_time(r2->next, nx, sizeof nx);
			printf("  <");
			put_safe(stdout, r2->addr);
			printf(">  %s, %u attempt%s, tier %u", ms_env_state_name(r2->state),
			       (unsigned)r2->attempts, r2->attempts == 1 ? "" : "s", (unsigned)r2->tier);
			if (r2->state == MS_ENV_PENDING || r2->state == MS_ENV_DEFERRED)
				printf(", next attempt %s", nx);
			printf("\n");
			for (size_t k = 0; k < r2->nhist; k++) {
				char when[32];
				fmt_time(r2->hist[k].when, when, sizeof when);
				printf("    %s  ", when);
				put_reply(stdout, r2->hist[k].code, r2->hist[k].enh, r2->hist[k].text);
				printf("\n");
			}
		}
		printf("Headers:\n");
		const char *h = ms_buf_ptr(&hdr);
		for (size_t i = 0; i < ms_buf_avail(&hdr); i++)
			if (h[i] != '\r')
				putchar((unsigned char)h[i] < 0x20 && h[i] != '\n' && h[i] != '\t' ? ' ' : h[i]);
	}
	ms_buf_free(&b);
	ms_buf_free(&hdr);
	ms_env_free(&e);
	ms_spool_close(sp);
	return EX_OK_;
}

/* hold, release, delete, flush: one change per message, under its claim. */
int cmd_hold(int argc, char **argv)
{
	const char *what = argv[0];
	int is_flush = !strcmp(what, "flush");
	char usage[96];
	snprintf(usage, sizeof usage, "%s [-C FILE] %s", what, is_flush ? "[ID...]" : "ID...");
	const char *confp = NULL;
	int r = common_opts(argc, argv, usage, &confp, NULL);
	if (r >= 0)
		return r;
	if (!is_flush && optind >= argc) {
		fprintf(stderr, "usage: %s %s\n", progname, usage);
		return EX_USAGE_;
	}
	ms_conf conf;
	ms_spool *sp;
	if ((r = cli_open_spool(confp, &conf, &sp, 1)))
		return r;
	char **ids = argv + optind;
	size_t n = (size_t)(argc - optind);
	char **all = NULL;
	size_t nall = 0;
	ms_error err;
	if (is_flush && n == 0) {
		if (ms_spool_list(sp, &all, &nall, &err) != MS_OK) {
			fprintf(stderr, "%s: %s\n", progname, err.msg);
			ms_spool_close(sp);
			return EX_TEMPFAIL_;
		}
		ids = all;
		n = nall;
	}
	int rc = EX_OK_;
	char node[300];
	snprintf(node, sizeof node, "admin-%s", conf.hostname);
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
	ms_spool_wake(sp, 1); /* running daemons read the changed envelopes */
	ms_spool_ids_free(all, nall);
	ms_spool_close(sp);
	return rc;
}

typedef struct stats_ctx {
	int json, first;
} stats_ctx;

static void stats_row(void *ctx, const char *day, const char *purpose, uint64_t events,
                      uint64_t octets)
{
	stats_ctx *s = ctx;
	if (s->json)
		printf("%s\n  {\"day\":\"%s\",\"purpose\":\"%s\",\"events\":%llu,\"octets\":%llu}",
		       s->first ? "" : ",", day, purpose, (unsigned long long)events,
		       (unsigned long long)octets);
	else
		printf("%s  %-10s %8llu messages %14llu octets\n", day, purpose,
		       (unsigned long long)events, (unsigned long long)octets);
	s->first = 0;
}

int cmd_stats(int argc, char **argv)
{
	int json = 0;
	ms_conf conf;
	ms_spool *sp;
	int r = begin(argc, argv, "stats [-C FILE] [--json]", &json, &conf, &sp);
	if (r >= 0)
		return r;
	stats_ctx s = { json, 1 };
	if (json)
		printf("{\"usage\":[");
	ms_error err;
	ms_status st = ms_spool_usage_sum(sp, stats_row, &s, &err);
	if (json)
		printf("\n]}\n");
	ms_spool_close(sp);
	if (st != MS_OK) {
		fprintf(stderr, "%s: %s\n", progname, err.msg);
		return EX_TEMPFAIL_;
	}
	return EX_OK_;
}

int cmd_sweep(int argc, char **argv)
{
	int json = 0;
	ms_conf conf;
	ms_spool *sp;
	int r = begin(argc, argv, "sweep [-C FILE] [--json]", &json, &conf, &sp);
	if (r >= 0)
		return r;
	ms_sweep_report rep;
	ms_error err;
	ms_status st = ms_spool_sweep(sp, &rep, &err);
	ms_spool_close(sp);
	if (st != MS_OK) {
		fprintf(stderr, "%s: %s\n", progname, err.msg);
		return EX_TEMPFAIL_;
	}
	if (json)
		printf("{\"checked\":%zu,\"corrupt\":%zu,\"tmp_removed\":%zu,\"orphans_removed\":%zu,"
		       "\"claims_expired\":%zu}\n",
		       rep.checked, rep.corrupt, rep.tmp_removed, rep.orphans_removed, rep.claims_expired);
	else
		printf("%zu messages sound, %zu moved to corrupt/, %zu stale temporary files and %zu "
		       "orphaned data files removed, %zu expired claims broken\n",
		       rep.checked, rep.corrupt, rep.tmp_removed, rep.orphans_removed, rep.claims_expired);
	return rep.corrupt ? EX_TEMPFAIL_ : EX_OK_;
}
