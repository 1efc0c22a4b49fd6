"""H12/Q7: the server answers the first package and closes.  The packages
that were already sent and never answered are temporary failures that may
have been delivered; nothing hangs and nothing is called delivered that was
not answered.  A close after the last reply is no error at all."""
from hostile import Hostile


def answer_one_and_close(c):
    c.package()
    c.send(c.ns("Kgot it"))


def test_close_between_packages(send, write_msg):
    files = [write_msg(f"message {i}\n") for i in range(3)]
    with Hostile(answer_one_and_close, scheme="qmtp") as h:
        r = send(h.url(), files, "-f", "a@x.test", "--to", "b@x.test", "--timeout", "5",
                 timeout=30)
        assert r.rc == 75
        states = [m["recipients"][0]["state"] for m in r.messages]
        assert states == ["delivered", "deferred", "deferred"]
        assert "closed" in r.summary["session_error"]


def test_close_after_last_reply(send, write_msg):
    with Hostile(answer_one_and_close, scheme="qmtp") as h:
        r = send(h.url(), [write_msg("only\n")], "-f", "a@x.test", "--to", "b@x.test",
                 timeout=30)
        assert r.rc == 0
        assert r.summary["session_error"] is None
