"""MTA-STS for MX delivery (RFC 8461): the _mta-sts TXT record from dnsmasq,
the policy from a local HTTPS server with a certificate of the test CA.
enforce with a matching, verified MX delivers (tls=mta-sts); enforce with
a wrong-name certificate or an MX outside the policy defers; testing
delivers and records the failure; the cache in the spool is used when the
HTTPS server is down; a policy that cannot be fetched is no policy."""
import datetime
import http.server
import json
import os
import re
import ssl
import threading

import pytest

from conftest import Spool
from servers import Aiosmtpd, Dnsmasq, free_port

SENDER = "sender@sender.test"

POLICIES = {
    "enf.test": "version: STSv1\nmode: enforce\nmx: mail.example.test\nmax_age: 86400\n",
    "enfbad.test": "version: STSv1\r\nmode: enforce\r\nmx: *.example.test\r\nmax_age: 86400\r\n",
    "outside.test": "version: STSv1\nmode: enforce\nmx: mail.example.test\nmax_age: 86400\n",
    "testing.test": "version: STSv1\nmode: testing\nmx: *.example.test\nmax_age: 86400\n",
    "broken.test": "version: STSv1\nmode: enforce\nmax_age: 86400\n",  # no mx: invalid
}


class PolicyServer:
    """HTTPS on 127.0.0.8:port answering /.well-known/mta-sts.txt per Host."""

    def __init__(self, cert, key, port):
        outer = self
        self.hits = []

        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                host = self.headers.get("Host", "").split(":")[0]
                domain = host[len("mta-sts."):] if host.startswith("mta-sts.") else ""
                outer.hits.append((host, self.path))
                body = POLICIES.get(domain)
                if self.path != "/.well-known/mta-sts.txt" or body is None:
                    self.send_response(404)
                    self.end_headers()
                    return
                data = body.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *a):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.8", port), H)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert, key)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.t = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.t.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def dns(port, ids, dnsport=None):
    mx = [("enf.test", "mail.example.test", 10), ("enfbad.test", "wrong.example.test", 10),
          ("outside.test", "mx.elsewhere.test", 10), ("testing.test", "wrong.example.test", 10),
          ("nopolicy.test", "wrong.example.test", 10), ("broken.test", "wrong.example.test", 10),
          ("sender.test", "mail.example.test", 10)]
    hosts = {"mail.example.test": "127.0.0.2", "wrong.example.test": "127.0.0.3",
             "mx.elsewhere.test": "127.0.0.2"}
    for d in POLICIES:
        hosts[f"mta-sts.{d}"] = "127.0.0.8"
    txt = {f"_mta-sts.{d}": [f"v=STSv1; id={ids.get(d, 1)};"] for d in POLICIES}
    return Dnsmasq(mx=mx, hosts=hosts, txt=txt, port=dnsport)


def queue(sp, rcpt):
    p = sp.ms("send", "-f", SENDER, "--to", rcpt, stdin=b"Subject: sts\r\n\r\nhello\r\n")
    assert p.returncode == 0, p.stderr
    return re.search(rb"queued as (\S+)", p.stdout).group(1).decode()


def lines(log, rcpt):
    return re.findall(rf"to=<{re.escape(rcpt)}>[^\n]*", open(log).read())


def test_mta_sts_policies(tmp_path, certs):
    port, https_port = free_port(), free_port()
    sts_cert = certs._signed("sts", "mta-sts.enf.test",
                             ",".join(f"DNS:mta-sts.{d}" for d in POLICIES))
    good = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    good.load_cert_chain(*certs.good)
    log = os.path.join(str(tmp_path), "delivery.log")
    with dns(port, {}) as d, PolicyServer(*sts_cert, https_port) as web, \
            Aiosmtpd(host="127.0.0.2", port=port, tls_context=good) as s1, \
            Aiosmtpd(host="127.0.0.3", port=port, tls_context=good) as s2:
        sp = Spool(str(tmp_path), f"dns_servers = {d.servers()}\nmx_port = {port}\n"
                                  f"mta_sts_port = {https_port}\ntls_ca_file = {certs.ca}\n"
                                  f"log_file = {log}\nretry_tiers = 0 1h\ndns_timeout = 5s\n"
                                  "connect_timeout = 5s\n")
        ids = {r: queue(sp, f"u@{r}") for r in ("enf.test", "enfbad.test", "outside.test",
                                                  "testing.test", "nopolicy.test",
                                                  "broken.test")}
        p = sp.ms("daemon", "--once")
        assert p.returncode == 0, p.stderr
        got1 = [e[1] for e in s1.envelopes]
        got2 = [e[1] for e in s2.envelopes]
        (enf,) = lines(log, "u@enf.test")
        assert ["u@enf.test"] in got1 and "status=sent" in enf, enf
        assert re.search(r"tls=mta-sts \(TLSv1\.[23] \S+\)", enf), enf
        (bad,) = lines(log, "u@enfbad.test")
        assert "status=deferred" in bad and "dsn=4.7.5" in bad, bad
        assert "certificate not trusted" in bad, bad
        (out,) = lines(log, "u@outside.test")
        assert ["u@outside.test"] not in got1, got1
        assert "is not an MX host of the MTA-STS policy of outside.test" in out, out
        # testing: delivered over unverified TLS; the failure is reported.
        (tst,) = lines(log, "u@testing.test")
        assert ["u@testing.test"] in got2 and "tls=unverified" in tst, tst
        # No policy, and a policy that is invalid: the may rules.
        assert ["u@nopolicy.test"] in got2 and ["u@broken.test"] in got2
        assert sorted(m["id"] for m in sp.queue()) == sorted([ids["enfbad.test"],
                                                              ids["outside.test"]])
        # The cache: one file per fetched policy, the owner's, 0600.
        files = sorted(os.listdir(os.path.join(sp.dir, "sts")))
        assert files == ["enf.test", "enfbad.test", "outside.test", "testing.test"], files
        st = os.stat(os.path.join(sp.dir, "sts", "enf.test"))
        assert st.st_mode & 0o777 == 0o600
        # TLS-RPT (RFC 8460): today's aggregate report, per policy domain.
        today = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
        p = sp.ms("tls-report", today)
        assert p.returncode == 0, p.stderr
        reports = {r["policies"][0]["policy"]["policy-domain"]: r for r in json.loads(p.stdout)}
        enf_r = reports["enf.test"]
        assert enf_r["date-range"]["start-datetime"] == f"{today}T00:00:00Z"
        assert enf_r["organization-name"] == "host.example.test"
        pol = enf_r["policies"][0]
        assert pol["policy"]["policy-type"] == "sts"
        assert "mode: enforce" in pol["policy"]["policy-string"]
        assert pol["policy"]["mx-host"] == ["mail.example.test"]
        assert pol["summary"] == {"total-successful-session-count": 1,
                                  "total-failure-session-count": 0}
        bad_p = reports["enfbad.test"]["policies"][0]
        assert bad_p["summary"]["total-failure-session-count"] == 1
        (fd,) = bad_p["failure-details"]
        assert fd["result-type"] == "certificate-host-mismatch"
        assert fd["receiving-mx-hostname"] == "wrong.example.test"
        out_p = reports["outside.test"]["policies"][0]
        assert out_p["failure-details"][0]["receiving-mx-hostname"] == "mx.elsewhere.test"
        # testing: delivered, and the failure counted all the same.
        tst_p = reports["testing.test"]["policies"][0]
        assert tst_p["summary"]["total-failure-session-count"] == 1
        assert tst_p["failure-details"][0]["result-type"] == "certificate-host-mismatch"
        nop = reports["nopolicy.test"]["policies"][0]
        assert nop["policy"]["policy-type"] == "no-policy-found"
        assert nop["summary"]["total-successful-session-count"] == 1
        # One domain: one report object.
        p = sp.ms("tls-report", today, "enf.test")
        assert json.loads(p.stdout)["report-id"].startswith(f"{today}_enf.test@")
        assert sp.ms("tls-report", "1999-01-01").returncode == 66
        fetched = len(web.hits)
        # Again with the same ids: the cache answers, no fetch.
        queue(sp, "v@enf.test")
        assert sp.ms("daemon", "--once").returncode == 0
        assert len(web.hits) == fetched
        dport = d.port
    # The HTTPS server is down and the ids changed: the cached policies
    # stay in force (RFC 8461 5.1), in a new daemon process.
    with dns(port, {"enf.test": 2, "enfbad.test": 2}, dnsport=dport), \
            Aiosmtpd(host="127.0.0.2", port=port, tls_context=good) as s1, \
            Aiosmtpd(host="127.0.0.3", port=port, tls_context=good) as s2:
        queue(sp, "w@enf.test")
        queue(sp, "w@enfbad.test")
        assert sp.ms("flush").returncode == 0
        p = sp.ms("daemon", "--once")
        assert p.returncode == 0, p.stderr
        (w,) = lines(log, "w@enf.test")
        assert "status=sent" in w and "tls=mta-sts (" in w, w
        assert [e[1] for e in s2.envelopes] == []
        assert all("status=deferred" in x for x in lines(log, "w@enfbad.test"))
