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
    pre.add_argument("--seed", type=int, metavar="N",
                     help="seed Python, NumPy and torch with N on every rank, then check that "
                          "every rank's RNG state is the same")
    pre.add_argument("--setup", metavar="MODULE:FUNCTION",
                     help="call your own set-up (e.g. seed_everything) on every rank first, so "
                          "your code is what gets checked; FILE.py:FUNCTION works too; the "
                          "function gets --seed when it takes an argument")
    pre.add_argument("--ddp-steps", type=_count, default=3, metavar="K",
                     help="steps of the tiny DDP run that checks parameters stay equal "
                          "(default 3)")
    pre.add_argument("--skip", type=_skip_list, default=frozenset(), metavar="CHECK[,CHECK]",
                     help="leave out: consistency (fingerprints and the tiny DDP run), "
                          "rendezvous (the port check before torchrun)")
    pre.add_argument("--iterations", type=_iterations, default=20, metavar="N",
                     help="repeats of barrier and small all_reduce for the latency medians "
                          "(default 20)")
    pre.add_argument("--keep", action="store_true",
                     help="keep each host's run directory under its workdir (torchrun's "
                          "files and launch.log); by default it is removed after the run")
    pre.add_argument("--dry-run", action="store_true",
                     help="print each host's exact commands and run nothing (the values of "
                          "variables named like *_TOKEN, *_KEY or *PASSWORD shown as ***)")
    pre.set_defaults(run=preflight_command)


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _iterations(text: str) -> int:
    value = _count(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


SKIPPABLE = ("consistency", "rendezvous")


def _skip_list(text: str) -> frozenset[str]:
    names = frozenset(n.strip() for n in text.split(",") if n.strip())
    unknown = sorted(names - set(SKIPPABLE))
    if unknown:
        raise argparse.ArgumentTypeError(f"cannot skip {', '.join(unknown)} "
                                         f"(choose from {', '.join(SKIPPABLE)})")
    return names


def load_spec(hosts: Optional[str]) -> ClusterSpec:
    from .config import load_hosts_file, local_cluster_spec

    if hosts is None:
        return local_cluster_spec(sys.executable)
    return load_hosts_file(hosts)


def dry_run_text(spec: ClusterSpec, options) -> str:
    """Each host's exact commands: stage 0, then torchrun (slots from hosts.yaml, else 1 per
    GPU: shown as planned for a host without GPUs, since stage 0 has not run)."""
    from .plan import (plan_launch, plan_rendezvous_check, redact_secrets, resolve_backend,
                       resolve_slots, stage0_command)
    from .preflight import REACH_WINDOW_S
    from .transport import ssh_target

    slots = {h.name: resolve_slots(h, 0, spec.local) for h in spec.hosts}
    backend = resolve_backend(spec.backend, {h.name: 0 for h in spec.hosts})
    lines = [f"# ddpcheck preflight --dry-run: {len(spec.hosts)} host(s) from {spec.source}",
             f"# backend {backend.value} (auto picks nccl when every host has GPUs); hosts "
             f"without slots: one rank per GPU, shown here as without GPUs"]
    check = (plan_rendezvous_check(spec, REACH_WINDOW_S)
             if options.rendezvous_check and not spec.local else None)
    for host, launch in zip(spec.hosts, plan_launch(spec, slots, backend, options.launch)):
        where = "local" if spec.local else f"ssh {ssh_target(host)}"
        lines += [f"# {host.name} (node rank {launch.node_rank}, {launch.slots} rank(s)) "
                  f"via {where}", redact_secrets(stage0_command(host, 58))]
        if check is not None:
            if host.name == check.master:
                lines.append(redact_secrets(check.listen_command) + "  # at the same time as:")
            lines.append(redact_secrets(check.reach_commands[host.name]))
        lines.append(redact_secrets(launch.command))
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
        rendezvous_check="rendezvous" not in args.skip,
        launch=LaunchOptions(deadline_s=args.timeout,
                             rendezvous_timeout_s=max(int(args.rendezvous_timeout), 1),
                             collective_timeout_s=max(int(args.collective_timeout), 1),
                             iterations=args.iterations, keep=args.keep,
                             seed=args.seed, setup=args.setup, ddp_steps=args.ddp_steps,
                             consistency="consistency" not in args.skip))
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


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_interrupt)  # killed by a scheduler: clean up too
    return args.run(args)


def entry_point() -> None:
    sys.exit(main())
