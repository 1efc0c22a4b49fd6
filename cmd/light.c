/*
 * light.c - mailspool-sendmail: the sendmail and mailq front ends alone,
 * for programs that run sendmail once per message (cron, PHP, git).
 *
 * The same code as `mailspool sendmail` and `mailspool mailq` (sendmail.c,
 * front.c), linked without SMTP, TLS and DNS: loading OpenSSL and c-ares
 * costs about 1.4 ms per process here, more than the whole hand-off to the
 * queue.  Delivery modes that deliver in this process (-odi, -odb, for the
 * queue's owner) are handed to the main program (MS_BINDIR/mailspool) with
 * the same arguments before any input is read.  Never set-id.
 */
#include <string.h>

#include "cli.h"

const char *progname = "sendmail";
cli_deliver_fn cli_deliver_now = NULL;

int main(int argc, char **argv)
{
	const char *base = strrchr(argv[0], '/');
	base = base ? base + 1 : argv[0];
	if (!strcmp(base, "mailq")) {
		progname = "mailq";
		return cmd_mailq(argc, argv);
	}
	if (!strcmp(base, "newaliases")) {
		progname = "newaliases";
		return cmd_newaliases(argc, argv);
	}
	return cmd_sendmail(argc, argv);
}
