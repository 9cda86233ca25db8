"""Command line: ``ddpcheck <command>`` (see INTERFACE.md for the contract).

Each subcommand registers its parser with ``set_defaults(run=...)``; ``run_reported`` is the
shared frame: arguments -> ClusterSpec -> run -> table on stdout, progress on stderr, the JSON
report (written even on failure or Ctrl-C) and the exit code. Errors the user can fix are one
line on stderr with exit 2; never a traceback.

A command opts into the inventories (``--hostfile``, ``--slurm``, ``-w``, ``--config``,
``--ssh-config``) with ``add_inventory_options`` and into the machine outputs (``--format``,
``--csv``, ``--junit``, ``-q``, ``--color``) with ``add_output_options``; ``run_reported`` and
``load_spec_from_args`` honour whichever of them the parser has.
"""

from __future__ import annotations

import argparse
import getpass
import inspect
import os
import signal
import socket
import sys
import time
from typing import Any, Callable, Optional, Sequence, TextIO

from . import __version__
from .remote.argtypes import at_least, positive
from .model.errors import ConfigError, DdpcheckError
from .model.records import Verdict
from .report.table import DEFAULT_TABLE_FORMAT, Report, footer_line, render_table, to_json
from .model.spec import ClusterSpec

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
    parser.add_argument("--timeout", type=positive, default=timeout_s, metavar="SECONDS",
                        help=f"hard deadline for the whole command (default {timeout_s:g})")
    parser.add_argument("-v", "--verbose", action="store_true")


def add_inventory_options(parser: argparse.ArgumentParser,
                          hostlist_flags: Sequence[str] = ("-w",)) -> None:
    """Inventories users already have, instead of HOSTS (see ``load_spec_from_args``).
    ``hostlist_flags``: where ``-w`` means something else (bandwidth: warm-up, as nccl-tests)."""
    group = parser.add_argument_group(
        "inventories (instead of HOSTS; one of them)",
        "Hosts from a file or list you already have; user, python, env, ssh, rendezvous and "
        "backend then come from --config (a hosts.yaml without hosts).")
    group.add_argument("--hostfile", metavar="FILE",
                       help="DeepSpeed/OpenMPI ('host slots=N') or MPICH ('host:N') hostfile")
    group.add_argument("--slurm", action="store_true",
                       help="the SLURM allocation this runs in (SLURM_JOB_NODELIST, tasks or "
                            "GPUs per node)")
    group.add_argument(*hostlist_flags, dest="hostlist", action="append", metavar="HOSTS",
                       help="pdsh-style host list, e.g. 'node[01-04],gpu7' (repeatable)")
    group.add_argument("--config", metavar="FILE",
                       help="hosts.yaml with defaults, ssh, rendezvous, backend for the "
                            "inventory (no hosts)")
    group.add_argument("--ssh-config", metavar="FILE",
                       help="ssh_config to read (default ~/.ssh/config; 'none': none); "
                            "overrides ssh.config")


def add_output_options(parser: argparse.ArgumentParser) -> None:
    """Outputs for people and machines beside --json."""
    from tabulate import tabulate_formats

    group = parser.add_argument_group("output")
    group.add_argument("--format", default=DEFAULT_TABLE_FORMAT, metavar="FMT",
                       choices=tabulate_formats,
                       help=f"table format, any of tabulate's (default {DEFAULT_TABLE_FORMAT}; "
                            f"e.g. github, psql, tsv, html)")
    group.add_argument("--csv", metavar="FILE", help="write a CSV row per rank (or host) here")
    group.add_argument("--junit", metavar="FILE",
                       help="write JUnit XML here: a testsuite per check, a testcase per host "
                            "or rank")
    group.add_argument("-q", "--quiet", action="store_true",
                       help="print only the verdict line (no progress, no table)")
    group.add_argument("--full", action="store_true",
                       help="a row per rank in the table (past 32 ranks it is grouped: a line "
                            "per outcome, the hosts that differ on their own)")
    group.add_argument("--color", choices=("auto", "always", "never"), default="auto",
                       help="colours: auto = only when stdout is a terminal and NO_COLOR is "
                            "unset")


def use_color(args: argparse.Namespace, stream: TextIO) -> bool:
    choice = getattr(args, "color", "never")
    if choice == "always":
        return True
    if choice == "never":
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty()) and not os.environ.get("NO_COLOR") \
        and os.environ.get("TERM") != "dumb"


def register_preflight(sub) -> None:
    pre = sub.add_parser("preflight", help="full check before a multi-node job",
                         description="Check every host of HOSTS (or this machine) and run a "
                                     "probe on every rank with torchrun.")
    add_common_options(pre, 180.0)
    add_inventory_options(pre)
    add_output_options(pre)
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
    pre.add_argument("--skip", type=_skip_list, default=frozenset(), metavar="CHECK[,CHECK]",
                     help="leave out: consistency (fingerprints and the tiny DDP run), "
                          "rendezvous (the port check before torchrun)")
    pre.add_argument("--iterations", type=at_least(1), default=20, metavar="N",
                     help="repeats of barrier and small all_reduce for the latency medians "
                          "(default 20)")
    pre.add_argument("--keep", action="store_true",
                     help="keep each host's run directory under its workdir (torchrun's "
                          "files and launch.log); by default it is removed after the run")
    pre.add_argument("--dry-run", action="store_true",
                     help="print each host's exact commands and run nothing (the values of "
                          "variables named like *_TOKEN, *_KEY or *PASSWORD shown as ***)")
    pre.set_defaults(run=preflight_command)


SKIPPABLE = ("consistency", "rendezvous")


def _skip_list(text: str) -> frozenset[str]:
    names = frozenset(n.strip() for n in text.split(",") if n.strip())
    unknown = sorted(names - set(SKIPPABLE))
    if unknown:
        raise argparse.ArgumentTypeError(f"cannot skip {', '.join(unknown)} "
                                         f"(choose from {', '.join(SKIPPABLE)})")
    return names


def load_spec(hosts: Optional[str]) -> ClusterSpec:
    """HOSTS (or this machine), with ~/.ssh/config applied."""
    return load_spec_from_args(argparse.Namespace(hosts=hosts))


def load_spec_from_args(args: argparse.Namespace,
                        env: Optional[dict[str, str]] = None) -> ClusterSpec:
    """The ClusterSpec from whichever inventory the arguments name: HOSTS, --hostfile,
    --slurm or -w (one of them; --launcher slurm defaults to --slurm; none: this machine),
    then ssh_config applied (hosts.yaml values > ssh_config > defaults). ConfigError on any
    problem, naming the file, line or option."""
    from .config.hostsyaml import ConfigDefaults, load_config_defaults, load_hosts_file, local_cluster_spec
    from .config.inventory import build_cluster, load_hostfile, parse_host_expression, slurm_entries
    from .config.sshconfig import apply_ssh_config, read_ssh_config

    env = dict(os.environ) if env is None else env
    hosts = getattr(args, "hosts", None)
    hostfile = getattr(args, "hostfile", None)
    hostlist = getattr(args, "hostlist", None)
    slurm = bool(getattr(args, "slurm", False))
    config = getattr(args, "config", None)
    launcher = getattr(args, "launcher", "ssh")
    given = [name for name, value in (("HOSTS", hosts), ("--hostfile", hostfile),
                                      ("--slurm", slurm), ("-w", hostlist)) if value]
    if len(given) > 1:
        raise ConfigError(f"give one inventory, not {' and '.join(given)}",
                          source="command line")
    if config and hosts:
        raise ConfigError("--config gives the defaults for --hostfile, --slurm or -w; HOSTS "
                          "is a complete hosts.yaml already", source="command line")
    if launcher == "slurm" and not given:
        slurm, given = True, ["--slurm"]
    if not given:
        if config:
            raise ConfigError("--config needs an inventory: --hostfile, --slurm or -w",
                              source="command line")
        # like torchrun --standalone: a free port, not 29500, which a job here may hold
        return local_cluster_spec(sys.executable, free_local_port())
    if hosts:
        spec = load_hosts_file(hosts)
    else:
        defaults = load_config_defaults(config) if config else ConfigDefaults(host_fields={})
        if hostfile:
            spec = load_hostfile(hostfile, defaults)
        elif slurm:
            entries, source = slurm_entries(env)
            spec = build_cluster(entries, defaults, source)
        else:
            source = "-w " + ",".join(hostlist)
            spec = build_cluster(parse_host_expression(hostlist), defaults, source)
    if launcher == "slurm":
        return spec  # srun starts the ranks: no ssh, so no ssh_config
    path = getattr(args, "ssh_config", None) or spec.ssh.config_file
    lookup, read = read_ssh_config(path)
    local_user = env.get("USER") or getpass.getuser()
    return apply_ssh_config(spec, lookup, read, local_user)


def free_local_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def dry_run_text(spec: ClusterSpec, options) -> str:
    """Each host's exact commands: stage 0, then torchrun (slots from hosts.yaml, else 1 per
    GPU: shown as planned for a host without GPUs, since stage 0 has not run)."""
    from .plan.commands import (plan_launch, plan_rendezvous_check, redact_secrets, resolve_backend,
                       resolve_slots, stage0_command)
    from .engine.preflight import REACH_WINDOW_S
    from .transport.ssh import ssh_target

    slots = {h.name: resolve_slots(h, 0, spec.local) for h in spec.hosts}
    backend = resolve_backend(spec.backend, {h.name: 0 for h in spec.hosts})
    lines = [f"# ddpcheck preflight --dry-run: {len(spec.hosts)} host(s) from {spec.source}",
             f"# backend {backend.value} (auto picks nccl when every host has GPUs); hosts "
             f"without slots: one rank per GPU, shown here as without GPUs"]
    check = (plan_rendezvous_check(spec, REACH_WINDOW_S)
             if options.rendezvous_check and not spec.local else None)
    for host, launch in zip(spec.hosts, plan_launch(spec, slots, backend, options.launch)):
        where = "local" if spec.local else f"ssh {ssh_target(host)}"
        if host.jumps:
            where += " through " + " > ".join(ssh_target(jump) for jump in host.jumps)
        lines += [f"# {host.name} (node rank {launch.node_rank}, {launch.slots} rank(s)) "
                  f"via {where}",
                  redact_secrets(stage0_command(host, 58, master=spec.master_host.address))]
        if check is not None:
            if host.name == check.master:
                lines.append(redact_secrets(check.listen_command) + "  # at the same time as:")
            lines.append(redact_secrets(check.reach_commands[host.name]))
        lines.append(redact_secrets(launch.command))
    return "\n".join(lines) + "\n"


def write_report(path: str, report: Report,
                 render: Callable[[Report], str] = to_json) -> None:
    """Atomically: a reader never sees half a report."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(render(report))
    os.replace(tmp, path)


def report_files(args: argparse.Namespace) -> list[tuple[str, Callable[[Report], str]]]:
    """(path, renderer) of every report file the arguments ask for."""
    from .report.machine import render_csv, render_junit

    files = []
    for option, render in (("json", to_json), ("csv", render_csv), ("junit", render_junit)):
        path = getattr(args, option, None)
        if path:
            files.append((path, render))
    return files


def interrupted_report(command: str, spec: Optional[ClusterSpec], started: float) -> Report:
    from .model.records import HostRecord

    hosts = tuple(HostRecord(h.name, h.address) for h in spec.hosts) if spec else ()
    return Report(command, Verdict.INTERRUPTED, EXIT_INTERRUPTED,
                  time.monotonic() - started, None, None, None, hosts, (), (),
                  source=spec.source if spec else "")


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def run_reported(args: argparse.Namespace, execute: Callable[[ClusterSpec], Report],
                 render: Callable[[Report], str] = render_table,
                 check_spec: Optional[Callable[[ClusterSpec], None]] = None) -> int:
    """The shared frame of a command: load the spec (exit 2 on a config error), run, and always
    write the report files (--json, --csv, --junit), partial or ``interrupted`` when the run
    was cut short. stdout gets ``render(report)`` (with ``tablefmt``/``color`` when ``render``
    takes them), or only the verdict line with -q. ``check_spec`` may reject the spec with a
    ConfigError before anything runs."""
    started = time.monotonic()
    try:
        spec = load_spec_from_args(args)
        if check_spec is not None:
            check_spec(spec)
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
        for path, file_render in report_files(args):
            try:
                write_report(path, report or interrupted_report(args.command, spec, started),
                             file_render)
            except OSError as exc:
                print(f"ddpcheck: cannot write {path}: {exc}", file=sys.stderr)
    color = use_color(args, sys.stdout)
    if getattr(args, "quiet", False):
        sys.stdout.write(footer_line(report, color) + "\n")
    else:
        sys.stdout.write(render(report, **_style(render, args, color)))
    sys.stdout.flush()
    return report.exit_code


def _style(render: Callable[..., str], args: argparse.Namespace, color: bool) -> dict[str, Any]:
    """The table format and colour, for a renderer that takes them."""
    try:
        parameters = inspect.signature(render).parameters
    except (TypeError, ValueError):
        return {}
    style: dict[str, Any] = {}
    if "tablefmt" in parameters and getattr(args, "format", None):
        style["tablefmt"] = args.format
    if "color" in parameters:
        style["color"] = color
    if "full" in parameters:
        style["full"] = bool(getattr(args, "full", False))
    return style


def preflight_command(args: argparse.Namespace) -> int:
    from .plan.commands import LaunchOptions
    from .engine.preflight import PreflightOptions, Progress, run_preflight

    options = PreflightOptions(
        timeout_s=args.timeout, verbose=args.verbose,
        rendezvous_check="rendezvous" not in args.skip,
        launch=LaunchOptions(deadline_s=args.timeout,
                             rendezvous_timeout_s=max(int(args.rendezvous_timeout), 1),
                             collective_timeout_s=max(int(args.collective_timeout), 1),
                             iterations=args.iterations, keep=args.keep,
                             seed=args.seed, setup=args.setup, ddp_steps=args.ddp_steps,
                             consistency="consistency" not in args.skip))
    slurm = args.launcher == "slurm"
    if args.dry_run:
        try:
            spec = load_spec_from_args(args)
            if slurm:
                check_slurm_spec(spec, need_allocation=False)
        except ConfigError as exc:
            print(f"ddpcheck: {exc}", file=sys.stderr)
            return EXIT_USAGE
        if slurm:
            from .engine.preflight_slurm import srun_dry_run_text

            sys.stdout.write(srun_dry_run_text(spec, options))
        else:
            sys.stdout.write(dry_run_text(spec, options))
        return 0
    progress = Progress(None if args.quiet else sys.stderr)

    def execute(spec: ClusterSpec) -> Report:
        if slurm:
            from .engine.preflight_slurm import SlurmPreflightRun

            return SlurmPreflightRun(spec, options, progress).run()
        return run_preflight(spec, options, progress)

    return run_reported(args, execute, check_spec=check_slurm_spec if slurm else None)


def check_slurm_spec(spec: ClusterSpec, need_allocation: bool = True) -> None:
    """--launcher slurm: inside an allocation, srun at hand, one command fits every node."""
    import shutil

    from .plan.slurm import uniform_host_problem

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


def register_node(sub) -> None:
    from .commands.node import register

    register(sub)


def register_hang(sub) -> None:
    hang = sub.add_parser("hang", help="name the rank(s) holding up a running torchrun job",
                          description="Scan the torchrun workers running on HOSTS (or this "
                                      "machine): sample each rank twice, take its Python stack "
                                      "(py-spy), read ddpcheck.Monitor heartbeats and Flight "
                                      "Recorder dumps, and name the ranks that are stopped, "
                                      "gone, blocked or behind. Exit 1 when one is named, 0 "
                                      "when the job progresses.")
    add_common_options(hang, 60.0)
    hang.add_argument("--window", type=positive, default=3.0, metavar="SECONDS",
                      help="seconds between the two samples of every rank (default 3)")
    hang.add_argument("--heartbeat-dir", action="append", default=[], metavar="DIR",
                      help="where the job's ddpcheck.Monitor writes heartbeats, when not the "
                           "default (may repeat)")
    hang.add_argument("--job", default="", metavar="TEXT",
                      help="only jobs whose key (RUN_ID@MASTER_ADDR:MASTER_PORT) contains TEXT")
    hang.add_argument("--no-stacks", action="store_true", help="do not run py-spy")
    hang.set_defaults(run=hang_command)


def hang_command(args: argparse.Namespace) -> int:
    from .engine.hang import HangOptions, render_hang, run_hang

    options = HangOptions(timeout_s=args.timeout, window_s=args.window,
                          heartbeat_dirs=tuple(args.heartbeat_dir), stacks=not args.no_stacks,
                          job_filter=args.job, verbose=args.verbose)
    return run_reported(args, lambda spec: run_hang(spec, options), render_hang)


# Each entry adds one subcommand to the parser; its parser sets ``run``.
COMMANDS: list[Callable[[Any], None]] = [register_preflight, register_node, register_hang]


def _register_bandwidth(sub) -> None:
    from .engine.bandwidth import register_bandwidth

    register_bandwidth(sub)


COMMANDS.append(_register_bandwidth)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_interrupt)  # killed by a scheduler: clean up too
    return args.run(args)


def entry_point() -> None:
    sys.exit(main())
