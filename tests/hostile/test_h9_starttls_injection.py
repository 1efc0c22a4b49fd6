"""H9/R39: a reply injected after the 220 to STARTTLS, in the same segment
(the aiosmtplib CVE-2026-55558 pattern): the connection is aborted, not
"resynchronised", and the mail is deferred."""
from hostile import Hostile


def script(c):
    c.greet_ehlo(caps=("PIPELINING", "STARTTLS"))
    c.expect("STARTTLS")
    c.send("220 Go ahead\r\n250-mx.evil\r\n250 AUTH LOGIN\r\n")
    c.readline()


def test_starttls_injection(send, write_msg):
    with Hostile(script) as h:
        r = send(h.url(), [write_msg("x\r\n")], "-f", "a@x.test", "--to", "b@x.test",
                 "--tls", "may", "--timeout", "5", timeout=30)
        assert r.rc == 75
        assert "response injection" in r.summary["session_error"]
        assert r.rcpt(0, "b@x.test")["state"] == "deferred"
