"""H12/N1: malformed reply netstrings (leading zero, no comma, no colon, a
non-digit length) end the session as protocol errors, at once."""
import time

import pytest

from hostile import Hostile

BAD = [b"02:Ka,", b"2:Ka;", b"2;Ka,", b"x:Ka,", b" 2:Ka,", b"-2:Ka,"]


@pytest.mark.parametrize("reply", BAD)
def test_malformed_netstring(send, write_msg, reply):
    def script(c):
        c.package()
        c.send(reply)
        c.readline()

    with Hostile(script, scheme="qmtp") as h:
        t0 = time.monotonic()
        r = send(h.url(), [write_msg("x\n")], "-f", "a@x.test", "--to", "b@x.test",
                 "--timeout", "10", timeout=30)
        assert time.monotonic() - t0 < 5  # not the timeout: refused on sight
        assert r.rc == 75
        assert "malformed QMTP reply" in r.summary["session_error"]
        assert r.rcpt(0, "b@x.test")["state"] == "deferred"
