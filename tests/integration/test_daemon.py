"""The delivery daemon and the delivery modes, end to end: dnsmasq serves the
test domains' MX, A, CNAME and null-MX records; real servers (aiosmtpd,
smtp-sink, Postfix) listen on several loopback addresses on one port (the
configuration's mx_port)."""
import email
import email.policy
import json
import os
import re
import signal
import subprocess
import time

import pytest

from conftest import BIN, Spool, strip_received
from servers import Aiosmtpd, Dnsmasq, Mailfront, SmtpSink, free_port

SENDER = "alice@sender.test"


def parse(raw):
    return email.message_from_bytes(raw, policy=email.policy.default)


class World:
    """dnsmasq + a spool whose configuration points at it."""

    def __init__(self, root, dns, port, tiers="0 30m 4h", extra=""):
        self.dns = dns
        self.port = port
        self.log = os.path.join(root, "delivery.log")
        self.spool = Spool(root, f"dns_servers = {dns.servers()}\nmx_port = {port}\n"
                                 f"log_file = {self.log}\nretry_tiers = {tiers}\n"
                                 f"dns_timeout = 3s\nconnect_timeout = 5s\n{extra}")

    def queue_msg(self, rcpts, body=b"Subject: test\r\n\r\nhello\r\n", sender=SENDER, *args):
        argv = ["send", "-f", sender] + sum((["--to", r] for r in rcpts), []) + list(args)
        p = self.spool.ms(*argv, stdin=body)
        assert p.returncode == 0, p.stderr
        return re.search(rb"queued as (\S+)", p.stdout).group(1).decode()

    def once(self, timeout=60, *args):
        p = self.spool.ms("daemon", "--once", *args)
        assert p.returncode == 0, p.stderr
        return p

    def start(self, *args):
        """A daemon in the foreground; its standard error (sanitizer
        reports, too) goes to daemon-N.err beside the spool."""
        self.nstarted = getattr(self, "nstarted", 0) + 1
        path = os.path.join(self.spool.root, f"daemon-{self.nstarted}.err")
        with open(path, "wb") as err:
            p = subprocess.Popen([BIN, "daemon", "--foreground"] + list(args),
                                 env=self.spool.env, stdout=subprocess.DEVNULL, stderr=err)
        p.err_path = path
        return p

    def logtext(self):
        try:
            with open(self.log) as f:
                return f.read()
        except FileNotFoundError:
            return ""


def wait_for(cond, timeout=30.0, step=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return False


def stop_daemon(p):
    """SIGTERM; the daemon must have been alive and must exit 0 (a crash or
    a sanitizer report fails the test, with its standard error)."""
    alive = p.poll() is None
    p.send_signal(signal.SIGTERM)
    try:
        rc = p.wait(timeout=20)
    except subprocess.TimeoutExpired:
        p.kill()
        raise
    if not alive or rc != 0:
        with open(p.err_path, "rb") as f:
            err = f.read()[-3000:].decode(errors="replace")
        raise AssertionError(f"daemon {'had died' if not alive else 'exited'} with {rc}: {err}")
    return rc


@pytest.fixture
def port():
    return free_port()


def dns_for(port, **kw):
    """The usual test domains: a.test with two MX, sender.test, null.test."""
    mx = [("a.test", "mx1.a.test", 10), ("a.test", "mx2.a.test", 20),
          ("sender.test", "mx.sender.test", 10), ("null.test", ".", 0)] + kw.pop("mx", [])
    hosts = {"mx1.a.test": "127.0.0.2", "mx2.a.test": "127.0.0.3",
             "mx.sender.test": "127.0.0.9"}
    hosts.update(kw.pop("hosts", {}))
    return Dnsmasq(mx=mx, hosts=hosts, **kw)


def test_mx_preference_then_failover_when_first_refuses(tmp_path, port):
    with dns_for(port) as dns, Aiosmtpd(host="127.0.0.3", port=port) as mx2:
        w = World(str(tmp_path), dns, port)
        with Aiosmtpd(host="127.0.0.2", port=port) as mx1:
            w.queue_msg(["u1@a.test"])
            w.once()
            assert [e[1] for e in mx1.envelopes] == [["u1@a.test"]]
            assert mx2.envelopes == []
        # mx1 is gone (connection refused): the next preference takes it.
        w.queue_msg(["u2@a.test", "u3@a.test"])
        w.once()
        assert [e[1] for e in mx2.envelopes] == [["u2@a.test", "u3@a.test"]]  # one copy (T3)
        assert mx2.envelopes[0][0] == SENDER
        assert w.spool.queue() == []
        log = w.logtext()
        assert "to=<u1@a.test>, relay=mx1.a.test[127.0.0.2]:%d" % port in log
        assert "to=<u2@a.test>, relay=mx2.a.test[127.0.0.3]:%d" % port in log
        assert "status=sent (250" in log
        # The usage log: what was spooled, and what was sent.
        import json
        rows = json.loads(w.spool.ms("stats", "--json").stdout)["usage"]
        sent = [r for r in rows if r["purpose"] == "sent"]
        assert sum(r["events"] for r in sent) == 2


def test_cname_and_implicit_mx(tmp_path, port):
    with dns_for(port, hosts={"implicit.test": "127.0.0.4"},
                 cname={"alias.test": "implicit.test"}) as dns, \
            Aiosmtpd(host="127.0.0.4", port=port) as srv:
        w = World(str(tmp_path), dns, port)
        w.queue_msg(["x@implicit.test"])
        w.queue_msg(["y@alias.test"])
        w.once()
        assert sorted(e[1][0] for e in srv.envelopes) == ["x@implicit.test", "y@alias.test"]
        assert "relay=implicit.test[127.0.0.4]" in w.logtext()


def test_address_literal_goes_to_that_address(tmp_path, port):
    with dns_for(port) as dns, Aiosmtpd(host="127.0.0.6", port=port) as srv:
        w = World(str(tmp_path), dns, port)
        w.queue_msg(["lit@[127.0.0.6]"])
        w.once()
        assert [e[1] for e in srv.envelopes] == [["lit@[127.0.0.6]"]]


def dsn_parts(raw):
    """A DSN's parts, and its delivery-status fields as a list of dicts:
    the per-message block first, then one per recipient."""
    msg = parse(raw)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    parts = list(msg.iter_parts())
    assert [p.get_content_type() for p in parts] == [
        "text/plain", "message/delivery-status", "text/rfc822-headers"]
    text = raw.decode().replace("\r\n", "\n")
    body = text.split("Content-Type: message/delivery-status\n\n", 1)[1].split("\n--", 1)[0]
    groups = [dict(line.split(": ", 1) for line in g.strip().splitlines())
              for g in re.split(r"\n\s*\n", body.strip())]
    return msg, parts, groups


def test_null_mx_bounces_at_once_with_5_1_10(tmp_path, port):
    with dns_for(port) as dns, Aiosmtpd(host="127.0.0.9", port=port) as sender_mx:
        w = World(str(tmp_path), dns, port)
        qid = w.queue_msg(["nobody@null.test"])
        w.once()
        assert len(sender_mx.envelopes) == 1
        mail_from, rcpts, raw, _ = sender_mx.envelopes[0]
        assert mail_from == "<>" and rcpts == [SENDER]
        msg, parts, groups = dsn_parts(raw)
        per_msg, per_rcpt = groups[0], groups[1:]
        assert per_msg["Reporting-MTA"] == "dns; host.example.test"
        assert len(per_rcpt) == 1
        assert per_rcpt[0]["Final-Recipient"] == "rfc822; nobody@null.test"
        assert per_rcpt[0]["Action"] == "failed"
        assert per_rcpt[0]["Status"] == "5.1.10"
        assert "Remote-MTA" not in per_rcpt[0]  # nobody was connected to
        assert w.spool.queue() == []
        assert f"{qid}: sender non-delivery notification" in w.logtext()


def test_permanent_reject_gets_one_dsn_at_the_senders_server(tmp_path, port):
    replies = {"bad1@a.test": "550 5.1.1 <bad1@a.test>: no such user",
               "bad2@a.test": "553 5.1.3 bad2 is malformed here"}
    with dns_for(port) as dns, Aiosmtpd(host="127.0.0.9", port=port) as sender_mx, \
            Aiosmtpd(host="127.0.0.2", port=port, rcpt_replies=replies) as mx1:
        w = World(str(tmp_path), dns, port)
        body = (b"From: Alice <alice@sender.test>\r\nTo: many\r\nSubject: the report\r\n"
                b"Message-ID: <orig-1@sender.test>\r\n\r\nsecret body text\r\n")
        w.queue_msg(["good@a.test", "bad1@a.test", "bad2@a.test"], body=body)
        w.once()
        assert [e[1] for e in mx1.envelopes] == [["good@a.test"]]
        assert len(sender_mx.envelopes) == 1  # one DSN for both failures
        mail_from, rcpts, raw, _ = sender_mx.envelopes[0]
        assert (mail_from, rcpts) == ("<>", [SENDER])
        msg, parts, groups = dsn_parts(raw)
        assert msg["Auto-Submitted"] == "auto-replied"
        assert msg["To"].addresses[0].addr_spec == SENDER
        per = {g["Final-Recipient"]: g for g in groups[1:]}
        assert set(per) == {"rfc822; bad1@a.test", "rfc822; bad2@a.test"}
        b1 = per["rfc822; bad1@a.test"]
        assert b1["Action"] == "failed" and b1["Status"] == "5.1.1"
        assert b1["Remote-MTA"] == "dns; mx1.a.test"
        assert b1["Diagnostic-Code"].startswith("smtp; 550 5.1.1")
        assert per["rfc822; bad2@a.test"]["Status"] == "5.1.3"
        headers = parts[2].get_content()
        assert "Message-ID: <orig-1@sender.test>" in headers
        assert "secret body text" not in raw.decode()
        assert w.spool.queue() == []


def test_temporary_failure_is_retried_at_the_next_tier(tmp_path, port):
    replies = {"slow@a.test": "451 4.3.0 try again later"}
    with dns_for(port) as dns, Aiosmtpd(host="127.0.0.2", port=port, rcpt_replies=replies) as mx1:
        w = World(str(tmp_path), dns, port, tiers="0 2s 1h")
        qid = w.queue_msg(["slow@a.test", "fast@a.test"])
        d = w.start()
        try:
            assert wait_for(lambda: "status=deferred" in w.logtext(), 20)
            q = w.spool.queue()
            assert len(q) == 1
            assert [e[1] for e in mx1.envelopes] == [["fast@a.test"]]
            listing = w.spool.run([w.spool.mailq]).stdout.decode()
            assert "deferred  slow@a.test" in listing
            assert "(451 4.3.0 try again later)" in listing  # the code said once
            replies.clear()  # the server is well again
            assert wait_for(lambda: f"{qid}: removed" in w.logtext(), 20), w.logtext()
        finally:
            stop_daemon(d)
        # The second attempt went only to the recipient still pending.
        assert [e[1] for e in mx1.envelopes] == [["fast@a.test"], ["slow@a.test"]]
        assert "to=<slow@a.test>, relay=mx1.a.test[127.0.0.2]:%d, tls=none, delay=" % port in w.logtext()
        assert re.search(r"to=<slow@a\.test>.*attempt=2, dsn=2\.\d\.\d, status=sent", w.logtext())


def test_exhausted_tiers_bounce(tmp_path, port):
    replies = {"never@a.test": "452 4.2.2 mailbox full"}
    with dns_for(port) as dns, Aiosmtpd(host="127.0.0.9", port=port) as sender_mx, \
            Aiosmtpd(host="127.0.0.2", port=port, rcpt_replies=replies):
        w = World(str(tmp_path), dns, port, tiers="0 1s 2s")
        w.queue_msg(["never@a.test"])
        d = w.start()
        try:
            assert wait_for(lambda: len(sender_mx.envelopes) == 1, 30), w.logtext()
        finally:
            stop_daemon(d)
        log = w.logtext()
        assert log.count("to=<never@a.test>") == 3  # one attempt per tier
        assert "attempt=3, dsn=5.2.2, status=bounced (452 " in log
        _, _, raw, _ = sender_mx.envelopes[0]
        _, _, groups = dsn_parts(raw)
        assert groups[1]["Action"] == "failed"
        assert groups[1]["Status"] == "5.2.2"  # class 5 for "failed" (RFC 3464)
        assert groups[1]["Diagnostic-Code"].startswith("smtp; 452 4.2.2")
        assert w.spool.queue() == []


def test_no_bounce_for_the_null_sender(tmp_path, port):
    with dns_for(port) as dns, Aiosmtpd(host="127.0.0.9", port=port) as sender_mx:
        w = World(str(tmp_path), dns, port)
        qid = w.queue_msg(["x@null.test"], sender="")
        w.once()
        assert sender_mx.envelopes == []
        assert w.spool.queue() == []
        assert f"{qid}: no non-delivery notification: the sender is <>" in w.logtext()


def test_nxdomain_fails_and_dns_timeout_defers(tmp_path, port):
    with dns_for(port, dead=["slowdns.test"]) as dns, \
            Aiosmtpd(host="127.0.0.9", port=port) as sender_mx:
        w = World(str(tmp_path), dns, port)
        w.queue_msg(["a@nonexistent.test"])
        slow = w.queue_msg(["b@slowdns.test"])
        w.once()
        assert len(sender_mx.envelopes) == 1
        _, _, groups = dsn_parts(sender_mx.envelopes[0][2])
        assert groups[1]["Final-Recipient"] == "rfc822; a@nonexistent.test"
        q = w.spool.queue()
        assert [m["id"] for m in q] == [slow]
        assert "status=deferred" in w.logtext() and "timed out" in w.logtext()


def test_tarpit_mx_does_not_delay_a_healthy_one(tmp_path, port):
    with dns_for(port, mx=[("tarpit.test", "mx.tarpit.test", 10)],
                 hosts={"mx.tarpit.test": "127.0.0.5"}) as dns, \
            SmtpSink("-W", "connect:600", host="127.0.0.5", port=port, greeting=False), \
            Aiosmtpd(host="127.0.0.2", port=port) as healthy:
        w = World(str(tmp_path), dns, port)
        stuck = w.queue_msg(["x@tarpit.test"])
        d = w.start()
        try:
            time.sleep(0.5)  # the tar-pit's worker is waiting for a greeting
            t0 = time.monotonic()
            w.queue_msg(["y@a.test"])
            assert wait_for(lambda: len(healthy.envelopes) == 1, 10)
            assert time.monotonic() - t0 < 5
            assert stuck in [m["id"] for m in w.spool.queue()]
            # SIGTERM: the stuck delivery is abandoned within the grace
            # period, its claim released, the message still queued.
            t1 = time.monotonic()
            assert stop_daemon(d) == 0
            assert time.monotonic() - t1 < 15
        finally:
            if d.poll() is None:
                d.kill()
        assert [m["id"] for m in w.spool.queue()] == [stuck]
        assert w.spool.listdir("claim") == []


def test_a_dead_destination_is_backed_off_not_hammered(tmp_path, port):
    with dns_for(port, mx=[("dead.test", "mx.dead.test", 10)],
                 hosts={"mx.dead.test": "127.0.0.8"}) as dns, \
            Aiosmtpd(host="127.0.0.2", port=port) as healthy:
        w = World(str(tmp_path), dns, port, tiers="0 1s 2s",
                  extra="destination_backoff = 1h\n")
        first = w.queue_msg(["x@dead.test"])
        d = w.start()
        try:
            assert wait_for(lambda: "dead.test: no server answered; not tried again" in
                            w.logtext(), 20), w.logtext()
            second = w.queue_msg(["y@dead.test"])
            w.queue_msg(["z@a.test"])
            assert wait_for(lambda: len(healthy.envelopes) == 1, 10)
            time.sleep(3)  # the first one's next tier (1 s) has passed too
        finally:
            stop_daemon(d)
        log = w.logtext()
        # Neither the first message's retry nor the second message went to
        # the dead host while it was backed off: one attempt in all.
        assert log.count("to=<x@dead.test>") == 1 and "to=<y@dead.test>" not in log
        q = {m["id"]: m for m in w.spool.queue()}
        assert set(q) == {first, second}
        assert q[second]["recipients"][0]["attempts"] == 0


def test_a_worker_that_dies_defers_its_recipients(tmp_path, port):
    with dns_for(port, mx=[("tarpit.test", "mx.tarpit.test", 10)],
                 hosts={"mx.tarpit.test": "127.0.0.5"}) as dns, \
            SmtpSink("-W", "connect:600", host="127.0.0.5", port=port, greeting=False):
        w = World(str(tmp_path), dns, port, tiers="0 1h")
        qid = w.queue_msg(["x@tarpit.test"])
        d = w.start()
        try:
            def worker():
                r = subprocess.run(["pgrep", "-P", str(d.pid)], capture_output=True, text=True)
                return r.stdout.split()
            assert wait_for(lambda: worker(), 10)
            assert wait_for(lambda: w.spool.listdir("claim"), 10)  # handed out
            time.sleep(0.5)
            for pid in worker():  # the agents: the one with the session among them
                os.kill(int(pid), signal.SIGKILL)
            assert wait_for(lambda: "status=deferred" in w.logtext(), 10), w.logtext()
        finally:
            stop_daemon(d)
        assert "killed by signal 9" in w.logtext()
        q = w.spool.queue()
        assert [m["id"] for m in q] == [qid]
        r = q[0]["recipients"][0]
        assert r["state"] == "deferred" and r["attempts"] == 1  # next tier, not a retry loop


def test_the_daemon_as_pid_1_delivers(tmp_path, port):
    """In a container the daemon may be PID 1: agents are told their
    scheduler's pid (the old getppid() == 1 check deferred everything)."""
    with dns_for(port) as dns, Aiosmtpd() as smarthost:
        w = World(str(tmp_path), dns, port, extra=f"default_route = {smarthost.url()}\n")
        w.queue_msg(["x@a.test"])
        p = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", BIN, "daemon", "--once"],
                           env=w.spool.env, capture_output=True, timeout=60)
        assert p.returncode == 0, p.stderr
        assert [e[1] for e in smarthost.envelopes] == [["x@a.test"]]
        assert "status=sent" in w.logtext()


def test_an_agent_without_its_scheduler_delivers_nothing(tmp_path, port):
    """An agent told of a parent that is not its parent exits at once."""
    agent = os.path.join(os.path.dirname(BIN), "mailspool-deliver")
    with dns_for(port) as dns:
        w = World(str(tmp_path), dns, port)
        p = subprocess.run([agent, "--parent", "1", "-C", w.spool.conf], input=b"",
                           capture_output=True, timeout=30)
        assert p.returncode == 70 and p.stdout == b""


def test_route_overrides_mx(tmp_path, port):
    with dns_for(port) as dns, Aiosmtpd() as smarthost, Aiosmtpd(host="127.0.0.2", port=port) as mx1:
        w = World(str(tmp_path), dns, port,
                  extra=f"route..corp.test = {smarthost.url()}\nroute.a.test = mx\n"
                        f"default_route = {smarthost.url()}\n")
        w.queue_msg(["x@a.test"])
        w.queue_msg(["y@deep.corp.test"])
        w.queue_msg(["z@elsewhere.example"])
        w.once()
        assert [e[1] for e in mx1.envelopes] == [["x@a.test"]]
        assert sorted(e[1][0] for e in smarthost.envelopes) == ["y@deep.corp.test",
                                                                 "z@elsewhere.example"]


def test_qmtp_route_streams_the_group_to_mailfront(tmp_path, port):
    # The spool holds CRLF lines; mailfront takes only QMTP's LF encoding,
    # which the route asks for (encoding=to-lf): each CRLF goes as LF.
    with dns_for(port) as dns, Mailfront() as mf:
        w = World(str(tmp_path), dns, port,
                  extra=f"route.q.test = {mf.url()}&encoding=to-lf\n")
        ids = [w.queue_msg([f"u{i}@q.test", "v@q.test"],
                           body=b"Subject: q%d\r\n\r\nline one\r\n.dot\r\n" % i)
               for i in range(3)]
        w.once()
        got = mf.messages(expect=3)
        assert len(got) == 3
        for i, (sender, rcpts, data) in enumerate(got):
            assert sender == SENDER and rcpts == [f"u{i}@q.test", "v@q.test"]
            assert b"\r" not in data
            assert strip_received(data).startswith(b"Subject: q%d\nFrom: " % i)
            assert b"\n\tid %s; " % ids[i].encode() in data and b"\nMessage-ID: <" in data
            assert data.endswith(b"\n\nline one\n.dot\n")  # no dot-stuffing in QMTP
        assert w.spool.queue() == []
        assert w.logtext().count("status=sent") == 6


def test_many_messages_to_one_destination_use_pipelined_connections(tmp_path, port):
    with dns_for(port) as dns, Aiosmtpd(host="127.0.0.2", port=port) as mx1:
        w = World(str(tmp_path), dns, port, extra="connection_messages = 100\n"
                                                   "destination_concurrency = 3\n")
        files = []
        for i in range(250):
            f = tmp_path / f"m{i}"
            f.write_bytes(b"To: r%d@a.test\r\nSubject: %d\r\n\r\nbody\r\n" % (i, i))
            files.append(str(f))
        p = w.spool.ms("send", "-f", SENDER, "-t", "-q", *files)
        assert p.returncode == 0, p.stderr
        w.once()
        assert len(mx1.envelopes) == 250
        assert mx1.sessions == 3  # 250 messages: three connections, not 250
        assert w.spool.queue() == []


def test_flush_wakes_the_daemon_and_sighup_rereads(tmp_path, port):
    replies = {"later@a.test": "451 4.3.0 not now"}
    with dns_for(port) as dns, Aiosmtpd(host="127.0.0.2", port=port, rcpt_replies=replies) as mx1:
        w = World(str(tmp_path), dns, port, tiers="0 1h")
        qid = w.queue_msg(["later@a.test"])
        d = w.start()
        try:
            assert wait_for(lambda: "status=deferred" in w.logtext(), 20)
            replies.clear()
            time.sleep(1)
            assert mx1.envelopes == []  # due in an hour
            assert w.spool.ms("flush").returncode == 0
            assert wait_for(lambda: f"{qid}: removed" in w.logtext(), 10), w.logtext()
            d.send_signal(signal.SIGHUP)
            assert wait_for(lambda: "configuration reloaded" in w.logtext(), 10)
        finally:
            stop_daemon(d)
        assert len(mx1.envelopes) == 1


def make_messages(tmp_path, n, ndomains):
    files = []
    d = tmp_path / "msgs"
    d.mkdir()
    for i in range(n):
        f = d / f"m{i}"
        f.write_bytes(b"To: u%d@d%d.test\r\nSubject: n\r\nX-Seq: %d\r\n\r\nbody %d\r\n"
                      % (i, i % ndomains, i, i))
        files.append(str(f))
    return files


def queue_files(w, files):
    for k in range(0, len(files), 2000):
        p = w.spool.ms("send", "-f", SENDER, "-t", "-q", *files[k:k + 2000])
        assert p.returncode == 0, p.stderr


def seqs(sinks):
    out = []
    for s in sinks:
        for tx in s.transactions():
            out += re.findall(rb"X-Seq: (\d+)", tx)
    return [int(x) for x in out]


def test_three_daemons_deliver_10000_messages_for_100_domains_exactly_once(tmp_path, port):
    ndom = 100
    # Thirty MX hosts (on two addresses): thirty destinations, which the
    # daemons share out between them (one live node delivers to each).
    mx = [(f"d{i}.test", f"mx{i % 30}.d.test", 10) for i in range(ndom)]
    mxhosts = {f"mx{k}.d.test": "127.0.0.2" if k % 2 == 0 else "127.0.0.3" for k in range(30)}
    with Dnsmasq(mx=mx, hosts=mxhosts) as dns, \
            SmtpSink(host="127.0.0.2", port=port) as s1, SmtpSink(host="127.0.0.3", port=port) as s2:
        # Three daemons share one spool: each holds at most 4,000 claims
        # (the default window, 20,000, lets the first take everything).
        w = World(str(tmp_path), dns, port, extra="claim_lease = 30s\nclaim_window = 4000\n")
        files = make_messages(tmp_path, 10000, ndom)
        queue_files(w, files)
        ds = [w.start("--node", f"node{i}") for i in range(3)]
        try:
            assert wait_for(lambda: w.spool.listdir("env") == [], 240, 0.5)
        finally:
            problems = []
            for d in ds:
                try:
                    stop_daemon(d)
                except AssertionError as e:
                    problems.append(str(e))
            assert not problems, problems
        got = seqs([s1, s2])
        assert len(got) == 10000
        assert sorted(got) == list(range(10000))  # each exactly once
        log = w.logtext()
        # All three took part.
        assert len(set(re.findall(r"mailspool\[(\d+)\]: \w+: to=", log))) == 3


def test_kill_9_mid_run_loses_nothing(tmp_path, port):
    ndom = 10
    mx = [(f"d{i}.test", "mx0.d.test", 10) for i in range(ndom)]
    with Dnsmasq(mx=mx, hosts={"mx0.d.test": "127.0.0.2"}) as dns, \
            SmtpSink("-W", "data:1", host="127.0.0.2", port=port) as sink:
        # One second per DATA: ten connections (the domains share their MX,
        # twenty messages earn a connection) at about ten messages a
        # second, so the kill lands mid-run.
        w = World(str(tmp_path), dns, port,
                  extra="claim_lease = 2s\nclock_skew = 0\nconnection_messages = 20\n")
        files = make_messages(tmp_path, 200, ndom)
        queue_files(w, files)
        a = w.start("--node", "victim")
        assert wait_for(lambda: len(seqs([sink])) > 20, 60, 0.2)
        a.kill()  # SIGKILL: no cleanup; its workers die with it
        a.wait()
        assert w.spool.listdir("claim")  # it held claims
        b = w.start("--node", "heir")
        try:
            assert wait_for(lambda: w.spool.listdir("env") == [], 120, 0.5), w.logtext()[-2000:]
        finally:
            stop_daemon(b)
        got = seqs([sink])
        assert set(got) == set(range(200))  # nothing lost (some may come twice)
        assert w.spool.listdir("claim") == []


# ---- delivery modes -------------------------------------------------------

def test_mode_now_reports_every_recipient_and_queues_nothing(tmp_path, port):
    replies = {"bad@a.test": "550 5.1.1 unknown user", "later@a.test": "451 4.3.0 busy"}
    with dns_for(port) as dns, Aiosmtpd(host="127.0.0.2", port=port, rcpt_replies=replies) as mx1:
        w = World(str(tmp_path), dns, port)
        ok = w.spool.ms("send", "--mode", "now", "-f", SENDER, "--to", "good@a.test",
                        stdin=b"Subject: x\r\n\r\nbody\r\n")
        assert ok.returncode == 0, ok.stderr
        assert b"<good@a.test> delivered via mx1.a.test[127.0.0.2]" in ok.stdout
        bad = w.spool.ms("send", "--mode", "now", "--json", "-f", SENDER, "--to", "bad@a.test",
                         "--to", "ok2@a.test", stdin=b"Subject: y\r\n\r\nbody\r\n")
        assert bad.returncode == 69
        import json
        res = json.loads(bad.stdout)["delivered"][0]
        by = {r["address"]: r for r in res["recipients"]}
        assert by["bad@a.test"]["state"] == "failed" and by["bad@a.test"]["code"] == 550
        assert by["bad@a.test"]["enhanced"] == "5.1.1"
        assert by["ok2@a.test"]["state"] == "delivered"
        tmp = w.spool.ms("send", "--mode", "now", "-f", SENDER, "--to", "later@a.test",
                         stdin=b"Subject: z\r\n\r\nbody\r\n")
        assert tmp.returncode == 75
        assert b"<later@a.test> deferred" in tmp.stderr
        assert w.spool.queue() == [] and w.spool.listdir("claim") == []
        assert [e[1] for e in mx1.envelopes] == [["good@a.test"], ["ok2@a.test"]]
        # sendmail -odi is the same mode.
        p = w.spool.run([w.spool.sendmail, "-odi", "-f", SENDER, "bad@a.test"],
                        stdin=b"Subject: s\n\nbody\n")
        assert p.returncode == 69 and b"<bad@a.test> failed" in p.stderr
        assert w.spool.queue() == []


def test_mode_background_queues_only_temporary_failures(tmp_path, port):
    replies = {"bad@a.test": "550 5.1.1 unknown user", "later@a.test": "451 4.3.0 busy"}
    with dns_for(port) as dns, Aiosmtpd(host="127.0.0.9", port=port) as sender_mx, \
            Aiosmtpd(host="127.0.0.2", port=port, rcpt_replies=replies) as mx1:
        w = World(str(tmp_path), dns, port)
        p = w.spool.ms("send", "--mode", "background", "-f", SENDER, "--to", "good@a.test",
                       "--to", "later@a.test", stdin=b"Subject: x\r\n\r\nbody\r\n")
        assert p.returncode == 0, p.stderr
        assert b"<later@a.test> deferred" in p.stderr and b"queued for retry" in p.stderr
        q = w.spool.queue()
        assert len(q) == 1
        st = {r["address"]: r["state"] for r in q[0]["recipients"]}
        assert st == {"good@a.test": "delivered", "later@a.test": "deferred"}
        p = w.spool.run([w.spool.sendmail, "-odb", "-f", SENDER, "bad@a.test"],
                        stdin=b"Subject: s\n\nbody\n")
        assert p.returncode == 69 and b"<bad@a.test> failed" in p.stderr
        assert len(w.spool.queue()) == 1  # the failed one is reported, not queued
        assert sender_mx.envelopes == []   # ... and not bounced: the caller was told
        assert [e[1] for e in mx1.envelopes] == [["good@a.test"]]


def test_flush_ends_the_back_off_of_a_dead_destination(tmp_path, port):
    """`mailspool flush` makes mail due now, destinations that were down
    included (they used to wait out their back-off, here an hour)."""
    with dns_for(port, mx=[("dead.test", "mx.dead.test", 10)],
                 hosts={"mx.dead.test": "127.0.0.8"}) as dns:
        w = World(str(tmp_path), dns, port, tiers="0 1s 2s", extra="destination_backoff = 1h\n")
        w.queue_msg(["x@dead.test"])
        d = w.start()
        try:
            assert wait_for(lambda: "dead.test: no server answered; not tried again" in
                            w.logtext(), 20), w.logtext()
            with Aiosmtpd(host="127.0.0.8", port=port) as back:  # it is up again
                time.sleep(2)  # past the 1 s tier: only the back-off holds it now
                assert back.envelopes == []
                p = w.spool.ms("flush")
                assert p.returncode == 0, p.stderr
                assert wait_for(lambda: len(back.envelopes) == 1, 20), w.logtext()
        finally:
            stop_daemon(d)
        assert "flush: the back-off of 1 destination(s) ends now" in w.logtext()
        assert w.spool.queue() == []


def test_a_second_daemon_with_the_same_node_name_is_refused(tmp_path, port):
    with dns_for(port) as dns:
        w = World(str(tmp_path), dns, port)
        d = w.start("--node", "alpha")
        try:
            assert wait_for(lambda: "daemon started: node alpha" in w.logtext(), 20)
            p = w.spool.run([BIN, "daemon", "--foreground", "--node", "alpha"], timeout=30)
            assert p.returncode == 75, p.stderr
            assert f"another daemon (pid {d.pid}) runs with node name alpha" in \
                p.stderr.decode()
            other = w.start("--node", "beta")  # another name on the same spool: fine
            try:
                assert wait_for(lambda: "daemon started: node beta" in w.logtext(), 20)
            finally:
                stop_daemon(other)
        finally:
            stop_daemon(d)


def test_sighup_reopens_the_log_file_after_a_rename(tmp_path, port):
    """logrotate without copytruncate: rename, SIGHUP, and the next lines
    go to a new file of that name (they used to go on into the old one)."""
    with dns_for(port) as dns, Aiosmtpd(host="127.0.0.2", port=port) as mx1:
        w = World(str(tmp_path), dns, port)
        d = w.start()
        try:
            assert wait_for(lambda: "daemon started" in w.logtext(), 20)
            os.rename(w.log, w.log + ".1")
            d.send_signal(signal.SIGHUP)
            assert wait_for(lambda: os.path.exists(w.log) and "configuration reloaded" in
                            w.logtext(), 20)
            w.queue_msg(["after@a.test"])
            assert wait_for(lambda: "to=<after@a.test>" in w.logtext(), 20), w.logtext()
        finally:
            stop_daemon(d)
        with open(w.log + ".1") as f:
            old = f.read()
        assert "daemon started" in old and "after@a.test" not in old
        assert len(mx1.envelopes) == 1


def test_json_log_lines(tmp_path, port):
    """log_format = json: one JSON object per line, the delivery records
    with their fields, daemon events as text; a reply with quotes and
    backslashes stays one valid record."""
    replies = {"bad@a.test": '550 5.1.1 <bad@a.test> "no such" \\ user'}
    with dns_for(port) as dns, Aiosmtpd(host="127.0.0.2", port=port, rcpt_replies=replies):
        w = World(str(tmp_path), dns, port, extra="log_format = json\n")
        qid = w.queue_msg(["good@a.test", "bad@a.test"], sender="")
        w.once()
        with open(w.log) as f:
            recs = [json.loads(line) for line in f]
        assert all(r["ts"].endswith("Z") and r["pid"] > 0 for r in recs)
        by = {r.get("to"): r for r in recs if r.get("event") == "delivery"}
        good, bad = by["good@a.test"], by["bad@a.test"]
        assert good["id"] == qid and good["status"] == "sent" and good["code"] == 250
        assert good["relay"].startswith("mx1.a.test[127.0.0.2]") and good["attempt"] == 1
        assert good["tls"] == "none" and "tls_protocol" not in good  # aiosmtpd: no STARTTLS
        assert bad["status"] == "bounced" and bad["dsn"] == "5.1.1" and bad["code"] == 550
        assert bad["text"] == '5.1.1 <bad@a.test> "no such" \\ user'
        assert any(r.get("id") == qid and r.get("text") == "removed" for r in recs)
        assert any(r.get("text", "").startswith("daemon started") for r in recs)


def test_delay_warning_once_per_message(tmp_path, port):
    """delay_warning: a message still deferred after that long brings its
    sender one RFC 3464 "delayed" report, and only one; NOTIFY without
    DELAY asks for none; delivery goes on."""
    replies = {"later@a.test": "451 4.3.0 try again later", "quiet@a.test": "451 4.3.0 busy"}
    with dns_for(port) as dns, Aiosmtpd(host="127.0.0.9", port=port) as sender_mx, \
            Aiosmtpd(host="127.0.0.2", port=port, rcpt_replies=replies), \
            Aiosmtpd(host="127.0.0.3", port=port, rcpt_replies=replies):
        w = World(str(tmp_path), dns, port, tiers="0 1s 2s 3s 4s 5s 6s 1h",
                  extra="delay_warning = 3s\n")
        t0 = time.time()
        qid = w.queue_msg(["later@a.test"])
        w.queue_msg(["quiet@a.test"], b"Subject: quiet\r\n\r\nx\r\n", SENDER, "--notify",
                    "FAILURE")
        attempts = 0
        while not sender_mx.envelopes and time.time() - t0 < 30:
            started = time.time()
            w.once()
            attempts += 1
            if started - t0 < 2:      # younger than delay_warning (1 s of clock rounding)
                assert sender_mx.envelopes == [], w.logtext()
            time.sleep(1)
        assert attempts >= 2 and len(sender_mx.envelopes) == 1, w.logtext()
        for _ in range(3):            # deferred again and again: no second warning
            time.sleep(1)
            w.once()
        assert len(sender_mx.envelopes) == 1, w.logtext()
        frm, to, raw, _ = sender_mx.envelopes[0]
        assert frm == "<>" and to == [SENDER]
        msg = parse(raw)
        assert msg["Subject"] == "Delayed Mail (still being retried)"
        status = raw.decode()
        assert "Action: delayed" in status and "Status: 4.3.0" in status
        assert "Final-Recipient: rfc822; later@a.test" in status
        assert "Will-Retry-Until: " in status and "quiet@a.test" not in status
        assert f"{qid}: sender delay notification:" in w.logtext()
        states = {r["address"]: r["state"] for m in w.spool.queue() for r in m["recipients"]}
        assert states == {"later@a.test": "deferred", "quiet@a.test": "deferred"}


def test_route_and_relay_names_resolve_through_dns_servers(tmp_path, port):
    """A route URL's and a relay's host names are looked up with c-ares at
    dns_servers (here dnsmasq; the system resolver has never heard of
    them), and a name server that does not answer costs dns_timeout, then
    the message waits (it used to be a blocking getaddrinfo that ignored
    both)."""
    with dns_for(port, hosts={"smarthost.test": "127.0.0.5", "relayhost.test": "127.0.0.6"},
                 dead=["slowdns.test"]) as dns, \
            Aiosmtpd(host="127.0.0.5", port=port) as smart, \
            Aiosmtpd(host="127.0.0.6", port=port) as relayed:
        w = World(str(tmp_path), dns, port,
                  extra=f"route.r.test = smtp://smarthost.test:{port}\n"
                        f"route.q.test = smtp://mx.slowdns.test:{port}\n"
                        f"relay.hub.url = smtp://relayhost.test:{port}\n"
                        "relay.hub.tls = may\nroute.h.test = hub\n")
        for r in ("a@r.test", "b@h.test", "c@q.test"):
            w.queue_msg([r])
        w.once()
        assert [e[1] for e in smart.envelopes] == [["a@r.test"]]
        assert [e[1] for e in relayed.envelopes] == [["b@h.test"]]
        assert "smarthost.test[127.0.0.5]" in w.logtext()
        q = w.spool.queue()
        assert [r["address"] for m in q for r in m["recipients"]] == ["c@q.test"]
        assert q[0]["recipients"][0]["state"] == "deferred"
        assert "cannot resolve mx.slowdns.test" in w.logtext()


def test_tls_recorded_per_attempt(tmp_path, port, certs):
    """Every delivery log line says how the session was secured - verified
    (a relay checked against its CA), unverified (opportunistic STARTTLS
    to a self-signed server), none (no STARTTLS) - with protocol and
    cipher; the JSON log too; and `show` keeps it per attempt."""
    import ssl
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(*certs.good)
    selfctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    selfctx.load_cert_chain(*certs.selfsigned)
    replies = {"later@u.test": "451 4.3.0 come back later"}
    with dns_for(port) as dns, \
            Aiosmtpd(port=free_port(), tls_context=ctx) as good, \
            Aiosmtpd(port=free_port(), tls_context=selfctx, rcpt_replies=replies) as selfs, \
            Aiosmtpd(port=free_port()) as plain:
        w = World(str(tmp_path), dns, port,
                  extra=f"relay.hub.url = smtp://127.0.0.1:{good.port}\nrelay.hub.tls = verify\n"
                        f"relay.hub.tls_ca_file = {certs.ca}\nroute.v.test = hub\n"
                        f"route.u.test = smtp://127.0.0.1:{selfs.port}\n"
                        f"route.p.test = smtp://127.0.0.1:{plain.port}\n")
        for r in ("a@v.test", "b@u.test", "c@p.test"):
            w.queue_msg([r])
        later = w.queue_msg(["later@u.test"])
        w.once()
        assert len(good.envelopes) == len(selfs.envelopes) == len(plain.envelopes) == 1
        log = w.logtext()
        tls = dict(re.findall(r"to=<([^>]+)>, relay=[^,]+, tls=([^,]+), delay=", log))
        assert re.fullmatch(r"verified \(TLSv1\.[23] \S+\)", tls["a@v.test"]), log
        assert re.fullmatch(r"unverified \(TLSv1\.[23] \S+\)", tls["b@u.test"]), log
        assert tls["c@p.test"] == "none"
        assert tls["later@u.test"].startswith("unverified (")
        p = w.spool.ms("show", later)
        assert re.search(rb"451 4\.3\.0 come back later  \[tls unverified TLSv1\.[23] \S+\]",
                         p.stdout), p.stdout
        p = w.spool.ms("show", "--json", later)
        hist = json.loads(p.stdout)["recipients"][0]["history"]
        assert hist[0]["tls"].startswith("unverified TLSv1.")


def test_tls_policy_per_destination(tmp_path, port, certs):
    """tls_security_level and destination.PATTERN.tls for MX delivery:
    encrypt to a server without STARTTLS defers, verify against a
    self-signed certificate defers, verify with tls_ca_file and an MX host
    whose name the certificate carries delivers (matched by an MX host
    pattern); the default stays opportunistic.  A failed required policy
    says why."""
    import ssl
    good = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    good.load_cert_chain(*certs.good)
    selfs = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    selfs.load_cert_chain(*certs.selfsigned)
    mx = [("plain.test", "mx.plain.test", 10), ("self.test", "mx.self.test", 10),
          ("good.test", "mail.example.test", 10), ("may.test", "mx.self.test", 10)]
    hosts = {"mx.plain.test": "127.0.0.11", "mx.self.test": "127.0.0.12",
             "mail.example.test": "127.0.0.13"}
    with dns_for(port, mx=mx, hosts=hosts) as dns, \
            Aiosmtpd(host="127.0.0.11", port=port) as plain, \
            Aiosmtpd(host="127.0.0.12", port=port, tls_context=selfs) as selfsrv, \
            Aiosmtpd(host="127.0.0.13", port=port, tls_context=good) as goodsrv:
        w = World(str(tmp_path), dns, port,
                  extra="destination.plain.test.tls = encrypt\n"
                        "destination.self.test.tls = verify\n"
                        "destination.*.example.test.tls = verify\n"
                        f"tls_ca_file = {certs.ca}\n")
        for r in ("a@plain.test", "b@self.test", "c@good.test", "d@may.test"):
            w.queue_msg([r])
        w.once()
        assert plain.envelopes == []
        assert [e[1] for e in selfsrv.envelopes] == [["d@may.test"]]  # may: unverified is fine
        assert [e[1] for e in goodsrv.envelopes] == [["c@good.test"]]
        log = w.logtext()
        assert re.search(r"to=<c@good\.test>, relay=mail\.example\.test\[127\.0\.0\.13\]:\d+, "
                         r"tls=verified \(TLSv1\.[23] ", log), log
        assert re.search(r"to=<d@may\.test>, [^\n]*tls=unverified ", log), log
        q = {m["recipients"][0]["address"]: m["recipients"][0] for m in w.spool.queue()}
        assert set(q) == {"a@plain.test", "b@self.test"}
        a, b = q["a@plain.test"], q["b@self.test"]
        assert a["state"] == "deferred" and "does not offer STARTTLS" in a["last_reply"]["text"]
        assert b["state"] == "deferred" and "certificate not trusted" in b["last_reply"]["text"]
        assert a["last_reply"]["enhanced"] == b["last_reply"]["enhanced"] == "4.7.5"
        # A policy failure is no dead destination: nothing was backed off.
        assert "not tried again" not in log
    bad = Spool(str(tmp_path / "bad"), "tls_security_level = strict\n")
    p = bad.run([bad.sendmail, "x@y.test"], "Subject: s\n\nb\n")
    assert p.returncode == 64 and b"wants none, may, encrypt, verify, dane" in p.stderr
