"""config.jobenv: where a node stands in its job, from flags and the launcher's variables."""

from __future__ import annotations

import pytest

from ddpcheck.config.jobenv import resolve
from ddpcheck.model.errors import ConfigError

PYTORCHJOB = {"PET_NNODES": "4", "PET_NODE_RANK": "2", "PET_NPROC_PER_NODE": "8",
              "PET_MASTER_ADDR": "job-master-0", "PET_MASTER_PORT": "23456",
              "MASTER_ADDR": "other", "MASTER_PORT": "1"}


def test_a_pytorchjob_pod_reads_the_pet_variables_before_master_addr() -> None:
    place = resolve({}, PYTORCHJOB)
    assert (place.nnodes, place.node_rank, place.nproc_per_node, place.master_addr,
            place.master_port) == (4, 2, 8, "job-master-0", 23456)
    assert place.sources == {"nnodes": "PET_NNODES", "node_rank": "PET_NODE_RANK",
                             "nproc_per_node": "PET_NPROC_PER_NODE",
                             "master_addr": "PET_MASTER_ADDR", "master_port": "PET_MASTER_PORT"}
    assert place.store_port == 23456 and place.rendezvous_port == 23457


def test_flags_come_first() -> None:
    place = resolve({"nnodes": 2, "node_rank": 1, "master_addr": "10.0.0.1", "master_port": 29400,
                     "nproc_per_node": None}, PYTORCHJOB)
    assert (place.nnodes, place.node_rank, place.master_addr, place.master_port) == \
        (2, 1, "10.0.0.1", 29400)
    assert place.sources["nnodes"] == "--nnodes" and place.sources["nproc_per_node"] == \
        "PET_NPROC_PER_NODE"
    assert "nnodes=2 (from --nnodes)" in place.describe()


def test_a_jobset_pod_takes_its_completion_index_as_node_rank() -> None:
    place = resolve({"nnodes": 3}, {"JOB_COMPLETION_INDEX": "1",
                                    "MASTER_ADDR": "train-workers-0-0.train"})
    assert (place.node_rank, place.master_addr, place.master_port) == \
        (1, "train-workers-0-0.train", 29500)
    assert place.sources["node_rank"] == "JOB_COMPLETION_INDEX"
    assert place.sources["master_port"] == "default"


def test_a_slurm_task_takes_the_first_node_of_the_allocation_as_master() -> None:
    place = resolve({}, {"SLURM_NNODES": "3", "SLURM_NODEID": "2",
                         "SLURM_JOB_NODELIST": "gpu[007-009]"})
    assert (place.nnodes, place.node_rank, place.master_addr) == (3, 2, "gpu007")
    assert place.nproc_per_node is None  # preflight's default: GPUs, or 2 ranks on gloo


@pytest.mark.parametrize("word", ["auto", "gpu", "cpu"])
def test_torchruns_nproc_words_leave_the_default(word: str) -> None:
    assert resolve({}, {**PYTORCHJOB, "PET_NPROC_PER_NODE": word}).nproc_per_node is None


@pytest.mark.parametrize("environ, words", [
    ({**PYTORCHJOB, "PET_NNODES": "four"}, "PET_NNODES='four' is not a whole number"),
    ({**PYTORCHJOB, "PET_NODE_RANK": "4"}, "PET_NODE_RANK=4 but PET_NNODES=4"),
    ({**PYTORCHJOB, "PET_MASTER_PORT": "70000"}, "PET_MASTER_PORT=70000: must be below"),
    ({**PYTORCHJOB, "PET_NPROC_PER_NODE": "0"}, "PET_NPROC_PER_NODE='0' must be at least 1"),
    ({"PET_NNODES": "2", "PET_NODE_RANK": "0"}, "nothing sets master_addr: --master-addr or "
                                                "PET_MASTER_ADDR or MASTER_ADDR"),
    ({"SLURM_NNODES": "2", "SLURM_NODEID": "0", "SLURM_JOB_NODELIST": "n[1-"},
     "SLURM_JOB_NODELIST='n[1-': cannot read it"),
])
def test_a_bad_or_missing_value_is_named(environ: dict, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        resolve({}, environ)
    assert words in str(caught.value)


def test_the_cli_says_it_and_exits_2(capsys, monkeypatch) -> None:
    from ddpcheck.cli import main

    for name in ("PET_NNODES", "PET_NODE_RANK", "PET_MASTER_ADDR", "MASTER_ADDR",
                 "SLURM_NNODES", "SLURM_NODEID", "SLURM_JOB_NODELIST", "JOB_COMPLETION_INDEX"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PET_NNODES", "2")
    monkeypatch.setenv("PET_NODE_RANK", "x")
    monkeypatch.setenv("PET_MASTER_ADDR", "h1")
    assert main(["preflight", "--in-job"]) == 2
    assert "ddpcheck: environment: PET_NODE_RANK='x' is not a whole number" in \
        capsys.readouterr().err


def test_the_dry_run_says_what_it_read_and_this_nodes_commands(capsys, monkeypatch) -> None:
    from ddpcheck.cli import main

    for name, value in PYTORCHJOB.items():
        monkeypatch.setenv(name, value)
    assert main(["preflight", "--in-job", "--dry-run", "--nproc-per-node", "2"]) == 0
    out = capsys.readouterr().out
    assert "# read nproc_per_node=2 (from --nproc-per-node)" in out
    assert "# read master_addr=job-master-0 (from PET_MASTER_ADDR)" in out
    assert "join the store at job-master-0:23456" in out
    assert "-m ddpcheck.remote.agent facts" in out
    assert "--nnodes 4 --node-rank 2 --nproc-per-node 2 --master-addr job-master-0 " \
           "--master-port 23457" in out


def test_without_nproc_a_cpu_node_plans_two_gloo_ranks_as_preflight_does(capsys,
                                                                          monkeypatch) -> None:
    from ddpcheck.cli import main

    for name, value in PYTORCHJOB.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("PET_NPROC_PER_NODE")
    assert main(["preflight", "--in-job", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "# read nproc_per_node=auto (from default)" in out
    assert "--nproc-per-node 2 " in out and "--expected-world-size 8 --backend gloo" in out
