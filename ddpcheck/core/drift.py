"""Drift: per-rank fingerprints -> what differs across ranks, as findings and a value table.

Core: pure, standard library and the model's records only. Used by preflight's analysis
(fingerprints from the probe's records) and by the in-job ``check_consistency`` (fingerprints
from one gather). For every compared key the ranks are grouped by value; the group holding the
most ranks (on a tie, rank 0's) is taken as the reference and every other group is named, host
and ranks, as the odd one out.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional, Sequence

from ..model.checks import Check
from ..model.records import Finding, Severity

VERSION_KEYS = ("python", "torch", "cuda", "cudnn", "nccl", "driver")
UNSET = "(unset)"
# Environment differences that are usual between healthy nodes: a warning, not an error.
ENV_WARNING_ONLY = frozenset({"CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "MKL_NUM_THREADS"})


@dataclass(frozen=True)
class RankPrint:
    """One rank's fingerprint: ``versions``, ``settings``, ``env``, ``rng``, ``model``, ``ddp``
    (any may be missing)."""

    rank: int
    host: str
    data: Mapping[str, Any]


@dataclass(frozen=True)
class Difference:
    """One key whose value is not the same on every rank; ``groups`` has the reference first."""

    check: Check
    key: str
    severity: Severity
    groups: tuple[tuple[str, tuple[int, ...]], ...]
    what: str = ""  # how to say the key in a sentence, e.g. "torch version"
    detail: str = ""  # appended to the message (why it matters, what DDP does about it)


def group_ranks(values: Mapping[int, Any]) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """Ranks grouped by value (as text), the reference group first, then by lowest rank."""
    groups: dict[str, list[int]] = defaultdict(list)
    for rank in sorted(values):
        groups[_text(values[rank])].append(rank)
    ordered = sorted(groups.items(), key=lambda item: (-len(item[1]), item[1][0]))
    return tuple((value, tuple(ranks)) for value, ranks in ordered)


def _text(value: Any) -> str:
    if value is None:
        return UNSET
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True)


def compare(prints: Sequence[RankPrint], check: Check, key: str, value_of,
            severity: Severity = Severity.ERROR, what: str = "",
            detail: str = "") -> Optional[Difference]:
    values = {p.rank: value_of(p.data) for p in prints}
    groups = group_ranks(values)
    if len(groups) < 2:
        return None
    return Difference(check, key, severity, groups, what or key, detail)


def _section(data: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = data.get(name)
    return value if isinstance(value, Mapping) else {}


# -- the comparisons -------------------------------------------------------------------------
def version_differences(prints: Sequence[RankPrint]) -> list[Difference]:
    found = []
    for key in VERSION_KEYS:
        diff = compare(prints, Check.VERSIONS, key, lambda d, k=key: _section(d, "versions").get(k),
                       what=f"{key} version")
        if diff:
            found.append(diff)
    return found


def setting_differences(prints: Sequence[RankPrint]) -> list[Difference]:
    keys = sorted({k for p in prints for k in _section(p.data, "settings")})
    found = []
    for key in keys:
        check, severity = ((Check.DTYPE, Severity.ERROR) if key == "default_dtype"
                           else (Check.ENV_DRIFT, Severity.WARNING))
        diff = compare(prints, check, key, lambda d, k=key: _section(d, "settings").get(k),
                       severity, what=key.replace("_", " "))
        if diff:
            found.append(diff)
    return found


def env_differences(prints: Sequence[RankPrint]) -> list[Difference]:
    names = sorted({n for p in prints for n in _section(p.data, "env")})
    found = []
    for name in names:
        severity = Severity.WARNING if name in ENV_WARNING_ONLY else Severity.ERROR
        diff = compare(prints, Check.ENV_DRIFT, name,
                       lambda d, n=name: _section(d, "env").get(n), severity)
        if diff:
            found.append(diff)
    return found


def rng_differences(prints: Sequence[RankPrint],
                    soft: frozenset[str] = frozenset()) -> list[Difference]:
    """RNG state hashes; one difference per generator that disagrees (a warning for the
    generators in ``soft``)."""
    found = []
    for generator in ("python", "numpy", "torch", "cuda"):
        severity = Severity.WARNING if generator in soft else Severity.ERROR
        diff = compare(prints, Check.SEED, generator,
                       lambda d, g=generator: _section(d, "rng").get(g), severity,
                       what=f"{generator} RNG state",
                       detail="ranks were seeded differently (e.g. seed + rank), or one rank "
                              "drew random numbers the others did not")
        if diff:
            found.append(diff)
    return found


def model_differences(prints: Sequence[RankPrint], section: str = "model",
                      checksum_severity: Severity = Severity.ERROR,
                      checksum_detail: str = "") -> list[Difference]:
    """Step, optimizer step, then the parameter list: names and shapes, dtypes, and the
    checksum of the first parameter that differs (the first is where to look)."""
    found = []
    for key, what in (("step", "training step"), ("optimizer_step", "optimizer step")):
        diff = compare(prints, Check.STEP, key, lambda d, k=key: _section(d, section).get(k),
                       what=what, detail="a rank skipped or repeated a step")
        if diff:
            found.append(diff)
    tables = {p.rank: _params(_section(p.data, section)) for p in prints}
    layout = compare(prints, Check.PARAMS, "parameters",
                     lambda d: [[r[0], r[2]] for r in _params(_section(d, section))],
                     what="parameter names and shapes")
    if layout:
        return found + [layout]
    count = min((len(t) for t in tables.values()), default=0)
    for column, check, severity, detail in (
            (1, Check.DTYPE, Severity.ERROR, "mixed dtypes across replicas"),
            (3, Check.PARAMS, checksum_severity, checksum_detail)):
        for index in range(count):
            name = tables[prints[0].rank][index][0]
            diff = compare(prints, check, name,
                           lambda d, i=index, c=column: _params(_section(d, section))[i][c],
                           checksum_severity if check == "params" else severity,
                           what=f"{'dtype' if column == 1 else 'checksum'} of parameter "
                                f"{name!r}", detail=detail)
            if diff:
                found.append(diff)
                break  # the first differing parameter names the problem
        if found and found[-1].check is Check.DTYPE:
            break  # checksums of mixed dtypes differ anyway: the dtype is the news
    return found


def _params(model: Mapping[str, Any]) -> list[list[Any]]:
    rows = model.get("params")
    if not isinstance(rows, list):
        return []
    return [row for row in rows if isinstance(row, list) and len(row) == 4]


# -- words -----------------------------------------------------------------------------------
# Past this many hosts a place is said as the first few hosts and a count of the rest (a
# reference value held by 8,000 ranks would otherwise fill a screen).
WHERE_MAX_HOSTS = 8


def where(ranks: Iterable[int], host_of: Mapping[int, str]) -> str:
    """'h2 (ranks 2, 3)' / 'rank 1 (h1)': hosts first, the way a user looks for them; many
    hosts: 'h1 (ranks 0, 1), h2 (ranks 2, 3), ... and 1019 more hosts (8152 ranks)'."""
    by_host: dict[str, list[int]] = defaultdict(list)
    for rank in sorted(ranks):
        by_host[host_of.get(rank, "?")].append(rank)
    parts = []
    shown = 0
    for host, own in by_host.items():
        if len(by_host) > WHERE_MAX_HOSTS and len(parts) == 3:
            rest = sum(len(r) for r in by_host.values()) - shown
            parts.append(f"... and {len(by_host) - 3} more hosts ({rest} ranks)")
            break
        label = "rank" if len(own) == 1 else "ranks"
        parts.append(f"{host} ({label} {_runs(own)})")
        shown += len(own)
    return ", ".join(parts)


def _runs(ranks: Sequence[int]) -> str:
    """'0, 1' / '8-15' (a run of three or more consecutive ranks as a range)."""
    parts: list[str] = []
    start = 0
    for index in range(1, len(ranks) + 1):
        if index == len(ranks) or ranks[index] != ranks[index - 1] + 1:
            run = ranks[start:index]
            parts += [f"{run[0]}-{run[-1]}"] if len(run) >= 3 else [str(r) for r in run]
            start = index
    return ", ".join(parts)


def finding(diff: Difference, host_of: Mapping[int, str]) -> Finding:
    (reference, reference_ranks), *odd = diff.groups
    odd_ranks = [r for _, ranks in odd for r in ranks]
    odd_hosts = {host_of.get(r) for r in odd_ranks}
    if len(diff.groups) == len(host_of) > 2 and all(len(g[1]) == 1 for g in diff.groups):
        said = f"{diff.what} differs on every rank ({len(diff.groups)} distinct values)"
    else:
        shown = "; ".join(f"{value} on {where(ranks, host_of)}" for value, ranks in odd)
        said = (f"{diff.what} differs: {shown}; {reference} on "
                f"{where(reference_ranks, host_of)}")
    if diff.detail:
        said += f" ({diff.detail})"
    return Finding(diff.severity, diff.check, said,
                   host=next(iter(odd_hosts)) if len(odd_hosts) == 1 else None,
                   rank=odd_ranks[0] if len(odd_ranks) == 1 else None)


def value_rows(diffs: Sequence[Difference], host_of: Mapping[int, str]) -> list[dict[str, Any]]:
    """The host-by-value table: a row per value of each differing key, the reference first."""
    rows = []
    for diff in diffs:
        for index, (value, ranks) in enumerate(diff.groups):
            rows.append({"check": diff.check, "key": diff.key, "value": value,
                         "hosts": sorted({host_of.get(r, "?") for r in ranks}),
                         "ranks": list(ranks), "reference": index == 0})
    return rows


def all_differences(prints: Sequence[RankPrint], seeded: bool) -> list[Difference]:
    """Preflight's comparisons, in the order a user should read them."""
    diffs = version_differences(prints) + setting_differences(prints) + env_differences(prints)
    if seeded:
        diffs += rng_differences(prints)
    diffs += ddp_differences(prints)
    return diffs


def ddp_differences(prints: Sequence[RankPrint]) -> list[Difference]:
    """The tiny DDP run: parameters before DDP (a warning: DDP broadcasts rank 0's), then
    after each step (an error: replicas diverged), then step agreement."""
    started = [p for p in prints if _section(p.data, "ddp")]
    if not started:
        return []
    start_prints = [RankPrint(p.rank, p.host, {"model": _section(p.data, "ddp").get("start")
                                               or {}}) for p in started]
    diffs = model_differences(start_prints, checksum_severity=Severity.WARNING,
                              checksum_detail="before DDP wrapped the model: DDP broadcasts "
                                              "rank 0's parameters, so training still starts "
                                              "equal, but the ranks' model set-up differs")
    diffs = [d for d in diffs if d.check is not Check.STEP]
    if any(d.check in (Check.DTYPE, Check.PARAMS) and d.severity is Severity.ERROR for d in diffs):
        return diffs  # the run was skipped: mixed layouts or dtypes cannot be trained together
    steps = max((len(_section(p.data, "ddp").get("after") or []) for p in started), default=0)
    for index in range(steps):
        after = [RankPrint(p.rank, p.host, {"model": _nth(_section(p.data, "ddp").get("after"),
                                                          index)}) for p in started]
        step_diffs = model_differences(after, checksum_detail=f"after DDP step {index + 1}: "
                                                              "the replicas diverged")
        if step_diffs:
            return diffs + step_diffs
    return diffs


def _nth(items: Any, index: int) -> Mapping[str, Any]:
    if isinstance(items, list) and index < len(items) and isinstance(items[index], Mapping):
        return items[index]
    return {}
