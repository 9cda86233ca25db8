"""Bandwidth analysis: sweep rows and pair results -> findings and summaries.

Pure, on the launcher, between collect and report: the rows every rank measured
(``ddpcheck.remote.sweep``) or one result per host pair (``--pairwise``) become findings
(``bandwidth``, ``slow_link``); ``report.bandwidth`` renders them.

The outlier rule for pairs: the typical busbw is the median, over hosts, of each host's best
pair. A healthy host has at least one healthy partner, so this stays right when many pairs share
one slow host (a plain median over pairs would be dragged down by them). A pair is slow below
``slow_fraction`` x typical. When every pair of a host is slow (or failed), the host is the
suspect; a slow pair between two hosts that are fast with others names the link between them.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Iterable, Optional, Sequence

from ..core.busbw import (ELEMENT_TYPE, Collective, CollectiveRow, format_size, round_gbs,
                          row_from_dict)
from ..model.checks import Check
from ..model.records import Finding, RankRecord, RankStatus, Severity
from ..wire import find as find_record

DEFAULT_SLOW_FRACTION = 0.5
MIN_HOSTS_TO_COMPARE = 3  # with 2 hosts there is one pair and nothing to compare it with


def gbs(value: Optional[float]) -> str:
    """A bandwidth in GB/s with enough digits for 100 Mbit/s links and for NVLink alike."""
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:.1f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.4f}"


@dataclass(frozen=True)
class SweepSettings:
    """What the user asked the sweep for (echoed in the header and the JSON)."""

    ops: tuple[Collective, ...]
    sizes: tuple[int, ...]
    iters: int
    warmup: int
    min_busbw_gbs: Optional[float] = None
    pairwise: bool = False
    slow_fraction: float = DEFAULT_SLOW_FRACTION
    pairing: str = "all"  # with --pairwise: "adaptive" (the CLI's default) or "all" (every pair)

    def to_dict(self) -> dict[str, Any]:
        return {"ops": [op.value for op in self.ops], "sizes": list(self.sizes),
                "iters": self.iters, "warmup": self.warmup, "type": ELEMENT_TYPE,
                "min_busbw_gbs": self.min_busbw_gbs, "pairwise": self.pairwise,
                **({"pairing": self.pairing} if self.pairwise else {}),
                "slow_fraction": self.slow_fraction}


# -- the all-host sweep ------------------------------------------------------------------------


def streamed_row(line: str) -> Optional[CollectiveRow]:
    """A row rank 0 printed as it measured it (``@@DDPCHECK row {json}``, from
    ``remote.sweep``); None for any other line, or a garbled one."""
    record = find_record(line)
    if record is None or record[0] != "row":
        return None
    try:
        return row_from_dict(json.loads(record[1]))
    except ValueError:
        return None


def rows_of(collectives: Iterable[Any]) -> list[CollectiveRow]:
    """The readable rows among a report's ``collectives``."""
    return [row for row in map(row_from_dict, collectives) if row is not None]


def average_busbw(rows: Sequence[CollectiveRow]) -> Optional[float]:
    """nccl-tests' "Avg bus bandwidth": the mean busbw over every row (all ops and sizes)."""
    return statistics.fmean(r.busbw_gbs for r in rows) if rows else None


def check_result(value: Optional[float], minimum: Optional[float]) -> Optional[str]:
    """OK / FAILED against --min-busbw; None when no minimum was given. Nothing measured fails."""
    if minimum is None:
        return None
    return "OK" if value is not None and value >= minimum else "FAILED"


def sweep_summary(rows: Sequence[CollectiveRow], settings: SweepSettings) -> dict[str, Any]:
    """The footer's numbers, also the JSON report's ``bandwidth`` section."""
    average = average_busbw(rows)
    peaks = {}
    for op in settings.ops:
        own = [r for r in rows if r.op is op]
        if own:
            best = max(own, key=lambda r: r.busbw_gbs)
            peaks[op.value] = {"busbw_gbs": round_gbs(best.busbw_gbs), "bytes": best.nbytes}
    return {**settings.to_dict(),
            "avg_busbw_gbs": None if average is None else round_gbs(average),
            "out_of_bounds": sum(r.wrong for r in rows),
            "check": check_result(average, settings.min_busbw_gbs),
            "peak": peaks}


def sweep_findings(rows: Sequence[CollectiveRow], settings: SweepSettings) -> list[Finding]:
    findings = []
    for row in rows:
        if row.wrong:
            findings.append(Finding(
                Severity.ERROR, Check.BANDWIDTH,
                f"{row.op.value} at {format_size(row.nbytes)}B over {row.world_size} ranks: "
                f"{row.wrong} wrong element(s) in the result (summed over ranks)"))
    average = average_busbw(rows)
    if settings.min_busbw_gbs is not None and rows and check_result(
            average, settings.min_busbw_gbs) == "FAILED":
        peak = max(rows, key=lambda r: r.busbw_gbs)
        findings.append(Finding(
            Severity.ERROR, Check.BANDWIDTH,
            f"average busbw {gbs(average)} GB/s over {len(rows)} row(s) is below --min-busbw "
            f"{gbs(settings.min_busbw_gbs)} GB/s (best: {peak.op.value} "
            f"{gbs(peak.busbw_gbs)} GB/s at {format_size(peak.nbytes)}B)"))
    return findings


def gang_sweep_findings(host_failures: dict[str, str], ranks: Sequence[RankRecord],
                        rows: Sequence[CollectiveRow]) -> list[Finding]:
    """``preflight --in-job --bandwidth``: the sweep ran after the probe passed on every rank,
    so what failed in it is the sweep's own: a host whose sweep failed as a whole, a rank
    whose sweep failed, no row measured at all (each an error)."""
    findings = [Finding(Severity.ERROR, Check.BANDWIDTH, f"the bandwidth sweep failed: {why}",
                        host=host) for host, why in host_failures.items()]
    findings += [Finding(Severity.ERROR, Check.BANDWIDTH,
                         f"the bandwidth sweep failed on rank {r.rank}: "
                         f"{r.error or r.status.value}", host=r.host, rank=r.rank)
                 for r in ranks if r.status is not RankStatus.OK]
    if not rows and not findings:
        findings.append(Finding(Severity.ERROR, Check.BANDWIDTH,
                                "the bandwidth sweep measured no row"))
    return findings


# -- pairwise ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class PairResult:
    """One host pair's 2-rank job: its row at the largest size, or why there is none."""

    hosts: tuple[str, str]
    round: int  # 1-based
    row: Optional[CollectiveRow] = None
    error: Optional[str] = None
    check: Check = Check.BANDWIDTH  # the check the error belongs to (rendezvous, timeout, ...)
    duration_s: float = 0.0

    @property
    def busbw_gbs(self) -> Optional[float]:
        return None if self.row is None else self.row.busbw_gbs

    def to_dict(self, slow: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = {"hosts": list(self.hosts),
                                "busbw_gbs": None if self.row is None
                                else round_gbs(self.row.busbw_gbs)}
        if self.row is not None:
            row = self.row.to_dict()
            data.update({key: row[key] for key in ("op", "bytes", "time_us", "algbw_gbs",
                                                   "wrong")})
        data.update({"round": self.round, "slow": slow, "error": self.error,
                     "duration_s": round(self.duration_s, 3)})
        return data


@dataclass(frozen=True)
class PairAnalysis:
    reference_gbs: Optional[float]  # typical busbw: median over hosts of each host's best pair
    threshold_gbs: Optional[float]  # below this a pair is slow
    slow: frozenset[tuple[str, str]]
    suspect_hosts: tuple[str, ...]
    suspect_links: tuple[tuple[str, str], ...]


def analyze_pairs(hosts: Sequence[str], pairs: Sequence[PairResult],
                  slow_fraction: float = DEFAULT_SLOW_FRACTION) -> PairAnalysis:
    """The outlier rule (see the module docstring)."""
    best: dict[str, float] = {}
    for pair in pairs:
        if pair.busbw_gbs is None:
            continue
        for host in pair.hosts:
            best[host] = max(best.get(host, 0.0), pair.busbw_gbs)
    if len(best) < MIN_HOSTS_TO_COMPARE:
        return PairAnalysis(None, None, frozenset(), (), ())
    reference = statistics.median(best.values())
    threshold = slow_fraction * reference
    slow = frozenset(p.hosts for p in pairs
                     if p.busbw_gbs is not None and p.busbw_gbs < threshold)
    by_host: dict[str, list[PairResult]] = defaultdict(list)
    for pair in pairs:
        for host in pair.hosts:
            by_host[host].append(pair)
    suspects = tuple(host for host in hosts if by_host.get(host)
                     and any(p.hosts in slow for p in by_host[host])
                     and all(p.hosts in slow or p.busbw_gbs is None for p in by_host[host]))
    links = tuple(p.hosts for p in pairs
                  if p.hosts in slow and not set(p.hosts) & set(suspects))
    return PairAnalysis(reference, threshold, slow, suspects, links)


def pair_findings(hosts: Sequence[str], pairs: Sequence[PairResult], settings: SweepSettings,
                  rounds: int) -> list[Finding]:
    analysis = analyze_pairs(hosts, pairs, settings.slow_fraction)
    findings: list[Finding] = []
    for pair in pairs:
        if pair.error is not None:
            findings.append(Finding(Severity.ERROR, pair.check,
                                    f"pair {pair_name(pair.hosts)}: {pair.error}"))
        elif pair.row is not None and pair.row.wrong:
            findings.append(Finding(
                Severity.ERROR, Check.BANDWIDTH,
                f"pair {pair_name(pair.hosts)}: {pair.row.op.value} gave {pair.row.wrong} "
                f"wrong element(s)"))
    ref = analysis.reference_gbs
    for host in analysis.suspect_hosts:
        own = [p for p in pairs if host in p.hosts]
        values = [p.busbw_gbs for p in own if p.busbw_gbs is not None]
        failed = sum(1 for p in own if p.busbw_gbs is None)
        low, high = gbs(min(values)), gbs(max(values))
        spread = low if low == high else f"{low}-{high}"
        findings.append(Finding(
            Severity.ERROR, Check.SLOW_LINK,
            f"{host}: every pair with {host} is slow (busbw {spread} GB/s"
            + (f", {failed} failed" if failed else "")
            + f"; typical {gbs(ref)} GB/s): {host} is the suspect (its NIC, cable, switch "
              f"port or load), not its partners", host=host))
    for link in analysis.suspect_links:
        pair = next(p for p in pairs if p.hosts == link)
        findings.append(Finding(
            Severity.ERROR, Check.SLOW_LINK,
            f"link {pair_name(link)}: busbw {gbs(pair.busbw_gbs)} GB/s, below "
            f"{settings.slow_fraction:g} x the typical {gbs(ref)} GB/s, while {link[0]} and "
            f"{link[1]} are fast with other hosts: the path between them is the suspect"))
    measured = [p for p in pairs if p.busbw_gbs is not None]
    minimum = settings.min_busbw_gbs
    if minimum is not None:
        below = sorted((p for p in measured if p.busbw_gbs < minimum),
                       key=lambda p: p.busbw_gbs or 0.0)
        if below:
            worst = ", ".join(f"{pair_name(p.hosts)} {gbs(p.busbw_gbs)}" for p in below[:5])
            findings.append(Finding(
                Severity.ERROR, Check.BANDWIDTH,
                f"{len(below)} of {len(measured)} pair(s) below --min-busbw {gbs(minimum)} "
                f"GB/s: {worst}{' ...' if len(below) > 5 else ''}"))
    if measured:
        low = min(measured, key=lambda p: p.busbw_gbs or 0.0)
        high = max(measured, key=lambda p: p.busbw_gbs or 0.0)
        median = statistics.median(p.busbw_gbs or 0.0 for p in measured)
        compare = ("" if ref is not None else
                   f"; with fewer than {MIN_HOSTS_TO_COMPARE} hosts there is nothing to compare "
                   f"a pair with (use --min-busbw)")
        findings.append(Finding(
            Severity.INFO, Check.SLOW_LINK,
            f"{len(measured)} of {len(pairs)} pair(s) measured in {rounds} round(s): busbw "
            f"median {gbs(median)} GB/s, lowest {gbs(low.busbw_gbs)} ({pair_name(low.hosts)}), "
            f"highest {gbs(high.busbw_gbs)} ({pair_name(high.hosts)}){compare}"))
    return findings


def pairs_summary(pairs: Sequence[PairResult], hosts: Sequence[str],
                  settings: SweepSettings, rounds: int) -> dict[str, Any]:
    analysis = analyze_pairs(hosts, pairs, settings.slow_fraction)
    measured = [p.busbw_gbs for p in pairs if p.busbw_gbs is not None]
    lowest = min(measured) if measured else None
    return {**settings.to_dict(), "rounds": rounds, "pairs_measured": len(measured),
            "avg_busbw_gbs": round_gbs(statistics.fmean(measured)) if measured else None,
            "typical_busbw_gbs": None if analysis.reference_gbs is None
            else round_gbs(analysis.reference_gbs),
            "slow_threshold_gbs": None if analysis.threshold_gbs is None
            else round_gbs(analysis.threshold_gbs),
            "suspect_hosts": list(analysis.suspect_hosts),
            "suspect_links": [list(link) for link in analysis.suspect_links],
            "check": check_result(lowest, settings.min_busbw_gbs),
            "hosts_order": list(hosts)}


def pairs_json(pairs: Sequence[PairResult], hosts: Sequence[str],
               slow_fraction: float) -> tuple[dict[str, Any], ...]:
    slow = analyze_pairs(hosts, pairs, slow_fraction).slow
    return tuple(p.to_dict(slow=p.hosts in slow) for p in pairs)


def pair_name(hosts: tuple[str, str] | Sequence[str]) -> str:
    return f"{hosts[0]}-{hosts[1]}"
