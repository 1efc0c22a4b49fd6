"""Shared helpers for the integration and hostile-server tests."""
import json
import os
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
