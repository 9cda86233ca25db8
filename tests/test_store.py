"""transport.store: the in-job store's calls, deadlines, errors and traffic counters, against
a real server on a free local port."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from ddpcheck.transport.store import JobStore, StoreError


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def served():
    store = JobStore.serve(free_port(), 5)
    yield store
    store.close()


def test_set_get_add_check_and_multi_get(served) -> None:
    other = JobStore.connect("127.0.0.1", served.port, 5)
    served.set("join/1", '{"hostname": "h2"}')
    assert other.check(["join/1"]) and not other.check(["join/1", "join/2"])
    assert other.get("join/1") == b'{"hostname": "h2"}'
    assert other.add("joined", 1) == 1 and served.add("joined", 2) == 3
    assert other.add("joined", 0) == 3
    assert other.multi_get(["join/1", "joined"]) == [b'{"hostname": "h2"}', b"3"]
    with pytest.raises(StoreError, match="not set"):
        other.get("join/2")
    other.close()


def test_wait_returns_when_the_key_is_set_and_false_at_its_deadline(served) -> None:
    other = JobStore.connect("127.0.0.1", served.port, 5)
    began = time.monotonic()
    assert not other.wait(["decision"], time.monotonic() + 0.7)
    assert 0.6 < time.monotonic() - began < 3
    setter = threading.Timer(0.3, lambda: served.set("decision", "launch"))
    setter.start()
    began = time.monotonic()
    assert other.wait(["decision"], time.monotonic() + 10)
    assert time.monotonic() - began < 3
    setter.join()  # its reply read before the fixture closes the store
    cancel = threading.Event()
    cancel.set()
    assert not other.wait(["never"], time.monotonic() + 10, cancel)
    other.close()


def test_connecting_to_no_store_fails_within_its_deadline_naming_the_address() -> None:
    port = free_port()
    began = time.monotonic()
    with pytest.raises(StoreError, match=f"cannot reach the master's store at 127.0.0.1:{port} "
                                         f"within 1s: Connection refused"):
        JobStore.connect("127.0.0.1", port, 1.0)
    assert time.monotonic() - began < 3


def test_a_store_that_starts_late_is_joined_once_it_listens() -> None:
    port = free_port()
    servers = []
    threading.Timer(0.5, lambda: servers.append(JobStore.serve(port, 5))).start()
    store = JobStore.connect("127.0.0.1", port, 5)
    store.set("k", "v")
    assert servers[0].get("k") == b"v"
    store.close()
    servers[0].close()


def test_a_call_after_node_0_went_away_is_an_error_not_a_hang(served) -> None:
    other = JobStore.connect("127.0.0.1", served.port, 5)
    served.close()
    began = time.monotonic()
    with pytest.raises(StoreError, match="node 0 is gone|Connection reset|Broken pipe"):
        other.wait(["verdict"], time.monotonic() + 30)
    assert time.monotonic() - began < 5


def test_traffic_counts_every_byte_and_round_trip(served) -> None:
    other = JobStore.connect("127.0.0.1", served.port, 5)
    other.set("stage0/1", "x" * 1000)
    assert other.traffic.round_trips == 1 and 1000 < other.traffic.sent < 1100
    other.get("stage0/1")
    assert other.traffic.round_trips == 2 and 1000 < other.traffic.received < 1100
    assert other.traffic.as_dict()["round_trips"] == 2
    other.close()


def test_a_heartbeat_sets_its_key_and_hears_stop_in_one_round_trip(served) -> None:
    other = JobStore.connect("127.0.0.1", served.port, 5)
    assert not other.beat("alive/1", "1", "stop")
    served.set("stop", "world broken")
    assert other.beat("alive/1", "2", "stop") and other.traffic.round_trips == 2
    assert served.values(["alive/1", "alive/2"]) == [b"2", None]
    other.close()
