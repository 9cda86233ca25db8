"""Command line: ``ddpcheck <command>`` (see INTERFACE.md for the contract).

Each subcommand registers its parser with ``set_defaults(run=...)``; ``run_reported`` is the
shared frame: arguments -> ClusterSpec -> run -> table on stdout, progress on stderr, the JSON
report (written even on failure or Ctrl-C) and the exit code. Errors the user can fix are one
line on stderr with exit 2; never a traceback.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from typing import Any, Callable, Optional, Sequence

from . import __version__
from .errors import ConfigError, DdpcheckError
from .records import Verdict
from .report import Report, render_table, to_json
from .spec import ClusterSpec

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class _UsageParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse exits 2 already; keep its message short
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"ddpcheck: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _UsageParser(prog="ddpcheck", description="Health checks for multi-node PyTorch "
                                                       "(torchrun) clusters.")
    parser.add_argument("--version", action="version", version=f"ddpcheck {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_UsageParser)
    for register in COMMANDS:
        register(sub)
    return parser


def add_common_options(parser: argparse.ArgumentParser, timeout_s: float) -> None:
    """The options every command shares: HOSTS, --json, --timeout, -v."""
    parser.add_argument("hosts", nargs="?", metavar="HOSTS",
                        help="hosts.yaml; without it, this machine only (no SSH)")
    parser.add_argument("--json", metavar="FILE", help="write the JSON report here")
    parser.add_argument("--timeout", type=_positive, default=timeout_s, metavar="SECONDS",
                        help=f"hard deadline for the whole command (default {timeout_s:g})")
    parser.add_argument("-v", "--verbose", action="store_true")


def register_preflight(sub) -> None:
    pre = sub.add_parser("preflight", help="full check before a multi-node job",
                         description="Check every host of HOSTS (or this machine) and run a "
                                     "probe on every rank with torchrun.")
    add_common_options(pre, 180.0)
    pre.add_argument("--collective-timeout", type=_positive, default=30.0, metavar="SECONDS",
                     help="process group timeout for the ranks (default 30; torch's is 10-30 min)")
    pre.add_argument("--rendezvous-timeout", type=_positive, default=30.0, metavar="SECONDS",
                     help="torchrun rendezvous timeout (default 30; torch's is 600)")
    pre.add_argument("--dry-run", action="store_true",
                     help="print each host's exact commands and run nothing")
    pre.set_defaults(run=preflight_command)


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def load_spec(hosts: Optional[str]) -> ClusterSpec:
    from .config import load_hosts_file, local_cluster_spec

    if hosts is None:
        return local_cluster_spec(sys.executable)
    return load_hosts_file(hosts)


def dry_run_text(spec: ClusterSpec, options) -> str:
    """Each host's exact commands: stage 0, then torchrun (slots from hosts.yaml, else 1 per
    GPU: shown as planned for a host without GPUs, since stage 0 has not run)."""
    from .plan import plan_launch, resolve_backend, resolve_slots, stage0_command
    from .transport import ssh_target

    slots = {h.name: resolve_slots(h, 0, spec.local) for h in spec.hosts}
    backend = resolve_backend(spec.backend, {h.name: 0 for h in spec.hosts})
    lines = [f"# ddpcheck preflight --dry-run: {len(spec.hosts)} host(s) from {spec.source}",
             f"# backend {backend.value} (auto picks nccl when every host has GPUs); hosts "
             f"without slots: one rank per GPU, shown here as without GPUs"]
    for host, launch in zip(spec.hosts, plan_launch(spec, slots, backend, options.launch)):
        where = "local" if spec.local else f"ssh {ssh_target(host)}"
        lines += [f"# {host.name} (node rank {launch.node_rank}, {launch.slots} rank(s)) "
                  f"via {where}",
                  stage0_command(host, 58), launch.command]
    return "\n".join(lines) + "\n"


def write_report(path: str, report: Report) -> None:
    """Atomically: a reader never sees half a report."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(to_json(report))
    os.replace(tmp, path)


def interrupted_report(command: str, spec: Optional[ClusterSpec], started: float) -> Report:
    from .records import HostRecord

    hosts = tuple(HostRecord(h.name, h.address) for h in spec.hosts) if spec else ()
    return Report(command, Verdict.INTERRUPTED, EXIT_INTERRUPTED,
                  time.monotonic() - started, None, None, None, hosts, (), (),
                  source=spec.source if spec else "")


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def run_reported(args: argparse.Namespace, execute: Callable[[ClusterSpec], Report],
                 render: Callable[[Report], str] = render_table) -> int:
    """The shared frame of a command: load the spec (exit 2 on a config error), run, and always
    write the JSON report, partial or ``interrupted`` when the run was cut short."""
    started = time.monotonic()
    try:
        spec = load_spec(args.hosts)
    except ConfigError as exc:
        print(f"ddpcheck: {exc}", file=sys.stderr)
        return EXIT_USAGE
    report: Optional[Report] = None
    try:
        report = execute(spec)
    except KeyboardInterrupt:
        report = interrupted_report(args.command, spec, started)
    except DdpcheckError as exc:
        print(f"ddpcheck: {exc}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        if args.json:
            try:
                write_report(args.json, report or interrupted_report(args.command, spec, started))
            except OSError as exc:
                print(f"ddpcheck: cannot write {args.json}: {exc}", file=sys.stderr)
    sys.stdout.write(render(report))
    sys.stdout.flush()
    return report.exit_code


def preflight_command(args: argparse.Namespace) -> int:
    from .plan import LaunchOptions
    from .preflight import PreflightOptions, run_preflight

    options = PreflightOptions(
        timeout_s=args.timeout, verbose=args.verbose,
        launch=LaunchOptions(deadline_s=args.timeout,
                             rendezvous_timeout_s=max(int(args.rendezvous_timeout), 1),
                             collective_timeout_s=max(int(args.collective_timeout), 1)))
    if args.dry_run:
        try:
            spec = load_spec(args.hosts)
        except ConfigError as exc:
            print(f"ddpcheck: {exc}", file=sys.stderr)
            return EXIT_USAGE
        sys.stdout.write(dry_run_text(spec, options))
        return 0
    return run_reported(args, lambda spec: run_preflight(spec, options))


# Each entry adds one subcommand to the parser; its parser sets ``run``.
COMMANDS: list[Callable[[Any], None]] = [register_preflight]


def _register_bandwidth(sub) -> None:
    from .bandwidth_run import register_bandwidth

    register_bandwidth(sub)


COMMANDS.append(_register_bandwidth)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_interrupt)  # killed by a scheduler: clean up too
    return args.run(args)


def entry_point() -> None:
    sys.exit(main())
