"""Shared helpers for the integration and hostile-server tests."""
import json
import os
import re
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

BIN = os.environ.get("MAILSPOOL_BIN",
                     os.path.join(os.path.dirname(__file__), "..", "build", "mailspool"))


class Result:
    def __init__(self, proc):
        self.rc = proc.returncode
        self.stdout = proc.stdout.decode(errors="replace")
        self.stderr = proc.stderr.decode(errors="replace")
        self.json = None
        if self.stdout.startswith("{"):
            self.json = json.loads(self.stdout)

    @property
    def messages(self):
        return self.json["messages"]

    @property
    def summary(self):
        return self.json["summary"]

    def rcpt(self, msg_index, address):
        for r in self.messages[msg_index]["recipients"]:
            if r["address"] == address:
                return r
        raise KeyError(address)


def run_send(url, files=(), *args, stdin=None, json_out=True, timeout=120):
    argv = [BIN, "send", "--via", url] + (["--json"] if json_out else []) + list(args) + [
        str(f) for f in files]
    proc = subprocess.run(argv, input=stdin, capture_output=True, timeout=timeout)
    return Result(proc)


@pytest.fixture
def send():
    return run_send


@pytest.fixture
def write_msg(tmp_path):
    """write_msg(bytes or str, name=None) -> path of a message file."""
    counter = [0]

    def make(data, name=None):
        counter[0] += 1
        p = tmp_path / (name or f"m{counter[0]:05d}.eml")
        p.write_bytes(data.encode() if isinstance(data, str) else data)
        return p

    return make


def strip_received(data):
    """Message data as received by a server, without the Received field
    the queue puts on top of every submission (CRLF or LF lines)."""
    m = re.match(rb"Received: by [^\r\n]+ \(mailspool, from userid \d+\)\r?\n\tid [0-9a-f]+; [^\r\n]+\r?\n", data)
    assert m, data[:200]
    return data[m.end():]


class Spool:
    """A private spool: its own mailspool.conf (via MAILSPOOL_CONFIG), and
    `sendmail`/`mailq` links to the binary, as a system would install them."""

    def __init__(self, root, extra_conf=""):
        self.root = root
        os.makedirs(root, exist_ok=True)
        self.dir = os.path.join(root, "spool")
        self.conf = os.path.join(root, "mailspool.conf")
        with open(self.conf, "w") as f:
            f.write(f"# test spool\nspool_dir = {self.dir}\nhostname = host.example.test\n"
                    f"min_free_space = 0\nmail_owner = root\n{extra_conf}")
        self.bin = os.path.join(root, "bin")
        os.makedirs(self.bin)
        for name in ("sendmail", "mailq"):
            os.symlink(os.path.abspath(BIN), os.path.join(self.bin, name))
        self.sendmail = os.path.join(self.bin, "sendmail")
        self.mailq = os.path.join(self.bin, "mailq")
        self.env = dict(os.environ, MAILSPOOL_CONFIG=self.conf)

    def run(self, argv, stdin=b"", env=None, timeout=60):
        if isinstance(stdin, str):
            stdin = stdin.encode()
        p = subprocess.run(argv, input=stdin, capture_output=True, timeout=timeout,
                           env=dict(self.env, **(env or {})))
        return p

    def ms(self, *args, stdin=b"", env=None):
        return self.run([BIN] + list(args), stdin=stdin, env=env)

    def queue(self):
        """The queue as `mailspool queue --json` shows it."""
        p = self.ms("queue", "--json")
        assert p.returncode in (0, 75), p.stderr
        return json.loads(p.stdout)["messages"]

    def raw_data(self, qid):
        with open(os.path.join(self.dir, "data", qid), "rb") as f:
            return f.read()

    def data(self, qid):
        """The stored message without the queue's own Received field,
        which must come first and name the queue id (it says who
        submitted: tests/integration/test_privsep.py)."""
        raw = self.raw_data(qid)
        m = re.match(rb"Received: by [^\r\n]+ \(mailspool, from userid \d+\)\r\n\tid ([0-9a-f]+); [^\r\n]+\r\n", raw)
        assert m and m.group(1).decode() == qid, raw[:200]
        return raw[m.end():]

    def listdir(self, sub):
        try:
            return sorted(os.listdir(os.path.join(self.dir, sub)))
        except FileNotFoundError:
            return []


@pytest.fixture
def spool(tmp_path):
    return Spool(str(tmp_path))


@pytest.fixture(scope="session")
def certs():
    """A test CA and certificates (tests/tlsutil.py), once per run."""
    from tlsutil import Certs
    c = Certs()
    yield c
    c.remove()
