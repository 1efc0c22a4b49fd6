"""Relays from the configuration: failover in order (connection refused,
temporary failure of some recipients), a relay chosen by sender address or
domain, credentials per relay, one login per batch."""
import os

from conftest import BIN
from servers import LATER, Aiosmtpd, Exim, Postfix, free_port

USER, PASSWORD = "relayuser", "relay-secret"
MSG = "From: a@example.test\r\nSubject: relay\r\n\r\nvia a relay\r\n"


def conf_file(tmp_path, text):
    p = tmp_path / "mailspool.conf"
    p.write_text(f"spool_dir = {tmp_path}/spool\nmin_free_space = 0\nmail_owner = root\n" + text)
    return str(p)


def pw(tmp_path, secret=PASSWORD):
    p = tmp_path / f"pw-{secret}"
    p.write_text(secret + "\n")
    os.chmod(p, 0o600)
    return str(p)


def test_failover_connection_refused_then_authenticated_relay(send, write_msg, tmp_path, certs):
    with Exim(tls=certs.good, auth=(USER, PASSWORD)) as ex:
        conf = conf_file(tmp_path, f"""
relay.dead.url = smtp://127.0.0.1:{free_port()}
relay.dead.tls = may
relay.good.url = smtp://{USER}@127.0.0.1:{ex.port}
relay.good.password_file = {pw(tmp_path)}
relay.good.tls_ca_file = {certs.ca}
relay.good.tls_name = mail.example.test
relays = dead good
""")
        files = [write_msg(MSG) for _ in range(20)]
        r = send("relay", files, "-C", conf, "-f", "a@example.test", "--to", "ok@example.test")
        assert r.rc == 0, r.stdout + r.stderr
        assert r.summary["delivered"] == 20 and r.summary["connections"] == 2
        assert len(ex.messages()) == 20
        # One login for the whole batch.
        log = open(os.path.join(ex.dir, "log", "mainlog")).read()
        assert log.count("A=plain") == 20 and log.count("SMTP connection from") <= 2


def test_failover_only_deferred_recipients(send, write_msg, tmp_path):
    """The first relay delivers one recipient and defers the other: only the
    deferred one goes to the second relay."""
    with Postfix() as first, Aiosmtpd() as second:
        conf = conf_file(tmp_path, f"""
relay.first.url = smtp://127.0.0.1:{first.port}
relay.first.tls = may
relay.second.url = smtp://127.0.0.1:{second.port}
relay.second.tls = may
relays = first second
""")
        r = send("relay", [write_msg(MSG)], "-C", conf, "-f", "a@example.test", "--to",
                 "ok@example.test", "--to", LATER)
        assert r.rc == 0, r.stdout + r.stderr
        assert r.rcpt(0, "ok@example.test")["state"] == "delivered"
        assert r.rcpt(0, LATER)["state"] == "delivered"
        assert len(first.queue()) == 1
        assert [e[1] for e in second.envelopes] == [[LATER]]


def test_all_relays_fail(send, write_msg, tmp_path):
    conf = conf_file(tmp_path, f"""
relay.a.url = smtp://127.0.0.1:{free_port()}
relay.a.tls = may
relay.b.url = smtp://127.0.0.1:{free_port()}
relay.b.tls = may
relays = a b
""")
    r = send("relay", [write_msg(MSG)], "-C", conf, "-f", "a@example.test", "--to",
             "ok@example.test")
    assert r.rc == 75
    assert r.summary["connections"] == 2 and "relay b" in r.summary["session_error"]


def test_relay_by_sender(send, write_msg, tmp_path):
    with Aiosmtpd() as general, Aiosmtpd() as special, Aiosmtpd() as boss:
        conf = conf_file(tmp_path, f"""
relay.general.url = smtp://127.0.0.1:{general.port}
relay.special.url = smtp://127.0.0.1:{special.port}
relay.boss.url = smtp://127.0.0.1:{boss.port}
relay.general.tls = may
relay.special.tls = may
relay.boss.tls = may
relays = general
sender_relays.example.net = special
sender_relays.chief@example.net = boss
""")
        for sender in ("x@example.org", "y@example.net", "chief@example.net"):
            r = send("relay", [write_msg(MSG)], "-C", conf, "-f", sender, "--to", "r@example.test")
            assert r.rc == 0, r.stderr
        assert [e[0] for e in general.envelopes] == ["x@example.org"]
        assert [e[0] for e in special.envelopes] == ["y@example.net"]
        assert [e[0] for e in boss.envelopes] == ["chief@example.net"]


def test_relay_configuration_errors(send, write_msg, tmp_path):
    f = write_msg(MSG)
    conf = conf_file(tmp_path, "relay.x.tls = verify\nrelays = x\n")
    r = send("relay", [f], "-C", conf, "--to", "r@example.test")
    assert r.rc == 64 and "no relay.x.url" in r.stderr
    conf = conf_file(tmp_path, "relay.x.url = http://nope\n")
    r = send("relay", [f], "-C", conf, "--to", "r@example.test")
    assert r.rc == 64 and "route URL" in r.stderr
    conf = conf_file(tmp_path, "relay.x.url = smtp://h\n")
    r = send("relay", [f], "-C", conf, "-f", "a@b.test", "--to", "r@example.test")
    assert r.rc == 64 and "no relay" in r.stderr
    loose = tmp_path / "loose"
    loose.write_text("pw\n")
    os.chmod(loose, 0o644)
    conf = conf_file(tmp_path, f"relay.x.url = smtp://u@127.0.0.1:{free_port()}\n"
                               f"relay.x.password_file = {loose}\nrelays = x\n")
    r = send("relay", [f], "-C", conf, "-f", "a@b.test", "--to", "r@example.test")
    assert r.rc == 75 and "accessible to group or others" in r.summary["session_error"]
    r = send("relay", [f], "-C", conf, "--tls", "none", "--to", "r@example.test")
    assert r.rc == 64 and "per relay" in r.stderr
