"""H2/R5: an endless 250- continuation ends at the reply cap, not in a hang."""
from hostile import Hostile


def script(c):
    c.greet_ehlo()
    c.expect("MAIL")
    while True:
        c.send("250-still going\r\n" * 64)


def test_endless_continuation(send, write_msg):
    with Hostile(script) as h:
        r = send(h.url(), [write_msg("x\r\n")], "-f", "a@x.test", "--to", "b@x.test",
                 "--timeout", "20", timeout=60)
        assert r.rc == 75
        rc = r.rcpt(0, "b@x.test")
        assert rc["state"] == "deferred"
        assert "longer than" in r.summary["session_error"]
