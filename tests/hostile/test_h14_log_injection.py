"""H14: a reply crafted for the operator's terminal and log.  ESC sequences
and control bytes in a server's text must reach log_file, mailq and the
program's output escaped (\\x1b), never raw: otherwise "status=bounced"
can be made to look like "status=sent" on a terminal."""
import os
import subprocess

from conftest import BIN, Spool
from hostile import Hostile

EVIL = "550 5.1.1 \x1b[2K\x1b[1A\x07bye\x7f status=sent (250 ok)\r\n"


def script(c):
    c.greet_ehlo()
    c.serve(on_rcpt=lambda line: EVIL)


def test_reply_text_is_escaped_in_the_log(tmp_path):
    with Hostile(script) as h:
        log = tmp_path / "delivery.log"
        sp = Spool(str(tmp_path), f"log_file = {log}\nroute.evil.test = {h.url()}\n"
                                  f"retry_tiers = 0 1h\n")
        p = sp.ms("send", "-f", "", "--to", "x@evil.test", stdin=b"Subject: t\n\nhi\n")
        assert p.returncode == 0, p.stderr
        p = sp.ms("daemon", "--once")
        assert p.returncode == 0, p.stderr
    text = log.read_bytes()
    assert b"\x1b" not in text and b"\x07" not in text and b"\x7f" not in text
    assert b"\\x1b[2K\\x1b[1A\\x07bye\\x7f status=sent (250 ok)" in text
    assert b"status=bounced" in text
    for line in text.splitlines():
        assert all(0x20 <= b < 0x7f for b in line), line


def test_reply_text_is_escaped_in_the_output(tmp_path):
    with Hostile(script) as h:
        p = subprocess.run([BIN, "send", "--via", h.url(), "-f", "a@x.test", "--to", "b@x.test",
                            "--timeout", "10"], input=b"x\n", capture_output=True, timeout=60)
    assert p.returncode == 69
    out = p.stdout + p.stderr
    assert b"\x1b" not in out and b"\x07" not in out
    assert b"\\x1b[2K" in out
