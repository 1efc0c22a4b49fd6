"""H3/R39: a reply that arrives before its command was sent (here: a MAIL
reply glued to the EHLO reply) is never taken as an answer."""
from hostile import Hostile


def script(c):
    c.send("220 hostile.test ESMTP\r\n")
    c.expect("EHLO")
    c.send("250-hostile.test\r\n250 PIPELINING\r\n250 2.1.0 sender ok\r\n")
    c.readline()


def test_reply_before_command(send, write_msg):
    with Hostile(script) as h:
        r = send(h.url(), [write_msg("x\r\n")], "-f", "a@x.test", "--to", "b@x.test",
                 "--timeout", "10", timeout=60)
        assert r.rc == 75
        assert r.rcpt(0, "b@x.test")["state"] == "deferred"
        assert "protocol error" in r.summary["session_error"]
