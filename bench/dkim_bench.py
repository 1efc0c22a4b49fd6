#!/usr/bin/python3
"""DKIM benchmark: what signing at commit costs (issue 14).

Messages of about 4 KiB are committed to a fresh spool with full
durability, under four configurations measured in the same run and
interleaved in blocks so drift hits all alike: no DKIM, rsa-sha256 (2048
bits), ed25519-sha256, and both signatures on every message.

1. One `sendmail -i` process per message (as cron, PHP and git use it),
   the full mailspool program run by the queue's owner: the price here
   includes opening libopendkim (and with it OpenSSL) in every process.
2. One `mailspool send` process committing many files: the signing itself,
   without process start-up.

CPU is the children's user+system time per message (getrusage).  No peer
is measured: the question is what signing adds to our own commit, and
the ratio against "no DKIM" in the same run answers it.  (No network is
involved: signing happens at commit, and an attempt only sends the stored
fields, so delivery costs the same with or without them.)

The figures replace the "DKIM signing" section of bench/RESULTS.md.

Usage: bench/dkim_bench.py [--messages 1000] [--batch 4000]
"""
import argparse
import datetime
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from spool_bench import message, write_section  # noqa: E402

MAILSPOOL = os.path.join(ROOT, "build", "mailspool")
MARK = "## DKIM signing (issue 14)"
KINDS = ("none", "rsa", "ed25519", "both")


def children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def make_spool(tmp, kind, keys):
    d = os.path.join(tmp, kind)
    os.makedirs(d)
    conf = os.path.join(d, "mailspool.conf")
    text = f"spool_dir = {d}/spool\nhostname = bench.test\nmin_free_space = 0\nmail_owner = root\n"
    sel = {"rsa": ["r"], "ed25519": ["e"], "both": ["r", "e"]}.get(kind, [])
    if sel:
        text += (f"dkim.sender.test.selector = {' '.join(sel)}\n"
                 f"dkim.sender.test.key_file = {' '.join(keys[s] for s in sel)}\n"
                 "dkim.sender.test.algorithm = "
                 + " ".join("rsa-sha256" if s == "r" else "ed25519-sha256" for s in sel) + "\n")
    with open(conf, "w") as f:
        f.write(text)
    link = os.path.join(d, "sendmail")
    os.symlink(MAILSPOOL, link)
    return conf, link


def keygen(tmp):
    keys = {}
    conf = os.path.join(tmp, "keygen.conf")
    with open(conf, "w") as f:
        f.write("mail_owner = root\n")
    for s, alg in (("r", "rsa-sha256"), ("e", "ed25519-sha256")):
        keys[s] = os.path.join(tmp, f"{s}.pem")
        subprocess.run([MAILSPOOL, "dkim-keygen", "-C", conf, "-a", alg, "-k", keys[s],
                        "sender.test", s], check=True, capture_output=True)
    return keys


def per_process(n, spools, msgs):
    wall = {k: 0.0 for k in KINDS}
    cpu = {k: 0.0 for k in KINDS}
    block = 100
    for start in range(0, n, block):
        for k in KINDS:
            conf, link = spools[k]
            env = dict(os.environ, MAILSPOOL_CONFIG=conf)
            argv = [link, "-i", "-f", "bench@sender.test", "sink@remote.test"]
            c0, t0 = children_cpu(), time.monotonic()
            for m in msgs[start:start + block]:
                r = subprocess.run(argv, input=m, env=env, capture_output=True)
                if r.returncode != 0:
                    raise RuntimeError(r.stderr.decode()[-300:])
            wall[k] += time.monotonic() - t0
            cpu[k] += children_cpu() - c0
    return {k: (n / wall[k], cpu[k] / n * 1e3) for k in KINDS}


def batch(n, spools, files):
    wall = {k: 0.0 for k in KINDS}
    cpu = {k: 0.0 for k in KINDS}
    block = 1000
    for start in range(0, n, block):
        for k in KINDS:
            conf, _ = spools[k]
            argv = [MAILSPOOL, "send", "-C", conf, "-q", "-f", "bench@sender.test", "--to",
                    "sink@remote.test"] + files[start:start + block]
            c0, t0 = children_cpu(), time.monotonic()
            subprocess.run(argv, check=True, capture_output=True)
            wall[k] += time.monotonic() - t0
            cpu[k] += children_cpu() - c0
    return {k: (n / wall[k], cpu[k] / n * 1e3) for k in KINDS}


def count(spool_conf):
    d = open(spool_conf).read().split("spool_dir = ")[1].split("\n")[0]
    return len(os.listdir(os.path.join(d, "env")))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=4000)
    ap.add_argument("--out", default=os.path.join(HERE, "RESULTS.md"))
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="ms-dkim-bench-", dir=os.path.join(ROOT, "build"))
    try:
        keys = keygen(tmp)
        spools = {k: make_spool(tmp, k, keys) for k in KINDS}
        msgs = [message(i).replace(b"From: bench@sender.test\n",
                                   b"From: Bench <bench@sender.test>\n") for i in range(a.messages)]
        os.makedirs(os.path.join(tmp, "files"))
        files = []
        for i in range(a.batch):
            p = os.path.join(tmp, "files", f"{i}.eml")
            with open(p, "wb") as f:
                f.write(message(i).replace(b"\n", b"\r\n"))
            files.append(p)
        pp = per_process(a.messages, spools, msgs)
        bt = batch(a.batch, spools, files)
        for k in KINDS:
            want = a.messages + a.batch
            assert count(spools[k][0]) == want, (k, count(spools[k][0]))
            print(f"{k}: sendmail {pp[k][0]:.0f} msg/s {pp[k][1]:.2f} ms CPU; "
                  f"send batch {bt[k][0]:.0f} msg/s {bt[k][1]:.3f} ms CPU", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    names = {"none": "no DKIM", "rsa": "rsa-sha256 (2048 bits)", "ed25519": "ed25519-sha256",
             "both": "both (two signatures)"}
    lines = [MARK, "",
             f"Run {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC by "
             "bench/dkim_bench.py: messages of about 4 KiB committed to a fresh spool (data and "
             "envelope fsynced), the four configurations interleaved in blocks.  CPU is user + "
             "system per message.", "",
             "| signing | sendmail per message: msg/s | vs none | CPU ms/msg | "
             "one send process: msg/s | vs none | CPU ms/msg |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for k in KINDS:
        lines.append(f"| {names[k]} | {pp[k][0]:.0f} | {pp[k][0] / pp['none'][0]:.2f} | "
                     f"{pp[k][1]:.2f} | {bt[k][0]:.0f} | {bt[k][0] / bt['none'][0]:.2f} | "
                     f"{bt[k][1]:.3f} |")
    lines += ["",
              f"{a.messages} messages per configuration through one `sendmail -i` process each "
              f"(the owner's, in-process: it opens libopendkim and OpenSSL when it signs); "
              f"{a.batch} through one `mailspool send` process per 1000 files.  Signing happens "
              "once, at commit; every attempt sends the stored fields, so delivery rates do "
              "not change.", ""]
    write_section(a.out, lines, MARK)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
