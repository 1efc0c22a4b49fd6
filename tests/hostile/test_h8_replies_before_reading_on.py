"""H8/R24: 5000 RCPTs in one group to a server with tiny socket buffers that
writes each reply (blocking) before it reads the next command.  A client
that does not read while it writes deadlocks here; ours must finish."""
from hostile import Hostile

N = 5000


def script(c):
    c.greet_ehlo()
    pad = "padding " * 20
    n = [0]

    def rcpt(line):
        n[0] += 1
        return f"250 2.1.5 ok {pad}\r\n"

    c.serve(on_rcpt=rcpt, on_dot=lambda: f"250 2.0.0 got {n[0]} recipients\r\n",
            mail_reply=f"250 2.1.0 ok {pad}\r\n")


def test_no_deadlock(send, write_msg):
    args = []
    for i in range(N):
        args += ["--to", f"r{i}@x.test"]
    with Hostile(script, rcvbuf=2048, sndbuf=2048) as h:
        r = send(h.url(), [write_msg("x\r\n")], "-f", "a@x.test", "--max-rcpts", str(N),
                 "--timeout", "20", *args, timeout=120)
        assert r.rc == 0, r.summary
        assert r.summary["recipients_delivered"] == N
        assert r.messages[0]["text"] == f"2.0.0 got {N} recipients"
