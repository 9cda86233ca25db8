"""The one run loop: a Launcher and a Workload, spec -> report. Runs on the launcher.

    connect + stage 0 on every host (one fan-out; the health rules judge the facts)
    -> the rendezvous check (the master listens on the rendezvous port, every host connects)
    -> the workload's launch (one torchrun per host, or rounds of pair jobs)
    -> collect -> analyze -> the workload's report

A workload without stage 0 (``ddpcheck hang``) runs its own step on every host in its place.
A host that fails before launch keeps torchrun from starting anywhere (a world with a missing
node can only hang) unless the workload can do without it (pairs). The partial state is kept as
hosts progress, so an interrupted or timed-out run still reports what each host reached.
Stage outcomes arrive typed (``CommandResult``) and ``analyze`` decides what they mean.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Optional, Protocol

from ..analyze import health
from ..analyze.outcomes import (blocking_failure, launch_end, launch_error_failure,
                                launch_failure, not_launched_finding, rendezvous_failure,
                                signal_name, stage0_failure, with_interruption)
from ..collect.facts import read_facts, torch_import_s
from ..collect.hostoutput import (parse_output, rank_record, tail, torchrun_failures,
                                  unreported_ranks)
from ..config.hostlist import hosts_text
from ..model.checks import Check
from ..model.outcomes import CommandResult, GroupResult, LaunchEnd
from ..model.records import HostRecord, Severity, Stage
from ..model.spec import ClusterSpec, HostSpec
from ..plan.cmdlines import (RendezvousBesideStage0, global_ranks, rendezvous_beside_stage0,
                             resolve_backend, stage0_command)
from ..model.report import Report
from ..transport.limits import ensure_open_files
from .launchers import HostStep, Launcher, RendezvousResults
from ..report.progress import Progress
from .state import REACH_WINDOW_S, RunState


class Workload(Protocol):
    command: str
    stage0: bool  # connect + stage 0 first; False: ``host_step`` runs on every host instead
    rendezvous_check: bool
    timeout_s: float
    verbose: bool
    stage0_timeout_s: float
    launch_grace_s: float  # after the agent's deadline, for it to clean up
    dcgm: Optional[int]  # preflight --dcgm N: dcgmi diag -r N in stage 0

    def host_step(self, run: "Engine") -> HostStep: ...
    def launch_without(self, run: "Engine", failed: list[HostRecord]) -> bool: ...
    def launch(self, run: "Engine") -> None: ...
    def report(self, run: "Engine", interrupted: bool) -> Report: ...


class Engine:
    def __init__(self, spec: ClusterSpec, workload: Workload, launcher: Launcher,
                 progress: Optional[Progress] = None) -> None:
        self.workload = workload
        self.launcher = launcher
        self.progress = progress or Progress()
        self.progress.expect(len(spec.hosts), workload.verbose)
        self.verbose = workload.verbose
        self.launch_grace_s = workload.launch_grace_s
        began = time.monotonic()
        self.spec = launcher.prepare(spec, self)
        self.state = RunState(self.spec, workload.timeout_s, began)
        # stage 0's outputs, kept while they carry the rendezvous check (``rendezvous_beside``)
        self.stage0_results: dict[str, CommandResult] = {}
        self.rendezvous_beside: Optional[RendezvousBesideStage0] = None
        self.stage = Stage.CONNECT  # where the run is (``enter``)
        self.interrupt: Optional[str] = None  # the signal that stopped the run: SIGINT, SIGTERM

    def run(self) -> Report:
        interrupted = False
        state = self.state
        if not self.spec.local:
            note = ensure_open_files(len(self.spec.hosts), self.spec.ssh.fanout)
            if note:
                self.progress.say(note)
        try:
            if not self.workload.stage0:
                step = self.workload.host_step(self)
                self.enter(step.stage)
                self.launcher.reach(self, step)
                interrupted = state.cancel.is_set()
            else:
                checked = self.workload.rendezvous_check and not self.spec.local
                if checked and self.launcher.rendezvous_in_stage0:
                    self.rendezvous_beside = rendezvous_beside_stage0(self.spec, REACH_WINDOW_S)
                self.enter(Stage.STAGE0)
                self.launcher.reach(self, stage0_step(self, self.rendezvous_beside))
                judge_stage0(self)
                if checked and not state.failed() and not state.cancel.is_set():
                    self.enter(Stage.RENDEZVOUS)
                    if self.rendezvous_beside is not None:
                        announce_rendezvous(self)
                        record_rendezvous(self, rendezvous_beside_results(self))
                    else:
                        check_rendezvous(self)
                self.stage0_results.clear()
                failed = state.failed()
                self.launcher.release([h.name for h in failed])  # no more work there
                if failed and not self.workload.launch_without(self, failed):
                    names = [h.name for h in failed]
                    state.add_findings([not_launched_finding(names)])
                    self.progress.say(f"not launching: {hosts_text(names)} failed before launch")
                elif state.cancel.is_set():
                    interrupted = True
                else:
                    self.enter(Stage.LAUNCH)
                    self.workload.launch(self)
        except KeyboardInterrupt as exc:
            interrupted = True
            self.interrupt = signal_name(exc)
            self.progress.say(f"interrupted ({self.interrupt}) at stage {self.stage}: stopping "
                              f"remote work")
        finally:
            state.cancel.set()
            self.launcher.close()
            self.progress.finish()
        report = self.workload.report(self, interrupted)
        if self.interrupt is None:
            return report
        return replace(report, findings=tuple(with_interruption(report.findings, self.interrupt,
                                                                self.stage.value)))

    def enter(self, stage: Stage) -> None:
        """The run's stage: what an interruption names, and what the progress line shows."""
        self.stage = stage
        self.progress.stage(stage.value)


# -- the stages every workload with stage 0 shares: run by the launcher, judged in analyze ------

def stage0_step(run: Engine, rendezvous: Optional[RendezvousBesideStage0] = None) -> HostStep:
    """Stage 0 on every host; with ``rendezvous``, the rendezvous check made beside it (the
    master's command then waits for the others': ``HostStep.listener``)."""
    master = run.spec.master_host.address
    dcgm = run.workload.dcgm
    return HostStep(Stage.STAGE0, run.workload.stage0_timeout_s,
                    lambda host, seconds: stage0_command(host, seconds, master=master,
                                                         dcgm=dcgm, rendezvous=rendezvous),
                    lambda host, result, window: record_stage0(run, host, result, window),
                    listener=rendezvous.master if rendezvous is not None else None)


def record_stage0(run: Engine, host: HostSpec, result: CommandResult,
                  clock_window: Optional[tuple[float, float]] = None) -> None:
    if run.rendezvous_beside is not None:
        run.stage0_results[host.name] = result
    parsed = parse_output(result.output)
    raw = parsed.facts or {}
    if raw and clock_window:
        raw["launcher_clock"] = list(clock_window)
    read = read_facts(raw)
    failure = stage0_failure(host, result, read, list(parsed.stray))
    gpus = read.gpus
    run.state.fail(host.name, failure, hostname=read.hostname, gpus=gpus, facts=read,
                   versions={"python": read.python, "torch": read.torch},
                   output_tail=tail(parsed.stray))
    if failure is not None and failure.check is Check.SSH:
        run.state.update(host.name, reachable=False)
    if failure is not None:
        run.progress.host(host.name, f"failed stage 0: {failure.message}")
        return
    torch = ("torch import failed" if not read.torch else
             f"torch {read.torch} (import {read.import_s}s)" if read.import_s is not None else
             f"torch {read.torch} (imported by torchrun)")
    run.progress.host(host.name, (
        f"checked: hostname {read.hostname}, python {read.python}, "
        f"{torch}, {gpus} GPU(s) in {result.duration_s:.1f}s"))


def judge_stage0(run: Engine) -> None:
    """Stage-0 health rules (``health``) on every host that answered. A host with a finding
    that makes the run pointless fails with it: torchrun will not start."""
    hosts = run.state.hosts
    answered = [h for h in run.spec.hosts
                if hosts[h.name].facts and hosts[h.name].failure is None]
    gpus = {h.name: hosts[h.name].gpus for h in answered}
    backend = resolve_backend(run.spec.backend, gpus).value if answered else "auto"
    for host in answered:
        facts = hosts[host.name].facts
        context = health.Stage0Context(
            backend=backend, slots=host.slots, multi_host=len(run.spec.hosts) > 1,
            clock_window=facts.launcher_clock)
        failure, findings = blocking_failure(host.name, health.host_findings(host.name, facts,
                                                                             context))
        if failure is not None:
            run.state.fail(host.name, failure)
            run.progress.host(host.name, f"failed stage 0: {failure.check}: {failure.message}")
        for finding in findings:
            if finding.severity is not Severity.INFO:
                run.progress.host(host.name, f"stage 0 {finding.severity.value}: "
                                             f"{finding.check}: {finding.message}")
        run.state.add_findings(findings)
    run.state.add_findings(health.cluster_gpu_findings(gpus))


def rendezvous_target(run: Engine) -> str:
    master = run.spec.master_host
    return f"{master.name} {master.address}:{run.spec.rendezvous_port}"


def announce_rendezvous(run: Engine) -> None:
    run.progress.say(f"rendezvous check: every host connects to {rendezvous_target(run)}")


def check_rendezvous(run: Engine) -> None:
    """Every host connects to master:port while the master listens there (a round of its own,
    where the launcher cannot make it beside stage 0); a host that cannot is named now, in
    seconds, instead of after torchrun's join timeout."""
    announce_rendezvous(run)
    record_rendezvous(run, run.launcher.rendezvous(run))


def rendezvous_beside_results(run: Engine) -> RendezvousResults:
    """The rendezvous check's outcomes from the stage-0 outputs that carry them."""
    master = run.spec.master_host.name
    results = run.stage0_results
    return ([("listen", master, results[master])] if master in results else []) + [
        ("reach", host.name, results[host.name]) for host in run.spec.hosts
        if host.name in results]


def record_rendezvous(run: Engine, results: RendezvousResults) -> None:
    """A host that could not reach the master (or a master that could not listen) fails."""
    target = rendezvous_target(run)
    for kind, name, result in results:
        failure = rendezvous_failure(kind, result, target)
        if failure is not None:
            run.state.fail(name, failure, stage=Stage.RENDEZVOUS)
            if not failure.no_result:
                run.progress.host(name, f"failed rendezvous check: {failure.message}")
        elif kind == "reach":
            run.progress.host(name, f"reached {target} in "
                                    f"{parse_output(result.output).reach.get('elapsed_s')}s")


def record_launch(run: Engine, name: str, result: CommandResult) -> LaunchEnd:
    """Record what one host's launch gave, and what that means for the others."""
    state = run.state
    parsed = parse_output(result.output)
    ranks = [rank_record(raw, name) for raw in parsed.ranks]
    agent = parsed.agent or {}
    hostname = state.hosts[name].hostname
    ranks += [replace(r, hostname=hostname) for r in unreported_ranks(
        name, global_ranks(run.spec.hosts, state.slots).get(name, ()),
        {r.rank for r in ranks}, agent, torchrun_failures(parsed.stray))]
    failure = launch_failure(result, parsed, ranks)
    state.add_ranks(ranks)
    if parsed.torch_import:  # torchrun's import: the import check of a stage 0 that inspected
        state.add_findings(health.slow_import_findings(name, torch_import_s(parsed.torch_import)))
    kept = agent.get("run_dir") if agent.get("kept") else None
    state.fail(name, failure, stage=Stage.DONE, launch_exit=agent.get("exit_code"),
               launch_stopped=agent.get("stopped") or ("deadline" if result.timed_out else None),
               output_tail=tail(parsed.stray), run_dir=kept)
    if result.lost:
        state.update(name, reachable=False)
    failed = [r for r in ranks if r.status.value != "ok"]
    progress = (f"failed: {failure.message}" if failure else
                f"done: {len(ranks)} rank(s), {len(failed)} failed" if failed else
                f"done: {len(ranks)} rank(s) ok")
    if kept:
        progress += f"; kept {kept}"
    run.progress.host(name, f"{progress} in {result.duration_s:.1f}s")
    return launch_end(failure, ranks)


def record_launch_errors(run: Engine, results: GroupResult[str]) -> None:
    """A host whose launch raised fails (the results were recorded as each host ended)."""
    for name, error in results.failed.items():
        run.state.fail(name, launch_error_failure(error))
