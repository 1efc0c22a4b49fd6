"""H6/R46: 550 to MAIL, then close: the recipients keep the 550."""
from hostile import Hostile


def script(c):
    c.greet_ehlo()
    c.expect("MAIL")
    c.send("550 5.7.1 you are blocked\r\n")
    c.sock.close()


def test_mail_refused_then_close(send, write_msg):
    with Hostile(script) as h:
        r = send(h.url(), [write_msg("x\r\n")], "-f", "a@x.test", "--to", "b@x.test",
                 "--timeout", "10", timeout=60)
        rc = r.rcpt(0, "b@x.test")
        assert (rc["state"], rc["stage"], rc["code"]) == ("failed", "mail", 550)
        assert "blocked" in rc["text"]
