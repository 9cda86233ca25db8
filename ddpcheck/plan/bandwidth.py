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


def sweep_program(ops: Sequence[Collective], min_bytes: int, max_bytes: int, factor: int,
                  iters: int, warmup: int) -> RankProgram:
    """``-m ddpcheck.remote.sweep ...`` for every rank, in place of the probe."""

    def program(host_name: str, world_size: int, backend: Backend,
                options: LaunchOptions) -> list[str]:
        return ["-m", "ddpcheck.remote.sweep",
                "--host", host_name,
                "--expected-world-size", str(world_size),
                "--backend", backend.value,
                "--collective-timeout", str(options.collective_timeout_s),
                "--deadline", f"{options.deadline_s:g}",
                "--ops", ",".join(op.value for op in ops),
                "-b", str(min_bytes), "-e", str(max_bytes), "-f", str(factor),
                "-n", str(iters), "-w", str(warmup)]

    return program


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
