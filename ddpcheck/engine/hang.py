"""``ddpcheck hang``: spec -> the host scan on every host (one fan-out) -> analysis -> report.

The I/O edge of the hang command, built like preflight: connect to each host (SSH, or this
machine without HOSTS), run ``python -m ddpcheck.remote.hangscan`` under a deadline, collect its marked
line, and hand every host's scan to ``hanganalysis`` (pure). An unreachable host never stops the
others: its ranks show up as missing and the host is named. The table and the JSON report come
from the same records; ``stacks`` in the JSON holds every rank's Python stack.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, replace
from typing import Any, Optional

from tabulate import tabulate

from ..analyze import verdict as analyze
from ..model.errors import HostError
from ..analyze.hang import (CULPRITS, Frame, HangAnalysis, HostScanResult, JobVerdict, Role,
                           analyze_scans, collective_of, user_frame)
from ..plan.commands import MARK, remote_command
from .preflight import Progress, summary_of
from ..model.records import Finding, HostRecord, RankRecord, RankStatus, Severity
from ..report.table import Report, findings_lines, footer_line
from ..model.spec import ClusterSpec, HostSpec
from ..transport.ssh import LocalSession, Session, SSHSession, fan_out

SCAN_KIND = "hangscan"
SCAN_OVERHEAD_S = 20.0  # finding processes, two rounds of py-spy, interpreter start


@dataclass(frozen=True)
class HangOptions:
    timeout_s: float = 60.0  # the whole command
    window_s: float = 3.0  # between the two samples of every rank
    heartbeat_dirs: tuple[str, ...] = ()
    stacks: bool = True
    job_filter: str = ""  # only jobs whose key (run id@master:port) contains this
    verbose: bool = False


def scan_argv(host: HostSpec, options: HangOptions, deadline_s: float) -> list[str]:
    argv = [host.python, "-m", "ddpcheck.remote.hangscan", "--window", f"{options.window_s:g}",
            "--deadline", f"{deadline_s:g}"]
    for folder in options.heartbeat_dirs:
        argv += ["--heartbeat-dir", folder]
    if not options.stacks:
        argv.append("--no-stacks")
    if options.job_filter:
        argv += ["--job", options.job_filter]
    return argv


def scan_command(host: HostSpec, options: HangOptions, deadline_s: float) -> str:
    return remote_command(host, scan_argv(host, options, deadline_s))


def parse_scan_output(text: str) -> tuple[Optional[dict[str, Any]], list[str]]:
    """(the host's scan, the other lines). Pure; tolerant of a pty's \\r and prefixes."""
    scan: Optional[dict[str, Any]] = None
    stray: list[str] = []
    for raw in text.splitlines():
        line = raw.replace("\r", "")
        at = line.find(f"{MARK} {SCAN_KIND} ")
        if at < 0:
            if line.strip():
                stray.append(line)
            continue
        try:
            value = json.loads(line[at + len(MARK) + len(SCAN_KIND) + 2:])
        except ValueError:
            stray.append(line[:300])
            continue
        if isinstance(value, dict):
            scan = value
    return scan, stray


class HangRun:
    def __init__(self, spec: ClusterSpec, options: HangOptions, progress: Progress) -> None:
        self.spec = spec
        self.options = options
        self.progress = progress
        self.started = time.monotonic()
        self.deadline = self.started + options.timeout_s
        self.cancel = threading.Event()
        self.sessions: list[Session] = []
        self.hosts = {h.name: HostRecord(h.name, h.address) for h in spec.hosts}
        self.scans: dict[str, HostScanResult] = {}
        self.lock = threading.Lock()

    def scan_host(self, host: HostSpec) -> None:
        self.progress.host(host.name, "connecting" if not self.spec.local else "scanning")
        try:
            session: Session = (LocalSession() if self.spec.local
                                else SSHSession.connect(host, self.spec.ssh))
        except HostError as exc:
            self.record(host.name, HostScanResult(host.name, None, exc.message),
                        error_check="ssh", stage="connect")
            self.progress.host(host.name, f"unreachable: {exc.message}")
            return
        with self.lock:
            self.sessions.append(session)
        self.update(host.name, reachable=True, stage="scan")
        remaining = self.deadline - time.monotonic()
        scan_deadline = max(min(self.options.window_s * 2 + SCAN_OVERHEAD_S, remaining - 3), 1)
        command = scan_command(host, self.options, scan_deadline)
        if self.options.verbose:
            self.progress.host(host.name, f"command: {command}")
        result = session.run(command, min(self.deadline, time.monotonic() + scan_deadline + 10),
                             self.cancel)
        scan, stray = parse_scan_output(result.output)
        if scan is None:
            why = ("interrupted" if result.cancelled else "no answer within the deadline"
                   if result.timed_out else f"exit {result.exit_code}: {summary_of(stray)}")
            if "No module named" in "\n".join(stray):
                why = f"ddpcheck is not importable by {host.python}: {summary_of(stray)}"
            self.record(host.name, HostScanResult(host.name, None, f"scan: {why}"),
                        error_check="timeout" if result.timed_out else "python", stage="scan")
            self.progress.host(host.name, f"failed: {why}")
            return
        self.record(host.name, HostScanResult(host.name, scan), stage="done",
                    hostname=scan.get("hostname"))
        workers = scan.get("workers") or []
        spy = "py-spy" if scan.get("py_spy") else "no py-spy"
        self.progress.host(host.name, f"scanned: {len(workers)} torchrun worker(s), {spy}, "
                                      f"in {result.duration_s:.1f}s")

    def record(self, name: str, result: HostScanResult, error_check: Optional[str] = None,
               **changes: Any) -> None:
        with self.lock:
            self.scans[name] = result
        if result.error:
            changes.update(error=result.error, error_check=error_check)
        self.update(name, **changes)

    def update(self, name: str, **changes: Any) -> None:
        with self.lock:
            self.hosts[name] = replace(self.hosts[name], **changes)

    def run(self) -> Report:
        interrupted = False
        try:
            fan_out(list(self.spec.hosts), self.scan_host, self.spec.ssh.fanout, self.cancel)
            interrupted = self.cancel.is_set()
        except KeyboardInterrupt:
            interrupted = True
            self.progress.say("interrupted: stopping the scans")
        finally:
            self.cancel.set()
            for session in self.sessions:
                session.close()
        return self.build_report(interrupted)

    def build_report(self, interrupted: bool) -> Report:
        hosts = [self.hosts[h.name] for h in self.spec.hosts]
        results = [self.scans.get(h.name) or HostScanResult(h.name, None, "not scanned")
                   for h in self.spec.hosts]
        analysis = analyze_scans(results, self.options.job_filter)
        findings = [Finding(Severity.ERROR, h.error_check or "ssh", f"{h.name}: {h.stage}: "
                            f"{h.error}", host=h.name) for h in hosts if h.error]
        findings = hang_findings(analysis, findings)
        verdict = analyze.verdict(findings, hosts, interrupted)
        ranks = rank_records(analysis.jobs)
        worlds = [job.world_size for job in analysis.jobs]
        return Report(
            command="hang", verdict=verdict, exit_code=analyze.EXIT_CODES[verdict],
            duration_s=time.monotonic() - self.started, backend=None,
            world_size=max(worlds) if worlds else None,
            expected_world_size=max(worlds) if worlds else None,
            hosts=tuple(hosts), ranks=tuple(ranks), findings=tuple(findings),
            source=self.spec.source, master=jobs_master(analysis.jobs),
            stacks=analysis.stacks,
            extra={"jobs": [job_json(job) for job in analysis.jobs],
                   "window_s": self.options.window_s,
                   "tools": {r.host: {"py_spy": (r.scan or {}).get("py_spy")}
                             for r in results if r.scan is not None}})


def hang_findings(analysis: HangAnalysis, host_errors: list[Finding]) -> list[Finding]:
    """Job findings first (their root cause leads), then unreachable hosts, then the rest.
    A host that could not be scanned is a root cause only when no job names one."""
    job_findings = list(analysis.findings)
    has_root = any(f.root_cause for f in job_findings)
    hosts = [replace(f, root_cause=not has_root and i == 0) for i, f in enumerate(host_errors)]
    ordered = analyze.order_findings([f for f in job_findings if f.root_cause] + hosts
                                     + [f for f in job_findings if not f.root_cause])
    return ordered


def rank_records(jobs: tuple[JobVerdict, ...]) -> list[RankRecord]:
    records = []
    for job in jobs:
        for verdict in job.ranks:
            view = verdict.view
            status = (RankStatus.MISSING if verdict.role is Role.DEAD else
                      RankStatus.ERROR if verdict.role in CULPRITS else RankStatus.OK)
            records.append(RankRecord(
                rank=view.rank, host=view.host, local_rank=view.local_rank,
                node_rank=view.group_rank, hostname=view.hostname, pid=view.pid,
                world_size=view.world_size, status=status, stage=verdict.role.value,
                error=verdict.reason if verdict.role in CULPRITS else None))
    return records


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


# -- rendering (pure) --------------------------------------------------------------------------

def render_hang(report: Report) -> str:
    reachable = sum(1 for h in report.hosts if h.reachable)
    lines = [f"# ddpcheck hang: {len(report.hosts)} host(s) from {report.source}, "
             f"{reachable} reachable; window {report.extra.get('window_s', '?')}s"]
    jobs = report.extra.get("jobs") or []
    for job in jobs:
        lines.append(f"# job {job['job']}: world_size {job['world_size']}")
        rows = []
        for rank in job["ranks"]:
            rows.append([rank["host"], rank["rank"], _cell(rank["pid"]), rank["state"],
                         _cell(rank["cpu_pct"]), _cell(rank.get("busy_pct")),
                         _cell(rank["step"]), _cell(rank.get("steps_per_s")),
                         _cell(rank["seq"]), rank["role"], rank["where"] or "-"])
        lines.append(tabulate(rows, headers=["host", "rank", "pid", "state", "cpu%", "busy%",
                                             "step", "steps/s", "seq", "role",
                                             "where (innermost < job code)"],
                              tablefmt="simple", disable_numparse=True))
        lines.append("#")
        for culprit in job["culprits"]:
            key = str(culprit) if len(jobs) == 1 else f"{job['job']}:{culprit}"
            if key in report.stacks:
                lines.append(f"# Stack of rank {culprit}:")
                lines += [f"#   {line}" for line in report.stacks[key].splitlines()]
                lines.append("#")
    if not jobs:
        lines.append("#")
    lines += findings_lines(report.findings)
    lines.append(footer_line(report))
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    return "-" if value is None else str(value)


def run_hang(spec: ClusterSpec, options: HangOptions,
             progress: Optional[Progress] = None) -> Report:
    return HangRun(spec, options, progress or Progress()).run()
