"""H2/R5: a 600-octet reply line is tolerated; a 3000-octet one is an error."""
import pytest

from hostile import Hostile


def make_script(n):
    def script(c):
        c.greet_ehlo()
        c.expect("MAIL")
        c.expect("RCPT")
        c.expect("DATA")
        c.send("250 2.1.0 ok\r\n" + "250 2.1.5 " + "y" * n + "\r\n" + "354 go\r\n")
        c.read_data()
        c.send("250 2.0.0 done\r\n")
        c.readline()
    return script


@pytest.mark.parametrize("n,state", [(600, "delivered"), (3000, "deferred")])
def test_long_line(send, write_msg, n, state):
    with Hostile(make_script(n)) as h:
        r = send(h.url(), [write_msg("x\r\n")], "-f", "a@x.test", "--to", "b@x.test",
                 "--timeout", "10", timeout=60)
        assert r.rcpt(0, "b@x.test")["state"] == state
