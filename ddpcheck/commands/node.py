"""``ddpcheck node``: stage 0 on this machine alone, for a SLURM prolog or HealthCheckProgram.

The same facts every host gives in preflight's stage 0 (``agent.collect_facts``: NVML, host
resources, interfaces, the torch import, Xid/SXid from the kernel log, IB/RoCE ports, DCGM with
``--dcgm``) judged by the same rules (``health``), in a few seconds, with no SSH and no torchrun.
A kernel log this user may not read is a warning that says so (exit 0 unless a check failed). Exit codes are the common ones: 0 when every check passed, 1 when one
failed (a non-zero prolog drains the node), 2 for a bad option. ``--slurm-drain`` drains the node
itself with ``scontrol update NodeName=<node> State=DRAIN Reason="ddpcheck: <check>"``, for use as
HealthCheckProgram, whose exit code SLURM ignores.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping, Optional, Sequence

from ..analyze import verdict as analyze

from ..analyze import health
from ..collect.facts import read_facts
from ..core.agentargs import TORCH_IMPORT
from ..core.argtypes import at_least, parse_since, positive
from ..core.deadlines import Deadlines
from ..model.records import EXIT_CODES
from ..model.records import Finding, HostRecord, Severity, Stage
from ..model.report import Report
from .common import EXIT_USAGE, InventoryOptions, OutputOptions, TableStyle, run_reported

DEFAULT_TIMEOUT_S = 30.0
SCONTROL_TIMEOUT_S = 20.0
MAX_REASON = 200  # SLURM shows the reason in sinfo -R; keep it readable


@dataclass(frozen=True)
class NodeOptions:
    timeout_s: float = DEFAULT_TIMEOUT_S
    expected_gpus: Optional[int] = None
    master: Optional[str] = None
    workdir: str = "."
    with_torch: bool = True
    slurm_drain: bool = False
    node_name: Optional[str] = None
    dcgm: Optional[int] = None  # dcgmi diag -r N
    xid_since: Optional[float] = None  # epoch; None: since the driver's last load
    ib_root: str = "/sys/class/infiniband"


def register(sub) -> None:
    parser = sub.add_parser(
        "node", help="this host's checks only (GPU health, resources, env), for SLURM",
        description="Stage 0 on this machine: GPU inventory and health (NVML), resources, "
                    "interfaces and env, the torch import. Exit 1 when a check fails, so a "
                    "SLURM prolog drains the node; --slurm-drain drains it directly.")
    parser.add_argument("--json", metavar="FILE", help="write the JSON report here")
    parser.add_argument("--prom", metavar="FILE",
                        help="write Prometheus metrics here (node_exporter textfile format)")
    parser.add_argument("--timeout", type=positive, default=DEFAULT_TIMEOUT_S,
                        metavar="SECONDS",
                        help=f"hard deadline for the checks (default {DEFAULT_TIMEOUT_S:g})")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="also list interfaces and every GPU counter")
    parser.add_argument("--gpus", type=at_least(0), metavar="N",
                        help="GPUs this node must have (a gpu_count error otherwise)")
    parser.add_argument("--master", metavar="HOST",
                        help="also check the route to this rendezvous host")
    parser.add_argument("--workdir", default=".", metavar="DIR",
                        help="directory whose disk is checked (default: the current one)")
    parser.add_argument("--no-torch", action="store_true",
                        help="skip the torch import check (faster)")
    parser.add_argument("--dcgm", type=int, choices=(1, 2), metavar="1|2",
                        help="also run DCGM diagnostics (dcgmi diag -r N -j) and fold failed "
                             "tests into gpu_health; the deadline grows by its run time")
    parser.add_argument("--since", type=_since, default=None, metavar="TIME",
                        help="Xid/SXid events since TIME: boot, epoch seconds, 'YYYY-MM-DD "
                             "HH:MM[:SS]' or an age like 10m, 2h (default: since the nvidia "
                             "driver's last load)")
    parser.add_argument("--ib-sysfs", default="/sys/class/infiniband", metavar="DIR",
                        help="where the InfiniBand/RoCE devices are (default "
                             "/sys/class/infiniband)")
    parser.add_argument("--slurm-drain", action="store_true",
                        help="on a failed check, run scontrol update NodeName=<node> "
                             "State=DRAIN Reason=\"ddpcheck: <check>\"")
    parser.add_argument("--node-name", metavar="NAME",
                        help="SLURM node name for --slurm-drain (default $SLURMD_NODENAME, "
                             "else the short hostname)")
    parser.set_defaults(run=node_command)


@dataclass(frozen=True)
class NodeCommandOptions:
    """Everything ``ddpcheck node`` was asked: the checks, the report files (--json, --prom),
    and -v for the text."""
    checks: NodeOptions
    output: OutputOptions
    verbose: bool = False

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "NodeCommandOptions":
        checks = NodeOptions(timeout_s=args.timeout, expected_gpus=args.gpus,
                             master=args.master, workdir=args.workdir,
                             with_torch=not args.no_torch, slurm_drain=args.slurm_drain,
                             node_name=args.node_name, dcgm=args.dcgm, xid_since=args.since,
                             ib_root=args.ib_sysfs)
        return cls(checks=checks, output=OutputOptions(command=args.command, json=args.json,
                                                       prom=args.prom),
                   verbose=args.verbose)


def node_command(args: argparse.Namespace) -> int:
    return run_node_command(NodeCommandOptions.from_args(args))


def run_node_command(command: NodeCommandOptions) -> int:
    from ..report.node import render_node

    options = command.checks
    if not os.path.isdir(options.workdir):
        print(f"ddpcheck: --workdir {options.workdir}: not a directory", file=sys.stderr)
        return EXIT_USAGE

    def render(report: Report, style: TableStyle) -> str:
        return render_node(report, verbose=command.verbose)

    # this machine alone: no inventory
    return run_reported(InventoryOptions(), command.output, lambda spec: run_node(options),
                        render)


def run_node(options: NodeOptions,
             drain: Optional[Callable[[str, str], Mapping[str, Any]]] = None) -> Report:
    """Facts -> findings -> report; drains the node when asked and a check failed."""
    from ..remote.agent import collect_facts

    started = time.monotonic()
    facts = collect_facts(max(node_deadline_s(options) - 1.0, 1.0), options.master,
                          torch_mode=TORCH_IMPORT if options.with_torch else None,
                          workdir=options.workdir,
                          xid_since=options.xid_since, ib_root=options.ib_root,
                          dcgm_level=options.dcgm)
    read = read_facts(facts)
    name = read.hostname or socket.gethostname()
    context = health.Stage0Context(expected_gpus=options.expected_gpus,
                                   check_hostname_loopback=True)
    findings = analyze.mark_single_root_cause(analyze.order_findings(
        health.host_findings(name, read, context)))
    gpus = read.nvml.listed if read.nvml is not None and read.nvml.available else read.gpus
    host = HostRecord(name=name, address="127.0.0.1", reachable=True, hostname=name,
                      gpus=gpus, stage=Stage.STAGE0, facts=read,
                      versions={"python": read.python, "torch": read.torch})
    verdict = analyze.verdict(findings, [host])
    report = Report(command="node", verdict=verdict, exit_code=EXIT_CODES[verdict],
                    duration_s=time.monotonic() - started, backend=None, world_size=None,
                    expected_world_size=None, hosts=(host,), ranks=(), findings=tuple(findings),
                    source="this machine", extra={"stage0": {name: facts}})
    if options.slurm_drain and any(f.severity is Severity.ERROR for f in findings):
        node = options.node_name or slurm_node_name(os.environ, name)
        outcome = (drain or drain_node)(node, drain_reason(findings))
        report = replace(report, extra={**report.extra, "slurm_drain": dict(outcome)},
                         duration_s=time.monotonic() - started)
        if outcome.get("error"):
            print(f"ddpcheck: --slurm-drain: {outcome['error']}", file=sys.stderr)
        else:
            print(f"ddpcheck: drained SLURM node {node}: {outcome['reason']}", file=sys.stderr)
    return report


# -- SLURM --------------------------------------------------------------------------------

def node_deadline_s(options: NodeOptions) -> float:
    """--timeout, plus DCGM's own deadline when --dcgm runs the diagnostics."""
    return Deadlines.from_timeout(options.timeout_s, options.dcgm).command_s


def _since(text: str) -> Optional[float]:
    try:
        return parse_since(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def slurm_node_name(environ: Mapping[str, str], hostname: str) -> str:
    """The node's SLURM name: slurmd exports SLURMD_NODENAME to prolog and health check
    programs; otherwise the short hostname, as SLURM names nodes by default."""
    return environ.get("SLURMD_NODENAME") or hostname.split(".")[0]


def drain_reason(findings: Sequence[Finding]) -> str:
    """"ddpcheck: <check>[, <check>...]", the failed checks, root cause first."""
    checks: list[str] = []
    for finding in findings:
        if finding.severity is Severity.ERROR and finding.check not in checks:
            checks.append(finding.check)
    return f"ddpcheck: {', '.join(checks)}"[:MAX_REASON]


def drain_command(node: str, reason: str) -> list[str]:
    """An argv, never a shell line: the reason and node name reach scontrol as they are."""
    return ["scontrol", "update", f"NodeName={node}", "State=DRAIN", f"Reason={reason}"]


def drain_node(node: str, reason: str) -> dict[str, Any]:
    argv = drain_command(node, reason)
    outcome: dict[str, Any] = {"node": node, "reason": reason, "command": argv,
                               "drained": False, "error": None}
    scontrol = shutil.which("scontrol")
    if scontrol is None:
        outcome["error"] = (f"scontrol not found on PATH; node {node} was NOT drained "
                            f"(install the SLURM client or drop --slurm-drain)")
        return outcome
    try:
        done = subprocess.run([scontrol, *argv[1:]], capture_output=True, text=True,
                              timeout=SCONTROL_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        outcome["error"] = f"scontrol failed: {exc}; node {node} was NOT drained"
        return outcome
    if done.returncode != 0:
        text = (done.stderr or done.stdout).strip() or f"exit {done.returncode}"
        outcome["error"] = f"scontrol exited {done.returncode}: {text}; node {node} was NOT drained"
        return outcome
    outcome["drained"] = True
    return outcome
