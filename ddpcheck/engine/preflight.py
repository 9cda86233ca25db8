"""Preflight's workload: the probe on every rank of one world over all hosts.

Runs on the launcher. ``run_preflight`` is the one run loop (``engine.run.Engine``) with this
workload and a launcher (SSH by default; srun with ``--launcher slurm``). ``base_report`` is the
report of one world, which the bandwidth workloads extend.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Optional

from ..analyze import verdict as analyze
from ..model.records import EXIT_CODES
from ..model.records import HostRecord
from ..model.spec import ClusterSpec
from ..plan.cmdlines import LaunchOptions
from ..model.report import Report
from .launchers import HostStep, Launcher, SSHLauncher
from ..report.progress import Progress
from .run import Engine, record_launch, record_launch_errors
from ..core.deadlines import STAGE0_DEADLINE_S
from .state import LAUNCH_GRACE_S

__all__ = ["PreflightOptions", "Probe", "Progress", "base_report", "run_preflight"]


@dataclass(frozen=True)
class PreflightOptions:
    timeout_s: float = 180.0  # the whole command
    launch: LaunchOptions = LaunchOptions()
    verbose: bool = False
    rendezvous_check: bool = True  # connect to master:port from every host before torchrun
    stage0_timeout_s: float = STAGE0_DEADLINE_S  # connect is ssh.connect_timeout
    launch_grace_s: float = LAUNCH_GRACE_S
    dcgm: Optional[int] = None  # --dcgm N: dcgmi diag -r N in stage 0 (its deadline added)


class Probe:
    """The probe on every rank of one world: stage 0, rendezvous check, one torchrun a host."""

    command = "preflight"
    stage0 = True

    def __init__(self, options: PreflightOptions) -> None:
        self.options = options
        self.timeout_s = options.timeout_s
        self.verbose = options.verbose
        self.rendezvous_check = options.rendezvous_check
        self.stage0_timeout_s = options.stage0_timeout_s
        self.launch_grace_s = options.launch_grace_s
        self.dcgm = options.dcgm

    def host_step(self, run: Engine) -> HostStep:
        raise NotImplementedError("stage 0 is the first step")

    def launch_without(self, run: Engine, failed: list[HostRecord]) -> bool:
        return False  # one world over all hosts: with a missing node it could only hang

    def rank_program(self):
        return None  # the probe (plan.cmdlines.probe_program)

    def launch(self, run: Engine) -> None:
        setup = run.state.setup(run.spec.hosts, self.options.launch)
        results = run.launcher.launch(run, setup, self.rank_program(),
                                      lambda name, result: record_launch(run, name, result))
        record_launch_errors(run, results)

    def report(self, run: Engine, interrupted: bool) -> Report:
        return base_report(run, self.options.launch, interrupted)


def pinned_interfaces(spec: ClusterSpec) -> frozenset[str]:
    """Hosts whose ranks are told their interface (a hostname on loopback is then harmless)."""
    names = ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME", "TP_SOCKET_IFNAME")
    return frozenset(h.name for h in spec.hosts if any(n in h.env for n in names))


def base_report(run: Engine, launch: LaunchOptions, interrupted: bool,
                command: str = "preflight") -> Report:
    """One world's report: the hosts, the ranks, every finding ordered, the verdict."""
    state = run.state
    hosts = [state.hosts[h.name] for h in run.spec.hosts]
    failed_hosts = frozenset(h.name for h in hosts if h.failure is not None)
    findings = analyze.host_findings(hosts, pinned_interfaces(run.spec)) + state.findings
    drift_rows: list[dict[str, Any]] = []
    if state.slots:
        findings += analyze.rank_findings(state.ranks, state.slots,
                                          {h.name: h.gpus for h in hosts},
                                          state.backend or "", failed_hosts)
        drifted, drift_rows = analyze.drift_report(
            state.ranks, seeded=launch.seed is not None or bool(launch.setup))
        findings += drifted
    findings = analyze.mark_single_root_cause(analyze.order_findings(findings))
    verdict = analyze.verdict(findings, hosts, interrupted)
    ranks = sorted(state.ranks, key=lambda r: (r.rank is None, r.rank or 0))
    world_sizes = {r.world_size for r in ranks if r.world_size is not None}
    root = next((r for r in ranks if r.rank == 0), None)
    return Report(
        command=command, verdict=verdict, exit_code=EXIT_CODES[verdict],
        duration_s=time.monotonic() - state.began, backend=state.backend,
        world_size=max(world_sizes) if world_sizes else (len(ranks) or None),
        expected_world_size=sum(state.slots.values()) if state.slots else None,
        hosts=tuple(hosts), ranks=tuple(ranks), findings=tuple(findings),
        source=run.spec.source,
        master=f"{run.spec.master_host.address}:{run.spec.rendezvous_port}",
        collectives=tuple(root.collectives) if root else (),
        extra={**({"drift": drift_rows} if drift_rows else {}),
               "stage0": {h.name: dict(h.facts.raw) for h in hosts if h.facts}})


def run_preflight(spec: ClusterSpec, options: PreflightOptions,
                  progress: Optional[Progress] = None,
                  launcher: Optional[Launcher] = None) -> Report:
    return Engine(spec, Probe(options), launcher or SSHLauncher(), progress).run()
