"""SLURM: the allocation from the environment (config stage) and srun commands (plan stage).

``--slurm`` reads the allocation ddpcheck runs in: SLURM_JOB_NODELIST (compressed hostlist,
e.g. ``gpu[001-004,010]``), SLURM_TASKS_PER_NODE (``2(x3),1``) and the GPUs per node
(SLURM_GPUS_PER_NODE ``[type:]N``, else SLURM_GPUS_ON_NODE). ``--launcher slurm`` starts the
agent with ``srun`` instead of SSH: one task per node (``--ntasks-per-node=1``), which runs
torchrun for that node's ranks, so the ranks, deadlines and cleanup are exactly those of the
SSH launcher; one srun step for stage 0 and one for the launch, with ``--label`` so each
line's node is known. slurmstepd forwards a task's output a line at a time but at most
``SRUN_CHUNK_BYTES`` per message, and srun labels (and ends) each message as a line: a longer
line (a facts or rank record) arrives in pieces, which ``split_srun_output`` joins again.
Buffered (no ``--unbuffered``), so no piece ends elsewhere than a newline or a full chunk.
Everything here is pure; ``engine.srun`` runs the commands. The allocation from the
environment is ``config.slurmenv`` (importable from here too).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, replace
from typing import Mapping, Optional, Sequence

from ..config.hostlist import compress_hostlist
from ..core.agentargs import HOST_TOKEN, NODE_RANK_TOKEN, NPROC_TOKEN
from ..wire import MARK
from .cmdlines import (LaunchOptions, launch_argv, master_address, plan_rendezvous_check,
                   remote_command, stage0_argv)
from ..model.spec import Backend, ClusterSpec

JOB_NAME = "ddpcheck"
_LABEL = re.compile(r"^\s*([0-9]+): ?(.*)$")
_SRUN_TASK_ERROR = re.compile(r"^srun: error: (?P<node>\S+): tasks? (?P<tasks>[0-9,\-]+): "
                              r"(?P<what>.*)$")
_EXIT_CODE = re.compile(r"Exited with exit code ([0-9]+)")
# slurmstepd's largest I/O message (MAX_MSG_LEN): a labelled line this long is not the end of
# the task's line, its next labelled line goes on with it.
SRUN_CHUNK_BYTES = 1024

# ----------------------------------------------------------------------------- srun plans


def srun_prefix(spec: ClusterSpec) -> list[str]:
    """One task per node of the spec, each line labelled with its task id. ``--overlap`` lets
    the step run beside the step ddpcheck itself may be in (``srun --pty bash``);
    ``--kill-on-bad-exit=0``: one failing node must not hide the others' results."""
    names = [h.name for h in spec.hosts]
    return ["srun", f"--nodes={len(names)}", f"--ntasks={len(names)}", "--ntasks-per-node=1",
            f"--nodelist={compress_hostlist(names)}", "--label", "--overlap",
            "--kill-on-bad-exit=0", f"--job-name={JOB_NAME}"]


def node_addresses_command(spec: ClusterSpec) -> list[str]:
    """``scontrol show node -o NODES``: one line per node, with the NodeAddr SLURM reaches it at."""
    return ["scontrol", "show", "node", "-o", compress_hostlist([h.name for h in spec.hosts])]


def parse_node_addresses(text: str) -> dict[str, str]:
    """``scontrol show node -o`` lines -> {NodeName: NodeAddr}."""
    addresses = {}
    for line in text.splitlines():
        fields = dict(item.split("=", 1) for item in line.split() if "=" in item)
        if fields.get("NodeName") and fields.get("NodeAddr"):
            addresses[fields["NodeName"]] = fields["NodeAddr"]
    return addresses


def with_node_addresses(spec: ClusterSpec, addresses: Mapping[str, str]) -> ClusterSpec:
    """The spec with each node's address SLURM's NodeAddr, where the inventory gave none (the
    address is the name): a NodeName need not resolve (``NodeName=n1 NodeAddr=10.1.0.7``),
    and torchrun's ``--master-addr`` must."""
    hosts = tuple(replace(h, address=addresses[h.name])
                  if h.address == h.name and addresses.get(h.name) else h for h in spec.hosts)
    return replace(spec, hosts=hosts)


def uniform_host_problem(spec: ClusterSpec) -> Optional[str]:
    """srun runs one command on every node: hosts must share python, env and workdir."""
    first = spec.hosts[0]
    for host in spec.hosts[1:]:
        for field in ("python", "env", "workdir"):
            if getattr(host, field) != getattr(first, field):
                return (f"with --launcher slurm every node runs one command, but {host.name} "
                        f"has another {field} than {first.name}")
    return None


def plan_srun_stage0(spec: ClusterSpec, deadline_s: float) -> str:
    template = spec.hosts[0]
    argv = stage0_argv(template, deadline_s, master_address(spec)) + \
        ["--slurm-hosts", _names(spec)]
    return shlex.join([*srun_prefix(spec), "/bin/sh", "-c", remote_command(template, argv)])


def plan_srun_rendezvous_check(spec: ClusterSpec, window_s: float) -> tuple[str, str]:
    """The rendezvous check as two srun steps run side by side: the listener on the master
    node, and one ``reach`` per node (each names itself from --slurm-hosts)."""
    check = plan_rendezvous_check(spec, window_s)
    master = spec.master_host
    listen = shlex.join(["srun", "--nodes=1", "--ntasks=1", f"--nodelist={master.name}",
                         "--label", "--overlap", "--kill-on-bad-exit=0",
                         f"--job-name={JOB_NAME}", "/bin/sh", "-c", check.listen_command])
    template = spec.hosts[0]
    reach = remote_command(template, [
        template.python, "-m", "ddpcheck.remote.agent", "reach", "--address", master_address(spec),
        "--port", str(spec.rendezvous_port), "--timeout", f"{window_s:g}",
        "--slurm-hosts", _names(spec)])
    return listen, shlex.join([*srun_prefix(spec), "/bin/sh", "-c", reach])


def plan_srun_launch(spec: ClusterSpec, slots_by_host: Mapping[str, int], backend: Backend,
                     options: LaunchOptions = LaunchOptions(),
                     run_id: Optional[str] = None) -> str:
    """One srun step: on each node the agent fills in its node rank, ranks and name."""
    template = spec.hosts[0]
    world_size = sum(slots_by_host[h.name] for h in spec.hosts)
    argv = launch_argv(spec, template, NODE_RANK_TOKEN, NPROC_TOKEN, HOST_TOKEN, world_size,
                       backend, options, run_id)
    split = argv.index("--")
    argv[split:split] = ["--slurm-hosts", _names(spec), "--slurm-slots",
                         ",".join(str(slots_by_host[h.name]) for h in spec.hosts)]
    return shlex.join([*srun_prefix(spec), "/bin/sh", "-c", remote_command(template, argv)])


def _names(spec: ClusterSpec) -> str:
    return ",".join(h.name for h in spec.hosts)


# ----------------------------------------------------------------------------- srun output


@dataclass(frozen=True)
class TaskOutput:
    """What one srun task (one node) printed, and its exit code when srun reported one."""

    task: int
    host: Optional[str]  # from the agent's "node" line
    text: str
    exit_code: Optional[int] = None
    srun_error: Optional[str] = None


def split_srun_output(text: str) -> tuple[dict[int, TaskOutput], list[str]]:
    """srun --label output -> per-task output, and srun's own (unlabelled) lines. A task's
    line that srun cut into full chunks is joined again."""
    lines: dict[int, list[str]] = {}
    hosts: dict[int, str] = {}
    own: list[str] = []
    for task, content in _task_lines(text, own):
        if content.startswith(f"{MARK} node "):
            host = _node_host(content)
            if host:
                hosts[task] = host
            continue
        lines.setdefault(task, []).append(content)
    errors = _task_errors(own)
    tasks = {}
    for task in sorted(set(lines) | set(hosts) | set(errors)):
        what = errors.get(task)
        code = _EXIT_CODE.search(what) if what else None
        tasks[task] = TaskOutput(task, hosts.get(task), "\n".join(lines.get(task, [])),
                                 int(code.group(1)) if code else None, what)
    return tasks, own


def outputs_by_host(spec: ClusterSpec, tasks: Mapping[int, TaskOutput]) -> dict[str, TaskOutput]:
    """Each task's output under its host: the host its agent named, else (the agent never
    started) the task id's host in node order, as srun's block distribution places them."""
    names = [h.name for h in spec.hosts]
    by_host: dict[str, TaskOutput] = {}
    for task in tasks.values():
        if task.host in names:
            by_host[task.host] = task
    for task in tasks.values():
        if task.host is None and task.task < len(names) and names[task.task] not in by_host:
            by_host[names[task.task]] = task
    return by_host


def _task_lines(text: str, own: list[str]) -> list[tuple[int, str]]:
    """(task, line) in srun's order, pieces of a long line joined; srun's own lines go to
    ``own``."""
    joined: list[tuple[int, str]] = []
    open_line: dict[int, int] = {}  # task -> index in joined of its line still going on
    for raw in text.splitlines():
        line = raw.replace("\r", "")
        match = _LABEL.match(line)
        if match is None:
            if line.strip():
                own.append(line)
            continue
        task, content = int(match.group(1)), match.group(2)
        index = open_line.pop(task, None)
        if index is not None:
            joined[index] = (task, joined[index][1] + content)
        else:
            index = len(joined)
            joined.append((task, content))
        if len(content.encode("utf-8", "surrogateescape")) == SRUN_CHUNK_BYTES:
            open_line[task] = index
    return joined


def _node_host(content: str) -> Optional[str]:
    import json

    try:
        value = json.loads(content.split(" ", 2)[2])
    except (ValueError, IndexError):
        return None
    return str(value.get("host")) if isinstance(value, dict) and value.get("host") else None


def _task_errors(own: Sequence[str]) -> dict[int, str]:
    """``srun: error: node3: tasks 0-1: Exited with exit code 2`` -> {0: ..., 1: ...}."""
    errors: dict[int, str] = {}
    for line in own:
        match = _SRUN_TASK_ERROR.match(line.strip())
        if match is None:
            continue
        for part in match.group("tasks").split(","):
            low, _, high = part.partition("-")
            if not low.isdigit() or (high and not high.isdigit()):
                continue
            for task in range(int(low), int(high or low) + 1):
                errors[task] = f"{match.group('node')}: {match.group('what')}"
    return errors
