"""Plan: ClusterSpec (+ stage-0 facts) -> the exact shell command run on each host.

Pure functions only. Every value that came from hosts.yaml or the command line goes through
``shlex.quote``; the transport runs the resulting string as-is (ssh exec or ``/bin/sh -c``).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Sequence

from .spec import Backend, ClusterSpec, HostSpec

# Marked lines carry records back over stdout: "@@DDPCHECK <kind> <json>".
MARK = "@@DDPCHECK"

# Environment every remote step gets: unbuffered output so records arrive as they happen.
BASE_ENV: Mapping[str, str] = {"PYTHONUNBUFFERED": "1"}

LOCAL_CPU_RANKS = 2  # the embedded default without a GPU: 2 ranks on gloo


@dataclass(frozen=True)
class LaunchOptions:
    """Deadlines of one preflight launch, in seconds. Never torch's 10/30-minute defaults."""

    deadline_s: float = 120.0  # the agent kills torchrun and every rank after this
    rendezvous_timeout_s: int = 30  # torchrun static rendezvous (default 600)
    collective_timeout_s: int = 30  # process group timeout (default 10 min NCCL, 30 min gloo)
    iterations: int = 20  # repeats for latency medians


@dataclass(frozen=True)
class HostLaunch:
    """What one host runs: its node rank, its number of ranks and the command line."""

    host: str
    node_rank: int
    slots: int
    command: str


def remote_command(host: HostSpec, argv: Sequence[str], extra_env: Mapping[str, str] = {}) -> str:
    """A shell command that runs ``argv`` in the host's workdir with its env exported.

    The workdir is created first; ``exec`` makes the interpreter the session's process so that a
    closed connection (SIGHUP through the pty) reaches it directly.
    """
    env = {**BASE_ENV, **host.env, **extra_env}
    assignments = [f"{name}={value}" for name, value in env.items()]
    workdir = shlex.quote(host.workdir)
    run = shlex.join(["env", *assignments, *argv])
    return f"mkdir -p {workdir} && cd {workdir} && exec {run}"


def stage0_argv(host: HostSpec, deadline_s: float) -> list[str]:
    return [host.python, "-m", "ddpcheck.agent", "facts", "--deadline", _num(deadline_s)]


def stage0_command(host: HostSpec, deadline_s: float) -> str:
    """Stage 0: host facts (hostname, python, torch import, GPUs) before any rank starts."""
    return remote_command(host, stage0_argv(host, deadline_s))


def resolve_backend(requested: Backend, gpus_by_host: Mapping[str, int]) -> Backend:
    """auto -> nccl when every host has a GPU, else gloo."""
    if requested is not Backend.AUTO:
        return requested
    if gpus_by_host and all(count > 0 for count in gpus_by_host.values()):
        return Backend.NCCL
    return Backend.GLOO


def resolve_slots(host: HostSpec, gpus: int, local: bool) -> int:
    """slots from hosts.yaml, else one rank per GPU, else 1 (2 for the embedded local default)."""
    if host.slots is not None:
        return host.slots
    if gpus > 0:
        return gpus
    return LOCAL_CPU_RANKS if local else 1


# What each rank runs under torchrun: (host, world size, backend, options) -> "-m module args".
RankProgram = Callable[[HostSpec, int, Backend, LaunchOptions], list[str]]


def probe_program(host: HostSpec, world_size: int, backend: Backend,
                  options: LaunchOptions) -> list[str]:
    """The preflight probe on every rank."""
    return [
        "-m", "ddpcheck.probe",
        "--host", host.name,
        "--expected-world-size", str(world_size),
        "--backend", backend.value,
        "--collective-timeout", str(options.collective_timeout_s),
        "--deadline", _num(options.deadline_s),
        "--iterations", str(options.iterations),
    ]


def master_address(spec: ClusterSpec) -> str:
    return spec.master_host.address


def plan_launch(spec: ClusterSpec, slots_by_host: Mapping[str, int], backend: Backend,
                options: LaunchOptions = LaunchOptions(),
                run_id: Optional[str] = None,
                rank_program: RankProgram = probe_program) -> list[HostLaunch]:
    """One torchrun per host with static node ranks, in hosts.yaml order, running
    ``rank_program`` (the probe by default) on every rank."""
    hosts = spec.hosts
    world_size = sum(slots_by_host[h.name] for h in hosts)
    launches = []
    for node_rank, host in enumerate(hosts):
        slots = slots_by_host[host.name]
        torchrun_args = [
            "--nnodes", str(len(hosts)),
            "--node-rank", str(node_rank),
            "--nproc-per-node", str(slots),
            "--master-addr", master_address(spec),
            "--master-port", str(spec.rendezvous_port),
            "--max-restarts", "0",
            "--monitor-interval", "0.5",
            "--rdzv-conf", f"timeout={options.rendezvous_timeout_s}",
        ]
        if run_id:
            torchrun_args += ["--rdzv-id", run_id]
        probe_args = rank_program(host, world_size, backend, options)
        argv = [host.python, "-m", "ddpcheck.agent", "launch",
                "--deadline", _num(options.deadline_s), "--", *torchrun_args, *probe_args]
        launches.append(HostLaunch(host.name, node_rank, slots, remote_command(host, argv)))
    return launches


def _num(value: float) -> str:
    return f"{value:g}"
