"""Launchers: how the engine reaches hosts and starts work there. Runs on the launcher.

A ``Launcher`` does the I/O of four things for the one run loop (``engine.run``): reach every
host and run one step there (stage 0, or a hang scan), the rendezvous check (over SSH made by
stage 0 itself, the master's stage 0 listening; under srun a step of its own), one world's
launch (a torchrun per host), and plain per-host jobs (the pair rounds); a launch and a set of
jobs return a ``GroupResult``: each host's (job's) result or the exception it raised. What the
outputs and exceptions mean is decided in ``analyze`` and recorded by the engine. ``SSHLauncher`` (SSH, or this machine
without HOSTS) is here; ``SrunLauncher`` is in ``engine.srun``. A third launcher is a new class
with these methods, not a new copy of the loop.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, replace
from typing import Callable, Optional, Protocol, Sequence

from ..analyze.outcomes import connect_failure, not_reached_failure
from ..model.errors import HostError
from ..model.outcomes import CommandResult, GroupResult, LaunchEnd
from ..model.records import Stage
from ..model.spec import ClusterSpec, HostSpec
from ..plan.cmdlines import HostLaunch, RankProgram, plan_launch, redact_secrets
from ..transport.fanout import fan_out
from ..transport.jump import JumpPool
from ..transport.local import LocalSession
from ..transport.multiplex import Job, run_many
from ..transport.ssh import Session, SSHSession
from ..report.progress import Progress
from .state import MIN_CONNECT_S, WORLD_BROKEN_GRACE_S, LaunchSetup, RunState


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
    # The host whose command waits for the others' (the rendezvous listener beside stage 0):
    # it is sent the stop line once every other host's step has ended, and they are sent it
    # once its own has.
    listener: Optional[str] = None


@dataclass(frozen=True)
class HostJob:
    """One command on one host, with its own deadline."""

    host: str
    command: str
    deadline_s: float
    # what the command was planned from (a round of pair jobs): a launcher that posts shapes
    # and lets each node plan its own command (the in-job store) sends this, never the command
    shape: Optional[dict] = None


RendezvousResults = list[tuple[str, str, CommandResult]]  # (listen | reach, host, result)
HostDone = Callable[[str, CommandResult], LaunchEnd]  # what a host's end means for the rest
HostLine = Callable[[str, str], None]  # (host, line): a line of its output as it comes


class Launcher(Protocol):
    rendezvous_in_stage0: bool  # stage 0 makes the rendezvous check; else ``rendezvous()``

    def prepare(self, spec: ClusterSpec, run: Run) -> ClusterSpec: ...
    def reach(self, run: Run, step: HostStep) -> None: ...
    def rendezvous(self, run: Run) -> RendezvousResults: ...  # if not rendezvous_in_stage0
    def launch(self, run: Run, setup: LaunchSetup, program: Optional[RankProgram],
               done: HostDone, on_line: Optional[HostLine] = None) -> GroupResult[str]: ...
    def run_jobs(self, run: Run, jobs: Sequence[HostJob]) -> GroupResult[int]: ...
    def release(self, names: Sequence[str]) -> None: ...
    def close(self) -> None: ...


def _lines_of(host: str, on_line: Optional[HostLine]) -> Optional[Callable[[str], None]]:
    """One host's output lines to ``on_line(host, line)``."""
    if on_line is None:
        return None
    return lambda line: on_line(host, line)


class ListenerStops:
    """The stop lines of a step with a listener (``HostStep.listener``): the listener's once
    every other host's step has ended (alone, it is its own only peer: none), the others'
    once the listener's step has. Without a listener, none."""

    def __init__(self, hosts: int, listener: Optional[str]) -> None:
        self.listener = listener
        self.others_left = hosts - 1
        self.alone = hosts == 1
        self.others_done = threading.Event()
        self.listener_done = threading.Event()
        self.lock = threading.Lock()

    def stop_for(self, name: str) -> Optional[threading.Event]:
        if self.listener is None:
            return None
        if name != self.listener:
            return self.listener_done
        return None if self.alone else self.others_done

    def ended(self, name: str) -> None:
        if self.listener is None:
            return
        if name == self.listener:
            self.listener_done.set()
            return
        with self.lock:
            self.others_left -= 1
            if self.others_left == 0:
                self.others_done.set()


def announce_launch(run: Run, plans: Sequence[HostLaunch]) -> None:
    """Each host's launch: its stage, and the progress line (with -v its command)."""
    for host_plan in plans:
        run.state.update(host_plan.host, slots=host_plan.slots, stage=Stage.LAUNCH)
        run.progress.host(host_plan.host, f"launched torchrun: node rank "
                                          f"{host_plan.node_rank}, {host_plan.slots} rank(s)")
        if run.verbose:
            run.progress.host(host_plan.host, f"command: {redact_secrets(host_plan.command)}")


class SSHLauncher:
    """Every host over SSH (one shared ProxyJump pool, connect capped by --timeout), or this
    machine alone when the spec is local."""

    rendezvous_in_stage0 = True

    def __init__(self) -> None:
        self.sessions: dict[str, Session] = {}
        self.jumps: Optional[JumpPool] = None
        self.lock = threading.Lock()

    def prepare(self, spec: ClusterSpec, run: Run) -> ClusterSpec:
        self.jumps = JumpPool(spec.ssh)  # ProxyJump: one connection per jump host, shared
        return spec

    def reach(self, run: Run, step: HostStep) -> None:
        stops = ListenerStops(len(run.spec.hosts), step.listener)
        # the listener first: the others' tries start with their own steps
        hosts = sorted(run.spec.hosts, key=lambda host: host.name != step.listener)

        def one(host: HostSpec) -> None:
            try:
                self.reach_one(run, host, step, stops.stop_for(host.name))
            finally:
                stops.ended(host.name)

        fan_out(hosts, one, run.spec.ssh.fanout, run.state.cancel)

    def reach_one(self, run: Run, host: HostSpec, step: HostStep,
                  stop: Optional[threading.Event] = None) -> None:
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
        except HostError as exc:  # cut short by the run's --timeout, not its own: not reached
            cut = ssh.connect_timeout < run.spec.ssh.connect_timeout and state.ran_out()
            failure = not_reached_failure(state.timeout_s, "its ssh connect was still "
                                          "waiting") if cut else connect_failure(exc)
            state.fail(host.name, failure, stage=Stage.CONNECT)
            run.progress.host(host.name, failure.message if cut else f"unreachable: {exc.message}")
            return
        with self.lock:
            self.sessions[host.name] = session
        state.update(host.name, reachable=True, stage=step.stage)
        deadline = state.until(step.timeout_s)
        command = step.command(host, max(deadline - time.monotonic() - 2, 1))
        if run.verbose and step.stage is not Stage.STAGE0:
            run.progress.host(host.name, f"command: {command}")
        sent = time.time()  # the launcher's clock around the call bounds the host's clock
        result = session.run(command, deadline, state.cancel, stop)
        if step.last:
            self.release([host.name])  # its connection, fd and transport thread go now
        if result.timed_out and state.ran_out():
            # the run's --timeout, not the step's own deadline, cut it short: not checked
            state.fail(host.name, not_reached_failure(state.timeout_s,
                                                      f"its {step.stage.value} was running"))
            run.progress.host(host.name, f"not reached in time: its {step.stage.value} was "
                                         f"still running at --timeout")
            return
        step.record(host, result, None if run.spec.local else (sent, time.time()))

    def launch(self, run: Run, setup: LaunchSetup, program: Optional[RankProgram],
               done: HostDone, on_line: Optional[HostLine] = None) -> GroupResult[str]:
        """One torchrun per host (``on_line(host, line)``: each line of its output as it
        comes); each host's result or exception. Once a host's launch ends with failures the world cannot
        finish: the others get the collective timeout (their ranks fail by themselves within
        it) and a grace, then their agents are asked to stop, and report which ranks were
        still running. A host whose torchrun never started never joins: they are asked at
        once."""
        extra = {"rank_program": program} if program is not None else {}
        plans = plan_launch(run.spec, setup.slots, setup.backend, setup.options,
                            run_id=uuid.uuid4().hex[:12], **extra)
        announce_launch(run, plans)
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

        def ended(index: int, result: CommandResult) -> None:
            # as soon as that host's launch ends, not when all end
            end = done(plans[index].host, result)
            if end is not LaunchEnd.OK and len(plans) > 1:
                world_broken(plans[index].host, end)

        try:
            outcomes = run_many([Job(self.sessions.get(p.host), p.command, deadline, stop,
                                     _lines_of(p.host, on_line)) for p in plans],
                                run.spec.ssh.fanout, run.state.cancel, ended)
        finally:
            for timer in stoppers:
                timer.cancel()
        return GroupResult({p.host: o.error if o.error is not None else o.result
                            for p, o in zip(plans, outcomes)})

    def run_jobs(self, run: Run, jobs: Sequence[HostJob]) -> GroupResult[int]:
        """Each job on its host at once; {index: its result, or the exception it raised}."""
        if run.verbose:
            for job in jobs:
                run.progress.host(job.host, f"command: {job.command}")
        outcomes = run_many([Job(self.sessions.get(job.host), job.command,
                                 run.state.until(job.deadline_s)) for job in jobs],
                            run.spec.ssh.fanout, run.state.cancel)
        return GroupResult({i: o.error if o.error is not None else o.result
                            for i, o in enumerate(outcomes)})

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
