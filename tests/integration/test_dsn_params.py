"""DSN requests (RFC 3461): NOTIFY, RET, ENVID and ORCPT from `sendmail
-N/-R/-V` and `mailspool send`, kept in the queue, sent to a server that
offers DSN (Postfix, whose queue file shows what it received) and never to
one that does not (aiosmtpd), and honoured by our own reports: NOTIFY=NEVER
gets no bounce, NOTIFY=SUCCESS to a server without DSN gets a "relayed"
report, RET=FULL returns the whole message, ENVID and ORCPT come back."""
import email
import email.policy
import re
import subprocess

from servers import Aiosmtpd, Postfix
from test_daemon import SENDER, World, dns_for, port  # noqa: F401 (fixture)


def postcat_envelope(pf, queue_id):
    return subprocess.run(["postcat", "-c", pf.conf, "-e", "-q", queue_id], capture_output=True,
                          check=True).stdout.decode()


def test_dsn_parameters_reach_a_server_that_offers_dsn(send, write_msg):
    f = write_msg("Subject: dsn\r\n\r\nbody\r\n")
    with Postfix() as pf:
        r = send(pf.url(), [f], "-f", "a@sender.test", "--to", "one@example.test",
                 "--notify", "success,failure", "--ret", "hdrs", "--envid", "ENV+id=1")
        assert r.rc == 0, r.stdout
        q = pf.queue()
        assert len(q) == 1
        env = postcat_envelope(pf, q[0]["queue_id"])
    # As Postfix stores them (xtext decoded): HDRS is ret_flags 2,
    # SUCCESS|FAILURE notify_flags 6 (its bits are ours).
    assert "named_attribute: envelope_id=ENV+id=1\n" in env, env
    assert "named_attribute: ret_flags=2\n" in env, env
    assert "named_attribute: dsn_orig_rcpt=rfc822;one@example.test\n" in env, env
    assert "named_attribute: notify_flags=6\n" in env, env


def test_dsn_parameters_are_never_sent_to_a_server_without_dsn(send, write_msg):
    f = write_msg("Subject: dsn\r\n\r\nbody\r\n")
    with Aiosmtpd() as srv:
        r = send(srv.url(), [f], "-f", "a@sender.test", "--to", "one@example.test",
                 "--notify", "never", "--ret", "full", "--envid", "X1")
        assert r.rc == 0, r.stdout
        opts = srv.envelopes[0][3]
        assert not [o for o in opts if o.upper().startswith(("RET=", "ENVID="))], opts


def test_bad_dsn_values_are_refused(spool):
    for args in (["-N", "never,success"], ["-N", "sometimes"], ["-R", "most"],
                 ["-V", "has space"], ["-V", "x" * 101]):
        p = spool.run([spool.sendmail, *args, "b@example.test"], stdin=b"Subject: x\n\nx\n")
        assert p.returncode == 64, (args, p.stderr)
        assert spool.listdir("env") == []


def parse(raw):
    return email.message_from_bytes(raw, policy=email.policy.default)


def ds_groups(raw):
    text = raw.decode().replace("\r\n", "\n")
    body = text.split("Content-Type: message/delivery-status\n\n", 1)[1].split("\n--", 1)[0]
    return [dict(line.split(": ", 1) for line in g.strip().splitlines())
            for g in re.split(r"\n\s*\n", body.strip())]


def test_our_reports_honour_notify_ret_envid_and_orcpt(tmp_path, port):  # noqa: F811
    replies = {"bad@a.test": "550 5.1.1 no such user", "quiet@a.test": "550 5.1.1 no such user"}
    with dns_for(port) as dns, Aiosmtpd(host="127.0.0.9", port=port) as sender_mx, \
            Aiosmtpd(host="127.0.0.2", port=port, rcpt_replies=replies) as mx1:
        w = World(str(tmp_path), dns, port)
        body = b"Subject: the report\r\nMessage-ID: <o1@sender.test>\r\n\r\nsecret body\r\n"

        def sendmail(args, rcpt):
            p = w.spool.run([w.spool.sendmail, "-f", SENDER, *args, rcpt], stdin=body)
            assert p.returncode == 0, p.stderr

        sendmail(["-N", "never"], "quiet@a.test")            # fails: no bounce
        sendmail(["-N", "failure", "-R", "full", "-V", "ENV-7"], "bad@a.test")  # full bounce
        sendmail(["-N", "success", "-V", "ENV-8"], "good@a.test")  # a relayed report
        sendmail([], "plain@a.test")                          # nothing to report
        w.once()
        assert sorted(e[1][0] for e in mx1.envelopes) == ["good@a.test", "plain@a.test"]
        reports = [e[2] for e in sender_mx.envelopes]
        assert all(e[0] == "<>" for e in sender_mx.envelopes)
        assert len(reports) == 2, w.logtext()  # quiet@ asked for none
        by = {ds_groups(r)[1]["Final-Recipient"]: r for r in reports}
        bounce = by["rfc822; bad@a.test"]
        g = ds_groups(bounce)
        assert g[0]["Original-Envelope-Id"] == "ENV-7"
        assert g[1]["Action"] == "failed" and g[1]["Original-Recipient"] == "rfc822; bad@a.test"
        kinds = [p.get_content_type() for p in parse(bounce).iter_parts()]
        assert kinds == ["text/plain", "message/delivery-status", "message/rfc822"]
        assert b"secret body" in bounce  # RET=FULL: the whole message
        ok = by["rfc822; good@a.test"]
        g = ds_groups(ok)
        assert g[0]["Original-Envelope-Id"] == "ENV-8"
        assert g[1]["Action"] == "relayed" and g[1]["Status"] == "2.0.0"
        assert parse(ok)["Subject"] == "Successful Mail Delivery Report"
        assert b"secret body" not in ok  # headers only by default
        assert "sender delivery notification" in w.logtext()
        assert w.spool.queue() == []
