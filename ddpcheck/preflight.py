"""Preflight: the one way through, spec -> report, with the I/O at this edge.

connect + stage 0 on every host (one fan-out) -> plan -> torchrun + probe on every host (one
fan-out) -> collect -> analyze -> report. A host that fails before launch keeps torchrun from
starting anywhere: a world with a missing node can only hang until the rendezvous timeout.
The partial state is kept as hosts progress, so an interrupted or timed-out run still reports
what each host reached.
"""

from __future__ import annotations

import sys
import threading
import time
import uuid
from dataclasses import dataclass, replace
from typing import Optional, TextIO

from . import analyze
from .collect import parse_output, rank_record, tail
from .errors import HostError
from .plan import (HostLaunch, LaunchOptions, plan_launch, resolve_backend, resolve_slots,
                   stage0_command)
from .records import Finding, HostRecord, RankRecord, Severity, Verdict
from .report import Report
from .spec import Backend, ClusterSpec, HostSpec
from .transport import CommandResult, LocalSession, Session, SSHSession, fan_out

STAGE0_DEADLINE_S = 60.0


@dataclass(frozen=True)
class PreflightOptions:
    timeout_s: float = 180.0  # the whole command
    launch: LaunchOptions = LaunchOptions()
    verbose: bool = False


class Progress:
    """A line per host on stderr as its state changes, with seconds since start."""

    def __init__(self, stream: TextIO = sys.stderr) -> None:
        self.stream = stream
        self.started = time.monotonic()
        self.lock = threading.Lock()

    def host(self, name: str, state: str) -> None:
        self.say(f"{name}: {state}")

    def say(self, text: str) -> None:
        with self.lock:
            self.stream.write(f"ddpcheck [{time.monotonic() - self.started:6.1f}s] {text}\n")
            self.stream.flush()


class PreflightRun:
    def __init__(self, spec: ClusterSpec, options: PreflightOptions, progress: Progress) -> None:
        self.spec = spec
        self.options = options
        self.progress = progress
        self.started = time.monotonic()
        self.deadline = self.started + options.timeout_s
        self.cancel = threading.Event()
        self.sessions: dict[str, Session] = {}
        self.hosts: dict[str, HostRecord] = {h.name: HostRecord(h.name, h.address)
                                             for h in spec.hosts}
        self.ranks: list[RankRecord] = []
        self.extra_findings: list[Finding] = []
        self.slots: dict[str, int] = {}
        self.backend: Optional[str] = None
        self.lock = threading.Lock()

    # -- stage 0 ------------------------------------------------------------------------
    def check_host(self, host: HostSpec) -> None:
        self.progress.host(host.name, "connecting" if not self.spec.local else "checking")
        try:
            session: Session = (LocalSession() if self.spec.local
                                else SSHSession.connect(host, self.spec.ssh))
        except HostError as exc:
            self.update(host.name, error=exc.message, error_check="ssh", stage="connect")
            self.progress.host(host.name, f"unreachable: {exc.message}")
            return
        with self.lock:
            self.sessions[host.name] = session
        self.update(host.name, reachable=True, stage="stage0")
        deadline = min(self.deadline, time.monotonic() + STAGE0_DEADLINE_S)
        result = session.run(stage0_command(host, max(deadline - time.monotonic() - 2, 1)),
                             deadline, self.cancel)
        self.record_stage0(host, result)

    def record_stage0(self, host: HostSpec, result: CommandResult) -> None:
        parsed = parse_output(result.output)
        facts = parsed.facts or {}
        check, error = stage0_error(host, result, facts, list(parsed.stray))
        gpus = int(facts.get("gpus") or 0)
        self.update(host.name, hostname=facts.get("hostname"), gpus=gpus, facts=facts,
                    versions={"python": facts.get("python"), "torch": facts.get("torch")},
                    error=error, error_check=check, output_tail=tail(parsed.stray))
        if error:
            self.progress.host(host.name, f"failed stage 0: {error}")
        else:
            self.progress.host(host.name, (
                f"checked: hostname {facts.get('hostname')}, python {facts.get('python')}, "
                f"torch {facts.get('torch')} (import {facts.get('import_s')}s), {gpus} GPU(s) "
                f"in {result.duration_s:.1f}s"))

    # -- launch ------------------------------------------------------------------------
    def launch(self) -> None:
        specs = self.spec.hosts
        gpus = {h.name: self.hosts[h.name].gpus for h in specs}
        backend = resolve_backend(self.spec.backend, gpus)
        self.backend = backend.value
        self.slots = {h.name: resolve_slots(h, gpus[h.name], self.spec.local) for h in specs}
        remaining = self.deadline - time.monotonic()
        launch_options = replace(self.options.launch,
                                 deadline_s=max(min(self.options.launch.deadline_s,
                                                    remaining - 5.0), 5.0))
        plans = self.plan(backend, launch_options)
        for host_plan in plans:
            self.update(host_plan.host, slots=host_plan.slots, stage="launch")

        def run_one(host_plan):
            self.progress.host(host_plan.host, f"launched torchrun: node rank "
                                               f"{host_plan.node_rank}, {host_plan.slots} rank(s)")
            if self.options.verbose:
                self.progress.host(host_plan.host, f"command: {host_plan.command}")
            deadline = min(self.deadline, time.monotonic() + launch_options.deadline_s + 10)
            result = self.sessions[host_plan.host].run(host_plan.command, deadline, self.cancel)
            self.record_launch(host_plan.host, result)

        outcomes = fan_out(plans, run_one, len(plans), self.cancel)
        for outcome in outcomes:
            if outcome.error is not None:
                self.update(outcome.item.host, error=f"launch: {outcome.error}",
                            error_check="rendezvous")

    def plan(self, backend: Backend, launch_options: LaunchOptions) -> list[HostLaunch]:
        """Each host's torchrun command (the probe on every rank; other commands run others)."""
        return plan_launch(self.spec, self.slots, backend, launch_options,
                           run_id=uuid.uuid4().hex[:12])

    def record_launch(self, name: str, result: CommandResult) -> None:
        parsed = parse_output(result.output)
        ranks = [rank_record(raw, name) for raw in parsed.ranks]
        agent = parsed.agent or {}
        error, check = None, None
        if not ranks:
            check = "timeout" if result.timed_out or agent.get("stopped") else "rendezvous"
            why = ("interrupted" if result.cancelled else
                   f"no answer within the deadline" if result.timed_out else
                   f"torchrun exited {agent.get('exit_code', result.exit_code)}")
            error = f"launch: no rank reported back ({why}): {summary_of(parsed.stray)}"
        with self.lock:
            self.ranks.extend(ranks)
        self.update(name, stage="done", error=error, error_check=check, launch_exit=agent.get("exit_code"),
                    launch_stopped=agent.get("stopped") or (
                        "deadline" if result.timed_out else None),
                    output_tail=tail(parsed.stray))
        failed = [r for r in ranks if r.status.value != "ok"]
        state = (f"failed: {error}" if error else
                 f"done: {len(ranks)} rank(s), {len(failed)} failed" if failed else
                 f"done: {len(ranks)} rank(s) ok")
        self.progress.host(name, f"{state} in {result.duration_s:.1f}s")

    # -- whole run ---------------------------------------------------------------------
    def update(self, name: str, **changes) -> None:
        with self.lock:
            current = self.hosts[name]
            if changes.get("error") is None or current.error is not None:
                # keep the first error: it is the cause
                changes.pop("error", None)
                changes.pop("error_check", None)
            self.hosts[name] = replace(current, **changes)

    def run(self) -> Report:
        interrupted = False
        try:
            fan_out(list(self.spec.hosts), self.check_host, self.spec.ssh.fanout, self.cancel)
            failed = [h for h in self.hosts.values() if h.error]
            if failed and not self.can_launch_without(failed):
                names = ", ".join(h.name for h in failed)
                self.extra_findings.append(Finding(
                    Severity.INFO, "rendezvous",
                    f"torchrun was not started: {names} failed before launch, and a world with a "
                    f"missing node can only hang"))
                self.progress.say(f"not launching: {names} failed before launch")
            elif self.cancel.is_set():
                interrupted = True
            else:
                self.launch()
        except KeyboardInterrupt:
            interrupted = True
            self.progress.say("interrupted: stopping remote work")
        finally:
            self.cancel.set()
            for session in list(self.sessions.values()):
                session.close()
        return self.build_report(interrupted)

    def can_launch_without(self, failed: list[HostRecord]) -> bool:
        """Whether to launch although ``failed`` hosts failed stage 0: not for one world over
        all hosts (it could only hang); a command whose jobs span fewer hosts may."""
        return False

    def build_report(self, interrupted: bool) -> Report:
        hosts = [self.hosts[h.name] for h in self.spec.hosts]
        failed_hosts = frozenset(h.name for h in hosts if h.error)
        findings = analyze.host_findings(hosts) + self.extra_findings
        if self.slots:
            findings += analyze.rank_findings(self.ranks, self.slots,
                                              {h.name: h.gpus for h in hosts},
                                              self.backend or "", failed_hosts)
        findings = analyze.mark_single_root_cause(analyze.order_findings(findings))
        verdict = analyze.verdict(findings, hosts, interrupted)
        ranks = sorted(self.ranks, key=lambda r: (r.rank is None, r.rank or 0))
        world_sizes = {r.world_size for r in ranks if r.world_size is not None}
        root = next((r for r in ranks if r.rank == 0), None)
        return Report(
            command="preflight", verdict=verdict, exit_code=analyze.EXIT_CODES[verdict],
            duration_s=time.monotonic() - self.started, backend=self.backend,
            world_size=max(world_sizes) if world_sizes else (len(ranks) or None),
            expected_world_size=sum(self.slots.values()) if self.slots else None,
            hosts=tuple(hosts), ranks=tuple(ranks), findings=tuple(findings),
            source=self.spec.source,
            master=f"{self.spec.master_host.address}:{self.spec.rendezvous_port}",
            collectives=tuple(root.collectives) if root else ())


def stage0_error(host: HostSpec, result: CommandResult, facts: dict,
                 stray: list[str]) -> tuple[Optional[str], Optional[str]]:
    """(check, message) for what kept stage 0 from giving this host's facts; (None, None)."""
    if result.cancelled:
        return "timeout", "stage 0 interrupted"
    if result.timed_out:
        return "timeout", "stage 0 did not finish before its deadline"
    if result.exit_code == 127:
        return "python", f"interpreter {host.python!r} not found"
    if not facts:
        text = "\n".join(stray)
        if "No module named" in text and "ddpcheck" in text:
            return "python", f"ddpcheck is not importable by {host.python}"
        return "python", f"stage 0 exited {result.exit_code}: {summary_of(stray)}"
    if facts.get("torch_error"):
        return "torch_import", f"import torch failed: {facts['torch_error']}"
    return None, None


def summary_of(lines: list[str] | tuple[str, ...]) -> str:
    """The most telling line of a host's stray output (the last error-looking one)."""
    for line in reversed(lines):
        if "Error" in line or "error" in line:
            return line.strip()[:300]
    return lines[-1].strip()[:300] if lines else "no output"


def run_preflight(spec: ClusterSpec, options: PreflightOptions,
                  progress: Optional[Progress] = None) -> Report:
    return PreflightRun(spec, options, progress or Progress()).run()
