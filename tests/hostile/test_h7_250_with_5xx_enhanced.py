"""H7/R36: a 250 to the dot carrying a 5.x.x enhanced code is success; the
disagreeing enhanced code is ignored."""
from hostile import Hostile


def script(c):
    c.greet_ehlo()
    c.one_message("250 5.0.0 odd but fine\r\n")


def test_250_with_5xx_enhanced(send, write_msg):
    with Hostile(script) as h:
        r = send(h.url(), [write_msg("x\r\n")], "-f", "a@x.test", "--to", "b@x.test",
                 "--timeout", "10", timeout=60)
        rc = r.rcpt(0, "b@x.test")
        assert (rc["state"], rc["code"], rc["enhanced"]) == ("delivered", 250, "")
        assert r.rc == 0
