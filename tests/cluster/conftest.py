"""Fixtures of the cluster suite (make check-cluster): one GlusterFS
replica volume with three host mounts for the whole module, and for each
test a spool of its own on it with one configuration per host."""
import collections
import os
import re
import signal
import subprocess
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cluster import Cluster, Dns, Receiver, host_addr, host_ns, FAKETIME  # noqa: E402

BIN = os.environ.get("MAILSPOOL_BIN", os.path.join(os.path.dirname(__file__),
                                                      "../../build/mailspool"))
SENDER = "sender@example.test"
NDOM = 30          # domains, each with an MX host of its own (10.231.1.N)
PORT = 2525


def mx_records(ndom=NDOM):
    mx = [(f"d{i}.test", f"mx{i}.d.test", 10) for i in range(ndom)]
    hosts = {f"mx{i}.d.test": f"10.231.1.{i + 1}" for i in range(ndom)}
    return mx, hosts


@pytest.fixture(scope="module")
def cluster():
    if os.geteuid() != 0:
        pytest.skip("the cluster suite needs root (namespaces, FUSE mounts)")
    with Cluster(hosts=3, extra_addrs=NDOM + 10) as cl:
        mx, hosts = mx_records()
        mx.append(("dead.test", "mxdead.d.test", 10))
        hosts["mxdead.d.test"] = "10.231.1.40"
        with Dns(cl, mx=mx, hosts=hosts) as dns:
            cl.dns = dns
            yield cl


class Hosts:
    """One spool on the shared volume, seen by each host through its own
    mount; one configuration file and log per host (kept locally)."""

    def __init__(self, cl, name, tmp_path, extra=""):
        self.cl = cl
        self.local = str(tmp_path)
        self.spool = {}
        self.conf = {}
        self.log = {}
        self.procs = {}
        # The spool is made once, from host 1, as an administrator would
        # (mailspool setup): three GlusterFS clients making the same new
        # directory at the same instant can leave it in split-brain (EIO).
        for sub in ("", "tmp", "data", "env", "claim", "corrupt", "wake"):
            os.makedirs(os.path.join(cl.mounts[1], name, sub), mode=0o700, exist_ok=True)
        for i in (1, 2, 3):
            self.spool[i] = os.path.join(cl.mounts[i], name)
            self.conf[i] = os.path.join(self.local, f"h{i}.conf")
            self.log[i] = os.path.join(self.local, f"h{i}.log")
            with open(self.conf[i], "w") as f:
                f.write(f"spool_dir = {self.spool[i]}\nhostname = h{i}.example.test\n"
                        f"min_free_space = 0\nmail_owner = root\n"
                        f"dns_servers = {cl.dns.servers()}\nmx_port = {PORT}\n"
                        f"log_file = {self.log[i]}\nretry_tiers = 0 30m 4h\n"
                        f"dns_timeout = 3s\nconnect_timeout = 5s\n"
                        f"wake_address = {host_addr(i)}\n{extra}")

    def env(self, i, skew=None):
        e = dict(os.environ, MAILSPOOL_CONFIG=self.conf[i])
        if skew:
            e.update(LD_PRELOAD=FAKETIME, FAKETIME=skew, DONT_FAKE_MONOTONIC="1")
        return e

    def ms(self, i, *args, stdin=b"", skew=None, timeout=300):
        return self.cl.run(host_ns(i), [BIN] + list(args), env=self.env(i, skew), input=stdin,
                           timeout=timeout)

    def send_files(self, i, files, skew=None):
        for k in range(0, len(files), 1000):
            p = self.ms(i, "send", "-f", SENDER, "-t", "-q", *files[k:k + 1000], skew=skew)
            assert p.returncode == 0, p.stderr

    def start(self, i, *args, skew=None):
        err = open(os.path.join(self.local, f"daemon-h{i}.err"), "ab")
        p = self.cl.popen(host_ns(i), [BIN, "daemon", "--foreground", "--node", f"h{i}"] +
                          list(args), env=self.env(i, skew), stdout=subprocess.DEVNULL,
                          stderr=err)
        self.procs[i] = p
        return p

    def start_all(self, skew_host=None, skew=None):
        """A daemon on each host, each started and seeing all three."""
        for i in (1, 2, 3):
            self.start(i, skew=skew if i == skew_host else None)
        assert all(self.started(i) for i in (1, 2, 3)), self.logtext()[-2000:]

    def started(self, i, timeout=30):
        return wait_for(lambda: "daemon started" in self.logtext(i), timeout)

    def stop_all(self):
        problems = []
        for i, p in self.procs.items():
            p.send_signal(signal.SIGCONT)  # (should it be stopped)
            alive = p.poll() is None
            p.terminate()
            try:
                rc = p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                rc = p.wait()
            if alive and rc != 0:
                problems.append(f"host {i} exited {rc}: {self.errtext(i)[-2000:]}")
        self.procs = {}
        return problems

    def logtext(self, i=None):
        out = ""
        for k in ([i] if i else (1, 2, 3)):
            try:
                with open(self.log[k]) as f:
                    out += f.read()
            except FileNotFoundError:
                pass
        return out

    def errtext(self, i):
        try:
            with open(os.path.join(self.local, f"daemon-h{i}.err")) as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def listdir(self, sub):
        try:
            return sorted(os.listdir(os.path.join(self.spool[1], sub)))
        except FileNotFoundError:
            return []

    def claims_of(self, node):
        """Claims whose token names `node` ("NODE PID TIME")."""
        n = 0
        d = os.path.join(self.spool[1], "claim")
        for name in self.listdir("claim"):
            try:
                with open(os.path.join(d, name)) as f:
                    n += f.read(64).split(" ")[0] == node
            except OSError:
                pass
        return n

    def metrics(self, i, port):
        """Host i's daemon's counters and gauges ({name{labels}: value}),
        scraped from inside its namespace (metrics_listen on its loopback)."""
        code = ("import urllib.request,sys;sys.stdout.write(urllib.request.urlopen("
                f"'http://127.0.0.1:{port}/metrics',timeout=10).read().decode())")
        p = self.cl.run(host_ns(i), [sys.executable, "-c", code], timeout=30)
        assert p.returncode == 0, p.stderr
        out = {}
        for line in p.stdout.decode().splitlines():
            if line and not line.startswith("#"):
                name, _, v = line.rpartition(" ")
                out[name] = float(v)
        return out

    def sent_counts(self):
        """How often each queue id was logged as sent, all hosts."""
        return collections.Counter(re.findall(r": (\w+): to=<[^>]*>.*status=sent",
                                              self.logtext()))


def wait_for(cond, timeout=30.0, step=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return False


def make_messages(tmp_path, n, ndom=NDOM, first=0, domain=None):
    d = tmp_path / f"msgs{first}"
    d.mkdir(exist_ok=True)
    files = []
    for i in range(first, first + n):
        f = d / f"m{i}"
        dom = domain or f"d{i % ndom}.test"
        f.write_bytes(b"To: u%d@%s\r\nSubject: n\r\nX-Seq: %d\r\n\r\nbody %d\r\n"
                      % (i, dom.encode(), i, i))
        files.append(str(f))
    return files


@pytest.fixture
def receiver(cluster):
    with Receiver(cluster, PORT) as r:
        yield r
