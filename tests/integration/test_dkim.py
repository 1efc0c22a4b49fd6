"""DKIM signing at commit (RFC 6376, RFC 8463): keys made by
`mailspool dkim-keygen`, published as TXT records by dnsmasq, signatures
checked by real verifiers on receipt - Exim's built-in DKIM verification
(over BDAT, Exim offers CHUNKING) and python3-dkim (over DATA to aiosmtpd
and over QMTP, whose to-LF encoding mailfront stores) - with RSA and
Ed25519 signatures on the same message."""
import json
import os
import re
import stat
import subprocess
import time

import pytest

from conftest import BIN, Spool
from servers import Aiosmtpd, Dnsmasq, Exim, Mailfront, free_port

dkim = pytest.importorskip("dkim")

# What a verifier must survive: dot-stuffing, trailing white space that
# relaxed canonicalisation folds, a long line, and an empty last line.
BODY = ("From: Alice <alice@sign.test>\r\nTo: bob@d.test\r\nSubject: signed  twice \r\n"
        "\r\n.a line that starts with a dot\r\n..two dots\r\ntrailing space   \r\n"
        + "x" * 900 + "\r\n\r\n.\r\nend\r\n")


def keygen(root, alg, selector):
    key = os.path.join(root, f"{selector}.pem")
    p = subprocess.run([BIN, "dkim-keygen", "-C", os.path.join(root, "mailspool.conf"), "-a", alg,
                        "-k", key, "sign.test", selector], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    rec = re.search(r'^(\S+)\. IN TXT \( (.*) \)$', p.stdout, re.M)
    assert rec and rec.group(1) == f"{selector}._domainkey.sign.test", p.stdout
    strings = re.findall(r'"([^"]*)"', rec.group(2))
    # Keys are never overwritten.
    again = subprocess.run([BIN, "dkim-keygen", "-C", os.path.join(root, "mailspool.conf"),
                            "-k", key, "sign.test", selector],
                           capture_output=True, text=True)
    assert again.returncode != 0 and "never overwritten" in again.stderr
    return key, rec.group(1), strings


@pytest.fixture
def keys(tmp_path):
    root = str(tmp_path)
    with open(os.path.join(root, "mailspool.conf"), "w") as f:
        f.write("mail_owner = root\n")
    return {"rsa": keygen(root, "rsa-sha256", "r2026"),
            "ed": keygen(root, "ed25519-sha256", "e2026")}


def dkim_conf(keys):
    return ("dkim.sign.test.selector = r2026 e2026\n"
            f"dkim.sign.test.key_file = {keys['rsa'][0]} {keys['ed'][0]}\n"
            "dkim.sign.test.algorithm = rsa-sha256 ed25519-sha256\n")


def python_verify(data, keys):
    """Both signatures of data checked with python3-dkim against the
    published records; returns the algorithms that passed."""
    records = {name.encode() + b".": "".join(s).encode() for _, name, s in keys.values()}
    d = dkim.DKIM(data)
    sigs = [h for h in d.headers if h[0].lower() == b"dkim-signature"]
    passed = []
    for i in range(len(sigs)):
        ok = d.verify(idx=i, dnsfunc=lambda name, timeout=5: records.get(name, b""))
        assert ok, (i, d.signature_fields if hasattr(d, "signature_fields") else None)
        passed.append(re.search(rb"a=([a-z0-9-]+)", sigs[i][1]).group(1).decode())
    return passed


def world(tmp_path, dns, extra):
    log = os.path.join(str(tmp_path), "delivery.log")
    sp = Spool(str(tmp_path), f"dns_servers = {dns.servers()}\nlog_file = {log}\n"
                              f"dns_timeout = 3s\nconnect_timeout = 5s\n{extra}")
    if "ASAN_OPTIONS" in sp.env:
        # Full stacks, so that tests/lsan.supp can name libopendkim's own
        # Ed25519 key leak (its frames have no frame pointers).
        sp.env["ASAN_OPTIONS"] += ":fast_unwind_on_malloc=0"
    return sp, log


def queue(sp, rcpt, body=BODY, sender="alice@sign.test"):
    p = sp.ms("send", "-f", sender, "--to", rcpt, stdin=body.encode())
    assert p.returncode == 0, p.stderr
    return re.search(rb"queued as (\S+)", p.stdout).group(1).decode()


def test_signed_once_and_verified_over_data_and_qmtp(tmp_path, keys):
    """Two signatures (RSA, Ed25519) made at commit; both verify after
    DATA's dot-stuffing (aiosmtpd) and after QMTP's to-LF encoding
    (mailfront), and a retried message carries the very same signatures."""
    with Dnsmasq() as dns, Aiosmtpd() as smtp, Mailfront() as mf:
        later = {"later@d.test": "451 4.3.0 come back"}
        smtp.rcpt_replies.update(later)
        sp, log = world(tmp_path, dns, dkim_conf(keys)
                        + f"route.d.test = smtp://127.0.0.1:{smtp.port}\n"
                          f"route.q.test = qmtp://127.0.0.1:{mf.port}\nretry_tiers = 0 1h\n")
        queue(sp, "bob@d.test")
        queue(sp, "carol@q.test")
        retried = queue(sp, "later@d.test")
        p = sp.ms("daemon", "--once")
        assert p.returncode == 0, p.stderr
        assert len(smtp.envelopes) == 1, open(log).read()
        data = smtp.envelopes[0][2]
        assert data.startswith(b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=sign.test;")
        assert python_verify(data, keys) == ["rsa-sha256", "ed25519-sha256"]
        # h= oversigns From: nobody can add a second one after us.
        h = re.search(rb"[;\s]h=([^;]+);", data).group(1)
        assert re.sub(rb"\s", b"", h).lower().split(b":").count(b"from") == 2
        # QMTP: mailfront stores LF lines; a verifier reads CRLF ones.
        (_, _, qdata), = mf.messages(expect=1)
        assert b"\r\n" not in qdata
        assert python_verify(qdata.replace(b"\n", b"\r\n"), keys) == ["rsa-sha256",
                                                                      "ed25519-sha256"]
        # Signed once: `show` has the fields, and the retry sends them.
        p = sp.ms("show", "--json", retried)
        assert p.returncode == 0, p.stderr
        shown = json.loads(p.stdout)["headers"].encode()
        assert shown.startswith(b"DKIM-Signature: v=1; a=rsa-sha256")
        sig1 = shown.split(b"\r\nReceived: ")[0] + b"\r\n"
        smtp.rcpt_replies.clear()
        assert sp.ms("flush", retried).returncode == 0
        p = sp.ms("daemon", "--once")
        assert p.returncode == 0, p.stderr
        resent = [e for e in smtp.envelopes if e[1] == ["later@d.test"]]
        assert len(resent) == 1
        assert python_verify(resent[0][2], keys) == ["rsa-sha256", "ed25519-sha256"]
        assert resent[0][2].split(b"\r\nReceived: ")[0] + b"\r\n" == sig1


DKIM_ACL = ("acl_dkim:\n  warn log_message = DKIM: d=$dkim_cur_signer s=$dkim_selector "
            "a=$dkim_algo status=$dkim_verify_status\n  accept\n")


def test_exim_verifies_both_signatures_over_bdat(tmp_path, keys):
    """Exim's own DKIM verification, reading the keys from dnsmasq as its
    resolver: both signatures pass, and the message went by BDAT."""
    txt = {name: s for _, name, s in keys.values()}
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1\noptions attempts:1 timeout:2\n")
    dkim_acl = ("acl_smtp_dkim = acl_dkim\n"
                "dkim_verify_signers = $dkim_signers\n")
    with Dnsmasq(txt=txt, port=53) as dns, \
            Exim(extra_main=dkim_acl, resolv=str(resolv), extra_acl=DKIM_ACL) as ex:
        sp, log = world(tmp_path, dns, dkim_conf(keys)
                        + f"route.d.test = smtp://127.0.0.1:{ex.port}\n")
        queue(sp, "bob@d.test")
        p = sp.ms("daemon", "--once")
        assert p.returncode == 0, p.stderr
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and ex.mainlog().count("status=") < 2:
            time.sleep(0.1)
        mainlog = ex.mainlog()
        assert re.search(r"DKIM: d=sign\.test s=r2026 a=rsa-sha256 status=pass", mainlog), mainlog
        assert re.search(r"DKIM: d=sign\.test s=e2026 a=ed25519-sha256 status=pass",
                         mainlog), mainlog
        # Exim marks a message that came in chunks (BDAT) with K.
        assert re.search(r"<= alice@sign\.test .* K ", mainlog) or " K " in mainlog, mainlog


def test_key_open_to_others_is_refused(tmp_path, keys):
    """A key others may read is refused when the daemon starts (exit 78,
    it says which and why) and a submission is refused rather than queued
    unsigned (exit 75, nothing in the queue)."""
    os.chmod(keys["ed"][0], 0o644)
    with Dnsmasq() as dns:
        sp, _ = world(tmp_path, dns, dkim_conf(keys))
        p = sp.ms("daemon", "--once")
        assert p.returncode == 78, p.stderr
        assert b"is open to others (mode 0644)" in p.stderr
        p = sp.ms("send", "-f", "alice@sign.test", "--to", "bob@d.test", stdin=BODY.encode())
        assert p.returncode == 75, p.stderr
        assert b"open to others" in p.stderr
        assert sp.listdir("env") == []
        # Mail from a domain nobody signs for is not affected.
        p = sp.ms("send", "-f", "x@other.test", "--to", "bob@d.test",
                  stdin=b"From: x@other.test\r\nSubject: s\r\n\r\nhi\r\n")
        assert p.returncode == 0, p.stderr
        assert b"DKIM-Signature" not in open(
            os.path.join(sp.dir, "env", sp.listdir("env")[0]), "rb").read()
