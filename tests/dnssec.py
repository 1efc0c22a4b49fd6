"""A DNSSEC world for DANE tests: zones written by the test, the signed ones
signed with ldns-signzone (a fresh ECDSA P-256 key each run), served by
NSD as their authoritative server, and unbound as the validating resolver
the daemon asks (trust anchor: the signed zones' own keys).  Unsigned
zones are served too and come out "insecure" (no trust anchor covers
them), so the AD bit says exactly which answers were validated.

Everything listens on 127.0.0.1 on free ports and lives in one temporary
directory; nothing is sent anywhere else."""
import os
import shutil
import subprocess
import tempfile
import time

from servers import free_port, stop


def _wait_udp(port, name, timeout=15.0):
    """Until the server at port answers a query for name (any answer)."""
    import socket
    import struct
    q = struct.pack(">HHHHHH", 0x4d53, 0x0100, 1, 0, 0, 0)
    for label in name.rstrip(".").split("."):
        q += bytes([len(label)]) + label.encode()
    q += b"\0" + struct.pack(">HH", 6, 1)  # SOA
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.3)
        while time.monotonic() < deadline:
            s.sendto(q, ("127.0.0.1", port))
            try:
                s.recvfrom(4096)
                return
            except OSError:
                time.sleep(0.1)
    raise RuntimeError(f"no DNS answer on port {port}")


class Dnssec:
    """signed / unsigned: {zone: "records in zone-file syntax, names
    relative to the zone or absolute"}.  .servers() is what dns_servers
    takes (unbound)."""

    def __init__(self, signed=None, unsigned=None):
        self.signed = dict(signed or {})
        self.unsigned = dict(unsigned or {})
        self.dir = tempfile.mkdtemp(prefix="ms-dnssec-")
        os.chmod(self.dir, 0o755)
        self.ns_port = free_port()
        self.port = free_port()
        self.procs = []

    def _zone_file(self, zone, records):
        head = (f"$ORIGIN {zone}.\n$TTL 300\n"
                f"@ IN SOA ns.{zone}. hostmaster.{zone}. 1 3600 600 86400 300\n"
                f"@ IN NS ns.{zone}.\nns IN A 127.0.0.1\n")
        path = os.path.join(self.dir, zone)
        with open(path, "w") as f:
            f.write(head + records.strip() + "\n")
        return path

    def __enter__(self):
        d = self.dir
        anchors = []
        zone_conf = ""
        for zone, records in self.signed.items():
            path = self._zone_file(zone, records)
            key = subprocess.run(["ldns-keygen", "-a", "ECDSAP256SHA256", "-k", zone], cwd=d,
                                 check=True, capture_output=True, text=True).stdout.strip()
            subprocess.run(["ldns-signzone", path, key], cwd=d, check=True, capture_output=True)
            anchors.append(os.path.join(d, key + ".key"))
            zone_conf += f"zone:\n  name: {zone}\n  zonefile: {zone}.signed\n"
        for zone, records in self.unsigned.items():
            self._zone_file(zone, records)
            zone_conf += f"zone:\n  name: {zone}\n  zonefile: {zone}\n"
        nsd_conf = os.path.join(d, "nsd.conf")
        with open(nsd_conf, "w") as f:
            f.write(f"server:\n  ip-address: 127.0.0.1@{self.ns_port}\n  do-ip6: no\n"
                    f"  username: \"\"\n  chroot: \"\"\n  zonesdir: {d}\n"
                    f"  pidfile: {d}/nsd.pid\n  database: \"\"\n  zonelistfile: {d}/zone.list\n"
                    f"  xfrdfile: {d}/xfrd.state\n  xfrdir: {d}\n  verbosity: 1\n"
                    f"  server-count: 1\nremote-control:\n  control-enable: no\n{zone_conf}")
        self.procs.append(subprocess.Popen(["nsd", "-d", "-c", nsd_conf],
                                           stdout=subprocess.DEVNULL,
                                           stderr=open(os.path.join(d, "nsd.log"), "wb")))
        first = next(iter(list(self.signed) + list(self.unsigned)))
        _wait_udp(self.ns_port, first)
        ub_conf = os.path.join(d, "unbound.conf")
        stubs = "".join(f"stub-zone:\n  name: \"{z}\"\n  stub-addr: 127.0.0.1@{self.ns_port}\n"
                        for z in list(self.signed) + list(self.unsigned))
        with open(ub_conf, "w") as f:
            f.write(f"server:\n  interface: 127.0.0.1@{self.port}\n  port: {self.port}\n"
                    f"  do-ip6: no\n  username: \"\"\n  chroot: \"\"\n  directory: {d}\n"
                    f"  pidfile: {d}/unbound.pid\n  use-syslog: no\n  logfile: \"\"\n"
                    f"  verbosity: 1\n  num-threads: 1\n  so-reuseport: no\n"
                    f"  do-not-query-localhost: no\n  access-control: 127.0.0.0/8 allow\n"
                    f"  module-config: \"validator iterator\"\n  qname-minimisation: no\n"
                    f"  local-zone: \"test.\" nodefault\n  val-log-level: 2\n"
                    + "".join(f"  trust-anchor-file: {a}\n" for a in anchors)
                    + f"remote-control:\n  control-enable: no\n{stubs}")
        self.procs.append(subprocess.Popen(["unbound", "-d", "-c", ub_conf],
                                           stdout=subprocess.DEVNULL,
                                           stderr=open(os.path.join(d, "unbound.log"), "wb")))
        _wait_udp(self.port, first)
        return self

    def __exit__(self, *exc):
        for p in reversed(self.procs):
            stop(p)
        shutil.rmtree(self.dir, ignore_errors=True)

    def servers(self):
        return f"127.0.0.1:{self.port}"

    def log(self):
        with open(os.path.join(self.dir, "unbound.log"), errors="replace") as f:
            return f.read()


def spki_sha256(cert):
    """The TLSA 3 1 1 / 2 1 1 association data of a PEM certificate."""
    pub = subprocess.run(["openssl", "x509", "-in", cert, "-noout", "-pubkey"], check=True,
                         capture_output=True).stdout
    der = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "DER"], input=pub, check=True,
                         capture_output=True).stdout
    import hashlib
    return hashlib.sha256(der).hexdigest()


def cert_sha256(cert):
    """The TLSA x 0 1 association data (the whole certificate)."""
    der = subprocess.run(["openssl", "x509", "-in", cert, "-outform", "DER"], check=True,
                         capture_output=True).stdout
    import hashlib
    return hashlib.sha256(der).hexdigest()
