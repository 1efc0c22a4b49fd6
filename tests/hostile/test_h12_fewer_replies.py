"""H12/Q7: fewer replies than recipients, the connection left open.
Counting per recipient: the reply deadline ends the wait; the answered
recipient keeps its answer, the other is deferred and flagged as possibly
delivered.  In the default mode (Q12) one reply and then silence is how a
per-package server answers: it holds for both recipients, at once."""
import time

from hostile import Hostile


def script(c):
    c.package()
    c.send(c.ns("Kfirst"))
    c.readline()  # wait for the client to give up and close


def test_fewer_replies(send, write_msg):
    with Hostile(script, scheme="qmtp") as h:
        t0 = time.monotonic()
        r = send(h.url() + "?replies=recipient", [write_msg("x\n")], "-f", "a@x.test",
                 "--to", "b@x.test", "--to", "c@x.test", "--timeout", "1", timeout=30)
        assert time.monotonic() - t0 < 10
        assert r.rc == 75
        assert r.rcpt(0, "b@x.test")["state"] == "delivered"
        c = r.rcpt(0, "c@x.test")
        assert c["state"] == "deferred" and "more than once" in c["text"]
        assert "timed out" in r.summary["session_error"]


def test_fewer_replies_in_the_default_mode(send, write_msg):
    with Hostile(script, scheme="qmtp") as h:
        t0 = time.monotonic()
        r = send(h.url(), [write_msg("x\n")], "-f", "a@x.test", "--to", "b@x.test",
                 "--to", "c@x.test", "--timeout", "30", timeout=60)
        assert time.monotonic() - t0 < 10  # the probe's second, not the reply deadline
        assert r.rc == 0
        assert r.rcpt(0, "b@x.test")["state"] == "delivered"
        assert r.rcpt(0, "c@x.test")["state"] == "delivered"
