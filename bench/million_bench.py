#!/usr/bin/env python3
"""A very large queue (issue 12): N messages (default 1,000,000) of about
1 KiB wait for a destination that refuses connections, and the daemon runs.

Measured: how long queueing took; the scheduler's peak resident memory
(VmHWM of the daemon process itself, agents apart) through its first pass
over the queue and after; how long a fresh message for a healthy
destination takes from submission to delivery (aiosmtpd), once submitted
during the daemon's first pass and once when it is quiet; and how long
`mailspool queue` (mailq) takes to list all N.

Usage: bench/million_bench.py [--messages 1000000] [--out bench/RESULTS.md]
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
from run import FROM, MAILSPOOL, servers  # noqa: E402
from spool_bench import write_section  # noqa: E402
from daemon_bench import queue_for_dead, vm_hwm_kib  # noqa: E402

MARK = "## A million queued messages (issue 12)"


def fresh(conf, good, tag):
    """Submit one message for the healthy destination; seconds until it arrives."""
    before = len(good.envelopes)
    t0 = time.monotonic()
    subprocess.run([MAILSPOOL, "send", "-C", conf, "-q", "-f", FROM, "--to", f"{tag}@good.test"],
                   input=b"Subject: fresh\r\n\r\nhi\r\n", check=True)
    while len(good.envelopes) == before and time.monotonic() - t0 < 300:
        time.sleep(0.005)
    return time.monotonic() - t0 if len(good.envelopes) > before else float("inf")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=1000000)
    ap.add_argument("--out", default=os.path.join(HERE, "RESULTS.md"))
    a = ap.parse_args()
    n = a.messages
    root = tempfile.mkdtemp(prefix="ms-million-", dir=os.path.join(run.ROOT, "build"))
    try:
        with servers.Aiosmtpd() as good:
            conf, queued_s = queue_for_dead(root, good, n)
            print(f"queued {n} in {queued_s:.0f} s", flush=True)
            t1 = time.monotonic()
            out = subprocess.run([MAILSPOOL, "queue", "-C", conf], capture_output=True, check=True)
            mailq_s = time.monotonic() - t1
            print(f"mailq on {n}: {mailq_s:.1f} s ({len(out.stdout) >> 20} MiB of listing)",
                  flush=True)
            d = subprocess.Popen([MAILSPOOL, "daemon", "-C", conf, "--foreground"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                time.sleep(3)
                during = fresh(conf, good, "during")  # the first pass is under way
                print(f"fresh message during the first pass: {during:.2f} s", flush=True)
                log = os.path.join(root, "log")
                deadline = time.monotonic() + 1800
                while time.monotonic() < deadline:
                    if os.path.exists(log) and "not tried again" in open(log).read():
                        break
                    time.sleep(0.5)
                # The first pass: every envelope read once (then no more).
                time.sleep(30)
                quiet = fresh(conf, good, "quiet")
                print(f"fresh message when quiet: {quiet:.2f} s", flush=True)
                peak = vm_hwm_kib(d.pid)
            finally:
                d.send_signal(signal.SIGTERM)
                d.wait(timeout=120)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"scheduler peak RSS {peak / 1024:.1f} MiB", flush=True)
    lines = [MARK, "",
             f"Run {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC by "
             f"bench/million_bench.py: {n} messages of about 1 KiB queued for a destination "
             "that refuses connections (backed off for an hour after its probe), defaults "
             "otherwise.", "",
             "| measure | value | target |", "|---|---:|---|",
             f"| queueing {n} (`send -q`, 2000 per call) | {queued_s:.0f} s | |",
             f"| `mailspool queue` (mailq) on {n} | {mailq_s:.1f} s | < 30 s |",
             f"| scheduler peak resident memory | {peak / 1024:.1f} MiB | < 256 MiB |",
             f"| fresh message, submitted during the first pass | {during:.2f} s | < 1 s |",
             f"| fresh message, daemon quiet | {quiet:.2f} s | < 1 s |", ""]
    write_section(a.out, lines, MARK)


if __name__ == "__main__":
    main()
