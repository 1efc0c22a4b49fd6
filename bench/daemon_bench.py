#!/usr/bin/env python3
"""End-to-end delivery benchmark: spool to receiver (issue 5).

Workload: N messages of about 4 KiB for one destination, already queued;
the clock runs from the start of delivery until the queue is empty.

  mailspool   `mailspool daemon --once` with default_route pointing at the
              link (one destination); destination_concurrency = the
              connection count under test, each connection pipelining its
              share of the queue across messages.
  Postfix     a throwaway Postfix (its own queue) with relayhost = the link;
              the messages are queued through its sendmail held, then
              released and flushed (bench/run.py's run_postfix); once with
              its default concurrency, once limited to one connection.

The link is Postfix's smtp-sink behind bench/latproxy (our latency proxy),
which also counts round trips.  At 100 ms RTT the one-connection runs send
fewer messages (rates are per message).

Then memory: the daemon with 100,000 messages queued for a destination that
is down (it is tried once, then backed off), and how long a fresh message
for a healthy destination takes to be delivered meanwhile.

Usage: bench/daemon_bench.py [--messages 10000] [--queue 100000]
"""
import argparse
import datetime
import math
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
from run import FROM, MAILSPOOL, TO, Link, make_messages, run_postfix, servers  # noqa: E402
from spool_bench import write_section  # noqa: E402

MARK = "## Delivery daemon, spool to receiver (issue 5)"


def write_conf(root, lines):
    conf = os.path.join(root, "mailspool.conf")
    with open(conf, "w") as f:
        f.write(f"spool_dir = {root}/spool\nhostname = bench.sender.test\nmin_free_space = 0\nmail_owner = root\n"
                f"log_file = {root}/log\n" + "".join(x + "\n" for x in lines))
    return conf


def queue(conf, files, rcpt=TO):
    for k in range(0, len(files), 2000):
        r = subprocess.run([MAILSPOOL, "send", "-C", conf, "-q", "-f", FROM, "--to", rcpt]
                           + files[k:k + 2000], capture_output=True)
        if r.returncode != 0:
            raise RuntimeError(f"queueing failed ({r.returncode}): {r.stderr.decode()[-500:]}")


def run_mailspool(link, files, conns, tmp):
    root = tempfile.mkdtemp(prefix="ms-dbench-", dir=tmp)
    conf = write_conf(root, [f"default_route = smtp://127.0.0.1:{link.port}",
                             f"destination_concurrency = {conns}",
                             f"connection_messages = {max(1, math.ceil(len(files) / conns))}",
                             f"max_deliveries = {max(20, conns)}"])
    queue(conf, files)
    link.reset()
    t0 = time.monotonic()
    r = subprocess.run([MAILSPOOL, "daemon", "-C", conf, "--once"], capture_output=True)
    dt = time.monotonic() - t0
    left = os.listdir(os.path.join(root, "spool", "env"))
    if r.returncode != 0 or left:
        raise RuntimeError(f"daemon: rc {r.returncode}, {len(left)} left: "
                           f"{r.stderr.decode()[-800:]}")
    shutil.rmtree(root, ignore_errors=True)
    return dt


def vm_hwm_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except FileNotFoundError:
        pass
    return 0


def queue_for_dead(root, good, n):
    """A spool in root whose dead.test refuses connections (backed off for
    an hour) and whose good.test is `good`, with n messages of about 1 KiB
    queued for dead.test.  Returns (configuration, seconds spent queueing)."""
    dead = servers.free_port()  # nothing listens there
    conf = write_conf(root, [f"route.dead.test = smtp://127.0.0.1:{dead}",
                             f"route.good.test = {good.url()}",
                             "destination_backoff = 1h", "connect_timeout = 5s"])
    small = os.path.join(root, "small.eml")
    with open(small, "w") as f:
        f.write("Subject: queued\r\n\r\n" + ("x" * 78 + "\r\n") * 12)
    t0 = time.monotonic()
    queue(conf, [small] * n, rcpt="someone@dead.test")
    return conf, time.monotonic() - t0


def big_queue(n, tmp):
    """100,000 messages for a dead destination, then one fresh message for
    a healthy one: the scheduler's peak memory, and the fresh one's delay."""
    root = tempfile.mkdtemp(prefix="ms-dbench-big-", dir=tmp)
    with servers.Aiosmtpd() as good:
        conf, queued_s = queue_for_dead(root, good, n)
        log = os.path.join(root, "log")
        d = subprocess.Popen([MAILSPOOL, "daemon", "-C", conf, "--foreground"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        peak = 0
        try:
            # Wait for the dead destination's first failures and back-off.
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                peak = max(peak, vm_hwm_kib(d.pid))
                if os.path.exists(log) and "not tried again" in open(log).read():
                    break
                time.sleep(0.2)
            time.sleep(2)
            t1 = time.monotonic()
            subprocess.run([MAILSPOOL, "send", "-C", conf, "-q", "-f", FROM,
                            "--to", "fresh@good.test"], input=b"Subject: fresh\r\n\r\nhi\r\n",
                           check=True)
            while not good.envelopes and time.monotonic() - t1 < 120:
                time.sleep(0.005)
            fresh_s = time.monotonic() - t1
            for _ in range(10):
                peak = max(peak, vm_hwm_kib(d.pid))
                time.sleep(0.1)
        finally:
            d.send_signal(signal.SIGTERM)
            d.wait(timeout=60)
    shutil.rmtree(root, ignore_errors=True)
    return peak, fresh_s, queued_s, bool(good.envelopes)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=10000)
    ap.add_argument("--queue", type=int, default=100000)
    ap.add_argument("--rtt", default="0,100")
    ap.add_argument("--out", default=os.path.join(HERE, "RESULTS.md"))
    a = ap.parse_args()
    n = a.messages
    tmp = tempfile.mkdtemp(prefix="ms-dbench-", dir=os.path.join(run.ROOT, "build"))
    rows = []
    try:
        files = make_messages(os.path.join(tmp, "msgs"), n)
        for rtt in [int(x) for x in a.rtt.split(",")]:
            one = n if rtt == 0 else max(50, min(n, int(n * 10 / rtt)))  # one connection
            one_pf = n if rtt == 0 else max(30, one // 3)
            plan = [("mailspool, 20 connections", n, lambda L, k: run_mailspool(L, files[:k], 20, tmp)),
                    ("Postfix, default concurrency (20)", n,
                     lambda L, k: run_postfix(L, files[:k], False)),
                    ("mailspool, one connection", one,
                     lambda L, k: run_mailspool(L, files[:k], 1, tmp)),
                    ("Postfix, one connection", one_pf,
                     lambda L, k: run_postfix(L, files[:k], True))]
            with Link(rtt) as link:
                for name, k, fn in plan:
                    link.reset()
                    dt = fn(link, k)
                    flights, conns = link.flights(settle=0.2)
                    rows.append(dict(rtt=rtt, tool=name, messages=k, seconds=dt, rate=k / dt,
                                     rtpm=flights / k, conns=conns))
                    print(f"rtt {rtt:3d} ms  {name:36s} {k:6d} msgs {dt:8.2f} s "
                          f"{k / dt:9.1f} msg/s  {flights / k:5.3f} RT/msg  {conns} conn",
                          flush=True)
        peak, fresh_s, queued_s, ok = big_queue(a.queue, tmp)
        print(f"{a.queue} queued ({queued_s:.0f} s to queue): daemon peak RSS {peak / 1024:.1f} MiB; "
              f"a fresh message delivered in {fresh_s:.2f} s ({'ok' if ok else 'NOT delivered'})",
              flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    def rate(rtt, tool):
        return next(r["rate"] for r in rows if r["rtt"] == rtt and r["tool"] == tool)

    lines = [MARK, "",
             f"Run {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC by "
             "bench/daemon_bench.py: messages of about 4 KiB already queued, delivered to "
             "one destination (Postfix's smtp-sink behind bench/latproxy); the clock runs "
             "from the start of delivery to an empty queue.  Postfix is a full MTA with "
             "its own queue (relayhost = the proxy), released and flushed.  RT/msg is "
             "counted by the proxy over all connections; the connections column counts "
             "those opened during the run (in the one-connection rows one at a time: a "
             "mailspool delivery agent takes at most 2000 messages, then the next one connects).", "",
             "| RTT | tool | messages | seconds | msg/s | RT/msg | connections |",
             "|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['rtt']} ms | {r['tool']} | {r['messages']} | {r['seconds']:.2f} | "
                     f"{r['rate']:.1f} | {r['rtpm']:.3f} | {r['conns']} |")
    lines.append("")
    for rtt in sorted({r["rtt"] for r in rows}):
        try:
            many = rate(rtt, "mailspool, 20 connections") / rate(rtt, "Postfix, default concurrency (20)")
            single = rate(rtt, "mailspool, one connection") / rate(rtt, "Postfix, one connection")
        except StopIteration:
            continue
        lines.append(f"- RTT {rtt} ms: **{many:.2f}x** Postfix at 20 connections, "
                     f"**{single:.2f}x** at one connection.")
    lines += ["",
              "Targets: at 100 ms at least 2x Postfix at equal connection counts; at RTT 0 at "
              "least Postfix's rate.", "",
              f"Memory: {a.queue} messages queued for a destination that is down (tried once, "
              f"then backed off for an hour): scheduler peak resident **{peak / 1024:.1f} MiB** "
              f"(target < 64 MiB); a fresh message for a healthy destination, submitted "
              f"meanwhile, was delivered **{fresh_s:.2f} s** after its submission began.", ""]
    write_section(a.out, lines, MARK)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
