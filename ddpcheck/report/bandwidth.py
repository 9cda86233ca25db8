"""Bandwidth analysis and rendering: sweep rows and pair results -> findings, tables, plots.

Pure, between collect and the report: ``bandwidth_run`` gathers the rows every rank measured
(``ddpcheck.remote.sweep``) or one result per host pair (``--pairwise``); this module turns them into
findings (``bandwidth``, ``slow_link``), the nccl-tests style text and, on request, a PNG
(matplotlib, imported only when a plot is asked for).

The outlier rule for pairs: the typical busbw is the median, over hosts, of each host's best
pair. A healthy host has at least one healthy partner, so this stays right when many pairs share
one slow host (a plain median over pairs would be dragged down by them). A pair is slow below
``slow_fraction`` x typical. When every pair of a host is slow (or failed), the host is the
suspect; a slow pair between two hosts that are fast with others names the link between them.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional, Sequence

from ..remote.busbw import (ELEMENT_TYPE, Collective, CollectiveRow, format_size, round_gbs,
                    row_from_dict)
from ..model.errors import DdpcheckError
from ..model.records import Finding, Severity
from .table import Report, findings_lines, footer_line, header_lines

DEFAULT_SLOW_FRACTION = 0.5
MIN_HOSTS_TO_COMPARE = 3  # with 2 hosts there is one pair and nothing to compare it with
PLOT_INSTALL_HINT = "pip install 'ddpcheck[plot]'"
_REDOP = {Collective.ALL_REDUCE: "sum", Collective.REDUCE_SCATTER: "sum"}


class PlotUnavailable(DdpcheckError):
    """--plot was asked for but matplotlib cannot be imported."""


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
                Severity.ERROR, "bandwidth",
                f"{row.op.value} at {format_size(row.nbytes)}B over {row.world_size} ranks: "
                f"{row.wrong} wrong element(s) in the result (summed over ranks)"))
    average = average_busbw(rows)
    if settings.min_busbw_gbs is not None and rows and check_result(
            average, settings.min_busbw_gbs) == "FAILED":
        peak = max(rows, key=lambda r: r.busbw_gbs)
        findings.append(Finding(
            Severity.ERROR, "bandwidth",
            f"average busbw {gbs(average)} GB/s over {len(rows)} row(s) is below --min-busbw "
            f"{gbs(settings.min_busbw_gbs)} GB/s (best: {peak.op.value} "
            f"{gbs(peak.busbw_gbs)} GB/s at {format_size(peak.nbytes)}B)"))
    return findings


# -- pairwise ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class PairResult:
    """One host pair's 2-rank job: its row at the largest size, or why there is none."""

    hosts: tuple[str, str]
    round: int  # 1-based
    row: Optional[CollectiveRow] = None
    error: Optional[str] = None
    check: str = "bandwidth"  # the check the error belongs to (rendezvous, timeout, ...)
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
                Severity.ERROR, "bandwidth",
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
            Severity.ERROR, "slow_link",
            f"{host}: every pair with {host} is slow (busbw {spread} GB/s"
            + (f", {failed} failed" if failed else "")
            + f"; typical {gbs(ref)} GB/s): {host} is the suspect (its NIC, cable, switch "
              f"port or load), not its partners", host=host))
    for link in analysis.suspect_links:
        pair = next(p for p in pairs if p.hosts == link)
        findings.append(Finding(
            Severity.ERROR, "slow_link",
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
                Severity.ERROR, "bandwidth",
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
            Severity.INFO, "slow_link",
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


# -- rendering ----------------------------------------------------------------------------------


def gbs(value: Optional[float]) -> str:
    """A bandwidth in GB/s with enough digits for 100 Mbit/s links and for NVLink alike."""
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:.1f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.4f}"


def render_bandwidth(report: Report) -> str:
    """The nccl-tests style text of a ``bandwidth`` report (sweep or pairwise)."""
    summary: Mapping[str, Any] = report.extra.get("bandwidth", {})
    lines = header_lines(report)
    lines.insert(-1, parameters_line(summary))
    if summary.get("pairwise"):
        matrix = summary.get("pairing") == "all" and len(summary.get("hosts_order") or []) \
            <= MATRIX_MAX_HOSTS
        lines += (pair_matrix_lines if matrix else pair_list_lines)(summary, report.pairs)
        lines += pairs_footer(summary)
    else:
        lines += rank_lines(report)
        rows = rows_of(report.collectives)
        for op in [Collective(name) for name in summary.get("ops", [])]:
            if rows:
                lines += op_table(op, [r for r in rows if r.op is op])
        if not rows:
            lines += ["# no rows measured", "#"]
        lines += sweep_footer(summary)
    lines.append("#")
    lines += findings_lines(report.findings)
    lines.append(footer_line(report))
    return "\n".join(lines) + "\n"


def parameters_line(summary: Mapping[str, Any]) -> str:
    sizes = summary.get("sizes") or []
    if summary.get("pairwise"):
        span = f"size {format_size(sizes[-1])}B per pair" if sizes else "no sizes"
        if summary.get("ports"):
            low, high = summary["ports"]
            span += (f"  pair masters: first host, port {low}" if low == high
                     else f"  pair masters: first host, ports {low}-{high}")
    elif sizes:
        span = (f"sizes {format_size(sizes[0])}B..{format_size(sizes[-1])}B "
                f"({len(sizes)} size(s))")
    else:
        span = "no sizes"
    minimum = summary.get("min_busbw_gbs")
    return (f"# ops {','.join(summary.get('ops', []))}  {span}  type {ELEMENT_TYPE}  "
            f"iters {summary.get('iters')}  warmup {summary.get('warmup')}"
            + (f"  min busbw {gbs(minimum)} GB/s" if minimum is not None else ""))


def rank_lines(report: Report) -> list[str]:
    """nccl-tests' rank lines: ``#  Rank  0 Pid 4242 on node01 device cuda:0 [bus] name``."""
    lines: list[str] = []
    if not report.ranks:
        return lines
    for rank in report.ranks:
        device = rank.device
        if rank.gpu_bus_id:
            device += f" [{rank.gpu_bus_id}]"
        if rank.gpu_name:
            device += f" {rank.gpu_name}"
        status = "" if rank.status.value == "ok" else f"  {rank.status.value} ({rank.stage})"
        rank_text = "?" if rank.rank is None else str(rank.rank)
        lines.append(f"#  Rank {rank_text:>3} Pid {rank.pid or '?':>7} on {rank.host:>10} "
                     f"(hostname {rank.hostname or '?'}) device {device}{status}")
    lines.append("#")
    return lines


_TABLE_HEAD = ("#", "size", "count", "type", "redop", "root", "time", "algbw", "busbw",
               "#wrong")
_TABLE_UNITS = ("#", "(B)", "(elements)", "", "", "", "(us)", "(GB/s)", "(GB/s)", "")
_WIDTHS = (1, 12, 12, 6, 6, 5, 11, 9, 9, 7)


def _table_line(cells: Sequence[str]) -> str:
    return "".join(cell.rjust(width) if index else cell
                   for index, (cell, width) in enumerate(zip(cells, _WIDTHS))).rstrip()


def op_table(op: Collective, rows: Sequence[CollectiveRow]) -> list[str]:
    world = rows[0].world_size if rows else None
    lines = [f"# {op.value}" + (f" over {world} ranks" if world else "")
             + ("" if rows else ": no rows measured"),
             _table_line(_TABLE_HEAD), _table_line(_TABLE_UNITS)]
    for row in sorted(rows, key=lambda r: r.nbytes):
        root = "0" if op is Collective.BROADCAST else "-1"
        lines.append(_table_line((" ", str(row.nbytes), str(row.count), ELEMENT_TYPE,
                                  _REDOP.get(op, "none"), root, f"{row.time_s * 1e6:.1f}",
                                  gbs(row.algbw_gbs), gbs(row.busbw_gbs), str(row.wrong))))
    lines.append("#")
    return lines


def sweep_footer(summary: Mapping[str, Any]) -> list[str]:
    wrong = summary.get("out_of_bounds", 0)
    lines = [f"# Out of bounds values : {wrong} {'OK' if not wrong else 'FAILED'}",
             f"# Avg bus bandwidth    : {gbs(summary.get('avg_busbw_gbs'))} GB/s"]
    peaks = summary.get("peak") or {}
    if peaks:
        lines.append("# Peak bus bandwidth   : " + ", ".join(
            f"{op} {gbs(p['busbw_gbs'])} at {format_size(p['bytes'])}B"
            for op, p in peaks.items()))
    if summary.get("check") is not None:
        lines.append(f"# Min bus bandwidth    : {gbs(summary.get('min_busbw_gbs'))} GB/s "
                     f"(--min-busbw): {summary['check']}")
    return lines


def pair_matrix_lines(summary: Mapping[str, Any], pairs: Sequence[Mapping[str, Any]]) -> list[str]:
    """The host-by-host busbw matrix: ``*`` marks a slow pair, ``fail`` a pair with no result,
    ``n/a`` a pair not measured (a host left out, or the run cut short)."""
    hosts = list(summary.get("hosts_order") or [])
    cell: dict[tuple[str, str], str] = {}
    for pair in pairs:
        a, b = pair["hosts"]
        text = "fail" if pair.get("busbw_gbs") is None else gbs(pair["busbw_gbs"])
        if pair.get("slow"):
            text += "*"
        cell[(a, b)] = cell[(b, a)] = text
    typical = summary.get("typical_busbw_gbs")
    lines = [f"# Pairwise busbw (GB/s), {','.join(summary.get('ops', []))}, one rank per host, "
             f"{summary.get('rounds', 0)} round(s) of concurrent pairs"
             + (f"; * = slow, below {summary.get('slow_fraction'):g} x typical "
                f"{gbs(typical)} GB/s" if typical is not None else "")]
    width = max([len(h) for h in hosts] + [8]) + 2
    lines.append("host".ljust(width) + "".join(h.rjust(width) for h in hosts))
    for a in hosts:
        lines.append(a.ljust(width) + "".join(
            ("-" if a == b else cell.get((a, b), "n/a")).rjust(width) for b in hosts))
    lines.append("#")
    return lines


MATRIX_MAX_HOSTS = 16  # past this (or with adaptive pairing) the pairs are listed, not a matrix
PAIRS_LISTED = 8  # fine pairs of round 1 past this are summed up in one line


def pair_list_lines(summary: Mapping[str, Any], pairs: Sequence[Mapping[str, Any]]) -> list[str]:
    """The pairs as a list: slow and failed pairs and every re-pairing (rounds 2+) on lines of
    their own, the fine pairs of round 1 in one line when there are many."""
    typical = summary.get("typical_busbw_gbs")
    lines = [f"# Pairwise busbw (GB/s), {','.join(summary.get('ops', []))}, one rank per host, "
             f"{summary.get('rounds', 0)} round(s) of concurrent pairs "
             f"({summary.get('pairing', 'adaptive')})"
             + (f"; * = slow, below {summary.get('slow_fraction'):g} x typical "
                f"{gbs(typical)} GB/s" if typical is not None else "")]
    plain = [p for p in pairs if p.get("round") == 1 and not p.get("slow")
             and p.get("busbw_gbs") is not None]
    folded = plain if len(pairs) > PAIRS_LISTED else []
    shown = [p for p in pairs if not any(p is q for q in folded)]
    shown.sort(key=lambda p: (p.get("round", 0), not p.get("slow"), p.get("busbw_gbs") or 0))
    width = max([len(pair_name(p["hosts"])) for p in shown] + [8]) + 2
    lines.append("pair".ljust(width) + "round".rjust(7) + "busbw".rjust(12))
    for pair in shown:
        text = "fail" if pair.get("busbw_gbs") is None else gbs(pair["busbw_gbs"])
        lines.append(pair_name(pair["hosts"]).ljust(width) + str(pair.get("round")).rjust(7)
                     + (text + ("*" if pair.get("slow") else "")).rjust(12))
    if folded:
        values = [p["busbw_gbs"] for p in folded]
        lines.append(f"# and {len(folded)} more pair(s) of round 1, none slow: busbw "
                     f"{gbs(min(values))}-{gbs(max(values))} GB/s")
    lines.append("#")
    return lines


def pairs_footer(summary: Mapping[str, Any]) -> list[str]:
    lines = [f"# Avg bus bandwidth    : {gbs(summary.get('avg_busbw_gbs'))} GB/s over "
             f"{summary.get('pairs_measured', 0)} pair(s)"]
    if summary.get("check") is not None:
        lines.append(f"# Min bus bandwidth    : {gbs(summary.get('min_busbw_gbs'))} GB/s "
                     f"(--min-busbw, every pair): {summary['check']}")
    return lines


# -- plots ---------------------------------------------------------------------------------------


def require_matplotlib() -> None:
    """Raise PlotUnavailable with the install hint when matplotlib cannot be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise PlotUnavailable(f"--plot needs matplotlib, which is not installed ({exc}); "
                              f"install it with: {PLOT_INSTALL_HINT}") from None


def plot_report(report: Report, path: str) -> bool:
    """busbw against size, one line per op; or the pair heatmap. False when there is no data."""
    summary = report.extra.get("bandwidth", {})
    if summary.get("pairwise"):
        return plot_pair_heatmap(summary.get("hosts_order") or [], report.pairs, path)
    return plot_sweep(rows_of(report.collectives), path)


def _pyplot():
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")  # files only, never a display
    import matplotlib.pyplot as plt

    return plt


def plot_sweep(rows: Sequence[CollectiveRow], path: str) -> bool:
    if not rows:
        return False
    plt = _pyplot()
    from matplotlib import ticker

    figure, axes = plt.subplots(figsize=(8, 5))
    for op in Collective:
        own = sorted((r for r in rows if r.op is op), key=lambda r: r.nbytes)
        if own:
            axes.plot([r.nbytes for r in own], [r.busbw_gbs for r in own], marker="o",
                      label=op.value)
    axes.set_xscale("log", base=2)
    sizes = sorted({r.nbytes for r in rows})
    if len(sizes) <= 16:
        axes.set_xticks(sizes)
    axes.xaxis.set_major_formatter(
        ticker.FuncFormatter(lambda x, _: format_size(int(x)) if x >= 1 else ""))
    axes.xaxis.set_minor_formatter(ticker.NullFormatter())
    axes.set_xlabel("size (bytes)")
    axes.set_ylabel("busbw (GB/s)")
    axes.set_title(f"ddpcheck bandwidth: busbw over {rows[0].world_size} ranks")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True


def plot_pair_heatmap(hosts: Sequence[str], pairs: Sequence[Mapping[str, Any]],
                      path: str) -> bool:
    if not hosts or not pairs:
        return False
    plt = _pyplot()
    index = {host: i for i, host in enumerate(hosts)}
    nan = float("nan")
    matrix = [[nan] * len(hosts) for _ in hosts]
    for pair in pairs:
        a, b = pair["hosts"]
        if a in index and b in index and pair.get("busbw_gbs") is not None:
            matrix[index[a]][index[b]] = matrix[index[b]][index[a]] = pair["busbw_gbs"]
    size = max(4.0, 0.5 * len(hosts) + 2)
    figure, axes = plt.subplots(figsize=(size + 1, size))
    image = axes.imshow(matrix, cmap="viridis")
    axes.set_xticks(range(len(hosts)), labels=list(hosts), rotation=90)
    axes.set_yticks(range(len(hosts)), labels=list(hosts))
    values = [v for row in matrix for v in row if v == v]  # v == v: not NaN
    middle = (min(values) + max(values)) / 2 if values else 0.0
    if len(hosts) <= 16:
        for i, row in enumerate(matrix):
            for j, value in enumerate(row):
                if value == value:
                    axes.text(j, i, gbs(value), ha="center", va="center", fontsize=7,
                              color="black" if value > middle else "white")
    figure.colorbar(image, ax=axes, label="busbw (GB/s)")
    axes.set_title("busbw per host pair (GB/s)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True
