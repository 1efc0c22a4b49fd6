"""H9/R41: STARTTLS refused with 454.  Under `may` the session goes on in
plain text; under `encrypt`/`verify` it is a temporary failure for this
host."""
import pytest

from hostile import Hostile


def script(c):
    c.greet_ehlo(caps=("PIPELINING", "STARTTLS"))
    c.expect("STARTTLS")
    c.send("454 4.7.0 TLS not available due to temporary reason\r\n")
    c.serve()


@pytest.mark.parametrize("policy,rc", [("may", 0), ("encrypt", 75), ("verify", 75)])
def test_starttls_454(send, write_msg, policy, rc):
    with Hostile(script) as h:
        r = send(h.url(), [write_msg("x\r\n")], "-f", "a@x.test", "--to", "b@x.test",
                 "--tls", policy, "--timeout", "5", timeout=30)
        assert r.rc == rc, r.stdout
        if rc:
            assert "STARTTLS refused (454" in r.summary["session_error"]
        assert r.summary["tls"] is None
