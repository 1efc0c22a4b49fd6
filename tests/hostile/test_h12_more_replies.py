"""H12: more replies than recipients.  The extra reply arrives while the
next package is still being written, so it cannot be that package's reply
(Q5): the session is aborted; the first message keeps its answer."""
from hostile import Hostile


def script(c):
    c.package()
    c.send(c.ns("Kone") + c.ns("Ktwo"))
    c.package()


def test_more_replies(send, write_msg):
    small = write_msg("x\n")
    big = write_msg(b"Subject: big\n\n" + (b"x" * 99 + b"\n") * 80000)
    with Hostile(script, scheme="qmtp") as h:
        r = send(h.url(), [small, big], "-f", "a@x.test", "--to", "b@x.test", "--timeout", "5",
                 timeout=30)
        assert r.rc == 75
        assert r.messages[0]["recipients"][0]["state"] == "delivered"
        assert r.messages[1]["recipients"][0]["state"] == "deferred"
        assert "before the whole package was sent" in r.summary["session_error"]
