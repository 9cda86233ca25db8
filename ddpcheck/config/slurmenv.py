"""Config, SLURM environment: the allocation ddpcheck runs in (``--slurm``).

Pure, on the launcher: SLURM_JOB_NODELIST (compressed hostlist, e.g. ``gpu[001-004,010]``),
SLURM_TASKS_PER_NODE (``2(x3),1``) and the GPUs per node (SLURM_GPUS_PER_NODE ``[type:]N``,
else SLURM_GPUS_ON_NODE).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping, Optional

from .hostlist import expand_hostlist

NODELIST_VARIABLES = ("SLURM_JOB_NODELIST", "SLURM_NODELIST")
_REPEAT = re.compile(r"^([0-9]+)(?:\(x([0-9]+)\))?$")
_GPU_ITEM = re.compile(r"^(?:[A-Za-z0-9_.-]+:)*([0-9]+)$")


class SlurmError(ValueError):
    """A SLURM variable that is missing or unreadable; names the variable."""

    def __init__(self, variable: str, message: str) -> None:
        super().__init__(f"{variable}: {message}")
        self.variable = variable
        self.message = message


@dataclass(frozen=True)
class SlurmAllocation:
    nodes: tuple[str, ...]
    tasks_per_node: tuple[int, ...]
    gpus_per_node: Optional[int]  # None: SLURM did not say
    job_id: str = ""
    nodelist: str = ""  # as SLURM wrote it

    @property
    def slots(self) -> tuple[Optional[int], ...]:
        """Ranks per node: the GPUs SLURM gave each node; else the tasks per node when some
        node has more than one (the job asked for several tasks per node); else None (stage 0
        counts the node's GPUs, 1 without)."""
        if self.gpus_per_node:
            return tuple(self.gpus_per_node for _ in self.nodes)
        if any(count > 1 for count in self.tasks_per_node):
            return self.tasks_per_node
        return tuple(None for _ in self.nodes)

    def describe(self) -> str:
        job = f"SLURM job {self.job_id}" if self.job_id else "SLURM allocation"
        return f"{job} ({self.nodelist})"


def parse_nodelist(text: str, variable: str = "SLURM_JOB_NODELIST") -> list[str]:
    """``gpu[001-004,010],login1`` -> node names (SLURM's compressed hostlist)."""
    try:
        return expand_hostlist(text)
    except ValueError as exc:
        raise SlurmError(variable, f"cannot read {text!r}: {exc}") from None


def parse_tasks_per_node(text: str, nodes: int,
                         variable: str = "SLURM_TASKS_PER_NODE") -> tuple[int, ...]:
    """``2(x3),1`` -> (2, 2, 2, 1); a single value applies to every node."""
    counts: list[int] = []
    for item in text.strip().split(","):
        match = _REPEAT.match(item.strip())
        if match is None:
            raise SlurmError(variable, f"cannot read {item.strip()!r} in {text!r} "
                                       f"(expected N or N(xM))")
        value, repeat = int(match.group(1)), int(match.group(2) or 1)
        if value < 1 or repeat < 1:
            raise SlurmError(variable, f"{item.strip()!r} in {text!r}: counts must be >= 1")
        counts.extend([value] * repeat)
    if len(counts) == 1 and nodes > 1:
        counts *= nodes
    if len(counts) != nodes:
        raise SlurmError(variable, f"{text!r} gives {len(counts)} node(s), the nodelist has "
                                   f"{nodes}")
    return tuple(counts)


def parse_gpu_count(text: str, variable: str) -> Optional[int]:
    """``4``, ``a100:4``, ``gpu:a100:2,gpu:v100:2`` (summed) -> a count; empty -> None."""
    text = text.strip()
    if not text:
        return None
    total = 0
    for item in text.split(","):
        match = _GPU_ITEM.match(item.strip())
        if match is None:
            raise SlurmError(variable, f"cannot read {item.strip()!r} in {text!r} "
                                       f"(expected [type:]N)")
        total += int(match.group(1))
    return total or None


def slurm_allocation(env: Mapping[str, str]) -> SlurmAllocation:
    """The allocation from SLURM's environment (inside sbatch, salloc or srun)."""
    variable = next((v for v in NODELIST_VARIABLES if env.get(v)), None)
    if variable is None:
        raise SlurmError(NODELIST_VARIABLES[0], "not set: --slurm works inside a SLURM "
                                                "allocation (sbatch, salloc)")
    nodelist = env[variable].strip()
    nodes = parse_nodelist(nodelist, variable)
    if len(set(nodes)) != len(nodes):
        raise SlurmError(variable, f"{nodelist!r} names a node twice")
    tasks_text = env.get("SLURM_TASKS_PER_NODE")
    tasks = parse_tasks_per_node(tasks_text, len(nodes)) if tasks_text \
        else tuple(1 for _ in nodes)
    gpus = None
    for gpu_variable in ("SLURM_GPUS_PER_NODE", "SLURM_GPUS_ON_NODE"):
        if env.get(gpu_variable):
            gpus = parse_gpu_count(env[gpu_variable], gpu_variable)
            break
    return SlurmAllocation(tuple(nodes), tasks, gpus, env.get("SLURM_JOB_ID", ""), nodelist)
