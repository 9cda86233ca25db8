"""Typed outcomes of the run's stages: what a command gave back, and why a host failed.

Data only (runs on the launcher). The transport returns ``CommandResult``s; ``analyze``
turns them into a ``Failure`` (or none) and findings; the engine records them.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Optional


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


@dataclass(frozen=True)
class Failure:
    """Why one host failed a stage: the check it belongs to and a one-line message."""

    check: str  # a model.checks.Check
    message: str


class LaunchEnd(Enum):
    """How one host's launch ended, for the others still running."""

    OK = "ok"
    FAILED = "failed"  # something failed there: the world cannot finish
    NEVER_JOINED = "never_joined"  # torchrun never started there: the world cannot even form
