"""Plan: ClusterSpec (+ stage-0 facts) -> the exact shell command run on each host.

Pure functions only. Every value that came from hosts.yaml or the command line goes through
``shlex.quote``; the transport runs the resulting string as-is (ssh exec or ``/bin/sh -c``).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Sequence

from ..core.agentargs import TORCH_INSPECT, WORKDIR_VARIABLE
from ..model.jobplace import JobPlace
from ..model.spec import Backend, ClusterSpec, HostSpec

# Records come back over stdout as marked lines (ddpcheck.wire).

# Environment every remote step gets: unbuffered output so records arrive as they happen, and
# the current directory off sys.path (Python 3.11+; older ones start in /, see remote_command).
BASE_ENV: Mapping[str, str] = {"PYTHONUNBUFFERED": "1", "PYTHONSAFEPATH": "1"}

LOCAL_CPU_RANKS = 2  # the embedded default without a GPU: 2 ranks on gloo


@dataclass(frozen=True)
class LaunchOptions:
    """Deadlines of one preflight launch, in seconds. Never torch's 10/30-minute defaults."""

    deadline_s: float = 120.0  # the agent kills torchrun and every rank after this
    rendezvous_timeout_s: int = 30  # torchrun static rendezvous (default 600)
    collective_timeout_s: int = 30  # process group timeout (default 10 min NCCL, 30 min gloo)
    iterations: int = 20  # repeats for latency medians
    seed: Optional[int] = None  # --seed: every rank seeds with it, RNG states are compared
    setup: Optional[str] = None  # --setup MODULE:FUNCTION run on every rank first
    ddp_steps: int = 3  # steps of the tiny DDP run
    consistency: bool = True  # fingerprints and the tiny DDP run
    compute: bool = True  # the compute check (matmul throughput, memory bandwidth)
    numerics_seconds: float = 1.0  # the numerics check's time on each rank (0: skipped)
    keep: bool = False  # --keep: leave each host's run directory in place


@dataclass(frozen=True)
class HostLaunch:
    """What one host runs: its node rank, its number of ranks and the command line."""

    host: str
    node_rank: int
    slots: int
    command: str


# Runs "$0" "$@" as given: the way to start a program whose path contains "=", which ``env``
# would otherwise take for one more variable assignment.
EXEC_AS_GIVEN = ["sh", "-c", 'exec "$0" "$@"']


def remote_command(host: HostSpec, argv: Sequence[str], extra_env: Mapping[str, str] = {}) -> str:
    """A shell command that runs ``argv`` with the host's env exported and its workdir named.

    The interpreter starts in ``/``, never in a directory another user could have made or
    written (``python -m`` puts the current directory first on ``sys.path``); the agent creates
    the workdir (``$DDPCHECK_WORKDIR``, ``{uid}`` filled in there) 0700, refuses one that is
    not private and enters it. ``exec`` makes the interpreter the session's process so that a
    closed connection (SIGHUP through the pty) reaches it directly. Every value is one
    ``shlex.quote``d word: ``shlex.split`` of the result gives back exactly
    ``cd / && exec env NAME=VALUE... ARGV...``.
    """
    env = {**BASE_ENV, **host.env, **extra_env, WORKDIR_VARIABLE: host.workdir}
    for name in env:
        if not name or "=" in name or "\0" in name:
            raise ValueError(f"not an environment variable name: {name!r}")
    values = [*env.values(), *argv]
    if any("\0" in value for value in values):
        raise ValueError("a NUL character cannot be passed to a remote command")
    if not argv:
        raise ValueError("nothing to run")
    assignments = [f"{name}={value}" for name, value in env.items()]
    program = [*EXEC_AS_GIVEN, *argv] if "=" in argv[0] else list(argv)
    run = shlex.join(["env", *assignments, *program])
    return f"cd / && exec {run}"


# Variables whose values are shown as *** when commands are printed (-v, --dry-run).
_SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSW|CREDENTIAL|AUTH", re.IGNORECASE)
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def redact_secrets(command: str) -> str:
    """``command`` for printing: the value of a variable whose name looks secret (…_TOKEN,
    …_API_KEY, …PASSWORD) replaced by ***. Unchanged, byte for byte, when there is none."""
    try:
        words = shlex.split(command)
    except ValueError:
        return command
    hidden = False
    shown = []
    for word in words:
        name, equals, _ = word.partition("=")
        if equals and _ASSIGNMENT.fullmatch(name) and _SECRET_NAME.search(name):
            word, hidden = f"{name}=***", True
        shown.append(word if word == "&&" else shlex.quote(word))
    return " ".join(shown) if hidden else command


@dataclass(frozen=True)
class RendezvousBesideStage0:
    """The rendezvous check made by stage 0 itself (``agent facts --port``): the master
    listens on the rendezvous port while every host, the master too, connects to the address
    torchrun will be given. One command a host instead of two rounds of them."""

    master: str  # the host that listens
    address: str  # the master's address, as torchrun gets it
    port: int
    hosts: int  # how many reach it
    window_s: float  # how long a host keeps trying


def rendezvous_beside_stage0(spec: ClusterSpec, window_s: float) -> RendezvousBesideStage0:
    return RendezvousBesideStage0(spec.master_host.name, master_address(spec),
                                  spec.rendezvous_port, len(spec.hosts), window_s)


def stage0_argv(host: HostSpec, deadline_s: float, master: Optional[str] = None,
                dcgm: Optional[int] = None,
                rendezvous: Optional[RendezvousBesideStage0] = None) -> list[str]:
    argv = [host.python, "-m", "ddpcheck.remote.agent", "facts", "--deadline", _num(deadline_s),
            "--torch", TORCH_INSPECT]  # the ranks' torchrun imports it (remote.torchrun)
    if master:
        argv += ["--master", master]
    if dcgm:
        argv += ["--dcgm", str(dcgm)]
    if rendezvous is not None:
        argv += ["--port", str(rendezvous.port)]
        if host.name == rendezvous.master:
            argv += ["--listen", str(rendezvous.hosts)]
        argv += ["--reach", rendezvous.address, "--name", host.name,
                 "--reach-timeout", _num(rendezvous.window_s)]
    return argv


def stage0_command(host: HostSpec, deadline_s: float, master: Optional[str] = None,
                   dcgm: Optional[int] = None,
                   rendezvous: Optional[RendezvousBesideStage0] = None) -> str:
    """Stage 0: host facts (hostname, python, torch inspected, GPUs, resources, interfaces, the
    route to ``master``; DCGM diagnostics with ``dcgm``; the rendezvous check with
    ``rendezvous``) before any rank starts, with the env the ranks will get."""
    return remote_command(host, stage0_argv(host, deadline_s, master, dcgm, rendezvous))


def in_job_stage0_command(place: JobPlace, host: HostSpec, deadline_s: float,
                          dcgm: Optional[int], reach_window_s: Optional[float],
                          listens: bool) -> str:
    """Stage 0 of one node of ``preflight --in-job``: the same facts, the route to the
    master; with ``reach_window_s`` the rendezvous check beside them, at the port torchrun's
    ranks will meet at (the master port + 1): node 0 ``listens`` there for every node, every
    node connects to the master address it was given."""
    beside = None if reach_window_s is None else RendezvousBesideStage0(
        host.name if listens else "", place.master_addr, place.rendezvous_port, place.nnodes,
        reach_window_s)
    return stage0_command(host, deadline_s, master=place.master_addr, dcgm=dcgm,
                          rendezvous=beside)


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


# What each rank runs under torchrun: (host name, world size, backend, options) -> "-m module
# args". The host name is text so that srun's per-node placeholder can stand for it.
RankProgram = Callable[[str, int, Backend, LaunchOptions], list[str]]


def probe_program(host_name: str, world_size: int, backend: Backend,
                  options: LaunchOptions) -> list[str]:
    """The preflight probe on every rank."""
    return [
        "-m", "ddpcheck.remote.probe",
        "--host", host_name,
        "--expected-world-size", str(world_size),
        "--backend", backend.value,
        "--collective-timeout", str(options.collective_timeout_s),
        "--deadline", _num(options.deadline_s),
        "--iterations", str(options.iterations),
        *([] if options.compute else ["--compute-seconds", "0"]),
        *numerics_args(options),
        *consistency_args(options),
    ]


def numerics_args(options: LaunchOptions) -> list[str]:
    """--numerics-seconds when it is not the probe's default (1 s)."""
    if options.numerics_seconds == LaunchOptions.numerics_seconds:
        return []
    return ["--numerics-seconds", _num(options.numerics_seconds)]


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
        argv = launch_argv(spec, host, str(node_rank), str(slots), host.name, world_size,
                           backend, options, run_id, rank_program)
        launches.append(HostLaunch(host.name, node_rank, slots, remote_command(host, argv)))
    return launches


def run_dir_name(run_id: Optional[str]) -> str:
    """The name of the run's directory in each host's workdir (the agent makes
    ``<name>-<random>`` with mkdtemp, torchrun's files go in it, and it is removed at the end
    unless --keep)."""
    return f"ddpcheck-{run_id or 'run'}"


def global_ranks(hosts: Sequence[HostSpec],
                 slots_by_host: Mapping[str, int]) -> dict[str, tuple[int, ...]]:
    """The global ranks each host's ranks get: with static node ranks, torchrun numbers them
    in node-rank (hosts.yaml) order, ``slots`` consecutive ranks per host."""
    ranks: dict[str, tuple[int, ...]] = {}
    base = 0
    for host in hosts:
        count = slots_by_host.get(host.name, 0)
        ranks[host.name] = tuple(range(base, base + count))
        base += count
    return ranks


def consistency_args(options: LaunchOptions) -> list[str]:
    """The probe's consistency options, only where they differ from its defaults."""
    args: list[str] = []
    if options.seed is not None:
        args += ["--seed", str(options.seed)]
    if options.setup:
        args += ["--setup", options.setup]
    if options.ddp_steps != LaunchOptions.ddp_steps:
        args += ["--ddp-steps", str(options.ddp_steps)]
    if not options.consistency:
        args.append("--no-consistency")
    return args


@dataclass(frozen=True)
class RendezvousCheck:
    """The check before torchrun: the master listens on the rendezvous port while every host
    (the master too) connects to the address torchrun will be given."""

    master: str
    listen_command: str
    reach_commands: Mapping[str, str]


def plan_rendezvous_check(spec: ClusterSpec, window_s: float) -> RendezvousCheck:
    master = spec.master_host
    port = str(spec.rendezvous_port)
    listen = remote_command(master, [
        master.python, "-m", "ddpcheck.remote.agent", "listen", "--port", port,
        "--deadline", _num(window_s + 2.0), "--expect", str(len(spec.hosts))])
    reach = {host.name: remote_command(host, [
        host.python, "-m", "ddpcheck.remote.agent", "reach", "--address", master_address(spec),
        "--port", port, "--name", host.name, "--timeout", _num(window_s)])
        for host in spec.hosts}
    return RendezvousCheck(master.name, listen, reach)


def launch_argv(spec: ClusterSpec, host: HostSpec, node_rank: str, slots: str, host_name: str,
                world_size: int, backend: Backend, options: LaunchOptions,
                run_id: Optional[str], rank_program: RankProgram = probe_program) -> list[str]:
    """The agent's argv on one host: ``agent launch -- <torchrun args> -m ddpcheck.remote.probe ...``
    (or another ``rank_program``). node_rank, slots and host_name are text so that a launcher
    that runs one command on every node (srun) can pass placeholders the agent fills in on the
    node."""
    torchrun_args = [
        "--nnodes", str(len(spec.hosts)),
        "--node-rank", node_rank,
        "--nproc-per-node", slots,
        "--master-addr", master_address(spec),
        "--master-port", str(spec.rendezvous_port),
        "--max-restarts", "0",
        "--monitor-interval", "0.1",  # torchrun's own default: a rank's end is seen at once
        "--rdzv-conf", f"timeout={options.rendezvous_timeout_s}",
    ]
    if run_id:
        torchrun_args += ["--rdzv-id", run_id]
    probe_args = rank_program(host_name, world_size, backend, options)
    return [host.python, "-m", "ddpcheck.remote.agent", "launch",
            "--deadline", _num(options.deadline_s), "--run-dir", run_dir_name(run_id),
            *(["--keep"] if options.keep else []), "--", *torchrun_args, *probe_args]


def _num(value: float) -> str:
    return f"{value:g}"
