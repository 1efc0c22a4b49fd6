"""H5/R43: a greeting that never ends costs only the greeting timeout."""
import time

from hostile import Hostile


def script(c):
    while True:
        c.send("220-still greeting\r\n")
        time.sleep(0.2)


def test_banner_never_ends(send, write_msg):
    with Hostile(script) as h:
        r = send(h.url(), [write_msg("x\r\n")], "-f", "a@x.test", "--to", "b@x.test",
                 "--timeout", "2", timeout=30)
        assert r.rc == 75
        assert r.rcpt(0, "b@x.test")["state"] == "deferred"
        assert "timed out" in r.summary["session_error"]
