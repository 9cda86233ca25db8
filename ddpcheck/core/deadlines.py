"""Deadlines: the bounds one ``--timeout`` sets, computed once from a command's options.

Core: pure and standard-library only, so ``ddpcheck node`` computes its deadline without loading
the engine. DCGM's run time (``agentargs.DCGM_DEADLINE_S``) is added here and nowhere else: the
diagnostics get their own time instead of eating the rest of the run's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .agentargs import DCGM_DEADLINE_S

STAGE0_DEADLINE_S = 60.0  # stage 0 on each host, without DCGM


@dataclass(frozen=True)
class Deadlines:
    """Each field names what it bounds, in seconds."""

    command_s: float  # the whole command (the run's deadline): --timeout, plus DCGM's run time
    stage0_s: float  # stage 0 on each host: its own budget, plus DCGM's run time
    agent_s: float  # the agent on each host (torchrun and its ranks): --timeout

    @classmethod
    def from_timeout(cls, timeout_s: float, dcgm: Optional[int] = None) -> "Deadlines":
        """``--timeout`` and ``--dcgm N`` (None: no diagnostics)."""
        dcgm_s = DCGM_DEADLINE_S[dcgm] if dcgm else 0.0
        return cls(command_s=timeout_s + dcgm_s, stage0_s=STAGE0_DEADLINE_S + dcgm_s,
                   agent_s=timeout_s)
