"""Command line: ``ddpcheck <command>`` (see docs/interface.md for the contract).

Only dispatches: each command is one module in ``ddpcheck.commands`` (its options, and which
workload and launcher run it); its parser sets ``run``. Building the parser imports neither the
engine nor the transport (``ddpcheck node`` runs as a SLURM prolog: it loads only what it uses).
"""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Optional, Sequence

from . import __version__
from .commands import bandwidth, hang, node, preflight
from .model.records import EXIT_USAGE
from .model.errors import Terminated

COMMANDS = (preflight, node, hang, bandwidth)  # each module's register(sub) adds its parser


class _UsageParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse exits 2 already; keep its message short
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"ddpcheck: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _UsageParser(prog="ddpcheck", description="Health checks for multi-node PyTorch "
                                                       "(torchrun) clusters.")
    parser.add_argument("--version", action="version", version=f"ddpcheck {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_UsageParser)
    for command in COMMANDS:
        command.register(sub)
    return parser


def _raise_interrupt(signum, frame) -> None:
    raise Terminated


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_interrupt)  # killed by a scheduler: clean up too
    return args.run(args)


def entry_point() -> None:
    sys.exit(main())
