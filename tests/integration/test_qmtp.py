"""QMTP against a real server: mailfront 2.12's QMTP front end (qmtpfront)
under tcpserver.  What mailfront received is read back from its queuedir
backend and compared with what was sent, byte for byte.

mailfront answers once per package, not once per recipient as the protocol
says; these tests show every setting against it: the default (auto) finds
out from the first package with several recipients, `replies=package`
handles it from the start, and per-recipient counting ends in the reply
deadline instead of hanging (and is why auto is the default: Q12)."""
import os
import resource
import subprocess
import sys
import time

from conftest import BIN
from servers import Mailfront


def lf_message(i, extra=""):
    return (f"From: a@example.test\nTo: x@example.test\nSubject: qmtp {i}\n{extra}\n"
            f"body of message {i}\n.\n..leading dots stay as they are\n")


def test_batch_over_one_connection(send, write_msg):
    """50 messages of 1-3 recipients streamed over one connection; each
    arrives with its envelope and its bytes unchanged (no stuffing, no CRLF
    rewriting, LF encoding)."""
    n = 50
    files = [write_msg(lf_message(i)) for i in range(n)]
    with Mailfront() as mf:
        # A mix of recipient counts: --to is per run, so three runs.
        r = send(mf.url(), files, "-f", "sender@example.test", "--to", "x@example.test",
                 "--to", "y@example.test")
        assert r.rc == 0, r.stdout + r.stderr
        assert r.json["protocol"] == "qmtp"
        s = r.summary
        assert s["delivered"] == n and s["connections"] == 1 and s["transactions"] == n
        for m in r.messages:
            for rc in m["recipients"]:
                assert rc["state"] == "delivered" and rc["stage"] == "package"
                assert rc["enhanced"] == "2.6.0" and "accepted" in rc["text"]
        got = mf.messages(expect=n)
        assert len(got) == n
        for i, (sender, rcpts, data) in enumerate(got):
            assert sender == "sender@example.test"
            assert rcpts == ["x@example.test", "y@example.test"]
            assert data == lf_message(i).encode()
        # The batch costs a few waits, not one per message.
        assert s["round_trips"] <= 3


def test_null_sender_and_quoted_local_part(send, write_msg):
    with Mailfront() as mf:
        r = send(mf.url(), [write_msg(lf_message(0))], "-f", "", "--to",
                 '"john smith"@example.test')
        assert r.rc == 0, r.stdout + r.stderr
        [(sender, rcpts, _)] = mf.messages(expect=1)
        # Q2: the empty sender; addresses travel unquoted, as qmail keeps them.
        assert sender == "" and rcpts == ["john smith@example.test"]


def test_headers_recipients_and_bcc(send, write_msg):
    msg = ("From: a@example.test\nTo: To One <to1@example.test>, to2@example.test\n"
           "Cc: cc@example.test\nBcc: hidden@example.test\nSubject: t\n\nbody\n")
    with Mailfront() as mf:
        r = send(mf.url(), [write_msg(msg)], "-f", "a@example.test", "-t")
        assert r.rc == 0, r.stdout + r.stderr
        [(_, rcpts, data)] = mf.messages(expect=1)
        assert rcpts == ["to1@example.test", "to2@example.test", "cc@example.test",
                         "hidden@example.test"]
        assert b"Bcc" not in data and data.endswith(b"Subject: t\n\nbody\n")


def test_stdin_is_streamed(send):
    with Mailfront() as mf:
        r = send(mf.url(), [], "-f", "a@example.test", "--to", "x@example.test",
                 stdin=lf_message(7).encode())
        assert r.rc == 0, r.stdout + r.stderr
        [(_, _, data)] = mf.messages(expect=1)
        assert data == lf_message(7).encode()


def test_per_recipient_counting_times_out_not_hangs(send, write_msg):
    """The spec's one-reply-per-recipient counting against mailfront's
    one reply per package: the second recipient's reply never comes.  The
    reply deadline ends the wait; nothing is wrongly called delivered for
    the last message, and the exit status says "try again"."""
    files = [write_msg(lf_message(i)) for i in range(2)]
    with Mailfront() as mf:
        t0 = time.monotonic()
        r = send(mf.url(per_package=False) + "?replies=recipient", files, "-f",
                 "a@example.test", "--to", "x@example.test", "--to", "y@example.test",
                 "--timeout", "1")
        assert time.monotonic() - t0 < 10
        assert r.rc == 75
        last = r.messages[-1]["recipients"]
        assert last[-1]["state"] == "deferred"
        assert "more than once" in last[-1]["text"]
        assert "timed out" in r.summary["session_error"]


def test_crlf_data_is_declared_not_rewritten(send, write_msg):
    """CRLF data goes out as encoding #1 (\\015) unchanged when the route
    says crlf.  mailfront 2.12 does not implement that encoding and answers
    Z: a temporary failure, reported as such."""
    with Mailfront() as mf:
        r = send(mf.url(), [write_msg("Subject: crlf\r\n\r\nbody\r\n")], "-f", "a@example.test",
                 "--to", "x@example.test", "--qmtp-encoding", "crlf")
        assert r.rc == 75
        rc = r.rcpt(0, "x@example.test")
        assert rc["state"] == "deferred" and rc["stage"] == "package"
        assert "non-LF" in rc["text"]
        assert mf.messages() == []


def test_a_refused_crlf_encoding_moves_the_stream_to_lf_on_a_new_connection(send, write_msg,
                                                                               tmp_path):
    """Q11: with the encoding ours to choose, mailfront's refusal of \\015
    (and its hang-up) is a session problem: the refused message and every
    package it never answered go again, with the LF encoding, on a new
    connection - each exactly once, the data the same lines."""
    files = [write_msg(f"Subject: crlf {i}\r\nX-Seq: {i}\r\n\r\nbody {i}\r\n") for i in range(5)]
    tr = tmp_path / "tr"
    with Mailfront() as mf:
        r = send(mf.url(), files, "-f", "a@example.test", "--to", "x@example.test",
                 "--transcript", str(tr))
        assert r.rc == 0, r.stdout
        got = mf.messages(expect=5)
    assert r.summary["delivered"] == 5 and r.summary["connections"] == 2
    assert r.summary["resent"] >= 1
    seqs = sorted(int(d.split(b"X-Seq: ")[1].split(b"\n")[0]) for _s, _r, d in got)
    assert seqs == list(range(5))
    for _s, _r, d in got:
        assert b"\r" not in d  # the LF encoding: each CRLF went as LF
    assert "refused the CRLF encoding" in tr.read_text()


def test_permanent_and_temporary_refusals(send, write_msg):
    files = [write_msg(lf_message(i)) for i in range(3)]
    # mailfront's reject plugin: a text starting with '-' is permanent.
    with Mailfront(plugins=("reject", "accept"), env={"REJECT": "-no thanks"}) as mf:
        r = send(mf.url(), files, "-f", "a@example.test", "--to", "x@example.test")
        assert r.rc == 69
        assert [m["recipients"][0]["state"] for m in r.messages] == ["failed"] * 3
        assert r.rcpt(0, "x@example.test")["text"] == "no thanks"
    with Mailfront(plugins=("reject", "accept"), env={"REJECT": "come back later"}) as mf:
        r = send(mf.url(), files, "-f", "a@example.test", "--to", "x@example.test")
        assert r.rc == 75
        assert [m["recipients"][0]["state"] for m in r.messages] == ["deferred"] * 3


def test_default_mode_learns_that_mailfront_answers_per_package(send, write_msg, tmp_path):
    """Q12: with the default reply mode, mailfront's one reply per package
    is found out on the first message with two recipients (it goes alone,
    one reply, then silence) and every later reply is credited to its own
    message: a refused message in the middle is refused for both of its
    recipients, the ones around it delivered for both; no timeout, nothing
    called "may be delivered more than once"."""
    small, big = write_msg(lf_message(0)), write_msg(lf_message(1, "X-Pad: " + "p" * 500 + "\n"))
    with Mailfront(plugins=("counters", "accept"), env={"DATABYTES": "300"}) as mf:
        t0 = time.monotonic()
        r = send(mf.url(per_package=False), [small, big, small, small], "-f", "a@example.test",
                 "--to", "x@example.test", "--to", "y@example.test", "--transcript",
                 str(tmp_path / "tr"))
        assert time.monotonic() - t0 < 10
        assert r.rc == 69, r.summary
        states = [[rc["state"] for rc in m["recipients"]] for m in r.messages]
        assert states == [["delivered"] * 2, ["failed"] * 2, ["delivered"] * 2,
                          ["delivered"] * 2]
        assert all("more than once" not in rc.get("text", "") for m in r.messages
                   for rc in m["recipients"])
        assert r.rcpt(1, "y@example.test")["enhanced"] == "5.2.3"
        assert "answers once per package (Q12)" in (tmp_path / "tr").read_text()
        got = mf.messages(expect=3)
        assert [m[1] for m in got] == [["x@example.test", "y@example.test"]] * 3


def test_size_limit_enhanced_code(send, write_msg):
    small, big = write_msg(lf_message(0)), write_msg(lf_message(1, "X-Pad: " + "p" * 500 + "\n"))
    with Mailfront(plugins=("counters", "accept"), env={"DATABYTES": "300"}) as mf:
        r = send(mf.url(), [small, big, small], "-f", "a@example.test", "--to", "x@example.test")
        assert r.rc == 69
        states = [m["recipients"][0]["state"] for m in r.messages]
        assert states == ["delivered", "failed", "delivered"]
        failed = r.rcpt(1, "x@example.test")
        assert failed["enhanced"] == "5.2.3" and "maximum message length" in failed["text"]
        assert len(mf.messages(expect=2)) == 2


def test_session_cycling(send, write_msg):
    """Q9: after --max-session the client finishes what is in flight, closes
    between packages and goes on over a new connection; nothing is lost or
    sent twice."""
    n = 40
    pad = "X-Pad: " + "p" * 900 + "\n"
    msgs = [lf_message(i, pad * 50) for i in range(n)]  # 45 KiB each: sending takes a while
    files = [write_msg(m) for m in msgs]
    with Mailfront() as mf:
        r = send(mf.url(), files, "-f", "a@example.test", "--to", "x@example.test",
                 "--max-session", "0.001")
        assert r.rc == 0, r.stdout + r.stderr
        assert r.summary["connections"] > 1
        got = mf.messages(expect=n)
        assert [d for _, _, d in got] == [m.encode() for m in msgs]


def test_transcript(send, write_msg, tmp_path):
    tfile = tmp_path / "t.json"
    with Mailfront() as mf:
        r = send(mf.url(), [write_msg(lf_message(0))], "-f", "a@example.test",
                 "--to", "x@example.test", "--transcript", str(tfile))
        assert r.rc == 0
    import json
    events = json.loads(tfile.read_text())
    sent = [e["text"] for e in events if e["dir"] == "C"]
    assert any("[package 1: encoding byte LF" in t for t in sent)
    assert "14:a@example.test," in sent and "18:14:x@example.test,," in sent
    assert any(e["dir"] == "S" and e["text"].startswith("24:K2.6.0") for e in events)
    assert any(e["dir"] == "W" for e in events)


def test_qmtp_options_are_checked(send, write_msg):
    f = write_msg(lf_message(0))
    r = send("qmtp://127.0.0.1:1", [f], "--to", "x@example.test", "--no-pipelining")
    assert r.rc == 64 and "smtp:// only" in r.stderr
    r = send("smtp://127.0.0.1:1", [f], "--to", "x@example.test", "--qmtp-replies", "package")
    assert r.rc == 64 and "qmtp:// only" in r.stderr
    r = send("qmtp://127.0.0.1:1?replies=sometimes", [f], "--to", "x@example.test")
    assert r.rc == 64 and "unknown parameter" in r.stderr
    r = send("qmtp://127.0.0.1:1", [f], "--to", "x@example.test\r\nD")
    assert r.rc == 64


def test_large_file_constant_memory(tmp_path):
    """A 512 MiB message goes from its file in constant memory."""
    big = tmp_path / "big.eml"
    line = b"x" * 99 + b"\n"
    with open(big, "wb") as f:
        f.write(b"Subject: big\n\n")
        chunk = line * 10000
        for _ in range(512 * 1024 * 1024 // len(chunk)):
            f.write(chunk)
    with Mailfront(backend="echo") as mf:
        code = ("import resource, subprocess, sys\n"
                f"r = subprocess.run([{BIN!r}, 'send', '--via', {mf.url()!r}, '-q', '-f', "
                f"'a@example.test', '--to', 'x@example.test', {str(big)!r}])\n"
                "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=300,
                             check=True).stdout.split()
        rc, maxrss_kib = int(out[-2]), int(out[-1])
        assert rc == 0
        assert maxrss_kib < 16 * 1024, f"{maxrss_kib} KiB resident"

