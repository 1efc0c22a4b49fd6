"""H5/R43: a server that stops reading (zero window) mid-body: the data-block
timeout ends the session; the recipient is deferred."""
import time

from hostile import Hostile


def script(c):
    c.greet_ehlo()
    c.accept_envelope()
    time.sleep(30)  # read nothing more


def test_zero_window(send, write_msg):
    body = "Subject: big\r\n\r\n" + ("w" * 70 + "\r\n") * 400000  # 28 MB
    with Hostile(script, rcvbuf=4096) as h:
        r = send(h.url(), [write_msg(body)], "-f", "a@x.test", "--to", "b@x.test",
                 "--timeout", "2", timeout=30)
        assert r.rc == 75
        assert r.rcpt(0, "b@x.test")["state"] == "deferred"
        assert "timed out" in r.summary["session_error"]
