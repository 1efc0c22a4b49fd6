"""Byte-exact delivery and envelopes, against aiosmtpd (which keeps the exact
bytes it received).  aiosmtpd does not offer PIPELINING, so this also runs the
lock-step path."""
import pytest

from servers import Aiosmtpd

# (body as written to the file, bytes the server must receive)
TRICKY = [
    ("dots", b"Subject: d\r\n\r\n.\r\n..\r\n.x\r\n. \r\nend", b"Subject: d\r\n\r\n.\r\n..\r\n.x\r\n. \r\nend\r\n"),
    ("bare LF", b"Subject: lf\n\nline1\nline2\n", b"Subject: lf\r\n\r\nline1\r\nline2\r\n"),
    ("bare CR", b"Subject: cr\r\n\r\na\rb\r\r\n", b"Subject: cr\r\n\r\na\r\nb\r\n\r\n"),
    ("smuggling", b"Subject: s\r\n\r\nx\r.\r\nMAIL FROM:<evil@x>\n", b"Subject: s\r\n\r\nx\r\n.\r\nMAIL FROM:<evil@x>\r\n"),
    ("LF dot LF", b"Subject: s\r\n\r\nx\n.\nmore\r\n", b"Subject: s\r\n\r\nx\r\n.\r\nmore\r\n"),
    ("no final newline", b"Subject: n\r\n\r\nlast", b"Subject: n\r\n\r\nlast\r\n"),
    ("only a dot", b".", b".\r\n"),
    ("empty", b"", b""),
    ("998-octet line", b"Subject: l\r\n\r\n" + b"x" * 998 + b"\r\n", b"Subject: l\r\n\r\n" + b"x" * 998 + b"\r\n"),
    ("8-bit", "Subject: é\r\n\r\nGrüße, naïve café\r\n".encode(), "Subject: é\r\n\r\nGrüße, naïve café\r\n".encode()),
]


@pytest.mark.parametrize("name,body,want", TRICKY, ids=[t[0] for t in TRICKY])
def test_byte_exact(send, write_msg, name, body, want):
    with Aiosmtpd() as srv:
        r = send(srv.url(), [write_msg(body)], "-f", "a@sender.test", "--to", "b@example.test")
        assert r.rc == 0, r.stdout + r.stderr
        assert len(srv.envelopes) == 1
        # aiosmtpd strips the stuffing dots and the terminator; what is
        # left must be exactly the normalised message.
        assert srv.envelopes[0][2] == want
        if name == "8-bit":
            assert "BODY=8BITMIME" in srv.envelopes[0][3]


def test_long_line_refused(send, write_msg):
    body = b"Subject: long\r\n\r\n" + b"y" * 999 + b"\r\n"
    with Aiosmtpd() as srv:
        r = send(srv.url(), [write_msg(body)], "-f", "a@sender.test", "--to", "b@example.test")
        assert r.rc == 65
        rc = r.rcpt(0, "b@example.test")
        assert rc["state"] == "failed" and rc["stage"] == "local" and "999" in rc["text"]
        assert srv.envelopes == []


def test_null_sender_and_utf8_address(send, write_msg):
    with Aiosmtpd(enable_SMTPUTF8=True) as srv:
        r = send(srv.url(), [write_msg("Subject: bounce\r\n\r\nx\r\n")], "-f", "",
                 "--to", "jörg@example.test")
        assert r.rc == 0, r.stdout
        mail_from, rcpts, _, opts = srv.envelopes[0]
        assert mail_from in ("", "<>")  # aiosmtpd shows the null sender as <>
        assert rcpts == ["jörg@example.test"]
        assert "SMTPUTF8" in opts


def test_utf8_address_refused_without_smtputf8(send, write_msg):
    with Aiosmtpd(enable_SMTPUTF8=False) as srv:
        r = send(srv.url(), [write_msg("Subject: x\r\n\r\nx\r\n")], "-f", "a@sender.test",
                 "--to", "jörg@example.test")
        assert r.rc == 65
        assert r.rcpt(0, "jörg@example.test")["enhanced"] == "5.6.7"
        assert srv.envelopes == []


def test_t_takes_recipients_and_strips_bcc(send, write_msg):
    msg = ("From: a@sender.test\r\nTo: \"B, Person\" <b@example.test>, c@example.test\r\n"
           "Cc: team: d@example.test;\r\nBcc: hidden@example.test,\r\n secret@example.test\r\n"
           "Subject: t\r\n\r\nBcc: this body line stays\r\n")
    with Aiosmtpd() as srv:
        r = send(srv.url(), [write_msg(msg)], "-f", "a@sender.test", "-t",
                 "--to", "extra@example.test")
        assert r.rc == 0, r.stdout + r.stderr
        _, rcpts, data, _ = srv.envelopes[0]
        assert sorted(rcpts) == sorted(["extra@example.test", "b@example.test", "c@example.test",
                                        "d@example.test", "hidden@example.test",
                                        "secret@example.test"])
        assert b"hidden@" not in data and b"secret@" not in data
        assert data == ("From: a@sender.test\r\nTo: \"B, Person\" <b@example.test>, c@example.test"
                        "\r\nCc: team: d@example.test;\r\nSubject: t\r\n\r\n"
                        "Bcc: this body line stays\r\n").encode()


def test_stdin_message(send):
    with Aiosmtpd() as srv:
        r = send(srv.url(), [], "-f", "a@sender.test", "--to", "b@example.test",
                 stdin=b"Subject: stdin\n\nfrom a pipe\n")
        assert r.rc == 0
        assert srv.envelopes[0][2] == b"Subject: stdin\r\n\r\nfrom a pipe\r\n"


def test_many_messages_one_connection_in_order(send, write_msg):
    n = 1000
    files = [write_msg(f"Subject: n{i}\r\nX-Seq: {i}\r\n\r\nbody {i}\r\n") for i in range(n)]
    with Aiosmtpd() as srv:
        r = send(srv.url(), files, "-f", "a@sender.test", "--to", "b@example.test", "-q",
                 timeout=300)
        assert r.rc == 0, r.stdout[-2000:]
        assert r.summary["delivered"] == n
        assert srv.sessions == 1
        seqs = [int(e[2].split(b"X-Seq: ")[1].split(b"\r\n")[0]) for e in srv.envelopes]
        assert seqs == list(range(n))  # each exactly once, in order


@pytest.mark.parametrize("hdr, rcpts", [
    (b"Subject: hi\rBcc: v@evil.test\r\n", ["to@example.test", "v@evil.test"]),
    (b"To: a@example.test\rBcc: v@evil.test\n", ["to@example.test", "a@example.test", "v@evil.test"]),
    (b"To: a@example.test\rBcc: v@evil.test\r\rbody\r", ["to@example.test", "a@example.test", "v@evil.test"]),
])
def test_bare_cr_ends_a_header_line_for_t_bcc_and_the_wire(send, write_msg, hdr, rcpts):
    """One header line rule: a bare CR ends a field for -t, for Bcc removal
    and on the wire alike, so no Bcc survives behind it (and no recipient
    is taken from a field the server will not see)."""
    with Aiosmtpd() as srv:
        r = send(srv.url(), [write_msg(hdr + b"\r\nbody\r\n")], "-f", "a@sender.test", "-t",
                 "--to", "to@example.test")
        assert r.rc == 0, r.stdout + r.stderr
        _, got, data, _ = srv.envelopes[0]
        assert sorted(got) == sorted(rcpts)
        assert b"Bcc" not in data and b"evil" not in data
