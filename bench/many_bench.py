#!/usr/bin/env python3
"""Delivery to many destinations (issue 12): the daemon against Postfix.

Workload: N messages of about 4 KiB, one recipient each, spread over D
domains, already queued; the clock runs from the start of delivery to an
empty queue.  Every domain's MX has an address of its own (127.1.x.y),
served by dnsmasq; every address leads through bench/latproxy (the given
round-trip time, and it counts round trips and connections) to one
smtp-sink.  It all runs in a network namespace of its own (every address
in it is a loopback one, nothing leaves it) with a mount namespace whose
/etc/resolv.conf names the dnsmasq, so Postfix resolves through it too.

  mailspool          `mailspool daemon --once`, default settings
  Postfix default    a full MTA with its own queue and default settings,
                     the messages queued held through its smtpd, released,
                     flushed (as bench/run.py does)
  Postfix tuned      the same with default_process_limit = 500

Reported per run: msg/s, the ratio to Postfix's default in the same run,
round trips per message and connections (the proxy's counts), CPU seconds
of all the MTA's processes (user + system, from their reaped rusage), the
peak total RSS of all its processes and the peak process count (sampled
every 50 ms from /proc), and the proxy's own CPU (to show it is not the
bottleneck).

Also: D = 1,000 domains on 10 MX hosts (shared servers): connections used.

Usage: bench/many_bench.py [--messages 10000] [--domains 100,1000,5000]
                           [--rtt 50] [--out bench/RESULTS.md]
                           [--only mailspool] [--set "key = value"]
"""
import argparse
import datetime
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import run  # noqa: E402
from run import FROM, LATPROXY, MAILSPOOL, servers  # noqa: E402
from spool_bench import write_section  # noqa: E402

MARK = "## Many destinations (issue 12)"
SINK_PORT = 2525
CLK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def in_namespace():
    """Re-run this script in a network and mount namespace of its own."""
    if os.environ.get("MS_MANY_NS") == "1":
        return
    os.environ["MS_MANY_NS"] = "1"
    os.execvp("unshare", ["unshare", "--net", "--mount", "--fork", sys.executable] + sys.argv)


def mx_addr(i):
    return f"127.1.{i // 250}.{i % 250 + 1}"


def setup_dns(tmp, ndom, nhosts):
    """dnsmasq on 127.0.0.1:53 for d<i>.test -> mx<i % nhosts>.d.test."""
    conf = os.path.join(tmp, "dnsmasq.conf")
    with open(conf, "w") as f:
        f.write("no-resolv\nno-hosts\nport=53\nlisten-address=127.0.0.1\nbind-interfaces\n"
                "local=/test/\nuser=root\nlocal-ttl=300\n")
        for i in range(ndom):
            f.write(f"mx-host=d{i}.test,mx{i % nhosts}.d.test,10\n")
        for h in range(nhosts):
            f.write(f"host-record=mx{h}.d.test,{mx_addr(h)}\n")
    p = subprocess.Popen(["dnsmasq", "--keep-in-foreground", f"--conf-file={conf}",
                          f"--pid-file={tmp}/dnsmasq.pid"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    return p


def make_messages(d, n, ndom):
    os.makedirs(d, exist_ok=True)
    line = "The quick brown fox jumps over the lazy dog; pack my box with jugs.\r\n"
    files = []
    for i in range(n):
        head = (f"From: {FROM}\r\nTo: u{i}@d{i % ndom}.test\r\nSubject: many {i}\r\n"
                f"Message-ID: <many{i}@sender.test>\r\n\r\n")
        p = os.path.join(d, f"{i:05d}.eml")
        with open(p, "w", newline="") as f:
            f.write(head + line * ((4096 - len(head)) // len(line)))
        files.append(p)
    return files


def descendants(root):
    """Pids below root (inclusive), from /proc."""
    kids = {}
    for e in os.listdir("/proc"):
        if e.isdigit():
            try:
                with open(f"/proc/{e}/stat") as f:
                    st = f.read()
                ppid = int(st[st.rindex(")") + 2:].split()[1])
                kids.setdefault(ppid, []).append(int(e))
            except (OSError, ValueError):
                pass
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += kids.get(p, [])
    return out


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE // 1024
    except OSError:
        return 0


def cpu_s(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            st = f.read()
        v = st[st.rindex(")") + 2:].split()
        return (int(v[11]) + int(v[12])) / CLK
    except (OSError, ValueError, IndexError):
        return 0.0


class Sampler:
    """Peak total RSS and process count of a process tree, every 50 ms."""

    def __init__(self, root):
        self.root, self.peak_rss, self.peak_procs = root, 0, 0

    def sample(self):
        pids = descendants(self.root)
        self.peak_procs = max(self.peak_procs, len(pids))
        self.peak_rss = max(self.peak_rss, sum(rss_kib(p) for p in pids))


class Link:
    """smtp-sink on 127.0.0.1:2525 behind latproxy on 0.0.0.0:25."""

    def __init__(self, rtt, tmp):
        self.rtt, self.stats = rtt, os.path.join(tmp, "proxy.stats")

    def __enter__(self):
        # -m: sessions at once (smtp-sink's default, 256, would be the
        # limit of any MTA with more connections than that).
        self.sink = subprocess.Popen(["smtp-sink", "-u", "postfix", "-m", "10000",
                                      f"127.0.0.1:{SINK_PORT}", "4096"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        servers.wait_port(SINK_PORT, self.sink)
        self.proxy = subprocess.Popen([LATPROXY, "-a", "0.0.0.0", "-l", "25", "-t",
                                       str(SINK_PORT), "-d", str(self.rtt // 2), "-s", self.stats])
        time.sleep(0.2)
        return self

    def reset(self):
        open(self.stats, "w").close()
        self.cpu0 = cpu_s(self.proxy.pid)

    def counts(self):
        time.sleep(0.3 + self.rtt / 1000)
        flights, conns = run.proxy_stats(self.stats)
        return flights, conns, cpu_s(self.proxy.pid) - self.cpu0

    def __exit__(self, *exc):
        servers.stop(self.proxy)
        servers.stop(self.sink)


def child_cpu():
    r = os.times()
    return r.children_user + r.children_system


def run_mailspool(link, files, tmp, extra=()):
    root = tempfile.mkdtemp(prefix="ms-many-", dir=tmp)
    conf = os.path.join(root, "mailspool.conf")
    with open(conf, "w") as f:
        f.write(f"spool_dir = {root}/spool\nhostname = bench.sender.test\nmin_free_space = 0\n"
                f"mail_owner = root\nlog_file = {root}/log\ndns_servers = 127.0.0.1:53\n"
                + "".join(x + "\n" for x in extra))
    for k in range(0, len(files), 2000):
        subprocess.run([MAILSPOOL, "send", "-C", conf, "-q", "-t", "-f", FROM] + files[k:k + 2000],
                       check=True, capture_output=True)
    link.reset()
    c0 = child_cpu()
    t0 = time.monotonic()
    errf = open(os.path.join(root, "daemon.err"), "w+b")  # (a pipe nobody reads would fill)
    p = subprocess.Popen([MAILSPOOL, "daemon", "-C", conf, "--once"],
                         stdout=subprocess.DEVNULL, stderr=errf)
    s = Sampler(p.pid)
    while p.poll() is None:
        s.sample()
        time.sleep(0.05)
    dt = time.monotonic() - t0
    cpu = child_cpu() - c0
    left = os.listdir(os.path.join(root, "spool", "env"))
    if p.returncode != 0 or left:
        errf.seek(0)
        raise RuntimeError(f"daemon: rc {p.returncode}, {len(left)} left: "
                           f"{errf.read().decode()[-800:]}")
    errf.close()
    shutil.rmtree(root, ignore_errors=True)
    return dt, cpu, s


POSTFIX_EXTRA = """
inet_interfaces = 127.0.0.1
mynetworks = 127.0.0.0/8
smtpd_recipient_restrictions = permit_mynetworks, reject
smtpd_relay_restrictions = permit_mynetworks, reject
header_checks = static:HOLD
smtpd_end_of_data_restrictions =
"""


def run_postfix(link, files, tmp, more=""):
    with servers.Postfix(extra_main=POSTFIX_EXTRA + more) as pf:
        # Queued held through its own smtpd, over one pipelined connection.
        subprocess.run([MAILSPOOL, "send", "--via", pf.url(), "-f", FROM, "-t"] + files,
                       check=True, capture_output=True)
        deadline = time.monotonic() + 300
        while len(pf.queue()) < len(files):
            if time.monotonic() > deadline:
                raise RuntimeError("postfix did not queue the messages")
            time.sleep(0.2)
        link.reset()
        master = pf.proc.pid
        t0 = time.monotonic()
        subprocess.run(["postsuper", "-c", pf.conf, "-H", "ALL"], check=True, capture_output=True)
        subprocess.run(["postqueue", "-c", pf.conf, "-f"], check=True, capture_output=True)
        s = Sampler(master)
        cpu_live = {}
        n = 0
        while True:
            s.sample()
            for pid in descendants(master):
                cpu_live[pid] = cpu_s(pid)  # the last seen value of each process
            n += 1
            if n % 10 == 0 and not pf.queue():
                break
            if time.monotonic() - t0 > 3600:
                raise RuntimeError("postfix did not deliver")
            time.sleep(0.05)
        dt = time.monotonic() - t0
    # Postfix's processes come and go; their CPU is the sum of what each
    # had when last seen (processes that lived less than 50 ms are missed:
    # a slight undercount, in Postfix's favour).
    return dt, sum(cpu_live.values()), s


def main():
    in_namespace()
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    # Thousands of connections: every process started here may open as
    # many descriptors as the hard limit allows (smtp-sink, the proxy).
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=10000)
    ap.add_argument("--domains", default="100,1000,5000")
    ap.add_argument("--rtt", type=int, default=50)
    ap.add_argument("--shared", default="1000:10")
    ap.add_argument("--out", default=os.path.join(HERE, "RESULTS.md"))
    ap.add_argument("--only", default="", help="run only the MTAs whose name starts so "
                    "(e.g. mailspool); the results are printed, not written")
    ap.add_argument("--set", action="append", default=[],
                    help="an extra mailspool.conf line for mailspool's runs")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="ms-many-", dir=os.path.join(run.ROOT, "build"))
    resolv = os.path.join(tmp, "resolv.conf")
    with open(resolv, "w") as f:
        f.write("nameserver 127.0.0.1\noptions timeout:2 attempts:2\n")
    subprocess.run(["mount", "--bind", resolv, "/etc/resolv.conf"], check=True)
    rows = []
    cases = [(int(d), int(d)) for d in a.domains.split(",") if d]
    if a.shared:
        dd, hh = a.shared.split(":")
        cases.append((int(dd), int(hh)))
    try:
        for ndom, nhosts in cases:
            dns = setup_dns(tmp, ndom, nhosts)
            files = make_messages(os.path.join(tmp, f"msgs{ndom}"), a.messages, ndom)
            label = f"{ndom} domains" + (f" on {nhosts} MX hosts" if nhosts != ndom else "")
            plan = [("mailspool", lambda L: run_mailspool(L, files, tmp, a.set)),
                    ("Postfix default", lambda L: run_postfix(L, files, tmp)),
                    ("Postfix tuned (500 processes)",
                     lambda L: run_postfix(L, files, tmp, "default_process_limit = 500\n"))]
            if nhosts != ndom:
                plan = plan[:2]
            plan = [x for x in plan if x[0].startswith(a.only)]
            try:
                with Link(a.rtt, tmp) as link:
                    for tool, fn in plan:
                        dt, cpu, s = fn(link)
                        flights, conns, pcpu = link.counts()
                        row = dict(case=label, tool=tool, seconds=dt, rate=a.messages / dt,
                                   rtpm=flights / a.messages, conns=conns, cpu=cpu,
                                   rss=s.peak_rss, procs=s.peak_procs, proxy_cpu=pcpu)
                        rows.append(row)
                        print(f"{label:28s} {tool:30s} {dt:8.1f} s {row['rate']:8.1f} msg/s "
                              f"{row['rtpm']:5.2f} RT/msg {conns:5d} conns cpu {cpu:6.1f} s "
                              f"rss {s.peak_rss / 1024:7.1f} MiB procs {s.peak_procs:4d} "
                              f"proxy cpu {pcpu:5.1f} s", flush=True)
            finally:
                servers.stop(dns)
            shutil.rmtree(os.path.join(tmp, f"msgs{ndom}"), ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    if a.only:
        return
    base = {r["case"]: r["rate"] for r in rows if r["tool"] == "Postfix default"}
    lines = [MARK, "",
             f"Run {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC by "
             f"bench/many_bench.py: {a.messages} messages of about 4 KiB, one recipient each, "
             f"already queued; each domain's MX on its own loopback address (dnsmasq), "
             f"{a.rtt} ms round trip through bench/latproxy to one smtp-sink, in a network "
             "namespace of its own.  Default settings for every MTA except where named.  CPU "
             "is user + system seconds of all the MTA's processes; RSS the peak of their "
             "total; the proxy's CPU shows it was not the limit.", "",
             "| case | MTA | seconds | msg/s | vs Postfix default | RT/msg | connections | "
             "CPU s | total RSS MiB | processes | proxy CPU s |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['tool']} | {r['seconds']:.1f} | {r['rate']:.1f} | "
                     f"{r['rate'] / base[r['case']]:.2f}x | {r['rtpm']:.2f} | {r['conns']} | "
                     f"{r['cpu']:.1f} | {r['rss'] / 1024:.1f} | {r['procs']} | "
                     f"{r['proxy_cpu']:.1f} |")
    lines.append("")
    write_section(a.out, lines, MARK)


if __name__ == "__main__":
    if os.environ.get("MS_MANY_TRACE"):
        import faulthandler
        faulthandler.dump_traceback_later(int(os.environ["MS_MANY_TRACE"]), exit=True)
    main()
