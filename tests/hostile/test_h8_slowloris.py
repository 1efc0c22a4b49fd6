"""H8/R43: a reply dribbled one byte at a time does not extend the deadline:
the per-reply timeout fires although bytes keep arriving."""
import time

from hostile import Hostile


def script(c):
    c.greet_ehlo()
    c.expect("MAIL")
    for ch in "250 2.1.0 " + "slow " * 1000:
        c.send(ch)
        time.sleep(0.05)


def test_slowloris(send, write_msg):
    with Hostile(script) as h:
        r = send(h.url(), [write_msg("x\r\n")], "-f", "a@x.test", "--to", "b@x.test",
                 "--timeout", "2", timeout=30)
        assert r.rc == 75
        assert "timed out" in r.summary["session_error"]
