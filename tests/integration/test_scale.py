"""Delivery at scale, end to end against real servers: MX rollup, idle
session reuse, throttling back-off and recovery, rate limits, connections
that drop, a scheduler killed or paused mid-run, and bounces that cannot be
queued at once.  dnsmasq serves the domains; every server listens on a
loopback address of its own on one port (mx_port)."""
import collections
import os
import re
import shutil
import select
import signal
import socket
import subprocess
import threading
import time

import pytest

from servers import Aiosmtpd, Dnsmasq, Exim, Postfix, SmtpSink, free_port
from test_daemon import (SENDER, World, dns_for, make_messages, queue_files, seqs, stop_daemon,
                         wait_for)


@pytest.fixture
def port():
    return free_port()


def shared_mx(domains, host="mx.shared.test"):
    return [(d, host, 10) for d in domains]


def test_rollup_two_domains_with_the_same_mx_share_one_connection(tmp_path, port):
    with Dnsmasq(mx=shared_mx(["x.test", "y.test"]), hosts={"mx.shared.test": "127.0.0.2"}) as dns, \
            Aiosmtpd(host="127.0.0.2", port=port) as srv:
        w = World(str(tmp_path), dns, port)
        for i in range(3):
            w.queue_msg([f"a{i}@x.test"])
            w.queue_msg([f"b{i}@y.test"])
        d = w.start()
        try:
            assert wait_for(lambda: len(srv.envelopes) == 6, 30), w.logtext()
        finally:
            stop_daemon(d)
        assert srv.sessions == 1  # one connection for both domains
        # One transaction per message, each with its own domain's recipient.
        assert sorted(e[1][0] for e in srv.envelopes) == sorted(
            [f"a{i}@x.test" for i in range(3)] + [f"b{i}@y.test" for i in range(3)])
        assert w.spool.queue() == []


class FlightCounter:
    """A TCP relay that counts the client's flights: a write of the client
    that follows data from the server starts one (so a pipelined group is
    one flight, and every wait for a reply shows as one more)."""

    def __init__(self, listen, target):
        self.ls = socket.create_server(listen)
        self.target = target
        self.flights = 0
        self.sessions = 0
        self.stop = False
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        self.ls.settimeout(0.2)
        while not self.stop:
            try:
                c, _ = self.ls.accept()
            except OSError:
                continue
            self.sessions += 1
            threading.Thread(target=self.relay, args=(c,), daemon=True).start()

    def relay(self, c):
        srv = socket.create_connection(self.target)
        last_from_server = True  # the greeting comes first
        while not self.stop:
            r, _, _ = select.select([c, srv], [], [], 0.2)
            for sock in r:
                data = sock.recv(65536)
                if not data:
                    c.close()
                    srv.close()
                    return
                if sock is c:
                    if last_from_server:
                        self.flights += 1
                    last_from_server = False
                    srv.sendall(data)
                else:
                    last_from_server = True
                    c.sendall(data)

    def close(self):
        self.stop = True
        self.ls.close()


def test_rollup_pipelines_across_domains(tmp_path, port):
    """Twelve domains on one MX host: once their site is known, twelve
    messages released together go over one session at about one flight
    each (each domain had been a pass of its own over the session: two
    flights per message)."""
    doms = [f"p{i}.test" for i in range(12)]
    # smtp-sink: PIPELINING (aiosmtpd has none).
    with Dnsmasq(mx=shared_mx(doms), hosts={"mx.shared.test": "127.0.0.2"}) as dns, \
            SmtpSink(host="127.0.0.3", port=port) as srv:
        relay = FlightCounter(("127.0.0.2", port), ("127.0.0.3", port))
        try:
            w = World(str(tmp_path), dns, port)
            held = [w.queue_msg([f"late@{d}"]) for d in doms]
            p = w.spool.ms("hold", *held)
            assert p.returncode == 0, p.stderr
            d = w.start()
            try:
                for dom in doms:  # the site becomes known
                    w.queue_msg([f"warm@{dom}"])
                assert wait_for(lambda: len(srv.transactions()) == 12, 30), w.logtext()
                relay.flights = 0
                p = w.spool.ms("release", *held)
                assert p.returncode == 0, p.stderr
                assert wait_for(lambda: len(srv.transactions()) == 24, 30), w.logtext()
            finally:
                stop_daemon(d)
        finally:
            relay.close()
        assert relay.sessions <= 2
        # One flight per message (its body and the next one's commands),
        # and perhaps a new session's EHLO and the QUIT: never two each.
        assert relay.flights <= 12 + 3, relay.flights
        assert w.spool.queue() == []


def test_an_idle_session_is_reused_then_closed(tmp_path, port):
    with dns_for(port) as dns, Aiosmtpd(host="127.0.0.2", port=port) as srv:
        w = World(str(tmp_path), dns, port, extra="connection_reuse_time = 2s\n")
        d = w.start()
        try:
            w.queue_msg(["u1@a.test"])
            assert wait_for(lambda: len(srv.envelopes) == 1, 20)
            w.queue_msg(["u2@a.test"])  # within the reuse time: the parked session
            assert wait_for(lambda: len(srv.envelopes) == 2, 20)
            assert srv.sessions == 1
            time.sleep(3.5)  # past it: the session was closed with QUIT
            w.queue_msg(["u3@a.test"])
            assert wait_for(lambda: len(srv.envelopes) == 3, 20)
            assert srv.sessions == 2
        finally:
            stop_daemon(d)


def test_a_throttling_server_gets_fewer_connections_then_recovers(tmp_path):
    # Postfix's anvil: more than two connections at once from one client
    # get "421 4.7.0 Error: too many connections".
    extra = ("smtpd_client_connection_count_limit = 2\n"
             "smtpd_client_event_limit_exceptions =\nanvil_rate_time_unit = 60s\n")
    with Postfix(extra_main=extra) as pf:
        port = pf.port
        with Dnsmasq() as dns:
            w = World(str(tmp_path), dns, port, tiers="0 1s 2s 3s 4s 5s 6s 7s 1h",
                      extra=f"default_route = {pf.url()}\ndestination_concurrency = 8\n"
                            "connection_messages = 5\ndestination_recovery = 2s\n")
            for i in range(80):
                w.queue_msg([f"u{i}@example.test"])
            d = w.start()
            try:
                assert wait_for(lambda: len(pf.queue()) == 80, 90), w.logtext()[-3000:]
                log = w.logtext()
                assert "the server asks us to slow down: concurrency" in log
                assert wait_for(lambda: "back to its limits: concurrency 8" in w.logtext(), 30)
            finally:
                stop_daemon(d)
        with open(os.path.join(pf.dir, "maillog")) as f:
            maillog = f.read()
    refused = maillog.count("Connection concurrency limit exceeded")
    assert refused >= 1  # the limit was met...
    # ...and the back-off kept it small: without it, every wave of eight
    # connections would meet it six times, for sixteen waves.
    assert refused < 40, refused


def test_a_rate_limit_is_held(tmp_path, port):
    with dns_for(port) as dns, Aiosmtpd(host="127.0.0.2", port=port) as srv:
        w = World(str(tmp_path), dns, port, extra="destination.a.test.rate = 120\n")
        for i in range(10):
            w.queue_msg([f"u{i}@a.test"])
        d = w.start()
        seen = []  # arrival times at the server
        try:
            deadline = time.monotonic() + 30
            while len(seen) < 10 and time.monotonic() < deadline:
                while len(seen) < len(srv.envelopes):
                    seen.append(time.monotonic())
                time.sleep(0.02)
        finally:
            stop_daemon(d)
        assert len(seen) == 10
        # 120 a minute is two a second: no second-long window holds more
        # than a burst of two and one more (counted at the server).
        for t in seen:
            assert sum(1 for u in seen if t <= u < t + 1.0) <= 3, seen
        assert seen[-1] - seen[0] >= 3.0


def test_a_dropped_connections_untried_messages_go_again_at_once(tmp_path):
    # Exim ends a connection after five messages ("421 ... too many
    # messages"): the messages pipelined behind were never attempted.
    with Exim(extra_main="smtp_accept_max_per_connection = 5\n") as ex, Dnsmasq() as dns:
        w = World(str(tmp_path), dns, ex.port,
                  extra=f"default_route = smtp://127.0.0.1:{ex.port}\n")
        for i in range(20):
            w.queue_msg([f"u{i}@example.test"])
        d = w.start()
        try:
            assert wait_for(lambda: w.spool.queue() == [], 60), w.logtext()[-3000:]
        finally:
            stop_daemon(d)
        assert len(ex.messages()) == 20
        log = w.logtext()
        sent = re.findall(r"attempt=(\d+), dsn=[\d.]+, status=sent", log)
        assert len(sent) == 20 and set(sent) == {"1"}  # no attempt recorded for the drop
        assert "status=deferred" not in log


def test_a_scheduler_killed_20_times_loses_nothing_and_repeats_little(tmp_path, port):
    ndom = 20
    n = 10000
    mx = [(f"d{i}.test", "mx0.d.test", 10) for i in range(ndom)]
    with Dnsmasq(mx=mx, hosts={"mx0.d.test": "127.0.0.2"}) as dns, \
            SmtpSink(host="127.0.0.2", port=port) as sink:
        w = World(str(tmp_path), dns, port,
                  extra="claim_lease = 2s\nclock_skew = 0\ndelivery_agents = 2\n"
                        "agent_uncommitted = 32\n")
        queue_files(w, make_messages(tmp_path, n, ndom))
        kills = 0
        d = None
        try:
            while kills < 20 and w.spool.listdir("env"):
                d = w.start("--node", f"n{kills}")
                before = len(seqs([sink]))
                # Let it deliver for a while (a few hundred messages), then kill.
                wait_for(lambda: len(seqs([sink])) > before + 200, 30, 0.05)
                d.kill()
                d.wait()
                kills += 1
                d = None
            d = w.start("--node", "last")
            assert wait_for(lambda: w.spool.listdir("env") == [], 240, 0.5), w.logtext()[-2000:]
        finally:
            if d is not None:
                stop_daemon(d)
        got = seqs([sink])
        assert set(got) == set(range(n))  # nothing lost
        extra = len(got) - n
        # The bound: agents x agent_uncommitted per kill.
        assert extra <= kills * 2 * 32, (extra, kills)
        assert w.spool.listdir("claim") == []
        assert w.spool.listdir("corrupt") == []


def test_a_scheduler_paused_past_its_lease_settles_nothing_it_lost(tmp_path, port):
    ndom = 10
    mx = [(f"d{i}.test", "mx0.d.test", 10) for i in range(ndom)]
    with Dnsmasq(mx=mx, hosts={"mx0.d.test": "127.0.0.2"}) as dns, \
            SmtpSink("-W", "data:1", host="127.0.0.2", port=port) as sink:
        # One second per DATA: ten connections at about ten messages a second.
        w = World(str(tmp_path), dns, port,
                  extra="claim_lease = 3s\nclock_skew = 0\nconnection_messages = 15\n")
        queue_files(w, make_messages(tmp_path, 150, ndom))
        a = w.start("--node", "sleeper")
        b = None
        try:
            assert wait_for(lambda: len(seqs([sink])) > 20, 60, 0.1)
            a.send_signal(signal.SIGSTOP)
            time.sleep(4.5)  # past the lease: its claims are stale
            b = w.start("--node", "awake")
            assert wait_for(lambda: len(seqs([sink])) > 60, 60, 0.1)
            a.send_signal(signal.SIGCONT)
            assert wait_for(lambda: w.spool.listdir("env") == [], 120, 0.5), w.logtext()[-2000:]
        finally:
            a.send_signal(signal.SIGCONT)
            problems = []
            for p in (a, b):
                if p is not None:
                    try:
                        stop_daemon(p)
                    except AssertionError as e:
                        problems.append(str(e))
            assert not problems, problems
        got = seqs([sink])
        assert set(got) == set(range(150))  # nothing lost
        assert w.spool.listdir("corrupt") == []  # no false quarantine
        # Each message was settled by exactly one daemon: one "sent" line.
        log = w.logtext()
        sent = collections.Counter(re.findall(r": (\w+): to=<[^>]*>.*status=sent", log))
        assert sent and max(sent.values()) == 1, sent.most_common(3)
        # The paused one noticed it had lost what it held.
        assert len(got) - 150 <= 2 * 48  # at most what its agents had in hand


def set_floor(w, octets):
    with open(w.spool.conf) as f:
        conf = f.read()
    conf = re.sub(r"min_free_space = \S+\n", f"min_free_space = {octets // 1024}k\n", conf)
    with open(w.spool.conf, "w") as f:
        f.write(conf)


def test_a_bounce_below_the_free_space_floor_is_kept_until_it_can_be_queued(tmp_path, port):
    replies = {"bad@a.test": "550 5.1.1 unknown user"}
    with dns_for(port) as dns, Aiosmtpd(host="127.0.0.2", port=port, rcpt_replies=replies), \
            Aiosmtpd(host="127.0.0.9", port=port) as sender_mx:
        st = os.statvfs(str(tmp_path))
        free = st.f_bavail * st.f_frsize
        w = World(str(tmp_path), dns, port, tiers="0 2s 1h")
        qid = w.queue_msg(["bad@a.test"])
        # Now the floor is far above what is free: even the reserve (half
        # the floor) is not enough for the bounce.
        set_floor(w, 4 * free)
        d = w.start()
        try:
            assert wait_for(lambda: "cannot queue the non-delivery notification" in w.logtext(),
                            20), w.logtext()
            q = w.spool.queue()
            assert [m["id"] for m in q] == [qid]  # the original stays
            assert q[0]["recipients"][0]["state"] == "bouncing"
        finally:
            stop_daemon(d)
        # Space again: the floor is now just above what is free, so a new
        # submission is refused but our own bounce fits in the reserve.
        st = os.statvfs(str(tmp_path))
        set_floor(w, (st.f_bavail * st.f_frsize) * 3 // 2)
        p = w.spool.ms("send", "-f", SENDER, "--to", "x@a.test", stdin=b"Subject: x\r\n\r\nx\r\n")
        assert p.returncode == 75, p.stderr  # below the floor for submissions
        d = w.start()
        try:
            assert wait_for(lambda: len(sender_mx.envelopes) == 1, 30), w.logtext()
        finally:
            stop_daemon(d)
        assert sender_mx.envelopes[0][0] in ("", "<>")  # from the null sender
        assert b"bad@a.test" in sender_mx.envelopes[0][2]
        assert w.spool.queue() == []


def test_a_bounce_on_a_full_disk_is_kept_until_there_is_room(tmp_path, port):
    replies = {"bad@a.test": "550 5.1.1 unknown user"}
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], check=True)
    try:
        with dns_for(port) as dns, Aiosmtpd(host="127.0.0.2", port=port, rcpt_replies=replies), \
                Aiosmtpd(host="127.0.0.9", port=port) as sender_mx:
            w = World(str(mnt), dns, port, tiers="0 2s 1h", )
            # Headers of 24 KiB: the bounce quotes them, so it needs more room
            # than the four pages left free below (the daemon's node lock,
            # a claim and the envelope take three).
            pad = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"p" * 800) for i in range(30))
            qid = w.queue_msg(["bad@a.test"], b"Subject: big\r\n" + pad + b"\r\nbody\r\n")
            slack, filler = mnt / "slack", mnt / "filler"
            slack.write_bytes(b"\0" * 16384)
            fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
            try:
                while os.write(fd, b"\0" * 4096) > 0:
                    pass
            except OSError:
                pass
            os.close(fd)
            os.unlink(slack)  # room for a claim and an envelope, not a bounce
            d = w.start()
            try:
                assert wait_for(lambda: "cannot queue the non-delivery notification" in
                                w.logtext(), 20), (w.logtext(), open(d.err_path).read())
                assert [m["id"] for m in w.spool.queue()] == [qid]
                os.unlink(filler)  # room again: the next try queues it
                assert wait_for(lambda: len(sender_mx.envelopes) == 1, 30), w.logtext()
            finally:
                stop_daemon(d)
            assert w.spool.queue() == []
    finally:
        subprocess.run(["umount", "-l", str(mnt)])


def test_a_dsn_for_a_254_octet_address_through_a_255_octet_host_is_queued(tmp_path, port):
    # The longest address (64 + @ + 189) and the longest host name: the DSN's
    # lines are folded within 998 octets, so the bounce is queued.
    local = "l" * 64
    dom = ".".join(["d" * 62, "e" * 62, "f" * 55, "test"])  # 184 octets
    rcpt = f"{local}@{dom}"
    labels = ["h" * 63, "i" * 63, "j" * 63, "k" * 56, "test"]
    host = ".".join(labels)  # 253 in text: 255 octets on the wire
    assert len(host) == 253 and len(rcpt) <= 254
    replies = {rcpt: "550 5.1.1 " + "no such user " * 30}
    with Dnsmasq(mx=[(dom, host, 10), ("sender.test", "mx.sender.test", 10)],
                 hosts={host: "127.0.0.2", "mx.sender.test": "127.0.0.9"}) as dns, \
            Aiosmtpd(host="127.0.0.2", port=port, rcpt_replies=replies), \
            Aiosmtpd(host="127.0.0.9", port=port) as sender_mx:
        w = World(str(tmp_path), dns, port)
        w.queue_msg([rcpt])
        d = w.start()
        try:
            assert wait_for(lambda: len(sender_mx.envelopes) == 1, 30), w.logtext()
        finally:
            stop_daemon(d)
        dsn = sender_mx.envelopes[0][2]
        assert rcpt.encode() in dsn.replace(b"\r\n ", b"")
        assert max(len(line) for line in dsn.split(b"\r\n")) <= 998
