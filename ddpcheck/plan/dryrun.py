"""Plan, dry run: every command's ``--dry-run`` text, from one renderer.

Pure, on the launcher. A dry run is a list of ``Step``s, a note (shown as ``# note``) and the
exact command a host would run, rendered with secrets redacted (values of variables named like
*_TOKEN, *_KEY or *PASSWORD as ***). Slots are shown as planned for hosts without GPUs: stage 0
has not run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from ..model.jobplace import JobPlace
from ..model.spec import Backend, ClusterSpec, HostSpec, ssh_target
from ..core.busbw import Collective, format_size
from .bandwidth import plan_round, sweep_program
from .cmdlines import (LaunchOptions, in_job_stage0_command, RankProgram, RendezvousBesideStage0, plan_launch,
                       redact_secrets, rendezvous_beside_stage0, resolve_backend, resolve_slots,
                       stage0_command)
from .pairing import MAX_ADAPTIVE_ROUNDS, circle_rounds, first_round
from .slurm import plan_srun_launch, plan_srun_stage0

STAGE0_SHOWN_S = 58.0  # stage 0's deadline as the run passes it (60 s less 2)


@dataclass(frozen=True)
class Step:
    note: str = ""
    command: str = ""


def render(steps: Sequence[Step]) -> str:
    lines = []
    for step in steps:
        if step.note:
            lines.append(f"# {step.note}")
        if step.command:
            lines.append(redact_secrets(step.command))
    return "\n".join(lines) + "\n"


def via(spec: ClusterSpec, host: HostSpec) -> str:
    where = "local" if spec.local else f"ssh {ssh_target(host)}"
    if host.jumps:
        where += " through " + " > ".join(ssh_target(jump) for jump in host.jumps)
    if host.proxy_command and not spec.local:
        where += f" through ProxyCommand {host.proxy_command!r}"
    return where


def unprobed(spec: ClusterSpec) -> tuple[Backend, dict[str, int]]:
    """Backend and slots as planned before stage 0 (no GPUs seen)."""
    backend = resolve_backend(spec.backend, {h.name: 0 for h in spec.hosts})
    return backend, {h.name: resolve_slots(h, 0, spec.local) for h in spec.hosts}


def stage0_step(spec: ClusterSpec, host: HostSpec,
                rendezvous: Optional[RendezvousBesideStage0] = None) -> str:
    return stage0_command(host, STAGE0_SHOWN_S, master=spec.master_host.address,
                          rendezvous=rendezvous)


def preflight_steps(spec: ClusterSpec, launch: LaunchOptions, rendezvous_check: bool,
                    window_s: float) -> list[Step]:
    backend, slots = unprobed(spec)
    steps = [Step(f"ddpcheck preflight --dry-run: {len(spec.hosts)} host(s) from {spec.source}"),
             Step(f"backend {backend.value} (auto picks nccl when every host has GPUs); hosts "
                  f"without slots: one rank per GPU, shown here as without GPUs")]
    check = (rendezvous_beside_stage0(spec, window_s)
             if rendezvous_check and not spec.local else None)
    if check is not None:
        steps.append(Step(f"stage 0 makes the rendezvous check: {check.master} listens on port "
                          f"{check.port} while every host connects to {check.address}"))
    for host, host_launch in zip(spec.hosts, plan_launch(spec, slots, backend, launch)):
        steps += [Step(f"{host.name} (node rank {host_launch.node_rank}, {host_launch.slots} "
                       f"rank(s)) via {via(spec, host)}", stage0_step(spec, host, check)),
                  Step(command=host_launch.command)]
    return steps


def srun_steps(spec: ClusterSpec, launch: LaunchOptions) -> list[Step]:
    backend, slots = unprobed(spec)
    return [Step(f"ddpcheck preflight --dry-run --launcher slurm: {len(spec.hosts)} node(s) "
                 f"from {spec.source}"),
            Step("stage 0 (one task per node):", plan_srun_stage0(spec, STAGE0_SHOWN_S)),
            Step(f"launch (backend {backend.value}; nodes without slots shown as without GPUs):",
                 plan_srun_launch(spec, slots, backend, launch))]


def bandwidth_steps(spec: ClusterSpec, launch: LaunchOptions, program: RankProgram,
                    pairwise: Optional[tuple[Collective, int]],
                    adaptive: bool = False) -> list[Step]:
    """The sweep's, or with ``pairwise`` (op, size) the rounds of pair jobs' (``adaptive``:
    round 1 only, as the later rounds depend on what it measures)."""
    backend, slots = unprobed(spec)
    steps = [Step(f"ddpcheck bandwidth --dry-run: {len(spec.hosts)} host(s) from {spec.source}, "
                  f"backend {backend.value} (auto picks nccl when every host has GPUs)")]
    steps += [Step(f"{host.name} stage 0 via {via(spec, host)}", stage0_step(spec, host))
              for host in spec.hosts]
    if pairwise is None:
        return steps + [Step(f"{h.host}: node rank {h.node_rank}, {h.slots} rank(s)", h.command)
                        for h in plan_launch(spec, slots, backend, launch, rank_program=program)]
    op, size = pairwise
    names = [h.name for h in spec.hosts]
    rounds = [first_round(names)] if adaptive else circle_rounds(names)
    steps.append(Step(f"{len(rounds)} round(s), the pairs of a round at the same time, one rank "
                      f"per host, {op.value} at {format_size(size)}B"))
    if adaptive:
        steps.append(Step(f"adaptive: rounds 2 and 3 (at most {MAX_ADAPTIVE_ROUNDS} in all) "
                          f"pair the hosts of slow pairs with hosts known to be good, once "
                          f"round 1 ran"))
    for number, pairs in enumerate(rounds, 1):
        planned = plan_round(spec, pairs, backend, launch, program)
        steps.append(Step(f"round {number}: " + ", ".join(
            f"{p.hosts[0]}-{p.hosts[1]} (master {p.hosts[0]}, port {p.port})" for p in planned)))
        steps += [Step(f"round {number} {pair.hosts[0]}-{pair.hosts[1]}: {h.host}", h.command)
                  for pair in planned for h in pair.launches]
    return steps


__all__ = ["Step", "render", "preflight_steps", "srun_steps", "bandwidth_steps",
           "sweep_program"]


def in_job_steps(place: JobPlace, hostname: str, python: str, launch: LaunchOptions,
                 stage0_s: float, dcgm: Optional[int] = None,
                 window_s: Optional[float] = None,
                 sweep: Optional[RankProgram] = None) -> list[Step]:
    """``preflight --in-job --dry-run``: what this node read and from where, and the steps it
    would take (its own commands exactly; torchrun's as node 0 would plan it for a node
    without GPUs; with ``sweep`` (--bandwidth) the sweep's torchrun after the probe's)."""
    here = HostSpec(name=hostname, address=hostname, python=python,
                    slots=place.nproc_per_node)
    hosts = tuple(here if rank == place.node_rank else
                  HostSpec(name=f"node-rank-{rank}", address=place.master_addr if rank == 0
                           else f"node-rank-{rank}", python=python, slots=place.nproc_per_node)
                  for rank in range(place.nnodes))
    spec = ClusterSpec(hosts=hosts, rendezvous_port=place.rendezvous_port, in_job=True,
                       source="in-job")
    backend = resolve_backend(spec.backend, {h.name: 0 for h in hosts})
    slots = {h.name: resolve_slots(h, 0, True) for h in hosts}
    mine = plan_launch(spec, slots, backend, launch)[place.node_rank]
    steps = [Step(f"ddpcheck preflight --in-job --dry-run: node rank {place.node_rank} of "
                  f"{place.nnodes} ({hostname})"),
             *(Step(f"read {line}") for line in place.describe()),
             Step(f"1. {'host the store on port' if place.node_rank == 0 else 'join the store at'}"
                  f" {place.master_addr}:{place.store_port}"
                  + (f"; stage 0 on this node at once (listening on port "
                     f"{place.rendezvous_port} for every node's rendezvous check), then wait "
                     f"for {place.nnodes - 1} node(s) to join:" if place.node_rank == 0 else
                     "; once joined, stage 0 on this node (connecting to the master's port "
                     f"{place.rendezvous_port}: the rendezvous check):"),
                  in_job_stage0_command(place, here, stage0_s - 2, dcgm, window_s,
                                        place.node_rank == 0)),
             Step("2. node 0 judges every node's stage 0; when every node joined and none "
                  "failed, every node starts torchrun (ranks meet at "
                  f"{place.master_addr}:{place.rendezvous_port}); this node's command, for "
                  f"{mine.slots} rank(s) ({backend.value}, as without GPUs):", mine.command),
             Step("3. node 0 writes the report and publishes the verdict; every node prints "
                  "its summary line and exits with the verdict's code")]
    if sweep is not None:
        swept = plan_launch(spec, slots, backend, launch, rank_program=sweep)[place.node_rank]
        steps.insert(-1, Step("2b. --bandwidth: when the probe passed on every rank, node 0 "
                              "posts the sweep's shape and every node starts torchrun again "
                              "with the bandwidth sweep on the same ranks (then, when it "
                              "passed on 3 nodes or more, rounds of node pairs, each node "
                              "planning its own pair job); this node's sweep command:",
                              swept.command))
    return steps
