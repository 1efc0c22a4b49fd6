"""Several hosts sharing one spool on a real distributed file system, all on
this machine: a GlusterFS volume whose glusterd and bricks run in a
"server" network namespace, and one FUSE mount per "host" namespace (each
mount's client process runs in its host's namespace, so every file
operation crosses TCP as between real hosts), joined by veth pairs on a
bridge.  Addresses exist only inside those namespaces (10.231.0.0/16).

The server namespace also runs what the daemons deliver to and ask: a
dnsmasq for the .test names and recording receivers (recorder.py).  Used
by tests/cluster (make check-cluster) and bench/cluster_bench.py.

Needs root, glusterfs-server, glusterfs-client, iproute2, dnsmasq,
python3-aiosmtpd and (for a skewed host) libfaketime.
"""
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from xml.etree import ElementTree

HERE = os.path.dirname(os.path.abspath(__file__))
PREFIX = "mscl"
SRV = f"{PREFIX}-srv"
NET = "10.231"
SRV_ADDR = f"{NET}.0.1"
# With latency: the address the clients know the GlusterFS server by (its
# bricks listen on it).  The server has it, and each host namespace has it
# on its loopback too, where latency proxies listen on glusterd's and the
# bricks' ports.  A proxy's own connections leave from the host's address,
# which a routing rule sends to the real LAT_ADDR over the veth (the
# replies' local-looking source accepted there): every file-system round
# trip then costs the given delay twice.
LAT_ADDR = f"{NET}.0.2"
LATPROXY = os.path.join(os.path.dirname(os.path.dirname(HERE)), "build", "bench", "latproxy")
FAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1"

# Every client-side cache GlusterFS has (fscheck.h names the same).
CACHES_OFF = ["performance.quick-read", "performance.open-behind", "performance.stat-prefetch",
              "performance.write-behind", "performance.io-cache", "performance.read-ahead",
              "performance.readdir-ahead", "performance.nl-cache"]
NO_TIMEOUTS = ["--attribute-timeout=0", "--entry-timeout=0", "--negative-timeout=0"]


def sh(*argv, check=True, **kw):
    return subprocess.run(list(argv), check=check, capture_output=True, text=True, **kw)


def host_ns(i):
    return f"{PREFIX}-h{i}"


def host_addr(i):
    return f"{NET}.0.{10 + i}"


def in_ns(ns, argv):
    """argv run in network namespace ns, in this mount namespace (unlike
    `ip netns exec`, a FUSE mount made there is seen here)."""
    return ["nsenter", f"--net=/run/netns/{ns}"] + list(argv)


def cleanup_leftovers():
    """What an earlier run that was killed left: mounts, processes, netns."""
    with open("/proc/mounts") as f:
        for line in f:
            dev, point, kind = line.split()[:3]
            if kind == "fuse.glusterfs" and f"/{PREFIX}-" in point:
                sh("umount", "-l", point, check=False)
    out = sh("ip", "netns", "list", check=False).stdout
    for ns in [w.split()[0] for w in out.splitlines() if w.startswith(PREFIX + "-")]:
        pids = sh("ip", "netns", "pids", ns, check=False).stdout.split()
        for p in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(p), signal.SIGKILL)
        sh("ip", "netns", "del", ns, check=False)


class Cluster:
    """hosts FUSE mounts of one volume.  caches=True leaves GlusterFS's
    default client caches on and timeouts=False the mounts' default
    attribute and entry timeouts (setups the daemon must refuse);
    distribute=True makes a plain distributed volume of three bricks;
    latency_ms (one way, fractions allowed) puts bench/latproxy between
    every host and the GlusterFS server (the benches only)."""

    def __init__(self, hosts=3, caches=False, distribute=False, extra_addrs=0, root=None,
                 timeouts=True, latency_ms=None):
        self.hosts = hosts
        self.latency_ms = latency_ms
        self.server = LAT_ADDR if latency_ms is not None else SRV_ADDR
        self.caches = caches
        self.distribute = distribute
        self.extra_addrs = extra_addrs
        self.timeouts = timeouts
        self.root = root or tempfile.mkdtemp(prefix=f"{PREFIX}-")
        self.mounts = {}
        self.procs = []
        self.skew = {}

    # -- setup ---------------------------------------------------------
    def __enter__(self):
        cleanup_leftovers()
        try:
            self._net()
            self._glusterd()
            self._volume()
            if self.latency_ms is not None:
                self._proxies()
            for i in range(1, self.hosts + 1):
                self.mount(i)
        except BaseException:
            self.__exit__()
            raise
        return self

    def _net(self):
        for ns in [SRV] + [host_ns(i) for i in range(1, self.hosts + 1)]:
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", SRV, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", SRV, "addr", "add", f"{SRV_ADDR}/16", "dev", "br0")
        # Addresses for MX hosts of their own (10.231.1.N).
        for k in range(1, self.extra_addrs + 1):
            sh("ip", "-n", SRV, "addr", "add", f"{NET}.1.{k}/16", "dev", "br0")
        if self.latency_ms is not None:
            sh("ip", "-n", SRV, "addr", "add", f"{LAT_ADDR}/16", "dev", "br0")
        sh("ip", "-n", SRV, "link", "set", "br0", "up")
        for i in range(1, self.hosts + 1):
            ns = host_ns(i)
            sh("ip", "link", "add", f"v{PREFIX}{i}", "netns", ns, "type", "veth",
               "peer", "name", f"s{PREFIX}{i}", "netns", SRV)
            sh("ip", "-n", SRV, "link", "set", f"s{PREFIX}{i}", "master", "br0", "up")
            sh("ip", "-n", ns, "addr", "add", f"{host_addr(i)}/16", "dev", f"v{PREFIX}{i}")
            sh("ip", "-n", ns, "link", "set", f"v{PREFIX}{i}", "up")
            if self.latency_ms is not None:
                self._proxy_route(ns, f"v{PREFIX}{i}", host_addr(i))

    @staticmethod
    def _proxy_route(ns, dev, addr):
        sh("ip", "-n", ns, "addr", "add", f"{LAT_ADDR}/32", "dev", "lo")
        sh("ip", "-n", ns, "route", "add", f"{LAT_ADDR}/32", "dev", dev, "src", addr,
           "table", "100")
        # The proxies' connections (from addr) skip the local table.
        sh("ip", "-n", ns, "rule", "add", "pref", "5", "from", addr, "to", LAT_ADDR,
           "lookup", "100")
        sh("ip", "-n", ns, "rule", "add", "pref", "10", "lookup", "local")
        sh("ip", "-n", ns, "rule", "del", "pref", "0")
        for opt in (f"net.ipv4.conf.{dev}.accept_local=1", f"net.ipv4.conf.{dev}.rp_filter=0",
                    "net.ipv4.conf.all.rp_filter=0"):
            sh(*in_ns(ns, ["sysctl", "-q", "-w", opt]))

    def _glusterd(self):
        g = self.gdir = os.path.join(self.root, "gluster")
        for sub in ("wd", "run", "log", "bricks"):
            os.makedirs(os.path.join(g, sub), exist_ok=True)
        self.sock = os.path.join(g, "run", "glusterd.socket")
        with open(os.path.join(g, "glusterd.vol"), "w") as f:
            f.write(f"""volume management
    type mgmt/glusterd
    option working-directory {g}/wd
    option run-directory {g}/run
    option glusterd-sockfile {self.sock}
    option transport-type socket
    option transport.socket.listen-port 24007
    option transport.socket.bind-address {"0.0.0.0" if self.latency_ms is not None else SRV_ADDR}
    option ping-timeout 0
    option event-threads 1
    option base-port 49152
    option max-port 49300
end-volume
""")
        sh(*in_ns(SRV, ["glusterd", "-p", f"{g}/glusterd.pid", f"--volfile={g}/glusterd.vol",
                        f"--log-file={g}/log/glusterd.log"]))
        deadline = time.monotonic() + 20
        while not os.path.exists(self.sock):
            if time.monotonic() > deadline:
                raise RuntimeError("glusterd did not start: " + self.log_tail("glusterd.log"))
            time.sleep(0.1)

    def gluster(self, *args, check=True):
        return sh(*in_ns(SRV, ["gluster", "--mode=script", f"--glusterd-sock={self.sock}",
                               f"--log-file={self.gdir}/log/cli.log"] + list(args)),
                  check=check)

    def _volume(self):
        bricks = []
        for b in range(1, 4):
            path = os.path.join(self.gdir, "bricks", f"b{b}")
            os.makedirs(path, exist_ok=True)
            bricks.append(f"{self.server}:{path}")
        kind = [] if self.distribute else ["replica", "3"]
        for _ in range(20):  # glusterd answers "not ready" for a moment
            r = self.gluster("volume", "create", "msv", *kind, *bricks, "force", check=False)
            if r.returncode == 0:
                break
            time.sleep(0.5)
        else:
            raise RuntimeError(f"volume create: {r.stdout} {r.stderr}")
        if not self.caches:
            for opt in CACHES_OFF:
                self.gluster("volume", "set", "msv", opt, "off")
        self.gluster("volume", "start", "msv")

    def _proxies(self):
        """A latency proxy per host for glusterd and for each brick's port."""
        out = self.gluster("volume", "status", "msv", "--xml").stdout
        ports = {24007} | {int(e.text) for e in ElementTree.fromstring(out).iter("port")
                           if e.text and e.text.isdigit() and int(e.text) > 0}
        if len(ports) < 2:
            raise RuntimeError(f"no brick ports in: {out}")
        for i in range(1, self.hosts + 1):
            for port in sorted(ports):
                self.popen(host_ns(i), [LATPROXY, "-a", LAT_ADDR, "-l", str(port), "-t", str(port),
                                        "-T", LAT_ADDR, "-b", host_addr(i),
                                        "-d", str(self.latency_ms)])
        time.sleep(0.3)

    def mount(self, i, skew=None):
        """Host i's mount; skew: "+50s" runs its FUSE client under
        libfaketime (on GlusterFS the client stamps file times)."""
        point = os.path.join(self.root, f"m{i}")
        os.makedirs(point, exist_ok=True)
        argv = ["glusterfs"] + (NO_TIMEOUTS if self.timeouts else []) + [
            f"--volfile-server={self.server}", "--volfile-id=msv",
            f"--log-file={self.gdir}/log/m{i}.log", point]
        env = dict(os.environ)
        if skew:
            env.update(LD_PRELOAD=FAKETIME, FAKETIME=skew, DONT_FAKE_MONOTONIC="1")
        for _ in range(40):
            r = subprocess.run(in_ns(host_ns(i), argv), env=env, capture_output=True, text=True)
            if r.returncode == 0 and os.path.ismount(point):
                break
            time.sleep(0.25)
        else:
            raise RuntimeError(f"mount of host {i}: {r.stderr} {self.log_tail(f'm{i}.log')}")
        self.mounts[i] = point
        self.skew[i] = skew
        return point

    def remount(self, i, skew=None):
        sh("umount", self.mounts[i])
        # (the client process goes with its mount)
        return self.mount(i, skew)

    def log_tail(self, name, n=2000):
        with contextlib.suppress(OSError):
            with open(os.path.join(self.gdir, "log", name)) as f:
                return f.read()[-n:]
        return ""

    # -- processes in namespaces ---------------------------------------
    def popen(self, ns, argv, env=None, **kw):
        p = subprocess.Popen(in_ns(ns, argv), env=env, **kw)
        self.procs.append(p)
        return p

    def run(self, ns, argv, env=None, timeout=120, **kw):
        return subprocess.run(in_ns(ns, argv), env=env, capture_output=True, timeout=timeout,
                              **kw)

    # -- teardown ------------------------------------------------------
    def __exit__(self, *exc):
        for p in self.procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(signal.SIGCONT)
                    p.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(timeout=10)
        for point in self.mounts.values():
            sh("umount", "-l", point, check=False)
        with contextlib.suppress(Exception):
            self.gluster("volume", "stop", "msv", "force", check=False)
        cleanup_leftovers()
        shutil.rmtree(self.root, ignore_errors=True)


class Dns:
    """dnsmasq in the server namespace: mx [(domain, host, pref)], hosts
    {name: address}."""

    def __init__(self, cl, mx=(), hosts=None):
        self.cl = cl
        self.dir = tempfile.mkdtemp(prefix=f"{PREFIX}-dns-")
        self.argv = ["dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts",
                     "--port=53", f"--listen-address={SRV_ADDR}", "--bind-interfaces",
                     f"--pid-file={self.dir}/pid", "--user=root", "--local=/test/",
                     "--local-ttl=300", "--log-facility=-"]
        self.argv += [f"--mx-host={d},{h},{p}" for d, h, p in mx]
        self.argv += [f"--host-record={n},{a}" for n, a in (hosts or {}).items()]

    def __enter__(self):
        self.proc = self.cl.popen(SRV, self.argv, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        time.sleep(0.3)
        if self.proc.poll() is not None:
            raise RuntimeError("dnsmasq did not start")
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)

    def servers(self):
        return f"{SRV_ADDR}:53"


class Receiver:
    """recorder.py in the server namespace on 0.0.0.0:port (every address
    of the server namespace); its events file is read as it grows."""

    def __init__(self, cl, port=2525, down=False, delay=0.0):
        self.cl = cl
        self.port = port
        self.dir = tempfile.mkdtemp(prefix=f"{PREFIX}-rcv-")
        self.events_path = os.path.join(self.dir, "events")
        self.down = down
        self.delay = delay

    def __enter__(self):
        argv = ["/usr/bin/python3", os.path.join(HERE, "recorder.py"), "--host", "0.0.0.0",
                "--port", str(self.port), "--events", self.events_path] + \
            (["--down"] if self.down else []) + (["--delay", str(self.delay)] if self.delay else [])
        self.proc = self.cl.popen(SRV, argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while "ready" not in self.lines():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("recorder did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)

    def lines(self):
        with contextlib.suppress(FileNotFoundError):
            with open(self.events_path) as f:
                return f.read().splitlines()
        return []

    def seqs(self):
        return [int(w[1]) for w in (x.split() for x in self.lines())
                if w[0] == "msg" and w[1] != "-"]

    def opens(self):
        return sum(1 for x in self.lines() if x.startswith("open "))

    def max_open(self):
        return max([int(x.split()[2]) for x in self.lines() if x.startswith("open ")] or [0])
