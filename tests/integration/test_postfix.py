"""Against a throwaway Postfix instance (smtpd with PIPELINING, recipient
rules, a 20000-octet size limit; accepted mail is held in its queue)."""
from servers import LATER, REJECT, SIZE_LIMIT, Postfix


def test_mixed_recipients_reported(send, write_msg):
    with Postfix() as pf:
        r = send(pf.url(), [write_msg("Subject: mixed\r\n\r\nhello\r\n")], "-f", "a@sender.test",
                 "--to", "ok@example.test", "--to", REJECT, "--to", LATER,
                 "--to", "x@not-relayed.test")
        assert r.rc == 75, r.stdout
        ok = r.rcpt(0, "ok@example.test")
        assert (ok["state"], ok["stage"], ok["code"], ok["enhanced"]) == ("delivered", "dot", 250,
                                                                          "2.0.0")
        assert "queued as" in ok["text"]
        assert ok["accepted"] is True and ok["rcpt_code"] == 250  # RCPT answer kept
        rej = r.rcpt(0, REJECT)
        assert (rej["state"], rej["stage"], rej["enhanced"]) == ("failed", "rcpt", "5.1.1")
        assert rej["code"] // 100 == 5 and "no such user" in rej["text"]
        assert rej["accepted"] is False and rej["rcpt_code"] == rej["code"]
        later = r.rcpt(0, LATER)
        assert (later["state"], later["stage"], later["code"], later["enhanced"]) == (
            "deferred", "rcpt", 450, "4.2.0")
        relay = r.rcpt(0, "x@not-relayed.test")
        assert relay["state"] == "failed" and relay["enhanced"] == "5.7.1"
        q = pf.queue()
        assert len(q) == 1
        assert [x["address"] for x in q[0]["recipients"]] == ["ok@example.test"]
        assert q[0]["sender"] == "a@sender.test"


def test_size_limit_refused_before_sending(send, write_msg):
    small = "Subject: s\r\n\r\n" + "a" * 100 + "\r\n"
    big = "Subject: b\r\n\r\n" + ("b" * 98 + "\r\n") * (SIZE_LIMIT // 100 + 1)
    with Postfix() as pf:
        r = send(pf.url(), [write_msg(big), write_msg(small)], "-f", "a@sender.test",
                 "--to", "ok@example.test")
        big_r = r.messages[0]["recipients"][0]
        assert (big_r["state"], big_r["stage"], big_r["enhanced"]) == ("failed", "local", "5.3.4")
        assert r.messages[1]["recipients"][0]["state"] == "delivered"
        assert len(pf.queue()) == 1


def test_pipelined_batch_all_queued(send, write_msg):
    n = 200
    files = [write_msg(f"Subject: {i}\r\nX-Seq: {i}\r\n\r\nbody\r\n") for i in range(n)]
    with Postfix() as pf:
        r = send(pf.url(), files, "-f", "a@sender.test", "--to", "one@example.test",
                 "--to", "two@example.test", "-q", timeout=300)
        assert r.rc == 0, r.stdout[-1000:]
        assert r.summary["recipients_delivered"] == 2 * n
        assert r.summary["pipelining"] is True
        # BDAT streamed (Postfix offers CHUNKING): no 354 to wait for.
        assert r.summary["shape"] == "bdat-stream"
        assert r.summary["round_trips"] <= 2 + 2 * (n // 64 + 1) + 1
        q = pf.queue()
        assert len(q) == n
        assert all(sorted(x["address"] for x in m["recipients"]) ==
                   ["one@example.test", "two@example.test"] for m in q)


def test_8bit_body_with_8bitmime(send, write_msg, tmp_path):
    tx = tmp_path / "t"
    body = "Subject: 8bit\r\nContent-Type: text/plain; charset=utf-8\r\n" \
           "Content-Transfer-Encoding: 8bit\r\n\r\nGrüße\r\n"
    with Postfix() as pf:
        r = send(pf.url(), [write_msg(body)], "-f", "a@sender.test", "--to", "ok@example.test",
                 "--transcript", str(tx))
        assert r.rc == 0
        assert "BODY=8BITMIME" in tx.read_text()
        q = pf.queue()
        assert "Grüße".encode() in pf.body(q[0]["queue_id"])
