"""What a null client's users reach for first: `sendmail -bs` (the SMTP
dialogue PHP frameworks use), aliases and admin_address for mail to root,
newaliases / -bi.  Real clients: Python's smtplib over a socket pair,
swaks --pipe, PHP's Symfony Mailer; real delivery to aiosmtpd."""
import os
import shutil
import smtplib
import socket
import subprocess
import textwrap

import pytest

from conftest import BIN, Spool
from servers import Aiosmtpd


class PipeSMTP(smtplib.SMTP):
    """smtplib talking to `sendmail -bs` over a socket pair: the program's
    stdin and stdout are one end, smtplib has the other."""

    def __init__(self, argv, env):
        self._argv, self._env = argv, env
        super().__init__()
        code, msg = self.connect()
        assert code == 220, msg

    def connect(self, host="localhost", port=0, source_address=None):
        ours, theirs = socket.socketpair()
        self.proc = subprocess.Popen(self._argv, stdin=theirs, stdout=theirs,
                                     stderr=subprocess.PIPE, env=self._env)
        theirs.close()
        self.sock = ours
        self.file = None
        return self.getreply()


def bs(spool, *extra):
    return PipeSMTP([spool.sendmail, "-bs"] + list(extra), spool.env)


def finish(c):
    c.quit()
    rc = c.proc.wait(10)
    err = c.proc.stderr.read()
    return rc, err


def test_bs_smtplib_session(spool):
    c = bs(spool)
    code, caps = c.ehlo("client.test")
    assert code == 250
    for ext in (b"PIPELINING", b"8BITMIME", b"SMTPUTF8", b"ENHANCEDSTATUSCODES", b"SIZE"):
        assert ext in caps
    assert c.has_extn("size") and int(c.esmtp_features["size"]) == 50 * 1024 * 1024
    msg = b"Subject: one\r\nBcc: hidden@example.test\r\n\r\n.leading dot\r\nend\r\n"
    refused = c.sendmail("app@example.test", ["bob@example.test", "carol@example.test",
                                              "hidden@example.test"], msg)
    assert refused == {}
    # A second message on the same session, after RSET and NOOP.
    assert c.rset()[0] == 250 and c.noop()[0] == 250
    c.sendmail("", ["bob@example.test"], b"Subject: two\r\n\r\nnull sender\r\n")
    rc, err = finish(c)
    assert rc == 0, err
    q = sorted(spool.queue(), key=lambda m: m["sender"])
    assert [m["sender"] for m in q] == ["", "app@example.test"]
    assert [r["address"] for r in q[1]["recipients"]] == [
        "bob@example.test", "carol@example.test", "hidden@example.test"]
    data = spool.data(q[1]["id"])
    # Dots unstuffed once, Bcc removed, From/Date/Message-ID added as for sendmail.
    assert b"\r\n\r\n.leading dot\r\nend\r\n" in data
    assert b"Bcc:" not in data and b"Message-ID: <" in data and b"\r\nDate: " in data


def test_bs_refuses_bad_commands_and_addresses(spool):
    c = bs(spool)
    c.ehlo("client.test")
    assert c.rcpt("bob@example.test")[0] == 503            # RCPT before MAIL
    assert c.docmd("DATA")[0] == 503
    assert c.mail("bad\x01@example.test")[0] == 501       # a control character
    assert c.docmd("MAIL FROM:<a@b.test> SIZE=999999999999")[0] == 552
    assert c.docmd("MAIL FROM:<a@b.test> FOO=1")[0] == 555
    assert c.docmd("MAIL FROM:<a@b.test> BODY=8BITMIME")[0] == 250
    assert c.docmd("MAIL FROM:<x@b.test>")[0] == 503        # nested MAIL
    assert c.rcpt("a@@b.test")[0] == 501
    c.command_encoding = "utf-8"
    assert c.rcpt("bøb@example.test")[0] == 553              # UTF-8 without SMTPUTF8
    c.command_encoding = "ascii"
    assert c.docmd("DATA")[0] == 554                          # no valid recipients
    assert c.docmd("STARTTLS")[0] == 502 and c.docmd("BDAT 3 LAST")[0] == 502
    assert c.docmd("X" * 1200)[0] == 500                      # line too long
    assert c.docmd("WHAT")[0] == 500
    rc, err = finish(c)
    assert rc == 0, err
    assert spool.queue() == []


def test_bs_utf8_pipelined_and_size_limit(spool, tmp_path):
    sp = Spool(str(tmp_path / "small"), "max_message_size = 2k\n")
    # Everything in one write, as a pipelining client sends it.
    dialogue = (b"EHLO c.test\r\nMAIL FROM:<j\xc3\xb6rg@example.test> SMTPUTF8\r\n"
                b"RCPT TO:<b\xc3\xb8b@example.test>\r\nDATA\r\n"
                b"Subject: utf8\r\n\r\nGr\xc3\xbc\xc3\x9fe\r\n.\r\n"
                b"MAIL FROM:<a@example.test>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n"
                + b"x" * 900 + b"\r\n" + b"y" * 900 + b"\r\n" + b"z" * 900 + b"\r\n.\r\n"
                b"QUIT\r\n")
    p = subprocess.run([sp.sendmail, "-bs"], input=dialogue, capture_output=True,
                       env=sp.env, timeout=30)
    assert p.returncode == 0, p.stderr
    codes = [line[:3] for line in p.stdout.split(b"\r\n") if line[:3].isdigit()
             and line[3:4] == b" "]
    assert codes == [b"220", b"250", b"250", b"250", b"354", b"250",
                     b"250", b"250", b"354", b"552", b"221"], p.stdout
    q = sp.queue()
    assert len(q) == 1 and q[0]["recipients"][0]["address"] == "bøb@example.test"


def test_bs_input_ends_inside_data_queues_nothing(spool):
    p = subprocess.run([spool.sendmail, "-bs"], input=b"HELO c\r\nMAIL FROM:<a@b.test>\r\n"
                       b"RCPT TO:<c@d.test>\r\nDATA\r\nSubject: cut\r\n\r\nhalf", env=spool.env,
                       capture_output=True, timeout=30)
    assert p.returncode == 74 and b"ended inside DATA" in p.stderr
    assert spool.queue() == []


def test_bs_bare_lf_dot_does_not_end_data(spool):
    # Only CR LF . CR LF ends the data: "\n.\n" is text (the 2023 SMTP
    # smuggling ambiguity cannot split one message into two here).
    p = subprocess.run([spool.sendmail, "-bs"], input=b"HELO c\r\nMAIL FROM:<a@b.test>\r\n"
                       b"RCPT TO:<c@d.test>\r\nDATA\r\nSubject: s\r\n\r\nline\n.\nMAIL FROM:<x@y>\r\n"
                       b"more\r\n.\r\nQUIT\r\n", env=spool.env, capture_output=True, timeout=30)
    assert p.returncode == 0, p.stderr
    q = spool.queue()
    assert len(q) == 1
    assert b"MAIL FROM:<x@y>\r\nmore\r\n" in spool.data(q[0]["id"])


@pytest.mark.skipif(not shutil.which("swaks"), reason="swaks not installed")
def test_bs_swaks_pipe(spool):
    p = subprocess.run(["swaks", "--pipe", f"{spool.sendmail} -bs", "--from", "ops@example.test",
                        "--to", "bob@example.test,carol@example.test", "--pipeline",
                        "--header", "Subject: from swaks"], capture_output=True, env=spool.env,
                       timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    assert b"250 2.0.0 Ok: queued as" in p.stdout
    q = spool.queue()
    assert len(q) == 1 and q[0]["sender"] == "ops@example.test"
    assert [r["address"] for r in q[0]["recipients"]] == ["bob@example.test", "carol@example.test"]
    assert b"Subject: from swaks" in spool.data(q[0]["id"])


SYMFONY = "/usr/share/php/Symfony/Component/Mailer/autoload.php"


@pytest.mark.skipif(not (shutil.which("php") and os.path.exists(SYMFONY)),
                    reason="php-cli and php-symfony-mailer not installed")
def test_bs_symfony_mailer(spool, tmp_path):
    """Symfony Mailer's SendmailTransport with its default command,
    `sendmail -bs`: what Laravel and Symfony applications send with."""
    script = tmp_path / "send.php"
    script.write_text(textwrap.dedent(f"""\
        <?php
        require '{SYMFONY}';
        require '/usr/share/php/Symfony/Component/Mime/autoload.php';
        use Symfony\\Component\\Mailer\\Mailer;
        use Symfony\\Component\\Mailer\\Transport\\SendmailTransport;
        use Symfony\\Component\\Mime\\Email;
        $mailer = new Mailer(new SendmailTransport('{spool.sendmail} -bs'));
        foreach ([1, 2] as $n) {{
            $mailer->send((new Email())->from('app@example.test')->to('bob@example.test')
                ->cc('carol@example.test')->bcc('audit@example.test')
                ->subject("order $n")->text("Thank you for order $n.\\n.\\nA dot line."));
        }}
        echo "sent\\n";
        """))
    p = subprocess.run(["php", str(script)], capture_output=True, env=spool.env, timeout=60)
    assert p.returncode == 0 and p.stdout.endswith(b"sent\n"), p.stdout + p.stderr
    q = spool.queue()
    assert len(q) == 2
    for m in q:
        assert m["sender"] == "app@example.test"
        assert sorted(r["address"] for r in m["recipients"]) == [
            "audit@example.test", "bob@example.test", "carol@example.test"]
        data = spool.data(m["id"])
        assert b"Bcc:" not in data and b"\r\n.\r\nA dot line." in data


# ---- aliases and admin_address ---------------------------------------------

ALIASES = """\
# as Debian ships it, and what an administrator adds
postmaster:    root
root:          admin@example.org, ops
ops:           "night shift"@example.org,
               pager@example.org, |/usr/bin/procmail
loop-a:        loop-b
loop-b:        loop-a
"""


def alias_spool(tmp_path, port=None, admin="boss@example.org", text=ALIASES):
    path = tmp_path / "aliases"
    path.write_text(text)
    route = f"route.example.org = smtp://127.0.0.1:{port}\n" if port else ""
    return Spool(str(tmp_path / "s"), f"aliases = {path}\nadmin_address = {admin}\n{route}")


def test_cron_mail_to_root_reaches_the_aliases(tmp_path):
    """cron's command line, mail to root: delivered now (-odi) to a real
    server, to the addresses the aliases give, not to root@HOSTNAME."""
    with Aiosmtpd() as mx:
        sp = alias_spool(tmp_path, mx.port)
        p = sp.run([sp.sendmail, "-odi", "-FCronDaemon", "-i", "-B8BITMIME", "-oem", "root"],
                   "Subject: Cron <root@host> run-parts /etc/cron.daily\n\nlogrotate: ok\n")
        assert p.returncode == 0, p.stderr
        assert len(mx.envelopes) == 1
        sender, rcpts, data, _ = mx.envelopes[0]
        assert sorted(rcpts) == ['"night shift"@example.org', "admin@example.org",
                                 "pager@example.org"]
        assert b"run-parts /etc/cron.daily" in data
        assert sp.queue() == []


def test_aliases_and_admin_address(tmp_path):
    sp = alias_spool(tmp_path)
    # postmaster -> root -> ...; a name without an alias and an address at
    # this host or localhost -> admin_address; a loop ends at admin_address;
    # other domains are left alone; every address once.
    p = sp.run([sp.sendmail, "-i", "postmaster", "www-data", "nobody@localhost",
                "smartd@host.example.test", "loop-a", "x@elsewhere.test", "ROOT"],
               "Subject: s\n\nb\n")
    assert p.returncode == 0, p.stderr
    q = sp.queue()
    assert sorted(r["address"] for r in q[0]["recipients"]) == [
        '"night shift"@example.org', "admin@example.org", "boss@example.org",
        "pager@example.org", "x@elsewhere.test"]
    # -t and -bs go through the same path.
    p = sp.run([sp.sendmail, "-t", "-i"], "To: root\nCc: someone\nSubject: t\n\nb\n")
    assert p.returncode == 0, p.stderr
    c = bs(sp)
    c.sendmail("daemon@host.example.test", ["postmaster"], b"Subject: bs\r\n\r\nb\r\n")
    assert finish(c)[0] == 0
    q = sorted(sp.queue(), key=lambda m: m["arrival"])
    assert len(q) == 3
    for m in q[1:]:
        assert "admin@example.org" in [r["address"] for r in m["recipients"]]


def test_admin_address_alone(tmp_path):
    sp = Spool(str(tmp_path), "admin_address = boss@example.org\n")
    p = sp.run([sp.sendmail, "root", "bob@example.test"], "Subject: s\n\nb\n")
    assert p.returncode == 0, p.stderr
    assert sorted(r["address"] for r in sp.queue()[0]["recipients"]) == [
        "bob@example.test", "boss@example.org"]


def test_newaliases_checks_the_file(tmp_path):
    sp = alias_spool(tmp_path)
    p = sp.run([sp.sendmail, "-bi"])
    assert p.returncode == 0
    assert b"5 aliases" in p.stdout
    assert b"aliases:4: |/usr/bin/procmail: no local delivery here; target skipped" in p.stderr
    link = os.path.join(sp.bin, "newaliases")
    os.symlink(os.path.abspath(BIN), link)
    assert sp.run([link]).stdout == p.stdout.replace(b"sendmail:", b"newaliases:")
    # A broken file: named with its line; submissions to local names wait
    # (exit 75, nothing queued) instead of going somewhere wrong.
    (tmp_path / "aliases").write_text("root: a@example.org\nthis line has no colon\n")
    p = sp.run([link])
    assert p.returncode == 78 and b"aliases:2: not \"name: address, ...\"" in p.stderr
    p = sp.run([sp.sendmail, "root"], "Subject: s\n\nb\n")
    assert p.returncode == 75 and sp.queue() == []
    # Mail for other domains does not need the file.
    assert sp.run([sp.sendmail, "x@elsewhere.test"], "Subject: s\n\nb\n").returncode == 0


def test_bad_admin_address_refused_at_load(tmp_path):
    sp = Spool(str(tmp_path), "admin_address = root\n")
    p = sp.run([sp.sendmail, "x@y.test"], "Subject: s\n\nb\n")
    assert p.returncode == 64 and b"mailspool.conf:6: admin_address wants a full address" in p.stderr
