"""Preflight with ``--launcher slurm``: the same run as over SSH, with srun steps as transport.

Inside an allocation, stage 0 is one ``srun`` step (one task per node, ``--label``) and the
launch another; ``slurm.split_srun_output`` gives each node its own output, which goes through
the same records, analysis and report as the SSH launcher's. A node whose task never reported
(srun could not start the step there) is unreachable, under the check ``srun``. Nodes are
reached at SLURM's NodeAddr (``scontrol show node``) where the inventory gave no address.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from dataclasses import replace

from ..plan.commands import resolve_backend, resolve_slots
from .preflight import REACH_WINDOW_S, STAGE0_DEADLINE_S, PreflightRun, summary_of
from ..plan.slurm import (node_addresses_command, outputs_by_host, parse_node_addresses,
                    plan_srun_launch, plan_srun_rendezvous_check, plan_srun_stage0,
                    split_srun_output, with_node_addresses)
from ..transport.ssh import CommandResult, LocalSession, fan_out

SRUN_STARTUP_S = 30.0  # srun may wait for the step's resources, then start every node


class SlurmPreflightRun(PreflightRun):
    def __init__(self, spec, options, progress) -> None:
        super().__init__(with_node_addresses(spec, node_addresses(spec, progress)), options,
                         progress)

    def stage0(self) -> None:
        session = LocalSession()
        with self.lock:
            self.sessions["<srun>"] = session
        for host in self.spec.hosts:
            self.progress.host(host.name, "starting stage 0 with srun")
        deadline = min(self.deadline, time.monotonic() + STAGE0_DEADLINE_S + SRUN_STARTUP_S)
        command = plan_srun_stage0(self.spec, STAGE0_DEADLINE_S - 2)
        if self.options.verbose:
            self.progress.say(f"stage 0: {command}")
        result = session.run(command, deadline, self.cancel)
        for host, node_result in self.per_host(result).items():
            spec_host = next(h for h in self.spec.hosts if h.name == host)
            self.update(host, reachable=True, stage="stage0")
            self.record_stage0(spec_host, node_result)

    def check_rendezvous(self) -> None:
        """The SSH launcher's check, as two srun steps side by side: the master node listens
        on the rendezvous port while every node connects to the address torchrun will get."""
        listen, reach = plan_srun_rendezvous_check(self.spec, REACH_WINDOW_S)
        master = self.spec.master_host
        target = f"{master.name} {master.address}:{self.spec.rendezvous_port}"
        self.progress.say(f"rendezvous check: every node connects to {target}")
        if self.options.verbose:
            self.progress.say(f"rendezvous check: {listen}\n  {reach}")
        deadline = min(self.deadline, time.monotonic() + REACH_WINDOW_S + 15.0 +
                       SRUN_STARTUP_S)
        results: dict[str, CommandResult] = {}

        def run_step(job: tuple[str, str]) -> None:
            kind, command = job
            results[kind] = LocalSession().run(command, deadline, self.cancel)

        fan_out([("listen", listen), ("reach", reach)], run_step, 2, self.cancel)
        if self.cancel.is_set():
            return
        empty = CommandResult(None, "", False, False, 0.0)
        listened = self.task_outputs(results.get("listen", empty), [master.name])
        self.judge_rendezvous("listen", master.name,
                              listened.get(master.name, empty), target)
        reached = self.task_outputs(results.get("reach", empty),
                                    [h.name for h in self.spec.hosts])
        for host in self.spec.hosts:
            self.judge_rendezvous("reach", host.name, reached.get(host.name, empty), target)

    def task_outputs(self, result: CommandResult, names: list[str]) -> dict[str, CommandResult]:
        """Each node's output of one srun step over ``names`` (in that order)."""
        tasks, own = split_srun_output(result.output)
        by_host = outputs_by_host(replace(self.spec, hosts=tuple(
            h for name in names for h in self.spec.hosts if h.name == name)), tasks)
        return {name: CommandResult(task.exit_code, task.text or "\n".join(own[-3:]),
                                    result.timed_out, result.cancelled, result.duration_s)
                for name, task in by_host.items()}

    def per_host(self, result: CommandResult, launched: bool = False
                 ) -> dict[str, CommandResult]:
        """Each node's share of one srun step. At stage 0 a node that gave nothing is
        unreachable (check ``srun``); at launch it gets an empty result, which reads as "no
        rank reported back", as a silent host does over SSH."""
        tasks, own = split_srun_output(result.output)
        by_host = outputs_by_host(self.spec, tasks)
        results = {}
        for host in self.spec.hosts:
            task = by_host.get(host.name)
            if (task is None or (not task.text and task.host is None)) and launched:
                results[host.name] = CommandResult(
                    None if result.timed_out or result.cancelled else result.exit_code,
                    task.srun_error or "" if task else "\n".join(own[-3:]),
                    result.timed_out, result.cancelled, result.duration_s)
                continue
            if task is None or (not task.text and task.host is None):
                why = ("interrupted" if result.cancelled else
                       "srun did not finish before the deadline" if result.timed_out else
                       f"srun exited {result.exit_code}")
                detail = task.srun_error if task and task.srun_error else summary_of(own)
                self.update(host.name, error=f"no output from this node ({why}): {detail}",
                            error_check="srun")
                self.progress.host(host.name, f"unreachable through srun: {detail}")
                continue
            code = task.exit_code if task.exit_code is not None else (
                None if result.timed_out or result.cancelled else
                0 if task.srun_error is None else result.exit_code)
            results[host.name] = CommandResult(code, task.text, result.timed_out,
                                               result.cancelled, result.duration_s)
        return results

    def launch(self) -> None:
        specs = self.spec.hosts
        gpus = {h.name: self.hosts[h.name].gpus for h in specs}
        backend = resolve_backend(self.spec.backend, gpus)
        self.backend = backend.value
        self.slots = {h.name: resolve_slots(h, gpus[h.name], False) for h in specs}
        remaining = self.deadline - time.monotonic()
        launch_options = replace(self.options.launch,
                                 deadline_s=max(min(self.options.launch.deadline_s,
                                                    remaining - 5.0), 5.0))
        command = plan_srun_launch(self.spec, self.slots, backend, launch_options,
                                   run_id=uuid.uuid4().hex[:12])
        for node_rank, host in enumerate(specs):
            self.update(host.name, slots=self.slots[host.name], stage="launch")
            self.progress.host(host.name, f"launched torchrun with srun: node rank {node_rank}, "
                                          f"{self.slots[host.name]} rank(s)")
        if self.options.verbose:
            self.progress.say(f"launch: {command}")
        deadline = min(self.deadline, time.monotonic() + launch_options.deadline_s +
                       SRUN_STARTUP_S)
        result = self.sessions["<srun>"].run(command, deadline, self.cancel)
        for host, node_result in self.per_host(result, launched=True).items():
            self.record_launch(host, node_result)


def node_addresses(spec, progress) -> dict[str, str]:
    """NodeAddr of each node from scontrol; {} (the names are used) when scontrol fails."""
    command = node_addresses_command(spec)
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired) as exc:
        progress.say(f"{' '.join(command)}: {exc}; using the node names as addresses")
        return {}
    if done.returncode != 0:
        progress.say(f"{' '.join(command)} exited {done.returncode}: "
                     f"{summary_of(done.stderr.splitlines())}; using the node names as addresses")
    return parse_node_addresses(done.stdout)


def srun_dry_run_text(spec, options) -> str:
    """``--dry-run --launcher slurm``: the two srun steps, as they would run."""
    from ..plan.commands import resolve_backend as backend_of

    slots = {h.name: resolve_slots(h, 0, False) for h in spec.hosts}
    backend = backend_of(spec.backend, {h.name: 0 for h in spec.hosts})
    return "\n".join([
        f"# ddpcheck preflight --dry-run --launcher slurm: {len(spec.hosts)} node(s) from "
        f"{spec.source}",
        "# stage 0 (one task per node):", plan_srun_stage0(spec, STAGE0_DEADLINE_S - 2),
        f"# launch (backend {backend.value}; nodes without slots shown as without GPUs):",
        plan_srun_launch(spec, slots, backend, options.launch)]) + "\n"

