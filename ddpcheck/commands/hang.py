"""``ddpcheck hang``: its options, and the hang-scan workload over the SSH launcher.

Runs on the launcher. Building the parser imports neither the engine nor the transport.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..core.argtypes import positive
from .common import (InventoryOptions, OutputOptions, TableStyle, add_common_options,
                     add_output_options, run_reported)

if TYPE_CHECKING:
    from ..engine.hang import HangOptions


def register(sub) -> None:
    hang = sub.add_parser("hang", help="name the rank(s) holding up a running torchrun job",
                          description="Scan the torchrun workers running on HOSTS (or this "
                                      "machine): sample each rank twice, take its Python stack "
                                      "(py-spy), read ddpcheck.Monitor heartbeats and Flight "
                                      "Recorder dumps, and name the ranks that are stopped, "
                                      "gone, blocked or behind. Exit 1 when one is named, 0 "
                                      "when the job progresses.")
    add_common_options(hang, 60.0)
    hang._option_string_actions["-v"].help = (
        "say more: each host's command on stderr, NCCL RAS's own text (or why it could not "
        "be asked) in the report")
    hang.add_argument("--window", type=positive, default=3.0, metavar="SECONDS",
                      help="seconds between the two samples of every rank (default 3)")
    hang.add_argument("--heartbeat-dir", action="append", default=[], metavar="DIR",
                      help="where the job's ddpcheck.Monitor writes heartbeats, when not the "
                           "default (may repeat)")
    hang.add_argument("--job", default="", metavar="TEXT",
                      help="only jobs whose key (RUN_ID@MASTER_ADDR:MASTER_PORT) contains TEXT")
    hang.add_argument("--no-stacks", action="store_true", help="do not run py-spy")
    hang.add_argument("--no-ras", action="store_true",
                      help="do not ask NCCL RAS (NCCL >= 2.24) on the first host")
    add_output_options(hang)  # -q, --full, --csv, --junit, --format, --color
    hang.set_defaults(run=hang_command)


@dataclass(frozen=True)
class HangCommandOptions:
    """Everything ``ddpcheck hang`` was asked: HOSTS (no other inventory), what to write, and
    the scan's options."""
    inventory: InventoryOptions
    output: OutputOptions
    scan: "HangOptions"

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "HangCommandOptions":
        from ..engine.hang import HangOptions

        scan = HangOptions(timeout_s=args.timeout, window_s=args.window,
                           heartbeat_dirs=tuple(args.heartbeat_dir), stacks=not args.no_stacks,
                           job_filter=args.job, verbose=args.verbose, ras=not args.no_ras)
        return cls(inventory=InventoryOptions(hosts=args.hosts),
                   output=OutputOptions.from_args(args), scan=scan)


def hang_command(args: argparse.Namespace) -> int:
    return run_hang_command(HangCommandOptions.from_args(args))


def run_hang_command(command: HangCommandOptions) -> int:
    import sys

    from ..engine.hang import run_hang
    from ..report.progress import Progress
    from ..report.hang import render_hang
    from ..report.table import DEFAULT_TABLE_FORMAT

    options = command.scan
    progress = Progress(None if command.output.quiet else sys.stderr)

    def render(report, style: TableStyle) -> str:
        return render_hang(report, verbose=options.verbose, full=style.full,
                           tablefmt=style.tablefmt or DEFAULT_TABLE_FORMAT)

    return run_reported(command.inventory, command.output,
                        lambda spec: run_hang(spec, options, progress), render)
