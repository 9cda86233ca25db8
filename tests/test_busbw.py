"""Unit tests for ddpcheck.core.busbw (nccl-tests factors, sizes, rows) and ddpcheck.plan.pairing."""

from __future__ import annotations

import itertools

import pytest

from ddpcheck.core.busbw import (Collective, CollectiveRow, busbw_factor, element_count, format_size,
                                 message_sizes, parse_size, row_from_dict)
from ddpcheck.plan.pairing import circle_rounds


@pytest.mark.parametrize("n", [1, 2, 3, 4, 8, 16, 64])
def test_busbw_factors_are_nccl_tests(n):
    assert busbw_factor(Collective.ALL_REDUCE, n) == pytest.approx(2 * (n - 1) / n)
    for op in (Collective.ALL_GATHER, Collective.REDUCE_SCATTER, Collective.ALL_TO_ALL):
        assert busbw_factor(op, n) == pytest.approx((n - 1) / n)
    assert busbw_factor(Collective.BROADCAST, n) == 1.0


def test_busbw_factor_rejects_empty_world():
    with pytest.raises(ValueError):
        busbw_factor(Collective.ALL_REDUCE, 0)


def test_row_algbw_and_busbw():
    # all_reduce of 8 MiB (per-rank buffer) over 4 ranks in 0.5 s
    row = CollectiveRow(Collective.ALL_REDUCE, count=2 * 1024 * 1024, world_size=4, time_s=0.5,
                        wrong=0)
    assert row.nbytes == 8 * 1024 * 1024
    assert row.algbw_gbs == pytest.approx(8 * 1024 * 1024 / 0.5 / 1e9)
    assert row.busbw_gbs == pytest.approx(row.algbw_gbs * 1.5)
    # all_gather: the size is the whole array (every rank's part), factor (n-1)/n
    gather = CollectiveRow(Collective.ALL_GATHER, count=1024, world_size=8, time_s=1e-3, wrong=0)
    assert gather.algbw_gbs == pytest.approx(4096 / 1e-3 / 1e9)
    assert gather.busbw_gbs == pytest.approx(gather.algbw_gbs * 7 / 8)
    broadcast = CollectiveRow(Collective.BROADCAST, count=1024, world_size=8, time_s=1e-3, wrong=0)
    assert broadcast.busbw_gbs == broadcast.algbw_gbs


def test_row_round_trips_through_json_form():
    row = CollectiveRow(Collective.ALL_TO_ALL, count=4096, world_size=4, time_s=0.00125, wrong=3)
    data = row.to_dict()
    assert {"op", "bytes", "time_us", "algbw_gbs", "busbw_gbs", "wrong"} <= set(data)
    assert data["bytes"] == 16384 and data["wrong"] == 3 and data["op"] == "all_to_all"
    assert row_from_dict(data) == row
    for garbage in (None, [], {"op": "nope"}, {**data, "count": "x"}, {**data, "world_size": 0}):
        assert row_from_dict(garbage) is None


@pytest.mark.parametrize("text,expected", [("8", 8), ("64K", 65536), ("32M", 32 << 20),
                                           ("1G", 1 << 30), ("2m", 2 << 20), ("4KB", 4096),
                                           ("1MiB", 1 << 20), ("1.5M", 3 << 19),
                                           ("0.5G", 1 << 29)])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "M", "1.5.5M", "-8", "8X", "1 M B"])
def test_parse_size_rejects(text):
    with pytest.raises(ValueError):
        parse_size(text)


def test_format_size():
    assert [format_size(n) for n in (8, 1024, 1536, 32 << 20, 1 << 30)] == [
        "8", "1K", "1536", "32M", "1G"]


def test_message_sizes_like_nccl_tests():
    assert message_sizes(8, 128, 2) == [8, 16, 32, 64, 128]
    assert message_sizes(1 << 20, 32 << 20, 4) == [1 << 20, 4 << 20, 16 << 20]
    assert message_sizes(32 << 20, 32 << 20, 1) == [32 << 20]
    with pytest.raises(ValueError):
        message_sizes(1 << 20, 1 << 10, 2)
    with pytest.raises(ValueError):
        message_sizes(8, 128, 1)


def test_element_count_gives_every_rank_an_equal_part():
    assert element_count(Collective.ALL_REDUCE, 1000, 3) == 250
    assert element_count(Collective.BROADCAST, 6, 4) == 1
    # nccl-tests: each rank's part rounded down to 16 bytes (83 -> 80 floats per rank)
    assert element_count(Collective.ALL_GATHER, 1000, 3) == 240
    assert element_count(Collective.REDUCE_SCATTER, 1 << 20, 8) == 1 << 18
    assert element_count(Collective.ALL_TO_ALL, 8, 4) == 0  # too small to split: skipped


# -- pairing --------------------------------------------------------------------------------


@pytest.mark.parametrize("n", list(range(2, 18)) + [63, 64])
def test_circle_rounds_cover_every_pair_once_without_a_host_twice_in_a_round(n):
    hosts = [f"node{i:02d}" for i in range(n)]
    rounds = circle_rounds(hosts)
    assert len(rounds) == (n - 1 if n % 2 == 0 else n)
    seen = [pair for pairs in rounds for pair in pairs]
    assert len(seen) == n * (n - 1) // 2
    assert {frozenset(p) for p in seen} == {frozenset(p) for p in
                                            itertools.combinations(hosts, 2)}
    for pairs in rounds:
        in_round = [h for pair in pairs for h in pair]
        assert len(in_round) == len(set(in_round)), pairs
        assert len(pairs) == n // 2
        for a, b in pairs:  # pairs in hosts.yaml order
            assert hosts.index(a) < hosts.index(b)


@pytest.mark.parametrize("n", [3, 5, 7, 9])
def test_circle_rounds_odd_count_gives_each_host_one_bye(n):
    hosts = list(range(n))
    byes = []
    for pairs in circle_rounds(hosts):
        present = {h for pair in pairs for h in pair}
        missing = set(hosts) - present
        assert len(missing) == 1
        byes += missing
    assert sorted(byes) == hosts


def test_circle_rounds_small_and_bad_input():
    assert circle_rounds([]) == []
    assert circle_rounds(["a"]) == []
    assert circle_rounds(["a", "b"]) == [[("a", "b")]]
    with pytest.raises(ValueError):
        circle_rounds(["a", "a"])


def test_parse_ops():
    from ddpcheck.core.busbw import ALL_COLLECTIVES, parse_ops

    assert parse_ops("all") == ALL_COLLECTIVES
    assert parse_ops("broadcast, all_reduce,broadcast") == (Collective.BROADCAST,
                                                           Collective.ALL_REDUCE)
    with pytest.raises(ValueError, match="unknown op 'allreduce'"):
        parse_ops("allreduce")
