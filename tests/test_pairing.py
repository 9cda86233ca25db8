"""Adaptive pairing over simulated link matrices: slow hosts and slow links separated in at
most three rounds for n up to 4,096, never a false accusation; the circle method unchanged."""

from __future__ import annotations

import itertools
import random

import pytest

from ddpcheck.plan.pairing import (MAX_ADAPTIVE_ROUNDS, circle_rounds, first_round, localize,
                                   next_round)


def run(items, slow_hosts=(), slow_links=(), fail=()):
    """Drive the rounds against a link matrix: a pair is slow when a host of it is slow or
    its link is (``fail``: pairs whose job fails, which counts as slow)."""
    slow_hosts, links = set(slow_hosts), {frozenset(l) for l in slow_links}
    broken = {frozenset(p) for p in fail}
    measured, rounds = [], 0
    while True:
        pairs = next_round(items, measured, rounds)
        if not pairs:
            break
        rounds += 1
        hosts_this_round = [h for p in pairs for h in p]
        assert len(hosts_this_round) == len(set(hosts_this_round)), "a host in two pairs"
        measured += [(p, bool(set(p) & slow_hosts) or frozenset(p) in links
                      or frozenset(p) in broken) for p in pairs]
    return rounds, measured, localize(items, measured)


def names(n):
    return [f"h{i:04d}" for i in range(n)]


def test_healthy_cluster_is_one_round():
    for n in (2, 4, 16, 1000, 4096):
        rounds, measured, found = run(names(n))
        assert rounds == 1 and len(measured) == n // 2
        assert found.slow_hosts == () and found.slow_links == () and found.unresolved == ()


def test_odd_host_out_is_measured_in_round_two():
    items = names(9)
    rounds, measured, found = run(items)
    assert rounds == 2 and any("h0008" in p for p, _ in measured)
    assert found == localize(items, measured) and not found.unresolved


@pytest.mark.parametrize("n", [4, 5, 8, 9, 16, 17, 64, 255, 1000, 4096])
def test_one_slow_host_named_in_at_most_three_rounds(n):
    items = names(n)
    for slow in {0, 1, n // 2, n - 1}:
        rounds, _, found = run(items, slow_hosts=[items[slow]])
        assert rounds <= MAX_ADAPTIVE_ROUNDS
        assert found.slow_hosts == (items[slow],), (n, slow, found)
        assert found.slow_links == () and found.unresolved == ()


@pytest.mark.parametrize("n", [4, 8, 16, 1000, 4096])
def test_one_slow_link_named_as_a_link_not_a_host(n):
    items = names(n)
    for pair in first_round(items)[:: max(1, n // 8)]:
        rounds, _, found = run(items, slow_links=[pair])
        assert rounds == 2
        assert found.slow_links == (pair,) and found.slow_hosts == ()


def test_two_slow_hosts_paired_together_are_both_named():
    items = names(16)
    rounds, _, found = run(items, slow_hosts=["h0002", "h0003"])
    assert rounds == 2 and found.slow_hosts == ("h0002", "h0003") and not found.slow_links


@pytest.mark.parametrize("n", [16, 64, 1000, 4096])
def test_random_matrices_no_false_accusation_and_bounded_rounds(n):
    rng = random.Random(n)
    items = names(n)
    for _ in range(5):
        slow = set(rng.sample(items, rng.randint(0, max(1, n // 10))))
        candidates = [p for p in first_round(items) if not set(p) & slow]
        links = rng.sample(candidates, min(len(candidates), rng.randint(0, 4)))
        # links never in a round-1 pair, each host on at most one slow link and none beside a
        # slow round-1 pair (a host slow with two partners is named: two slow links on one
        # host read as that host, which is the rule, not a miss)
        taken = {h for p in links for h in p} | slow
        taken |= {h for p in first_round(items) if set(p) & slow for h in p}
        unseen = []
        for pair in itertools.islice(itertools.combinations(items, 2), 0, 200):
            if not set(pair) & taken and pair not in first_round(items) and len(unseen) < 2:
                unseen.append(pair)
                taken |= set(pair)
        rounds, measured, found = run(items, slow, links + unseen)
        assert rounds <= MAX_ADAPTIVE_ROUNDS
        assert set(found.slow_hosts) <= slow
        assert set(found.slow_links) <= set(links) | set(unseen)
        # with at most a tenth slow there are enough good partners: everything is settled
        assert set(found.slow_hosts) == slow and set(found.slow_links) >= set(links)
        assert found.unresolved == ()
        assert len(measured) <= n // 2 + 2 * len(slow) + 2 * len(links) + 2 * len(unseen) + 2


def test_more_slow_hosts_than_good_partners_stays_bounded_and_honest():
    items = names(32)
    slow = set(items[:24])
    rounds, _, found = run(items, slow)
    assert rounds <= MAX_ADAPTIVE_ROUNDS
    assert set(found.slow_hosts) <= slow
    assert not found.slow_links
    assert set(found.unresolved) | set(found.slow_hosts) <= slow


def test_everything_slow_stops_after_round_one():
    items = names(8)
    rounds, _, found = run(items, slow_hosts=items)
    assert rounds == 1 and found.slow_hosts == () and set(found.unresolved) == set(items)


def test_failed_pair_is_treated_as_slow():
    items = names(8)
    rounds, _, found = run(items, fail=[("h0002", "h0003")])
    assert rounds == 2 and found.slow_links == (("h0002", "h0003"),)


def test_two_hosts_cannot_tell_host_from_link():
    rounds, _, found = run(["a", "b"], slow_hosts=["a"])
    assert rounds == 1 and found.unresolved == ("a", "b") and not found.slow_hosts


def test_circle_method_still_covers_every_pair():
    items = names(9)
    rounds = circle_rounds(items)
    assert len(rounds) == 9
    pairs = {frozenset(p) for r in rounds for p in r}
    assert len(pairs) == 9 * 8 // 2


def test_first_round_rejects_duplicates():
    with pytest.raises(ValueError):
        first_round(["a", "a"])
