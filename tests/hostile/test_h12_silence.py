"""H12: a QMTP server that reads the packages and never answers: the reply
deadline ends the session; every recipient is deferred, flagged as maybe
delivered (its package was sent in full)."""
import time

from hostile import Hostile


def script(c):
    c.package()
    c.package()
    c.readline()


def test_silence(send, write_msg):
    with Hostile(script, scheme="qmtp") as h:
        t0 = time.monotonic()
        r = send(h.url(), [write_msg("a\n"), write_msg("b\n")], "-f", "a@x.test",
                 "--to", "b@x.test", "--timeout", "1", timeout=30)
        assert time.monotonic() - t0 < 10
        assert r.rc == 75
        for m in r.messages:
            rc = m["recipients"][0]
            assert rc["state"] == "deferred" and "more than once" in rc["text"]
