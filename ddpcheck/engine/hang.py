"""``ddpcheck hang``'s workload: the host scan on every host -> analysis -> report.

Runs on the launcher, through the same engine as preflight: the launcher connects to each host
(SSH with the run's shared ProxyJump pool and a connect timeout capped by ``--timeout``, or this
machine without HOSTS) and runs ``python -m ddpcheck.remote.hangscan`` under a deadline in place
of stage 0; ``collect.scan`` reads its marked line and ``analyze.hang`` judges every host's scan.
An unreachable host never stops the others: its ranks show up as missing and the host is named.
The table and the JSON report come from the same records; ``stacks`` in the JSON holds every
rank's Python stack.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Optional

from ..analyze import verdict as analyze
from ..analyze.hang import (HostScanResult, analyze_scans, hang_findings, host_error_findings,
                            rank_records)
from ..analyze.outcomes import scan_failure
from ..collect.scan import parse_scan_output
from ..model.records import EXIT_CODES
from ..model.outcomes import CommandResult
from ..model.records import HostRecord, Stage
from ..model.spec import ClusterSpec, HostSpec
from ..plan.cmdlines import remote_command
from ..report.hang import job_json, jobs_master
from ..model.report import Report
from .launchers import HostStep, Launcher, SSHLauncher
from ..report.progress import Progress
from .run import Engine

SCAN_OVERHEAD_S = 20.0  # finding processes, two rounds of py-spy, interpreter start


@dataclass(frozen=True)
class HangOptions:
    timeout_s: float = 60.0  # the whole command
    window_s: float = 3.0  # between the two samples of every rank
    heartbeat_dirs: tuple[str, ...] = ()
    stacks: bool = True
    job_filter: str = ""  # only jobs whose key (run id@master:port) contains this
    verbose: bool = False
    ras: bool = True  # ask NCCL RAS on the first host (one query sees the whole job)


def scan_argv(host: HostSpec, options: HangOptions, deadline_s: float,
              ras: bool = False) -> list[str]:
    argv = [host.python, "-m", "ddpcheck.remote.hangscan", "--window", f"{options.window_s:g}",
            "--deadline", f"{deadline_s:g}"]
    if ras:
        argv.append("--ras")
    for folder in options.heartbeat_dirs:
        argv += ["--heartbeat-dir", folder]
    if not options.stacks:
        argv.append("--no-stacks")
    if options.job_filter:
        argv += ["--job", options.job_filter]
    return argv


def scan_command(host: HostSpec, options: HangOptions, deadline_s: float,
                 ras: bool = False) -> str:
    return remote_command(host, scan_argv(host, options, deadline_s, ras))


class HangScan:
    """The scan on every host, in place of stage 0; no launch."""

    command = "hang"
    stage0 = False
    dcgm: Optional[int] = None  # no stage 0
    rendezvous_check = False
    launch_grace_s = 0.0

    def __init__(self, options: HangOptions) -> None:
        self.options = options
        self.timeout_s = options.timeout_s
        self.verbose = options.verbose
        self.stage0_timeout_s = options.window_s * 2 + SCAN_OVERHEAD_S
        self.scans: dict[str, HostScanResult] = {}
        self.lock = threading.Lock()

    def host_step(self, run: Engine) -> HostStep:
        # the step gets 10 s more than the scan's own deadline, which --timeout caps (less 3 s)
        first = run.spec.hosts[0].name  # NCCL RAS is asked there only

        def command(host: HostSpec, seconds: float) -> str:
            return scan_command(host, self.options, max(min(self.stage0_timeout_s,
                                                            seconds - 1), 1),
                                ras=self.options.ras and host.name == first)

        return HostStep(Stage.SCAN, self.stage0_timeout_s + 10, command,
                        lambda host, result, window: self.record(run, host, result),
                        starting="scanning", last=True)  # one step: each session ends with it

    def record(self, run: Engine, host: HostSpec, result: CommandResult) -> None:
        scan, stray = parse_scan_output(result.output)
        if scan is None:
            failure = scan_failure(host, result, stray)
            with self.lock:
                self.scans[host.name] = HostScanResult(host.name, None, failure.message)
            run.state.fail(host.name, failure, stage=Stage.SCAN)
            run.progress.host(host.name, f"failed: {failure.message[len('scan: '):]}")
            return
        with self.lock:
            self.scans[host.name] = HostScanResult(host.name, scan)
        run.state.update(host.name, stage=Stage.DONE, hostname=scan.get("hostname"))
        workers = scan.get("workers") or []
        spy = "py-spy" if scan.get("py_spy") else "no py-spy"
        run.progress.host(host.name, f"scanned: {len(workers)} torchrun worker(s), {spy}, "
                                     f"in {result.duration_s:.1f}s")

    def launch_without(self, run: Engine, failed: list[HostRecord]) -> bool:
        return False

    def launch(self, run: Engine) -> None:
        raise NotImplementedError("ddpcheck hang launches nothing")

    def report(self, run: Engine, interrupted: bool) -> Report:
        hosts = [run.state.hosts[h.name] for h in run.spec.hosts]
        return hang_report(run.spec, hosts, self.scans, self.options, interrupted,
                           time.monotonic() - run.state.began)


def hang_report(spec: ClusterSpec, hosts: list[HostRecord], scans: dict[str, HostScanResult],
                options: HangOptions, interrupted: bool, duration_s: float) -> Report:
    """The report from every host's record and scan."""
    results = [scans.get(h.name) or HostScanResult(h.name, None, "not scanned")
               for h in spec.hosts]
    analysis = analyze_scans(results, options.job_filter)
    findings = hang_findings(analysis, host_error_findings(hosts))
    verdict = analyze.verdict(findings, hosts, interrupted)
    worlds = [job.world_size for job in analysis.jobs]
    return Report(
        command="hang", verdict=verdict, exit_code=EXIT_CODES[verdict],
        duration_s=duration_s, backend=None,
        world_size=max(worlds) if worlds else None,
        expected_world_size=max(worlds) if worlds else None,
        hosts=tuple(hosts), ranks=tuple(rank_records(analysis.jobs)), findings=tuple(findings),
        source=spec.source, master=jobs_master(analysis.jobs), stacks=analysis.stacks,
        extra={"jobs": [job_json(job) for job in analysis.jobs], "window_s": options.window_s,
               "tools": {r.host: {"py_spy": (r.scan or {}).get("py_spy")}
                         for r in results if r.scan is not None},
               **({"ras": dict(analysis.ras)} if analysis.ras else {})})


def run_hang(spec: ClusterSpec, options: HangOptions, progress: Optional[Progress] = None,
             launcher: Optional[Launcher] = None) -> Report:
    return Engine(spec, HangScan(options), launcher or SSHLauncher(), progress).run()
