"""The frame every command shares: options, the ClusterSpec from whichever inventory the options
name, and ``run_reported`` (run -> table on stdout, progress on stderr, the report files, the
exit code). Runs on the launcher.

A command opts into the inventories (``--hostfile``, ``--slurm``, ``-w``, ``--config``,
``--ssh-config``) with ``add_inventory_options`` and into the machine outputs (``--format``,
``--csv``, ``--junit``, ``-q``, ``--color``) with ``add_output_options``, then turns what it
parsed into ``InventoryOptions`` and ``OutputOptions`` (their ``from_args``, or built field by
field where the command has fewer options): nothing below the command reads the Namespace.
Errors the user can fix are one line on stderr with exit 2; never a traceback. Importing this
module loads neither the engine nor the transport.
"""

from __future__ import annotations

import argparse
import getpass
import os
import socket
import sys
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, TextIO

from ..model.records import EXIT_INTERRUPTED, EXIT_USAGE
from ..model.errors import ConfigError, DdpcheckError
from ..model.records import Verdict
from ..model.spec import ClusterSpec
from ..core.argtypes import positive
from ..report.table import DEFAULT_TABLE_FORMAT, footer_line, render_table, to_json
from ..model.report import Report

__all__ = ["EXIT_INTERRUPTED", "EXIT_USAGE", "InventoryOptions", "OutputOptions",
           "TableStyle", "add_common_options", "add_inventory_options", "add_output_options",
           "error_text", "load_spec", "run_reported", "usage_error"]


@dataclass(frozen=True)
class InventoryOptions:
    """Where the hosts come from: one of HOSTS, --hostfile, --slurm, -w (none: this machine),
    with --config's defaults and --ssh-config; ``launcher`` slurm needs no ssh_config."""
    hosts: Optional[str] = None
    hostfile: Optional[str] = None
    slurm: bool = False
    hostlist: Optional[Sequence[str]] = None
    config: Optional[str] = None
    ssh_config: Optional[str] = None
    launcher: str = "ssh"

    @classmethod
    def from_args(cls, args: argparse.Namespace, launcher: str = "ssh") -> "InventoryOptions":
        """For a parser with ``add_common_options`` and ``add_inventory_options``."""
        return cls(hosts=args.hosts, hostfile=args.hostfile, slurm=args.slurm,
                   hostlist=tuple(args.hostlist) if args.hostlist else None,
                   config=args.config, ssh_config=args.ssh_config, launcher=launcher)


@dataclass(frozen=True)
class TableStyle:
    """How stdout's table is laid out: tabulate's format (None: the renderer's own), colours,
    a row per rank at any size."""
    tablefmt: Optional[str] = DEFAULT_TABLE_FORMAT
    color: bool = False
    full: bool = False


@dataclass(frozen=True)
class OutputOptions:
    """The report files (each None: not asked for), -q, and stdout's table style. ``color`` is
    the user's choice (auto, always, never), decided against the stream by ``use_color``."""
    command: str
    json: Optional[str] = None
    csv: Optional[str] = None
    junit: Optional[str] = None
    prom: Optional[str] = None
    plot: Optional[str] = None  # written by the command itself; checked with the others
    quiet: bool = False
    full: bool = False
    tablefmt: Optional[str] = DEFAULT_TABLE_FORMAT
    color: str = "never"

    @classmethod
    def from_args(cls, args: argparse.Namespace, prom: Optional[str] = None,
                  plot: Optional[str] = None) -> "OutputOptions":
        """For a parser with ``add_common_options`` and ``add_output_options``."""
        return cls(command=args.command, json=args.json, csv=args.csv, junit=args.junit,
                   prom=prom, plot=plot, quiet=args.quiet, full=args.full,
                   tablefmt=args.format, color=args.color)

    def style(self, stream: TextIO) -> TableStyle:
        return TableStyle(self.tablefmt, use_color(self.color, stream), self.full)


def add_common_options(parser: argparse.ArgumentParser, timeout_s: float) -> None:
    """The options every command shares: HOSTS, --json, --timeout, -v."""
    parser.add_argument("hosts", nargs="?", metavar="HOSTS",
                        help="hosts.yaml; without it, this machine only (no SSH)")
    parser.add_argument("--json", metavar="FILE", help="write the JSON report here")
    parser.add_argument("--timeout", type=positive, default=timeout_s, metavar="SECONDS",
                        help=f"hard deadline for the whole command (default {timeout_s:g})")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="say more on stderr: a progress line per host at any size, each "
                             "host's command, every pair's result")


def add_inventory_options(parser: argparse.ArgumentParser,
                          hostlist_flags: Sequence[str] = ("-w",)) -> None:
    """Inventories users already have, instead of HOSTS (see ``load_spec``).
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


def use_color(choice: str, stream: TextIO) -> bool:
    """--color against the stream: auto is a terminal with NO_COLOR unset and TERM not dumb."""
    if choice == "always":
        return True
    if choice == "never":
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty()) and not os.environ.get("NO_COLOR") \
        and os.environ.get("TERM") != "dumb"


def load_spec(inventory: InventoryOptions,
              env: Optional[dict[str, str]] = None) -> ClusterSpec:
    """The ClusterSpec from whichever inventory the options name: HOSTS, --hostfile,
    --slurm or -w (one of them; --launcher slurm defaults to --slurm; none: this machine),
    then ssh_config applied (hosts.yaml values > ssh_config > defaults). ConfigError on any
    problem, naming the file, line or option."""
    from ..config.hostsyaml import ConfigDefaults, load_config_defaults, load_hosts_file, local_cluster_spec
    from ..config.inventory import build_cluster, load_hostfile, parse_host_expression, slurm_entries
    from ..config.sshconfig import apply_ssh_config, read_ssh_config

    env = dict(os.environ) if env is None else env
    hosts, hostfile, hostlist = inventory.hosts, inventory.hostfile, inventory.hostlist
    slurm, config, launcher = inventory.slurm, inventory.config, inventory.launcher
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
    path = inventory.ssh_config or spec.ssh.config_file
    lookup, read = read_ssh_config(path)
    local_user = env.get("USER") or getpass.getuser()
    return apply_ssh_config(spec, lookup, read, local_user)


def free_local_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def add_prom_option(parser: argparse.ArgumentParser) -> None:
    """--prom FILE: node_exporter's textfile format (preflight, node, bandwidth)."""
    parser.add_argument("--prom", metavar="FILE",
                        help="write Prometheus metrics here (node_exporter textfile collector "
                             "format, replaced atomically; name it *.prom)")


def write_report(path: str, report: Report,
                 render: Callable[[Report], str] = to_json) -> None:
    """Atomically (a reader, such as node_exporter's textfile collector, never sees half a
    report), never through a link another user planted at ``path``
    (``model.safety.write_atomically``: a new temporary file in the same directory, renamed)."""
    from ..model.safety import write_atomically

    write_atomically(path, render(report).encode("utf-8"))


def report_files(output: OutputOptions) -> list[tuple[str, Callable[[Report], str]]]:
    """(path, renderer) of every report file the options ask for."""
    from ..report.machine import render_csv, render_junit
    from ..report.prometheus import render_prom

    return [(path, render) for path, render in ((output.json, to_json),
                                                (output.csv, render_csv),
                                                (output.junit, render_junit),
                                                (output.prom, render_prom)) if path]


def output_path_problem(path: str) -> Optional[str]:
    """Why a report cannot be written at ``path`` (None: it can), found by doing what the
    write will do: a new file made, then removed, in its directory. Asking ``os.access`` is
    not enough: root passes it on /proc and on a read-only mount, where the write fails."""
    import tempfile

    if os.path.isdir(path):
        return "is a directory; give a file name"
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.exists(directory):
        return f"directory {os.path.dirname(path) or directory} does not exist"
    if not os.path.isdir(directory):
        return f"{os.path.dirname(path)} is not a directory"
    try:
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".ddpcheck-", suffix=".probe"):
            pass
    except OSError as exc:
        return f"cannot write in {os.path.dirname(path) or directory}: {exc.strerror or exc}"
    return None


def output_path_errors(output: OutputOptions) -> list[str]:
    """A line per report file (--json, --csv, --junit, --prom, --plot) that cannot be written,
    naming the option and the path as the user gave them."""
    lines = []
    for option, path in (("json", output.json), ("csv", output.csv), ("junit", output.junit),
                         ("prom", output.prom), ("plot", output.plot)):
        if path:
            problem = output_path_problem(path)
            if problem:
                lines.append(f"--{option} {path}: {problem}")
    return lines


def check_output_paths(output: OutputOptions) -> bool:
    """Every report path checked before any work (one line on stderr for each that cannot be
    written); False when one cannot."""
    errors = output_path_errors(output)
    for line in errors:
        print(f"ddpcheck: {line}", file=sys.stderr)
    return not errors


def interrupted_report(command: str, spec: Optional[ClusterSpec], started: float,
                       signal: str = "SIGINT") -> Report:
    """The report of a run interrupted before its engine could say how far it got."""
    from ..analyze.outcomes import interrupted_finding
    from ..model.records import HostRecord

    hosts = tuple(HostRecord(h.name, h.address) for h in spec.hosts) if spec else ()
    return Report(command, Verdict.INTERRUPTED, EXIT_INTERRUPTED,
                  time.monotonic() - started, None, None, None, hosts, (),
                  (interrupted_finding(signal, "start"),), source=spec.source if spec else "")


def table_renderer(report: Report, style: TableStyle) -> str:
    """The usual table (preflight's), in the style asked for."""
    return render_table(report, tablefmt=style.tablefmt or DEFAULT_TABLE_FORMAT,
                        color=style.color, full=style.full)


def run_reported(inventory: InventoryOptions, output: OutputOptions,
                 execute: Callable[[ClusterSpec], Report],
                 render: Callable[[Report, TableStyle], str] = table_renderer,
                 check_spec: Optional[Callable[[ClusterSpec], None]] = None,
                 spec_of: Optional[Callable[[], ClusterSpec]] = None) -> int:
    """The shared frame of a command: load the spec (exit 2 on a config error), run, and always
    write the report files (--json, --csv, --junit), partial or ``interrupted`` when the run was
    cut short. stdout gets ``render(report, style)``, or only the verdict line with -q.
    ``check_spec`` may reject the spec with a ConfigError before anything runs. A report path
    that cannot be written is exit 2 before anything runs, too (a CI job must not pass without
    its report). ``spec_of`` gives the spec where no inventory does (``--in-job``)."""
    started = time.monotonic()
    if not check_output_paths(output):
        return EXIT_USAGE
    try:
        spec = spec_of() if spec_of is not None else load_spec(inventory)
        if check_spec is not None:
            check_spec(spec)
    except ConfigError as exc:
        print(error_text(exc), file=sys.stderr)
        return EXIT_USAGE
    report: Optional[Report] = None
    try:
        report = execute(spec)
    except KeyboardInterrupt as exc:
        from ..analyze.outcomes import signal_name

        report = interrupted_report(output.command, spec, started, signal_name(exc))
    except DdpcheckError as exc:
        print(error_text(exc), file=sys.stderr)
        return EXIT_USAGE
    finally:
        for path, file_render in report_files(output):
            try:
                write_report(path, report or interrupted_report(output.command, spec, started),
                             file_render)
            except OSError as exc:
                print(f"ddpcheck: cannot write {path}: {exc}", file=sys.stderr)
    style = output.style(sys.stdout)
    if output.quiet:
        sys.stdout.write(footer_line(report, style.color) + "\n")
    else:
        sys.stdout.write(render(report, style))
    sys.stdout.flush()
    return report.exit_code


def error_text(exc: Exception) -> str:
    """``ddpcheck: `` and the error, on each of its lines (a hosts.yaml with several problems
    names each on a line of its own)."""
    return "\n".join(f"ddpcheck: {line}" for line in str(exc).splitlines() or [""])


def usage_error(exc: Exception) -> int:
    """The error on stderr (a line per problem), exit 2."""
    print(error_text(exc), file=sys.stderr)
    return EXIT_USAGE
