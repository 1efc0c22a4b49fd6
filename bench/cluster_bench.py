#!/usr/bin/python3
"""Several hosts, one spool (issue 16): one daemon vs three, on the shared
GlusterFS volume and on a local directory, and the file-system operations a
message costs.

Setup (tests/cluster/cluster.py): a GlusterFS 10 replica-3 volume, every
client cache off, its glusterd and bricks in a server network namespace,
three FUSE mounts whose clients run in three host namespaces (every file
operation crosses TCP).  The receiver is Postfix's smtp-sink in the server
namespace, answering on 30 addresses, one per domain's MX host (so the
destinations can be shared out between nodes); the SMTP path is the
namespaces' veth link, no latency proxy (what is measured here is the
spool, not the wire: bench/daemon_bench.py measures the wire).

Workload: N messages of about 1 KiB, one recipient each, spread over 30
domains, queued beforehand; the clock runs from the daemons' start until
env/ is empty.

  shared, 1 daemon    host 1's daemon on its mount
  shared, 3 daemons   one daemon per host, each on its own mount
  local, 1 daemon     the same on a local directory (ext4 or tmpfs: /tmp)
  local, 3 daemons    three daemons on that directory

File-system operations per message, on the shared volume: the FOPs one
brick served (GlusterFS's own profile, `volume profile ... info
incremental`; with replica 3 each brick serves the same, and AFR adds its
locks and changelog FOPs to every change), and the client-side system
calls on spool files (strace -c -f of the one-daemon run, and of one
host's `mailspool send`), each divided by the messages.

With --latency MS, bench/latproxy (our latency proxy) sits between every
host and the GlusterFS server and holds each chunk MS milliseconds each
way, as a network between real hosts would: only the shared-volume runs
are made, and written to a section of their own.

Usage: bench/cluster_bench.py [--messages 3000] [--latency MS]   (as root)
"""
import argparse
import datetime
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "cluster"))
sys.path.insert(0, HERE)
from cluster import Cluster, Dns, SRV, host_addr, host_ns, in_ns  # noqa: E402
from spool_bench import write_section  # noqa: E402

MAILSPOOL = os.path.join(ROOT, "build", "mailspool")
MARK = "## Several hosts, one spool (issue 16)"
LAT_MARK = "## Several hosts, one spool, across a network with latency (issue 16)"
NDOM = 30
PORT = 2525
# System calls that act on files (strace's %file class, and those on
# descriptors of files).
FS_CALLS = {"openat", "open", "newfstatat", "fstat", "statx", "stat", "lstat", "access",
            "renameat", "renameat2", "rename", "linkat", "link", "unlinkat", "unlink",
            "utimensat", "futimesat", "fsync", "fdatasync", "getdents64", "flock",
            "mkdirat", "mkdir", "mknodat", "mkfifo", "readlink", "readlinkat", "truncate",
            "ftruncate", "pread64", "statfs", "fstatfs", "chdir", "fchdir"}


def conf_for(path, spool, log, i, extra=""):
    with open(path, "w") as f:
        f.write(f"spool_dir = {spool}\nhostname = h{i}.example.test\nmin_free_space = 0\n"
                f"mail_owner = root\ndns_servers = 10.231.0.1:53\nmx_port = {PORT}\n"
                f"log_file = {log}\nretry_tiers = 0 30m 4h\ndns_timeout = 3s\n"
                f"connect_timeout = 5s\nwake_address = {host_addr(i)}\n{extra}")
    return path


def make_files(d, n):
    os.makedirs(d, exist_ok=True)
    files = []
    body = "x" * 70 + "\r\n"
    for i in range(n):
        f = os.path.join(d, f"m{i}")
        with open(f, "w") as fh:
            fh.write(f"To: u{i}@d{i % NDOM}.test\r\nSubject: bench {i}\r\nX-Seq: {i}\r\n\r\n"
                     + body * 12)
        files.append(f)
    return files


def queue(cl, confs, files, strace_out=None):
    """The messages queued, up to 1000 files per command: from host 1 alone
    under strace (one host's submission is what is counted), else from the
    three hosts at once (queueing is set-up, not what is measured)."""
    t0 = time.monotonic()
    hosts = [1] if strace_out else [1, 2, 3]
    per = min(1000, -(-len(files) // len(hosts)))
    work = {i: [] for i in hosts}
    for n, k in enumerate(range(0, len(files), per)):
        argv = [MAILSPOOL, "send", "-f", "bench@example.test", "-t", "-q"] + files[k:k + per]
        if strace_out and k == 0:
            argv = ["strace", "-c", "-f", "-o", strace_out] + argv
        work[hosts[n % len(hosts)]].append(argv)
    while any(work.values()):
        procs = [(cl.popen(host_ns(i), work[i].pop(0),
                           env=dict(os.environ, MAILSPOOL_CONFIG=confs[i]),
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
                 for i in hosts if work[i]]
        for p in procs:
            err = p.communicate(timeout=1800)[1]
            if p.returncode != 0:
                raise RuntimeError(f"queueing failed: {err.decode()[-500:]}")
    return time.monotonic() - t0


def strace_fs_calls(path):
    total = 0
    with open(path) as f:
        for line in f:
            w = line.split()
            if len(w) >= 5 and w[-1] in FS_CALLS and w[3].isdigit():
                total += int(w[3])
    return total


def brick_fops(cl):
    """FOPs the first brick served since the last call."""
    out = cl.gluster("volume", "profile", "msv", "info", "incremental").stdout
    first = out.split("Brick: ")[1] if "Brick: " in out else ""
    total = 0
    for m in re.finditer(r"^\s*[\d.]+\s+[\d.]+ \w+\s+[\d.]+ \w+\s+[\d.]+ \w+\s+(\d+)\s+(\w+)\s*$",
                         first, re.M):
        if m.group(2) not in ("RELEASE", "RELEASEDIR", "FORGET"):
            total += int(m.group(1))
    return total


def cpu_busy():
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]
    return sum(v) - idle, sum(v)


def gluster_ticks():
    """CPU ticks so far of the GlusterFS bricks (glusterfsd) and clients
    (glusterfs, the FUSE mounts): long-lived, read from /proc."""
    t = {"glusterfsd": 0, "glusterfs": 0}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                st = f.read()
        except OSError:
            continue
        comm = st[st.index("(") + 1:st.rindex(")")]
        if comm in t:
            w = st[st.rindex(")") + 2:].split()
            t[comm] += int(w[11]) + int(w[12])
    return t


def children_ticks():
    """CPU ticks of our waited-for children: the daemons and their agents
    (each daemon reaps its agents; nsenter reaps the daemon)."""
    t = os.times()
    return (t.children_user + t.children_system) * os.sysconf("SC_CLK_TCK")


def deliver(cl, hosts, confs, spool_env, n, strace_dir=None, stats=None):
    procs = []
    c0, g0, m0 = cpu_busy(), gluster_ticks(), children_ticks()
    t0 = time.monotonic()
    for i in hosts:
        argv = [MAILSPOOL, "daemon", "--foreground", "--node", f"h{i}"]
        if strace_dir:
            argv = ["strace", "-c", "-f", "-o", os.path.join(strace_dir, f"d{i}")] + argv
        procs.append(cl.popen(host_ns(i), argv, env=dict(os.environ, MAILSPOOL_CONFIG=confs[i]),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    deadline = time.monotonic() + 3600
    while os.listdir(spool_env):
        if time.monotonic() > deadline:
            raise RuntimeError("not delivered within an hour")
        time.sleep(0.1)
    dt = time.monotonic() - t0
    c1 = cpu_busy()
    if stats is not None:
        stats["cpu"] = (c1[0] - c0[0]) / max(1, c1[1] - c0[1])
    for p in procs:
        # (under strace, the daemon is strace's child: it is the one told)
        target = p.pid
        if strace_dir:
            with open(f"/proc/{p.pid}/task/{p.pid}/children") as f:
                kids = f.read().split()
            target = int(kids[0]) if kids else p.pid
        os.kill(target, signal.SIGTERM)
    for p in procs:
        p.wait(timeout=120)
    if stats is not None:
        # Where the machine's CPU went, in cores: time from the start to
        # an empty env/ (the daemons' stop is after it, and small).
        g1, m1 = gluster_ticks(), children_ticks()
        hz = os.sysconf("SC_CLK_TCK")
        stats["bricks"] = (g1["glusterfsd"] - g0["glusterfsd"]) / hz / dt
        stats["clients"] = (g1["glusterfs"] - g0["glusterfs"]) / hz / dt
        stats["mailspool"] = (m1 - m0) / hz / dt
    return dt


def shares(confs, hosts):
    """Messages each host's daemon delivered (its "sent" log lines): how
    the destinations' owners split the work."""
    out = []
    for i in hosts:
        with open(re.search(r"^log_file = (.*)$", open(confs[i]).read(), re.M).group(1)) as f:
            out.append(sum(1 for line in f if "status=sent" in line))
    return out


def one_case(cl, tmp, label, shared, hosts, files, profile=False, strace=False):
    root = tempfile.mkdtemp(prefix="case-", dir=tmp)
    confs = {}
    for i in (1, 2, 3):
        spool = os.path.join(cl.mounts[i] if shared else root, f"spool-{label}")
        confs[i] = conf_for(os.path.join(root, f"h{i}.conf"), spool,
                            os.path.join(root, f"h{i}.log"), i)
    env_dir = os.path.join(cl.mounts[1] if shared else root, f"spool-{label}", "env")
    # The spool made, then the messages queued (not timed here).
    if profile:
        brick_fops(cl)
    sub_strace = os.path.join(root, "send.strace") if strace else None
    qs = queue(cl, confs, files, sub_strace)
    sub_fops = brick_fops(cl) if profile else None
    sd = None
    if strace:
        sd = os.path.join(root, "strace")
        os.makedirs(sd)
    st = {}
    dt = deliver(cl, hosts, confs, env_dir, len(files), sd, st)
    del_fops = brick_fops(cl) if profile else None
    res = {"label": label, "secs": dt, "rate": len(files) / dt, "queue_secs": qs,
           "sub_fops": sub_fops, "del_fops": del_fops, "cpu": st.get("cpu", 0),
           "bricks": st.get("bricks", 0), "clients": st.get("clients", 0),
           "mailspool": st.get("mailspool", 0), "shares": shares(confs, hosts)}
    if strace:
        res["del_calls"] = sum(strace_fs_calls(os.path.join(sd, x)) for x in os.listdir(sd))
        res["sub_calls"] = strace_fs_calls(sub_strace)
    return res


def latency_section(by, date, n, ms):
    one, three = by["shared-1"], by["shared-3"]
    return [LAT_MARK, "",
            f"{date}, bench/cluster_bench.py --latency {ms:g}: as above, {n} messages over "
            f"{NDOM} domains, but every connection between a host and the GlusterFS server "
            f"(glusterd and the three bricks) goes through bench/latproxy, {ms:g} ms each way "
            f"({2 * ms:g} ms round trip), as between real hosts on a network.", "",
            "| run | msg/s | machine busy (cores of 2) | bricks | FUSE clients | mailspool "
            "| delivered per host | brick FOPs/msg |",
            "|---|---:|---:|---:|---:|---:|---|---:|"] + [
            f"| {lab} | {r['rate']:.1f} | {2 * r['cpu']:.2f} | {r['bricks']:.2f} | "
            f"{r['clients']:.2f} | {r['mailspool']:.2f} | "
            f"{' / '.join(str(x) for x in r['shares'])} | {r['del_fops'] / r['n']:.1f} |"
            for lab, r in (("1 daemon", one), ("3 daemons", three))] + ["",
            f"Three daemons vs one: **{three['rate'] / one['rate']:.2f}x**.", ""]


def main():
    global NDOM
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=3000)
    ap.add_argument("--local-messages", type=int, default=20000,
                    help="messages for the local-directory runs (they are fast)")
    ap.add_argument("--only", help="shared-1, shared-3, local-1 or local-3 (no RESULTS.md)")
    ap.add_argument("--domains", type=int, default=30,
                    help="destinations (each its own MX address, at most 200)")
    ap.add_argument("--latency", type=float,
                    help="one-way milliseconds between each host and the GlusterFS server")
    ap.add_argument("--out", default=os.path.join(HERE, "RESULTS.md"))
    a = ap.parse_args()
    NDOM = min(200, max(1, a.domains))
    if os.geteuid() != 0:
        print("cluster_bench: needs root (namespaces, FUSE)", file=sys.stderr)
        return 77
    tmp = tempfile.mkdtemp(prefix="ms-cluster-bench-", dir="/tmp")
    n = a.messages
    rows = []
    try:
        with Cluster(hosts=3, extra_addrs=NDOM, latency_ms=a.latency) as cl:
            mx = [(f"d{i}.test", f"mx{i}.d.test", 10) for i in range(NDOM)]
            hosts = {f"mx{i}.d.test": f"10.231.1.{i + 1}" for i in range(NDOM)}
            with Dns(cl, mx=mx, hosts=hosts):
                sink_dir = tempfile.mkdtemp(prefix="sink-", dir=tmp)
                os.chmod(sink_dir, 0o777)
                sink = cl.popen(SRV, ["smtp-sink", "-u", "postfix", f":{PORT}", "1024"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(0.5)
                files = make_files(os.path.join(tmp, "msgs"), max(n, a.local_messages))
                small = files[:min(n, 300)]
                cl.gluster("volume", "profile", "msv", "start")
                if not a.only and a.latency is None:
                    # Operations per message: a smaller run under strace.
                    ops = one_case(cl, tmp, "ops", True, [1], small, profile=True, strace=True)
                    print(f"fs operations per message: submission "
                          f"{ops['sub_calls'] / len(small):.1f} calls, brick FOPs "
                          f"{ops['sub_fops'] / len(small):.1f}; delivery "
                          f"{ops['del_calls'] / len(small):.1f} calls, brick FOPs "
                          f"{ops['del_fops'] / len(small):.1f}", flush=True)
                for label, shared, hs in (("shared-1", True, [1]), ("shared-3", True, [1, 2, 3]),
                                          ("local-1", False, [1]), ("local-3", False, [1, 2, 3])):
                    if (a.only and label != a.only) or (a.latency is not None and not shared):
                        continue
                    batch = files[:n] if shared else files[:a.local_messages]
                    r = one_case(cl, tmp, label, shared, hs, batch, profile=shared)
                    r["n"] = len(batch)
                    rows.append(r)
                    extra = (f", brick FOPs/msg: queueing {r['sub_fops'] / len(batch):.1f}, "
                             f"delivery {r['del_fops'] / len(batch):.1f}" if shared else "")
                    print(f"{label}: {r['rate']:.1f} msg/s ({len(batch)} in {r['secs']:.1f} s; "
                          f"queueing took {r['queue_secs']:.1f} s; machine CPU "
                          f"{100 * r['cpu']:.0f}% of 2 cores: bricks {r['bricks']:.2f}, "
                          f"clients {r['clients']:.2f}, mailspool {r['mailspool']:.2f} cores; "
                          f"delivered per host {r['shares']}){extra}", flush=True)
                sink.terminate()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if a.only:
        return 0
    by = {r["label"]: r for r in rows}
    date = datetime.date.today().isoformat()
    if a.latency is not None:
        lines = latency_section(by, date, n, a.latency)
        write_section(a.out, lines, LAT_MARK)
        print("\n".join(lines))
        return 0
    lines = [MARK, "",
             f"{date}, bench/cluster_bench.py, {n} messages of about 1 KiB over {NDOM} domains "
             "(each its own MX address), queued beforehand; GlusterFS 10 replica 3, every client "
             "cache off, three FUSE mounts from three network namespaces (tests/cluster); "
             "smtp-sink as the receiver; the clock runs from the daemons' start to an empty "
             "env/.", "",
             "| spool | 1 daemon msg/s | 3 daemons msg/s | 3 vs 1 | machine CPU busy (1 / 3) |",
             "|---|---:|---:|---:|---|",
             f"| shared GlusterFS volume ({n} messages) | {by['shared-1']['rate']:.1f} | "
             f"{by['shared-3']['rate']:.1f} | {by['shared-3']['rate'] / by['shared-1']['rate']:.2f}x "
             f"| {100 * by['shared-1']['cpu']:.0f}% / {100 * by['shared-3']['cpu']:.0f}% |",
             f"| local directory, /tmp ({a.local_messages} messages) | "
             f"{by['local-1']['rate']:.1f} | "
             f"{by['local-3']['rate']:.1f} | {by['local-3']['rate'] / by['local-1']['rate']:.2f}x "
             f"| {100 * by['local-1']['cpu']:.0f}% / {100 * by['local-3']['cpu']:.0f}% |",
             f"| shared vs local, 1 daemon | | | {by['local-1']['rate'] / by['shared-1']['rate']:.1f}x"
             " slower shared |", "",
             "Where the CPU went while they delivered, in cores of the machine's 2 (GlusterFS "
             "bricks and FUSE clients from /proc, the daemons and their agents from their "
             "CPU times), and how many messages each host's daemon delivered (the split its "
             "destinations' owners made):", "",
             "| run | machine busy | bricks | FUSE clients | mailspool | delivered per host |",
             "|---|---:|---:|---:|---:|---|"] + [
             f"| {lab} | {2 * by[lab]['cpu']:.2f} | {by[lab]['bricks']:.2f} | "
             f"{by[lab]['clients']:.2f} | {by[lab]['mailspool']:.2f} | "
             f"{' / '.join(str(x) for x in by[lab]['shares'])} |"
             for lab in ("shared-1", "shared-3", "local-1", "local-3")] + ["",
             "File-system operations per message on the shared volume "
             f"({len(small)} messages, one daemon):", "",
             "| | client system calls on files (strace) | FOPs at one brick (profile) |",
             "|---|---:|---:|",
             f"| submission (`mailspool send -q`, 1000 files per command) | "
             f"{ops['sub_calls'] / min(1000, len(small)):.1f} | {ops['sub_fops'] / len(small):.1f} |",
             f"| delivery (daemon and agents) | {ops['del_calls'] / len(small):.1f} | "
             f"{ops['del_fops'] / len(small):.1f} |",
             f"| three daemons, delivery ({n} messages) | | "
             f"{by['shared-3']['del_fops'] / n:.1f} |",
             f"| one daemon, delivery ({n} messages) | | {by['shared-1']['del_fops'] / n:.1f} |",
             "", "The brick's FOPs include what replication adds to every change (AFR's "
             "ENTRYLK/INODELK, XATTROP changelog and LOOKUPs with timeouts 0).", ""]
    write_section(a.out, lines, MARK)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
