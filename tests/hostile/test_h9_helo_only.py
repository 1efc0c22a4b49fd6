"""H9: a server that refuses EHLO and speaks only HELO has no STARTTLS.
The HELO fallback (R8) must not bypass the TLS policy or send credentials:
`may` goes on in plain text, `encrypt` and a login are temporary failures."""
import pytest

from hostile import Hostile


def script(c):
    c.send("220 old.test SMTP\r\n")
    c.expect("EHLO")
    c.send("500 5.5.1 what is EHLO?\r\n")
    c.expect("HELO")
    c.send("250 old.test\r\n")
    c.serve()


@pytest.mark.parametrize("policy,rc", [("may", 0), ("encrypt", 75), ("verify", 75)])
def test_helo_only(send, write_msg, policy, rc):
    with Hostile(script) as h:
        r = send(h.url(), [write_msg("x\r\n")], "-f", "a@x.test", "--to", "b@x.test",
                 "--tls", policy, "--timeout", "5", timeout=30)
        assert r.rc == rc, r.stdout
        if rc:
            assert "does not offer STARTTLS" in r.summary["session_error"]


def test_helo_only_with_credentials(send, write_msg, tmp_path):
    pw = tmp_path / "pw"
    pw.write_text("secret\n")
    pw.chmod(0o600)
    with Hostile(script) as h:
        r = send(f"smtp://user@127.0.0.1:{h.port}", [write_msg("x\r\n")], "-f", "a@x.test",
                 "--to", "b@x.test", "--tls", "none", "--auth-plaintext", "--password-file",
                 str(pw), "--timeout", "5", timeout=30)
        assert r.rc == 75 and "does not offer AUTH" in r.summary["session_error"]
