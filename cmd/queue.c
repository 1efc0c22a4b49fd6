/*
 * queue.c - delivery modes now and background (deliver_now), and the
 * owner's queue commands: show, stats, sweep.  What the light sendmail
 * program shares with the main program (submission, mailq, hold, release,
 * delete, flush) is in front.c.
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
#include "mailspool/tlsrpt.h"
#include "mailspool/sched.h"
#include "mailspool/buf.h"
#include "mailspool/headers.h"
#include "mailspool/transcript.h"

/* ---- shared helpers ------------------------------------------------------ */

static const char *result_word(ms_rcpt_state s)
{
	return s == MS_RCPT_DELIVERED ? "delivered" : s == MS_RCPT_FAILED ? "failed" : "deferred";
}

/* Modes now and background (the policy is ms_sched_deliver_mode's,
 * mailspool/sched.h): report each recipient's result, as a line or JSON. */
static int deliver_now(ms_spool *sp, const ms_conf *conf, const char *id, const char *name,
                       int quiet, FILE *json, cli_mode mode);
cli_deliver_fn cli_deliver_now = deliver_now;

static int deliver_now(ms_spool *sp, const ms_conf *conf, const char *id, const char *name,
                       int quiet, FILE *json, cli_mode mode)
{
	ms_error err;
	const char *pre = name ? name : "", *sep = name ? ": " : "";
	ms_envelope e;
	ms_sched_result *res = NULL;
	size_t n = 0, failed = 0, deferred = 0;
	int busy;
	ms_status st = ms_sched_deliver_mode(sp, conf, id,
	                                     mode == CLI_NOW ? MS_MODE_NOW : MS_MODE_BACKGROUND, &e,
	                                     &res, &n, &busy, &err);
	if (busy) {
		if (!quiet)
			printf("%s%squeued as %s (a daemon is delivering it)\n", pre, sep, id);
		return EX_OK_;
	}
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
			cli_put_reply(out, r->code, r->enh, r->text);
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

/* ---- commands ---------------------------------------------------------- */

/* Options, configuration, the owner's identity and the spool: -1 when the
 * command may go on (the spool is open), else the exit code.  Only root
 * and the owner get past cli_become_owner (`what` says what was refused). */
static int begin(int argc, char **argv, const char *usage, int *json, ms_conf *conf,
                 ms_spool **sp, const char *what)
{
	const char *confp = NULL;
	int r = cli_common_opts(argc, argv, usage, &confp, json);
	if (r >= 0)
		return r;
	if ((r = cli_load_conf(confp, conf)) || (r = cli_become_owner(conf, what)))
		return r;
	r = cli_open_loaded(conf, sp, 1);
	return r ? r : -1;
}

int cmd_show(int argc, char **argv)
{
	int json = 0;
	ms_conf conf;
	ms_spool *sp;
	int r = begin(argc, argv, "show [-C FILE] [--json] ID", &json, &conf, &sp, "show messages");
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
	/* The header block as it is sent: the signatures made at commit
	 * (the envelope's prefix), then the stored message's own. */
	ms_buf hdr, file_hdr;
	ms_buf_init(&hdr, MS_HDR_MAX + MS_ENV_PREFIX_MAX);
	ms_buf_init(&file_hdr, MS_HDR_MAX);
	int fd;
	uint64_t body_off = 0;
	if (e.prefix)
		ms_buf_appendstr(&hdr, e.prefix);
	if (ms_spool_open_data(sp, id, &fd, &err) == MS_OK) {
		if (ms_hdr_read(fd, &file_hdr, &body_off, &err) == MS_OK)
			ms_buf_append(&hdr, ms_buf_ptr(&file_hdr), ms_buf_avail(&file_hdr));
		close(fd);
	}
	ms_buf_free(&file_hdr);
	ms_buf b;
	ms_buf_init(&b, 0);
	if (json) {
		cli_json_envelope(&b, &e, 1);
		b.len--; /* reopen the object for the headers */
		ms_buf_appendstr(&b, ",\"headers\":");
		ms_json_string(&b, ms_buf_ptr(&hdr), ms_buf_avail(&hdr));
		ms_buf_appendstr(&b, "}\n");
		fwrite(ms_buf_ptr(&b), 1, ms_buf_avail(&b), stdout);
	} else {
		char at[32];
		cli_fmt_time(e.arrival, at, sizeof at);
		printf("Queue ID:  %s%s\nArrival:   %s\nSize:      %llu octets\nUser:      %u\n"
		       "Sender:    <",
		       e.id, e.flags & MS_ENV_HOLD ? " (held)" : "", at, (unsigned long long)e.size,
		       (unsigned)e.uid);
		cli_put_safe(stdout, e.sender);
		printf(">\nRecipients:\n");
		for (size_t i = 0; i < e.nrcpts; i++) {
			const ms_env_rcpt *r2 = &e.rcpts[i];
			char nx[32];
			cli_fmt_time(r2->next, nx, sizeof nx);
			printf("  <");
			cli_put_safe(stdout, r2->addr);
			printf(">  %s, %u attempt%s, tier %u", ms_env_state_name(r2->state),
			       (unsigned)r2->attempts, r2->attempts == 1 ? "" : "s", (unsigned)r2->tier);
			if (r2->state == MS_ENV_PENDING || r2->state == MS_ENV_DEFERRED)
				printf(", next attempt %s", nx);
			printf("\n");
			for (size_t k = 0; k < r2->nhist; k++) {
				char when[32];
				cli_fmt_time(r2->hist[k].when, when, sizeof when);
				printf("    %s  ", when);
				cli_put_reply(stdout, r2->hist[k].code, r2->hist[k].enh, r2->hist[k].text);
				if (r2->hist[k].tls[0]) {
					printf("  [tls ");
					cli_put_safe(stdout, r2->hist[k].tls);
					printf("]");
				}
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
	int r = begin(argc, argv, "stats [-C FILE] [--json]", &json, &conf, &sp, "read the usage log");
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

/* `mailspool tls-report [DAY [DOMAIN]]`: the RFC 8460 report(s) of a UTC
 * day (default: yesterday) from the spool's tlsrpt/ counts. */
int cmd_tls_report(int argc, char **argv)
{
	int json = 0;
	ms_conf conf;
	ms_spool *sp;
	static const char usage[] = "tls-report [-C FILE] [DAY [DOMAIN]]";
	int r = begin(argc, argv, usage, &json, &conf, &sp, "read the TLS-RPT data");
	if (r >= 0)
		return r;
	if (argc - optind > 2) {
		fprintf(stderr, "usage: %s %s\n", progname, usage);
		ms_spool_close(sp);
		return EX_USAGE_;
	}
	char day[16];
	if (optind < argc) {
		snprintf(day, sizeof day, "%s", argv[optind]);
	} else {
		time_t y = time(NULL) - 86400;
		struct tm tm;
		gmtime_r(&y, &tm);
		strftime(day, sizeof day, "%Y-%m-%d", &tm);
	}
	char contact[300];
	if (conf.admin_address[0])
		snprintf(contact, sizeof contact, "%s", conf.admin_address);
	else
		snprintf(contact, sizeof contact, "postmaster@%s", conf.hostname);
	ms_tlsrpt_opts o = { .day = day, .domain = optind + 1 < argc ? argv[optind + 1] : NULL,
		                 .org = conf.hostname, .contact = contact,
		                 .report_host = conf.hostname };
	int dfd = -1;
	ms_error err;
	ms_buf out;
	ms_buf_init(&out, 64u << 20);
	ms_status st = ms_spool_state_dir(sp, MS_TLSRPT_DIR, &dfd, &err);
	if (st == MS_OK)
		st = ms_tlsrpt_report(dfd, &o, &out, &err);
	if (dfd >= 0)
		close(dfd);
	ms_spool_close(sp);
	if (st != MS_OK) {
		fprintf(stderr, "%s: %s\n", progname, err.msg);
		ms_buf_free(&out);
		return st == MS_ERR_USAGE ? EX_NOINPUT_ : EX_TEMPFAIL_;
	}
	fwrite(ms_buf_ptr(&out), 1, ms_buf_avail(&out), stdout);
	ms_buf_free(&out);
	return EX_OK_;
}

int cmd_sweep(int argc, char **argv)
{
	int json = 0;
	ms_conf conf;
	ms_spool *sp;
	int r = begin(argc, argv, "sweep [-C FILE] [--json]", &json, &conf, &sp, "repair the spool");
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
