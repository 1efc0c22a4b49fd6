"""IPv4 and IPv6: Happy Eyeballs (RFC 8305), inet_protocols,
address_preference and bind_address, in a network namespace the test
makes.  Inside it a veth pair: v0 holds the addresses, and an IPv6 prefix
is routed through a gateway with a made-up link address, so a SYN to
fd00:dead::25 leaves v0 and is dropped by v1 without a word, as on a
network whose IPv6 path is broken.  /etc/netns/NS/hosts (which
`ip netns exec` mounts over /etc/hosts) gives the name dual.test both
addresses, IPv6 first; dnsmasq inside the namespace gives he.test an MX
with both.  The server is aiosmtpd inside the namespace, recording the
address each client came from."""
import json
import os
import shutil
import subprocess
import time
import uuid

import pytest

from conftest import BIN, Spool

RECORDER = r"""
import json, sys, time
from aiosmtpd.controller import Controller
out, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
class Handler:
    async def handle_DATA(self, server, session, envelope):
        with open(out, "a") as f:
            f.write(json.dumps({"peer": session.peer[0], "to": envelope.rcpt_tos}) + "\n")
        return "250 2.0.0 stored"
c = Controller(Handler(), hostname=host, port=port)
c.start()
open(out + ".ready", "w").close()
while True:
    time.sleep(3600)
"""

PORT = 2525
DEAD6 = "fd00:dead::25"


class Netns:
    def __init__(self, tmp):
        self.name = "ms-he-" + uuid.uuid4().hex[:8]
        self.tmp = tmp
        self.procs = []

    def sh(self, *argv, check=True):
        return subprocess.run(list(argv), check=check, capture_output=True)

    def exec_argv(self, argv):
        return ["ip", "netns", "exec", self.name] + list(argv)

    def __enter__(self):
        self.sh("ip", "netns", "add", self.name)
        ns = self.exec_argv
        self.sh(*ns(["ip", "link", "set", "lo", "up"]))
        self.sh(*ns(["ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1"]))
        self.sh(*ns(["ip", "link", "set", "v0", "up"]))
        self.sh(*ns(["ip", "link", "set", "v1", "up"]))
        for a in ("10.9.0.1/24", "10.9.0.2/24", "10.9.0.3/24"):
            self.sh(*ns(["ip", "addr", "add", a, "dev", "v0"]))
        self.sh(*ns(["ip", "-6", "addr", "add", "fd00:1::1/64", "dev", "v0", "nodad"]))
        # The broken IPv6 path: through a "router" whose link address
        # nobody has; v1 drops what is not for it.
        self.sh(*ns(["ip", "-6", "neigh", "add", "fd00:1::99", "lladdr", "02:00:00:00:00:99",
                     "dev", "v0", "nud", "permanent"]))
        self.sh(*ns(["ip", "-6", "route", "add", "fd00:dead::/64", "via", "fd00:1::99",
                     "dev", "v0"]))
        self.etc = f"/etc/netns/{self.name}"
        os.makedirs(self.etc)
        with open(os.path.join(self.etc, "hosts"), "w") as f:
            f.write(f"127.0.0.1 localhost\n{DEAD6} dual.test\n10.9.0.1 dual.test\n"
                    "fd00:1::1 v6ok.test\n10.9.0.1 v6ok.test\n")
        return self

    def start(self, argv, ready=None):
        p = subprocess.Popen(self.exec_argv(argv), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        self.procs.append(p)
        deadline = time.monotonic() + 15
        while ready and not os.path.exists(ready):
            assert p.poll() is None and time.monotonic() < deadline, argv
            time.sleep(0.05)
        return p

    def recorder(self, host):
        out = os.path.join(self.tmp, f"rec-{host.replace(':', '_')}.jsonl")
        self.start(["/usr/bin/python3", "-c", RECORDER, out, host, str(PORT)], out + ".ready")
        return out

    def run(self, argv, env, timeout=90):
        return subprocess.run(self.exec_argv(argv), capture_output=True, env=env,
                              timeout=timeout)

    def __exit__(self, *exc):
        for p in self.procs:
            p.kill()
            p.wait()
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)
        shutil.rmtree(self.etc, ignore_errors=True)


def records(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


@pytest.fixture
def ns(tmp_path):
    if os.geteuid() != 0 or not shutil.which("ip"):
        pytest.skip("needs root and iproute2 for a network namespace")
    with Netns(str(tmp_path)) as n:
        yield n


def send(ns, url, *args, timeout=90):
    argv = [BIN, "send", "--via", url, "-f", "a@example.test", "--to", "b@example.test",
            "--json"] + list(args)
    p = subprocess.run(ns.exec_argv(argv), input=b"Subject: he\r\n\r\nbody\r\n",
                       capture_output=True, timeout=timeout)
    return p


def test_ipv4_wins_the_race_when_ipv6_is_blackholed(ns):
    rec = ns.recorder("10.9.0.1")
    t0 = time.monotonic()
    p = send(ns, f"smtp://dual.test:{PORT}", "--connect-timeout", "40", "--bind-address",
             "10.9.0.2")
    took = time.monotonic() - t0
    assert p.returncode == 0, p.stderr
    # Tried one at a time, the IPv6 attempt would hold the connection
    # for the whole 40 s connect timeout; raced, IPv4 starts 250 ms later.
    assert took < 20, took
    assert records(rec) == [{"peer": "10.9.0.2", "to": ["b@example.test"]}]


def test_one_family_only(ns):
    ns.recorder("10.9.0.1")
    p = send(ns, f"smtp://dual.test:{PORT}", "-6", "--connect-timeout", "2")
    assert p.returncode == 75
    assert f"({DEAD6}): Connection timed out" in p.stdout.decode() + p.stderr.decode()
    p = send(ns, f"smtp://dual.test:{PORT}", "-4")
    assert p.returncode == 0, p.stderr


def test_a_working_ipv6_path_is_used_first(ns):
    rec4, rec6 = ns.recorder("10.9.0.1"), ns.recorder("fd00:1::1")
    p = send(ns, f"smtp://v6ok.test:{PORT}", "--bind-address", "10.9.0.3,[fd00:1::1]")
    assert p.returncode == 0, p.stderr
    assert not os.path.exists(rec4) and records(rec6)[0]["peer"] == "fd00:1::1"


def test_daemon_mx_race_preference_and_bind_address(ns, tmp_path):
    """The daemon's MX path: he.test's MX host has an IPv6 address that is
    blackholed and an IPv4 one; its addresses race, and the server sees the
    destination's bind_address (the global one elsewhere)."""
    rec = ns.recorder("10.9.0.1")
    dns_port = 5353
    pid = os.path.join(str(tmp_path), "dnsmasq.pid")
    ns.start(["dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts",
              f"--port={dns_port}", "--listen-address=127.0.0.1", "--bind-interfaces",
              f"--pid-file={pid}", "--user=root", "--local=/test/",
              "--mx-host=he.test,mx.he.test,10", "--mx-host=other.test,mx.he.test,10",
              f"--host-record=mx.he.test,10.9.0.1,{DEAD6}"], ready=pid)
    time.sleep(0.3)
    sp = Spool(str(tmp_path / "s"),
               f"dns_servers = 127.0.0.1:{dns_port}\nmx_port = {PORT}\n"
               f"log_file = {tmp_path}/log\nconnect_timeout = 40s\n"
               "address_preference = ipv6\nbind_address = 10.9.0.3\n"
               "destination.he.test.bind_address = 10.9.0.2\n")
    for rcpt in ("x@he.test", "y@other.test"):
        q = sp.ms("send", "-f", "a@example.test", "--to", rcpt,
                  stdin=b"Subject: mx\r\n\r\nbody\r\n")
        assert q.returncode == 0, q.stderr
    t0 = time.monotonic()
    p = ns.run([BIN, "daemon", "--once"], env=sp.env)
    assert p.returncode == 0, p.stderr
    assert time.monotonic() - t0 < 30
    got = {r["to"][0]: r["peer"] for r in records(rec)}
    assert got == {"x@he.test": "10.9.0.2", "y@other.test": "10.9.0.3"}
    log = open(f"{tmp_path}/log").read()
    assert "relay=mx.he.test[10.9.0.1]" in log
