"""``--launcher slurm``: srun steps inside the allocation as the launcher. Runs on the launcher.

Stage 0 is one ``srun`` step (one task per node, ``--label``), the rendezvous check two steps
side by side, the launch another; ``plan.slurm.split_srun_output`` gives each node its own
output, which goes through the same records, analysis and report as the SSH launcher's. A node
whose task never reported at stage 0 (srun could not start the step there) is unreachable,
under the check ``srun``; at launch it reads as "no rank reported back", as a silent host does
over SSH. Nodes are reached at SLURM's NodeAddr (``scontrol show node``) where the inventory
gave no address.
"""

from __future__ import annotations

import subprocess
import uuid
from dataclasses import replace
from typing import Optional, Sequence

from ..analyze.outcomes import srun_silent_failure, summary_of
from ..model.errors import ConfigError
from ..model.outcomes import CommandResult, GroupResult
from ..model.records import Stage
from ..model.spec import ClusterSpec
from ..plan.cmdlines import RankProgram
from ..plan.slurm import (node_addresses_command, outputs_by_host, parse_node_addresses,
                          plan_srun_launch, plan_srun_rendezvous_check, plan_srun_stage0,
                          split_srun_output, with_node_addresses)
from ..transport.fanout import fan_out
from ..transport.local import LocalSession
from .launchers import HostDone, HostJob, HostStep, RendezvousResults, Run
from ..report.progress import Progress
from .state import REACH_WINDOW_S, LaunchSetup

SRUN_STARTUP_S = 30.0  # srun may wait for the step's resources, then start every node
EMPTY = CommandResult(None, "", False, False, 0.0)


class SrunLauncher:
    # one srun step runs stage 0 on every node: the rendezvous check is two steps of its own
    rendezvous_in_stage0 = False

    def __init__(self) -> None:
        self.session = LocalSession()

    def prepare(self, spec: ClusterSpec, run: Run) -> ClusterSpec:
        return with_node_addresses(spec, node_addresses(spec, run.progress))

    def reach(self, run: Run, step: HostStep) -> None:
        if step.stage is not Stage.STAGE0:
            raise ConfigError("--launcher slurm runs preflight only", source="command line")
        for host in run.spec.hosts:
            run.progress.host(host.name, "starting stage 0 with srun")
        command = plan_srun_stage0(run.spec, step.timeout_s - 2)
        if run.verbose:
            run.progress.say(f"stage 0: {command}")
        result = self.session.run(command, run.state.until(step.timeout_s + SRUN_STARTUP_S),
                                  run.state.cancel)
        by_name = {h.name: h for h in run.spec.hosts}
        for name, node_result in self.per_host(run, result).items():
            run.state.update(name, reachable=True, stage=Stage.STAGE0)
            step.record(by_name[name], node_result, None)

    def rendezvous(self, run: Run) -> RendezvousResults:
        """Two srun steps side by side: the master node listens on the rendezvous port while
        every node connects to the address torchrun will get."""
        listen, reach = plan_srun_rendezvous_check(run.spec, REACH_WINDOW_S)
        if run.verbose:
            run.progress.say(f"rendezvous check: {listen}\n  {reach}")
        deadline = run.state.until(REACH_WINDOW_S + 15.0 + SRUN_STARTUP_S)
        outcomes = fan_out([listen, reach], lambda command: LocalSession().run(
            command, deadline, run.state.cancel), 2, run.state.cancel)
        if run.state.cancel.is_set():
            return []
        listened, reached = (o.result or EMPTY for o in outcomes)
        master = run.spec.master_host.name
        names = [h.name for h in run.spec.hosts]
        return ([("listen", master, task_outputs(run.spec, listened, [master]).get(master, EMPTY))]
                + [("reach", name, result) for name, result in
                   ((n, task_outputs(run.spec, reached, names).get(n, EMPTY)) for n in names)])

    def launch(self, run: Run, setup: LaunchSetup, program: Optional[RankProgram],
               done: HostDone, on_line=None) -> GroupResult[str]:  # the probe only: no streams
        if program is not None:
            raise ConfigError("--launcher slurm runs the preflight probe only",
                              source="command line")
        command = plan_srun_launch(run.spec, setup.slots, setup.backend, setup.options,
                                   run_id=uuid.uuid4().hex[:12])
        for node_rank, host in enumerate(run.spec.hosts):
            run.state.update(host.name, slots=setup.slots[host.name], stage=Stage.LAUNCH)
            run.progress.host(host.name, f"launched torchrun with srun: node rank {node_rank}, "
                                         f"{setup.slots[host.name]} rank(s)")
        if run.verbose:
            run.progress.say(f"launch: {command}")
        result = self.session.run(command, run.state.until(setup.options.deadline_s +
                                                           SRUN_STARTUP_S), run.state.cancel)
        results: GroupResult[str] = GroupResult(self.per_host(run, result, launched=True))
        for host, node_result in results.succeeded.items():
            done(host, node_result)
        return results

    def run_jobs(self, run: Run, jobs: Sequence[HostJob]) -> GroupResult[int]:
        raise ConfigError("--launcher slurm runs one world per step, not per-host jobs",
                          source="command line")

    def release(self, names) -> None:
        """Nothing is held per node (srun steps end with their command)."""

    def close(self) -> None:
        self.session.close()

    def per_host(self, run: Run, result: CommandResult, launched: bool = False
                 ) -> dict[str, CommandResult]:
        """Each node's share of one srun step. At stage 0 a node that gave nothing fails
        (check ``srun``); at launch it gets an empty result."""
        tasks, own = split_srun_output(result.output)
        by_host = outputs_by_host(run.spec, tasks)
        results = {}
        for host in run.spec.hosts:
            task = by_host.get(host.name)
            silent = task is None or (not task.text and task.host is None)
            if silent and launched:
                results[host.name] = CommandResult(
                    None if result.timed_out or result.cancelled else result.exit_code,
                    task.srun_error or "" if task else "\n".join(own[-3:]),
                    result.timed_out, result.cancelled, result.duration_s)
            elif silent:
                detail = task.srun_error if task and task.srun_error else summary_of(own)
                run.state.fail(host.name, srun_silent_failure(result, detail))
                run.progress.host(host.name, f"unreachable through srun: {detail}")
            else:
                code = task.exit_code if task.exit_code is not None else (
                    None if result.timed_out or result.cancelled else
                    0 if task.srun_error is None else result.exit_code)
                results[host.name] = CommandResult(code, task.text, result.timed_out,
                                                   result.cancelled, result.duration_s)
        return results


def task_outputs(spec: ClusterSpec, result: CommandResult, names: list[str]
                 ) -> dict[str, CommandResult]:
    """Each node's output of one srun step over ``names`` (in that order)."""
    tasks, own = split_srun_output(result.output)
    by_host = outputs_by_host(replace(spec, hosts=tuple(
        h for name in names for h in spec.hosts if h.name == name)), tasks)
    return {name: CommandResult(task.exit_code, task.text or "\n".join(own[-3:]),
                                result.timed_out, result.cancelled, result.duration_s)
            for name, task in by_host.items()}


def node_addresses(spec: ClusterSpec, progress: Progress) -> dict[str, str]:
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
