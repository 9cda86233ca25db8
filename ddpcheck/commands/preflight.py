"""``ddpcheck preflight``: its options, and which workload and launcher run it.

Runs on the launcher. Building the parser imports neither the engine nor the transport: they
are imported when the command runs.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from ..core.argtypes import at_least, message_size, positive
from ..model.errors import ConfigError
from ..model.spec import ClusterSpec
from ..model.report import Report
from .common import (EXIT_USAGE, InventoryOptions, OutputOptions, add_common_options,
                     add_inventory_options, add_output_options, add_prom_option, error_text,
                     load_spec, run_reported)

if TYPE_CHECKING:
    from ..engine.preflight import PreflightOptions


def register(sub) -> None:
    pre = sub.add_parser("preflight", help="full check before a multi-node job",
                         description="Check every host of HOSTS (or this machine) and run a "
                                     "probe on every rank with torchrun.")
    add_common_options(pre, 180.0)
    add_inventory_options(pre)
    add_output_options(pre)
    add_prom_option(pre)
    pre.add_argument("--launcher", choices=("ssh", "slurm"), default="ssh",
                     help="how ranks are started: ssh (default), or slurm: srun inside the "
                          "current allocation (the hosts default to --slurm)")
    pre.add_argument("--collective-timeout", type=positive, default=30.0, metavar="SECONDS",
                     help="process group timeout for the ranks (default 30; torch's is 10-30 min)")
    pre.add_argument("--rendezvous-timeout", type=positive, default=30.0, metavar="SECONDS",
                     help="torchrun rendezvous timeout (default 30; torch's is 600)")
    pre.add_argument("--seed", type=int, metavar="N",
                     help="seed Python, NumPy and torch with N on every rank, then check that "
                          "every rank's RNG state is the same")
    pre.add_argument("--setup", metavar="MODULE:FUNCTION",
                     help="call your own set-up (e.g. seed_everything) on every rank first, so "
                          "your code is what gets checked; FILE.py:FUNCTION works too; the "
                          "function gets --seed when it takes an argument")
    pre.add_argument("--ddp-steps", type=at_least(0), default=3, metavar="K",
                     help="steps of the tiny DDP run that checks parameters stay equal "
                          "(default 3)")
    pre.add_argument("--dcgm", type=int, choices=(1, 2), metavar="1|2",
                     help="also run DCGM diagnostics (dcgmi diag -r N -j) on every host in "
                          "stage 0; failed tests are gpu_health errors; --timeout grows by "
                          "120 s / 600 s")
    pre.add_argument("--skip", type=_skip_list, default=frozenset(), metavar="CHECK[,CHECK]",
                     help="leave out: consistency (fingerprints and the tiny DDP run), "
                          "rendezvous (the port check before torchrun), compute (matmul "
                          "throughput and memory bandwidth, 1 s per rank), numerics "
                          "(products compared bit for bit across ranks, 1 s per rank)")
    pre.add_argument("--numerics-seconds", type=positive, default=1.0, metavar="SECONDS",
                     help="the numerics check's time on each rank: seeded matrix products in "
                          "every training dtype, repeated so an intermittent fault shows "
                          "(default 1)")
    pre.add_argument("--iterations", type=at_least(1), default=20, metavar="N",
                     help="repeats of barrier and small all_reduce for the latency medians "
                          "(default 20)")
    pre.add_argument("--keep", action="store_true",
                     help="keep each host's run directory under its workdir (torchrun's "
                          "files and launch.log); by default it is removed after the run")
    pre.add_argument("--dry-run", action="store_true",
                     help="print each host's exact commands and run nothing (the values of "
                          "variables named like *_TOKEN, *_KEY or *PASSWORD shown as ***)")
    job = pre.add_argument_group(
        "in the job (--in-job)", "run once per node by the job's own launcher (a pod, srun "
        "--ntasks-per-node=1, mpirun); each value: this flag, else PET_* (torchrun's names, "
        "set by the Kubeflow operators), MASTER_ADDR/MASTER_PORT, JOB_COMPLETION_INDEX "
        "(JobSet), then SLURM_NNODES/SLURM_NODEID/SLURM_JOB_NODELIST")
    job.add_argument("--in-job", action="store_true",
                     help="check the gang from inside the job, no SSH: node 0 hosts a store at "
                          "the master address and port, every node runs stage 0 on itself "
                          "and joins it, node 0 decides, every node starts torchrun (at the "
                          "master port + 1); node 0 writes the report, every node exits with "
                          "the verdict's code")
    job.add_argument("--nnodes", type=at_least(1), metavar="N", help="nodes in the job")
    job.add_argument("--node-rank", type=at_least(0), metavar="R", help="this node's rank")
    job.add_argument("--nproc-per-node", type=at_least(1), metavar="N",
                     help="ranks on each node (default: one per GPU, 2 on gloo without one)")
    job.add_argument("--master-addr", metavar="ADDRESS", help="node 0's address")
    job.add_argument("--master-port", type=at_least(1), metavar="PORT",
                     help="node 0's store port (default 29500); torchrun's ranks meet at the "
                          "next one")
    job.add_argument("--bandwidth", type=message_size, nargs="?", const="16M", default=None,
                     metavar="MAXBYTES",
                     help="once the probe passed, the gang runs the sweep of `ddpcheck "
                          "bandwidth` on the same ranks: all_reduce at 1M, 4M, 16M (a short "
                          "one, for a preflight), then pairs of nodes at the largest size to "
                          "name a slow node or link; MAXBYTES sets the largest size (e.g. "
                          "256M, with a longer --timeout); every collective and size: "
                          "`ddpcheck bandwidth`. Node 0's report gets the nccl-tests table")
    job.add_argument("--join-timeout", type=positive, metavar="SECONDS",
                     help="how long node 0 waits for every node to join (default: half of "
                          "--timeout, at most 60)")
    pre.set_defaults(run=preflight_command, format=None)  # None: the table's default format


SKIPPABLE = ("consistency", "rendezvous", "compute", "numerics")


def _skip_list(text: str) -> frozenset[str]:
    names = frozenset(n.strip() for n in text.split(",") if n.strip())
    unknown = sorted(names - set(SKIPPABLE))
    if unknown:
        raise argparse.ArgumentTypeError(f"cannot skip {', '.join(unknown)} "
                                         f"(choose from {', '.join(SKIPPABLE)})")
    return names


def setup_target(target):
    """--setup with a relative FILE.py made absolute (from here), so that ranks load the file
    the user named and never search their current directory for it."""
    if not target:
        return target
    where, sep, name = target.rpartition(":")
    if sep and (where.endswith(".py") or os.sep in where) and not os.path.isabs(where):
        return f"{os.path.abspath(where)}:{name}"
    return target


@dataclass(frozen=True)
class PreflightCommandOptions:
    """Everything ``ddpcheck preflight`` was asked: where the hosts are, what to write, and the
    workload's options."""
    inventory: InventoryOptions
    output: OutputOptions
    dry_run: bool
    workload: "PreflightOptions"
    in_job: bool = False
    # --nnodes --node-rank --nproc-per-node --master-addr --master-port (None: not given)
    job_flags: tuple[tuple[str, object], ...] = ()
    join_timeout_s: Optional[float] = None
    bandwidth_max: Optional[int] = None  # --bandwidth [MAXBYTES]: the sweep after the probe

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "PreflightCommandOptions":
        return cls(inventory=InventoryOptions.from_args(args, launcher=args.launcher),
                   output=OutputOptions.from_args(args, prom=args.prom),
                   dry_run=args.dry_run, workload=preflight_options(args),
                   in_job=args.in_job, join_timeout_s=args.join_timeout,
                   bandwidth_max=args.bandwidth,
                   job_flags=tuple((name, getattr(args, name)) for name in (
                       "nnodes", "node_rank", "nproc_per_node", "master_addr", "master_port")))


def preflight_options(args: argparse.Namespace) -> "PreflightOptions":
    from ..core.deadlines import Deadlines
    from ..engine.preflight import PreflightOptions
    from ..plan.cmdlines import LaunchOptions

    deadlines = Deadlines.from_timeout(args.timeout, args.dcgm)
    return PreflightOptions(
        timeout_s=deadlines.command_s, verbose=args.verbose, dcgm=args.dcgm,
        stage0_timeout_s=deadlines.stage0_s,
        rendezvous_check="rendezvous" not in args.skip,
        launch=LaunchOptions(deadline_s=deadlines.agent_s,
                             rendezvous_timeout_s=max(int(args.rendezvous_timeout), 1),
                             collective_timeout_s=max(int(args.collective_timeout), 1),
                             iterations=args.iterations, keep=args.keep,
                             seed=args.seed, setup=setup_target(args.setup),
                             ddp_steps=args.ddp_steps,
                             consistency="consistency" not in args.skip,
                             compute="compute" not in args.skip,
                             numerics_seconds=(0.0 if "numerics" in args.skip
                                               else args.numerics_seconds)))


def dry_run_text(spec: ClusterSpec, options) -> str:
    """Each host's exact commands: stage 0, the rendezvous check, then torchrun."""
    from ..engine.state import REACH_WINDOW_S
    from ..plan.dryrun import preflight_steps, render

    return render(preflight_steps(spec, options.launch, options.rendezvous_check,
                                  REACH_WINDOW_S))


def preflight_command(args: argparse.Namespace) -> int:
    return run_preflight_command(PreflightCommandOptions.from_args(args))


def run_preflight_command(command: PreflightCommandOptions) -> int:
    from ..engine.preflight import run_preflight
    from ..report.progress import Progress

    options = command.workload
    if command.in_job:
        return run_in_job_command(command)
    if command.bandwidth_max is not None:
        print("ddpcheck: command line: --bandwidth is for --in-job; from a login node run "
              "`ddpcheck bandwidth` (and `--pairwise`)", file=sys.stderr)
        return EXIT_USAGE
    given = [name for name, value in command.job_flags if value is not None]
    if given or command.join_timeout_s is not None:
        flags = ", ".join("--" + name.replace("_", "-") for name in given
                          + (["join_timeout"] if command.join_timeout_s is not None else []))
        print(f"ddpcheck: command line: {flags} describe(s) the gang of --in-job; from a login "
              "node the hosts come from HOSTS (hosts.yaml), -w, --hostfile or --slurm",
              file=sys.stderr)
        return EXIT_USAGE
    slurm = command.inventory.launcher == "slurm"
    if slurm and options.dcgm:
        print("ddpcheck: --dcgm runs with the ssh launcher or on this machine; under "
              "--launcher slurm run `ddpcheck node --dcgm N` on each node (e.g. in the prolog)",
              file=sys.stderr)
        return EXIT_USAGE
    if command.dry_run:
        try:
            spec = load_spec(command.inventory)
            if slurm:
                check_slurm_spec(spec, need_allocation=False)
        except ConfigError as exc:
            print(error_text(exc), file=sys.stderr)
            return EXIT_USAGE
        if slurm:
            from ..plan.dryrun import render, srun_steps

            sys.stdout.write(render(srun_steps(spec, options.launch)))
        else:
            sys.stdout.write(dry_run_text(spec, options))
        return 0
    progress = Progress(None if command.output.quiet else sys.stderr)

    def execute(spec: ClusterSpec) -> Report:
        launcher = None
        if slurm:
            from ..engine.srun import SrunLauncher

            launcher = SrunLauncher()
        return run_preflight(spec, options, progress, launcher)

    return run_reported(command.inventory, command.output, execute,
                        check_spec=check_slurm_spec if slurm else None)


def check_slurm_spec(spec: ClusterSpec, need_allocation: bool = True) -> None:
    """--launcher slurm: inside an allocation, srun at hand, one command fits every node."""
    import shutil

    from ..plan.slurm import uniform_host_problem

    if spec.local:
        raise ConfigError("--launcher slurm needs nodes (--slurm, --hostfile or -w)",
                          source="command line")
    if need_allocation and not os.environ.get("SLURM_JOB_ID"):
        raise ConfigError("--launcher slurm works inside a SLURM allocation (sbatch, salloc): "
                          "SLURM_JOB_ID is not set", source="command line")
    if need_allocation and shutil.which("srun") is None:
        raise ConfigError("--launcher slurm: srun is not on PATH", source="command line")
    problem = uniform_host_problem(spec)
    if problem:
        raise ConfigError(problem, source=spec.source)


def run_in_job_command(command: PreflightCommandOptions) -> int:
    """--in-job: where this node stands (flags, then the launcher's variables), then node 0's
    engine with the store launcher, or another node's end of the store."""
    from ..config.jobenv import resolve

    given = [name for name, value in (("HOSTS", command.inventory.hosts),
                                      ("--hostfile", command.inventory.hostfile),
                                      ("--slurm", command.inventory.slurm),
                                      ("-w", command.inventory.hostlist)) if value]
    problem = (f"--in-job reads the gang from the job, not from {given[0]}" if given else
               "--in-job starts torchrun on every node itself: leave out --launcher slurm"
               if command.inventory.launcher == "slurm" else None)
    if problem:
        print(f"ddpcheck: command line: {problem}", file=sys.stderr)
        return EXIT_USAGE
    try:
        place = resolve(dict(command.job_flags), os.environ)
        sweep = in_job_sweep(command.bandwidth_max)
    except ConfigError as exc:
        print(error_text(exc), file=sys.stderr)
        return EXIT_USAGE
    if command.dry_run:
        import socket

        from ..engine.state import REACH_WINDOW_S
        from ..plan.dryrun import in_job_steps, render

        options = command.workload
        sys.stdout.write(render(in_job_steps(
            place, socket.gethostname(), sys.executable, options.launch,
            options.stage0_timeout_s, options.dcgm,
            REACH_WINDOW_S if options.rendezvous_check else None, sweep)))
        return 0
    from ..engine.instore import run_in_job
    from ..report.progress import Progress

    progress = Progress(None if command.output.quiet else sys.stderr)
    return run_in_job(place, command.workload, command.join_timeout_s, progress,
                      lambda execute, spec_of: run_reported(command.inventory, command.output,
                                                            execute, in_job_render,
                                                            spec_of=spec_of), sweep)


def in_job_sweep(max_bytes: Optional[int]):
    """--bandwidth [MAXBYTES]: the short sweep (``plan.bandwidth.IN_JOB_SWEEP``) up to
    MAXBYTES; None without --bandwidth. ConfigError for a size it cannot sweep."""
    from dataclasses import replace

    from ..core.busbw import element_count
    from ..plan.bandwidth import IN_JOB_SWEEP, MAX_SWEEP_BYTES

    if max_bytes is None:
        return None
    sweep = replace(IN_JOB_SWEEP, min_bytes=min(IN_JOB_SWEEP.min_bytes, max_bytes),
                    max_bytes=max_bytes)
    if not 0 < max_bytes <= MAX_SWEEP_BYTES or all(
            element_count(op, max_bytes, 1) == 0 for op in sweep.ops):
        raise ConfigError(f"--bandwidth {max_bytes}: the largest size must hold a float32 "
                          f"element and be at most {MAX_SWEEP_BYTES} B", "command line",
                          key="--bandwidth")
    return sweep


def in_job_render(report: Report, style) -> str:
    """Preflight's table, then the sweep's nccl-tests tables when --bandwidth ran one (in
    nccl-tests' own columns unless --format was given, as ``ddpcheck bandwidth`` prints them),
    and the verdict line last, where a reader looks first."""
    from ..report.bandwidth import sweep_section
    from .common import table_renderer

    table = table_renderer(report, style)
    sweep = sweep_section(report, style.tablefmt)  # None: --format was not given
    head, _, verdict = table.rstrip("\n").rpartition("\n")
    if not sweep or not verdict.startswith("# Verdict"):
        return table + sweep
    return f"{head}\n{sweep}{verdict}\n"
