"""Plan, bandwidth: the sweep's command on every rank, and the rounds of pair jobs.

Pure, on the launcher. ``--pairwise`` runs the circle-method rounds (``pairing``): the pairs of
a round run at the same time, each pair its own 2-rank torchrun job (one rank on each of its two
hosts, the first host its master, master port = rendezvous port + the pair's index in the round,
so concurrent pairs never share a port).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional, Sequence

from ..model.spec import Backend, ClusterSpec, HostSpec
from ..core.busbw import Collective
from .cmdlines import HostLaunch, LaunchOptions, RankProgram, plan_launch
from .pairing import MAX_ADAPTIVE_ROUNDS, circle_rounds

SWEEP_TIMEOUT_S = 600.0  # default --timeout of the all-host sweep
PAIRWISE_BASE_S = 120.0  # default --timeout of --pairwise: this plus PAIRWISE_ROUND_S a round
PAIRWISE_ROUND_S = 60.0
PAIR_SLOTS = 1  # a pair job is 2 ranks: one on each host


@dataclass(frozen=True)
class SweepProgram:
    """``-m ddpcheck.remote.sweep ...`` for every rank, in place of the probe: a rank program
    (``plan_launch`` calls it) that is also the sweep's shape, so that ``--in-job`` can post
    the shape (``to_dict``) and every node plan its own command from it (``from_dict``,
    checked)."""

    ops: tuple[Collective, ...]
    min_bytes: int
    max_bytes: int
    factor: int
    iters: int
    warmup: int

    def __call__(self, host_name: str, world_size: int, backend: Backend,
                 options: LaunchOptions) -> list[str]:
        return ["-m", "ddpcheck.remote.sweep",
                "--host", host_name,
                "--expected-world-size", str(world_size),
                "--backend", backend.value,
                "--collective-timeout", str(options.collective_timeout_s),
                "--deadline", f"{options.deadline_s:g}",
                "--ops", ",".join(op.value for op in self.ops),
                "-b", str(self.min_bytes), "-e", str(self.max_bytes), "-f", str(self.factor),
                "-n", str(self.iters), "-w", str(self.warmup)]

    def to_dict(self) -> dict:
        return {"ops": [op.value for op in self.ops], "min_bytes": self.min_bytes,
                "max_bytes": self.max_bytes, "factor": self.factor, "iters": self.iters,
                "warmup": self.warmup}

    @classmethod
    def from_dict(cls, data: dict) -> "SweepProgram":
        """The shape another process posted, checked: known ops, sizes and counts in bounds
        (ValueError otherwise)."""
        try:
            ops = tuple(Collective(str(op)) for op in data["ops"])
            numbers = [int(data[k]) for k in ("min_bytes", "max_bytes", "factor", "iters",
                                              "warmup")]
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a sweep's shape: {exc}") from None
        low, high, factor, iters, warmup = numbers
        if (not ops or not 0 < low <= high <= MAX_SWEEP_BYTES or not 1 <= factor <= 1024
                or not 1 <= iters <= 10000 or not 0 <= warmup <= 10000):
            raise ValueError(f"a sweep's shape out of bounds: {data}")
        return cls(ops, low, high, factor, iters, warmup)


MAX_SWEEP_BYTES = 1 << 34  # 16 GiB: no sweep a node accepts goes past it


def sweep_program(ops: Sequence[Collective], min_bytes: int, max_bytes: int, factor: int,
                  iters: int, warmup: int) -> SweepProgram:
    """``-m ddpcheck.remote.sweep ...`` for every rank, in place of the probe."""
    return SweepProgram(tuple(ops), min_bytes, max_bytes, factor, iters, warmup)


# ``preflight --in-job --bandwidth``: a short sweep fit for a preflight (all_reduce at 1, 4 and
# 16 MiB); ``--bandwidth SIZE`` sets the largest size, ``ddpcheck bandwidth`` sweeps it all
IN_JOB_SWEEP = SweepProgram((Collective.ALL_REDUCE,), 1 << 20, 16 << 20, 4, 10, 2)


@dataclass(frozen=True)
class PairLaunch:
    hosts: tuple[str, str]
    port: int  # the pair's master port
    launches: tuple[HostLaunch, ...]  # node rank 0 (master) first


def pair_spec(spec: ClusterSpec, first: HostSpec, second: HostSpec, port: int) -> ClusterSpec:
    """A 2-host world: ``first`` is the master, at ``port``."""
    return replace(spec, hosts=(first, second), master=first.name, rendezvous_port=port)


def plan_round(spec: ClusterSpec, pairs: Sequence[tuple[str, str]], backend: Backend,
               launch: LaunchOptions, program: RankProgram,
               run_id: Optional[str] = None) -> list[PairLaunch]:
    """Every pair of one round: its own master port (rendezvous port + index in the round)."""
    by_name = {host.name: host for host in spec.hosts}
    planned = []
    for index, (first, second) in enumerate(pairs):
        port = spec.rendezvous_port + index
        sub = pair_spec(spec, by_name[first], by_name[second], port)
        launches = plan_launch(sub, {first: PAIR_SLOTS, second: PAIR_SLOTS}, backend, launch,
                               run_id=f"{run_id}-{first}-{second}" if run_id else None,
                               rank_program=program)
        planned.append(PairLaunch((first, second), port, tuple(launches)))
    return planned


def default_timeout(spec: ClusterSpec, pairwise) -> float:
    """``pairwise``: falsy (the sweep), "all" (every pair: n-1 rounds) or "adaptive" (at most
    MAX_ADAPTIVE_ROUNDS rounds, whatever the number of hosts)."""
    if not pairwise:
        return SWEEP_TIMEOUT_S
    if pairwise != "all":
        return PAIRWISE_BASE_S + PAIRWISE_ROUND_S * MAX_ADAPTIVE_ROUNDS
    return PAIRWISE_BASE_S + PAIRWISE_ROUND_S * len(circle_rounds([h.name for h in spec.hosts]))
