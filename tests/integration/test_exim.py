"""Against Exim 4 (PIPELINING, CHUNKING offered; queue-only)."""
import re

import pytest

from servers import LATER, REJECT, SIZE_LIMIT, Exim


def test_mixed_recipients(send, write_msg):
    with Exim() as ex:
        r = send(ex.url(), [write_msg("Subject: x\r\n\r\nhello\r\n")], "-f", "a@sender.test",
                 "--to", "ok@example.test", "--to", REJECT, "--to", LATER)
        assert r.rc == 75, r.stdout
        assert r.rcpt(0, "ok@example.test")["state"] == "delivered"
        rej = r.rcpt(0, REJECT)
        assert (rej["state"], rej["stage"], rej["code"]) == ("failed", "rcpt", 550)
        later = r.rcpt(0, LATER)
        assert (later["state"], later["stage"], later["code"]) == ("deferred", "rcpt", 451)
        assert len(ex.messages()) == 1


@pytest.mark.parametrize("chunking", [True, False])
def test_pipelined_batch(send, write_msg, chunking):
    n = 100
    files = [write_msg(f"Subject: {i}\r\nX-Seq: {i}\r\n\r\n.leading dot {i}\r\n") for i in range(n)]
    with Exim() as ex:
        r = send(ex.url(), files, "-f", "a@sender.test", "--to", "ok@example.test", "-q",
                 *([] if chunking else ["--no-chunking"]))
        assert r.rc == 0, r.stdout
        assert r.summary["pipelining"] is True
        if chunking:
            # BDAT streamed: no 354 to wait for; the window (128) holds them all.
            assert r.summary["shape"] == "bdat-stream"
            assert r.summary["round_trips"] <= 2 + 2 * (n // 64 + 1) + 1
        else:
            # DATA: greeting, EHLO, one wait per message, QUIT.
            assert r.summary["shape"] == "data-cross"
            assert r.summary["round_trips"] == n + 3
        data = ex.messages()
        assert len(data) == n
        bodies = sorted(int(re.search(rb"leading dot (\d+)", d).group(1)) for d in data)
        assert bodies == list(range(n))
        assert all(b"\n.leading dot" in d for d in data)  # unstuffed exactly once


def test_size_limit(send, write_msg):
    big = "Subject: b\r\n\r\n" + ("b" * 98 + "\r\n") * (SIZE_LIMIT * 2 // 100)
    with Exim() as ex:
        r = send(ex.url(), [write_msg(big)], "-f", "a@sender.test", "--to", "ok@example.test")
        assert r.rc == 65
        assert r.messages[0]["recipients"][0]["enhanced"] == "5.3.4"
        assert ex.messages() == []
