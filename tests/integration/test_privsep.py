"""Privilege separation, tried as an attacker would (SECURITY.md).

The tree is built and installed into a throwaway root under /tmp with its
own compiled-in paths (SYSCONFDIR, LIBEXECDIR), `make install` runs
`mailspool setup` (which makes the queue's owner), and throwaway users
submit, list, flush and attack.  Every attack of the privilege-separation
issue gets its own test: the exit code and the message a user sees.  The
servers are aiosmtpd on 127.0.0.1; an attacker's server is a plain
listener that must never see a connection."""
import grp
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time

import pytest

from servers import Aiosmtpd, reserved_port

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OWNER, ALICE, BOB = "mstowner", "mstalice", "mstbob"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (throwaway users)")


def userdel(name):
    subprocess.run(["userdel", name], capture_output=True)
    subprocess.run(["groupdel", name], capture_output=True)


class Install:
    def __init__(self, root, relay_port):
        self.root = root
        self.prefix = f"{root}/usr"
        self.etc = f"{root}/etc"
        self.spool = f"{root}/spool"
        self.log = f"{root}/log/mailspool.log"
        self.conf = f"{self.etc}/mailspool.conf"
        self.bin = f"{self.prefix}/bin/mailspool"
        self.sendmail = f"{self.prefix}/lib/mailspool/sendmail"
        self.mailq = f"{self.prefix}/lib/mailspool/mailq"
        self.drop = f"{self.prefix}/libexec/mailspool/mailspool-drop"
        self.relay_port = relay_port

    def write_conf(self, extra="", max_size="200k"):
        with open(self.conf, "w") as f:
            f.write(f"spool_dir = {self.spool}\nmail_owner = {OWNER}\nhostname = host.example.test\n"
                    f"min_free_space = 0\nmax_message_size = {max_size}\nlog_file = {self.log}\n"
                    f"default_route = smtp://127.0.0.1:{self.relay_port}\n"
                    f"retry_tiers = 0 1h\n{extra}")
        os.chmod(self.conf, 0o644)

    def run(self, user, argv, stdin=b"", env=None, timeout=60):
        """argv as `user` (None: root), with a clean environment."""
        e = {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "HOME": self.root}
        e.update(env or {})
        kw = {}
        if user:
            pw = pwd.getpwnam(user)
            kw = dict(user=pw.pw_uid, group=pw.pw_gid, extra_groups=[])
        if isinstance(stdin, str):
            stdin = stdin.encode()
        return subprocess.run(argv, input=stdin, capture_output=True, timeout=timeout, env=e,
                              cwd=self.root, **kw)

    def ms(self, user, *args, **kw):
        return self.run(user, [self.bin] + list(args), **kw)

    def queue(self):
        import json
        p = self.ms(None, "queue", "--json")
        assert p.returncode == 0, p.stderr
        return json.loads(p.stdout)["messages"]

    def clear(self):
        for m in self.queue():
            assert self.ms(None, "delete", m["id"]).returncode == 0


@pytest.fixture(scope="module")
def inst():
    for u in (OWNER, ALICE, BOB):
        userdel(u)
    for u in (ALICE, BOB):
        subprocess.run(["useradd", "-M", "-s", "/usr/sbin/nologin", u], check=True)
    root = tempfile.mkdtemp(prefix="mailspool-privsep-", dir="/tmp")
    os.chmod(root, 0o755)  # users must reach the installed programs
    # Configured now, listened on by later tests: outside the ephemeral
    # range, so no other server or outgoing connection takes it meanwhile.
    it = Install(root, reserved_port())
    os.makedirs(it.etc)
    os.makedirs(os.path.dirname(it.log))
    it.write_conf()
    p = subprocess.run(["make", "-C", REPO, "-j2", "install", f"BUILD={root}/build",
                        f"PREFIX={it.prefix}", f"SYSCONFDIR={it.etc}",
                        f"LIBEXECDIR={it.prefix}/libexec/mailspool", f"UNITDIR={root}/systemd"],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    it.setup_output = p.stdout
    yield it
    shutil.rmtree(root, ignore_errors=True)
    for u in (OWNER, ALICE, BOB):
        userdel(u)


class Listener:
    """An attacker's server: counts connections, says nothing useful."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            c.close()


MSG = b"From: a@example.test\nTo: b@example.test\nSubject: secret\n\nthe secret body\n"


def submit(inst, user, *args, stdin=MSG, env=None):
    p = inst.run(user, [inst.sendmail, "-v"] + list(args), stdin=stdin, env=env)
    return p


def qid_of(p):
    m = re.search(rb"queued as ([0-9a-f]+)", p.stdout)
    assert m, (p.stdout, p.stderr)
    return m.group(1).decode()


# ---- the install ------------------------------------------------------------


def test_setup_made_owner_spool_and_helper(inst):
    pw = pwd.getpwnam(OWNER)
    assert pw.pw_shell == "/usr/sbin/nologin"
    for d in ["", "/tmp", "/data", "/env", "/claim", "/corrupt", "/wake"]:
        st = os.lstat(inst.spool + d)
        assert (st.st_uid, oct(st.st_mode & 0o7777)) == (pw.pw_uid, "0o700"), d
    st = os.stat(inst.drop)
    assert st.st_uid == pw.pw_uid and st.st_gid == pw.pw_gid
    assert oct(st.st_mode & 0o7777) == "0o6755"
    assert os.stat(inst.bin).st_mode & 0o6000 == 0  # the command is never set-id
    assert os.path.exists(f"{inst.root}/systemd/mailspool.service")
    unit = open(f"{inst.root}/systemd/mailspool.service").read()
    assert f"ExecStart={inst.prefix}/bin/mailspool daemon --foreground" in unit
    # Idempotent: a second run changes nothing and succeeds.
    p = inst.ms(None, "setup")
    assert p.returncode == 0, p.stderr
    assert b"made" not in p.stdout
    # Only root may run it.
    p = inst.ms(ALICE, "setup")
    assert p.returncode == 77 and b"must be run as root" in p.stderr


def test_setup_repairs_modes_and_refuses_symlinks(inst):
    os.chmod(f"{inst.spool}/env", 0o755)
    p = inst.ms(None, "daemon", "--once")
    assert p.returncode == 75 and b"mode 0755" in p.stderr and b"mailspool setup" in p.stderr
    p = inst.ms(None, "setup")
    assert p.returncode == 0 and b"mode 0700 (was" in p.stdout
    assert os.stat(f"{inst.spool}/env").st_mode & 0o777 == 0o700


# ---- positive paths ----------------------------------------------------------


def test_users_submit_one_after_another(inst):
    """The documented install broke when the first submitter created the
    directories as itself; now every user submits through the helper."""
    inst.clear()
    ids = []
    for user in (ALICE, BOB, ALICE):
        p = submit(inst, user, "b@example.test")
        assert p.returncode == 0, p.stderr
        ids.append(qid_of(p))
    owner = pwd.getpwnam(OWNER).pw_uid
    q = {m["id"]: m for m in inst.queue()}
    for qid, user in zip(ids, (ALICE, BOB, ALICE)):
        assert q[qid]["uid"] == pwd.getpwnam(user).pw_uid
        for sub in ("data", "env"):
            st = os.stat(f"{inst.spool}/{sub}/{qid}")
            assert st.st_uid == owner and st.st_mode & 0o777 == 0o600


def test_users_speak_smtp_to_sendmail_bs(inst):
    """sendmail -bs as an ordinary user: each message of the dialogue goes
    through the set-id helper like a piped one (recorded with the user's
    uid, owned by the queue's owner); a message over the configured size
    gets 552 and the session goes on."""
    inst.clear()
    big = b"x" * 900 + b"\r\n"
    dialogue = (b"EHLO app.example.test\r\nMAIL FROM:<app@example.test>\r\n"
                b"RCPT TO:<b@example.test>\r\nDATA\r\nSubject: one\r\n\r\nbody\r\n.\r\n"
                b"MAIL FROM:<app@example.test>\r\nRCPT TO:<c@example.test>\r\nDATA\r\n"
                + big * 300 + b".\r\nQUIT\r\n")
    p = inst.run(ALICE, [inst.sendmail, "-bs"], stdin=dialogue)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.split(b"\r\n")
    queued = [l for l in lines if l.startswith(b"250 2.0.0 Ok: queued as ")]
    assert len(queued) == 1, p.stdout
    assert b"552 5.3.4 Message size exceeds fixed limit" in lines, p.stdout
    qid = queued[0].split()[-1].decode()
    q = {m["id"]: m for m in inst.queue()}
    assert list(q) == [qid]
    assert q[qid]["uid"] == pwd.getpwnam(ALICE).pw_uid and q[qid]["sender"] == "app@example.test"
    st = os.stat(f"{inst.spool}/data/{qid}")
    assert st.st_uid == pwd.getpwnam(OWNER).pw_uid


def test_forged_sender_leaves_a_trace(inst):
    inst.clear()
    p = submit(inst, ALICE, "-f", "root@host.example.test", "b@example.test")
    assert p.returncode == 0, p.stderr
    qid = qid_of(p)
    uid = pwd.getpwnam(ALICE).pw_uid
    with open(f"{inst.spool}/data/{qid}", "rb") as f:
        data = f.read()
    assert data.startswith(b"Received: by host.example.test (mailspool, from userid %d)\r\n"
                           b"\tid %s; " % (uid, qid.encode()))
    usage = open(f"{inst.spool}/usage").read()
    assert f"spooled {len(data)} {qid} uid={uid}" in usage
    p = inst.ms(None, "show", qid)
    assert f"User:      {uid}".encode() in p.stdout


def test_users_list_the_queue(inst):
    inst.clear()
    qid = qid_of(submit(inst, BOB, "b@example.test"))
    p = inst.run(ALICE, [inst.mailq])
    assert p.returncode == 0, p.stderr
    assert qid.encode() in p.stdout
    p = inst.ms(ALICE, "queue", "--json")
    assert p.returncode == 0 and qid.encode() in p.stdout
    # authorized_mailq_users narrows it; root and the owner always may.
    inst.write_conf(f"authorized_mailq_users = {BOB}\n")
    try:
        p = inst.run(ALICE, [inst.mailq])
        assert p.returncode == 77 and b"may not list the queue" in p.stderr
        assert inst.run(BOB, [inst.mailq]).returncode == 0
        assert inst.run(None, [inst.mailq]).returncode == 0
    finally:
        inst.write_conf()


def test_users_flush_rate_limited(inst):
    inst.clear()
    submit(inst, ALICE, "b@example.test")
    stamp = f"{inst.spool}/flush.stamp"
    if os.path.exists(stamp):
        os.unlink(stamp)
    p = inst.ms(ALICE, "flush")
    assert p.returncode == 0 and b"1 message due now" in p.stdout, p.stderr
    p = inst.ms(ALICE, "flush")
    assert p.returncode == 75 and b"less than 60 s ago" in p.stderr
    assert inst.ms(None, "flush").returncode == 0  # root is not limited


def test_root_administers_as_the_owner(inst):
    inst.clear()
    qid = qid_of(submit(inst, ALICE, "b@example.test"))
    owner = pwd.getpwnam(OWNER).pw_uid
    for verb, word in (("hold", b"held"), ("release", b"released")):
        p = inst.ms(None, verb, qid)
        assert p.returncode == 0 and word in p.stdout, p.stderr
        st = os.stat(f"{inst.spool}/env/{qid}")
        assert st.st_uid == owner  # root's edit is the owner's file
    assert inst.ms(None, "show", qid).returncode == 0
    p = inst.ms(None, "delete", qid)
    assert p.returncode == 0 and b"deleted" in p.stdout
    assert inst.queue() == []


def proc_status(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k] = v.split()
    return out


def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except FileNotFoundError:
        return []


def test_daemon_and_agents_run_as_the_owner(inst):
    """Started as root, the scheduler and every exec'd agent run as the
    owner with no capabilities; mail is delivered."""
    inst.clear()
    owner = pwd.getpwnam(OWNER)
    # A server that accepts and stays silent keeps the agent alive to look at.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(4)
    inst.write_conf(f"route.slow.test = smtp://127.0.0.1:{silent.getsockname()[1]}\n")
    with Aiosmtpd(port=inst.relay_port) as srv:
        d = subprocess.Popen([inst.bin, "daemon", "--foreground"], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, env={"PATH": "/usr/bin:/bin"})
        try:
            assert submit(inst, ALICE, "b@example.test").returncode == 0
            assert submit(inst, ALICE, "x@slow.test").returncode == 0
            deadline = time.time() + 20
            seen = {}  # pid -> (status, exe) of every agent caught alive
            while time.time() < deadline and (not srv.envelopes or not seen):
                for kid in children(d.pid):
                    try:
                        seen[kid] = (proc_status(kid), os.readlink(f"/proc/{kid}/exe"))
                    except (FileNotFoundError, ProcessLookupError):
                        pass  # it finished meanwhile
                time.sleep(0.05)
            assert srv.envelopes, "not delivered"
            assert seen, "no agent seen"
            statuses = [proc_status(d.pid)] + [st for st, _ in seen.values()]
            for st in statuses:
                assert st["Uid"] == [str(owner.pw_uid)] * 4, st["Uid"]
                assert st["Gid"] == [str(owner.pw_gid)] * 4, st["Gid"]
                assert st["Groups"] == [str(owner.pw_gid)]
                assert st["CapEff"] == ["0000000000000000"] and st["CapPrm"] == ["0000000000000000"]
                assert st["NoNewPrivs"] == ["1"]
            for _, exe in seen.values():
                assert exe.endswith("/mailspool-deliver")  # exec'd, not a fork
            sender, rcpts, data = srv.envelopes[0][:3]
            assert rcpts == ["b@example.test"] and b"the secret body" in data
        finally:
            d.terminate()
            _, err = d.communicate(timeout=30)
            silent.close()
            inst.write_conf()
    assert d.returncode == 0, err
    log = open(inst.log).read()
    assert "status=sent" in log


# ---- the attacks ---------------------------------------------------------------


def test_user_cannot_read_a_queued_message(inst):
    inst.clear()
    qid = qid_of(submit(inst, BOB, "b@example.test"))
    thief = Listener()
    p = inst.ms(ALICE, "send", "--via", f"smtp://127.0.0.1:{thief.port}", "-f", "m@x.test",
                "--to", "m@x.test", f"{inst.spool}/data/{qid}")
    # The command connects first, then cannot open the file: nothing of
    # the message can reach the server.
    assert p.returncode == 66 and b"Permission denied" in p.stderr


def test_user_cannot_steal_the_queue_with_a_config(inst):
    inst.clear()
    qid = qid_of(submit(inst, BOB, "b@example.test"))
    thief = Listener()
    evil = f"{inst.root}/evil.conf"
    with open(evil, "w") as f:
        f.write(f"spool_dir = {inst.spool}\nmail_owner = {ALICE}\nmin_free_space = 0\n"
                f"default_route = smtp://127.0.0.1:{thief.port}\nmax_message_size = 0\n")
    os.chmod(evil, 0o644)
    # The daemon, with -C and with $MAILSPOOL_CONFIG.
    p = inst.ms(ALICE, "daemon", "--once", "-C", evil)
    assert p.returncode == 77, p.stderr
    assert b"only root and the queue's owner" in p.stderr or b"Permission denied" in p.stderr
    p = inst.ms(ALICE, "daemon", "--once", env={"MAILSPOOL_CONFIG": evil})
    assert p.returncode == 77, p.stderr
    # The helper takes no configuration from users, by option or environment.
    p = inst.run(ALICE, [inst.drop, "submit", "-C", evil])
    assert p.returncode == 77 and b"-C is for root" in p.stderr
    p = submit(inst, ALICE, "b@example.test", env={"MAILSPOOL_CONFIG": evil})
    assert p.returncode == 77  # the helper refuses it, or the spool is not hers to open
    assert b"-C is for root" in p.stderr or b"Permission denied" in p.stderr
    # Its limits are the real configuration's: max_message_size 200k.
    big = b"Subject: big\n\n" + b"x" * 900 + b"\n"
    p = inst.run(ALICE, [inst.sendmail, "b@example.test"], stdin=big * 300)
    assert p.returncode == 65 and b"max_message_size" in p.stderr
    time.sleep(0.2)
    assert thief.connections == 0
    assert [m["id"] for m in inst.queue()] == [qid]


def test_user_cannot_overwrite_files(inst):
    """--transcript and log_file are written with the user's own rights."""
    target = f"{inst.root}/root-only"
    with open(target, "w") as f:
        f.write("keep\n")
    os.chmod(target, 0o644)
    with Aiosmtpd() as srv:
        p = inst.ms(ALICE, "send", "--via", srv.url(), "-f", "a@x.test", "--to", "b@x.test",
                    "--transcript", target, stdin=MSG)
    assert p.returncode == 73 and b"cannot write transcript" in p.stderr
    assert open(target).read() == "keep\n"


@pytest.mark.parametrize("verb", ["show", "hold", "release", "delete", "sweep", "stats"])
def test_administration_refused_for_users(inst, verb):
    inst.clear()
    qid = qid_of(submit(inst, BOB, "b@example.test"))
    args = [verb] + ([] if verb in ("sweep", "stats") else [qid])
    p = inst.ms(ALICE, *args)
    assert p.returncode == 77, p.stderr
    assert b"only root and the queue's owner (mstowner) may" in p.stderr
    assert [m["id"] for m in inst.queue()] == [qid]
    assert not inst.queue()[0]["held"]


def test_user_cannot_touch_the_spool_directly(inst):
    """No -C, no temp file race: submitters cannot even list tmp/."""
    inst.clear()
    qid = qid_of(submit(inst, BOB, "b@example.test"))
    for path in (f"{inst.spool}/tmp", f"{inst.spool}/env", f"{inst.spool}/wake"):
        p = inst.run(ALICE, ["ls", path])
        assert p.returncode != 0 and b"Permission denied" in p.stderr
    p = inst.run(ALICE, ["sh", "-c", f"echo x > {inst.spool}/tmp/{qid}.u1"])
    assert p.returncode != 0
    p = inst.ms(ALICE, "hold", "-C", f"{inst.root}/evil.conf", qid)
    assert p.returncode == 77


def test_truncated_submission_commits_nothing(inst):
    """A submitter that dies mid-stream (or sends garbage) leaves nothing."""
    inst.clear()
    for stdin in (b"MSDROP 1\n5:hello,", b"MSDROP 1\n3:a\r\n,0:,5:xx", b"garbage",
                  b"MSDROP 1\n3:a\rb,0:,"):
        p = inst.run(ALICE, [inst.drop, "submit"], stdin=stdin)
        assert p.returncode != 0 and p.stdout.startswith(b"error "), p.stdout
    assert inst.queue() == []
    assert os.listdir(f"{inst.spool}/tmp") == []


def secret_file(inst):
    """A root-only file in a root-only directory: what an attacker wants."""
    d = f"{inst.root}/rootdir"
    os.makedirs(d, mode=0o700, exist_ok=True)
    path = f"{d}/secret"
    with open(path, "w") as f:
        f.write("root only\n")
    return d, path


def clear_corrupt(inst):
    for n in os.listdir(f"{inst.spool}/corrupt"):
        p = f"{inst.spool}/corrupt/{n}"
        shutil.rmtree(p) if os.path.isdir(p) and not os.path.islink(p) else os.unlink(p)


def test_planted_data_links_are_never_delivered(inst):
    """data/ID a symlink to a root-only file, another a hard link to a file:
    what a compromised owner could plant.  Root's daemon (acting as the
    owner) delivers neither, and unlinks nothing outside the spool."""
    inst.clear()
    owner = pwd.getpwnam(OWNER)
    _, secret = secret_file(inst)
    q1 = qid_of(submit(inst, ALICE, "b@example.test"))
    q2 = qid_of(submit(inst, ALICE, "b@example.test"))
    size = os.path.getsize(f"{inst.spool}/data/{q1}")
    os.unlink(f"{inst.spool}/data/{q1}")
    os.symlink(secret, f"{inst.spool}/data/{q1}")
    os.unlink(f"{inst.spool}/data/{q2}")
    hard = f"{inst.root}/hard"
    with open(hard, "wb") as f:
        f.write(b"x" * size)
    os.chown(hard, owner.pw_uid, owner.pw_gid)
    os.link(hard, f"{inst.spool}/data/{q2}")
    with Aiosmtpd(port=inst.relay_port) as srv:
        p = inst.ms(None, "daemon", "--once")
        assert p.returncode == 0, p.stderr
        assert srv.envelopes == []  # nothing delivered
    assert open(secret).read() == "root only\n" and os.path.exists(hard)
    corrupt = os.listdir(f"{inst.spool}/corrupt")
    assert any(n.startswith(f"{q1}.data") for n in corrupt)
    assert any(n.startswith(f"{q2}.data") for n in corrupt)
    assert "is a symbolic link" in open(inst.log).read() or \
        "is not a regular file" in open(inst.log).read()
    assert inst.queue() == []
    clear_corrupt(inst)


def test_planted_env_entries_are_moved_aside_once(inst):
    """A directory and a symlink in env/: moved to corrupt/ (the entries,
    not what they point to), reported once, never re-reported."""
    inst.clear()
    owner = pwd.getpwnam(OWNER)
    _, secret = secret_file(inst)
    os.mkdir(f"{inst.spool}/env/0000000000000aaaa")
    os.symlink(secret, f"{inst.spool}/env/0000000000000bbbb")
    for n in ("0000000000000aaaa", "0000000000000bbbb"):
        os.lchown(f"{inst.spool}/env/{n}", owner.pw_uid, owner.pw_gid)
    p = inst.ms(None, "queue")
    assert p.returncode == 0
    assert b"env/0000000000000aaaa is a directory: moved to" in p.stderr
    assert b"env/0000000000000bbbb is a symbolic link: moved to" in p.stderr
    corrupt = os.listdir(f"{inst.spool}/corrupt")
    link = [n for n in corrupt if n.startswith("0000000000000bbbb.env.")]
    assert link and os.path.islink(f"{inst.spool}/corrupt/{link[0]}")
    assert any(n.startswith("0000000000000aaaa.env.") for n in corrupt)
    assert open(secret).read() == "root only\n"
    p = inst.ms(None, "queue")
    assert b"moved to" not in p.stderr  # reported once
    clear_corrupt(inst)


def test_a_symlink_in_wake_is_not_written_through(inst):
    """Before, root's next sendmail wrote a byte into any file a symlink in
    wake/ named."""
    inst.clear()
    victim = f"{inst.root}/victim"
    with open(victim, "w") as f:
        f.write("intact\n")
    os.symlink(victim, f"{inst.spool}/wake/evil.1")
    try:
        assert submit(inst, None, "b@example.test").returncode == 0  # root
        assert submit(inst, ALICE, "b@example.test").returncode == 0
        assert open(victim).read() == "intact\n"
    finally:
        os.unlink(f"{inst.spool}/wake/evil.1")
        inst.clear()


def test_wake_as_a_symlink_to_a_directory_is_refused(inst):
    """Before, wake -> any directory made root's daemon chmod it 1777."""
    secret_dir, _ = secret_file(inst)
    shutil.rmtree(f"{inst.spool}/wake")
    os.symlink(secret_dir, f"{inst.spool}/wake")
    try:
        p = inst.ms(None, "daemon", "--once")
        assert p.returncode == 75 and b"wake: not a directory" in p.stderr
        assert os.stat(secret_dir).st_mode & 0o7777 == 0o700
    finally:
        os.unlink(f"{inst.spool}/wake")
        assert inst.ms(None, "setup").returncode == 0


def test_big_header_blocks_through_the_helper(inst):
    """20,000 To: recipients with -t, and a 1 MiB header block: the
    encoder is fed in bounded pieces (a heap overflow before)."""
    inst.write_conf(max_size="50M")
    try:
        inst.clear()
        hdr = b"".join(b"To: user%05d@example.test\n" % i for i in range(20000))
        p = inst.run(ALICE, [inst.sendmail, "-t", "-i"], stdin=hdr + b"Subject: many\n\nbody\n")
        assert p.returncode == 0, p.stderr
        assert len(inst.queue()[0]["recipients"]) == 20000
        inst.clear()
        filler = b"X-Filler: " + b"y" * 900 + b"\n"
        block = filler * ((1 << 20) // len(filler) - 2)
        p = inst.run(ALICE, [inst.sendmail, "-i", "b@example.test"],
                     stdin=block + b"Subject: big\n\nbody\n")
        assert p.returncode == 0, p.stderr
    finally:
        inst.write_conf()
        inst.clear()


def readme_example():
    with open(os.path.join(REPO, "README.md")) as f:
        text = f.read()
    section = text.split("## The library", 1)[1]
    return section.split("```c\n", 1)[1].split("```", 1)[0]


def test_the_readme_example_builds_against_the_installed_library(inst, tmp_path):
    """The library as installed: headers, libmailspool.so.0 (a soname) and
    libmailspool.a, found through mailspool.pc; the README's example built
    both ways runs and delivers."""
    src = tmp_path / "example.c"
    src.write_text(readme_example())
    env = dict(os.environ, PKG_CONFIG_PATH=f"{inst.prefix}/lib/pkgconfig")

    def pc(*args):
        p = subprocess.run(["pkg-config", *args, "mailspool"], capture_output=True, text=True,
                           env=env)
        assert p.returncode == 0, p.stderr
        return p.stdout.split()

    version = subprocess.run([inst.bin, "--version"], capture_output=True, text=True).stdout
    assert pc("--modversion") == [version.split()[1]]
    shared, static = tmp_path / "ex-shared", tmp_path / "ex-static"
    for out, extra in ((shared, pc("--cflags", "--libs")),
                       (static, pc("--cflags") + [f"{inst.prefix}/lib/libmailspool.a"] +
                        [a for a in pc("--static", "--libs") if a != "-lmailspool"])):
        p = subprocess.run(["cc", "-o", str(out), str(src), *extra], capture_output=True,
                           text=True)
        assert p.returncode == 0, p.stderr
    ldd = subprocess.run(["ldd", str(shared)], capture_output=True, text=True,
                         env=dict(os.environ, LD_LIBRARY_PATH=f"{inst.prefix}/lib")).stdout
    assert f"libmailspool.so.0 => {inst.prefix}/lib/libmailspool.so.0" in ldd, ldd
    assert "libmailspool" not in subprocess.run(["ldd", str(static)], capture_output=True,
                                                text=True).stdout
    msg = tmp_path / "m.eml"
    msg.write_bytes(b"Subject: from the example\r\n\r\nhello\r\n")
    with Aiosmtpd() as srv:
        for exe, ld in ((shared, f"{inst.prefix}/lib"), (static, "")):
            p = subprocess.run([str(exe), "127.0.0.1", str(srv.port), str(msg)],
                               capture_output=True, text=True, timeout=60,
                               env=dict(os.environ, LD_LIBRARY_PATH=ld))
            assert p.returncode == 0, p.stderr
            assert f"libmailspool {version.split()[1]}" in p.stdout
            assert "you@example.net: delivered 250" in p.stdout, p.stdout
        assert len(srv.envelopes) == 2


def test_users_mail_is_signed_by_the_helper_with_a_key_they_cannot_read(inst):
    """DKIM at commit through the set-id helper: the key (made by root
    with dkim-keygen, so the owner's, 0600) signs a user's message; the
    user cannot read the key."""
    inst.clear()
    key = f"{inst.etc}/dkim-s1.example.test.pem"
    if os.path.exists(key):
        os.unlink(key)
    p = inst.ms(None, "dkim-keygen", "-C", inst.conf, "-a", "ed25519", "-k", key,
                "example.test", "s1")
    assert p.returncode == 0, p.stderr
    st = os.stat(key)
    assert st.st_uid == pwd.getpwnam(OWNER).pw_uid and st.st_mode & 0o777 == 0o600
    inst.write_conf(f"dkim.example.test.selector = s1\ndkim.example.test.key_file = {key}\n"
                    "dkim.example.test.algorithm = ed25519-sha256\n")
    try:
        assert inst.run(ALICE, ["cat", key]).returncode != 0
        p = submit(inst, ALICE, "b@example.test")
        assert p.returncode == 0, p.stderr
        qid = qid_of(p)
        p = inst.ms(None, "show", qid)
        assert p.returncode == 0, p.stderr
        assert re.search(rb"DKIM-Signature: v=1; a=ed25519-sha256; c=relaxed/relaxed;\s+"
                         rb"d=example\.test;\s+s=s1;", p.stdout), p.stdout
    finally:
        inst.write_conf()
        inst.clear()
