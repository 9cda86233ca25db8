"""Plain records that flow from collect to analyze to report (frozen, JSON-friendly)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from .checks import Check
from .facts import HostFacts
from .outcomes import Failure, Stage


class Severity(str, enum.Enum):
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"


class Verdict(str, enum.Enum):
    OK = "ok"
    FAIL = "fail"
    UNREACHABLE = "unreachable"
    INTERRUPTED = "interrupted"


# The one table of exit codes: every command's verdict maps here; usage errors are 2.
EXIT_CODES: Mapping[Verdict, int] = {Verdict.OK: 0, Verdict.FAIL: 1, Verdict.UNREACHABLE: 3,
                                     Verdict.INTERRUPTED: 130}
EXIT_USAGE = 2
EXIT_INTERRUPTED = EXIT_CODES[Verdict.INTERRUPTED]


class RankStatus(str, enum.Enum):
    OK = "ok"
    ERROR = "error"
    TIMEOUT = "timeout"
    MISSING = "missing"  # expected but no record came back


# Checks that mean "could not reach or check the host", not "a check failed" (exit 3, not 1);
# ``stacks`` as an error: ddpcheck hang could not look at a job's ranks, so it cannot tell.
REACHABILITY_CHECKS = frozenset({Check.SSH, Check.SRUN, Check.STACKS, Check.JOIN})


@dataclass(frozen=True)
class HostRecord:
    """What one host reached: reachable or not, its stage-0 facts, its launch outcome."""

    name: str
    address: str
    reachable: bool = False
    hostname: Optional[str] = None
    slots: Optional[int] = None
    gpus: int = 0
    failure: Optional[Failure] = None  # the first failure on this host: it is the cause
    stage: Stage = Stage.CONNECT
    versions: Mapping[str, Optional[str]] = field(default_factory=dict)
    facts: HostFacts = field(default_factory=HostFacts)  # read once (collect.facts); .raw as sent
    launch_exit: Optional[int] = None
    launch_stopped: Optional[str] = None  # why the agent stopped torchrun, when it did
    output_tail: str = ""  # last lines of the host's output, for error messages
    run_dir: Optional[str] = None  # the run directory left on the host (--keep)

    @property
    def error(self) -> Optional[str]:
        """The failure's message (read-only: the typed ``failure`` is what is kept)."""
        return self.failure.message if self.failure is not None else None

    @property
    def error_check(self) -> Optional[Check]:
        return self.failure.check if self.failure is not None else None

    @property
    def trouble_check(self) -> Check:
        """The check this host's trouble is reported under: its failure's, else ``ssh`` (a host
        with no failure that was not reached was never connected to)."""
        return self.failure.check if self.failure is not None else Check.SSH

    @property
    def not_reached(self) -> bool:
        return self.failure is not None and self.failure.not_reached


@dataclass(frozen=True)
class RankRecord:
    rank: Optional[int]
    host: str
    local_rank: Optional[int] = None
    node_rank: Optional[int] = None
    hostname: Optional[str] = None
    pid: Optional[int] = None
    world_size: Optional[int] = None
    device: str = "cpu"
    gpu_uuid: Optional[str] = None
    gpu_bus_id: Optional[str] = None
    gpu_name: Optional[str] = None
    visible_gpus: int = 0
    status: RankStatus = RankStatus.OK
    stage: str = ""
    error: Optional[str] = None
    failed_at: Optional[float] = None
    barrier_us: Optional[float] = None
    allreduce_small_us: Optional[float] = None
    all_reduce_wrong: Optional[int] = None
    versions: Mapping[str, Optional[str]] = field(default_factory=dict)
    collectives: tuple[Mapping[str, Any], ...] = ()
    # versions, settings, env, rng (when seeded), ddp: what drift compares across ranks
    fingerprint: Mapping[str, Any] = field(default_factory=dict)
    # the compute check: device_model, where, metrics {name: value, higher is better}, seconds
    compute: Mapping[str, Any] = field(default_factory=dict)
    # the numerics check: where, group, products {dtype: digests...}, all_reduce [...]
    numerics: Mapping[str, Any] = field(default_factory=dict)
    # False: the rank left no record; this one was made from what its host's agent and
    # torchrun saw of its process (stopped, killed, still running at the deadline)
    reported: bool = True


@dataclass(frozen=True)
class Finding:
    """One thing a check found. The flags say what kind of finding it is, so no rule reads it
    from the message; they are left out of equality (two findings that say the same are the
    same) and of every rendering: ``not_reached`` (a host the --timeout ran out before: never a
    root cause), ``interrupted`` (cut short by Ctrl-C or SIGTERM), ``no_result`` (a step gave
    nothing), ``tentative`` (a conclusion from one source, e.g. stacks alone, that a better
    source overrules)."""

    severity: Severity
    check: Check
    message: str
    host: Optional[str] = None
    rank: Optional[int] = None
    root_cause: bool = False
    not_reached: bool = field(default=False, compare=False)
    interrupted: bool = field(default=False, compare=False)
    no_result: bool = field(default=False, compare=False)
    tentative: bool = field(default=False, compare=False)
