"""H12/N1: a reply announcing a huge length, then streaming bytes forever,
is refused as soon as the length passes the cap - before anything is
buffered or allocated for it."""
import time

from hostile import Hostile


def script(c):
    c.package()
    c.send(b"999999999:K")
    for _ in range(1000):
        c.send(b"y" * 65536)


def test_endless_reply(send, write_msg):
    with Hostile(script, scheme="qmtp") as h:
        t0 = time.monotonic()
        r = send(h.url(), [write_msg("x\n")], "-f", "a@x.test", "--to", "b@x.test",
                 "--timeout", "10", timeout=30)
        assert time.monotonic() - t0 < 5
        assert r.rc == 75
        assert "over the limit" in r.summary["session_error"]
