/*
 * test_net.c - address order, families, bind_address parsing and the
 * connection race of lib/net.c (RFC 8305), on loopback; and the aliases
 * file and its expansion (lib/aliases.c).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "mailspool/aliases.h"
#include "mailspool/net.h"

static void test_order_interleaves_families(void **state)
{
	(void)state;
	char a[6][46] = { "2001:db8::1", "2001:db8::2", "192.0.2.1", "192.0.2.2", "192.0.2.3",
		              "2001:db8::3" };
	ms_net_opts o;
	ms_net_opts_default(&o);
	/* No preference: the resolver's first family first, then alternating. */
	assert_int_equal(ms_net_order(a, 6, &o), 6);
	assert_string_equal(a[0], "2001:db8::1");
	assert_string_equal(a[1], "192.0.2.1");
	assert_string_equal(a[2], "2001:db8::2");
	assert_string_equal(a[3], "192.0.2.2");
	assert_string_equal(a[4], "2001:db8::3");
	assert_string_equal(a[5], "192.0.2.3");
	o.prefer = 4;
	assert_int_equal(ms_net_order(a, 6, &o), 6);
	assert_string_equal(a[0], "192.0.2.1");
	assert_string_equal(a[1], "2001:db8::1");
	o.families = MS_NET_V6;
	assert_int_equal(ms_net_order(a, 6, &o), 3);
	assert_string_equal(a[0], "2001:db8::1");
	assert_string_equal(a[2], "2001:db8::3");
}

static void test_parse_bind(void **state)
{
	(void)state;
	ms_net_opts o;
	ms_net_opts_default(&o);
	assert_int_equal(ms_net_parse_bind("192.0.2.7", &o), 0);
	assert_string_equal(o.bind4, "192.0.2.7");
	assert_string_equal(o.bind6, "");
	assert_int_equal(ms_net_parse_bind("192.0.2.7, [2001:db8::7]", &o), 0);
	assert_string_equal(o.bind6, "2001:db8::7");
	assert_int_equal(ms_net_parse_bind("192.0.2.7 192.0.2.8", &o), -1); /* two of a kind */
	assert_int_equal(ms_net_parse_bind("mail.example.org", &o), -1);    /* no names */
}

/* A listening socket on 127.0.0.1; its port in *port. */
static int listener(unsigned *port)
{
	int s = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t l = sizeof a;
	assert_int_equal(bind(s, (struct sockaddr *)&a, sizeof a), 0);
	assert_int_equal(listen(s, 4), 0);
	getsockname(s, (struct sockaddr *)&a, &l);
	*port = ntohs(a.sin_port);
	return s;
}

static void test_race_moves_on_from_a_refusal(void **state)
{
	(void)state;
	unsigned port;
	int ls = listener(&port);
	char ps[8];
	snprintf(ps, sizeof ps, "%u", port);
	ms_net_opts o;
	ms_net_opts_default(&o);
	/* 127.0.0.2 refuses at once (nothing listens there on that port):
	 * the next address starts without waiting out the attempt delay. */
	snprintf(o.addrs[0], 46, "127.0.0.2");
	snprintf(o.addrs[1], 46, "127.0.0.1");
	o.naddrs = 2;
	o.attempt_delay_ms = 100000;
	int fd = -1;
	char peer[46];
	ms_error err;
	assert_int_equal(ms_net_connect("example.test", ps, &o, 5000, &fd, peer, &err), MS_OK);
	assert_string_equal(peer, "127.0.0.1");
	close(fd);
	/* Everything refused: the error names the host and the last address. */
	o.naddrs = 1;
	close(ls);
	assert_int_equal(ms_net_connect("example.test", ps, &o, 5000, &fd, NULL, &err),
	                 MS_ERR_CONNECT);
	assert_non_null(strstr(err.msg, "example.test"));
	/* A family no address has. */
	o.families = MS_NET_V6;
	assert_int_equal(ms_net_connect("example.test", ps, &o, 5000, &fd, NULL, &err),
	                 MS_ERR_USAGE);
}

static const char *emitted[16];
static size_t nemitted;

static int collect(void *ctx, const char *addr)
{
	(void)ctx;
	emitted[nemitted++] = strdup(addr);
	return 0;
}

static void reset_emitted(void)
{
	for (size_t i = 0; i < nemitted; i++)
		free((void *)emitted[i]);
	nemitted = 0;
}

static void test_aliases(void **state)
{
	(void)state;
	char path[] = "/tmp/ms-aliases-XXXXXX";
	int fd = mkstemp(path);
	const char text[] = "# comment\n"
	                    "Postmaster: root\n"
	                    "root: a@example.org, \\root,\n"
	                    "  ops\n"
	                    "ops: \"b c\"@example.org, |/bin/true, /var/mail/ops\n"
	                    "self: self, x@example.org\n";
	assert_int_equal(write(fd, text, sizeof text - 1), (ssize_t)(sizeof text - 1));
	close(fd);
	ms_aliases a;
	ms_error err;
	assert_int_equal(ms_aliases_load(&a, path, NULL, NULL, &err), MS_OK);
	assert_int_equal(a.n, 4);
	assert_true(ms_aliases_is_local("root", "h.example"));
	assert_true(ms_aliases_is_local("root@H.example", "h.example"));
	assert_true(ms_aliases_is_local("root@localhost", "h.example"));
	assert_false(ms_aliases_is_local("root@other.example", "h.example"));
	assert_false(ms_aliases_is_local("\"a@h.example\"@other.example", "h.example"));
	/* postmaster -> root -> a@, \root (admin), ops -> "b c"@ (| and / skipped). */
	ms_aliases_expand(&a, "POSTMASTER@h.example", "h.example", "boss@example.org", collect, NULL);
	assert_int_equal(nemitted, 3);
	assert_string_equal(emitted[0], "a@example.org");
	assert_string_equal(emitted[1], "boss@example.org");
	assert_string_equal(emitted[2], "\"b c\"@example.org");
	reset_emitted();
	/* A name that reaches itself stops there; without admin_address it
	 * stays a local name for the caller to qualify. */
	ms_aliases_expand(&a, "self", "h.example", "", collect, NULL);
	assert_int_equal(nemitted, 2);
	assert_string_equal(emitted[0], "self");
	assert_string_equal(emitted[1], "x@example.org");
	reset_emitted();
	ms_aliases_free(&a);
	/* A line that is no entry fails the load, named. */
	fd = open(path, O_WRONLY | O_TRUNC);
	assert_int_equal(write(fd, "root a@b\n", 9), 9);
	close(fd);
	assert_int_equal(ms_aliases_load(&a, path, NULL, NULL, &err), MS_ERR_USAGE);
	assert_non_null(strstr(err.msg, ":1: "));
	unlink(path);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_order_interleaves_families),
		cmocka_unit_test(test_parse_bind),
		cmocka_unit_test(test_race_moves_on_from_a_refusal),
		cmocka_unit_test(test_aliases),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
