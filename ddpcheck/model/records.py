"""Plain records that flow from collect to analyze to report (frozen, JSON-friendly)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional


class Severity(str, enum.Enum):
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"


class Verdict(str, enum.Enum):
    OK = "ok"
    FAIL = "fail"
    UNREACHABLE = "unreachable"
    INTERRUPTED = "interrupted"


class RankStatus(str, enum.Enum):
    OK = "ok"
    ERROR = "error"
    TIMEOUT = "timeout"
    MISSING = "missing"  # expected but no record came back


class Stage(str, enum.Enum):
    """How far a host got: connect -> stage0 -> rendezvous -> launch (or scan) -> done."""

    CONNECT = "connect"
    STAGE0 = "stage0"
    RENDEZVOUS = "rendezvous"
    LAUNCH = "launch"
    SCAN = "scan"  # ddpcheck hang: the host's scan
    DONE = "done"

    def __str__(self) -> str:
        return self.value

    __format__ = str.__format__


# Checks that mean "could not reach or check the host", not "a check failed" (exit 3, not 1);
# ``stacks`` as an error: ddpcheck hang could not look at a job's ranks, so it cannot tell.
REACHABILITY_CHECKS = frozenset({"ssh", "srun", "stacks", "join"})


@dataclass(frozen=True)
class HostRecord:
    """What one host reached: reachable or not, its stage-0 facts, its launch outcome."""

    name: str
    address: str
    reachable: bool = False
    hostname: Optional[str] = None
    slots: Optional[int] = None
    gpus: int = 0
    error: Optional[str] = None  # the first error on this host
    error_check: Optional[str] = None  # the check that error belongs to (ssh, python, ...)
    stage: Stage = Stage.CONNECT
    versions: Mapping[str, Optional[str]] = field(default_factory=dict)
    facts: Mapping[str, Any] = field(default_factory=dict)
    launch_exit: Optional[int] = None
    launch_stopped: Optional[str] = None  # why the agent stopped torchrun, when it did
    output_tail: str = ""  # last lines of the host's output, for error messages
    run_dir: Optional[str] = None  # the run directory left on the host (--keep)


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
    severity: Severity
    check: str
    message: str
    host: Optional[str] = None
    rank: Optional[int] = None
    root_cause: bool = False
