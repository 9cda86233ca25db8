"""Typed outcomes of the run's stages: what a command gave back, and why a host failed.

Data only (runs on the launcher). The transport returns ``CommandResult``s, a launcher a
``GroupResult`` (each host's or job's result, or the exception it raised); ``analyze`` turns
them into a ``Failure`` (or none) and findings; the engine records them.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Dict, Mapping, Optional, TypeVar, Union

from .checks import Check


class Stage(str, Enum):
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


@dataclass(frozen=True)
class CommandResult:
    exit_code: Optional[int]  # None when the command was stopped (deadline, cancel, lost)
    output: str
    timed_out: bool = False
    cancelled: bool = False
    duration_s: float = 0.0
    lost: bool = False  # the connection dropped before the command's exit status came

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


K = TypeVar("K")


class GroupResult(Dict[K, Union[CommandResult, BaseException]]):
    """Each member's result or the exception it raised (as fabric's ``GroupResult``), keyed by
    host (``Launcher.launch``) or job index (``Launcher.run_jobs``): one failure stops no other,
    and what each means is for ``analyze`` to say."""

    @property
    def succeeded(self) -> Mapping[K, CommandResult]:
        return {k: v for k, v in self.items() if isinstance(v, CommandResult)}

    @property
    def failed(self) -> Mapping[K, BaseException]:
        return {k: v for k, v in self.items() if isinstance(v, BaseException)}


@dataclass(frozen=True)
class Failure:
    """Why one host failed a stage: the check it belongs to, a one-line message (the detail),
    the stage it failed at, and what kind of failure it is, as flags (never read from the
    message): ``not_reached`` (the run's --timeout ran out before the host was checked: not a
    failure of the host, never a root cause), ``interrupted`` (Ctrl-C or SIGTERM cut it short),
    ``no_result`` (a step that gave nothing to judge)."""

    check: Check
    message: str
    stage: Optional[Stage] = None  # set by the engine when it records the failure
    not_reached: bool = False
    interrupted: bool = False
    no_result: bool = False


class LaunchEnd(Enum):
    """How one host's launch ended, for the others still running."""

    OK = "ok"
    FAILED = "failed"  # something failed there: the world cannot finish
    NEVER_JOINED = "never_joined"  # torchrun never started there: the world cannot even form
