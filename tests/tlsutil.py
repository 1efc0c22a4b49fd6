"""Test certificates, made with the openssl command for each test run: a
test CA, a server certificate it signed (mail.example.test and 127.0.0.1),
one for another name, and a self-signed one."""
import os
import shutil
import subprocess
import tempfile


def _run(*args):
    subprocess.run(["openssl"] + list(args), check=True, capture_output=True)


class Certs:
    def __init__(self):
        # Not under pytest's private tmp: Exim reads them as Debian-exim.
        d = self.dir = tempfile.mkdtemp(prefix="ms-certs-")
        os.chmod(d, 0o755)
        p = lambda n: os.path.join(d, n)  # noqa: E731
        self.ca, self.ca_key = p("ca.pem"), p("ca.key")
        _run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", self.ca_key, "-out",
             self.ca, "-days", "2", "-subj", "/CN=mailspool test CA")
        self.good = self._signed("good", "mail.example.test", "DNS:mail.example.test,IP:127.0.0.1")
        self.other = self._signed("other", "other.example.test", "DNS:other.example.test")
        self.selfsigned = (p("self.pem"), p("self.key"))
        _run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", self.selfsigned[1],
             "-out", self.selfsigned[0], "-days", "2", "-subj", "/CN=mail.example.test",
             "-addext", "subjectAltName=DNS:mail.example.test,IP:127.0.0.1")
        for f in os.listdir(d):
            os.chmod(os.path.join(d, f), 0o644)  # the servers' own users read them

    def remove(self):
        shutil.rmtree(self.dir, ignore_errors=True)

    def _signed(self, name, cn, san):
        p = lambda n: os.path.join(self.dir, n)  # noqa: E731
        key, csr, crt, ext = p(name + ".key"), p(name + ".csr"), p(name + ".pem"), p(name + ".ext")
        with open(ext, "w") as f:
            f.write(f"subjectAltName={san}\nextendedKeyUsage=serverAuth\n")
        _run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj",
             f"/CN={cn}")
        _run("x509", "-req", "-in", csr, "-CA", self.ca, "-CAkey", self.ca_key, "-CAcreateserial",
             "-out", crt, "-days", "2", "-extfile", ext)
        return crt, key
