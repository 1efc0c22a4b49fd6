"""The daemon's metrics (metrics_listen): scraped over HTTP while it
delivers to real servers (aiosmtpd with and without STARTTLS refusals, a
dead MX), parsed with the Prometheus client library's OpenMetrics parser,
so a format error fails the test as it would fail a real scrape."""
import urllib.error
import urllib.request

import pytest

from conftest import BIN
from servers import Aiosmtpd, free_port
from test_daemon import World, dns_for, port, stop_daemon, wait_for  # noqa: F401 (port: a fixture)

parser = pytest.importorskip("prometheus_client.openmetrics.parser")


def scrape(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        assert r.headers["Content-Type"].startswith("application/openmetrics-text")
        text = r.read().decode()
    samples = {}
    for fam in parser.text_string_to_metric_families(text):
        for s in fam.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return text, samples


def value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))))


def test_metrics_scraped_while_delivering(tmp_path, port):
    replies = {"bad@a.test": "550 5.1.1 no such user", "later@a.test": "451 4.3.0 busy"}
    mport = free_port()
    with dns_for(port, mx=[("dead.test", "mx.dead.test", 10)],
                 hosts={"mx.dead.test": "127.0.0.8"}) as dns, \
            Aiosmtpd(host="127.0.0.2", port=port, rcpt_replies=replies), \
            Aiosmtpd(host="127.0.0.9", port=port) as sender_mx:
        w = World(str(tmp_path), dns, port, extra=f"metrics_listen = 127.0.0.1:{mport}\n")
        old = w.queue_msg(["later@a.test"])
        d = w.start()
        try:
            assert wait_for(lambda: "daemon started" in w.logtext(), 20)
            for rcpts in (["good@a.test", "bad@a.test"], ["x@dead.test"]):
                w.queue_msg(rcpts)
            assert wait_for(lambda: len(sender_mx.envelopes) == 1 and
                            "dead.test: no server answered" in w.logtext(), 30), w.logtext()

            def settled():
                # A unit's connection facts (its C line) come after its
                # results, and gauges are refreshed once a second: both may
                # trail the counters by a moment.
                _, s = scrape(mport)
                dns = value(s, "mailspool_dns_lookups_total", result="ok") + \
                    value(s, "mailspool_dns_lookups_total", result="cached")
                return value(s, "mailspool_reports_total", kind="bounce") == 1 and \
                    value(s, "mailspool_queue_messages") == 2 and dns >= 3 and \
                    value(s, "mailspool_connections_total", tls="none") >= 2 and \
                    value(s, "mailspool_destinations_backed_off") == 1
            assert wait_for(settled, 20)
            text, s = scrape(mport)
            assert text.endswith("# EOF\n")
            mx = dict(route="mx")
            # good@a.test, and the bounce for bad@ to the sender's MX.
            assert value(s, "mailspool_recipients_total", result="delivered", **mx) == 2
            assert value(s, "mailspool_recipients_total", result="failed", **mx) == 1
            # later@ deferred; x@dead.test deferred (nobody answered).
            assert value(s, "mailspool_recipients_total", result="deferred", **mx) == 2
            assert value(s, "mailspool_messages_received_total") == 3  # two + the bounce
            assert value(s, "mailspool_destination_events_total", event="unreachable") == 1
            assert value(s, "mailspool_destinations_backed_off") == 1
            assert value(s, "mailspool_connections_total", tls="none") >= 2
            assert value(s, "mailspool_dns_lookups_total", result="ok") + \
                value(s, "mailspool_dns_lookups_total", result="cached") >= 3
            # The oldest queued message is `old` (later@a.test), still deferred.
            assert 0 <= value(s, "mailspool_queue_oldest_age_seconds") < 120
            assert value(s, "mailspool_delivery_agents") >= 1
            # Alone on its spool it reads every envelope (three messages
            # and the bounce) and never goes by a destination hint.
            assert value(s, "mailspool_envelope_looks_total", how="read") >= 4
            assert value(s, "mailspool_envelope_looks_total", how="hint") == 0
            assert value(s, "mailspool_recipients_created", result="delivered", **mx) > 0
            # Anything but GET/HEAD /metrics is refused.
            for path, code in (("/", 404), ("/metrics/../etc", 404)):
                with pytest.raises(urllib.error.HTTPError) as e:
                    urllib.request.urlopen(f"http://127.0.0.1:{mport}{path}", timeout=10)
                assert e.value.code == code
            req = urllib.request.Request(f"http://127.0.0.1:{mport}/metrics", data=b"x=1")
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(req, timeout=10)
            assert e.value.code == 405
        finally:
            stop_daemon(d)
        assert old in w.logtext()


def test_metrics_listen_checked(tmp_path, port):
    with dns_for(port) as dns:
        w = World(str(tmp_path), dns, port, extra="metrics_listen = localhost\n")
        p = w.spool.run([BIN, "daemon", "--foreground"], timeout=30)
        assert p.returncode == 64 and b"metrics_listen wants ADDRESS:PORT" in p.stderr
        busy = free_port()
        import socket
        s = socket.socket()
        s.bind(("127.0.0.1", busy))
        s.listen()
        try:
            w = World(str(tmp_path / "b"), dns, port, extra=f"metrics_listen = 127.0.0.1:{busy}\n")
            p = w.spool.run([BIN, "daemon", "--foreground"], timeout=30)
            assert p.returncode == 69 and b"cannot listen for metrics" in p.stderr
        finally:
            s.close()
