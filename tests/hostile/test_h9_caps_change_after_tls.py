"""H9/R40: capabilities change after STARTTLS.  Only the list obtained
inside TLS counts: PIPELINING offered before but not after means lock-step;
AUTH offered before but not after means no AUTH (and no credentials sent)."""
import pytest

from hostile import Hostile


def make(certs, after):
    def script(c):
        c.send("220 hostile.test ESMTP\r\n")
        c.expect("EHLO")
        c.send("250-hostile.test\r\n250-PIPELINING\r\n250-AUTH PLAIN\r\n250 STARTTLS\r\n")
        c.expect("STARTTLS")
        c.send("220 go\r\n")
        c.starttls(*certs.good)
        c.expect("EHLO")
        lines = ["hostile.test"] + after
        c.send("".join(f"250-{x}\r\n" for x in lines[:-1]) + f"250 {lines[-1]}\r\n")
        c.serve()
    return script


def test_pipelining_withdrawn_after_tls(send, write_msg, certs, tmp_path):
    t = tmp_path / "t.json"
    with Hostile(make(certs, ["8BITMIME"])) as h:
        r = send(h.url(), [write_msg("x\r\n"), write_msg("y\r\n")], "-f", "a@x.test",
                 "--to", "b@x.test", "--tls", "encrypt", "--timeout", "5",
                 "--transcript", str(t), timeout=30)
        assert r.rc == 0, r.stdout + r.stderr
        assert r.summary["pipelining"] is False and r.summary["tls"] is not None
        assert "lock-step" in t.read_text()


def test_auth_withdrawn_after_tls(send, write_msg, certs, tmp_path):
    pw = tmp_path / "pw"
    pw.write_text("secret\n")
    pw.chmod(0o600)
    with Hostile(make(certs, ["PIPELINING"])) as h:
        r = send(f"smtp://user@127.0.0.1:{h.port}", [write_msg("x\r\n")], "-f", "a@x.test",
                 "--to", "b@x.test", "--tls", "encrypt", "--password-file", str(pw),
                 "--timeout", "5", timeout=30)
        assert r.rc == 75
        assert "does not offer AUTH" in r.summary["session_error"]
