"""The run's state and its deadlines, computed once: what every host reached, the ranks that
reported, the findings so far, and the one launch set-up (backend, slots, the agent's deadline).

Runs on the launcher; no I/O and no rules: outcomes come in typed (``Failure``,
``CommandResult``) as ``analyze`` decided them.

Deadlines: ``--timeout`` bounds the whole command and caps every step's own: connect
(``ssh.connect_timeout``, capped by what is left), stage 0 (``core.deadlines``), the
rendezvous check, launch (the agent's deadline on the host, ``AGENT_STOP_S`` short of what is
left, plus ``LAUNCH_GRACE_S`` for it to clean up before the transport gives up on it), in which
torchrun's rendezvous and the ranks' collectives have theirs, and the probe its watchdog.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, replace
from typing import Optional, Sequence

from ..model.outcomes import Failure
from ..model.records import Finding, HostRecord, RankRecord
from ..model.spec import Backend, ClusterSpec, HostSpec
from ..plan.cmdlines import LaunchOptions, resolve_backend, resolve_slots

LAUNCH_GRACE_S = 10.0  # after the agent's deadline, for it to stop torchrun and clean up
AGENT_STOP_S = 5.0  # what the agent's deadline keeps back from --timeout to stop and report
WORLD_BROKEN_GRACE_S = 5.0  # after one host failed: the collective timeout, then this
REACH_WINDOW_S = 5.0  # how long a host keeps trying the master's rendezvous port
MIN_CONNECT_S = 0.5
MIN_AGENT_S = 1.0


@dataclass(frozen=True)
class LaunchSetup:
    """One launch's set-up, the same for every launcher and workload."""

    backend: Backend
    slots: dict[str, int]
    options: LaunchOptions  # with the agent's deadline clamped to what --timeout leaves


class RunState:
    def __init__(self, spec: ClusterSpec, timeout_s: float,
                 began: Optional[float] = None) -> None:
        self.spec = spec
        self.started = time.monotonic()
        # the command's start, for its duration: before the launcher's own preparation (an
        # in-job node 0 waits for the others to join there), which --timeout does not count
        self.began = self.started if began is None else began
        self.timeout_s = timeout_s
        self.deadline = self.started + timeout_s
        self.cancel = threading.Event()
        self.lock = threading.Lock()
        self.hosts: dict[str, HostRecord] = {h.name: HostRecord(h.name, h.address)
                                             for h in spec.hosts}
        self.ranks: list[RankRecord] = []
        self.findings: list[Finding] = []
        self.slots: dict[str, int] = {}
        self.backend: Optional[str] = None

    # -- deadlines -------------------------------------------------------------------------
    def left(self) -> float:
        return self.deadline - time.monotonic()

    def ran_out(self) -> bool:
        """The run's --timeout has (all but) run out, and no one interrupted the run: what
        waited on a host until now was cut short by it."""
        return self.left() < MIN_CONNECT_S and not self.cancel.is_set()

    def until(self, seconds: float) -> float:
        """The deadline of a step of ``seconds``, capped by --timeout."""
        return min(self.deadline, time.monotonic() + seconds)

    def connect_timeout(self) -> float:
        return max(min(self.spec.ssh.connect_timeout, self.left()), MIN_CONNECT_S)

    def setup(self, hosts: Sequence[HostSpec], options: LaunchOptions,
              slots: Optional[int] = None) -> LaunchSetup:
        """Backend from the hosts' GPUs, slots per host (``slots`` for every host when given),
        the agent's deadline within what is left; recorded as the run's backend and slots."""
        gpus = {h.name: self.hosts[h.name].gpus for h in hosts}
        backend = resolve_backend(self.spec.backend, gpus)
        by_host = {h.name: slots if slots is not None else
                   resolve_slots(h, gpus[h.name], self.spec.local or self.spec.in_job)
                   for h in hosts}
        agent_s = round(max(min(options.deadline_s, self.left() - AGENT_STOP_S), MIN_AGENT_S), 1)
        self.backend = backend.value
        if slots is None:
            self.slots = by_host
        return LaunchSetup(backend, by_host, replace(options, deadline_s=agent_s))

    # -- outcomes --------------------------------------------------------------------------
    def update(self, name: str, **changes) -> None:
        with self.lock:
            current = self.hosts[name]
            failure = changes.get("failure")
            if failure is None or current.failure is not None:
                changes.pop("failure", None)  # keep the first failure: it is the cause
            elif failure.stage is None:  # the stage it failed at: the one recorded with it
                changes["failure"] = replace(failure, stage=changes.get("stage", current.stage))
            self.hosts[name] = replace(current, **changes)

    def fail(self, name: str, failure: Optional[Failure], **changes) -> None:
        """Record a host's failure (the first one stays: it is the cause) and other changes."""
        self.update(name, failure=failure, **changes)

    def add_ranks(self, ranks: Sequence[RankRecord]) -> None:
        with self.lock:
            self.ranks.extend(ranks)

    def add_findings(self, findings: Sequence[Finding]) -> None:
        with self.lock:
            self.findings.extend(findings)

    def failed(self) -> list[HostRecord]:
        return [h for h in self.hosts.values() if h.failure is not None]

    def healthy(self) -> list[HostSpec]:
        return [h for h in self.spec.hosts if self.hosts[h.name].failure is None]
