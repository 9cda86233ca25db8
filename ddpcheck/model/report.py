"""Report: the central result of a run, which every command returns and every renderer reads
(pure, standard library). ``report.table`` renders it as the table and the JSON report;
``report.machine`` and ``report.prometheus`` as CSV, JUnit and Prometheus metrics.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from .records import Finding, HostRecord, RankRecord, Verdict


@dataclass(frozen=True)
class Report:
    command: str
    verdict: Verdict
    exit_code: int
    duration_s: float
    backend: Optional[str]
    world_size: Optional[int]
    expected_world_size: Optional[int]
    hosts: tuple[HostRecord, ...]
    ranks: tuple[RankRecord, ...]
    findings: tuple[Finding, ...]
    source: str = ""
    master: Optional[str] = None
    collectives: tuple[dict[str, Any], ...] = field(default_factory=tuple)
    pairs: tuple[dict[str, Any], ...] = field(default_factory=tuple)  # bandwidth --pairwise
    stacks: Mapping[str, str] = field(default_factory=dict)  # hang: rank -> stack
    # Command-specific top-level JSON sections (never one of the keys above).
    extra: Mapping[str, Any] = field(default_factory=dict)
