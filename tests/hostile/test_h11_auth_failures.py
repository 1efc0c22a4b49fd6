"""H11: AUTH failures from a scripted server: a challenge that is not valid
base64 (answered with "*", RFC 4954 4), 535, and 538 (encryption
required).  Each ends in a clear temporary failure; nothing is sent after."""
import pytest

from hostile import Hostile


def make(reply_to_auth, seen):
    def script(c):
        c.send("220 hostile.test ESMTP\r\n")
        c.expect("EHLO")
        c.send("250-hostile.test\r\n250-PIPELINING\r\n250 AUTH LOGIN\r\n")
        c.expect("AUTH LOGIN")
        c.send(reply_to_auth)
        line = c.readline()
        # Kept before anything more is said: the client may be gone (and
        # the test looking at `seen`) as soon as it has the next reply.
        seen.append(line)
        if line.strip() == b"*":
            c.send("501 5.7.0 AUTH aborted\r\n")
        c.readline()
    return script


@pytest.mark.parametrize("reply,why", [
    ("334 !!!not base64!!!\r\n", "not valid base64"),
    ("535 5.7.8 Authentication credentials invalid\r\n", "authentication failed"),
    ("538 5.7.11 Encryption required for requested authentication mechanism\r\n",
     "requires encryption"),
])
def test_auth_failures(send, write_msg, tmp_path, reply, why):
    pw = tmp_path / "pw"
    pw.write_text("secret\n")
    pw.chmod(0o600)
    seen = []
    script = make(reply, seen)

    with Hostile(script) as h:
        r = send(f"smtp://user@127.0.0.1:{h.port}", [write_msg("x\r\n")], "-f", "a@x.test",
                 "--to", "b@x.test", "--tls", "none", "--auth-plaintext", "--auth-mechs", "LOGIN",
                 "--password-file", str(pw), "--timeout", "5", timeout=30)
        assert r.rc == 75
        assert why in r.summary["session_error"]
        if "base64" in why:
            assert seen and seen[0].strip() == b"*"  # cancelled, no credentials
        assert b"MAIL" not in seen[0] if seen else True
