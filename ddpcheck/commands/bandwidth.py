"""``ddpcheck bandwidth``: its options, and which workload (the all-host sweep or the pair
rounds) runs over the SSH launcher.

Runs on the launcher. Building the parser imports neither the engine nor the transport.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Optional

from ..analyze.bandwidth import DEFAULT_SLOW_FRACTION
from ..model.errors import ConfigError
from ..model.spec import ClusterSpec
from ..plan.bandwidth import PAIRWISE_BASE_S, PAIRWISE_ROUND_S, SWEEP_TIMEOUT_S, default_timeout
from ..core.argtypes import (at_least, collectives, fraction, message_size, non_negative,
                             positive)
from ..core.busbw import ALL_COLLECTIVES, Collective, element_count, message_sizes, parse_size
from ..report.bandwidth import PLOT_INSTALL_HINT
from ..model.report import Report
from .common import (EXIT_USAGE, InventoryOptions, OutputOptions, TableStyle,
                     add_common_options, add_inventory_options, add_output_options,
                     add_prom_option, check_output_paths, error_text, load_spec, run_reported)


def dry_run_text(spec: ClusterSpec, options) -> str:
    """Each host's exact commands (and the rounds), as they would run."""
    from ..engine.bandwidth import options_program
    from ..plan.dryrun import bandwidth_steps, render

    settings = options.settings
    pairwise = (settings.ops[0], options.max_bytes) if settings.pairwise else None
    return render(bandwidth_steps(spec, options.launch, options_program(options), pairwise,
                                  adaptive=settings.pairing != "all"))


WARMUP_HINT = ("-w is the warm-up iteration count here, as in nccl-tests; give a host list "
               "with --nodelist")


def register(sub) -> None:
    parser = sub.add_parser(
        "bandwidth", help="nccl-tests style bus-bandwidth sweep; --pairwise finds a slow host "
                          "or link",
        description="Measure collectives across every rank of HOSTS (or this machine), "
                    "nccl-tests style: algbw and busbw per size, each result checked. "
                    "With --pairwise, measure pairs of hosts (adaptive: at most 3 rounds; "
                    "--pairwise all: every pair, circle method) and name a slow host or link.")
    add_common_options(parser, SWEEP_TIMEOUT_S)
    add_inventory_options(parser, hostlist_flags=("--nodelist",))  # -w: warm-up, as nccl-tests
    add_output_options(parser)
    add_prom_option(parser)
    # without --format the tables keep nccl-tests' columns, which users already read
    parser.set_defaults(timeout=None, format=None)
    parser._option_string_actions["--format"].help = (
        "lay the tables out in this tabulate format (e.g. github, psql, tsv, html); by "
        "default nccl-tests' own columns")
    parser._option_string_actions["--timeout"].help = (
        f"hard deadline for the whole command (default {SWEEP_TIMEOUT_S:g}; with --pairwise "
        f"{PAIRWISE_BASE_S:g} + {PAIRWISE_ROUND_S:g} per round)")
    parser.add_argument("--ops", type=collectives, default=None, metavar="OP[,OP...]",
                        help="all_reduce, all_gather, reduce_scatter, broadcast, all_to_all or "
                             "all (default: all; with --pairwise: all_reduce)")
    parser.add_argument("-b", "--minbytes", type=message_size, default=parse_size("1M"),
                        metavar="SIZE",
                        help="smallest size, e.g. 8, 64K, 1M (default 1M)")
    parser.add_argument("-e", "--maxbytes", type=message_size, default=parse_size("32M"),
                        metavar="SIZE", help="largest size (default 32M; the only size of "
                                             "--pairwise)")
    parser.add_argument("-f", "--stepfactor", type=at_least(1), default=2, metavar="F",
                        help="multiply the size by F each step (default 2)")
    parser.add_argument("-n", "--iters", type=at_least(1), default=20, metavar="N",
                        help="timed iterations per size (default 20)")
    parser.add_argument("-w", "--warmup", type=at_least(0, hint=WARMUP_HINT), default=5,
                        metavar="N", help="warm-up iterations per size, not timed (default 5; "
                                          "a host list is --nodelist here)")
    parser.add_argument("--min-busbw", type=non_negative, default=None, metavar="GB/s",
                        help="fail (exit 1) when the average busbw (with --pairwise: any "
                             "pair's) is below this")
    parser.add_argument("--pairwise", nargs="?", const="adaptive", default=None,
                        choices=("adaptive", "all"),
                        help="name a slow host or link from pairs of hosts: adaptive (the "
                             "default) pairs every host once, then re-pairs the hosts of slow "
                             "pairs with good ones (at most 3 rounds, whatever the number of "
                             "hosts); 'all' measures every pair (n-1 rounds)")
    parser.add_argument("--slow-fraction", type=fraction, default=DEFAULT_SLOW_FRACTION,
                        metavar="X", help="with --pairwise, a pair below X times the typical "
                                          "busbw is slow (default 0.5)")
    parser.add_argument("--plot", metavar="FILE.png",
                        help="draw busbw against size per op (with --pairwise: a heatmap); "
                             f"needs matplotlib ({PLOT_INSTALL_HINT})")
    parser.add_argument("--collective-timeout", type=positive, default=60.0, metavar="SECONDS",
                        help="process group timeout for the ranks (default 60)")
    parser.add_argument("--rendezvous-timeout", type=positive, default=30.0, metavar="SECONDS",
                        help="torchrun rendezvous timeout (default 30)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print each host's exact commands (and the rounds) and run nothing")
    parser.set_defaults(run=bandwidth_command)


@dataclass(frozen=True)
class BandwidthCommandOptions:
    """Everything ``ddpcheck bandwidth`` was asked, as parsed; ``bandwidth_options`` turns it
    into the workload's options once the spec is known (the default deadline depends on the
    number of hosts)."""
    inventory: InventoryOptions
    output: OutputOptions
    dry_run: bool
    verbose: bool
    timeout: Optional[float]  # None: from the plan (sweep, or pairwise rounds)
    ops: Optional[tuple[Collective, ...]]  # None: all (with pairwise: all_reduce)
    minbytes: int
    maxbytes: int
    stepfactor: int
    iters: int
    warmup: int
    min_busbw: Optional[float]
    pairwise: Optional[str]  # None, "adaptive" or "all"
    slow_fraction: float
    collective_timeout: float
    rendezvous_timeout: float

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "BandwidthCommandOptions":
        return cls(inventory=InventoryOptions.from_args(args),
                   output=OutputOptions.from_args(args, prom=args.prom, plot=args.plot),
                   dry_run=args.dry_run, verbose=args.verbose, timeout=args.timeout,
                   ops=tuple(args.ops) if args.ops else None, minbytes=args.minbytes,
                   maxbytes=args.maxbytes, stepfactor=args.stepfactor, iters=args.iters,
                   warmup=args.warmup, min_busbw=args.min_busbw, pairwise=args.pairwise,
                   slow_fraction=args.slow_fraction,
                   collective_timeout=args.collective_timeout,
                   rendezvous_timeout=args.rendezvous_timeout)


def bandwidth_options(command: BandwidthCommandOptions, spec: Optional[ClusterSpec]):
    """The workload's options; ConfigError for a combination that cannot run."""
    from ..analyze.bandwidth import SweepSettings
    from ..engine.bandwidth import BandwidthOptions
    from ..plan.cmdlines import LaunchOptions

    ops = command.ops or ((Collective.ALL_REDUCE,) if command.pairwise else ALL_COLLECTIVES)
    if command.pairwise and len(ops) != 1:
        raise ConfigError("--pairwise measures one op: give one with --ops", "command line",
                          key="--ops")
    try:
        sizes = message_sizes(command.minbytes, command.maxbytes, command.stepfactor)
    except ValueError as exc:
        raise ConfigError(str(exc), "command line", key="-b/-e/-f") from None
    if command.pairwise:
        sizes = [command.maxbytes]
        if spec is not None and len(spec.hosts) < 2:
            raise ConfigError(f"--pairwise needs at least 2 hosts; {spec.source} has "
                              f"{len(spec.hosts)}", "command line", key="--pairwise")
    if all(element_count(op, size, 1) == 0 for op in ops for size in sizes):
        raise ConfigError(f"sizes up to {command.maxbytes} B hold no float32 element",
                          "command line", key="-e")
    timeout = command.timeout or (default_timeout(spec, command.pairwise) if spec
                                  else SWEEP_TIMEOUT_S)
    return BandwidthOptions(
        settings=SweepSettings(ops=tuple(ops), sizes=tuple(sizes), iters=command.iters,
                               warmup=command.warmup, min_busbw_gbs=command.min_busbw,
                               pairwise=bool(command.pairwise), slow_fraction=command.slow_fraction,
                               pairing=command.pairwise or "adaptive"),
        min_bytes=command.minbytes, max_bytes=command.maxbytes, factor=command.stepfactor,
        timeout_s=timeout, verbose=command.verbose,
        launch=LaunchOptions(deadline_s=timeout,
                             rendezvous_timeout_s=max(int(command.rendezvous_timeout), 1),
                             collective_timeout_s=max(int(command.collective_timeout), 1)))


def bandwidth_command(args: argparse.Namespace) -> int:
    return run_bandwidth_command(BandwidthCommandOptions.from_args(args))


def run_bandwidth_command(command: BandwidthCommandOptions) -> int:
    from ..engine.bandwidth import run_bandwidth
    from ..report.progress import Progress
    from ..report.bandwidth import (PlotUnavailable, plot_report, render_bandwidth,
                                    require_matplotlib)

    plot = command.output.plot
    if not command.dry_run and not check_output_paths(command.output):
        return EXIT_USAGE
    if plot:
        try:
            require_matplotlib()
        except PlotUnavailable as exc:
            print(error_text(exc), file=sys.stderr)
            return EXIT_USAGE
    try:
        spec: Optional[ClusterSpec] = load_spec(command.inventory)
    except ConfigError:
        spec = None  # run_reported reports it, with the file, line and key
    try:
        options = bandwidth_options(command, spec)
    except ConfigError as exc:
        print(error_text(exc), file=sys.stderr)
        return EXIT_USAGE
    if command.dry_run:
        if spec is None:  # run_reported reports the error
            return run_reported(command.inventory, command.output,
                                lambda s: run_bandwidth(s, options))
        sys.stdout.write(dry_run_text(spec, options))
        return 0
    reports: list[Report] = []
    progress = Progress(None if command.output.quiet else sys.stderr)

    def execute(run_spec: ClusterSpec) -> Report:
        report = run_bandwidth(run_spec, options, progress)
        reports.append(report)
        return report

    def render(report: Report, style: TableStyle) -> str:
        return render_bandwidth(report, tablefmt=style.tablefmt)

    code = run_reported(command.inventory, command.output, execute, render)
    if plot and reports:
        try:
            wrote = plot_report(reports[0], plot)
        except (OSError, ValueError) as exc:
            print(f"ddpcheck: cannot write plot {plot}: {exc}", file=sys.stderr)
        else:
            print(f"ddpcheck: {'wrote plot ' + plot if wrote else 'no data to plot'}",
                  file=sys.stderr)
    return code
