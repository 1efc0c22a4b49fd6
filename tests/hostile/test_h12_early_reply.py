"""H12/Q5: a QMTP reply that arrives before the package's last byte was sent
answers nothing we said: the client aborts, and the recipient is deferred
as not sent (closing mid-package makes a server discard it, Q8)."""
from hostile import Hostile


def script(c):
    c.send(c.ns("Kthanks in advance"))
    c.package()


def test_early_reply(send, write_msg):
    big = write_msg(b"Subject: big\n\n" + (b"x" * 99 + b"\n") * 80000)  # 8 MB
    with Hostile(script, scheme="qmtp") as h:
        r = send(h.url(), [big], "-f", "a@x.test", "--to", "b@x.test", "--timeout", "5",
                 timeout=30)
        assert r.rc == 75
        assert "before the whole package was sent" in r.summary["session_error"]
        rc = r.rcpt(0, "b@x.test")
        assert rc["state"] == "deferred" and "not sent" in rc["text"]
