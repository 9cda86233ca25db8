"""Analyze the preflight compute check (pure): ranks far below their peers are stragglers.

Each rank's record carries ``compute`` (device model, where it is, metrics: higher is better);
``core.straggler.slow_devices`` compares each with the median of the ranks with the same
device model, the same comparison the in-job Monitor and ``ddpcheck hang`` make of step times.
"""

from __future__ import annotations

from typing import Sequence

from ..model.checks import Check
from ..model.records import Finding, RankRecord, Severity
from ..core.straggler import COMPUTE_MIN_PEERS as MIN_PEERS
from ..core.straggler import COMPUTE_SLOW_FRACTION as SLOW_FRACTION
from ..core.straggler import slow_devices


def compute_findings(ranks: Sequence[RankRecord], fraction: float = SLOW_FRACTION,
                     min_peers: int = MIN_PEERS) -> list[Finding]:
    results = [{"rank": r.rank, "host": r.host, **r.compute} for r in ranks
               if r.compute and r.compute.get("metrics")]
    by_rank: dict[tuple, list] = {}
    for slow in slow_devices(results, fraction, min_peers):
        by_rank.setdefault((slow.rank, slow.host), []).append(slow)
    findings = []
    for (rank, host), slows in sorted(by_rank.items(), key=lambda item: (str(item[0][1]),
                                                                          item[0][0] or 0)):
        worst = min(slows, key=lambda s: s.ratio)
        others = "; ".join(f"{s.ratio:.2f}x the median {s.metric}" for s in slows
                           if s is not worst)
        findings.append(Finding(Severity.WARNING, Check.STRAGGLER,
                                worst.message() + (f"; {others}" if others else ""),
                                host=host, rank=rank))
    return findings
