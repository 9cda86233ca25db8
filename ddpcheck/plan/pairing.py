"""Pairing: which host pairs ``bandwidth --pairwise`` measures together (pure).

The circle method (round-robin scheduling): every pair of hosts meets exactly once, and within a
round no host is in two pairs, so a round's pairs run at the same time without sharing a host.
n hosts take n-1 rounds when n is even (64 hosts: 63 rounds instead of 2016 runs one after
another) and n rounds when n is odd, each host sitting out one round (a bye).
"""

from __future__ import annotations

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
