"""The command ``--launcher slurm`` gives srun, run here the way srun would run it: once per
node, with the environment srun sets (SLURMD_NODENAME, SLURM_NODEID), output labelled by task
id. Real agent, real torchrun, two "nodes" on this machine with different rank counts.
srun itself is not here: its own behaviour is not tested (see test_slurm.py's golden)."""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys

from ddpcheck.collect.hostoutput import parse_output
from ddpcheck.plan.cmdlines import LaunchOptions
from ddpcheck.plan.slurm import outputs_by_host, plan_srun_launch, split_srun_output
from ddpcheck.model.spec import Backend, ClusterSpec, HostSpec


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_srun_task_command_runs_each_nodes_share(tmp_path):
    common = dict(python=sys.executable, workdir=str(tmp_path / "work"))
    spec = ClusterSpec(hosts=(HostSpec(name="n1", address="127.0.0.1", **common),
                              HostSpec(name="n2", address="127.0.0.1", **common)),
                       rendezvous_port=free_port())
    command = plan_srun_launch(spec, {"n1": 2, "n2": 1}, Backend.GLOO,
                               LaunchOptions(deadline_s=90, rendezvous_timeout_s=30,
                                             collective_timeout_s=30, iterations=3))
    argv = shlex.split(command)
    task_argv = argv[argv.index("/bin/sh"):]  # what srun starts on every node
    # srun's task ids need not follow our node order: task 0 lands on n2 here.
    nodes = {0: ("n2", "1"), 1: ("n1", "0")}
    procs = {task: subprocess.Popen(task_argv, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True,
                                    env={**os.environ, "SLURMD_NODENAME": name,
                                         "SLURM_NODEID": node_id, "SLURM_PROCID": str(task)})
             for task, (name, node_id) in nodes.items()}
    labelled = []
    try:
        for task, proc in procs.items():
            out = proc.communicate(timeout=150)[0]
            labelled += [f"{task}: {line}" for line in out.splitlines()]
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
    assert [p.returncode for p in procs.values()] == [0, 0], "\n".join(labelled)
    tasks, own = split_srun_output("\n".join(labelled))
    by_host = outputs_by_host(spec, tasks)
    assert sorted(by_host) == ["n1", "n2"] and by_host["n2"].task == 0
    ranks = {host: parse_output(task.text).ranks for host, task in by_host.items()}
    assert sorted(r["rank"] for r in ranks["n1"]) == [0, 1]  # node rank 0: ranks 0-1
    assert [r["rank"] for r in ranks["n2"]] == [2]
    assert all(r["status"] == "ok" and r["world_size"] == 3 and r["host"] == host
               for host, records in ranks.items() for r in records)
