"""Bandwidth rendering: the nccl-tests style text of a sweep or of the pairs, and plots.

Pure, on the launcher (matplotlib imported only when a plot is asked for). The analysis (rows
and pair results -> findings, summaries) is ``analyze.bandwidth``; its names stay importable
from here.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

from tabulate import tabulate

from ..analyze.bandwidth import gbs, pair_name, rows_of
from ..core.busbw import (ELEMENT_TYPE, Collective, CollectiveRow, format_size, round_gbs,
                          row_from_dict)
from ..model.errors import DdpcheckError
from ..config.hostlist import hostlist_text
from .grouping import FULL_TABLE_MAX_RANKS, group_hosts
from .table import findings_lines, footer_line, header_lines
from ..model.report import Report

PLOT_INSTALL_HINT = "pip install 'ddpcheck[plot]'"
_REDOP = {Collective.ALL_REDUCE: "sum", Collective.REDUCE_SCATTER: "sum"}


class PlotUnavailable(DdpcheckError):
    """--plot was asked for but matplotlib cannot be imported."""


# -- rendering ----------------------------------------------------------------------------------


def render_bandwidth(report: Report, tablefmt: Optional[str] = None) -> str:
    """The nccl-tests style text of a ``bandwidth`` report (sweep or pairwise). ``tablefmt``
    (any tabulate format, from --format) lays the tables out in that format instead of
    nccl-tests' fixed columns; the ``#`` lines around them stay."""
    summary: Mapping[str, Any] = report.extra.get("bandwidth", {})
    lines = header_lines(report)
    lines.insert(-1, parameters_line(summary))
    if summary.get("pairwise"):
        matrix = summary.get("pairing", "all") == "all" and len(
            summary.get("hosts_order") or []) <= MATRIX_MAX_HOSTS
        lines += (pair_matrix_lines if matrix else pair_list_lines)(summary, report.pairs,
                                                                      tablefmt)
        lines += pairs_footer(summary)
    else:
        lines += rank_lines(report)
        lines += sweep_tables(report, summary, tablefmt)
    lines.append("#")
    lines += findings_lines(report.findings, hosts=report.hosts)
    lines.append(footer_line(report))
    return "\n".join(lines) + "\n"


def sweep_tables(report: Report, summary: Mapping, tablefmt: Optional[str]) -> list[str]:
    """Each op's nccl-tests table of the sweep's rows (or "no rows measured"), then the
    footer."""
    lines: list[str] = []
    rows = rows_of(report.collectives)
    for op in [Collective(name) for name in summary.get("ops", [])]:
        if rows:
            lines += op_table(op, [r for r in rows if r.op is op], tablefmt)
    if not rows:
        lines += ["# no rows measured", "#"]
    return lines + sweep_footer(summary)


def sweep_section(report: Report, tablefmt: Optional[str] = None) -> str:
    """The sweep's part of a report that has one beside the probe (``preflight --in-job
    --bandwidth``): its parameters, each op's nccl-tests table and the footer, then the pairs
    of nodes when they ran; empty when the report has no sweep."""
    summary = report.extra.get("bandwidth")
    if not isinstance(summary, Mapping):
        return ""
    lines = ["#", "# Bandwidth sweep: the same ranks, after the probe passed",
             parameters_line(summary)]
    if summary.get("skipped"):
        return "\n".join(lines + [f"# {summary['skipped']}", "#"]) + "\n"
    lines += sweep_tables(report, summary, tablefmt)
    pairwise = report.extra.get("pairwise")
    if isinstance(pairwise, Mapping):  # then the pairs of nodes that localize a slow one
        lines += ["#"] + pair_list_lines(pairwise, report.pairs, tablefmt)
        lines += pairs_footer(pairwise)
    return "\n".join(lines + ["#"]) + "\n"


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
    shown = report.ranks
    if len(report.ranks) > FULL_TABLE_MAX_RANKS:  # at scale: the groups, then ranks not ok
        grouping = group_hosts(report.hosts, report.ranks, report.findings)
        lines += [f"#  {hostlist_text(g.hosts)}: {g.outcome}" for g in grouping.groups]
        shown = [r for r in report.ranks if r.status.value != "ok"]
    for rank in shown:
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


def op_table(op: Collective, rows: Sequence[CollectiveRow],
             tablefmt: Optional[str] = None) -> list[str]:
    world = rows[0].world_size if rows else None
    lines = [f"# {op.value}" + (f" over {world} ranks" if world else "")
             + ("" if rows else ": no rows measured")]
    cells = [row_cells(op, row) for row in sorted(rows, key=lambda r: r.nbytes)]
    if tablefmt:
        headers = [f"{head} {unit}".strip() for head, unit in zip(_TABLE_HEAD[1:],
                                                                 _TABLE_UNITS[1:])]
        lines.append(tabulate(cells, headers=headers, tablefmt=tablefmt,
                              disable_numparse=True))
    else:
        lines += [_table_line(_TABLE_HEAD), _table_line(_TABLE_UNITS)]
        lines += [_table_line((" ", *row)) for row in cells]
    lines.append("#")
    return lines


def streamed_header() -> list[str]:
    """The columns of the streamed rows (``streamed_row_line``) and their units."""
    return [f"{'op':<14}" + _table_line(("", *_TABLE_HEAD[1:])),
            f"{'':<14}" + _table_line(("", *_TABLE_UNITS[1:]))]


def streamed_row_line(row: CollectiveRow) -> str:
    """A row as it is measured, in the table's columns, for stderr: ``all_reduce  1048576 ...``."""
    return f"{row.op.value:<14}" + _table_line(("", *row_cells(row.op, row)))


def row_cells(op: Collective, row: CollectiveRow) -> list[str]:
    """One measured size as nccl-tests shows it: size, count, type, redop, root, time, algbw,
    busbw, #wrong."""
    root = "0" if op is Collective.BROADCAST else "-1"
    return [str(row.nbytes), str(row.table_count), ELEMENT_TYPE, _REDOP.get(op, "none"), root,
            f"{row.time_s * 1e6:.1f}", gbs(row.algbw_gbs), gbs(row.busbw_gbs), str(row.wrong)]


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


def pair_matrix_lines(summary: Mapping[str, Any], pairs: Sequence[Mapping[str, Any]],
                      tablefmt: Optional[str] = None) -> list[str]:
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
    matrix = [[a] + ["-" if a == b else cell.get((a, b), "n/a") for b in hosts] for a in hosts]
    if tablefmt:
        lines.append(tabulate(matrix, headers=["host", *hosts], tablefmt=tablefmt,
                              disable_numparse=True))
        return lines + ["#"]
    width = max([len(h) for h in hosts] + [8]) + 2
    lines.append("host".ljust(width) + "".join(h.rjust(width) for h in hosts))
    for row in matrix:
        lines.append(row[0].ljust(width) + "".join(text.rjust(width) for text in row[1:]))
    lines.append("#")
    return lines


MATRIX_MAX_HOSTS = 16  # past this (or with adaptive pairing) the pairs are listed, not a matrix
PAIRS_LISTED = 8  # fine pairs of round 1 past this are summed up in one line


def pair_list_lines(summary: Mapping[str, Any], pairs: Sequence[Mapping[str, Any]],
                    tablefmt: Optional[str] = None) -> list[str]:
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
    folded_ids = {id(p) for p in folded}
    shown = [p for p in pairs if id(p) not in folded_ids]
    shown.sort(key=lambda p: (p.get("round", 0), not p.get("slow"), p.get("busbw_gbs") or 0))
    table = [[pair_name(pair["hosts"]), str(pair.get("round")),
              ("fail" if pair.get("busbw_gbs") is None else gbs(pair["busbw_gbs"]))
              + ("*" if pair.get("slow") else "")] for pair in shown]
    if tablefmt:
        lines.append(tabulate(table, headers=["pair", "round", "busbw"], tablefmt=tablefmt,
                              disable_numparse=True))
    else:
        width = max([len(row[0]) for row in table] + [8]) + 2
        lines.append("pair".ljust(width) + "round".rjust(7) + "busbw".rjust(12))
        lines += [name.ljust(width) + number.rjust(7) + text.rjust(12)
                  for name, number, text in table]
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
