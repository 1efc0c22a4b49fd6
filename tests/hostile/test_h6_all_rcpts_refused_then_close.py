"""H6/R46: every RCPT refused, then the server closes before the DATA reply
(Exim test 0476): the recipients keep their permanent 550."""
from hostile import Hostile


def script(c):
    c.greet_ehlo()
    c.expect("MAIL")
    c.expect("RCPT")
    c.expect("RCPT")
    c.expect("DATA")
    c.send("250 2.1.0 ok\r\n550 5.1.1 no\r\n550 5.1.1 no\r\n")
    c.sock.close()


def test_all_refused_then_close(send, write_msg):
    with Hostile(script) as h:
        r = send(h.url(), [write_msg("x\r\n")], "-f", "a@x.test", "--to", "b@x.test",
                 "--to", "c@x.test", "--timeout", "10", timeout=60)
        for a in ("b@x.test", "c@x.test"):
            rc = r.rcpt(0, a)
            assert (rc["state"], rc["code"], rc["enhanced"]) == ("failed", 550, "5.1.1")
        assert r.rc == 69
