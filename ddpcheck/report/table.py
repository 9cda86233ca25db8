"""The report (``model.report.Report``) -> the cluster-wide table (stdout) and the JSON report.

Pure. The table reads like nccl-tests: a ``#`` header with parameters and versions, a row per
rank grouped by host, the findings with the root cause first, and a verdict footer. Past
``FULL_TABLE_MAX_RANKS`` ranks (unless ``full``) the table is grouped (see ``grouping``): a line
per outcome with a compressed host list, the hosts that differ with their rows per rank. Alike
findings on several hosts are one line with a host list at any size (the JSON keeps each).
Linear in hosts + ranks + findings.
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Optional, Sequence

from tabulate import tabulate

from ..model.records import Finding, HostRecord, RankRecord, Verdict
from ..model.report import Report
from ..config.hostlist import hostlist_text, hosts_text
from .grouping import (FULL_TABLE_MAX_RANKS, Grouping, group_hosts, merge_findings,
                       ranks_by_host)

SCHEMA = "ddpcheck/report/v1"
DEFAULT_TABLE_FORMAT = "simple"

# ANSI colours, used only when the caller says the output is a terminal (see cli.use_color).
_COLORS = {"green": "\033[32m", "red": "\033[31m", "yellow": "\033[33m", "bold": "\033[1m"}
_RESET = "\033[0m"
STATE_COLORS: Mapping[str, str] = {
    "ok": "green", "error": "red", "fail": "red", "failed": "red", "timeout": "red",
    "missing": "red", "unreachable": "yellow", "interrupted": "yellow", "warning": "yellow",
}


def paint(text: str, state: str, color: bool) -> str:
    """``text`` in the colour of ``state`` (ok green, failures red, unreachable yellow)."""
    name = STATE_COLORS.get(state)
    if not color or name is None:
        return text
    return f"{_COLORS[name]}{text}{_RESET}"


def to_json_dict(report: Report) -> dict[str, Any]:
    data = {
        "schema": SCHEMA,
        "command": report.command,
        "verdict": report.verdict.value,
        "exit_code": report.exit_code,
        "duration_s": round(report.duration_s, 3),
        "backend": report.backend,
        "world_size": report.world_size,
        "expected_world_size": report.expected_world_size,
        "source": report.source,
        "master": report.master,
        "hosts": [{
            "name": h.name, "address": h.address, "reachable": h.reachable,
            "hostname": h.hostname, "slots": h.slots, "gpus": h.gpus, "error": h.error,
            "stage": str(h.stage), "versions": dict(h.versions), "run_dir": h.run_dir,
        } for h in report.hosts],
        "ranks": [{
            "rank": r.rank, "local_rank": r.local_rank, "host": r.host, "hostname": r.hostname,
            "pid": r.pid, "device": r.device, "status": r.status.value, "stage": r.stage,
            "gpu_uuid": r.gpu_uuid, "gpu_bus_id": r.gpu_bus_id, "world_size": r.world_size,
            "barrier_us": r.barrier_us, "allreduce_small_us": r.allreduce_small_us,
            "all_reduce_wrong": r.all_reduce_wrong, "error": r.error,
            **({"compute": dict(r.compute)} if r.compute else {}),
            **({"numerics": dict(r.numerics)} if r.numerics else {}),
        } for r in report.ranks],
        "findings": [{
            "severity": f.severity.value, "check": f.check, "host": f.host, "rank": f.rank,
            "message": f.message, "root_cause": f.root_cause,
        } for f in report.findings],
        "collectives": [dict(c) for c in report.collectives],
    }
    if report.pairs or report.command == "bandwidth":
        data["pairs"] = [dict(p) for p in report.pairs]
    if report.stacks or report.command == "hang":
        data["stacks"] = dict(report.stacks)
    for key, value in report.extra.items():
        data.setdefault(key, value)
    return data


def to_json(report: Report) -> str:
    return json.dumps(to_json_dict(report), indent=2, sort_keys=False) + "\n"


def render_table(report: Report, tablefmt: str = DEFAULT_TABLE_FORMAT,
                 color: bool = False, full: bool = False) -> str:
    """The report for people: header, the ranks, findings and the verdict (``tablefmt``: any
    tabulate format; ``color`` adds ANSI colours, only for a terminal). A row per rank with
    ``full`` or up to ``FULL_TABLE_MAX_RANKS`` ranks, else grouped by outcome."""
    grouped = not full and (len(report.ranks) > FULL_TABLE_MAX_RANKS
                            or len(report.hosts) > FULL_TABLE_MAX_RANKS)
    lines = header_lines(report)
    if grouped:
        lines += grouped_lines(report, tablefmt, color)
    else:
        lines.append(rank_table(report.hosts, report.ranks, tablefmt, color))
    lines.append("#")
    if report.extra.get("drift"):
        lines.append("# What differs across ranks (the first value of each key is the reference):")
        lines.append(drift_table(report.extra["drift"], tablefmt))
        lines.append("#")
    lines += findings_lines(report.findings, color, report.hosts)
    lines.append(footer_line(report, color))
    return "\n".join(lines) + "\n"


def grouped_lines(report: Report, tablefmt: str = DEFAULT_TABLE_FORMAT,
                  color: bool = False) -> list[str]:
    """A line per outcome (hosts compressed), then the hosts that differ, a row per rank."""
    grouping = group_hosts(report.hosts, report.ranks, report.findings)
    lines = [f"# {len(report.hosts)} hosts, {len(report.ranks)} ranks: a line per outcome "
             f"(--full for a row per rank)"]
    lines.append(group_table(grouping, tablefmt, color))
    listed = [name for group in grouping.groups if group.listed for name in group.hosts]
    if listed:
        lines.append("#")
        lines.append("# Hosts that differ, a row per rank (root cause first):")
        for name in listed:
            if name in grouping.notes:
                lines.append(f"#  {name}: {grouping.notes[name]}")
        by_name = {h.name: h for h in report.hosts}
        wanted = set(listed)
        ranks = [r for r in report.ranks if r.host in wanted]
        lines.append(rank_table([by_name[n] for n in listed], ranks, tablefmt, color))
    return lines


def group_table(grouping: Grouping, tablefmt: str = DEFAULT_TABLE_FORMAT,
                color: bool = False) -> str:
    rows = []
    for group in grouping.groups:
        state = "ok" if group.severity == 3 else ("warning" if group.severity == 2 else "fail")
        rows.append([hostlist_text(group.hosts), str(len(group.hosts)), str(group.ranks),
                     paint(("ROOT CAUSE: " if group.root_cause else "") + group.outcome,
                           state, color),
                     _span_text(group.barrier_us), _span_text(group.allreduce_us)])
    return tabulate(rows, headers=["hosts", "#hosts", "#ranks", "outcome", "barrier_us",
                                   "allreduce_us"], tablefmt=tablefmt, disable_numparse=True)


def _span_text(span: Optional[tuple[float, float]]) -> str:
    if span is None:
        return "-"
    low, high = span
    return f"{low:.0f}" if round(low) == round(high) else f"{low:.0f}-{high:.0f}"


def header_lines(report: Report) -> list[str]:
    reachable = sum(1 for h in report.hosts if h.reachable)
    world = "?" if report.world_size is None else str(report.world_size)
    expected = "?" if report.expected_world_size is None else str(report.expected_world_size)
    lines = [
        f"# ddpcheck {report.command}: {len(report.hosts)} host(s) from {report.source}, "
        f"{reachable} reachable",
        f"# backend {report.backend or '?'}  master {report.master or '?'}  "
        f"world_size {world} (expected {expected})",
    ]
    versions = sorted({f"python {h.versions.get('python')}, torch {h.versions.get('torch')}"
                       for h in report.hosts if h.versions})
    if versions:
        lines.append("# versions: " + " | ".join(versions))
    lines.append("#")
    return lines


def rank_table(hosts: Sequence[HostRecord], ranks: Sequence[RankRecord],
               tablefmt: str = DEFAULT_TABLE_FORMAT, color: bool = False) -> str:
    """A row per rank, grouped by host in hosts.yaml order; a host without ranks gets one row."""
    rows: list[list[Any]] = []
    by_host = ranks_by_host(ranks)
    for host in hosts:
        own = by_host.get(host.name, ())
        if not own:
            status = "unreachable" if not host.reachable else ("failed" if host.error else "-")
            rows.append([host.name, "-", "-", host.hostname or "-", "-", "-",
                         paint(status, status, color), "", "", ""])
            continue
        for index, rank in enumerate(own):
            rows.append([
                host.name if index == 0 else "",
                _cell(rank.rank), _cell(rank.local_rank), rank.hostname or "-", _cell(rank.pid),
                rank.device + (f" {rank.gpu_bus_id}" if rank.gpu_bus_id else ""),
                paint(rank.status.value if rank.status.value == "ok" else
                      f"{rank.status.value} ({rank.stage})", rank.status.value, color),
                _cell(rank.barrier_us), _cell(rank.allreduce_small_us),
                _cell(rank.all_reduce_wrong),
            ])
    headers = ["host", "rank", "local", "hostname", "pid", "device", "status",
               "barrier_us", "allreduce_us", "#wrong"]
    add_compute_columns(rows, headers, hosts, ranks)
    return tabulate(rows, headers=headers, tablefmt=tablefmt, disable_numparse=True)


def add_compute_columns(rows: list[list[Any]], headers: list[str], hosts: Sequence[HostRecord],
                        ranks: Sequence[RankRecord]) -> None:
    """The compute check's metrics as extra columns (only when some rank measured them), in
    the order of ``rank_table``'s rows."""
    names = sorted({name for r in ranks for name in (r.compute or {}).get("metrics", {})},
                   key=lambda name: (name.startswith("memory"), name))
    if not names:
        return
    headers += names
    ordered: list[Optional[RankRecord]] = []
    for host in hosts:
        own = sorted((r for r in ranks if r.host == host.name),
                     key=lambda r: (r.rank is None, r.rank or 0))
        ordered += own or [None]
    for row, rank in zip(rows, ordered):
        metrics = (rank.compute or {}).get("metrics", {}) if rank is not None else {}
        row += [_cell(metrics.get(name)) for name in names]


def drift_table(rows: Sequence[Mapping[str, Any]],
                tablefmt: str = DEFAULT_TABLE_FORMAT) -> str:
    table = [[row.get("check"), row.get("key"), _clip(str(row.get("value")), 40),
              hosts_text(row.get("hosts", [])), _ranks_text(row.get("ranks", [])),
              "" if row.get("reference") else "<- differs"] for row in rows]
    return tabulate(table, headers=["check", "key", "value", "hosts", "ranks", ""],
                    tablefmt=tablefmt, disable_numparse=True)


def _ranks_text(ranks: Sequence[int]) -> str:
    return " ".join(str(r) for r in ranks) if len(ranks) <= 8 else f"{len(ranks)} ranks"


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 3] + "..."


def findings_lines(findings: Sequence[Finding], color: bool = False,
                   hosts: Optional[Sequence[HostRecord]] = None) -> list[str]:
    """A line per finding, root cause first; alike findings on several hosts, at any size,
    merged into one line with a host list (``grouping.merge_findings``; ``hosts`` give the
    addresses and hostnames a message may name)."""
    if not findings:
        return ["# Findings: none"]
    lines = ["# Findings (root cause first):"]
    shown = [(m.first, m.message) for m in merge_findings(findings, hosts or ())]
    for finding, message in shown:
        mark = "ROOT CAUSE " if finding.root_cause else ""
        severity = paint(f"[{finding.severity.value}]", finding.severity.value, color)
        lines.append(f"#  {mark}{severity} {finding.check}: {message}")
    return lines


def footer_line(report: Report, color: bool = False) -> str:
    verdict = paint(report.verdict.value.upper(), report.verdict.value, color)
    return (f"# Verdict: {verdict} (exit {report.exit_code}) "
            f"in {report.duration_s:.1f}s")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)
