"""A slow host or link from the ranks' TCP connections: the sock_diag reader against ``ss``
(the users' own tool reads the same kernel counters), and the localization on generated jobs."""

from __future__ import annotations

import os
import random
import re
import shutil
import socket
import struct
import subprocess
import threading

import pytest

from ddpcheck.core.links import (MIN_BYTES, Connection, connections_between, pair_rates,
                                 ranks_sending_to_peers, slow_links)
from ddpcheck.remote import tcpinfo


@pytest.fixture
def connection():
    """A real loopback connection of this process with 5 MB sent one way."""
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    peer, _ = server.accept()
    done = threading.Event()

    def drain():
        got = 0
        while got < 5_000_000:
            got += len(peer.recv(1 << 20))
        done.set()

    threading.Thread(target=drain, daemon=True).start()
    client.sendall(b"x" * 5_000_000)
    assert done.wait(10)
    yield client, peer
    for s in (client, peer, server):
        s.close()


@pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2)")
def test_the_sockets_of_this_process_read_as_ss_reads_them(connection):
    client, peer = connection
    links = tcpinfo.process_links(os.getpid(), tcpinfo.established_sockets())
    local = "127.0.0.1:%d" % client.getsockname()[1]
    remote = "127.0.0.1:%d" % peer.getsockname()[1]
    mine = {(entry[0], entry[1]): entry for entry in links}
    assert (local, remote) in mine and (remote, local) in mine, links
    port = local.split(":")[1]
    ss = subprocess.run(["ss", "-tinH", "state", "established", "sport", f"= :{port}"],
                        capture_output=True, text=True, check=True).stdout
    acked = int(re.search(r"bytes_acked:(\d+)", ss).group(1))
    # ss counts the SYN as one acknowledged byte (bytes_acked starts at 1), as the kernel does
    assert mine[(local, remote)][2] == acked, (links, ss)
    assert mine[(remote, local)][3] == 5_000_000
    assert acked - 1 == 5_000_000


def test_tcp_info_busy_time_leaves_out_the_receivers_window():
    raw = bytearray(232)
    struct.pack_into("=I", raw, tcpinfo.TCPI_RTT, 250)
    struct.pack_into("=QQ", raw, tcpinfo.TCPI_BYTES_ACKED, 7_000_000, 12)
    struct.pack_into("=QQ", raw, tcpinfo.TCPI_BUSY_TIME, 900_000, 600_000)
    assert tcpinfo.parse_tcp_info(bytes(raw)) == (7_000_000, 12, 300_000, 250)
    assert tcpinfo.parse_tcp_info(bytes(raw[:160])) is None  # a kernel without busy counters


def test_a_dump_with_an_error_raises_and_a_short_or_foreign_message_is_skipped():
    error = tcpinfo.NLMSGHDR.pack(20, tcpinfo.NLMSG_ERROR, 0, 1, 0) + struct.pack("=i", -13)
    with pytest.raises(OSError):
        tcpinfo.parse_dump(error)
    foreign = tcpinfo.NLMSGHDR.pack(24, 99, 0, 1, 0) + bytes(8)
    done = tcpinfo.NLMSGHDR.pack(16, tcpinfo.NLMSG_DONE, 0, 1, 0)
    assert tcpinfo.parse_dump(foreign + done) == ([], True)


def ring_job(rng: random.Random, hosts: int, slow: dict, span: float = 3.0) -> list[Connection]:
    """Two ranks per host; each host's second rank sends the ring's bytes to the next host's
    first rank (as gloo's ring does), at a healthy rate unless ``slow`` maps the pair (or a
    host, both its pairs) to a slowdown; each host's two ranks also talk over loopback."""
    sent = rng.randint(2, 40) * MIN_BYTES
    out = []
    for h in range(hosts):
        nxt = (h + 1) % hosts
        a, b = f"h{h + 1}", f"h{nxt + 1}"
        rate = rng.uniform(150e6, 500e6)
        factor = slow.get((a, b)) or slow.get(a) or slow.get(b) or 1.0
        busy = sent / (rate / factor)
        if factor >= 4:  # the job's bottleneck: busy most of the window
            busy = span * rng.uniform(0.6, 0.95)
            this = int(busy * rate / factor)
        elif factor == 1.0 and rng.random() < 0.5:
            busy, this = rng.choice([0.0, 0.004]), sent  # a kernel tick or less
        else:
            this = sent
        ip_a, ip_b = f"10.0.{h // 250}.{h % 250 + 1}", f"10.0.{nxt // 250}.{nxt % 250 + 1}"
        out.append(Connection(2 * h + 1, a, f"{ip_a}:4{h:04d}", f"{ip_b}:29500", this, 0, busy))
        out.append(Connection(2 * nxt, b, f"{ip_b}:29500", f"{ip_a}:4{h:04d}", 3072, this, 0.0))
        out.append(Connection(2 * h, a, f"{ip_a}:3{h:04d}", f"{ip_a}:2{h:04d}", sent, 3072, 0.002))
        # the store: small, slow-looking, never judged
        out.append(Connection(2 * h, a, f"{ip_a}:5{h:04d}", "10.0.0.1:29400", 30_000, 100, 1.2))
    return out


@pytest.mark.parametrize("seed", range(30))
def test_a_slow_host_of_a_ring_is_named_with_its_ranks_and_no_other(seed):
    rng = random.Random(seed)
    hosts = rng.randint(3, 40)
    victim = f"h{rng.randint(1, hosts)}"
    found = slow_links(ring_job(rng, hosts, {victim: rng.uniform(8, 200)}), 3.0)
    assert [(s.host, s.target) for s in found] == [(victim, None)], [s.message() for s in found]
    v = int(victim[1:]) - 1
    assert found[0].ranks == (2 * v, 2 * v + 1)
    assert f"{victim}'s network is slow" in found[0].message()


@pytest.mark.parametrize("seed", range(30))
def test_a_slow_link_is_named_as_the_link(seed):
    rng = random.Random(seed)
    hosts = rng.randint(4, 40)
    h = rng.randint(1, hosts)
    pair = (f"h{h}", f"h{h % hosts + 1}")
    found = slow_links(ring_job(rng, hosts, {pair: rng.uniform(8, 200)}), 3.0)
    assert [(s.host, s.target) for s in found] == [pair], [s.message() for s in found]
    assert found[0].ranks == (2 * h - 1,)
    assert f"the link {pair[0]}->{pair[1]} carries" in found[0].message()


@pytest.mark.parametrize("seed", range(30))
def test_a_healthy_job_and_a_mildly_slower_link_name_no_one(seed):
    rng = random.Random(seed)
    hosts = rng.randint(2, 40)
    h = rng.randint(1, hosts)
    mild = {(f"h{h}", f"h{h % hosts + 1}"): rng.uniform(1.0, 1.2)}
    assert slow_links(ring_job(rng, hosts, rng.choice([{}, mild])), 3.0) == []


def test_a_slow_pair_the_job_hardly_waits_for_is_not_named():
    """As measured with a 3 % CPU quota on a receiver: its incoming pair ran 10x slower than
    the others, busy 9-13 % of the window: the receiver, not the network."""
    rng = random.Random(1)
    job = ring_job(rng, 5, {"h2": 100.0}, span=3.0)
    assert [s.host for s in slow_links(job, 3.0)] == ["h2"]
    job = [c if c.busy_s < 0.5 else Connection(c.rank, c.host, c.local, c.peer, c.sent // 4,
                                               c.received, c.busy_s / 4) for c in job]
    assert slow_links(job, 3.0) == []  # busy 15-24 % of the window


@pytest.mark.parametrize("seed", range(10))
def test_the_links_of_a_host_whose_rank_arrives_late_are_not_judged(seed):
    rng = random.Random(seed)
    hosts = rng.randint(3, 20)
    victim = f"h{rng.randint(1, hosts)}"
    job = ring_job(rng, hosts, {victim: rng.uniform(8, 200)})
    assert slow_links(job, 3.0, explained=[victim]) == []


def test_a_host_slowing_down_is_no_slow_link_while_its_other_pair_is_slow_too():
    """At the onset one of the slowed host's pairs may be busy half the window before the
    other is: that is no slow link (the other is slow too, only less busy so far)."""
    rng = random.Random(4)
    job = ring_job(rng, 5, {"h3": 50.0})
    job = [c if not (c.host == "h3" and c.sent > MIN_BYTES // 2) else
           Connection(c.rank, c.host, c.local, c.peer, c.sent // 3, c.received, c.busy_s / 3)
           for c in job]  # h3 -> h4 slow but busy a sixth of the window at most
    assert slow_links(job, 3.0) == []


def test_two_hosts_alone_cannot_be_told_apart():
    rng = random.Random(2)
    assert slow_links(ring_job(rng, 2, {"h1": 50.0}), 3.0) == []


def test_pairs_leave_out_loopback_unknown_peers_and_small_transfers():
    rng = random.Random(3)
    job = ring_job(rng, 4, {})
    pairs = pair_rates(job)
    assert sorted((p.source, p.target) for p in pairs) == [
        ("h1", "h2"), ("h2", "h3"), ("h3", "h4"), ("h4", "h1")]


def test_connections_between_samples_are_deltas_of_the_connections_in_both():
    first = [["10.0.0.1:1", "10.0.0.2:2", 100, 5, 1_000], ["10.0.0.1:3", "10.0.0.2:2", 1, 1, 1],
             ["bad"], ["10.0.0.1:4", "10.0.0.2:2", True, 1, 1]]
    last = [["10.0.0.1:1", "10.0.0.2:2", 2_100, 9, 501_000], ["10.0.0.1:5", "10.0.0.2:2", 9, 9, 9]]
    assert connections_between(3, "h1", first, last) == [
        Connection(3, "h1", "10.0.0.1:1", "10.0.0.2:2", 2_000, 4, 0.5)]


def test_own_links_read_by_getsockopt_agree_with_the_sock_diag_dump(connection):
    """The Monitor reads its own sockets with getsockopt, the scan a worker's with sock_diag:
    the same kernel counters, so the same connections and bytes."""
    client, peer = connection
    own = {(e[0], e[1]): e for e in tcpinfo.own_links()}
    dumped = {(e[0], e[1]): e for e in tcpinfo.process_links(os.getpid(),
                                                             tcpinfo.established_sockets())}
    assert own.keys() == dumped.keys() and own
    for key in own:
        assert own[key][2:4] == dumped[key][2:4], (own[key], dumped[key])


def test_the_ranks_sending_to_peers_leave_out_the_store_and_idle_connections():
    a = Connection(0, "h1", "10.0.0.1:40000", "10.0.0.2:29500", 100, 0, 0.0)
    b = Connection(1, "h2", "10.0.0.2:29500", "10.0.0.1:40000", 0, 100, 0.0)
    back = Connection(1, "h2", "10.0.0.2:41000", "10.0.0.1:29501", 64, 0, 0.0)
    c = Connection(0, "h1", "10.0.0.1:29501", "10.0.0.2:41000", 0, 64, 0.0)
    store = Connection(2, "h2", "10.0.0.2:42000", "10.0.0.1:29400", 5_000, 0, 0.0)
    idle = Connection(2, "h2", "10.0.0.2:42001", "10.0.0.1:29501", 0, 0, 0.0)
    assert ranks_sending_to_peers([a, b, back, c, store, idle]) == {0, 1}
    assert ranks_sending_to_peers([a, b]) == {0}


def test_the_monitors_sampler_compares_the_last_two_seconds_sliding_by_one(monkeypatch):
    """Its own connections read at 0, 1, 2, 3 s (a clock the test gives): nothing to publish
    before a window is covered, then the bytes sent between the samples 2 s apart, each second."""
    from ddpcheck.injob import links

    sent = [0]

    def read():  # busy a microsecond per byte
        return [["10.0.0.1:1", "10.0.0.2:2", sent[0], 0, sent[0]]]

    monkeypatch.setattr(links, "own_links", read)
    sampler = links.LinkSampler()
    published = []
    for second in range(5):
        sent[0] = second * (1 << 20)
        published.append(sampler.sample(100.0 + second))
        assert sampler.sample(100.5 + second) is published[-1]  # not due: the same
    assert published[:2] == [None, None]
    for result in published[2:]:
        assert result["span"] == 2.0
        assert result["links"] == [["10.0.0.1:1", "10.0.0.2:2", 2 << 20, 0, 2.0972]]


def test_the_monitors_verdict_names_a_host_at_once_and_a_link_alone_as_a_link():
    """From the rows every rank publishes: a slow host is a "network" entry, a link alone a
    "link" entry (the Monitor confirms a link over 2 s: a neighbour's load on a host's CPUs
    slows its network work too), each on the first rank it names, with hang's words."""
    from ddpcheck.injob.links import link_verdict

    def published(job):
        rows = {}
        for c in job:
            entry = rows.setdefault(c.rank, {"host": c.host, "links": {"span": 3.0,
                                                                       "links": []}})
            entry["links"]["links"].append([c.local, c.peer, c.sent, c.received, c.busy_s])
        return rows

    rng = random.Random(5)
    (host,) = link_verdict(published(ring_job(rng, 6, {"h3": 40.0})))
    assert (host["rule"], host["reason"], host["host"], host["ranks"]) == (
        "network", "network", "h3", [4, 5])
    assert host["message"].startswith("rank 4, 5 on h3: h3's network is slow")
    (link,) = link_verdict(published(ring_job(rng, 6, {("h2", "h3"): 40.0})))
    assert (link["rule"], link["reason"], link["host"], link["rank"]) == ("link", "link", "h2", 3)
    assert link_verdict(published(ring_job(rng, 6, {"h3": 40.0})), explained=["h3"]) == []


def test_a_link_four_times_slower_than_the_others_is_not_named_alone():
    """As measured with the machine's CPUs overloaded (a test suite beside the job): a healthy
    pair carried 24.9 MB/s while busy 74 % of the window, the job's other links 103 MB/s. A
    host's pairs all that slow would be its network; one pair alone needs 8x."""
    span = 2.0
    job = []
    for h, (rate, busy) in enumerate([(103e6, 0.4), (24.9e6, 0.74 * span), (110e6, 0.5),
                                      (98e6, 0.3), (120e6, 0.2)]):
        a, b = h + 1, (h + 1) % 5 + 1
        job.append(Connection(h, f"h{a}", f"10.0.0.{a}:4000", f"10.0.0.{b}:5000",
                              int(rate * busy), 0, busy))
        job.append(Connection(10 + h, f"h{b}", f"10.0.0.{b}:5000", f"10.0.0.{a}:4000",
                              0, int(rate * busy), 0.0))
    assert slow_links(job, span) == []


def test_both_readers_write_ipv6_and_v4_mapped_ends_alike():
    """The scan's sock_diag reader and the Monitor's getsockopt reader name a connection's ends
    the same way: ``[ip]:port`` for IPv6, and a dual-stack socket's v4-mapped peer as IPv4."""
    opened = []
    try:
        for host, mapped in (("::1", False), ("::", True)):
            server = socket.socket(socket.AF_INET6)
            opened.append(server)
            if mapped:
                server.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            server.bind((host, 0))
            server.listen()
            client = socket.create_connection(("127.0.0.1" if mapped else "::1",
                                               server.getsockname()[1]))
            opened += [client, server.accept()[0]]
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    try:
        own = sorted(entry[:2] for entry in tcpinfo.own_links())
        dumped = sorted(entry[:2] for entry in tcpinfo.process_links(
            os.getpid(), tcpinfo.established_sockets()))
        assert own == dumped
        assert any(local.startswith("[::1]:") for local, _ in own), own
        assert any(local.startswith("127.0.0.1:") for local, _ in own), own
    finally:
        for s in opened:
            s.close()
