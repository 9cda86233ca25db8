"""Unit tests for ddpcheck.plan.slurm and the agent's srun side: SLURM's variables as real jobs
write them, the planned srun steps (golden), and srun --label output split per node.

There is no SLURM on the test machines: the srun commands are pinned by golden files, not run.
"""

from __future__ import annotations

import shlex

import pytest

from goldenfile import check_golden

from ddpcheck.remote.agent import fill_node_tokens, slurm_node
from ddpcheck.plan.cmdlines import LaunchOptions
from ddpcheck.config.slurmenv import (SlurmError, parse_gpu_count, parse_nodelist,
                                      parse_tasks_per_node, slurm_allocation)
from ddpcheck.plan.slurm import (SRUN_CHUNK_BYTES, outputs_by_host, plan_srun_launch,
                                 plan_srun_rendezvous_check, plan_srun_stage0, split_srun_output,
                                 uniform_host_problem)
from ddpcheck.model.spec import Backend, ClusterSpec, HostSpec

# SLURM_JOB_NODELIST values as sbatch/salloc set them on real clusters.
NODELISTS = [
    ("gpu001", ["gpu001"]),
    ("gpu[001-004,010]", ["gpu001", "gpu002", "gpu003", "gpu004", "gpu010"]),
    ("node[1-3]", ["node1", "node2", "node3"]),
    ("node[08-11]", ["node08", "node09", "node10", "node11"]),
    ("nid[00001-00003]", ["nid00001", "nid00002", "nid00003"]),  # Cray
    ("a[1-2]-b[3-4]", ["a1-b3", "a1-b4", "a2-b3", "a2-b4"]),  # cartesian product
    ("rack[1-2]-node[01,03]", ["rack1-node01", "rack1-node03", "rack2-node01", "rack2-node03"]),
    ("gpu[01-02],cpu[1,3],login1", ["gpu01", "gpu02", "cpu1", "cpu3", "login1"]),
    ("n[1-2,5-6,9]", ["n1", "n2", "n5", "n6", "n9"]),
    ("dgx-h100-[001-002].cluster.local",
     ["dgx-h100-001.cluster.local", "dgx-h100-002.cluster.local"]),
    ("[1-2]node", ["1node", "2node"]),
    ("x[098-101]", ["x098", "x099", "x100", "x101"]),
    ("gpu-a100-[1-2],gpu-h100-[01-02]",
     ["gpu-a100-1", "gpu-a100-2", "gpu-h100-01", "gpu-h100-02"]),
]

BAD_NODELISTS = [
    ("gpu[001-004", "unclosed '['"),
    ("gpu001-004]", "unbalanced ']'"),
    ("gpu[[1-2]]", "nested '['"),
    ("gpu[1-[2-3]]", "nested '['"),
    ("gpu[]", "empty range"),
    ("gpu[4-1]", "goes down"),
    ("gpu[1-2-3]", "is not a number"),
    ("gpu[a-c]", "is not a number"),
    ("gpu[1,,2]", "empty element"),
    ("gpu1,,gpu2", "empty host name"),
    ("gpu 1", "invalid character"),
    ("gpu[1-999999]", "more than"),
]


@pytest.mark.parametrize("text, nodes", NODELISTS)
def test_nodelist_real_world_forms(text: str, nodes: list[str]) -> None:
    assert parse_nodelist(text) == nodes


@pytest.mark.parametrize("text, words", BAD_NODELISTS)
def test_nodelist_invalid_forms_rejected_naming_the_variable(text: str, words: str) -> None:
    with pytest.raises(SlurmError) as caught:
        parse_nodelist(text)
    assert caught.value.variable == "SLURM_JOB_NODELIST"
    assert words in str(caught.value) and repr(text) in str(caught.value)


@pytest.mark.parametrize("text, nodes, counts", [
    ("1", 1, (1,)),
    ("4", 3, (4, 4, 4)),
    ("2(x3),1", 4, (2, 2, 2, 1)),
    ("8(x2)", 2, (8, 8)),
    ("1,2,3", 3, (1, 2, 3)),
    ("3(x1),2(x2)", 3, (3, 2, 2)),
])
def test_tasks_per_node(text: str, nodes: int, counts: tuple[int, ...]) -> None:
    assert parse_tasks_per_node(text, nodes) == counts


@pytest.mark.parametrize("text, nodes, words", [
    ("2(x3)", 4, "gives 3 node(s), the nodelist has 4"),
    ("2(x3),1", 2, "gives 4 node(s)"),
    ("2(3)", 3, "expected N or N(xM)"),
    ("x", 1, "expected N or N(xM)"),
    ("0", 1, "must be >= 1"),
    ("", 1, "expected N or N(xM)"),
])
def test_tasks_per_node_rejects(text: str, nodes: int, words: str) -> None:
    with pytest.raises(SlurmError, match=r"SLURM_TASKS_PER_NODE") as caught:
        parse_tasks_per_node(text, nodes)
    assert words in str(caught.value)


@pytest.mark.parametrize("text, count", [
    ("4", 4), ("a100:4", 4), ("gpu:a100:2", 2), ("a100:2,v100:2", 4), ("", None), ("0", None),
])
def test_gpu_count(text: str, count) -> None:
    assert parse_gpu_count(text, "SLURM_GPUS_PER_NODE") == count


def test_gpu_count_rejects_garbage() -> None:
    with pytest.raises(SlurmError, match="SLURM_GPUS_PER_NODE.*'a100:x'"):
        parse_gpu_count("a100:x", "SLURM_GPUS_PER_NODE")


def test_allocation_slots_gpus_then_tasks_then_auto() -> None:
    base = {"SLURM_JOB_NODELIST": "gpu[01-03]", "SLURM_JOB_ID": "4242"}
    gpus = slurm_allocation({**base, "SLURM_TASKS_PER_NODE": "1(x3)",
                             "SLURM_GPUS_PER_NODE": "h100:8", "SLURM_GPUS_ON_NODE": "4"})
    assert gpus.nodes == ("gpu01", "gpu02", "gpu03") and gpus.slots == (8, 8, 8)
    assert gpus.describe() == "SLURM job 4242 (gpu[01-03])"
    on_node = slurm_allocation({**base, "SLURM_GPUS_ON_NODE": "4"})
    assert on_node.slots == (4, 4, 4)
    tasks = slurm_allocation({**base, "SLURM_TASKS_PER_NODE": "2(x2),1"})
    assert tasks.slots == (2, 2, 1)
    one_task = slurm_allocation({**base, "SLURM_TASKS_PER_NODE": "1(x3)"})
    assert one_task.slots == (None, None, None)  # stage 0 counts the GPUs
    fallback = slurm_allocation({"SLURM_NODELIST": "n[1-2]"})
    assert fallback.nodes == ("n1", "n2") and fallback.describe() == "SLURM allocation (n[1-2])"


def test_allocation_outside_slurm_and_repeated_node() -> None:
    with pytest.raises(SlurmError, match="SLURM_JOB_NODELIST: not set"):
        slurm_allocation({})
    with pytest.raises(SlurmError, match="names a node twice"):
        slurm_allocation({"SLURM_JOB_NODELIST": "n[1-2],n1"})


# ----------------------------------------------------------------------------- srun plans


def slurm_spec() -> ClusterSpec:
    common = dict(python="/opt/venv/bin/python", env={"NCCL_SOCKET_IFNAME": "ib0"},
                  workdir="/scratch/ddp check")
    hosts = tuple(HostSpec(name=f"gpu{i:02d}", address=f"gpu{i:02d}", **common)
                  for i in (1, 2, 3))
    return ClusterSpec(hosts=hosts, rendezvous_port=29777, source="SLURM job 7 (gpu[01-03])")


def test_srun_commands_golden() -> None:
    spec = slurm_spec()
    slots = {"gpu01": 8, "gpu02": 8, "gpu03": 4}
    options = LaunchOptions(deadline_s=90, rendezvous_timeout_s=20, collective_timeout_s=25,
                            iterations=5)
    listen, reach = plan_srun_rendezvous_check(spec, 5.0)
    text = ("# stage 0\n" + plan_srun_stage0(spec, 58) + "\n# rendezvous check\n" + listen +
            "\n" + reach + "\n# launch\n" +
            plan_srun_launch(spec, slots, Backend.NCCL, options, run_id="r1") + "\n")
    check_golden("srun_plan.txt", text)


def test_srun_launch_runs_the_agent_with_placeholders_per_node() -> None:
    spec = slurm_spec()
    argv = shlex.split(plan_srun_launch(spec, {"gpu01": 2, "gpu02": 2, "gpu03": 1},
                                        Backend.GLOO))
    assert argv[:4] == ["srun", "--nodes=3", "--ntasks=3", "--ntasks-per-node=1"]
    assert "--nodelist=gpu[01-03]" in argv and "--label" in argv
    inner = shlex.split(argv[argv.index("-c") + 1])
    assert inner[:5] == ["cd", "/", "&&", "exec", "env"]
    assert "DDPCHECK_WORKDIR=/scratch/ddp check" in inner
    launch = inner[inner.index("launch"):]
    assert launch[launch.index("--slurm-hosts") + 1] == "gpu01,gpu02,gpu03"
    assert launch[launch.index("--slurm-slots") + 1] == "2,2,1"
    torchrun = launch[launch.index("--") + 1:]
    filled = fill_node_tokens(torchrun, 2, 1, "gpu03")
    assert filled[filled.index("--node-rank") + 1] == "2"
    assert filled[filled.index("--nproc-per-node") + 1] == "1"
    assert filled[filled.index("--host") + 1] == "gpu03"
    assert filled[filled.index("--expected-world-size") + 1] == "5"
    assert filled[filled.index("--master-addr") + 1] == "gpu01"


def test_uniform_hosts_required_for_one_srun_command() -> None:
    spec = slurm_spec()
    assert uniform_host_problem(spec) is None
    odd = ClusterSpec(hosts=(spec.hosts[0], HostSpec(name="gpu09", address="gpu09")))
    assert "gpu09 has another python" in uniform_host_problem(odd)


@pytest.mark.parametrize("env, expected", [
    ({"SLURMD_NODENAME": "gpu02", "SLURM_NODEID": "0"}, (1, "gpu02")),
    ({"SLURMD_NODENAME": "gpu03.cluster", "SLURM_NODEID": "0"}, (2, "gpu03")),
    ({"SLURM_NODEID": "1"}, (1, "gpu02")),
])
def test_agent_finds_its_node(env, expected) -> None:
    assert slurm_node(["gpu01", "gpu02", "gpu03"], env) == expected


def test_agent_outside_the_node_list_says_so() -> None:
    with pytest.raises(ValueError, match="gpu07.*not one of gpu01, gpu02"):
        slurm_node(["gpu01", "gpu02"], {"SLURMD_NODENAME": "gpu07", "SLURM_NODEID": "5"})


# ----------------------------------------------------------------------------- srun output

SRUN_OUTPUT = """\
 1: @@DDPCHECK node {"host": "gpu01", "node_rank": 0}
 0: @@DDPCHECK node {"host": "gpu02", "node_rank": 1}
 1: @@DDPCHECK facts {"hostname": "gpu01", "gpus": 8}
 0: @@DDPCHECK facts {"hostname": "gpu02", "gpus": 8}
 0: some warning
srun: error: gpu03: task 2: Exited with exit code 127
 2: /bin/sh: 1: /opt/venv/bin/python: not found
"""


def test_split_srun_output_by_agent_named_node() -> None:
    tasks, own = split_srun_output(SRUN_OUTPUT)
    assert own == ["srun: error: gpu03: task 2: Exited with exit code 127"]
    by_host = outputs_by_host(slurm_spec(), tasks)
    assert by_host["gpu01"].text == '@@DDPCHECK facts {"hostname": "gpu01", "gpus": 8}'
    assert by_host["gpu02"].text.splitlines()[1] == "some warning"
    # No agent ran on task 2: it is placed by task id, with srun's exit code.
    assert by_host["gpu03"].exit_code == 127 and "not found" in by_host["gpu03"].text


def test_split_srun_output_task_ranges_and_silent_nodes() -> None:
    tasks, own = split_srun_output(
        "srun: error: Unable to create step for job 7: Invalid node name specified\n"
        "srun: error: gpu01: tasks 0-1: Killed\n")
    assert sorted(tasks) == [0, 1] and tasks[1].srun_error == "gpu01: Killed"
    assert tasks[0].exit_code is None and tasks[0].text == ""
    assert own[0].startswith("srun: error: Unable to create step")


def test_split_srun_output_joins_lines_srun_cut_into_chunks() -> None:
    # slurmstepd sends at most 1024 bytes per message and srun labels each as a line: a long
    # record from two nodes arrives as interleaved pieces (as a real srun printed it).
    record = '@@DDPCHECK facts {"hostname": "gpu01", "pad": "' + "x" * 2500 + '"}'
    pieces = [record[i:i + SRUN_CHUNK_BYTES] for i in range(0, len(record), SRUN_CHUNK_BYTES)]
    other = '@@DDPCHECK facts {"hostname": "gpu02", "pad": "' + "y" * 1500 + '"}'
    exact = "z" * SRUN_CHUNK_BYTES  # a line of exactly one chunk: the next piece is empty
    text = "\n".join([f"0: {pieces[0]}", f"1: {other[:SRUN_CHUNK_BYTES]}", f"0: {pieces[1]}",
                      f"1: {other[SRUN_CHUNK_BYTES:]}", f"0: {pieces[2]}", f"1: {exact}",
                      "1: ", "1: after"]) + "\n"
    tasks, own = split_srun_output(text)
    assert own == [] and tasks[0].text == record
    assert tasks[1].text.splitlines() == [other, exact, "after"]
