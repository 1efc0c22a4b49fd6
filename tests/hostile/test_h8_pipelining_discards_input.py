"""H8/R27: a server that offers PIPELINING but throws away buffered input
after an error.  Pipelined, the client times out (no hang beyond the timeout);
with --no-pipelining the same server works."""
from hostile import Hostile


def script(c):
    c.greet_ehlo()

    def rcpt(line):
        if b"bad@" in line:
            c.buf = b""  # the bug: discard whatever else was sent
            return "550 5.1.1 no\r\n"
        return "250 2.1.5 ok\r\n"

    c.serve(on_rcpt=rcpt)


def test_broken_pipelining_server(send, write_msg):
    with Hostile(script) as h:
        args = ["-f", "a@x.test", "--to", "bad@x.test", "--to", "good@x.test", "--timeout", "2"]
        r = send(h.url(), [write_msg("x\r\n")], *args, timeout=30)
        assert r.rc == 75
        assert r.rcpt(0, "good@x.test")["state"] == "deferred"
        r = send(h.url(), [write_msg("x\r\n")], *args, "--no-pipelining", timeout=30)
        assert r.rcpt(0, "bad@x.test")["state"] == "failed"
        assert r.rcpt(0, "good@x.test")["state"] == "delivered"
