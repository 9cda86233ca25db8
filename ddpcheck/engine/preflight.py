"""Preflight: the one way through, spec -> report, with the I/O at this edge.

connect + stage 0 on every host (one fan-out) -> the rendezvous check (the master listens on
the rendezvous port, every host connects: one fan-out) -> plan -> torchrun + probe on every
host (one fan-out) -> collect -> analyze -> report. A host that fails before launch keeps
torchrun from starting anywhere: a world with a missing node can only hang until the
rendezvous timeout.
The partial state is kept as hosts progress, so an interrupted or timed-out run still reports
what each host reached.

Deadlines: ``--timeout`` bounds the whole command and caps every step's own: connect
(``ssh.connect_timeout`` per step), stage 0 (``stage0_timeout_s``), the rendezvous check,
launch (the agent's deadline on the host, plus ``launch_grace_s`` for it to clean up before
the transport gives up on it), in which torchrun's rendezvous and the ranks' collectives have
theirs, and the probe its watchdog; reading what is left after a command (transport
``FETCH_DEADLINE_S``).
"""

from __future__ import annotations

import sys
import threading
import time
import uuid
from dataclasses import dataclass, replace
from typing import Optional, TextIO

from ..analyze import verdict as analyze

from ..analyze import health
from ..collect.hostoutput import parse_output, rank_record, tail, torchrun_failures, unreported_ranks
from ..model.errors import HostError
from ..plan.commands import (HostLaunch, LaunchOptions, global_ranks, plan_launch,
                   plan_rendezvous_check, redact_secrets, resolve_backend, resolve_slots,
                   stage0_command)
from ..model.records import Finding, HostRecord, RankRecord, Severity
from ..report.grouping import hosts_text
from ..report.table import Report
from ..model.spec import Backend, ClusterSpec, HostSpec
from ..transport.ssh import CommandResult, JumpPool, LocalSession, Session, SSHSession, fan_out

STAGE0_DEADLINE_S = 60.0
LAUNCH_GRACE_S = 10.0  # after the agent's deadline, for it to stop torchrun and clean up
AGENT_STOP_S = 5.0  # what the agent's deadline keeps back from --timeout to stop and report
WORLD_BROKEN_GRACE_S = 5.0  # after one host failed: the collective timeout, then this
REACH_WINDOW_S = 5.0  # how long a host keeps trying the master's rendezvous port


@dataclass(frozen=True)
class PreflightOptions:
    timeout_s: float = 180.0  # the whole command
    launch: LaunchOptions = LaunchOptions()
    verbose: bool = False
    rendezvous_check: bool = True  # connect to master:port from every host before torchrun
    stage0_timeout_s: float = STAGE0_DEADLINE_S  # connect is ssh.connect_timeout
    launch_grace_s: float = LAUNCH_GRACE_S


class Progress:
    """A line per host on stderr as its state changes, with seconds since start."""

    def __init__(self, stream: Optional[TextIO] = sys.stderr) -> None:
        self.stream = stream  # None: quiet (-q)
        self.started = time.monotonic()
        self.lock = threading.Lock()

    def host(self, name: str, state: str) -> None:
        self.say(f"{name}: {state}")

    def say(self, text: str) -> None:
        if self.stream is None:
            return
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
        self.jumps = JumpPool(spec.ssh)  # ProxyJump: one connection per jump host, shared

    # -- stage 0 ------------------------------------------------------------------------
    def check_host(self, host: HostSpec) -> None:
        if self.cancel.is_set():
            return
        via = f" through {' > '.join(j.name for j in host.jumps)}" if host.jumps else ""
        self.progress.host(host.name, f"connecting{via}" if not self.spec.local else "checking")
        # every connect step gets the smaller of its own timeout and what --timeout leaves
        ssh = replace(self.spec.ssh, connect_timeout=max(min(
            self.spec.ssh.connect_timeout, self.deadline - time.monotonic()), 0.5))
        try:
            session: Session = (LocalSession() if self.spec.local
                                else SSHSession.connect(host, ssh, self.jumps))
        except HostError as exc:
            self.update(host.name, error=exc.message, error_check="ssh", stage="connect")
            self.progress.host(host.name, f"unreachable: {exc.message}")
            return
        with self.lock:
            self.sessions[host.name] = session
        self.update(host.name, reachable=True, stage="stage0")
        deadline = min(self.deadline, time.monotonic() + self.options.stage0_timeout_s)
        command = stage0_command(host, max(deadline - time.monotonic() - 2, 1),
                                 master=self.spec.master_host.address)
        sent = time.time()  # the launcher's clock around the call bounds the host's clock
        result = session.run(command, deadline, self.cancel)
        self.record_stage0(host, result, (sent, time.time()))

    def record_stage0(self, host: HostSpec, result: CommandResult,
                      clock_window: Optional[tuple[float, float]] = None) -> None:
        parsed = parse_output(result.output)
        facts = parsed.facts or {}
        if facts and clock_window and not self.spec.local:
            facts["launcher_clock"] = list(clock_window)
        check, error = stage0_error(host, result, facts, list(parsed.stray))
        gpus = int(facts.get("gpus") or 0)
        self.update(host.name, hostname=facts.get("hostname"), gpus=gpus, facts=facts,
                    versions={"python": facts.get("python"), "torch": facts.get("torch")},
                    error=error, error_check=check, output_tail=tail(parsed.stray))
        if check == "ssh":
            self.update(host.name, reachable=False)
        if error:
            self.progress.host(host.name, f"failed stage 0: {error}")
        else:
            torch = (f"torch {facts.get('torch')} (import {facts.get('import_s')}s)"
                     if facts.get("torch") else "torch import failed")
            self.progress.host(host.name, (
                f"checked: hostname {facts.get('hostname')}, python {facts.get('python')}, "
                f"{torch}, {gpus} GPU(s) in {result.duration_s:.1f}s"))

    def judge_stage0(self) -> None:
        """Stage-0 health rules on every host that answered (pure, in ``health``). A host with
        an error that makes the run pointless gets it as its error: torchrun will not start."""
        answered = [h for h in self.spec.hosts
                    if self.hosts[h.name].facts and not self.hosts[h.name].error]
        gpus = {h.name: self.hosts[h.name].gpus for h in answered}
        backend = resolve_backend(self.spec.backend, gpus).value if answered else "auto"
        for host in answered:
            facts = self.hosts[host.name].facts
            window = facts.get("launcher_clock")
            context = health.Stage0Context(
                backend=backend, slots=host.slots, multi_host=len(self.spec.hosts) > 1,
                clock_window=tuple(window) if isinstance(window, list) and len(window) == 2
                else None)
            findings = health.host_findings(host.name, facts, context)
            blocking = next((f for f in findings if health.blocks_launch(f)), None)
            if blocking is not None:
                prefix = f"{host.name}: "
                message = blocking.message[len(prefix):] if blocking.message.startswith(
                    prefix) else blocking.message
                self.update(host.name, error=message, error_check=blocking.check)
                self.progress.host(host.name, f"failed stage 0: {blocking.check}: {message}")
                findings.remove(blocking)
            for finding in findings:
                if finding.severity is not Severity.INFO:
                    self.progress.host(host.name, f"stage 0 {finding.severity.value}: "
                                                  f"{finding.check}: {finding.message}")
            self.extra_findings += findings
        self.extra_findings += health.cluster_gpu_findings(gpus)

    # -- rendezvous check ------------------------------------------------------------
    def check_rendezvous(self) -> None:
        """Every host connects to master:port while the master listens there; a host that
        cannot is named now, in seconds, instead of after torchrun's join timeout."""
        check = plan_rendezvous_check(self.spec, REACH_WINDOW_S)
        master = self.spec.master_host
        target = f"{master.name} {master.address}:{self.spec.rendezvous_port}"
        self.progress.say(f"rendezvous check: every host connects to {target}")
        jobs = [("listen", check.master, check.listen_command)] + [
            ("reach", name, command) for name, command in check.reach_commands.items()]
        deadline = min(self.deadline, time.monotonic() + REACH_WINDOW_S + 15.0)

        def run_one(job: tuple[str, str, str]) -> None:
            kind, name, command = job
            self.judge_rendezvous(kind, name, self.sessions[name].run(command, deadline,
                                                                      self.cancel), target)

        fan_out(jobs, run_one, len(jobs), self.cancel)

    def judge_rendezvous(self, kind: str, name: str, result: CommandResult,
                         target: str) -> None:
        """One host's part of the rendezvous check: its listen or reach outcome."""
        parsed = parse_output(result.output)
        outcome = parsed.listen if kind == "listen" else parsed.reach
        if outcome is None:
            why = "no answer" if result.timed_out else summary_of(parsed.stray)
            self.update(name, error=f"rendezvous check: {kind} gave no result ({why})",
                        error_check="rendezvous", stage="rendezvous")
        elif not outcome.get("ok"):
            error = (f"{outcome.get('error')} on the master" if kind == "listen" else
                     f"cannot connect to master {target}: {outcome.get('error')} "
                     f"(tried {outcome.get('elapsed_s')}s)")
            self.update(name, error=error, error_check="rendezvous", stage="rendezvous")
            self.progress.host(name, f"failed rendezvous check: {error}")
        elif kind == "reach":
            self.progress.host(name, f"reached {target} in {outcome.get('elapsed_s')}s")

    # -- launch ------------------------------------------------------------------------
    def launch(self) -> None:
        specs = self.spec.hosts
        gpus = {h.name: self.hosts[h.name].gpus for h in specs}
        backend = resolve_backend(self.spec.backend, gpus)
        self.backend = backend.value
        self.slots = {h.name: resolve_slots(h, gpus[h.name], self.spec.local) for h in specs}
        remaining = self.deadline - time.monotonic()
        # the agent's deadline leaves it time to stop torchrun and report within --timeout
        launch_options = replace(self.options.launch,
                                 deadline_s=round(max(min(self.options.launch.deadline_s,
                                                          remaining - AGENT_STOP_S), 1.0), 1))
        plans = self.plan(backend, launch_options)
        for host_plan in plans:
            self.update(host_plan.host, slots=host_plan.slots, stage="launch")

        # Once a host's launch ends with failures the world cannot finish: the others get the
        # collective timeout (their ranks fail by themselves within it) and a grace, then
        # their agents are asked to stop, and report which ranks were still running.
        stop_launch = threading.Event()
        stoppers: list[threading.Timer] = []
        window = launch_options.collective_timeout_s + WORLD_BROKEN_GRACE_S

        def world_broken(name: str) -> None:
            with self.lock:
                if stoppers:
                    return
                timer = threading.Timer(window, stop_launch.set)
                timer.daemon = True
                stoppers.append(timer)
            timer.start()
            self.progress.say(f"{name} ended with failures: hosts still running get {window:g}s "
                              f"to end, then are asked to stop")

        def run_one(host_plan):
            self.progress.host(host_plan.host, f"launched torchrun: node rank "
                                               f"{host_plan.node_rank}, {host_plan.slots} rank(s)")
            if self.options.verbose:
                self.progress.host(host_plan.host,
                                   f"command: {redact_secrets(host_plan.command)}")
            deadline = min(self.deadline, time.monotonic() + launch_options.deadline_s
                           + self.options.launch_grace_s)
            result = self.sessions[host_plan.host].run(host_plan.command, deadline, self.cancel,
                                                       stop=stop_launch)
            if self.record_launch(host_plan.host, result) and len(plans) > 1:
                world_broken(host_plan.host)

        try:
            outcomes = fan_out(plans, run_one, len(plans), self.cancel)
        finally:
            for timer in stoppers:
                timer.cancel()
        for outcome in outcomes:
            if outcome.error is not None:
                self.update(outcome.item.host, error=f"launch: {outcome.error}",
                            error_check="rendezvous")

    def plan(self, backend: Backend, launch_options: LaunchOptions) -> list[HostLaunch]:
        """Each host's torchrun command (the probe on every rank; other commands run others)."""
        return plan_launch(self.spec, self.slots, backend, launch_options,
                           run_id=uuid.uuid4().hex[:12])

    def record_launch(self, name: str, result: CommandResult) -> bool:
        """Record what one host's launch gave; True when something failed there."""
        parsed = parse_output(result.output)
        ranks = [rank_record(raw, name) for raw in parsed.ranks]
        agent = parsed.agent or {}
        hostname = self.hosts[name].hostname
        ranks += [replace(r, hostname=hostname) for r in unreported_ranks(
            name, global_ranks(self.spec.hosts, self.slots).get(name, ()),
            {r.rank for r in ranks}, agent, torchrun_failures(parsed.stray))]
        error, check = None, None
        if agent.get("error"):  # the run directory could not be made: the workdir is unusable
            check, error = "resources", f"launch: {agent['error']}"
        elif result.lost and not ranks:
            check, error = "ssh", "launch: the connection was lost before any rank reported"
        elif not ranks:
            check = "timeout" if result.timed_out or agent.get("stopped") else "rendezvous"
            why = ("interrupted" if result.cancelled else
                   "no answer within the deadline" if result.timed_out else
                   f"the agent stopped torchrun: {agent['stopped']}" if agent.get("stopped")
                   else f"torchrun exited {agent.get('exit_code', result.exit_code)}")
            error = f"launch: no rank reported back ({why}): {summary_of(parsed.stray)}"
        with self.lock:
            self.ranks.extend(ranks)
        kept = agent.get("run_dir") if agent.get("kept") else None
        self.update(name, stage="done", error=error, error_check=check,
                    launch_exit=agent.get("exit_code"),
                    launch_stopped=agent.get("stopped") or (
                        "deadline" if result.timed_out else None),
                    output_tail=tail(parsed.stray), run_dir=kept)
        if result.lost:
            self.update(name, reachable=False)
        failed = [r for r in ranks if r.status.value != "ok"]
        state = (f"failed: {error}" if error else
                 f"done: {len(ranks)} rank(s), {len(failed)} failed" if failed else
                 f"done: {len(ranks)} rank(s) ok")
        if kept:
            state += f"; kept {kept}"
        self.progress.host(name, f"{state} in {result.duration_s:.1f}s")
        return bool(error or failed)

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
            self.stage0()
            self.judge_stage0()
            if (self.options.rendezvous_check and self.sessions
                    and not self.spec.local
                    and not any(h.error for h in self.hosts.values())
                    and not self.cancel.is_set()):
                self.check_rendezvous()
            failed = [h for h in self.hosts.values() if h.error]
            if failed and not self.can_launch_without(failed):
                self.extra_findings.append(Finding(
                    Severity.INFO, "rendezvous",
                    not_launched_message([h.name for h in failed])))
                self.progress.say(f"not launching: {hosts_text([h.name for h in failed])} "
                                  f"failed before launch")
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
            self.jumps.close()
        return self.build_report(interrupted)

    def can_launch_without(self, failed: list[HostRecord]) -> bool:
        """Whether to launch although ``failed`` hosts failed stage 0: not for one world over
        all hosts (it could only hang); a command whose jobs span fewer hosts may."""
        return False

    def stage0(self) -> None:
        """Connect to every host and collect its facts (one fan-out)."""
        fan_out(list(self.spec.hosts), self.check_host, self.spec.ssh.fanout, self.cancel)

    def build_report(self, interrupted: bool) -> Report:
        hosts = [self.hosts[h.name] for h in self.spec.hosts]
        failed_hosts = frozenset(h.name for h in hosts if h.error)
        findings = analyze.host_findings(hosts, self.pinned_interfaces()) + self.extra_findings
        drift_rows: list[dict] = []
        if self.slots:
            findings += analyze.rank_findings(self.ranks, self.slots,
                                              {h.name: h.gpus for h in hosts},
                                              self.backend or "", failed_hosts)
            launch = self.options.launch
            drifted, drift_rows = analyze.drift_report(
                self.ranks, seeded=launch.seed is not None or bool(launch.setup))
            findings += drifted
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
            collectives=tuple(root.collectives) if root else (),
            extra={**({"drift": drift_rows} if drift_rows else {}),
                   "stage0": {h.name: dict(h.facts) for h in hosts if h.facts}})

    def pinned_interfaces(self) -> frozenset[str]:
        """Hosts whose ranks are told their interface (a hostname on loopback is then harmless)."""
        names = ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME", "TP_SOCKET_IFNAME")
        return frozenset(h.name for h in self.spec.hosts if any(n in h.env for n in names))


def not_launched_message(failed: list[str]) -> str:
    return (f"torchrun was not started: {hosts_text(failed)} failed before launch, and a "
            f"world with a missing node can only hang")


def stage0_error(host: HostSpec, result: CommandResult, facts: dict,
                 stray: list[str]) -> tuple[Optional[str], Optional[str]]:
    """(check, message) for what kept stage 0 from giving this host's facts; (None, None)."""
    if result.cancelled:
        return "timeout", "stage 0 interrupted"
    if result.timed_out:
        return "timeout", "stage 0 did not finish before its deadline"
    if result.lost and not facts:
        return "ssh", "the connection was lost during stage 0"
    if result.exit_code == 127:
        return "python", f"interpreter {host.python!r} not found"
    if not facts:
        text = "\n".join(stray)
        workdir_line = next((line for line in stray if line.lstrip().startswith(
            ("mkdir:", "cd:", "sh:", "bash:")) and host.workdir in line), None)
        if workdir_line is not None:
            return "resources", (f"cannot create or enter the workdir {host.workdir}: "
                                 f"{workdir_line.strip()[:300]}")
        if "No module named" in text and "ddpcheck" in text:
            return "python", f"ddpcheck is not importable by {host.python}"
        return "python", f"stage 0 exited {result.exit_code}: {summary_of(stray)}"
    if facts.get("workdir_write_error"):  # the run directory could not be made there
        return "resources", str(facts["workdir_write_error"])
    return None, None  # what the facts say is judged by the health rules


def summary_of(lines: list[str] | tuple[str, ...]) -> str:
    """The most telling line of a host's stray output (the last error-looking one)."""
    for line in reversed(lines):
        if ("Error" in line or "error" in line) and "error_file:" not in line:
            return line.strip()[:300]
    return lines[-1].strip()[:300] if lines else "no output"


def run_preflight(spec: ClusterSpec, options: PreflightOptions,
                  progress: Optional[Progress] = None) -> Report:
    return PreflightRun(spec, options, progress or Progress()).run()
