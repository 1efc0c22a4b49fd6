#!/usr/bin/python3
"""Spool benchmark: submission with full durability, and listing a big queue.

1. 10,000 messages of about 4 KiB, each piped into its own `sendmail -i`
   process (as cron, PHP and git use it), one after another:
     - mailspool's sendmail into a fresh spool (data and envelope fsynced,
       renamed, directories fsynced before it exits 0);
     - Postfix's sendmail into a throwaway Postfix instance on the same disk
       (postdrop fsyncs the maildrop file before sendmail exits; pickup and
       cleanup then move it into the queue).  Timed to the last sendmail's
       exit, and to the moment all messages sit in Postfix's queue.
     - mailspool installed as users get it: `make install` into a
       throwaway root (its own SYSCONFDIR and LIBEXECDIR), `mailspool setup`
       making a throwaway queue owner, so every message goes through the
       set-id helper mailspool-drop (prepared by sendmail, checked again and
       committed by the helper as the owner) - the path of every user.  It
       is started exactly as Postfix's sendmail is (as root, which is not
       the queue's owner, so it takes the helper like anyone else): the
       same subprocess call for both, since Postfix's sendmail -C is
       refused to users outside alternate_config_directories.
   Interleaved in blocks of 1000 so drift hits all alike.
2. `mailspool queue` (mailq) and `mailspool queue --json` on a spool of
   100,000 messages: wall time and peak memory.  The 100,000 messages are
   written straight into the spool format by this script (valid envelopes
   with their checksums; no fsync), since submitting them one by one would
   only measure step 1 again.

The figures replace the "Spool" section of bench/RESULTS.md.

Usage: bench/spool_bench.py [--messages 10000] [--queue 100000]
"""
import argparse
import datetime
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))
import servers  # noqa: E402

MAILSPOOL = os.path.join(ROOT, "build", "mailspool")
MARK = "## Spool (issue 4; submission through the set-id helper since issue 11)"


def message(i):
    head = f"From: bench@sender.test\nTo: sink@remote.test\nSubject: spool bench {i}\n\n"
    line = "The quick brown fox jumps over the lazy dog; pack my box with jugs.\n"
    return (head + line * ((4096 - len(head)) // len(line))).encode()


def submit_all(argv, env, msgs):
    t0 = time.monotonic()
    for m in msgs:
        r = subprocess.run(argv, input=m, env=env, capture_output=True)
        if r.returncode != 0:
            raise RuntimeError(f"{argv[0]}: {r.returncode} {r.stderr.decode()[-300:]}")
    return time.monotonic() - t0


BENCH_OWNER = "msbenchq"


def install_for_users(tmp):
    """An install in a world-readable throwaway root (setup makes its queue
    owner); returns (root, the installed sendmail)."""
    subprocess.run(["userdel", BENCH_OWNER], capture_output=True)
    subprocess.run(["groupdel", BENCH_OWNER], capture_output=True)
    root = tempfile.mkdtemp(prefix="ms-bench-install-", dir="/tmp")
    os.chmod(root, 0o755)
    os.makedirs(f"{root}/etc")
    with open(f"{root}/etc/mailspool.conf", "w") as f:
        f.write(f"spool_dir = {tmp}/users-spool\nhostname = bench.test\nmin_free_space = 0\n"
                f"mail_owner = {BENCH_OWNER}\n")
    os.chmod(f"{root}/etc/mailspool.conf", 0o644)
    os.chmod(tmp, 0o755)  # the owner reaches its spool below the build tree
    os.chmod(os.path.dirname(tmp), 0o755)
    subprocess.run(["make", "-C", ROOT, "-s", "-j2", "install", f"BUILD={root}/build",
                    f"PREFIX={root}/usr", f"SYSCONFDIR={root}/etc",
                    f"LIBEXECDIR={root}/usr/libexec/mailspool", f"UNITDIR={root}/systemd"],
                   check=True, capture_output=True)
    return root, f"{root}/usr/lib/mailspool/sendmail"


def cleanup_users(root):
    shutil.rmtree(root, ignore_errors=True)
    subprocess.run(["userdel", BENCH_OWNER], capture_output=True)
    subprocess.run(["groupdel", BENCH_OWNER], capture_output=True)


def submission(n, tmp):
    conf = os.path.join(tmp, "mailspool.conf")
    with open(conf, "w") as f:
        f.write(f"spool_dir = {tmp}/spool\nhostname = bench.test\nmin_free_space = 0\nmail_owner = root\n")
    env = dict(os.environ, MAILSPOOL_CONFIG=conf)
    link = os.path.join(tmp, "sendmail")
    os.symlink(MAILSPOOL, link)
    msgs = [message(i) for i in range(n)]
    ms_t = pf_t = pf_queued = us_t = 0.0
    iroot, user_sendmail = install_for_users(tmp)
    us_argv = [user_sendmail, "-i", "-f", "bench@sender.test", "sink@remote.test"]
    with servers.Postfix(extra_main="header_checks = static:HOLD\n") as pf:
        pf_argv = ["/usr/sbin/sendmail", "-C", pf.conf, "-i", "-f", "bench@sender.test",
                   "sink@remote.test"]
        ms_argv = [link, "-i", "-f", "bench@sender.test", "sink@remote.test"]
        block = 1000
        for start in range(0, n, block):
            part = msgs[start:start + block]
            ms_t += submit_all(ms_argv, env, part)
            us_t += submit_all(us_argv, {"PATH": "/usr/bin:/bin"}, part)
            t0 = time.monotonic()
            pf_t += submit_all(pf_argv, None, part)
            while len(pf.queue()) < start + len(part):
                time.sleep(0.01)
            pf_queued += time.monotonic() - t0
        queued = len(pf.queue())
    got = subprocess.run([MAILSPOOL, "queue", "--json"], env=env, capture_output=True)
    count = int(re.search(rb'"count":(\d+)', got.stdout).group(1))
    users = len(os.listdir(f"{tmp}/users-spool/env"))
    cleanup_users(iroot)
    assert count == n and queued == n and users == n, (count, queued, users)
    return n / ms_t, n / pf_t, n / pf_queued, n / us_t


def envelope(qid, arrival, size):
    def s(x):
        return "=" + "".join(c if 0x21 <= ord(c) <= 0x7e and c != "%" else f"%{ord(c):02X}"
                             for c in x)
    body = (f"MSENV 1\nI {qid}\nA {arrival}\nU 0\nS {s('bench@sender.test')}\nZ {size}\nF 0\n"
            f"R 1 1 1 {arrival + 1800} {arrival} 451 {s('4.3.0')} {s('sink@remote.test')} "
            f"{s('451 4.3.0 try again later')}\nE 7\n")
    return body + "C " + hashlib.sha256(body.encode()).hexdigest() + "\n"


def big_queue(n, tmp):
    spool = os.path.join(tmp, "big", "spool")
    for d in ("tmp", "data", "env", "claim", "corrupt", "wake"):
        os.makedirs(os.path.join(spool, d), mode=0o700)
    os.chmod(spool, 0o700)
    data = message(0).replace(b"\n", b"\r\n")
    base = int(time.time()) - 86400
    for i in range(n):
        qid = f"{(base * 1000000 + i):013x}{i:016x}"
        with open(os.path.join(spool, "data", qid), "wb") as f:
            f.write(data)
        with open(os.path.join(spool, "env", qid), "w") as f:
            f.write(envelope(qid, base + i // 100, len(data)))
    conf = os.path.join(tmp, "big.conf")
    with open(conf, "w") as f:
        f.write(f"spool_dir = {spool}\nmin_free_space = 0\nmail_owner = root\n")
    probe = ("import resource, subprocess, sys, time\n"
             "t = time.monotonic()\n"
             "r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL)\n"
             "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,"
             " time.monotonic() - t)\n")
    out = {}
    for name, args in (("text", ["queue"]), ("json", ["queue", "--json"])):
        # The second run of each is timed: the first warms the page cache.
        for _ in range(2):
            res = subprocess.run([sys.executable, "-c", probe, MAILSPOOL] + args + ["-C", conf],
                                 capture_output=True, check=True).stdout.split()
        assert res[0] == b"0", res
        out[name] = (float(res[2]), int(res[1]))
    return out


def write_section(path, lines, mark=MARK):
    text = open(path).read() if os.path.exists(path) else "# Benchmark results\n"
    i = text.find(mark)
    if i >= 0:
        j = text.find("\n## ", i + len(mark))
        text = text[:i] + (text[j + 1:] if j >= 0 else "")
    text = text.rstrip("\n") + "\n\n" + "\n".join(lines) + "\n"
    with open(path, "w") as f:
        f.write(text)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=10000)
    ap.add_argument("--queue", type=int, default=100000)
    ap.add_argument("--out", default=os.path.join(HERE, "RESULTS.md"))
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="ms-spool-bench-", dir=os.path.join(ROOT, "build"))
    try:
        ms_rate, pf_rate, pf_queued, us_rate = submission(a.messages, tmp)
        print(f"submission: mailspool {ms_rate:.0f} msg/s (owner), {us_rate:.0f} msg/s (a user, "
              f"through the set-id helper), Postfix sendmail {pf_rate:.0f} msg/s "
              f"({pf_queued:.0f} msg/s to its queue)", flush=True)
        q = big_queue(a.queue, tmp)
        print(f"mailspool queue on {a.queue}: {q['text'][0]:.2f} s, {q['text'][1] / 1024:.1f} MiB; "
              f"--json {q['json'][0]:.2f} s, {q['json'][1] / 1024:.1f} MiB", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    lines = [MARK, "",
             f"Run {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC by "
             "bench/spool_bench.py, on the same disk for both tools.", "",
             f"Submission with full durability: {a.messages} messages of about 4 KiB, each piped "
             "into its own `sendmail -i` process, one after another (blocks of 1000, "
             "alternating between the tools).", "",
             "| tool | messages/s | vs Postfix |", "|---|---:|---:|",
             f"| mailspool sendmail as installed, through the set-id helper (prepared by "
             f"sendmail, checked again and committed by mailspool-drop; fsync data, envelope, "
             f"both directories) | {us_rate:.0f} | {us_rate / pf_rate:.2f} |",
             f"| the full mailspool program as sendmail, run by the queue's owner (in-process, the "
             f"same queue side; it loads OpenSSL and c-ares) | "
             f"{ms_rate:.0f} | {ms_rate / pf_rate:.2f} |",
             f"| Postfix sendmail (postdrop fsync), to its exit | {pf_rate:.0f} | 1.00 |",
             f"| Postfix, until every message is in its queue | {pf_queued:.0f} | "
             f"{pf_queued / pf_rate:.2f} |", "",
             f"Both sendmails are started the same way (as root, neither being its queue's "
             f"owner: each goes through its set-id program, postdrop or mailspool-drop).", "",
             f"Target: at least 2x Postfix's rate with the same durability, through the helper: "
             f"**{us_rate / pf_rate:.2f}x** ({us_rate / pf_queued:.2f}x against Postfix's rate "
             f"into its queue; the owner in-process: {ms_rate / pf_rate:.2f}x).", "",
             f"`mailspool queue` on a spool of {a.queue} messages: **{q['text'][0]:.2f} s**, peak "
             f"resident {q['text'][1] / 1024:.1f} MiB (text, to /dev/null); `--json` "
             f"{q['json'][0]:.2f} s, {q['json'][1] / 1024:.1f} MiB.  Messages are read one at a "
             "time; memory is the sorted id list plus one envelope.", ""]
    write_section(a.out, lines)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
