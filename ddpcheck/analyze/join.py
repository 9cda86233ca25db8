"""Analyze, the in-job gang: why a node of the job is not in it -> a ``Failure`` under ``join``.

Pure, on node 0 (``preflight --in-job``). A node never registered with the store within the
join timeout; it registered and then went silent (no heartbeat: killed, its pod deleted); it
left (SIGTERM); or, on the node itself, the master's store could not be reached. Node ranks are
named, since a node that never came has no host name to give.
"""

from __future__ import annotations

from typing import Sequence

from ..config.hostlist import hosts_text
from ..model.checks import Check
from ..model.outcomes import Failure


def never_joined(node_rank: int, waited_s: float, joined: Sequence[str]) -> Failure:
    """``node rank 2 never joined within 30s (joined: h1, h3)``."""
    others = hosts_text(list(joined)) if joined else "none"
    return Failure(Check.JOIN, f"node rank {node_rank} never joined within {waited_s:.0f}s "
                               f"(joined: {others}): its ddpcheck never started, or cannot "
                               f"reach the master's port (its own log says which)")


def went_silent(node_rank: int, host: str, silent_s: float, stage: str) -> Failure:
    """A node that joined and then stopped answering (its heartbeat stopped)."""
    return Failure(Check.JOIN, f"node rank {node_rank} ({host}) joined, then stopped answering "
                               f"during {stage} (no heartbeat for {silent_s:.0f}s: killed, or "
                               f"its pod or node went away)")


def left(node_rank: int, host: str, why: str, stage: str) -> Failure:
    """A node that said it was leaving (its ddpcheck was interrupted)."""
    return Failure(Check.JOIN, f"node rank {node_rank} ({host}) left during {stage}: {why}")


def master_unreachable(error: str) -> Failure:
    """On a node that could not reach node 0's store."""
    return Failure(Check.JOIN, f"{error}; check the master address and port (PET_MASTER_ADDR, "
                               f"PET_MASTER_PORT), a firewall, and that node 0 started")
