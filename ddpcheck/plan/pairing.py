"""Pairing: which host pairs ``bandwidth --pairwise`` measures together (pure).

The circle method (round-robin scheduling): every pair of hosts meets exactly once, and within a
round no host is in two pairs, so a round's pairs run at the same time without sharing a host.
n hosts take n-1 rounds when n is even (64 hosts: 63 rounds instead of 2016 runs one after
another) and n rounds when n is odd, each host sitting out one round (a bye).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, TypeVar

T = TypeVar("T")


def circle_rounds(items: Sequence[T]) -> list[list[tuple[T, T]]]:
    """Rounds of disjoint pairs covering every pair of ``items`` exactly once.

    The first item stays put while the others rotate one step per round; position i is paired
    with position m-1-i. Each pair is given in the order of ``items``.
    """
    if len(set(items)) != len(items):
        raise ValueError("items must be distinct")
    slots: list[Optional[T]] = list(items)
    if len(slots) < 2:
        return []
    if len(slots) % 2:
        slots.append(None)  # whoever meets None sits the round out
    order = {item: index for index, item in enumerate(items)}
    m = len(slots)
    rounds = []
    for _ in range(m - 1):
        pairs = []
        for i in range(m // 2):
            a, b = slots[i], slots[m - 1 - i]
            if a is None or b is None:
                continue
            pairs.append((a, b) if order[a] < order[b] else (b, a))
        rounds.append(sorted(pairs, key=lambda pair: (order[pair[0]], order[pair[1]])))
        slots = [slots[0], slots[-1], *slots[1:-1]]
    return rounds


# -- adaptive pairing (the default of --pairwise) ---------------------------------------------
#
# Round 1 pairs every host with another at once (n/2 pairs). A pair is fine or slow (the
# caller decides, from the busbw of all pairs so far; a failed pair counts as slow). A host with
# a fine pair is good. Each host of a slow pair is then paired with a different good host
# (round 2): a host slow again, with a second partner, is a slow host; two hosts that are fine
# with others were joined by a slow link. Round 3 runs only for what is still open: a host seen
# with one partner only (the odd one out of round 1, or one left without a good partner in
# round 2 because there were too few). Rounds never exceed MAX_ADAPTIVE_ROUNDS, whatever n.

MAX_ADAPTIVE_ROUNDS = 3

Measured = Sequence[tuple[tuple[T, T], bool]]  # (pair, slow) of every pair run so far


def first_round(items: Sequence[T]) -> list[tuple[T, T]]:
    """Neighbours paired: (1st, 2nd), (3rd, 4th), ...; with n odd the last sits it out."""
    if len(set(items)) != len(items):
        raise ValueError("items must be distinct")
    return [(items[i], items[i + 1]) for i in range(0, len(items) - 1, 2)]


@dataclass(frozen=True)
class HostEvidence:
    """What the pairs so far say about each host."""

    fine: dict  # host -> partners it was fine with
    slow: dict  # host -> partners it was slow with (distinct)


def evidence(measured: Measured) -> HostEvidence:
    fine: dict = {}
    slow: dict = {}
    for (a, b), is_slow in measured:
        target = slow if is_slow else fine
        target.setdefault(a, set()).add(b)
        target.setdefault(b, set()).add(a)
    return HostEvidence(fine, slow)


def open_hosts(items: Sequence[T], measured: Measured) -> list[T]:
    """Hosts not yet settled: never measured, or slow with one partner and fine with none."""
    seen = evidence(measured)
    return [h for h in items if h not in seen.fine and len(seen.slow.get(h, ())) < 2]


def next_round(items: Sequence[T], measured: Measured, rounds_done: int) -> list[tuple[T, T]]:
    """The pairs of the next round: every open host with a different good host (one it has not
    met yet), as many as there are good hosts; [] when nothing is open, no good host is
    known, or MAX_ADAPTIVE_ROUNDS were run."""
    if rounds_done == 0:
        return first_round(items)
    if rounds_done >= MAX_ADAPTIVE_ROUNDS:
        return []
    seen = evidence(measured)
    waiting = open_hosts(items, measured)
    if not waiting:
        return []
    order = {item: index for index, item in enumerate(items)}
    good = [h for h in items if h in seen.fine]
    # the good hosts with the fewest slow pairs first: the least likely to mislead
    good.sort(key=lambda h: (len(seen.slow.get(h, ())), order[h]))
    pairs = []
    used: set = set()
    cursor = 0
    for host in waiting:
        met = seen.slow.get(host, set()) | seen.fine.get(host, set())
        while cursor < len(good) and (good[cursor] in used or good[cursor] in met):
            cursor += 1
        if cursor >= len(good):
            break
        partner = good[cursor]
        used.add(partner)
        cursor += 1
        pairs.append((host, partner) if order[host] < order[partner] else (partner, host))
    return sorted(pairs, key=lambda pair: (order[pair[0]], order[pair[1]]))


@dataclass(frozen=True)
class Localized:
    slow_hosts: tuple  # slow with two or more partners, fine with none
    slow_links: tuple  # slow pairs of two hosts that are each fine with another host
    unresolved: tuple  # hosts the rounds could not settle (one slow partner, no good one)


def localize(items: Sequence[T], measured: Measured) -> Localized:
    """The slow hosts and links the measured pairs prove (pure; the same rule as the report's
    analysis: a host whose every pair is slow, a slow pair between two otherwise fine hosts)."""
    seen = evidence(measured)
    hosts = tuple(h for h in items if h not in seen.fine and len(seen.slow.get(h, ())) >= 2)
    links = tuple(pair for pair, is_slow in measured
                  if is_slow and pair[0] in seen.fine and pair[1] in seen.fine)
    unresolved = tuple(h for h in items if h not in seen.fine and h not in hosts
                       and h in seen.slow)
    return Localized(hosts, tuple(dict.fromkeys(links)), unresolved)
