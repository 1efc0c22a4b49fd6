"""DANE for MX delivery (RFC 7672), against a DNSSEC-signed zone served by
NSD and validated by unbound, the resolver the daemon uses (tests/dnssec.py):
a matching DANE-EE record delivers over TLS authenticated by it; a
mismatching one defers; DANE-TA checks the chain and the MX host's name; a
TLSA record makes TLS mandatory; a signed zone without TLSA records and an
unsigned zone with bogus ones fall back to the `may` rules; dane-only
defers where there is nothing to authenticate with."""
import os
import re
import ssl

import pytest

from conftest import Spool
from dnssec import Dnssec, cert_sha256, spki_sha256
from servers import Aiosmtpd, free_port

SENDER = "sender@sender.test"


def ctx(cert, key):
    c = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    c.load_cert_chain(cert, key)
    return c


def chain(tmp_path, name, leaf, ca):
    """A leaf followed by its CA: a DANE-TA(2) server must send the
    trust anchor its record names (RFC 7671 5.2.2)."""
    path = os.path.join(str(tmp_path), name + "-chain.pem")
    with open(path, "w") as f:
        f.write(open(leaf).read() + open(ca).read())
    return path


@pytest.fixture
def world(tmp_path, certs):
    port = free_port()
    ta_cert, ta_key = certs._signed("ta", "mx-ta.dane.test", "DNS:mx-ta.dane.test")
    ta = (chain(tmp_path, "ta", ta_cert, certs.ca), ta_key)
    wrong = (chain(tmp_path, "wrong", certs.good[0], certs.ca), certs.good[1])
    self_spki = spki_sha256(certs.selfsigned[0])
    other_spki = spki_sha256(certs.other[0])
    signed = f"""
good IN MX 10 mx-good
mx-good IN A 127.0.0.2
_{port}._tcp.mx-good IN TLSA 3 1 1 {self_spki}
bad IN MX 10 mx-bad
mx-bad IN A 127.0.0.3
_{port}._tcp.mx-bad IN TLSA 3 1 1 {other_spki}
ta IN MX 10 mx-ta
mx-ta IN A 127.0.0.5
_{port}._tcp.mx-ta IN TLSA 2 0 1 {cert_sha256(certs.ca)}
wrongname IN MX 10 mx-wrongname
mx-wrongname IN A 127.0.0.7
_{port}._tcp.mx-wrongname IN TLSA 2 0 1 {cert_sha256(certs.ca)}
plain IN MX 10 mx-plain
mx-plain IN A 127.0.0.6
_{port}._tcp.mx-plain IN TLSA 3 1 1 {self_spki}
pkix IN MX 10 mx-pkix
mx-pkix IN A 127.0.0.4
_{port}._tcp.mx-pkix IN TLSA 1 1 1 {other_spki}
notlsa IN MX 10 mx-notlsa
only IN MX 10 mx-notlsa
mx-notlsa IN A 127.0.0.6
sender IN MX 10 mx-notlsa
"""
    unsigned = f"""
ins IN MX 10 mx
mx IN A 127.0.0.4
_{port}._tcp.mx IN TLSA 3 1 1 {other_spki}
"""
    servers = {
        "good": Aiosmtpd(host="127.0.0.2", port=port, tls_context=ctx(*certs.selfsigned)),
        "bad": Aiosmtpd(host="127.0.0.3", port=port, tls_context=ctx(*certs.selfsigned)),
        "self4": Aiosmtpd(host="127.0.0.4", port=port, tls_context=ctx(*certs.selfsigned)),
        "ta": Aiosmtpd(host="127.0.0.5", port=port, tls_context=ctx(*ta)),
        "plain": Aiosmtpd(host="127.0.0.6", port=port),
        "wrongname": Aiosmtpd(host="127.0.0.7", port=port, tls_context=ctx(*wrong)),
    }
    with Dnssec(signed={"dane.test": signed}, unsigned={"insecure.test": unsigned}) as dns:
        for s in servers.values():
            s.__enter__()
        try:
            log = os.path.join(str(tmp_path), "delivery.log")
            sp = Spool(str(tmp_path), f"dns_servers = {dns.servers()}\nmx_port = {port}\n"
                                      f"log_file = {log}\nretry_tiers = 0 1h\n"
                                      "dns_timeout = 5s\nconnect_timeout = 5s\n"
                                      "destination.only.dane.test.tls = dane-only\n")
            yield sp, log, servers, dns
        finally:
            for s in servers.values():
                s.__exit__(None, None, None)


def queue(sp, rcpt):
    p = sp.ms("send", "-f", SENDER, "--to", rcpt, stdin=b"Subject: dane\r\n\r\nhello\r\n")
    assert p.returncode == 0, p.stderr
    return re.search(rb"queued as (\S+)", p.stdout).group(1).decode()


def test_dane_decides_per_mx_host(world):
    sp, log, servers, dns = world
    rcpts = {k: f"u@{k}.dane.test" for k in ("good", "bad", "ta", "wrongname", "plain", "pkix",
                                               "notlsa", "only")}
    rcpts["ins"] = "u@ins.insecure.test"
    ids = {k: queue(sp, r) for k, r in rcpts.items()}
    p = sp.ms("daemon", "--once")
    assert p.returncode == 0, p.stderr
    text = open(log).read()
    lines = {k: re.search(rf"to=<{re.escape(r)}>[^\n]*", text) for k, r in rcpts.items()}
    assert all(lines.values()), text
    line = {k: m.group(0) for k, m in lines.items()}

    def got(name):
        return [e[1] for e in servers[name].envelopes]

    # DANE-EE matches the self-signed certificate: no CA, no name needed.
    assert ["u@good.dane.test"] in got("good")
    assert re.search(r"tls=dane \(TLSv1\.[23] \S+\).*status=sent", line["good"]), line["good"]
    # A mismatching DANE-EE record: never delivered, deferred with 4.7.5.
    assert got("bad") == []
    assert "status=deferred" in line["bad"] and "dsn=4.7.5" in line["bad"], line["bad"]
    assert "matches no TLSA record" in line["bad"], line["bad"]
    # DANE-TA: the chain up to the CA the record names, and the MX name.
    assert ["u@ta.dane.test"] in got("ta")
    assert "tls=dane (" in line["ta"], line["ta"]
    assert got("wrongname") == [], line["wrongname"]
    assert "status=deferred" in line["wrongname"], line["wrongname"]
    # A TLSA record makes TLS mandatory: a server without STARTTLS defers.
    assert ["u@plain.dane.test"] not in got("plain")
    assert "status=deferred" in line["plain"] and "STARTTLS" in line["plain"], line["plain"]
    # Only unusable records (PKIX-EE in SMTP): TLS required, not checked.
    assert ["u@pkix.dane.test"] in got("self4")
    assert "tls=unverified (" in line["pkix"], line["pkix"]
    # Signed zone, no TLSA: the may rules (this server has no STARTTLS).
    assert ["u@notlsa.dane.test"] in got("plain")
    assert "tls=none" in line["notlsa"] and "status=sent" in line["notlsa"], line["notlsa"]
    # Unsigned zone: its (bogus) TLSA records are not believed.
    assert ["u@ins.insecure.test"] in got("self4")
    assert "tls=unverified (" in line["ins"], line["ins"]
    # dane-only with nothing to authenticate: deferred, no connection.
    assert "status=deferred" in line["only"], line["only"]
    assert "no DNSSEC-validated TLSA records" in line["only"], line["only"]
    # TLS-RPT: the DANE policy (its TLSA records) per domain.
    import datetime
    import json
    today = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    p = sp.ms("tls-report", today)
    assert p.returncode == 0, p.stderr
    rep = {r["policies"][0]["policy"]["policy-domain"]: r["policies"] for r in json.loads(p.stdout)}
    (g,) = rep["good.dane.test"]
    assert g["policy"]["policy-type"] == "tlsa"
    assert g["policy"]["policy-string"][0].startswith("_%d._tcp.mx-good.dane.test. IN TLSA 3 1 1 "
                                                      % int(re.search(r":(\d+)", line["good"])
                                                            .group(1)))
    assert g["summary"]["total-successful-session-count"] == 1
    (b,) = rep["bad.dane.test"]
    assert b["summary"]["total-failure-session-count"] == 1
    assert b["failure-details"][0]["result-type"] == "validation-failure"
    assert rep["only.dane.test"][0]["failure-details"][0]["result-type"] == "dane-required"
    # What stays queued is the mail DANE kept back.
    left = {m["id"] for m in sp.queue()}
    assert left == {ids[k] for k in ("bad", "wrongname", "plain", "only")}, left
