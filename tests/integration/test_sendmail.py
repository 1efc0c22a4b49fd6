"""The spool's front doors: the binary run as sendmail (with the argument
lists cron, git send-email, mutt and PHP's mail() use), as mailq, and
`mailspool send` without --via; and the queue commands."""
import json
import os
import re
import subprocess
import time

import pytest

MSG = "From: Alice <alice@example.test>\nTo: bob@example.test\nSubject: hello\n\nHi Bob.\n"


def only(sp):
    q = sp.queue()
    assert len(q) == 1, q
    return q[0], sp.data(q[0]["id"])


def test_cron(spool):
    # Debian cron: /usr/sbin/sendmail -FCronDaemon -i -B8BITMIME -oem USER
    msg = "Subject: Cron <root@host> run-parts /etc/cron.daily\n\n.output line\n.\nmore\n"
    p = spool.run([spool.sendmail, "-FCronDaemon", "-i", "-B8BITMIME", "-oem", "root"], msg)
    assert p.returncode == 0 and p.stdout == b"" and p.stderr == b""  # silent, as cron wants
    m, data = only(spool)
    assert [r["address"] for r in m["recipients"]] == ["root@host.example.test"]
    assert m["sender"] == f"{os.environ.get('USER', 'root')}@host.example.test" or "@" in m["sender"]
    # -i: a lone "." is data, not the end; From gets the -F name; CRLF lines.
    assert data.endswith(b"\r\n\r\n.output line\r\n.\r\nmore\r\n")
    assert re.search(rb"\r\nFrom: CronDaemon <[^>]+@host\.example\.test>\r\n", data)
    assert b"\r\nDate: " in data and b"\r\nMessage-ID: <" in data


def test_git_send_email(spool):
    # git send-email: sendmail -i -f FROM RCPT... (recipients as arguments)
    msg = ("From: Dev <dev@example.test>\nTo: list@example.test\nCc: rev@example.test\n"
           "Subject: [PATCH] fix\nMessage-ID: <patch-1@example.test>\n"
           "Date: Sun, 22 Nov 2026 06:00:00 +0000\n\n---\n diff\n")
    p = spool.run([spool.sendmail, "-i", "-f", "dev@example.test", "list@example.test",
                   "rev@example.test"], msg)
    assert p.returncode == 0, p.stderr
    m, data = only(spool)
    assert m["sender"] == "dev@example.test"
    assert [r["address"] for r in m["recipients"]] == ["list@example.test", "rev@example.test"]
    # Existing Date and Message-ID are kept, not doubled.
    assert data.count(b"Message-ID:") == 1 and b"<patch-1@example.test>" in data
    assert data.count(b"\r\nDate:") + data.startswith(b"Date:") == 1


def test_mutt(spool):
    # mutt: sendmail -oem -oi -f FROM -- RCPT...
    p = spool.run([spool.sendmail, "-oem", "-oi", "-f", "alice@example.test", "--",
                   "bob@example.test", "-weird@example.test"], MSG)
    assert p.returncode == 0, p.stderr
    m, _ = only(spool)
    assert [r["address"] for r in m["recipients"]] == ["bob@example.test", "-weird@example.test"]


def test_php_mail(spool):
    # PHP: sendmail_path = "sendmail -t -i", additional params "-fwww@example.test"
    msg = ("To: a@example.test, B <b@example.test>\nCc: undisclosed-recipients:;\n"
           "Bcc: hidden@example.test, (comment) c@example.test\nSubject: php\n"
           "X-PHP-Originating-Script: 33:x.php\n\nbody\n")
    p = spool.run([spool.sendmail, "-t", "-i", "-fwww@example.test"], msg)
    assert p.returncode == 0, p.stderr
    m, data = only(spool)
    assert m["sender"] == "www@example.test"
    assert [r["address"] for r in m["recipients"]] == [
        "a@example.test", "b@example.test", "hidden@example.test", "c@example.test"]
    assert b"Bcc" not in data and b"hidden" not in data
    assert b"\r\nFrom: www@example.test\r\n" in data


def test_dot_ends_input_without_i(spool):
    p = spool.run([spool.sendmail, "bob@example.test"], "Subject: dot\n\nbefore\n.\nafter\n")
    assert p.returncode == 0
    _, data = only(spool)
    assert data.endswith(b"\r\n\r\nbefore\r\n") and b"after" not in data


def test_headers_only_and_no_blank_line(spool):
    p = spool.run([spool.sendmail, "-i", "bob@example.test"], "Subject: only headers")
    assert p.returncode == 0
    p = spool.run([spool.sendmail, "-i", "bob@example.test"], "not a header line\nsecond\n")
    assert p.returncode == 0
    datas = [spool.data(m["id"]) for m in spool.queue()]
    assert datas[0].startswith(b"Subject: only headers\r\nFrom: ") and datas[0].endswith(b">\r\n")
    # The body started at once: the generated header block, an empty line, the text.
    assert re.search(rb"Message-ID: <[^>]+>\r\n\r\nnot a header line\r\nsecond\r\n$", datas[1])


@pytest.mark.parametrize("args,stdin,what", [
    (["bad address@"], MSG, b"recipient"),
    (["ok@example.test", "x@y>\r\nRCPT TO:<z@w"], MSG, b"control"),
    (["-f", "a@b\nc", "ok@example.test"], MSG, b"control"),
    (["-i", "ok@example.test"], "Subject: long\n\n" + "x" * 999 + "\n", b"998"),
    (["-i", "ok@example.test"], "Subject: nul\n\na\0b\n", b"NUL"),
    (["-t", "-i"], "Subject: nobody\n\nx\n", b"no recipients"),
    (["-t", "-i"], "To: <bad@>\n\nx\n", b"bad@"),
])
def test_refused_with_65_nothing_queued(spool, args, stdin, what):
    p = spool.run([spool.sendmail] + args, stdin)
    assert p.returncode == 65, (p.returncode, p.stderr)
    assert what in p.stderr and b"nothing was queued" in p.stderr
    assert spool.queue() == [] and spool.listdir("tmp") == []


def test_size_limit(spool):
    with open(spool.conf, "a") as f:
        f.write("max_message_size = 1k\n")
    p = spool.run([spool.sendmail, "-i", "b@example.test"], "Subject: x\n\n" + "y" * 500 + "\n" * 3)
    assert p.returncode == 0
    p = spool.run([spool.sendmail, "-i", "b@example.test"], "Subject: x\n\n" + ("y" * 500 + "\n") * 3)
    assert p.returncode == 65 and b"max_message_size" in p.stderr
    assert len(spool.queue()) == 1


def test_usage_errors(spool):
    assert spool.run([spool.sendmail, "-i"], MSG).returncode == 64          # no recipients
    assert spool.run([spool.sendmail, "-bd"], MSG).returncode == 64         # no daemon mode
    assert spool.run([spool.sendmail, "-bs", "a@b.c"], MSG).returncode == 64  # -bs: RCPT only
    assert spool.run([spool.sendmail, "-Z", "x@y.z"], MSG).returncode == 64  # unknown option
    assert spool.run([spool.sendmail, "-f"], MSG).returncode == 64          # missing value
    assert spool.run([spool.sendmail, "-odx", "a@b.c"], MSG).returncode == 64
    assert spool.queue() == []


def test_config_file_errors(spool, tmp_path):
    bad = tmp_path / "bad.conf"
    bad.write_text("spool_dir = /tmp/x\nretry_tierz = 0\n")
    p = spool.run([spool.sendmail, "-C", str(bad), "a@b.c"], MSG)
    assert p.returncode == 64 and b"bad.conf:2" in p.stderr and b"retry_tierz" in p.stderr
    p = spool.ms("queue", "-C", str(tmp_path / "missing.conf"))
    assert p.returncode == 75 and b"missing.conf" in p.stderr


def test_mailq_and_bp(spool):
    for i in range(3):
        assert spool.run([spool.sendmail, "-i", f"r{i}@example.test"], MSG).returncode == 0
    ids = [m["id"] for m in spool.queue()]
    for argv in ([spool.mailq], [spool.sendmail, "-bp"], [os.path.join(spool.bin, "..", "x")]
                 if False else [spool.mailq, "-v"]):
        p = spool.run(argv)
        assert p.returncode == 0
        out = p.stdout.decode()
        for qid in ids:
            assert qid in out
        assert "r2@example.test" in out and "in 3 messages" in out
    assert ids == sorted(ids)  # ids sort by arrival


def test_queue_admin(spool):
    for i in range(3):
        spool.run([spool.sendmail, "-i", "-f", "s@example.test", f"r{i}@example.test"], MSG)
    a, b, c = [m["id"] for m in spool.queue()]
    assert spool.ms("hold", a).returncode == 0
    q = {m["id"]: m for m in spool.queue()}
    assert q[a]["held"] and not q[b]["held"]
    assert "!" in spool.run([spool.mailq]).stdout.decode().split("\n")[1]
    assert spool.ms("release", a).returncode == 0
    assert not {m["id"]: m for m in spool.queue()}[a]["held"]
    assert spool.ms("delete", b).returncode == 0
    assert [m["id"] for m in spool.queue()] == [a, c]
    assert b not in spool.listdir("data")
    # Unknown ids: a clear error, nothing else touched.
    p = spool.ms("delete", "0000nosuchid")
    assert p.returncode != 0 and p.stderr
    p = spool.ms("hold", "../../etc/passwd")
    assert p.returncode != 0 and b"not a queue id" in p.stderr
    # flush makes every pending recipient due now.
    before = time.time()
    assert spool.ms("flush").returncode == 0
    assert all(r["next_attempt_unix"] >= int(before) for m in spool.queue() for r in m["recipients"])
    assert spool.run([spool.sendmail, "-q"]).returncode == 0


def test_admin_respects_claims(spool):
    spool.run([spool.sendmail, "-i", "r@example.test"], MSG)
    [m] = spool.queue()
    # A dequeuer's live claim: the message is being delivered.
    claim = os.path.join(spool.dir, "claim", m["id"])
    with open(claim, "w") as f:
        f.write("mx1 4242 0\n")
    p = spool.ms("delete", m["id"])
    assert p.returncode == 75 and b"claimed by mx1" in p.stderr
    assert len(spool.queue()) == 1
    os.unlink(claim)
    assert spool.ms("delete", m["id"]).returncode == 0


def test_show(spool):
    spool.run([spool.sendmail, "-i", "-f", "s@example.test", "r@example.test"],
              "Subject: shown\nX-Trace: abc\n\nbody\n")
    [m] = spool.queue()
    p = spool.ms("show", m["id"])
    assert p.returncode == 0
    out = p.stdout.decode()
    assert "Sender:    <s@example.test>" in out and "<r@example.test>  pending" in out
    assert "Subject: shown" in out and "X-Trace: abc" in out
    j = json.loads(spool.ms("show", "--json", m["id"]).stdout)
    assert j["id"] == m["id"] and j["recipients"][0]["history"] == []
    assert "Subject: shown\r\n" in j["headers"]
    assert spool.ms("show", "0000nosuch").returncode == 66


def test_send_without_via_queues(spool, write_msg):
    files = [write_msg(MSG), write_msg("To: t@example.test\nSubject: 2\n\nx\n")]
    p = spool.ms("send", "-f", "s@example.test", "--to", "x@example.test", "-t", "--json",
                 *map(str, files))
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)["queued"]
    assert len(out) == 2 and all(len(o["id"]) > 20 for o in out)
    q = spool.queue()
    assert [[r["address"] for r in m["recipients"]] for m in q] == [
        ["x@example.test", "bob@example.test"], ["x@example.test", "t@example.test"]]
    # Invalid address: 65 and nothing queued.
    p = spool.ms("send", "--to", "bad@", str(files[0]))
    assert p.returncode == 65 and b"bad@" in p.stderr
    assert len(spool.queue()) == 2
    # SMTP/QMTP-only options make no sense here.
    p = spool.ms("send", "--to", "x@example.test", "--transcript", "t.txt", str(files[0]))
    assert p.returncode == 64 and b"--via only" in p.stderr


def test_stats(spool):
    for i in range(4):
        spool.run([spool.sendmail, "-i", "r@example.test"], MSG)
    j = json.loads(spool.ms("stats", "--json").stdout)
    [row] = j["usage"]
    assert row["purpose"] == "spooled" and row["events"] == 4
    assert row["octets"] == sum(m["size"] for m in spool.queue())
    assert re.match(r"\d{4}-\d\d-\d\d$", row["day"])
    assert "spooled" in spool.ms("stats").stdout.decode()


def test_corrupt_envelope_reported_not_delivered(spool):
    spool.run([spool.sendmail, "-i", "r@example.test"], MSG)
    spool.run([spool.sendmail, "-i", "s@example.test"], MSG)
    a, b = [m["id"] for m in spool.queue()]
    path = os.path.join(spool.dir, "env", a)
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    p = spool.ms("queue", "--json")
    assert p.returncode == 75 and b"corrupt" in p.stderr
    j = json.loads(p.stdout)
    assert [m["id"] for m in j["messages"]] == [b] and j["corrupt"] == 1
    assert sorted(spool.listdir("corrupt")) == [f"{a}.data", f"{a}.env"]


@pytest.mark.parametrize("hdr, rcpts", [
    (b"Subject: hi\rBcc: v@evil.test\n", ["to@example.test", "v@evil.test"]),
    (b"To: a@example.test\rBcc: v@evil.test\n", ["to@example.test", "a@example.test", "v@evil.test"]),
    (b"To: a@example.test,\r\n\tb@example.test\rBcc: v@evil.test\r\n",
     ["to@example.test", "a@example.test", "b@example.test", "v@evil.test"]),
])
def test_bare_cr_ends_a_header_line_when_queued(spool, hdr, rcpts):
    """The same rule for -t, Bcc removal and storage: before, "Subject:
    hi\\rBcc: v@evil" kept its Bcc in the stored message."""
    p = spool.run([spool.sendmail, "-t", "-i", "to@example.test"], hdr + b"\nbody\n")
    assert p.returncode == 0, p.stderr
    (m,) = spool.queue()
    assert sorted(r["address"] for r in m["recipients"]) == sorted(rcpts)
    data = spool.data(m["id"])
    assert b"Bcc" not in data and b"evil" not in data
    assert b"\r" not in data.replace(b"\r\n", b"")  # only CRLF line ends stored


def test_huge_header_blocks(spool):
    """20,000 To: recipients with -t and a 1 MiB header block: the encoder
    is fed in bounded pieces (it overflowed its buffer past ~260 KiB; the
    ASan run of this test is what would catch it)."""
    hdr = b"".join(b"To: user%05d@example.test\n" % i for i in range(20000))
    p = spool.run([spool.sendmail, "-t", "-i"], hdr + b"Subject: many\n\nbody\n")
    assert p.returncode == 0, p.stderr
    (m,) = spool.queue()
    assert len(m["recipients"]) == 20000
    assert spool.data(m["id"]).count(b"\r\nTo: user") == 19999
    filler = b"X-Filler: " + b"y" * 900 + b"\n"
    block = filler * ((1 << 20) // len(filler) - 2)
    p = spool.run([spool.sendmail, "-i", "b@example.test"], block + b"Subject: big\n\nbody\n")
    assert p.returncode == 0, p.stderr
    over = filler * ((1 << 20) // len(filler) + 2)
    p = spool.run([spool.sendmail, "-i", "b@example.test"], over + b"Subject: big\n\nbody\n")
    assert p.returncode == 65 and b"header block longer" in p.stderr


def test_40000_recipients_are_deduplicated_by_hash(spool, write_msg):
    """One copy per address (as sendmail keeps): 40,000 arguments naming
    20,000 addresses twice, in the queue and with `send --via -t` headers
    that repeat the --to addresses.  (It was a linear search per
    recipient: 40,000 took 5 s.)"""
    addrs = [f"u{i:05d}@example.test" for i in range(20000)]
    p = spool.run([spool.sendmail, "-i", *addrs, *reversed(addrs)], b"Subject: dup\n\nbody\n",
                  timeout=120)
    assert p.returncode == 0, p.stderr
    (m,) = spool.queue()
    got = [r["address"] for r in m["recipients"]]
    assert got == addrs  # first occurrence order kept
    from conftest import BIN
    from servers import Aiosmtpd
    hdr = "".join(f"To: {a}\n" for a in addrs[:500])
    f = write_msg(hdr + "Subject: dup\n\nbody\n")
    with Aiosmtpd() as srv:
        r = subprocess.run([BIN, "send", "--via", srv.url(), "-f", "a@x.test", "-t",
                            "--to", addrs[0], "--to", addrs[1], "--json", str(f)],
                           capture_output=True, timeout=120)
        assert r.returncode == 0, r.stderr
        # 100 recipients per transaction (R11): 5 transactions, each once.
        got = [a for e in srv.envelopes for a in e[1]]
        assert sorted(got) == sorted(addrs[:500])


def test_malformed_addresses_are_refused_not_guessed(spool, write_msg):
    """-t headers that are no address list, `a@@x` and `<>` as recipients:
    exit 65 with a clear error and nothing queued (they used to become
    Name@HOST, "a@x.testb"@y.test, "a@"@x and "<>"@HOST)."""
    for hdr, field in ((b"To: Name <a@x.test\n", b"To"), (b"Cc: a@x.test b@y.test\n", b"Cc"),
                       (b"To: Name a@x.test\n", b"To")):
        p = spool.run([spool.sendmail, "-t", "-i"], hdr + b"Subject: x\n\nbody\n")
        assert p.returncode == 65, (hdr, p.stderr)
        assert b"a " + field + b": field holds no valid address list" in p.stderr
    for rcpt in ("a@@x.test", "<>"):
        p = spool.run([spool.sendmail, "-i", rcpt], b"Subject: x\n\nbody\n")
        assert p.returncode == 65, (rcpt, p.stderr)
    assert b"more than one @" in spool.run([spool.sendmail, "-i", "a@@x.test"],
                                           b"x\n").stderr
    assert spool.listdir("env") == []
    # <user> still means user@HOST, and the null sender still is one.
    p = spool.run([spool.sendmail, "-i", "-f", "<>", "<bob>"], b"Subject: x\n\nbody\n")
    assert p.returncode == 0, p.stderr
    (m,) = spool.queue()
    assert m["sender"] == "" and m["recipients"][0]["address"] == "bob@host.example.test"
    f = write_msg("To: Name <a@x.test\nSubject: x\n\nbody\n")
    from conftest import BIN
    r = subprocess.run([BIN, "send", "--via", "smtp://127.0.0.1:9", "-f", "a@x.test", "-t",
                        str(f)], capture_output=True, timeout=60)
    assert r.returncode == 65 and b"field holds no valid address list" in r.stderr
