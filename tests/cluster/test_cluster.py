"""Three hosts, one spool on a GlusterFS replica volume (cluster.py): the
daemons deliver every message exactly once, take over from a killed or
paused one, tolerate a host whose clock runs ahead, wake each other across
hosts, and share destination limits and back-off; unsafe volumes are
refused at start.  Run by `make check-cluster` (as root)."""
import collections
import re
import signal
import time

from conftest import Hosts, make_messages, wait_for, NDOM, PORT
from cluster import Cluster, Receiver, host_addr


def delivered_once(rcv, n):
    got = rcv.seqs()
    return sorted(got) == list(range(n))


def test_10000_messages_by_three_daemons_exactly_once(cluster, receiver, tmp_path):
    h = Hosts(cluster, "spool-10k", tmp_path)
    files = make_messages(tmp_path, 10000)
    try:
        # Submitted from all three hosts while the daemons run.
        h.start_all()
        for i in (1, 2, 3):
            h.send_files(i, files[i - 1::3])
        assert wait_for(lambda: len(receiver.seqs()) >= 10000 and h.listdir("env") == [],
                        900, 1), (len(receiver.seqs()), h.logtext()[-3000:])
    finally:
        problems = h.stop_all()
    assert not problems, problems
    got = receiver.seqs()
    dups = [s for s, c in collections.Counter(got).items() if c > 1]
    assert not dups, f"{len(dups)} delivered twice, e.g. {dups[:5]}"
    assert sorted(got) == list(range(10000))
    assert h.listdir("corrupt") == []
    assert h.listdir("claim") == []
    # All three took part (the receiver saw each host's address).
    peers = collections.Counter(line.split()[3] for line in receiver.lines()
                                if line.startswith("msg "))
    assert set(peers) == {host_addr(i) for i in (1, 2, 3)}, peers
    # Each destination was served by one host, its owner: no domain's
    # first messages went out from another node while its site (whose
    # owner delivers it) was being asked.
    hosts_of = collections.defaultdict(set)
    for w in (x.split() for x in receiver.lines() if x.startswith("msg ")):
        hosts_of[int(w[1]) % NDOM].add(w[3])
    shared = {d: sorted(v) for d, v in hosts_of.items() if len(v) > 1}
    assert not shared, shared


def test_each_envelope_is_read_by_its_owner_alone(cluster, receiver, tmp_path):
    """A queue the daemons find when they start: each node reads the
    envelopes of its own destinations' messages and leaves the others'
    unread, by the destination hint each commit left beside them."""
    mport = 9187
    h = Hosts(cluster, "spool-hint", tmp_path, extra=f"metrics_listen = 127.0.0.1:{mport}\n")
    n = 600
    h.send_files(1, make_messages(tmp_path, n))
    try:
        h.start_all()
        assert wait_for(lambda: len(receiver.seqs()) >= n and h.listdir("env") == [], 600,
                        0.5), (len(receiver.seqs()), h.logtext()[-3000:])
        looks = {i: h.metrics(i, mport) for i in (1, 2, 3)}
    finally:
        problems = h.stop_all()
    assert not problems, problems
    assert delivered_once(receiver, n)
    assert h.listdir("corrupt") == []
    sent = {i: h.logtext(i).count("status=sent") for i in (1, 2, 3)}
    assert sum(sent.values()) == n
    read = {i: looks[i]['mailspool_envelope_looks_total{how="read"}'] for i in (1, 2, 3)}
    hint = {i: looks[i]['mailspool_envelope_looks_total{how="hint"}'] for i in (1, 2, 3)}
    for i in (1, 2, 3):
        # Its own, and a few read again (changed under the claim): not
        # the other nodes' (without the hint each node read all n).
        assert read[i] <= sent[i] * 1.1 + 10, (i, read, sent)
    # (A message met while its domain's site was being asked waits for
    # the answer instead: not counted as left by the hint.)
    assert sum(hint.values()) > 0, hint


def test_kill_9_of_one_daemon_loses_nothing(cluster, tmp_path):
    with Receiver(cluster, PORT, delay=0.05) as rcv:
        h = Hosts(cluster, "spool-kill", tmp_path, extra="claim_lease = 10s\nclock_skew = 2s\n")
        files = make_messages(tmp_path, 900)
        try:
            h.start_all()
            h.send_files(1, files)
            victim = h.procs[2]
            assert wait_for(lambda: sum(1 for x in rcv.lines()
                                        if x.startswith("msg ") and x.endswith(host_addr(2)))
                            > 20, 120, 0.1), h.logtext()[-2000:]
            victim.kill()  # SIGKILL: no cleanup
            victim.wait()
            killed_at = len(rcv.seqs())
            assert wait_for(lambda: h.listdir("env") == [], 300, 0.5), h.logtext()[-3000:]
        finally:
            h.procs.pop(2, None)
            problems = h.stop_all()
        assert not problems, problems
        got = rcv.seqs()
        assert set(got) == set(range(900))  # nothing lost
        assert killed_at < 900  # it died mid-run
        # Duplicates only among what the victim had in flight: messages
        # its address delivered (the rest of its agents' hands).
        by_victim = {int(x.split()[1]) for x in rcv.lines()
                     if x.startswith("msg ") and x.endswith(host_addr(2))}
        dups = {s for s, c in collections.Counter(got).items() if c > 1}
        assert dups <= by_victim | set(range(900)), dups
        assert len(dups) <= 2 * 48, len(dups)  # at most its agents' uncommitted share
        assert h.listdir("corrupt") == [] and h.listdir("claim") == []
        # The others took over its destinations.
        assert "nodes alive on this spool: 2" in h.logtext(1) + h.logtext(3)


def test_a_daemon_paused_past_its_lease_settles_nothing_it_lost(cluster, tmp_path):
    with Receiver(cluster, PORT, delay=0.05) as rcv:
        h = Hosts(cluster, "spool-stop", tmp_path, extra="claim_lease = 4s\nclock_skew = 1s\n")
        files = make_messages(tmp_path, 900)
        try:
            # Queued first, so that every node's share is still to do when
            # one is paused (sent while the daemons ran, a fast node had
            # finished its share before the submission ended).
            h.send_files(3, files)
            h.start_all()
            # Paused: a node that is delivering and holds claims.
            def delivering():
                for i in (1, 2, 3):
                    if sum(1 for x in rcv.lines() if x.startswith("msg ") and
                           x.endswith(host_addr(i))) > 5 and h.claims_of(f"h{i}") > 0:
                        return i
                return None
            assert wait_for(delivering, 120, 0.02), h.logtext()[-3000:]
            i = delivering() or 1
            sleeper = h.procs[i]
            sleeper.send_signal(signal.SIGSTOP)
            held = h.claims_of(f"h{i}")
            time.sleep(20)  # well past lease + skew: the others take its work and claims
            sleeper.send_signal(signal.SIGCONT)
            assert wait_for(lambda: h.listdir("env") == [], 300, 0.5), h.logtext()[-3000:]
        finally:
            problems = h.stop_all()
        assert not problems, problems
        assert set(rcv.seqs()) == set(range(900))
        sent = h.sent_counts()
        assert len(sent) == 900 and max(sent.values()) == 1, sent.most_common(3)
        # The others saw it stop and took its destinations and claims;
        # woken, it settled nothing it had lost (each message was settled
        # once, above: a lost claim is logged and left alone).
        others = [k for k in (1, 2, 3) if k != i]
        assert "nodes alive on this spool: 2" in h.logtext(others[0]) + h.logtext(others[1])
        assert held > 0
        assert h.listdir("corrupt") == [] and h.listdir("claim") == []


def test_a_host_whose_clock_runs_50s_ahead_delays_nothing(cluster, receiver, tmp_path):
    h = Hosts(cluster, "spool-skew", tmp_path)
    try:
        cluster.remount(2, skew="+50s")  # its file times are its clock's
        h.start_all(skew_host=2, skew="+50s")
        lat = {}
        for i in (1, 2, 3):
            files = make_messages(tmp_path, 5, first=100 * i)
            t0 = time.monotonic()
            h.send_files(i, files, skew="+50s" if i == 2 else None)
            want = set(range(100 * i, 100 * i + 5))
            assert wait_for(lambda: want <= set(receiver.seqs()), 30, 0.05), (i, h.logtext())
            lat[i] = time.monotonic() - t0
        files = make_messages(tmp_path, 600, first=1000)
        for i in (1, 2, 3):
            h.send_files(i, files[i - 1::3], skew="+50s" if i == 2 else None)
        assert wait_for(lambda: h.listdir("env") == [], 300, 0.5), h.logtext()[-3000:]
    finally:
        problems = h.stop_all()
        cluster.remount(2)
    assert not problems, problems
    assert all(t < 5 for t in lat.values()), lat  # not 50 s
    got = receiver.seqs()
    assert sorted(got) == sorted(list(range(100, 105)) + list(range(200, 205)) +
                                 list(range(300, 305)) + list(range(1000, 1600)))
    assert h.listdir("corrupt") == []


def test_a_fresh_message_is_delivered_within_2s_whichever_host_submits(cluster, receiver,
                                                                        tmp_path):
    h = Hosts(cluster, "spool-wake", tmp_path)
    try:
        h.start_all()
        time.sleep(2)  # every daemon idle, its first listing done
        lat = {}
        for rnd in range(3):
            for i in (1, 2, 3):
                seq = 10 * rnd + i
                # One domain per message, so that each host's message goes
                # to a destination some other host owns, in some round.
                f = make_messages(tmp_path, 1, first=seq)
                t0 = time.monotonic()
                h.send_files(i, f)
                assert wait_for(lambda: seq in receiver.seqs(), 10, 0.02), (i, h.logtext())
                lat[(rnd, i)] = time.monotonic() - t0
    finally:
        problems = h.stop_all()
    assert not problems, problems
    assert max(lat.values()) < 2.0, lat


def test_a_dead_destination_is_probed_once_not_once_per_host(cluster, tmp_path):
    # dead.test's MX closes every connection before its greeting.
    with Receiver(cluster, PORT, down=True) as down:
        h = Hosts(cluster, "spool-dead", tmp_path)
        try:
            h.start_all()
            for i in (1, 2, 3):
                h.send_files(i, make_messages(tmp_path, 10, first=100 * i, domain="dead.test"))
            assert wait_for(lambda: "no server answered" in h.logtext(), 60, 0.2), \
                h.logtext()[-2000:]
            time.sleep(5)  # time for a second probe, from anyone
            assert len(h.listdir("env")) == 30  # all kept, waiting for the back-off
        finally:
            problems = h.stop_all()
        assert not problems, problems
        assert down.opens() == 1, down.lines()
        # One node knows it is down and is the only one to try it.
        assert sum("no server answered" in h.logtext(i) for i in (1, 2, 3)) == 1


def test_destination_concurrency_holds_across_hosts(cluster, tmp_path):
    with Receiver(cluster, PORT, delay=0.1) as rcv:
        h = Hosts(cluster, "spool-conc", tmp_path,
                  extra="destination_concurrency = 2\nconnection_messages = 10\n")
        try:
            h.start_all()
            for i in (1, 2, 3):
                h.send_files(i, make_messages(tmp_path, 60, first=100 * i, domain="d0.test"))
            assert wait_for(lambda: len(rcv.seqs()) >= 180, 180, 0.2), h.logtext()[-2000:]
        finally:
            problems = h.stop_all()
        assert not problems, problems
        assert rcv.max_open() == 2, rcv.max_open()  # the limit, reached and held


def test_unsafe_volumes_are_refused_at_start(tmp_path):
    for kw, why in (({"caches": True}, "client cache"), ({"timeouts": False}, "caches attributes"),
                    ({"distribute": True}, "distributed")):
        with Cluster(hosts=1, **kw) as cl:
            spool = cl.mounts[1] + "/spool"
            conf = tmp_path / "refuse.conf"
            conf.write_text(f"spool_dir = {spool}\nmail_owner = root\nmin_free_space = 0\n"
                            f"log_file = {tmp_path}/refuse.log\n")
            from conftest import BIN
            p = cl.run("mscl-h1", [BIN, "daemon", "--foreground", "--node", "x"],
                       env={"MAILSPOOL_CONFIG": str(conf), "PATH": "/usr/bin:/bin"}, timeout=60)
            assert p.returncode != 0
            assert why in (p.stderr.decode() + open(f"{tmp_path}/refuse.log").read()), p.stderr
