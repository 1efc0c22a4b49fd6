"""AUTH against real servers: Exim's plaintext authenticator (PLAIN and
LOGIN) inside STARTTLS; aiosmtpd for SCRAM-SHA-256 (with the server's proof
checked) and XOAUTH2, which neither Postfix nor Exim serve without a SASL
library.  Credentials never go out in clear and never reach a transcript;
a password file others can read is refused."""
import base64
import hashlib
import hmac
import os
import secrets
import ssl

import pytest

from servers import Aiosmtpd, Exim

USER, PASSWORD, TOKEN = "mailuser", "c0rrect horse", "ya29.token-for-test"
MSG = "From: a@example.test\r\nSubject: auth\r\n\r\nauthenticated\r\n"
NAME = "mail.example.test"


@pytest.fixture
def pwfile(tmp_path):
    def make(secret=PASSWORD, mode=0o600):
        p = tmp_path / f"pw{secrets.token_hex(3)}"
        p.write_text(secret + "\n")
        os.chmod(p, mode)
        return str(p)
    return make


def tls_args(certs):
    return ["--tls-ca-file", certs.ca, "--tls-name", NAME]


def go(send, url, write_msg, *args, files=None):
    return send(url, files or [write_msg(MSG)], "-f", "a@example.test", "--to",
                "ok@example.test", *args)


@pytest.fixture(scope="module")
def exim(certs):
    with Exim(tls=certs.good, auth=(USER, PASSWORD)) as e:
        yield e


@pytest.mark.parametrize("mechs,want", [(None, "PLAIN"), ("LOGIN", "LOGIN")])
def test_exim_plain_and_login_over_tls(send, write_msg, exim, certs, pwfile, tmp_path, mechs, want):
    tfile = tmp_path / "t.txt"
    extra = ["--auth-mechs", mechs] if mechs else []
    r = go(send, f"smtp://{USER}@127.0.0.1:{exim.port}", write_msg, "--password-file", pwfile(),
           "--transcript", str(tfile), *tls_args(certs), *extra)
    assert r.rc == 0, r.stdout + r.stderr
    assert r.summary["auth"] == want and r.summary["tls"]["verified"] is True
    t = tfile.read_text()
    # The secret never reaches the transcript, in clear or in base64.
    for s in (PASSWORD, base64.b64encode(PASSWORD.encode()).decode(),
              base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()):
        assert s not in t
    assert "redacted" in t
    assert len(exim.messages()) >= 1


def test_exim_wrong_password(send, write_msg, exim, certs, pwfile):
    r = go(send, f"smtp://{USER}@127.0.0.1:{exim.port}", write_msg, "--password-file",
           pwfile("wrong"), *tls_args(certs))
    assert r.rc == 75
    assert "authentication failed" in r.summary["session_error"]
    assert "535" in r.summary["session_error"]


def test_credentials_never_in_clear(send, write_msg, certs, pwfile):
    """A server offering AUTH without TLS: under --tls may nothing is sent;
    only --auth-plaintext allows it."""
    with Exim(auth=(USER, PASSWORD), auth_in_clear=True) as e:
        url = f"smtp://{USER}@127.0.0.1:{e.port}"
        r = go(send, url, write_msg, "--password-file", pwfile(), "--tls", "may")
        assert r.rc == 75 and "refusing to send credentials" in r.summary["session_error"]
        log = open(os.path.join(e.dir, "log", "mainlog")).read() if os.path.exists(
            os.path.join(e.dir, "log", "mainlog")) else ""
        assert "authenticator failed" not in log
        assert e.messages() == []
        # The default for a relay with credentials is verify: no STARTTLS here.
        r = go(send, url, write_msg, "--password-file", pwfile())
        assert r.rc == 75 and "does not offer STARTTLS" in r.summary["session_error"]
        r = go(send, url, write_msg, "--password-file", pwfile(), "--tls", "none",
               "--auth-plaintext")
        assert r.rc == 0 and r.summary["auth"] == "PLAIN"


def test_password_file_permissions(send, write_msg, pwfile):
    r = go(send, f"smtp://{USER}@127.0.0.1:1", write_msg, "--password-file", pwfile(mode=0o644))
    assert r.rc == 64 and "accessible to group or others" in r.stderr
    r = go(send, "smtp://127.0.0.1:1", write_msg, "--password-file", pwfile())
    assert r.rc == 64 and "needs a user" in r.stderr
    r = go(send, f"smtp://{USER}:hunter2@127.0.0.1:1", write_msg)
    assert r.rc == 64 and "no password in a URL" in r.stderr


# ---- aiosmtpd: SCRAM-SHA-256 and XOAUTH2 -----------------------------------

def _h(key, msg):
    return hmac.new(key, msg, hashlib.sha256).digest()


def scram_server(password, forge=False):
    """An RFC 5802/7677 SCRAM-SHA-256 server for aiosmtpd."""
    from aiosmtpd.smtp import AuthResult

    async def mech(server, args):
        first = base64.b64decode(args[1]).decode() if len(args) > 1 else \
            (await server.challenge_auth("")).decode()
        assert first.startswith("n,,")
        bare = first[3:]
        attrs = dict(kv.split("=", 1) for kv in bare.split(","))
        snonce = attrs["r"] + secrets.token_hex(8)
        salt, it = os.urandom(16), 4096
        sfirst = f"r={snonce},s={base64.b64encode(salt).decode()},i={it}"
        final = (await server.challenge_auth(sfirst)).decode()
        without_proof, _, proof = final.rpartition(",p=")
        salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, it)
        ckey = _h(salted, b"Client Key")
        stored = hashlib.sha256(ckey).digest()
        auth_msg = f"{bare},{sfirst},{without_proof}".encode()
        sig = _h(stored, auth_msg)
        got = bytes(a ^ b for a, b in zip(base64.b64decode(proof), sig))
        if attrs["n"] != USER or hashlib.sha256(got).digest() != stored or \
                f"r={snonce}" not in without_proof:
            return AuthResult(success=False, handled=False)
        ssig = _h(_h(salted, b"Server Key"), auth_msg)
        if forge:
            ssig = bytes(32)
        await server.challenge_auth(f"v={base64.b64encode(ssig).decode()}")
        return AuthResult(success=True)
    return mech


def xoauth2_server():
    from aiosmtpd.smtp import AuthResult

    async def mech(server, args):
        raw = base64.b64decode(args[1]).decode()
        fields = dict(f.split("=", 1) for f in raw.split("\x01") if f)
        if fields.get("user") == USER and fields.get("auth") == f"Bearer {TOKEN}":
            return AuthResult(success=True)
        await server.challenge_auth('{"status":"401","schemes":"bearer"}')
        return AuthResult(success=False, handled=False)
    return mech


def tls_context(certs):
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(*certs.good)
    return ctx


@pytest.mark.parametrize("forge", [False, True])
def test_scram_sha_256(send, write_msg, certs, pwfile, forge):
    with Aiosmtpd(tls_context=tls_context(certs), auth_require_tls=True,
                  auth_methods={"SCRAM-SHA-256": scram_server(PASSWORD, forge)}) as srv:
        r = go(send, f"smtp://{USER}@127.0.0.1:{srv.port}", write_msg, "--password-file",
               pwfile(), *tls_args(certs))
        if forge:
            # A server that cannot prove it knows the password is not trusted.
            assert r.rc == 75 and "signature is wrong" in r.summary["session_error"]
            assert srv.envelopes == []
        else:
            assert r.rc == 0, r.stdout + r.stderr
            assert r.summary["auth"] == "SCRAM-SHA-256"
            assert len(srv.envelopes) == 1


def test_scram_wrong_password(send, write_msg, certs, pwfile):
    with Aiosmtpd(tls_context=tls_context(certs),
                  auth_methods={"SCRAM-SHA-256": scram_server("other")}) as srv:
        r = go(send, f"smtp://{USER}@127.0.0.1:{srv.port}", write_msg, "--password-file",
               pwfile(), *tls_args(certs))
        assert r.rc == 75 and "535" in r.summary["session_error"]


def test_xoauth2_token_from_command(send, write_msg, certs):
    with Aiosmtpd(tls_context=tls_context(certs), auth_methods={"XOAUTH2": xoauth2_server()}) as srv:
        url = f"smtp://{USER}@127.0.0.1:{srv.port}"
        r = go(send, url, write_msg, "--oauth-token-eval", f"echo {TOKEN}", *tls_args(certs))
        assert r.rc == 0, r.stdout + r.stderr
        assert r.summary["auth"] == "XOAUTH2"
        r = go(send, url, write_msg, "--oauth-token-eval", "echo expired", *tls_args(certs))
        assert r.rc == 75 and "535" in r.summary["session_error"]
        r = go(send, url, write_msg, "--oauth-token-eval", "false", *tls_args(certs))
        assert r.rc == 64


def test_many_messages_over_one_authenticated_tls_connection(send, write_msg, exim, certs,
                                                             pwfile):
    files = [write_msg(MSG.replace("auth", f"auth {i}")) for i in range(1000)]
    before = len(exim.messages())
    r = go(send, f"smtp://{USER}@127.0.0.1:{exim.port}", write_msg, "--password-file", pwfile(),
           *tls_args(certs), files=files)
    assert r.rc == 0, r.stdout[-2000:] + r.stderr
    assert r.summary["delivered"] == 1000 and r.summary["connections"] == 1
    assert r.summary["auth"] == "PLAIN"
    assert len(exim.messages()) - before == 1000
