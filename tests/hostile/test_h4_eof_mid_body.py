"""H4: the server closes while the body is being sent: deferred, not lost,
never 'delivered'."""
from hostile import Hostile


def script(c):
    c.greet_ehlo()
    c.accept_envelope()
    c.sock.recv(1000)
    c.sock.close()


def test_eof_mid_body(send, write_msg):
    body = "Subject: big\r\n\r\n" + ("z" * 70 + "\r\n") * 200000
    with Hostile(script) as h:
        r = send(h.url(), [write_msg(body)], "-f", "a@x.test", "--to", "b@x.test",
                 "--timeout", "10", timeout=60)
        assert r.rc == 75
        assert r.rcpt(0, "b@x.test")["state"] == "deferred"
