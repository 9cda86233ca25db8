"""Where one node stands in its job (``preflight --in-job``): data only.

``config.jobenv.resolve`` reads it from the flags and the launcher's variables; the in-job
transport (``engine.instore``) and the dry run (``plan.dryrun``) work from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional

PLACE_FIELDS = ("nnodes", "node_rank", "nproc_per_node", "master_addr", "master_port")


@dataclass(frozen=True)
class JobPlace:
    """This node's place in the job, and where each value was read (a flag, a variable, or
    ``default``)."""

    nnodes: int
    node_rank: int
    nproc_per_node: Optional[int]  # None: preflight's default (GPUs, or 2 ranks on gloo)
    master_addr: str
    master_port: int
    sources: Mapping[str, str]

    @property
    def store_port(self) -> int:
        """Where node 0's store listens: the master port, as torchrun's own rendezvous."""
        return self.master_port

    @property
    def rendezvous_port(self) -> int:
        """Where torchrun's ranks meet once the gang is checked: the next port."""
        return self.master_port + 1

    def describe(self) -> list[str]:
        """One line per value: what was read and from where."""
        return [f"{name}={getattr(self, name) if getattr(self, name) is not None else 'auto'}"
                f" (from {self.sources[name]})" for name in PLACE_FIELDS]
