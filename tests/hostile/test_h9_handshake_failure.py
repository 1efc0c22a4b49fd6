"""H9/R41: the handshake fails after the 220 (the server speaks garbage).
The connection is unusable: under `may` the client tries again in plain
text on a new connection; under `encrypt` it is a temporary failure."""
from hostile import Hostile


def script(c):
    c.greet_ehlo(caps=("PIPELINING", "STARTTLS"))
    if c.readline().upper().startswith(b"STARTTLS"):
        c.send("220 go\r\n")
        c.readline()  # the ClientHello, in binary
        c.send(b"this is not TLS at all\r\n" * 10)
        return
    c.serve()  # (a session that skipped STARTTLS does not get here)


def plain_second(c):
    # First connection: STARTTLS breaks.  Second: no STARTTLS at all.
    if not hasattr(plain_second, "n"):
        plain_second.n = 0
    plain_second.n += 1
    if plain_second.n == 1:
        return script(c)
    c.send("220 hostile.test ESMTP\r\n")
    c.expect("EHLO")
    c.send("250-hostile.test\r\n250-STARTTLS\r\n250 PIPELINING\r\n")
    c.serve()


def test_handshake_failure_may_retries_plain(send, write_msg):
    with Hostile(plain_second) as h:
        r = send(h.url(), [write_msg("x\r\n")], "-f", "a@x.test", "--to", "b@x.test",
                 "--tls", "may", "--timeout", "5", timeout=30)
        assert r.rc == 0, r.stdout + r.stderr
        assert h.conns == 2 and r.summary["tls"] is None


def test_handshake_failure_encrypt(send, write_msg):
    with Hostile(script) as h:
        r = send(h.url(), [write_msg("x\r\n")], "-f", "a@x.test", "--to", "b@x.test",
                 "--tls", "encrypt", "--timeout", "5", timeout=30)
        assert r.rc == 75
        assert "TLS handshake failed" in r.summary["session_error"]
        assert h.conns == 1
