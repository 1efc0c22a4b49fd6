"""P2-P5: servers that misbehave around BDAT (RFC 3030) in ways no real
server shows on demand.  Nothing is lost, nothing is failed for the
server's fault, and a stream that breaks falls back (one message in
flight, then DATA) on a new connection."""
import re
import time

from hostile import Hostile

CHUNKING = ("PIPELINING", "CHUNKING", "SIZE 100000000", "8BITMIME")


def msgs(write_msg, n, size=100):
    return [write_msg(f"Subject: {i}\nX-Seq: {i}\n\n" + "x" * size + "\n") for i in range(n)]


def test_bdat_answered_before_its_octets_were_sent(send, write_msg):
    # The reply to BDAT arrives while most of its 8 MB chunk is unwritten:
    # it answers nothing we said; the message waits, it is not delivered
    # or failed on that word, and the session ends.
    def script(c):
        c.greet_ehlo(CHUNKING)
        c.expect("MAIL")
        c.expect("RCPT")
        c.expect("BDAT")
        c.send("250 2.1.0 ok\r\n250 2.1.5 ok\r\n554 5.6.0 no thanks\r\n")
        time.sleep(2)  # read nothing more for a while: the chunk cannot be done
        while c.sock.recv(65536):
            pass

    big = write_msg(b"Subject: big\n\n" + (b"y" * 99 + b"\n") * 80000)
    with Hostile(script, rcvbuf=4096) as h:
        r = send(h.url(), [big], "-f", "a@x.test", "--to", "b@x.test", "--timeout", "5",
                 timeout=30)
    assert r.rc == 75, r.stdout
    rc = r.rcpt(0, "b@x.test")
    assert rc["state"] == "deferred"


def test_a_connection_dropped_mid_stream_leaves_at_most_the_window_unknown(send, write_msg):
    # First connection: read the stream, say nothing, hang up.  Second:
    # a proper server.  The messages whose data went out are "outcome
    # unknown" (at most the window); the rest go on the new connection,
    # one BDAT message in flight (P5).
    state = {"n": 0}

    def script(c):
        state["n"] += 1
        c.greet_ehlo(CHUNKING)
        if state["n"] == 1:
            got = b""
            while got.count(b"BDAT ") < 8:
                chunk = c.sock.recv(65536)
                if not chunk:
                    return
                got += chunk
            return  # close with nothing answered
        c.serve()

    files = msgs(write_msg, 40)
    with Hostile(script) as h:
        r = send(h.url(), files, "-f", "a@x.test", "--to", "b@x.test", "--bdat-window", "16",
                 "--timeout", "10", timeout=60)
    unknown = [m for m in r.messages if "outcome unknown" in m["recipients"][0]["text"]]
    delivered = [m for m in r.messages if m["recipients"][0]["state"] == "delivered"]
    assert 1 <= len(unknown) <= 16
    assert len(unknown) + len(delivered) == 40
    assert all(m["recipients"][0]["state"] == "deferred" for m in unknown)
    assert r.summary["connections"] == 2
    assert r.summary["shape"] == "bdat"  # the second connection: one in flight


def test_a_server_that_ends_a_group_at_bdat_gets_each_message_once(send, write_msg):
    # RFC 2920 read strictly: BDAT ends a group, so this server refuses
    # with 503 whatever arrived behind a chunk in the same read - like
    # Haraka behind a final dot.  The refused messages go again, one at a
    # time; nothing fails, nothing is sent twice.
    received = []

    def script(c):
        c.greet_ehlo(CHUNKING)
        refused = False
        while True:
            line = c.readline()
            if not line:
                return
            cmd = line[:4].upper()
            if refused and cmd != b"QUIT":
                c.send("503 5.5.1 command pipelined after BDAT\r\n")
                if cmd == b"BDAT":
                    c.read_chunk(int(line.split()[1]))
                refused = bool(c.buf)
                continue
            if cmd == b"BDAT":
                data = c.read_chunk(int(line.split()[1]))
                received.append(data)
                c.send("250 2.0.0 queued\r\n")
                refused = bool(c.buf)  # more behind the chunk already
            elif cmd in (b"MAIL", b"RCPT", b"RSET"):
                c.send("250 2.0.0 ok\r\n")
            elif cmd == b"QUIT":
                c.send("221 bye\r\n")
                return
            else:
                c.send("500 5.5.1 what?\r\n")

    files = msgs(write_msg, 12)
    with Hostile(script) as h:
        r = send(h.url(), files, "-f", "a@x.test", "--to", "b@x.test", "--timeout", "10",
                 timeout=60)
    assert r.rc == 0, r.stdout
    assert r.summary["delivered"] == 12
    seqs = sorted(int(re.search(rb"X-Seq: (\d+)", d).group(1)) for d in received)
    assert seqs == list(range(12))  # exactly once
    assert r.summary["resent"] >= 1


def test_an_endless_multiline_bdat_reply_is_cut_off(send, write_msg):
    def script(c):
        c.greet_ehlo(CHUNKING)
        c.expect("MAIL")
        c.expect("RCPT")
        line = c.expect("BDAT")
        c.read_chunk(int(line.split()[1]))
        c.send("250 2.1.0 ok\r\n250 2.1.5 ok\r\n")
        try:
            while True:
                c.send("250-and more\r\n" * 1000)
        except OSError:
            pass

    with Hostile(script) as h:
        r = send(h.url(), msgs(write_msg, 1), "-f", "a@x.test", "--to", "b@x.test",
                 "--timeout", "5", timeout=30)
    assert r.rc == 75
    rc = r.rcpt(0, "b@x.test")
    assert rc["state"] == "deferred" and "unknown" in rc["text"]


def test_more_replies_than_commands_in_a_stream_end_the_session(send, write_msg):
    # An extra reply shifts every later one: the last has no command to
    # answer, which is a protocol error; nothing is failed for it.
    def script(c):
        c.greet_ehlo(CHUNKING)
        for _ in range(3):
            line = c.readline()
            while not line.upper().startswith(b"BDAT"):
                line = c.readline()
            c.read_chunk(int(line.split()[1]))
        c.send("250 ok\r\n" * 15)  # 11 for 3 x [RSET] MAIL RCPT BDAT, 4 more
        while c.sock.recv(65536):
            pass

    with Hostile(script) as h:
        r = send(h.url(), msgs(write_msg, 3), "-f", "a@x.test", "--to", "b@x.test",
                 "--timeout", "5", timeout=30)
    assert "protocol error" in (r.summary["session_error"] or "")
    assert not any(m["recipients"][0]["state"] == "failed" for m in r.messages)
