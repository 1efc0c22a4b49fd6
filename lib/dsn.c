/*
 * dsn.c - RFC 3464 delivery status notifications (see mailspool/dsn.h).
 */
#include "mailspool/dsn.h"

#include <stdio.h>
#include <string.h>

#include "mailspool/headers.h"

#define DIAG_MAX 900 /* a Diagnostic-Code line stays under 998 octets */

void ms_dsn_status(int code, const char *enh, int failed, char *out, size_t n)
{
	char cls = failed ? '5' : (code >= 400 && code < 500 ? '4' : '5');
	if (enh && enh[0] && enh[1] == '.' && (enh[0] == '4' || enh[0] == '5'))
		snprintf(out, n, "%c%s", cls, enh + 1); /* keep the subject and detail */
	else
		snprintf(out, n, "%c.0.0", cls);
}

/* Text for a header line: one line, 7-bit, capped. */
static void clean(const char *in, char *out, size_t n)
{
	size_t k = 0;
	for (const unsigned char *p = (const unsigned char *)(in ? in : ""); *p && k + 1 < n; p++)
		out[k++] = *p == '\r' || *p == '\n' || *p == '\t' ? ' ' : (*p < 0x20 || *p > 0x7e) ? '?' : (char)*p;
	out[k] = '\0';
}

/* May the whole message go into the report as is: 7-bit, CRLF lines of at
 * most 998 octets, ending in CRLF, within MS_DSN_FULL_MAX? */
static int full_ok(const char *p, size_t n)
{
	if (n > MS_DSN_FULL_MAX || n < 2 || p[n - 2] != '\r' || p[n - 1] != '\n')
		return 0;
	size_t col = 0;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)p[i];
		if (c > 0x7e || c == 0)
			return 0;
		if (c == '\n') {
			if (i == 0 || p[i - 1] != '\r')
				return 0;
			col = 0;
		} else if (++col > 999) {
			return 0;
		}
	}
	return 1;
}

/* The words of each kind of report. */
typedef struct kind_words {
	const char *subject, *intro, *action, *label;
} kind_words;

static const kind_words kinds[] = {
	[MS_DSN_FAILED] = { "Undelivered Mail Returned to Sender",
	                    "I'm sorry to have to inform you that your message could not\r\n"
	                    "be delivered to one or more recipients. It's attached below.",
	                    "failed", "Undelivered" },
	[MS_DSN_RELAYED] = { "Successful Mail Delivery Report",
	                     "Your message was delivered to the servers of the recipients\r\n"
	                     "below, which do not report delivery themselves.",
	                     "relayed", "Delivered" },
	[MS_DSN_DELAYED] = { "Delayed Mail (still being retried)",
	                     "This is a warning only; you need not send your message again.\r\n"
	                     "It has not yet been delivered to the recipients below; delivery\r\n"
	                     "goes on being tried, and you will hear again only if it fails.",
	                     "delayed", "Delayed" },
};

ms_status ms_dsn_build(const ms_dsn *d, ms_buf *out, ms_error *err)
{
	const kind_words *k = &kinds[d->kind >= MS_DSN_FAILED && d->kind <= MS_DSN_DELAYED
	                                 ? d->kind : MS_DSN_FAILED];
	char date[64], boundary[128], line[DIAG_MAX + 1];
	ms_hdr_date(d->now, date, sizeof date);
	snprintf(boundary, sizeof boundary, "%s/%lld/%s", d->queue_id, (long long)d->now,
	         d->reporting_mta);
	/* RET=FULL only when the whole message keeps the report's invariants. */
	int full = d->full && full_ok(d->full, d->full_len);
	ms_status st = ms_buf_printf(out,
	                             "From: Mail Delivery System <MAILER-DAEMON@%s>\r\n"
	                             "To: <%s>\r\n"
	                             "Subject: %s\r\n"
	                             "Auto-Submitted: auto-replied\r\n"
	                             "MIME-Version: 1.0\r\n"
	                             "Content-Type: multipart/report; report-type=delivery-status;\r\n"
	                             "\tboundary=\"%s\"\r\n"
	                             "\r\n"
	                             "This is a MIME-encapsulated message.\r\n"
	                             "\r\n"
	                             "--%s\r\n"
	                             "Content-Description: Notification\r\n"
	                             "Content-Type: text/plain; charset=us-ascii\r\n"
	                             "\r\n"
	                             "This is the mail system at host %s.\r\n"
	                             "\r\n"
	                             "%s\r\n"
	                             "\r\n",
	                             d->reporting_mta, d->sender,
	                             k->subject, boundary, boundary, d->reporting_mta, k->intro);
	if (st == MS_OK && d->full && !full)
		st = ms_buf_appendstr(out, "The whole message was asked for, but it is too large or not "
		                           "7-bit: its\r\nheaders are returned.\r\n\r\n");
	for (size_t i = 0; st == MS_OK && i < d->nrcpts; i++) {
		const ms_dsn_rcpt *r = &d->rcpts[i];
		clean(r->text, line, sizeof line);
		if (r->remote_mta && *r->remote_mta)
			st = r->code ? ms_buf_printf(out, "<%s>: host %s said: %d %s\r\n\r\n", r->addr,
			                             r->remote_mta, r->code, line)
			             : ms_buf_printf(out, "<%s>: host %s: %s\r\n\r\n", r->addr,
			                             r->remote_mta, line);
		else
			st = ms_buf_printf(out, "<%s>: %s\r\n\r\n", r->addr, line);
	}
	if (st == MS_OK) {
		char arrival[64];
		ms_hdr_date(d->arrival, arrival, sizeof arrival);
		st = ms_buf_printf(out,
		                   "--%s\r\n"
		                   "Content-Description: Delivery report\r\n"
		                   "Content-Type: message/delivery-status\r\n"
		                   "\r\n"
		                   "Reporting-MTA: dns; %s\r\n"
		                   "X-Mailspool-Queue-ID: %s\r\n"
		                   "Arrival-Date: %s\r\n",
		                   boundary, d->reporting_mta, d->queue_id, arrival);
		if (st == MS_OK && d->envid) {
			clean(d->envid, line, 101);
			st = ms_buf_printf(out, "Original-Envelope-Id: %s\r\n", line);
		}
	}
	for (size_t i = 0; st == MS_OK && i < d->nrcpts; i++) {
		const ms_dsn_rcpt *r = &d->rcpts[i];
		char status[16], last[64];
		if (d->kind == MS_DSN_RELAYED)
			snprintf(status, sizeof status, "2.0.0");
		else if (d->kind == MS_DSN_DELAYED) {
			ms_dsn_status(r->code, r->enh, 0, status, sizeof status);
			if (status[0] != '4') /* "delayed" needs a transient status */
				snprintf(status, sizeof status, "4.0.0");
		} else
			ms_dsn_status(r->code, r->enh, 1, status, sizeof status);
		ms_hdr_date(r->last_attempt ? r->last_attempt : d->now, last, sizeof last);
		st = ms_buf_appendstr(out, "\r\n");
		const char *semi = r->orcpt ? strchr(r->orcpt, ';') : NULL;
		if (st == MS_OK && semi) {
			clean(semi + 1, line, 600);
			st = ms_buf_printf(out, "Original-Recipient: %.*s; %s\r\n",
			                   (int)(semi - r->orcpt < 32 ? semi - r->orcpt : 32), r->orcpt, line);
		}
		if (st == MS_OK)
			st = ms_buf_printf(out, "Final-Recipient: rfc822; %s\r\nAction: %s\r\nStatus: %s\r\n",
			                   r->addr, k->action, status);
		if (st == MS_OK && r->remote_mta && *r->remote_mta)
			st = ms_buf_printf(out, "Remote-MTA: dns; %s\r\n", r->remote_mta);
		clean(r->text, line, sizeof line);
		if (st == MS_OK && r->code)
			st = ms_buf_printf(out, "Diagnostic-Code: smtp; %d %s\r\n", r->code, line);
		else if (st == MS_OK)
			st = ms_buf_printf(out, "Diagnostic-Code: X-mailspool; %s\r\n", line);
		if (st == MS_OK)
			st = ms_buf_printf(out, "Last-Attempt-Date: %s\r\n", last);
		if (st == MS_OK && d->kind == MS_DSN_DELAYED && d->retry_until) {
			char until[64];
			ms_hdr_date(d->retry_until, until, sizeof until);
			st = ms_buf_printf(out, "Will-Retry-Until: %s\r\n", until);
		}
	}
	if (st == MS_OK && full) {
		st = ms_buf_printf(out,
		                   "\r\n--%s\r\n"
		                   "Content-Description: %s Message\r\n"
		                   "Content-Type: message/rfc822\r\n"
		                   "\r\n",
		                   boundary, k->label);
		if (st == MS_OK)
			st = ms_buf_append(out, d->full, d->full_len);
		if (st == MS_OK)
			st = ms_buf_printf(out, "\r\n--%s--\r\n", boundary);
		return st == MS_OK ? MS_OK : ms_error_set(err, MS_ERR_NOMEM, "bounce too large");
	}
	if (st == MS_OK)
		st = ms_buf_printf(out,
		                   "\r\n--%s\r\n"
		                   "Content-Description: %s Message Headers\r\n"
		                   "Content-Type: text/rfc822-headers\r\n"
		                   "\r\n",
		                   boundary, k->label);
	/* The original header, 7-bit (B4), at most MS_DSN_HEADERS_MAX. */
	size_t hl = d->headers ? d->headers_len : 0;
	if (hl > MS_DSN_HEADERS_MAX)
		hl = MS_DSN_HEADERS_MAX;
	while (hl && d->headers[hl - 1] != '\n')
		hl--; /* whole lines only */
	if (st == MS_OK && hl && (st = ms_buf_reserve(out, hl)) == MS_OK) {
		char *t = ms_buf_tail(out);
		for (size_t i = 0; i < hl; i++) {
			unsigned char c = (unsigned char)d->headers[i];
			t[i] = c > 0x7e ? '?' : (char)c;
		}
		out->len += hl;
	}
	if (st == MS_OK)
		st = ms_buf_printf(out, "\r\n--%s--\r\n", boundary);
	if (st != MS_OK)
		return ms_error_set(err, MS_ERR_NOMEM, "bounce too large");
	return MS_OK;
}
