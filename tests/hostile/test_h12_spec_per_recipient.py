"""Q4: the reference behaviour the H12 cases deviate from - a scripted
server that answers as the protocol says, one reply per recipient, in
order, with a different fate for each.  No packaged server does this on
demand (qmail-qmtpd is not in Debian; mailfront answers once per package),
so it is scripted here."""
from hostile import Hostile


def test_spec_conformant_server_one_reply_per_recipient(send, write_msg):
    """A scripted server that answers as the protocol says - one reply per
    recipient, in order - with different fates for each: the default
    counting gives each recipient its own reply.  (No packaged server does
    this on demand: qmail-qmtpd is not in Debian.)"""
    fates = {b"ok@x.test": "K2.6.0 accepted", b"full@x.test": "Zmailbox full (#4.2.2)",
             b"gone@x.test": "DSorry, no mailbox here by that name. (#5.1.1)"}
    got = []

    def conformant(c):
        while True:
            try:
                msg, sender, rcpts = c.package()
            except EOFError:
                return
            got.append((msg, sender, rcpts))
            c.send(b"".join(c.ns(fates[r]) for r in rcpts))

    files = [write_msg(f"Subject: {i}\n\nbody {i}\n") for i in range(5)]
    with Hostile(conformant, scheme="qmtp") as h:
        r = send(h.url(), files, "-f", "a@x.test", "--to", "ok@x.test", "--to", "full@x.test",
                 "--to", "gone@x.test", "--timeout", "5", timeout=30)
        assert r.rc == 75  # deferred recipients: try again later
        for m in r.messages:
            states = [(x["address"], x["state"], x["enhanced"]) for x in m["recipients"]]
            assert states == [("ok@x.test", "delivered", "2.6.0"),
                              ("full@x.test", "deferred", "4.2.2"),
                              ("gone@x.test", "failed", "5.1.1")]
        assert r.summary["connections"] == 1 and h.conns == 1
        assert [m for m, _, _ in got] == [f"\nSubject: {i}\n\nbody {i}\n".encode() for i in range(5)]
