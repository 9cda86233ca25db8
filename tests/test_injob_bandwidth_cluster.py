"""``ddpcheck preflight --in-job --bandwidth`` on namespace hosts with no sshd: each node's
ddpcheck started in its own namespace with a PyTorchJob pod's environment (``PET_*``), gloo
across the bridge. After the probe passed, every node plans the sweep from node 0's posted shape
and runs it on the same ranks, then the rounds of node pairs; node 0's report carries the
nccl-tests table, the rows and the pairs. A node's link slowed with tc is named; a bad gang
runs no sweep. One cluster for the module."""

from __future__ import annotations

import pytest

from conftest import started_cluster
from test_injob_cluster import NODES, assert_nothing_left, errors, run_gang

pytestmark = pytest.mark.cluster

FAST = ["--skip", "compute,numerics,consistency"]  # the probe's world and collectives only
# every link shaped to this with tc: the network, not a CPU shared with other work, sets the
# busbw, so a healthy pair is never "slow" by chance
RATE_MBIT = 200.0


@pytest.fixture(scope="module")
def gang(tmp_path_factory):
    """Three namespace hosts h1..h3, no sshd, for the whole module."""
    for cluster in started_cluster(NODES, tmp_path_factory, "injobbw", sshd=False):
        for host in cluster.hosts:
            cluster.shape(host, RATE_MBIT)
        yield cluster


def test_a_healthy_gang_runs_the_sweep_after_the_probe_and_node_0_has_the_table(gang,
                                                                               tmp_path):
    runs, report = run_gang(gang, tmp_path, ["--timeout", "240", "--bandwidth", *FAST],
                            limit_s=300)
    for run in runs.values():
        assert run.exit_code == 0, run.output
        assert run.summary.endswith("OK: every check passed"), run.output
    for rank in (1, 2):  # each node planned its own sweep from node 0's posted shape
        assert "launching torchrun (the bandwidth sweep)" in runs[rank].output, runs[rank].output
    # node 0: preflight's table, then the sweep's nccl-tests table and its footer
    table = runs[0].output
    assert "# Bandwidth sweep: the same ranks, after the probe passed" in table, table
    assert "# Avg bus bandwidth" in table and "all_reduce" in table, table
    assert report["verdict"] == "ok" and not errors(report), report["findings"]
    assert report["world_size"] == 6
    assert sorted(r["rank"] for r in report["ranks"] if r["status"] == "ok") == list(range(6))
    rows = report["collectives"]  # as `ddpcheck bandwidth --json` has them
    assert [(r["op"], r["bytes"]) for r in rows] == [
        ("all_reduce", 1 << 20), ("all_reduce", 4 << 20), ("all_reduce", 16 << 20)], rows
    assert all(r["busbw_gbs"] > 0 and r["world_size"] == 6 and r["wrong"] == 0
               for r in rows), rows
    summary = report["bandwidth"]
    assert summary["avg_busbw_gbs"] > 0 and summary["out_of_bounds"] == 0, summary
    assert summary["ops"] == ["all_reduce"] and "skipped" not in summary, summary
    # then the pairs of nodes: none slow, so nothing named
    pairwise = report["pairwise"]
    assert pairwise["pairs_measured"] >= 2 and pairwise["rounds"] <= 3, pairwise
    assert pairwise["suspect_hosts"] == [] and pairwise["suspect_links"] == [], pairwise
    assert all(p["busbw_gbs"] > 0 for p in report["pairs"]), report["pairs"]
    assert "# Pairwise busbw (GB/s), all_reduce" in table, table
    assert_nothing_left(gang)


def test_a_node_with_a_slow_link_is_named_by_the_pairs_of_nodes(gang, tmp_path):
    """h3's link shaped to a quarter of the others' with tc: the sweep passes (no
    --min-busbw), then the pair rounds name h3, on every node's verdict too."""
    slow = gang.hosts[2]
    gang.shape(slow, RATE_MBIT / 4)
    try:
        runs, report = run_gang(gang, tmp_path, ["--timeout", "240", "--bandwidth", "4M",
                                                 *FAST], limit_s=300)
    finally:
        gang.shape(slow, RATE_MBIT)
    assert all(run.exit_code == 1 for run in runs.values()), [r.output for r in runs.values()]
    assert [r["bytes"] for r in report["collectives"]] == [1 << 20, 4 << 20]
    assert report["pairwise"]["suspect_hosts"] == [slow.name], report["pairwise"]
    named = [f for f in errors(report) if f["host"] == slow.name]
    assert named and named[0]["root_cause"], report["findings"]
    assert slow.name in runs[2].summary, runs[2].output
    assert_nothing_left(gang)


def test_a_gang_whose_probe_failed_runs_no_sweep(gang, tmp_path):
    """Stage 0 passes everywhere, but the user's set-up seeds every rank differently: the
    probe's seed check fails the gang, and no node starts the sweep."""
    setup = tmp_path / "user_setup.py"
    setup.write_text("import os, random\nimport torch\n\n"
                     "def seed_everything(seed):\n"
                     "    seed = seed + int(os.environ['RANK'])  # the bug: a seed per rank\n"
                     "    random.seed(seed)\n    torch.manual_seed(seed)\n")
    runs, report = run_gang(gang, tmp_path, [
        "--timeout", "120", "--bandwidth", "--skip", "compute,numerics", "--seed", "7",
        "--setup", f"{setup}:seed_everything"], limit_s=160)
    assert all(run.exit_code == 1 for run in runs.values()), [r.output for r in runs.values()]
    assert [f for f in errors(report) if f["check"] == "seed"], report["findings"]
    assert len([r for r in report["ranks"] if r["status"] == "ok"]) == 6  # the probe ran
    assert report["bandwidth"]["skipped"] == "not run: the probe ended fail", report["bandwidth"]
    assert "avg_busbw_gbs" not in report["bandwidth"]
    assert {r["bytes"] for r in report["collectives"]} <= {1 << 20}  # the probe's own row
    assert "no bandwidth sweep: the probe ended fail" in runs[0].output, runs[0].output
    assert not any("(the bandwidth sweep)" in run.output for run in runs.values())
    assert_nothing_left(gang)
