"""SMTP shapes against real servers (PROTOCOL-RULES P1-P6): BDAT streamed
across messages (Postfix, Exim, Dovecot submission), RSET in front of every
MAIL that rides behind data (Dovecot), servers that refuse (Haraka) or lose
(chasquid) commands written behind a final dot, and servers that limit a
connection (OpenSMTPD's 100 messages, Exim's failed-transaction and
per-connection limits) - every message delivered exactly once, none failed
for the server's quirk, no wait for a timeout."""
import collections
import os
import re

import pytest

from servers import (LATER, REJECT, SIZE_LIMIT, Aiosmtpd, Chasquid, DovecotSubmission, Exim,
                     Haraka, OpenSMTPD, Postfix)
from test_daemon import World, dns_for, wait_for


def numbered(write_msg, n, lines=60, rcpt="b@example.test"):
    """n messages with a unique X-Seq each, a leading-dot line (stuffing
    for DATA, none for BDAT) and LF line ends (CRLF on the wire)."""
    files, bodies = [], {}
    for i in range(n):
        body = (f"From: a@x.test\nTo: {rcpt}\nX-Seq: {i}\nSubject: s{i}\n\n" +
                "".join(f"line {k} of message {i}\n" for k in range(lines)) + ".dot line\n")
        files.append(write_msg(body))
        bodies[i] = body.encode()
    return files, bodies


def seq_of(data):
    m = re.search(rb"X-Seq: (\d+)", data)
    return int(m.group(1)) if m else None


def states(r):
    c = collections.Counter()
    for m in r.messages:
        for rc in m["recipients"]:
            c[(rc["address"], rc["state"])] += 1
    return c


def test_haraka_refuses_commands_behind_the_dot_and_nothing_is_bounced(send, write_msg,
                                                                         tmp_path):
    files, _ = numbered(write_msg, 20)
    tr = tmp_path / "tr"
    with Haraka() as hk:
        r = send(hk.url(), files, "-f", "a@x.test", "--to", "b@example.test",
                 "--transcript", str(tr))
        got = hk.messages(expect=20)
    assert r.rc == 0, r.stdout
    assert r.summary["delivered"] == 20 and r.summary["failed"] == 0
    assert sorted(seq_of(d) for _s, _r, d in got) == list(range(20))  # exactly once
    text = tr.read_text()
    assert "pipelined after end of DATA" in text  # Haraka refused the ride once...
    assert r.summary["resent"] == 1  # ...that message went again, alone
    assert r.summary["shape"] == "data"
    assert "timed out" not in text


def test_chasquid_loses_commands_behind_the_dot_and_gets_everything(send, write_msg, tmp_path):
    files, _ = numbered(write_msg, 20)
    tr = tmp_path / "tr"
    with Chasquid() as cq:
        r = send(cq.url(), files, "-f", "a@x.test", "--to", "b@example.test", "--tls", "none",
                 "--transcript", str(tr))
        got = cq.messages(expect=20)
    assert r.rc == 0, r.stdout
    assert r.summary["delivered"] == 20
    assert sorted(seq_of(d) for _s, _r, d in got) == list(range(20))
    text = tr.read_text()
    # One short probe found it out (not a 5-minute timeout); the rest went
    # one at a time on a second connection.
    assert "the server discards such commands" in text
    assert r.summary["connections"] == 2
    assert "timed out" not in text


@pytest.mark.parametrize("server", ["haraka", "chasquid"])
def test_the_daemon_delivers_everything_to_haraka_and_chasquid(tmp_path, server, write_msg):
    cls = Haraka if server == "haraka" else Chasquid
    with cls() as srv, dns_for(25) as dns:
        w = World(str(tmp_path), dns, 25, extra=f"default_route = {srv.url()}\n")
        for i in range(20):
            w.queue_msg([f"b@example.test"], f"Subject: {i}\r\nX-Seq: {i}\r\n\r\nbody\r\n".encode())
        w.once(timeout=120)
        got = srv.messages(expect=20)
        assert sorted(seq_of(d) for _s, _r, d in got) == list(range(20)), w.logtext()
        assert w.spool.queue() == []
        # Nothing bounced: no message from the null sender was queued.
        assert "bounce" not in w.logtext().lower()


def test_opensmtpd_past_its_100_messages_per_session(send, write_msg):
    files, _ = numbered(write_msg, 130, lines=3)
    with OpenSMTPD() as osd:
        r = send(osd.url(), files, "-f", "a@x.test", "--to", "b@example.test")
        assert r.rc == 0, r.stdout
        assert r.summary["delivered"] == 130
        assert r.summary["connections"] == 2  # message 101 got 452 4.5.3: a new session
        assert wait_for(lambda: len(osd.messages()) == 130, 20)
        assert sorted(seq_of(d) for d in osd.messages()) == list(range(130))


def check_bdat_stream(r, n, every=5):
    """Every 5th message also goes to REJECT, every 7th to LATER."""
    assert r.summary["shape"] == "bdat-stream"
    assert r.summary["bdat"] == n
    c = states(r)
    assert c[("b@example.test", "delivered")] == n
    assert c[(REJECT, "failed")] == len(range(0, n, every))
    assert c[(LATER, "deferred")] == len(range(0, n, 7))
    for i in (0, 5, 7):
        m = r.messages[i]
        for rc in m["recipients"]:
            if rc["address"] == REJECT:
                assert rc["stage"] == "rcpt" and rc["code"] // 100 == 5
            if rc["address"] == LATER:
                assert rc["stage"] == "rcpt" and rc["code"] // 100 == 4


def send_mixed(send, url, files):
    """One `send` per recipient pattern would lose the stream: instead the
    recipients ride on -t, from each message's own To/Cc."""
    return send(url, files, "-f", "a@x.test", "-t")


def mixed_files(write_msg, n):
    files, bodies = [], {}
    for i in range(n):
        to = ["b@example.test"] + ([REJECT] if i % 5 == 0 else []) + ([LATER] if i % 7 == 0 else [])
        body = (f"From: a@x.test\nTo: {', '.join(to)}\nX-Seq: {i}\nSubject: s{i}\n\n" +
                "".join(f"line {k} of message {i}\n" for k in range(60)) + ".dot line\n")
        files.append(write_msg(body))
        bodies[i] = body
    return files, bodies


def test_postfix_bdat_stream_of_1000_exactly_once_and_byte_exact(send, write_msg):
    files, bodies = mixed_files(write_msg, 1000)
    with Postfix() as pf:
        r = send_mixed(send, pf.url(), files)
        check_bdat_stream(r, 1000)
        assert r.summary["round_trips_per_message"] < 0.5
        q = pf.queue()
        assert len(q) == 1000
        seen = collections.Counter()
        for item in q[::50]:  # postcat per message is slow: a sample for bytes
            body = pf.body(item["queue_id"]).decode()
            s = seq_of(body.encode())
            # The whole message as submitted follows Postfix's own Received.
            assert body.endswith(bodies[s].split("\n\n", 1)[1]), s
        for item in q:
            seen[tuple(sorted(x["address"] for x in item["recipients"]))] += 1
        assert seen[("b@example.test",)] + seen[("b@example.test", LATER)] == 1000


def test_exim_bdat_stream_of_1000_exactly_once_and_byte_exact(send, write_msg):
    files, bodies = mixed_files(write_msg, 1000)
    with Exim() as ex:
        r = send_mixed(send, ex.url(), files)
        check_bdat_stream(r, 1000)
        got = ex.messages()
    assert len(got) == 1000
    # An Exim -D file is its id line, then the body exactly as received.
    by_seq = {}
    for d in got:
        m = re.search(rb"line 0 of message (\d+)\n", d)
        by_seq[int(m.group(1))] = d.split(b"\n", 1)[1]
    assert sorted(by_seq) == list(range(1000))
    for i in range(1000):
        assert by_seq[i] == bodies[i].split("\n\n", 1)[1].encode()


def test_exim_failed_transactions_never_trip_its_nonmail_limit(send, write_msg):
    # 15 messages to a refused recipient: before, Exim's non-mail counter
    # answered the 12th RSET with 554 and 3 messages were deferred.
    files, _ = numbered(write_msg, 15, lines=2, rcpt=REJECT)
    with Exim() as ex:
        r = send(ex.url(), files, "-f", "a@x.test", "--to", REJECT)
    c = states(r)
    assert c == {(REJECT, "failed"): 15}, r.stdout
    assert r.summary["connections"] == 2  # 8 failures on the first, then a fresh one
    assert all(m["recipients"][0]["code"] == 550 for m in r.messages)


def test_exim_per_connection_message_cap_moves_the_rest_to_a_new_session(send, write_msg):
    files, _ = numbered(write_msg, 25, lines=2)
    with Exim(extra_main="smtp_accept_max_per_connection = 10") as ex:
        r = send(ex.url(), files, "-f", "a@x.test", "--to", "b@example.test")
        got = ex.messages()
    assert r.summary["delivered"] == 25, r.stdout
    assert r.summary["connections"] == 3
    assert len(got) == 25


@pytest.mark.parametrize("chunking", [True, False])
def test_dovecot_submission_takes_100_without_crashing(send, write_msg, tmp_path, chunking):
    files, _ = numbered(write_msg, 100, lines=5)
    pw = tmp_path / "pw"
    pw.write_text(DovecotSubmission.password + "\n")
    pw.chmod(0o600)
    with Aiosmtpd() as backend, DovecotSubmission(backend.port) as dv:
        args = ["-f", "a@x.test", "--to", "b@example.test", "--tls", "none", "--auth-plaintext",
                "--password-file", str(pw)] + ([] if chunking else ["--no-chunking"])
        r = send(f"smtp://user@127.0.0.1:{dv.port}", files, *args)
        assert r.rc == 0, r.stdout
        assert r.summary["delivered"] == 100
        assert r.summary["shape"] == ("bdat-stream" if chunking else "data-cross")
        assert wait_for(lambda: len(backend.envelopes) == 100, 20)
        assert sorted(seq_of(e[2]) for e in backend.envelopes) == list(range(100))
        log = dv.log()
    assert "Panic" not in log and "assertion failed" not in log.lower()


def test_a_message_over_the_advertised_size_is_refused_and_the_stream_goes_on(send, write_msg,
                                                                                tmp_path):
    files, _ = numbered(write_msg, 6, lines=3)
    big = write_msg("Subject: big\n\n" + "x" * 76 + "\n" * 1 + ("y" * 76 + "\n") * 400)
    tr = tmp_path / "tr"
    with Postfix() as pf:
        r = send(pf.url(), files[:3] + [big] + files[3:], "-f", "a@x.test", "--to",
                 "b@example.test", "--transcript", str(tr))
        assert len(pf.queue()) == 6
    assert r.summary["delivered"] == 6 and r.summary["failed"] == 1
    big_rcpt = [m for m in r.messages if m["file"] == str(big)][0]["recipients"][0]
    assert big_rcpt["stage"] == "local" and big_rcpt["enhanced"] == "5.3.4"
    assert f"exceeds the server's fixed maximum of {SIZE_LIMIT}" in big_rcpt["text"]
    assert r.summary["shape"] == "bdat-stream"
    # Not one octet of it was written.
    assert not re.search(r"BDAT \d{5,} LAST", tr.read_text())


def test_a_1gib_message_goes_as_one_bdat_chunk_in_constant_memory(tmp_path):
    """P2: one chunk of exactly the declared size, read from the file as it
    goes: under 16 MiB resident for 1 GiB."""
    import subprocess
    import sys
    from conftest import BIN
    big = tmp_path / "big.eml"
    chunk = (b"y" * 76 + b"\n") * 13443  # LF lines: CRLF on the wire, 1 GiB+ in all
    with open(big, "wb") as f:
        f.write(b"Subject: big\n\n")
        while f.tell() < 1 << 30:
            f.write(chunk)
    out_json = tmp_path / "out.json"
    with Postfix(extra_main="message_size_limit = 0\n") as pf:
        # Measured in a fresh process so no other child's peak is counted
        # (and without a transcript, whose write records grow with size).
        probe = ("import resource, subprocess, sys\n"
                 "r = subprocess.run(sys.argv[2:], capture_output=True)\n"
                 "open(sys.argv[1], 'wb').write(r.stdout)\n"
                 "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n")
        out = subprocess.run([sys.executable, "-c", probe, str(out_json), BIN, "send", "--via",
                              pf.url(), "-f", "a@sender.test", "--to", "b@example.test", "--json",
                              str(big)],
                             capture_output=True, timeout=900, check=True).stdout.split()
        rc, maxrss_kib = int(out[0]), int(out[1])
        assert rc == 0
        assert len(pf.queue()) == 1
    import json
    summary = json.loads(out_json.read_text())["summary"]
    assert summary["bdat"] == 1 and summary["shape"] == "bdat-stream"
    lines = os.path.getsize(big) // 77 + 2
    # One chunk: every LF became CRLF, nothing else was added.
    assert summary["bytes_sent"] > os.path.getsize(big) + lines
    assert summary["bytes_sent"] < os.path.getsize(big) + lines + 200
    assert maxrss_kib < 16 * 1024, f"{maxrss_kib} KiB resident"
