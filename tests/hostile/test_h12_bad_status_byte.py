"""H12/Q4: a reply whose first byte is not K, Z or D is a protocol error;
the recipient's fate is unknown: deferred, maybe delivered."""
from hostile import Hostile


def script(c):
    c.package()
    c.send(c.ns("250 ok"))
    c.readline()


def test_bad_status_byte(send, write_msg):
    with Hostile(script, scheme="qmtp") as h:
        r = send(h.url(), [write_msg("x\n")], "-f", "a@x.test", "--to", "b@x.test",
                 "--timeout", "5", timeout=30)
        assert r.rc == 75
        assert "not K, Z or D" in r.summary["session_error"]
        b = r.rcpt(0, "b@x.test")
        assert b["state"] == "deferred" and "more than once" in b["text"]
