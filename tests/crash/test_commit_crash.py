"""Kill or fail the submitting process at every file-system step of the
commit protocol (LD_PRELOAD fault injection, tests/crash/faultinject.c), and
check the spool's promises after each:

- nothing partial is ever visible: the queue shows no message, or the whole
  message with its full data and every recipient;
- every reported success survives: exit 0 means the message is queued;
- a failed step is exit 75 and leaves nothing visible;
- after a crash the sweep finds nothing damaged.
"""
import os
import shutil

import pytest

from conftest import Spool

FAULT = os.environ.get("MS_FAULTINJECT",
                       os.path.join(os.path.dirname(__file__), "..", "..", "build", "tests",
                                    "faultinject.so"))
MSG = ("From: a@example.test\nTo: b@example.test\nSubject: crash test\n\n"
       + "line of the body\n" * 200)


def submit(sp, env):
    return sp.run([sp.sendmail, "-i", "-f", "a@example.test", "b@example.test",
                   "c@example.test"], stdin=MSG, env=dict(env, LD_PRELOAD=FAULT))


def steps(tmp_path):
    """How many counted operations one submission makes."""
    sp = Spool(str(tmp_path / "count"))
    count = tmp_path / "count.txt"
    p = submit(sp, {"MS_FAULT_COUNT": str(count)})
    assert p.returncode == 0, p.stderr
    return int(count.read_text())


def check_whole(sp, reported):
    q = sp.queue()
    assert len(q) <= 1
    if reported:
        assert len(q) == 1, "a reported success was lost"
    if q:
        m = q[0]
        assert m["sender"] == "a@example.test"
        assert [r["address"] for r in m["recipients"]] == ["b@example.test", "c@example.test"]
        data = sp.data(m["id"])  # (without the queue's Received field)
        assert len(sp.raw_data(m["id"])) == m["size"]
        assert data.endswith(("line of the body\r\n" * 200).encode())
    return len(q)


@pytest.mark.parametrize("action", ["kill", "after"])
def test_crash_at_every_step(tmp_path, action):
    n = steps(tmp_path)
    assert n >= 8  # data file, envelope, fsyncs, renames: the protocol is all there
    visible = 0
    for at in range(1, n + 1):
        sp = Spool(str(tmp_path / f"{action}{at}"))
        p = submit(sp, {"MS_FAULT_AT": str(at), "MS_FAULT_ACTION": action})
        assert p.returncode in (0, -9), (at, p.returncode, p.stderr)
        visible += check_whole(sp, reported=p.returncode == 0)
        s = sp.ms("sweep", "--json")
        assert s.returncode == 0, s.stdout + s.stderr
        assert check_whole(sp, reported=p.returncode == 0) <= 1
        shutil.rmtree(sp.root)
    # Crashes before the commit point leave nothing; after it, the whole
    # message: both outcomes occurred.
    assert 0 < visible < n


@pytest.mark.parametrize("action", ["eio", "enospc"])
def test_failure_at_every_step(tmp_path, action):
    n = steps(tmp_path)
    for at in range(1, n + 1):
        sp = Spool(str(tmp_path / f"{action}{at}"))
        p = submit(sp, {"MS_FAULT_AT": str(at), "MS_FAULT_ACTION": action})
        if p.returncode == 0:
            # Only the usage log comes after the commit point.
            assert len(sp.queue()) == 1
        else:
            assert p.returncode == 75, (at, p.stderr)
            assert b"nothing was queued" in p.stderr
            assert sp.queue() == []
            assert sp.listdir("tmp") == [] and sp.listdir("data") == []
        shutil.rmtree(sp.root)


@pytest.fixture
def tiny_fs(tmp_path):
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    r = os.system(f"mount -t tmpfs -o size=256k tmpfs {mnt} 2>/dev/null")
    if r != 0:
        pytest.fail("cannot mount a tmpfs (the tests run as root on the CI machine)")
    yield mnt
    os.system(f"umount {mnt}")


def test_enospc_on_a_full_file_system(tiny_fs, tmp_path):
    """A real full file system: a message larger than the space left fails
    with 75 and leaves nothing; a small one still fits afterwards."""
    sp = Spool(str(tmp_path / "s"), extra_conf="")
    # Point the spool at the tiny file system.
    with open(sp.conf, "a") as f:
        f.write("")
    conf = open(sp.conf).read().replace(f"spool_dir = {sp.dir}", f"spool_dir = {tiny_fs}/spool")
    open(sp.conf, "w").write(conf)
    sp.dir = f"{tiny_fs}/spool"
    big = "Subject: big\n\n" + ("x" * 70 + "\n") * 8000  # about 570 KB
    p = sp.run([sp.sendmail, "-i", "b@example.test"], stdin=big)
    assert p.returncode == 75, p.stderr
    assert b"No space left" in p.stderr
    assert sp.queue() == [] and sp.listdir("tmp") == [] and sp.listdir("data") == []
    p = sp.run([sp.sendmail, "-i", "b@example.test"], stdin="Subject: small\n\nfits\n")
    assert p.returncode == 0, p.stderr
    assert len(sp.queue()) == 1


def test_free_space_floor(tmp_path):
    """Below min_free_space new mail is refused with 75; what is queued stays."""
    sp = Spool(str(tmp_path / "s"))
    assert sp.run([sp.sendmail, "-i", "b@example.test"], stdin="Subject: 1\n\nx\n").returncode == 0
    conf = open(sp.conf).read().replace("min_free_space = 0", "min_free_space = 1000000G")
    open(sp.conf, "w").write(conf)
    p = sp.run([sp.sendmail, "-i", "b@example.test"], stdin="Subject: 2\n\nx\n")
    assert p.returncode == 75 and b"min_free_space" in p.stderr
    assert len(sp.queue()) == 1
