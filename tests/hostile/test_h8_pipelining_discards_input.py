"""H8/R27: a server that offers PIPELINING but throws away buffered input
after an error.  Pipelined, the client times out (no hang beyond the timeout);
with --no-pipelining the same server works."""
from hostile import Hostile


def script(c):
    c.greet_ehlo()
    while True:
        line = c.readline()
        if not line:
            return
        cmd = line[:4].upper()
        if cmd == b"MAIL":
            c.send("250 2.1.0 ok\r\n")
        elif cmd == b"RCPT":
            if b"bad@" in line:
                c.buf = b""  # the bug: discard whatever else was sent
                c.send("550 5.1.1 no\r\n")
            else:
                c.send("250 2.1.5 ok\r\n")
        elif cmd == b"DATA":
            c.send("354 go\r\n")
            c.read_data()
            c.send("250 2.0.0 ok\r\n")
        elif cmd == b"QUIT":
            c.send("221 bye\r\n")
            return
        elif cmd == b"RSET":
            c.send("250 ok\r\n")


def test_broken_pipelining_server(send, write_msg):
    with Hostile(script) as h:
        args = ["-f", "a@x.test", "--to", "bad@x.test", "--to", "good@x.test", "--timeout", "2"]
        r = send(h.url(), [write_msg("x\r\n")], *args, timeout=30)
        assert r.rc == 75
        assert r.rcpt(0, "good@x.test")["state"] == "deferred"
        r = send(h.url(), [write_msg("x\r\n")], *args, "--no-pipelining", timeout=30)
        assert r.rcpt(0, "bad@x.test")["state"] == "failed"
        assert r.rcpt(0, "good@x.test")["state"] == "delivered"
