"""Launchers: how the engine reaches hosts and starts work there. Runs on the launcher.

A ``Launcher`` does the I/O of four things for the one run loop (``engine.run``): reach every
host and run one step there (stage 0, or a hang scan), the rendezvous check, one world's launch
(a torchrun per host), and plain per-host jobs (the pair rounds). What the outputs mean is
decided in ``analyze`` and recorded by the engine. ``SSHLauncher`` (SSH, or this machine
without HOSTS) is here; ``SrunLauncher`` is in ``engine.srun``. A third launcher is a new class
with these methods, not a new copy of the loop.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, replace
from typing import Callable, Optional, Protocol, Sequence

from ..analyze.outcomes import not_reached_failure
from ..model.checks import Check
from ..model.errors import HostError
from ..model.outcomes import CommandResult, Failure, LaunchEnd
from ..model.records import Stage
from ..model.spec import ClusterSpec, HostSpec
from ..plan.commands import RankProgram, plan_launch, plan_rendezvous_check, redact_secrets
from ..transport.fanout import fan_out
from ..transport.jump import JumpPool
from ..transport.local import LocalSession
from ..transport.multiplex import Job, run_many
from ..transport.ssh import Session, SSHSession
from .progress import Progress
from .state import MIN_CONNECT_S, REACH_WINDOW_S, WORLD_BROKEN_GRACE_S, LaunchSetup, RunState


class Run(Protocol):
    """What a launcher sees of the run (``engine.run.Engine``)."""

    spec: ClusterSpec
    state: RunState
    progress: Progress
    verbose: bool
    launch_grace_s: float  # after the agent's deadline, for it to clean up


@dataclass(frozen=True)
class HostStep:
    """The first step on every host: its command (host, seconds it may take) and what to do
    with the result (host, result, the launcher's clock around the call)."""

    stage: Stage
    timeout_s: float
    command: Callable[[HostSpec, float], str]
    record: Callable[[HostSpec, CommandResult, Optional[tuple[float, float]]], None]
    starting: str = "checking"  # the progress word for this machine (no connect)
    last: bool = False  # nothing runs on the host after this step: close its session at once


@dataclass(frozen=True)
class HostJob:
    """One command on one host, with its own deadline."""

    host: str
    command: str
    deadline_s: float


RendezvousResults = list[tuple[str, str, CommandResult]]  # (listen | reach, host, result)
HostDone = Callable[[str, CommandResult], LaunchEnd]  # what a host's end means for the rest


class Launcher(Protocol):
    def prepare(self, spec: ClusterSpec, run: Run) -> ClusterSpec: ...
    def reach(self, run: Run, step: HostStep) -> None: ...
    def rendezvous(self, run: Run) -> RendezvousResults: ...
    def launch(self, run: Run, setup: LaunchSetup, program: Optional[RankProgram],
               done: HostDone) -> None: ...
    def run_jobs(self, run: Run, jobs: Sequence[HostJob]) -> dict[int, CommandResult]: ...
    def release(self, names: Sequence[str]) -> None: ...
    def close(self) -> None: ...


class SSHLauncher:
    """Every host over SSH (one shared ProxyJump pool, connect capped by --timeout), or this
    machine alone when the spec is local."""

    def __init__(self) -> None:
        self.sessions: dict[str, Session] = {}
        self.jumps: Optional[JumpPool] = None
        self.lock = threading.Lock()

    def prepare(self, spec: ClusterSpec, run: Run) -> ClusterSpec:
        self.jumps = JumpPool(spec.ssh)  # ProxyJump: one connection per jump host, shared
        return spec

    def reach(self, run: Run, step: HostStep) -> None:
        fan_out(list(run.spec.hosts), lambda host: self.reach_one(run, host, step),
                run.spec.ssh.fanout, run.state.cancel)

    def reach_one(self, run: Run, host: HostSpec, step: HostStep) -> None:
        state = run.state
        if state.cancel.is_set():
            return
        if state.left() < MIN_CONNECT_S and not run.spec.local:
            # the --timeout ran out before this host's turn: no connection is started
            state.fail(host.name, not_reached_failure(state.timeout_s, "not connected"),
                       stage=Stage.CONNECT)
            run.progress.host(host.name, "not reached: --timeout ran out before its turn")
            return
        via = f" through {' > '.join(j.name for j in host.jumps)}" if host.jumps else ""
        run.progress.host(host.name, f"connecting{via}" if not run.spec.local else step.starting)
        ssh = replace(run.spec.ssh, connect_timeout=state.connect_timeout())
        try:
            session: Session = (LocalSession() if run.spec.local
                                else SSHSession.connect(host, ssh, self.jumps))
        except HostError as exc:
            state.fail(host.name, Failure(Check.SSH, exc.message), stage=Stage.CONNECT)
            run.progress.host(host.name, f"unreachable: {exc.message}")
            return
        with self.lock:
            self.sessions[host.name] = session
        state.update(host.name, reachable=True, stage=step.stage)
        deadline = state.until(step.timeout_s)
        command = step.command(host, max(deadline - time.monotonic() - 2, 1))
        if run.verbose and step.stage is not Stage.STAGE0:
            run.progress.host(host.name, f"command: {command}")
        sent = time.time()  # the launcher's clock around the call bounds the host's clock
        result = session.run(command, deadline, state.cancel)
        if step.last:
            self.release([host.name])  # its connection, fd and transport thread go now
        if result.timed_out and state.left() < MIN_CONNECT_S and not state.cancel.is_set():
            # the run's --timeout, not the step's own deadline, cut it short: not checked
            state.fail(host.name, not_reached_failure(state.timeout_s,
                                                      f"its {step.stage.value} was running"))
            run.progress.host(host.name, f"not reached in time: its {step.stage.value} was "
                                         f"still running at --timeout")
            return
        step.record(host, result, None if run.spec.local else (sent, time.time()))

    def rendezvous(self, run: Run) -> RendezvousResults:
        check = plan_rendezvous_check(run.spec, REACH_WINDOW_S)
        jobs = [("listen", check.master, check.listen_command)] + [
            ("reach", name, command) for name, command in check.reach_commands.items()]
        deadline = run.state.until(REACH_WINDOW_S + 15.0)
        outcomes = run_many([Job(self.sessions.get(name), command, deadline)
                             for _, name, command in jobs], run.spec.ssh.fanout, run.state.cancel)
        return [(kind, name, o.result) for (kind, name, _), o in zip(jobs, outcomes)
                if o.result is not None]

    def launch(self, run: Run, setup: LaunchSetup, program: Optional[RankProgram],
               done: HostDone) -> None:
        """One torchrun per host. Once a host's launch ends with failures the world cannot
        finish: the others get the collective timeout (their ranks fail by themselves within
        it) and a grace, then their agents are asked to stop, and report which ranks were
        still running. A host whose torchrun never started never joins: they are asked at
        once."""
        extra = {"rank_program": program} if program is not None else {}
        plans = plan_launch(run.spec, setup.slots, setup.backend, setup.options,
                            run_id=uuid.uuid4().hex[:12], **extra)
        for host_plan in plans:
            run.state.update(host_plan.host, slots=host_plan.slots, stage=Stage.LAUNCH)
        stop = threading.Event()
        stoppers: list[threading.Timer] = []
        window = setup.options.collective_timeout_s + WORLD_BROKEN_GRACE_S

        def world_broken(name: str, end: LaunchEnd) -> None:
            if end is LaunchEnd.NEVER_JOINED:
                if not stop.is_set():
                    stop.set()
                    run.progress.say(f"{name}'s torchrun never started, so the world cannot "
                                     f"form: hosts still running are asked to stop now")
                return
            with self.lock:
                if stoppers:
                    return
                timer = threading.Timer(window, stop.set)
                timer.daemon = True
                stoppers.append(timer)
            timer.start()
            run.progress.say(f"{name} ended with failures: hosts still running get {window:g}s "
                             f"to end, then are asked to stop")

        deadline = run.state.until(setup.options.deadline_s + run.launch_grace_s)
        for host_plan in plans:
            run.progress.host(host_plan.host, f"launched torchrun: node rank "
                                              f"{host_plan.node_rank}, {host_plan.slots} rank(s)")
            if run.verbose:
                run.progress.host(host_plan.host, f"command: {redact_secrets(host_plan.command)}")

        def ended(index: int, result: CommandResult) -> None:
            # as soon as that host's launch ends, not when all end
            end = done(plans[index].host, result)
            if end is not LaunchEnd.OK and len(plans) > 1:
                world_broken(plans[index].host, end)

        try:
            outcomes = run_many([Job(self.sessions.get(p.host), p.command, deadline, stop)
                                 for p in plans], run.spec.ssh.fanout, run.state.cancel, ended)
        finally:
            for timer in stoppers:
                timer.cancel()
        for host_plan, outcome in zip(plans, outcomes):
            if outcome.error is not None:
                run.state.fail(host_plan.host,
                               Failure(Check.RENDEZVOUS, f"launch: {outcome.error}"))

    def run_jobs(self, run: Run, jobs: Sequence[HostJob]) -> dict[int, CommandResult]:
        """Each job on its host at once; {index: result}, no entry for a job that raised."""
        if run.verbose:
            for job in jobs:
                run.progress.host(job.host, f"command: {job.command}")
        outcomes = run_many([Job(self.sessions.get(job.host), job.command,
                                 run.state.until(job.deadline_s)) for job in jobs],
                            run.spec.ssh.fanout, run.state.cancel)
        return {i: o.result for i, o in enumerate(outcomes) if o.result is not None}

    def release(self, names: Sequence[str]) -> None:
        """Close the sessions of hosts nothing more will run on (failed before launch, or
        done): at 1,000 hosts each one held is a socket and a paramiko thread."""
        with self.lock:
            sessions = [self.sessions.pop(name) for name in names if name in self.sessions]
        for session in sessions:
            session.close()

    def close(self) -> None:
        with self.lock:
            sessions = list(self.sessions.values())
        for session in sessions:
            session.close()
        if self.jumps is not None:
            self.jumps.close()
