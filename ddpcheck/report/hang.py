"""Report, hang: the per-job table with the culprits' stacks, and the JSON of each job.

Pure, on the launcher.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

from tabulate import tabulate

from ..analyze.hang import Frame, JobVerdict, collective_of, user_frame
from .grouping import FULL_TABLE_MAX_RANKS, HANG_HEADERS, hang_rows
from .table import DEFAULT_TABLE_FORMAT, findings_lines, footer_line
from ..model.report import Report


def jobs_master(jobs: tuple[JobVerdict, ...]) -> Optional[str]:
    masters = sorted({job.job.split("@", 1)[-1] for job in jobs})
    return ", ".join(masters) if masters else None


def job_json(job: JobVerdict) -> dict[str, Any]:
    return {
        "job": job.job, "world_size": job.world_size, "hung": job.hung,
        "culprits": list(job.culprits),
        "ranks": [{
            "rank": v.view.rank, "host": v.view.host, "hostname": v.view.hostname,
            "pid": v.view.pid, "role": v.role.value, "reason": v.reason, "op": v.op,
            "state": v.view.status, "cpu_pct": v.view.cpu_pct, "step": v.view.step,
            "seq": v.view.seq, "heartbeat_age_s": v.view.heartbeat_age_s,
            "steps_per_s": v.view.step_rate, "busy_pct": None if v.view.busy is None
            else round(v.view.busy * 100, 1),
            "where": where_cell(v.view.last.frames) if v.view.last else None,
            "stack_error": v.view.stack_error,
            "flight_record": dict(v.view.flight_record) if v.view.flight_record else None,
        } for v in job.ranks],
    }


def where_cell(frames: tuple[Frame, ...]) -> str:
    """The table's "where": the collective or innermost frame, then the job's own frame."""
    if not frames:
        return "-"
    op = collective_of(frames)
    own = user_frame(frames)
    if op:
        return op + (f" < {own.short()}" if own else "")
    return frames[0].short() + (f" < {own.short()}" if own and own != frames[0] else "")


def ras_lines(ras: Any, verbose: bool) -> list[str]:
    """One line on what NCCL RAS said; its text (and why it could not be asked) with -v."""
    if not isinstance(ras, dict) or not ras:
        return []
    if ras.get("error") and not ras.get("output"):  # a job without NCCL, or NCCL < 2.24
        return [f"# NCCL RAS (asked on {ras.get('host')}): {ras['error']}", "#"] if verbose else []
    view = ras.get("view") or {}
    comms = view.get("communicators") or []
    state = ", ".join(f"{c['comms']} comm(s) of {c['ranks_per_comm']} rank(s) {c['status']} "
                      f"{c['errors']}" for c in comms) or "no communicator data"
    lines = [f"# NCCL RAS (asked on {ras.get('host')}, NCCL {view.get('nccl') or '?'}): {state}"]
    if verbose and ras.get("output"):
        lines += [f"#   {line}" for line in str(ras["output"]).rstrip().splitlines()]
    return lines + ["#"]


def render_hang(report: Report, verbose: bool = False, full: bool = False,
                tablefmt: str = DEFAULT_TABLE_FORMAT) -> str:
    """The scan's table (``tablefmt``: any tabulate format), a row per rank; past
    FULL_TABLE_MAX_RANKS ranks (unless ``full``) the waiting crowd is grouped around the named
    ranks (``grouping.hang_rows``)."""
    reachable = sum(1 for h in report.hosts if h.reachable)
    lines = [f"# ddpcheck hang: {len(report.hosts)} host(s) from {report.source}, "
             f"{reachable} reachable; window {report.extra.get('window_s', '?')}s"]
    jobs = report.extra.get("jobs") or []
    for job in jobs:
        lines.append(f"# job {job['job']}: world_size {job['world_size']}")
        if not full and len(job["ranks"]) > FULL_TABLE_MAX_RANKS:
            lines.append(tabulate(hang_rows(job["ranks"]), headers=HANG_HEADERS,
                                  tablefmt=tablefmt, disable_numparse=True))
            lines.append("#")
            lines += _stacks(job, jobs, report)
            continue
        rows = []
        for rank in job["ranks"]:
            rows.append([rank["host"], rank["rank"], _cell(rank["pid"]), rank["state"],
                         _cell(rank["cpu_pct"]), _cell(rank.get("busy_pct")),
                         _cell(rank["step"]), _cell(rank.get("steps_per_s")),
                         _cell(rank["seq"]), rank["role"], rank["where"] or "-"])
        lines.append(tabulate(rows, headers=["host", "rank", "pid", "state", "cpu%", "busy%",
                                             "step", "steps/s", "seq", "role",
                                             "where (innermost < job code)"],
                              tablefmt=tablefmt, disable_numparse=True))
        lines.append("#")
        lines += _stacks(job, jobs, report)
    if not jobs:
        lines.append("#")
    lines += ras_lines(report.extra.get("ras"), verbose)
    lines += findings_lines(report.findings, hosts=None if full or len(report.hosts)
                            <= FULL_TABLE_MAX_RANKS else report.hosts)
    lines.append(footer_line(report))
    return "\n".join(lines) + "\n"


def _stacks(job: Mapping[str, Any], jobs: Sequence[Any], report: Report) -> list[str]:
    lines = []
    for culprit in job["culprits"]:
        key = str(culprit) if len(jobs) == 1 else f"{job['job']}:{culprit}"
        if key in report.stacks:
            lines.append(f"# Stack of rank {culprit}:")
            lines += [f"#   {line}" for line in report.stacks[key].splitlines()]
            lines.append("#")
    return lines


def _cell(value: Any) -> str:
    return "-" if value is None else str(value)
