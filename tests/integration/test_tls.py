"""TLS against a real Postfix smtpd: STARTTLS and implicit TLS (wrapper
mode), every policy level against a certificate signed by a test CA, a
self-signed one, one for another name, and a server without STARTTLS.
Certificates are made by the test with the openssl command."""
import json

import pytest

from servers import Postfix, SmtpSink

MSG = "From: a@example.test\r\nSubject: tls\r\n\r\nover TLS\r\n"
NAME = "mail.example.test"


def send_to(send, url, write_msg, *args):
    return send(url, [write_msg(MSG)], "-f", "a@example.test", "--to", "ok@example.test",
                *args)


@pytest.fixture(scope="module")
def pf_good(certs):
    with Postfix(tls=certs.good, wrapper=True) as pf:
        yield pf


@pytest.fixture(scope="module")
def pf_self(certs):
    with Postfix(tls=certs.selfsigned) as pf:
        yield pf


@pytest.fixture(scope="module")
def pf_other(certs):
    with Postfix(tls=certs.other) as pf:
        yield pf


def test_verify_good_certificate(send, write_msg, certs, pf_good, tmp_path):
    tfile = tmp_path / "t.json"
    r = send_to(send, pf_good.url(), write_msg, "--tls", "verify", "--tls-ca-file", certs.ca,
                "--tls-name", NAME, "--transcript", str(tfile))
    assert r.rc == 0, r.stdout + r.stderr
    t = r.summary["tls"]
    assert t["verified"] is True and t["protocol"].startswith("TLSv1.")
    assert "mail.example.test" in t["peer"]
    events = json.loads(tfile.read_text())
    sent = [e["text"] for e in events if e["dir"] == "C"]
    # R38/R40: STARTTLS alone, then EHLO again inside TLS.
    i = sent.index("STARTTLS")
    assert sent[i - 1].startswith("EHLO") and sent[i + 1].startswith("EHLO")
    assert any(e["dir"] == "N" and e["text"].startswith("TLS: TLSv1.") for e in events)


def test_verify_by_ip_address(send, write_msg, certs, pf_good):
    """No --tls-name: the certificate must name the address connected to."""
    r = send_to(send, pf_good.url(), write_msg, "--tls", "verify", "--tls-ca-file", certs.ca)
    assert r.rc == 0, r.stdout + r.stderr
    assert r.summary["tls"]["verified"] is True


def test_verify_wrong_name(send, write_msg, certs, pf_good, pf_other):
    r = send_to(send, pf_good.url(), write_msg, "--tls", "verify", "--tls-ca-file", certs.ca,
                "--tls-name", "wrong.example.test")
    assert r.rc == 75 and "certificate not trusted" in r.summary["session_error"]
    r = send_to(send, pf_other.url(), write_msg, "--tls", "verify", "--tls-ca-file", certs.ca,
                "--tls-name", NAME)
    assert r.rc == 75 and "hostname mismatch" in r.summary["session_error"]
    assert len(pf_other.queue()) == 0


def test_verify_self_signed(send, write_msg, certs, pf_self):
    r = send_to(send, pf_self.url(), write_msg, "--tls", "verify", "--tls-ca-file", certs.ca,
                "--tls-name", NAME)
    assert r.rc == 75
    assert "certificate not trusted" in r.summary["session_error"]
    assert r.rcpt(0, "ok@example.test")["state"] == "deferred"
    # The system store does not know it either.
    r = send_to(send, pf_self.url(), write_msg, "--tls", "verify", "--tls-name", NAME)
    assert r.rc == 75


@pytest.mark.parametrize("policy", ["encrypt", "may"])
def test_unverified_policies_accept_self_signed(send, write_msg, pf_self, policy):
    r = send_to(send, pf_self.url(), write_msg, "--tls", policy)
    assert r.rc == 0, r.stdout + r.stderr
    assert r.summary["tls"]["verified"] is False


def test_no_starttls(send, write_msg):
    with SmtpSink() as sink:
        r = send_to(send, sink.url(), write_msg, "--tls", "may")
        assert r.rc == 0 and r.summary["tls"] is None
        for policy in ("encrypt", "verify"):
            r = send_to(send, sink.url(), write_msg, "--tls", policy)
            assert r.rc == 75
            assert "does not offer STARTTLS" in r.summary["session_error"]


def test_policy_none_stays_plain(send, write_msg, pf_good):
    r = send_to(send, pf_good.url(), write_msg, "--tls", "none")
    assert r.rc == 0 and r.summary["tls"] is None


def test_implicit_tls(send, write_msg, certs, pf_good):
    url = f"smtps://127.0.0.1:{pf_good.tls_port}"
    r = send_to(send, url, write_msg, "--tls-ca-file", certs.ca, "--tls-name", NAME)
    assert r.rc == 0, r.stdout + r.stderr
    assert r.summary["tls"]["verified"] is True
    r = send_to(send, url, write_msg, "--tls", "encrypt")
    assert r.rc == 0
    r = send_to(send, url, write_msg, "--tls", "may")
    assert r.rc == 64  # smtps is TLS from the first byte


def test_many_messages_over_one_tls_connection(send, write_msg, certs, pf_good):
    files = [write_msg(MSG.replace("tls", f"tls {i}")) for i in range(200)]
    r = send(pf_good.url(), files, "-f", "a@example.test", "--to", "ok@example.test", "--tls",
             "verify", "--tls-ca-file", certs.ca, "--tls-name", NAME)
    assert r.rc == 0, r.stdout + r.stderr
    assert r.summary["delivered"] == 200 and r.summary["pipelining"] is True
    # Pipelined inside TLS too: about one round trip per message.
    assert r.summary["round_trips"] <= 200 + 6
