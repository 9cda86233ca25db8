"""The numerics vote (pure, standard library only): which devices computed a product wrong.

Shared by the launcher's analysis of the preflight numerics check (``analyze.numerics``) and the
in-job canary (``injob.numerics``), so both apply one rule. Every rank ran the same products from
the same seed ``reps`` times per dtype and hashed each repetition's bit patterns; a rank's
result for one dtype is a ``DtypeResult``: how many repetitions gave each digest, how many held
a NaN or Inf, and how many were off a float64 reference by more than the dtype's error bound.

* Ranks of one *group* (same device model, driver and library versions) must agree bit for bit.
  With three or more in a group, the digest that a strict majority of them gives in most of
  their repetitions is the answer; every repetition of a rank that differs from it is wrong.
* A group too small to outvote (one or two ranks), or one with no majority: a rank whose own
  repetitions disagree has its minority repetitions wrong (deterministic algorithms give one
  answer), and the float64 reference decides between ranks that are each consistent.
* NaN or Inf in a repetition is wrong on its own, whatever the peers say.
"""

from __future__ import annotations

import enum
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Optional, Sequence

MIN_VOTERS = 3  # a group this large outvotes one bad rank; smaller ones use the reference


class Why(str, enum.Enum):
    """Why a device's repetitions were counted wrong."""

    PEERS = "differs from its peers bit for bit"
    ITSELF = "disagrees with its own repetitions"
    REFERENCE = "off the float64 reference beyond the dtype's error bound"
    NONFINITE = "NaN or Inf in the result"
    UNDECIDED = "disagrees with its one peer and the reference cannot tell which is right"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class DtypeResult:
    """One rank's repetitions of the products in one dtype."""

    reps: int
    digests: Mapping[str, int]  # digest -> repetitions that gave it
    nonfinite: int = 0  # repetitions with a NaN or Inf anywhere
    reference_bad: int = 0  # repetitions whose small product was off the float64 reference


@dataclass(frozen=True)
class RankNumerics:
    """One rank's products: where it is, which group it votes in, a result per dtype."""

    rank: Optional[int]
    host: str
    where: str  # "GPU 1 on h2 (uuid ..., bus ...)", for messages
    group: str  # device model + driver + library versions: who must agree bit for bit
    dtypes: Mapping[str, DtypeResult] = field(default_factory=dict)


@dataclass(frozen=True)
class WrongProducts:
    """A device that computed wrong in one dtype: ``wrong`` of ``reps`` repetitions."""

    rank: Optional[int]
    host: str
    where: str
    dtype: str
    wrong: int
    reps: int
    why: tuple[Why, ...]
    peers: int  # the other ranks of its group
    decisive: bool = True  # False: it and its one peer disagree and nothing tells which is right


def mode(result: DtypeResult) -> Optional[str]:
    """The digest of a strict majority of the rank's repetitions (None without one)."""
    if not result.digests:
        return None
    digest, count = max(result.digests.items(), key=lambda item: (item[1], item[0]))
    return digest if count * 2 > result.reps else None


def consensus(results: Sequence[DtypeResult]) -> Optional[str]:
    """The digest that a strict majority of a group's ranks give most of the time, when the
    group is large enough to outvote (``MIN_VOTERS``)."""
    if len(results) < MIN_VOTERS:
        return None
    votes = Counter(m for m in (mode(r) for r in results) if m is not None)
    if not votes:
        return None
    digest, count = votes.most_common(1)[0]
    return digest if count * 2 > len(results) else None


def odd_ones(ranks: Iterable[RankNumerics]) -> list[WrongProducts]:
    """Every (rank, dtype) whose products were wrong, by group and dtype (see the module)."""
    by_group: dict[tuple[str, str], list[RankNumerics]] = defaultdict(list)
    for rank in ranks:
        for dtype in rank.dtypes:
            by_group[(rank.group, dtype)].append(rank)
    wrong: list[WrongProducts] = []
    for (_, dtype), members in by_group.items():
        results = [m.dtypes[dtype] for m in members]
        agreed = consensus(results)
        modes = [mode(r) for r in results]
        # two consistent ranks with different answers: the reference decides, else neither is
        # named an error
        pair_split = (agreed is None and len(members) == 2 and None not in modes
                      and modes[0] != modes[1])
        for member, result, own in zip(members, results, modes):
            why: list[Why] = []
            count = 0
            if agreed is not None:
                off = result.reps - result.digests.get(agreed, 0)
                if off:
                    why.append(Why.PEERS)
                    count = off
            elif own is None and result.reps > 1:
                why.append(Why.ITSELF)
                count = result.reps
            elif own is not None and result.digests[own] < result.reps:
                why.append(Why.ITSELF)
                count = result.reps - result.digests[own]
            if result.reference_bad:
                why.append(Why.REFERENCE)
                count = max(count, result.reference_bad)
            if result.nonfinite:
                why.append(Why.NONFINITE)
                count = max(count, result.nonfinite)
            decisive = True
            if pair_split and not any(r.reference_bad or r.nonfinite for r in results):
                why.append(Why.UNDECIDED)
                count = max(count, result.reps)
                decisive = False
            if why:
                wrong.append(WrongProducts(member.rank, member.host, member.where, dtype,
                                           min(count, result.reps), result.reps, tuple(why),
                                           len(members) - 1, decisive))
    return sorted(wrong, key=lambda w: (w.host, w.rank if w.rank is not None else -1, w.dtype))


def dtype_result(raw: Mapping[str, Any]) -> Optional[DtypeResult]:
    """A ``DtypeResult`` from a record's JSON, None when it is not one."""
    digests = raw.get("digests")
    reps = raw.get("reps")
    if not isinstance(digests, dict) or not isinstance(reps, int) or reps <= 0:
        return None
    counts = {str(k): v for k, v in digests.items() if isinstance(v, int) and v > 0}
    return DtypeResult(reps, counts, _count(raw.get("nonfinite")),
                       _count(raw.get("reference_bad")))


def rank_numerics(rank: Optional[int], host: str, raw: Mapping[str, Any]) -> RankNumerics:
    """A ``RankNumerics`` from a rank's ``numerics`` record (missing fields are no results)."""
    products = raw.get("products") if isinstance(raw.get("products"), dict) else {}
    dtypes = {}
    for name, value in products.items():
        parsed = dtype_result(value) if isinstance(value, dict) else None
        if parsed is not None:
            dtypes[str(name)] = parsed
    return RankNumerics(rank, host, str(raw.get("where") or f"rank {rank} on {host}"),
                        str(raw.get("group") or ""), dtypes)


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0
