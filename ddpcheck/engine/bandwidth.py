"""``ddpcheck bandwidth``'s workloads: the all-host sweep and the rounds of pair jobs.

Runs on the launcher. The sweep is preflight's world (stage 0, rendezvous check, one torchrun
per host) with ``ddpcheck.remote.sweep`` on every rank instead of the probe, plus the sweep's
rows, findings and the nccl-tests footer. ``--pairwise`` runs stage 0 everywhere, then rounds of
pair jobs at the largest size only: adaptive (``plan.pairing.next_round``: round 1 pairs every
host once, later rounds only the hosts of slow pairs, at most 3) or, with ``--pairwise all``,
the circle-method rounds (``plan.bandwidth``). A host that failed stage 0 is
left out and the others are still paired: an unreachable host never stops the rest.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from typing import Any, Optional

from ..analyze import verdict as analyze
from ..analyze.bandwidth import (PairResult, SweepSettings, analyze_pairs, pair_findings,
                                 pair_name, pairs_json, pairs_summary, rows_of, streamed_row,
                                 sweep_findings, sweep_summary)
from ..analyze.outcomes import left_out_finding, pair_result, rows_source
from ..config.hostlist import hosts_text
from ..model.checks import Check
from ..model.records import EXIT_CODES
from ..model.records import Finding, HostRecord, Stage
from ..model.spec import ClusterSpec
from ..plan.bandwidth import PAIR_SLOTS, SWEEP_TIMEOUT_S, PairLaunch, plan_round, sweep_program
from ..plan.cmdlines import LaunchOptions, RankProgram
from ..plan.pairing import MAX_ADAPTIVE_ROUNDS, circle_rounds, next_round
from ..report.bandwidth import streamed_header, streamed_row_line
from ..model.report import Report
from .launchers import HostJob, SSHLauncher
from .preflight import PreflightOptions, Probe, base_report
from ..report.progress import Progress
from .run import Engine, record_launch, record_launch_errors

ROUND_STOP_S = 5.0  # a round is not started with less than this (and its agents' deadline) left


@dataclass(frozen=True)
class BandwidthOptions:
    settings: SweepSettings
    min_bytes: int
    max_bytes: int
    factor: int
    timeout_s: float = SWEEP_TIMEOUT_S
    launch: LaunchOptions = LaunchOptions(deadline_s=SWEEP_TIMEOUT_S)
    verbose: bool = False

    def preflight_options(self) -> PreflightOptions:
        # --pairwise: each pair has its own master, so the check of the one master's port
        # before torchrun does not apply; the pair jobs show which pairs cannot meet.
        return PreflightOptions(timeout_s=self.timeout_s, launch=self.launch,
                                verbose=self.verbose,
                                rendezvous_check=not self.settings.pairwise)


def options_program(options: BandwidthOptions) -> RankProgram:
    """The sweep as asked; for a pair job, only the largest size."""
    settings = options.settings
    if settings.pairwise:
        return sweep_program(settings.ops, options.max_bytes, options.max_bytes, 1,
                             settings.iters, settings.warmup)
    return sweep_program(settings.ops, options.min_bytes, options.max_bytes, options.factor,
                         settings.iters, settings.warmup)


def timer_name(backend: Optional[str]) -> str:
    return "cuda_events" if backend == "nccl" else "monotonic"


def finish_report(base: Report, findings: list[Finding], interrupted: bool,
                  command: str = "bandwidth", **changes: Any) -> Report:
    ordered = analyze.mark_single_root_cause(analyze.order_findings(findings))
    verdict = analyze.verdict(ordered, base.hosts, interrupted)
    return replace(base, command=command, findings=tuple(ordered), verdict=verdict,
                   exit_code=EXIT_CODES[verdict], **changes)


class Sweep(Probe):
    """Preflight's world with the sweep on every rank."""

    command = "bandwidth"

    def __init__(self, options: BandwidthOptions) -> None:
        super().__init__(options.preflight_options())
        self.bandwidth = options
        self.streamed: list[dict[str, Any]] = []  # rank 0's rows as they were measured

    def rank_program(self) -> RankProgram:
        return options_program(self.bandwidth)

    def launch(self, run: Engine) -> None:
        """The sweep on every rank; each row shown as rank 0 measures it (``streamed``)."""
        setup = run.state.setup(run.spec.hosts, self.options.launch)
        results = run.launcher.launch(run, setup, self.rank_program(),
                                      lambda name, result: record_launch(run, name, result),
                                      on_line=lambda host, line: self.row_line(run, line))
        record_launch_errors(run, results)

    def row_line(self, run: Engine, line: str) -> None:
        """A line of a host's output: a row as it was measured is kept and shown."""
        row = streamed_row(line)
        if row is None:
            return  # another line, or garbled: the rank's own record still brings its rows
        with run.state.lock:
            first = not self.streamed
            self.streamed.append(row.to_dict())
        for line in streamed_header() if first else ():
            run.progress.say(line)
        run.progress.say(streamed_row_line(row))

    def report(self, run: Engine, interrupted: bool) -> Report:
        base = super().report(run, interrupted)
        settings = self.bandwidth.settings
        # cut short before any rank's record came: the rows shown as they were measured
        rows = rows_of(rows_source(base.ranks) or tuple(self.streamed))
        summary = sweep_summary(rows, settings)
        summary["timer"] = timer_name(run.state.backend)
        return finish_report(base, list(base.findings) + sweep_findings(rows, settings),
                             interrupted, collectives=tuple(r.to_dict() for r in rows),
                             extra={**base.extra, "bandwidth": summary})


class PairRounds(Probe):
    """Stage 0 on every host, then the rounds of concurrent 2-rank pair jobs."""

    command = "bandwidth"

    def __init__(self, options: BandwidthOptions) -> None:
        super().__init__(options.preflight_options())
        self.bandwidth = options
        self.rounds: list[list[tuple[str, str]]] = []
        self.results: list[PairResult] = []
        self.paired: list[str] = []

    def launch_without(self, run: Engine, failed: list[HostRecord]) -> bool:
        healthy = len(run.spec.hosts) - len(failed)
        if healthy < 2:
            return False
        names = [h.name for h in failed]
        run.state.add_findings([left_out_finding(names, healthy)])
        run.progress.say(f"leaving out {hosts_text(names)}: failed before launch")
        return True

    def launch(self, run: Engine) -> None:
        healthy = run.state.healthy()
        self.paired = [h.name for h in healthy]
        adaptive = self.bandwidth.settings.pairing != "all"
        self.rounds = [] if adaptive else circle_rounds(self.paired)
        for host in healthy:
            run.state.update(host.name, slots=PAIR_SLOTS, stage=Stage.LAUNCH)
        run.state.setup(healthy, self.options.launch, slots=PAIR_SLOTS)  # the backend
        program = options_program(self.bandwidth)
        run_id = uuid.uuid4().hex[:8]
        for number, pairs in enumerate(self.adaptive_rounds(run) if adaptive else self.rounds,
                                       1):
            if run.state.cancel.is_set() or run.state.left() - ROUND_STOP_S < ROUND_STOP_S:
                self.skip_rounds(number, "not run: the --timeout was reached")
                break
            setup = run.state.setup(healthy, self.options.launch, slots=PAIR_SLOTS)
            planned = plan_round(run.spec, pairs, setup.backend, setup.options, program,
                                 run_id=f"{run_id}-{number}")
            total = (f" (of at most {MAX_ADAPTIVE_ROUNDS})" if adaptive
                     else f"/{len(self.rounds)}")
            run.progress.say(f"round {number}{total}: " + (", ".join(
                pair_name(p.hosts) for p in planned) if len(planned) <= 8 else
                f"{len(planned)} pairs at once"))
            shape = {"pairs": [list(pair) for pair in pairs], "backend": setup.backend.value,
                     "deadline_s": setup.options.deadline_s, "run_id": f"{run_id}-{number}",
                     "sweep": program.to_dict()}
            self.run_round(run, number, planned, setup.options.deadline_s, shape)
        for host in healthy:
            run.state.update(host.name, stage=Stage.DONE)

    def adaptive_rounds(self, run: Engine):
        """Round 1, then rounds 2 and 3 only for what the pairs so far leave open
        (``plan.pairing.next_round``); a pair is slow below the report's threshold, and a pair
        that failed counts as slow. Each round is recorded in ``self.rounds`` as it starts."""
        done = 0
        while not run.state.cancel.is_set():
            slow = analyze_pairs(self.paired, self.results,
                                 self.bandwidth.settings.slow_fraction).slow
            measured = [(p.hosts, p.hosts in slow or p.busbw_gbs is None) for p in self.results]
            pairs = next_round(self.paired, measured, done)
            if not pairs:
                return
            done += 1
            self.rounds.append(pairs)
            yield pairs

    def skip_rounds(self, first: int, why: str) -> None:
        for number, pairs in enumerate(self.rounds[first - 1:], first):
            self.results += [PairResult(pair, number, error=why, check=Check.TIMEOUT)
                             for pair in pairs]

    def run_round(self, run: Engine, number: int, planned: list[PairLaunch],
                  deadline_s: float, shape: Optional[dict] = None) -> None:
        jobs = [HostJob(launch.host, launch.command, deadline_s + 10, shape)
                for pair in planned for launch in pair.launches]
        results = run.launcher.run_jobs(run, jobs)
        index = 0
        for pair in planned:
            outputs = []
            for launch in pair.launches:
                result = results.succeeded.get(index)
                outputs.append((launch.host, result, results.failed.get(index)))
                index += 1
            duration = max((r.duration_s for _, r, _ in outputs if r is not None), default=0.0)
            result = pair_result(pair.hosts, number, outputs, duration,
                                 self.bandwidth.settings.ops[0])
            self.results.append(result)
            if len(planned) > 8 and not run.verbose and result.busbw_gbs is not None:
                continue  # many pairs: only the failed ones get a line (all of them with -v)
            run.progress.say(f"{pair_name(pair.hosts)}: " + (
                f"busbw {result.busbw_gbs:.4g} GB/s" if result.busbw_gbs is not None
                else f"failed: {result.error}") + f" (round {number}) in {result.duration_s:.1f}s")

    def report(self, run: Engine, interrupted: bool) -> Report:
        base = base_report(run, self.options.launch, interrupted)
        settings = self.bandwidth.settings
        hosts = self.paired or [h.name for h in run.spec.hosts]
        findings = list(base.findings) + pair_findings(hosts, self.results, settings,
                                                       len(self.rounds))
        summary = pairs_summary(self.results, hosts, settings, len(self.rounds))
        summary["hosts_order"] = [h.name for h in run.spec.hosts]
        widest = max((len(pairs) for pairs in self.rounds), default=0)
        if widest:
            port = run.spec.rendezvous_port
            summary["ports"] = [port, port + widest - 1]
        summary["timer"] = timer_name(run.state.backend)
        return finish_report(base, findings, interrupted, world_size=2 if self.rounds else None,
                             expected_world_size=2 if self.rounds else None,
                             pairs=pairs_json(self.results, hosts, settings.slow_fraction),
                             master=None, extra={**base.extra, "bandwidth": summary})


def run_bandwidth(spec: ClusterSpec, options: BandwidthOptions,
                  progress: Optional[Progress] = None) -> Report:
    workload = PairRounds(options) if options.settings.pairwise else Sweep(options)
    return Engine(spec, workload, SSHLauncher(), progress).run()
