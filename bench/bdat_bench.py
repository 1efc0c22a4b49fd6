#!/usr/bin/python3
"""BDAT streamed across messages vs DATA, against real servers that offer
CHUNKING (Postfix smtpd and Exim, each queueing what it accepts), behind
bench/latproxy at 100 ms round trip, with the peers in the same run.

  mailspool BDAT      the default: BDAT streamed, 128 messages in flight
  mailspool BDAT K=n  the window's effect: --bdat-window 1, 16, 64, 256
  mailspool DATA      --no-chunking: cross-message pipelining, one wait per
                      message (the 354)
  smtp-source -d      Postfix's test client, one session, lock-step DATA
  Net::SMTP           Perl's core client, lock-step

About 4 KiB per message, one recipient.  The slow shapes send fewer
messages (rates are per message, so the ratios stay fair).  Round trips per
message are counted by the proxy: client sends that had to wait for server
data.  Appends its table to bench/RESULTS.md.

Usage: bench/bdat_bench.py [--rtt 100] [--messages 1000] [--quick]
"""
import argparse
import datetime
import json
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from run import FROM, HERE as BENCH, LATPROXY, MAILSPOOL, make_messages, proxy_stats, timed  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))
import servers  # noqa: E402


class Front:
    """The latency proxy in front of a server already listening on port."""

    def __init__(self, port, rtt_ms):
        self.target, self.rtt = port, rtt_ms
        self.port = servers.free_port()
        self.stats = tempfile.mktemp(prefix="ms-bdat-stats-")

    def __enter__(self):
        import subprocess
        self.proxy = subprocess.Popen([LATPROXY, "-l", str(self.port), "-t", str(self.target),
                                       "-d", str(self.rtt // 2), "-s", self.stats])
        time.sleep(0.2)
        open(self.stats, "w").close()
        return self

    def flights(self):
        time.sleep(0.3 + self.rtt / 1000)
        got = proxy_stats(self.stats)
        open(self.stats, "w").close()
        return got

    def __exit__(self, *exc):
        servers.stop(self.proxy)
        os.unlink(self.stats)


# The test servers relay only example.test (and refuse the rest, which a
# stream would meet as Postfix's error limit, not as speed).
TO = "sink@example.test"


def mailspool(front, files, extra=()):
    dt, r = timed([MAILSPOOL, "send", "--via", f"smtp://127.0.0.1:{front.port}", "-f", FROM,
                   "--to", TO, "--json", *extra, *files])
    s = json.loads(r.stdout)["summary"]
    assert s["delivered"] == len(files), s
    return dt, s["shape"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rtt", type=int, default=100)
    ap.add_argument("--messages", type=int, default=1000)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=os.path.join(HERE, "RESULTS.md"))
    a = ap.parse_args()
    n = 100 if a.quick else a.messages
    slow = max(20, n // 10)  # the one-wait-or-more shapes
    tmp = tempfile.mkdtemp(prefix="ms-bdat-bench-")
    files = make_messages(os.path.join(tmp, "msgs"), n)
    results = {}
    for name, cls in (("Postfix 3.7 smtpd", servers.Postfix), ("Exim 4.96", servers.Exim)):
        rows = []
        with cls() as srv, Front(srv.port, a.rtt) as front:
            plan = [("mailspool BDAT (default, K=128)", n, ()),
                    ("mailspool BDAT K=1", slow, ("--bdat-window", "1")),
                    ("mailspool BDAT K=16", n, ("--bdat-window", "16")),
                    ("mailspool BDAT K=64", n, ("--bdat-window", "64")),
                    ("mailspool BDAT K=256", n, ("--bdat-window", "256")),
                    ("mailspool DATA (--no-chunking)", slow, ("--no-chunking",))]
            for label, k, extra in plan:
                dt, shape = mailspool(front, files[:k], extra)
                rt, conns = front.flights()
                rows.append((label, k, dt, rt, conns, shape))
            peers = (("smtp-source -d (lock-step DATA)",
                      ["smtp-source", "-d", "-s", "1", "-m", str(slow), "-l", "4096", "-f", FROM,
                       "-t", TO, f"127.0.0.1:{front.port}"]),
                     ("Net::SMTP (Perl, lock-step)",
                      ["perl", os.path.join(BENCH, "netsmtp.pl"), "127.0.0.1", str(front.port),
                       FROM, TO, *files[:slow]]))
            for label, argv in peers:
                k = slow
                dt, _ = timed(argv)
                rt, conns = front.flights()
                rows.append((label, k, dt, rt, conns, "lock-step"))
        results[name] = rows
        base = next(r for r in rows if r[0].startswith("mailspool DATA"))
        for label, k, dt, rt, conns, shape in rows:
            print(f"{name:18} {label:34} {k:5} msgs {k / dt:8.1f} msg/s "
                  f"{rt / k:6.3f} RT/msg  x{(k / dt) / (base[1] / base[2]):6.2f} vs DATA  "
                  f"({shape}, {conns} conn)", flush=True)
    write(a, n, results)


def write(a, n, results):
    lines = ["", f"## BDAT streamed vs DATA vs peers, {a.rtt} ms RTT "
                 f"({datetime.date.today().isoformat()}, bench/bdat_bench.py)", "",
             f"About 4 KiB per message, one recipient, one connection; {n} messages for the "
             "streamed shapes, fewer for those that wait per message (rates are per message). "
             "Servers queue what they accept (Postfix HOLD, Exim queue_only). "
             "RT/msg counted by bench/latproxy. Same run; ratios against mailspool's own DATA "
             "path and against each peer.", ""]
    for name, rows in results.items():
        base = next(r for r in rows if r[0].startswith("mailspool DATA"))
        src = next(r for r in rows if r[0].startswith("smtp-source"))
        lines += [f"### {name}", "",
                  "| client | messages | msg/s | RT/msg | vs DATA | vs smtp-source | shape |",
                  "|---|---|---|---|---|---|---|"]
        for label, k, dt, rt, conns, shape in rows:
            rate = k / dt
            lines.append(f"| {label} | {k} | {rate:.1f} | {rt / k:.3f} | "
                         f"{rate / (base[1] / base[2]):.2f}x | {rate / (src[1] / src[2]):.2f}x | "
                         f"{shape} |")
        lines.append("")
    with open(a.out, "a") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
