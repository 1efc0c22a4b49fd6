"""Against OpenSMTPD, which does not offer PIPELINING: lock-step fallback."""
from servers import REJECT, OpenSMTPD


def test_lockstep_fallback(send, write_msg, tmp_path):
    n = 20
    tx = tmp_path / "t"
    files = [write_msg(f"Subject: {i}\r\nX-Seq: {i}\r\n\r\nbody {i}\r\n") for i in range(n)]
    with OpenSMTPD() as os_:
        r = send(os_.url(), files, "-f", "a@sender.test", "--to", "ok@example.test",
                 "--to", REJECT, "--transcript", str(tx))
        assert r.summary["pipelining"] is False
        for i in range(n):
            assert r.rcpt(i, "ok@example.test")["state"] == "delivered"
            rej = r.rcpt(i, REJECT)
            assert (rej["state"], rej["stage"], rej["code"]) == ("failed", "rcpt", 550)
        # Lock-step: every command waits: MAIL, 2 RCPT, DATA, dot.
        assert r.summary["round_trips"] >= 5 * n
        text = tx.read_text()
        assert "server does not offer PIPELINING: lock-step" in text
        assert len(os_.messages()) == n
