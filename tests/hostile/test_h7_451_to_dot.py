"""H7: 451 to the final dot: deferred with the server's reply."""
from hostile import Hostile


def script(c):
    c.greet_ehlo()
    c.one_message("451 4.3.0 queue trouble\r\n")


def test_451_to_dot(send, write_msg):
    with Hostile(script) as h:
        r = send(h.url(), [write_msg("x\r\n")], "-f", "a@x.test", "--to", "b@x.test",
                 "--timeout", "10", timeout=60)
        rc = r.rcpt(0, "b@x.test")
        assert (rc["state"], rc["stage"], rc["code"], rc["enhanced"]) == (
            "deferred", "dot", 451, "4.3.0")
        assert r.rc == 75
