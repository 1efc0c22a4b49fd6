/*
 * test_cluster.c - what several hosts sharing a spool rely on: wake-ups
 * between kernels (wakenet: relayed only to FIFOs that cannot be opened
 * here, MAC checked), the live nodes and who owns a destination (cluster),
 * the start-up file-system check on a local directory (fscheck), and a
 * first attempt stamped by a clock that runs ahead (sched).
 */
#include <fcntl.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "mailspool/cluster.h"
#include "mailspool/fscheck.h"
#include "mailspool/sched.h"
#include "mailspool/spool.h"
#include "mailspool/wakenet.h"
#include "tmpspool.h"

static size_t recv_wait(ms_wakenet *w, char *buf, size_t cap)
{
	struct pollfd p = { .fd = ms_wakenet_fd(w), .events = POLLIN };
	if (poll(&p, 1, 2000) <= 0)
		return 0;
	usleep(20000); /* (every datagram of the burst) */
	return ms_wakenet_recv(w, buf, cap);
}

static void endpoint_port(const char *node, struct sockaddr_in *sa)
{
	char p[256], body[96];
	snprintf(p, sizeof p, "%s/spool/wake/%s.%ld.udp", root, node, (long)getpid());
	FILE *f = fopen(p, "r");
	assert_non_null(f);
	assert_non_null(fgets(body, sizeof body, f));
	fclose(f);
	char addr[64];
	unsigned port;
	assert_int_equal(sscanf(body, "%63s %u", addr, &port), 2);
	memset(sa, 0, sizeof *sa);
	sa->sin_family = AF_INET;
	sa->sin_port = htons((uint16_t)port);
	inet_pton(AF_INET, addr, &sa->sin_addr);
}

static void test_wakeups_cross_kernels_only_with_the_key(void **state)
{
	(void)state;
	ms_conf c;
	ms_spool *sp;
	tmp_spool(&c, &sp, NULL);
	ms_error err;
	ms_wakenet *a, *b, *none;
	assert_int_equal(ms_wakenet_open(sp, "", "x", &none, &err), MS_OK);
	assert_null(none); /* no wake_address: FIFOs only */
	assert_int_equal(ms_wakenet_open(sp, "127.0.0.1", "nodeA", &a, &err), MS_OK);
	assert_int_equal(ms_wakenet_open(sp, "127.0.0.1", "nodeB", &b, &err), MS_OK);
	/* B's FIFO exists but nobody here reads it: a daemon on another host. */
	char fifo[64];
	snprintf(fifo, sizeof fifo, "nodeB.%ld", (long)getpid());
	assert_int_equal(mkfifoat(ms_spool_wake_dirfd(sp), fifo, 0600), 0);
	const char msg[] = "n0123456789abcdef\nc";
	ms_wakenet_relay(a, sp, msg, sizeof msg - 1);
	char buf[4096];
	size_t n = recv_wait(b, buf, sizeof buf);
	assert_int_equal(n, sizeof msg - 1);
	assert_memory_equal(buf, msg, n);
	/* A forged datagram (no key, a made-up MAC) is dropped unread. */
	struct sockaddr_in sa;
	endpoint_port("nodeB", &sa);
	int s = socket(AF_INET, SOCK_DGRAM, 0);
	const char forged[] = "00000000000000000000000000000000 nffffffffffffffff\n";
	assert_true(sendto(s, forged, sizeof forged - 1, 0, (struct sockaddr *)&sa, sizeof sa) > 0);
	close(s);
	assert_int_equal(recv_wait(b, buf, sizeof buf), 0);
	/* A FIFO read here (a daemon on this host) gets nothing by UDP: it
	 * has the FIFO's own message. */
	int rd = openat(ms_spool_wake_dirfd(sp), fifo, O_RDONLY | O_NONBLOCK);
	assert_true(rd >= 0);
	sleep(2); /* (the endpoint list is kept two seconds) */
	ms_wakenet_relay(a, sp, "n\n", 2);
	assert_int_equal(recv_wait(b, buf, sizeof buf), 0);
	close(rd);
	/* Nothing was removed: not B's FIFO, not its endpoint. */
	struct stat st;
	assert_int_equal(fstatat(ms_spool_wake_dirfd(sp), fifo, &st, 0), 0);
	ms_wakenet_close(a);
	ms_wakenet_close(b);
	tmp_spool_remove(sp);
}

static void test_live_nodes_and_owners(void **state)
{
	(void)state;
	ms_conf c;
	ms_spool *sp, *sp2;
	tmp_spool(&c, &sp, NULL);
	c.claim_lease = 1;
	c.clock_skew = 0;
	ms_error err;
	assert_int_equal(ms_spool_open(&c, 0, &sp2, &err), MS_OK);
	int l1, l2;
	long holder;
	assert_int_equal(ms_spool_lock_node(sp, "alpha", &l1, &holder, &err), MS_OK);
	assert_int_equal(ms_spool_lock_node(sp2, "beta", &l2, &holder, &err), MS_OK);
	assert_int_equal(ms_spool_keeper_start(sp2, &err), MS_OK); /* beta's heartbeat */
	ms_peers *p = ms_peers_new("alpha");
	assert_int_equal(ms_peers_live(p), 1);
	assert_true(ms_peers_owns(p, "mx:anything")); /* alone: everything */
	assert_int_equal(ms_peers_refresh(p, sp, &c), 1);
	assert_int_equal(ms_peers_live(p), 2);
	/* Every destination has exactly one owner, the same for both. */
	ms_peers *q = ms_peers_new("beta");
	ms_peers_refresh(q, sp2, &c);
	size_t mine = 0;
	char key[32];
	for (int i = 0; i < 200; i++) {
		snprintf(key, sizeof key, "mx:d%d.test", i);
		assert_true(ms_peers_owns(p, key) != ms_peers_owns(q, key));
		mine += ms_peers_owns(p, key);
	}
	assert_true(mine > 50 && mine < 150); /* (shared out, roughly) */
	/* beta keeps beating: still alive after three leases. */
	for (int i = 0; i < 6; i++) {
		usleep(500000);
		ms_peers_refresh(p, sp, &c);
	}
	assert_int_equal(ms_peers_live(p), 2);
	/* beta's daemon goes: its lock is free, it is dead at once. */
	ms_spool_close(sp2);
	close(l2);
	usleep(1100000);
	assert_int_equal(ms_peers_refresh(p, sp, &c), 1);
	assert_int_equal(ms_peers_live(p), 1);
	assert_true(ms_peers_owns(p, "mx:d1.test"));
	ms_peers_free(p);
	ms_peers_free(q);
	close(l1);
	tmp_spool_remove(sp);
}

static void test_a_local_directory_passes_the_check(void **state)
{
	(void)state;
	char kind[32];
	ms_error err;
	assert_int_equal(ms_fscheck("/tmp", kind, sizeof kind, &err), MS_OK);
	assert_string_equal(kind, "local");
	assert_int_not_equal(ms_fscheck("/nonexistent/spool", kind, sizeof kind, &err), MS_OK);
}

static void test_a_first_attempt_from_a_clock_ahead_is_due(void **state)
{
	(void)state;
	ms_envelope e;
	ms_env_init(&e);
	ms_error err;
	int64_t now = 1700000000;
	assert_int_equal(ms_env_add_rcpt(&e, "a@x.test", now + 50, &err), MS_OK); /* its clock +50 s */
	assert_int_equal(ms_env_add_rcpt(&e, "b@x.test", now + 50, &err), MS_OK);
	e.rcpts[1].attempts = 1; /* a retry is due when it says, skew or not */
	size_t idx[2];
	assert_int_equal(ms_sched_due(&e, now, idx), 0);
	assert_int_equal(ms_sched_due_skew(&e, now, 60, idx), 1);
	assert_int_equal(idx[0], 0);
	assert_int_equal(ms_sched_due_skew(&e, now, 40, idx), 0); /* beyond the tolerance */
	ms_env_free(&e);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_wakeups_cross_kernels_only_with_the_key),
		cmocka_unit_test(test_live_nodes_and_owners),
		cmocka_unit_test(test_a_local_directory_passes_the_check),
		cmocka_unit_test(test_a_first_attempt_from_a_clock_ahead_is_due),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
