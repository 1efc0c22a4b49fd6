"""Against Postfix's smtp-sink: volume, ordering, constant memory, and its
fault options (reject, defer, disconnect, 421 at chosen commands)."""
import os
import re
import subprocess
import sys

import pytest

from conftest import BIN
from servers import SmtpSink


def seqs_in(transactions):
    return [int(re.search(rb"X-Seq: (\d+)", t).group(1)) for t in transactions]


def test_1000_messages_one_connection_exactly_once_in_order(send, write_msg):
    n = 1000
    pad = "x" * 75 + "\r\n"
    files = [write_msg(f"Subject: n{i}\r\nX-Seq: {i}\r\n\r\n" + pad * 52) for i in range(n)]
    with SmtpSink("-c") as sink:
        r = send(sink.url(), files, "-f", "a@sender.test", "--to", "b@example.test", "-q",
                 timeout=300)
        assert r.rc == 0, r.stdout[-2000:]
        assert r.summary["delivered"] == n
        assert r.summary["pipelining"] is True
        txs = sink.transactions()
        assert seqs_in(txs) == list(range(n))
        assert all(t.count(b"X-Client-Addr") == 1 for t in txs)
        # One wait per message, plus greeting, EHLO and the first envelope.
        assert r.summary["round_trips"] == n + 3
        assert r.summary["transactions"] == n


def test_one_write_carries_dot_and_next_envelope(send, write_msg, tmp_path):
    files = [write_msg(f"Subject: {i}\r\n\r\nbody\r\n") for i in range(3)]
    tx = tmp_path / "transcript"
    with SmtpSink() as sink:
        r = send(sink.url(), files, "-f", "a@sender.test", "--to", "b@example.test",
                 "--transcript", str(tx))
        assert r.rc == 0
    text = tx.read_text()
    # body summary, ".", RSET (B1), MAIL, RCPT, DATA, and only then a
    # write boundary
    assert re.search(r"C: \[message data: \d+ octets in \d+ lines, sha256 [0-9a-f]{64}\]\n"
                     r".*C: \.\n.*C: RSET\n.*C: MAIL FROM:<a@sender.test>\n.*C: RCPT TO:<b@example.test>\n"
                     r".*C: DATA\n.*--- write #\d+", text)


# smtp-sink fault option -> what every recipient must get, and the exit code.
# -r and -f imply -p (no PIPELINING), so those rows run the lock-step path.
FAULTS = [
    # options, recipients, messages, exit, state, stage, code, enhanced
    (["-r", "RCPT"], 1, 1, 75, "deferred", "rcpt", 450, "4.3.0"),
    (["-f", "MAIL"], 2, 1, 69, "failed", "mail", 500, "5.3.0"),
    (["-f", "."], 1, 1, 69, "failed", "dot", 500, "5.3.0"),
    (["-Q", "RCPT"], 1, 1, 75, "deferred", "rcpt", 421, None),
    (["-q", "DATA"], 1, 2, 75, "deferred", "session", 0, None),
]


@pytest.mark.parametrize("opts,nrcpt,nmsg,rc,state,stage,code,enh", FAULTS,
                         ids=[" ".join(f[0]) for f in FAULTS])
def test_fault_options(send, write_msg, opts, nrcpt, nmsg, rc, state, stage, code, enh):
    rcpts = [f"r{i}@example.test" for i in range(nrcpt)]
    args = ["-f", "a@sender.test"] + [x for r in rcpts for x in ("--to", r)]
    with SmtpSink(*opts) as sink:
        r = send(sink.url(), [write_msg("Subject: x\r\n\r\nx\r\n")] * nmsg, *args)
        assert r.rc == rc, r.stdout
        for m in range(nmsg):
            for a in rcpts:
                got = r.rcpt(m, a)
                assert (got["state"], got["stage"], got["code"]) == (state, stage, code), got
                if enh:
                    assert got["enhanced"] == enh
        if opts[0] in ("-r", "-f"):
            assert r.summary["pipelining"] is False
        if stage in ("mail", "rcpt"):
            assert sink.transactions() == []  # refused before any data was sent


def test_1gib_message_constant_memory(tmp_path):
    """A 1 GiB message goes out with under 16 MiB resident memory."""
    big = tmp_path / "big.eml"
    chunk = (b"y" * 76 + b"\r\n") * 13443  # about 1 MiB of whole lines
    with open(big, "wb") as f:
        f.write(b"Subject: big\r\n\r\n")
        while f.tell() < 1 << 30:
            f.write(chunk)
    assert os.path.getsize(big) >= 1 << 30
    with SmtpSink(dump=False) as sink:
        # Measure in a fresh process so no other child's peak is counted.
        probe = ("import resource, subprocess, sys\n"
                 "r = subprocess.run(sys.argv[1:], capture_output=True)\n"
                 "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n")
        out = subprocess.run([sys.executable, "-c", probe, BIN, "send", "--via", sink.url(),
                              "-f", "a@sender.test", "--to", "b@example.test", str(big)],
                             capture_output=True, timeout=600, check=True).stdout.split()
        rc, maxrss_kib = int(out[0]), int(out[1])
        assert rc == 0
        assert maxrss_kib < 16 * 1024, f"{maxrss_kib} KiB resident"


def test_allow_long_lines_delivers_them_intact(send, write_msg):
    """Over 998 octets is refused by default (test_aiosmtpd); with
    --allow-long-lines a 100000-octet line reaches the server intact."""
    line = b"L" * 100000
    with SmtpSink() as sink:
        r = send(sink.url(), [write_msg(b"Subject: long\r\nX-Seq: 1\r\n\r\n" + line + b"\r\nend\r\n")],
                 "-f", "a@sender.test", "--to", "b@example.test", "--allow-long-lines")
        assert r.rc == 0, r.stdout
        txs = sink.transactions()
        assert len(txs) == 1
        assert b"\n" + line + b"\nend\n" in txs[0]  # smtp-sink writes LF line ends
