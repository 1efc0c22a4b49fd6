"""The command line: usage errors, refused input, exit codes, output."""
import socket

import pytest

from conftest import BIN, run_send
from servers import Aiosmtpd, SmtpSink, free_port


@pytest.mark.parametrize("args", [
    ["send"],                                                   # no --via
    ["send", "--via", "http://127.0.0.1:25", "--to", "a@b.test"],
    ["send", "--via", "smtp://", "--to", "a@b.test"],
    ["send", "--via", "smtp://127.0.0.1:99999", "--to", "a@b.test"],
    ["send", "--via", "smtp://127.0.0.1:25"],                  # no recipients
    ["send", "--via", "smtp://127.0.0.1:25", "--to", "a@b.test", "--max-rcpts", "0"],
    ["nosuchcommand"],
])
def test_usage_errors(args):
    import subprocess
    r = subprocess.run([BIN] + args, capture_output=True, timeout=30)
    assert r.returncode == 64
    assert r.stderr


@pytest.mark.parametrize("flag,value", [
    ("--to", "a@b.test>\r\nRCPT TO:<c@d.test"),
    ("--to", "a@b.test\n"),
    ("-f", "a@b.test\r\nDATA"),
    ("--to", "a\tb@c.test"),
    ("--to", "x" * 65 + "@b.test"),
])
def test_injection_refused_before_connecting(flag, value, write_msg):
    """CR/LF/control characters and over-long parts never reach the wire:
    the command refuses them before it connects."""
    with socket.socket() as lsock:
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(5)
        port = lsock.getsockname()[1]
        args = [flag, value] + (["--to", "ok@b.test"] if flag == "-f" else ["-f", "a@b.test"])
        r = run_send(f"smtp://127.0.0.1:{port}", [write_msg("x\r\n")], *args, json_out=False)
        assert r.rc == 64
        assert "refused" in r.stderr or "longer than" in r.stderr or "control" in r.stderr
        lsock.setblocking(False)
        with pytest.raises(BlockingIOError):
            lsock.accept()


def test_connection_refused_is_temporary(write_msg):
    r = run_send(f"smtp://127.0.0.1:{free_port()}", [write_msg("x\r\n")], "-f", "a@b.test",
                 "--to", "c@d.test")
    assert r.rc == 75
    rc = r.rcpt(0, "c@d.test")
    assert rc["state"] == "deferred" and "connect" in rc["text"]


def test_help():
    import subprocess
    r = subprocess.run([BIN, "send", "--help"], capture_output=True, timeout=30)
    assert r.returncode == 0
    for word in (b"--via", b"--to", b"-t", b"--json", b"--transcript", b"--no-pipelining",
                 b"Exit status"):
        assert word in r.stdout


def test_human_output(write_msg):
    with SmtpSink("-f", "RCPT") as sink:
        r = run_send(sink.url(), [write_msg("x\r\n", "msg.eml")], "-f", "a@b.test", "--to",
                     "c@d.test", json_out=False)
        assert r.rc == 69
        assert "msg.eml: <c@d.test> failed (rcpt) 500 5.3.0 Error: command failed" in r.stdout
        assert "1 message: 0 delivered, 0 deferred, 1 failed" in r.stdout


def test_transcript_file(write_msg, tmp_path):
    tx = tmp_path / "t.txt"
    with Aiosmtpd() as srv:
        r = run_send(srv.url(), [write_msg("Subject: t\r\n\r\nsecret body\r\n")], "-f",
                     "a@b.test", "--to", "c@d.test", "--transcript", str(tx))
        assert r.rc == 0
    text = tx.read_text()
    assert "S: 220 " in text and "C: EHLO " in text and "C: MAIL FROM:<a@b.test>" in text
    assert "--- write #" in text and "sha256" in text
    assert "secret body" not in text  # summarised unless asked for
    r2 = None
    with Aiosmtpd() as srv:
        r2 = run_send(srv.url(), [write_msg("Subject: t\r\n\r\nsecret body\r\n")], "-f",
                      "a@b.test", "--to", "c@d.test", "--transcript", str(tx),
                      "--transcript-bodies")
    assert r2.rc == 0
    assert "secret body" in tx.read_text()


def test_transcript_json(write_msg, tmp_path):
    import json
    tx = tmp_path / "t.json"
    with Aiosmtpd() as srv:
        r = run_send(srv.url(), [write_msg("Subject: t\r\n\r\nx\r\n")], "-f", "a@b.test",
                     "--to", "c@d.test", "--transcript", str(tx))
        assert r.rc == 0
    events = json.loads(tx.read_text())
    dirs = [e["dir"] for e in events]
    assert {"C", "S", "W"} <= set(dirs)
    assert any(e.get("text", "").startswith("MAIL FROM:<a@b.test>") for e in events)
    assert all(e["t"] >= 0 for e in events)
    assert sum(e.get("bytes", 0) for e in events if e["dir"] == "W") > 0
