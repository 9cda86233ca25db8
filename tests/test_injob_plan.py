"""engine.instore: a node plans its own torchrun from node 0's plan, never runs a command line
read from the store, and refuses a plan that does not fit its job."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from ddpcheck.analyze.bandwidth import gang_sweep_findings
from ddpcheck.config.jobenv import resolve
from ddpcheck.core.busbw import Collective, CollectiveRow
from ddpcheck.engine.instore import launch_key, node_launch_command, node_host
from ddpcheck.model.checks import Check
from ddpcheck.model.records import RankRecord, RankStatus, Severity
from ddpcheck.plan.bandwidth import IN_JOB_SWEEP, SweepProgram, plan_round
from ddpcheck.plan.dryrun import in_job_steps, render
from ddpcheck.model.spec import Backend, ClusterSpec
from ddpcheck.plan.cmdlines import LaunchOptions, plan_launch
from ddpcheck.transport.store import StoreError

PLACE = resolve({}, {"PET_NNODES": "3", "PET_NODE_RANK": "1", "PET_MASTER_ADDR": "h1",
                     "PET_MASTER_PORT": "29500"})
PLAN = {"hosts": [["h1", 2], ["h2", 2], ["h3", 2]], "backend": "gloo", "deadline_s": 170.0,
        "run_id": "0123456789ab"}


def test_a_node_plans_the_command_node_0_would_plan_for_it() -> None:
    own = node_host(PLACE, "h2", "10.0.0.2", "/opt/venv/bin/python")
    mine = node_launch_command(PLACE, own, LaunchOptions(), PLAN)
    spec = ClusterSpec(hosts=(node_host(PLACE, "h1", "h1", "/usr/bin/python3"), own,
                              node_host(PLACE, "h3", "10.0.0.3", "/usr/bin/python3")),
                       rendezvous_port=29501, in_job=True)
    node0 = plan_launch(spec, {"h1": 2, "h2": 2, "h3": 2}, Backend.GLOO,
                        LaunchOptions(deadline_s=170.0), run_id="0123456789ab")[1].command
    assert mine == node0
    assert "/opt/venv/bin/python -m ddpcheck.remote.agent launch --deadline 170" in mine
    assert "--node-rank 1 --nproc-per-node 2 --master-addr h1 --master-port 29501" in mine


@pytest.mark.parametrize("change", [
    {"hosts": [["h1", 2], ["h2", 2]]},  # not this job's node count
    {"backend": "rm -rf /"},
    {"run_id": "x; reboot"},
    {"deadline_s": -1},
    {"hosts": [["h1", 2], ["h2", 0], ["h3", 2]]},
    {"backend": None},
])
def test_a_plan_that_does_not_fit_is_refused(change: dict) -> None:
    own = node_host(PLACE, "h2", "10.0.0.2", "/opt/venv/bin/python")
    with pytest.raises(StoreError, match="node 0's plan"):
        node_launch_command(PLACE, own, LaunchOptions(), {**PLAN, **change})


def test_a_node_plans_the_sweep_node_0_would_plan_for_it_from_the_posted_shape() -> None:
    """--bandwidth: node 0 posts the sweep's shape, never a command; the node's own
    command is the one node 0 plans for it with the same rank program."""
    own = node_host(PLACE, "h2", "10.0.0.2", "/opt/venv/bin/python")
    sweep = replace(IN_JOB_SWEEP, max_bytes=4 << 20)
    shape = json.loads(json.dumps(sweep.to_dict()))  # as it crosses the store
    mine = node_launch_command(PLACE, own, LaunchOptions(), {**PLAN, "sweep": shape})
    spec = ClusterSpec(hosts=(node_host(PLACE, "h1", "h1", "/usr/bin/python3"), own,
                              node_host(PLACE, "h3", "10.0.0.3", "/usr/bin/python3")),
                       rendezvous_port=29501, in_job=True)
    node0 = plan_launch(spec, {"h1": 2, "h2": 2, "h3": 2}, Backend.GLOO,
                        LaunchOptions(deadline_s=170.0), run_id="0123456789ab",
                        rank_program=sweep)[1].command
    assert mine == node0
    assert ("-m ddpcheck.remote.sweep --host h2 --expected-world-size 6 --backend gloo"
            in mine)
    assert "--ops all_reduce -b 1048576 -e 4194304 -f 4 -n 10 -w 2" in mine
    assert SweepProgram.from_dict(shape) == sweep


@pytest.mark.parametrize("change", [
    {"ops": ["all_reduce; reboot"]},
    {"ops": []},
    {"max_bytes": 1 << 40},
    {"min_bytes": 0},
    {"iters": "many"},
    {"warmup": -1},
    {"factor": None},
])
def test_a_sweep_shape_that_does_not_fit_is_refused(change: dict) -> None:
    own = node_host(PLACE, "h2", "10.0.0.2", "/opt/venv/bin/python")
    shape = {**IN_JOB_SWEEP.to_dict(), **change}
    with pytest.raises(StoreError, match="node 0's plan"):
        node_launch_command(PLACE, own, LaunchOptions(), {**PLAN, "sweep": shape})


def test_launch_keys_keep_the_first_launch_as_it_was() -> None:
    assert [launch_key("decision", n) for n in (1, 2)] == ["decision", "decision.2"]
    assert f"{launch_key('result', 2)}/1" == "result.2/1"


def test_the_dry_run_shows_the_sweep_step_only_with_bandwidth() -> None:
    plain = render(in_job_steps(PLACE, "h2", "/usr/bin/python3", LaunchOptions(), 60.0))
    swept = render(in_job_steps(PLACE, "h2", "/usr/bin/python3", LaunchOptions(), 60.0,
                                sweep=IN_JOB_SWEEP))
    assert "remote.sweep" not in plain and "--bandwidth" not in plain
    assert "2b. --bandwidth: when the probe passed on every rank" in swept
    assert "-m ddpcheck.remote.sweep --host h2 --expected-world-size 6" in swept


def test_the_gang_sweeps_own_failures_are_errors_and_no_row_is_one() -> None:
    rows = [CollectiveRow(Collective.ALL_REDUCE, 1 << 18, 6, 1e-3, 0)]
    assert gang_sweep_findings({}, [RankRecord(rank=0, host="h1")], rows) == []
    failed = gang_sweep_findings(
        {"h3": "launch: no rank reported back"},
        [RankRecord(rank=2, host="h2", status=RankStatus.TIMEOUT, error="all_reduce hung")], [])
    assert [(f.severity, f.check, f.host, f.rank) for f in failed] == [
        (Severity.ERROR, Check.BANDWIDTH, "h3", None),
        (Severity.ERROR, Check.BANDWIDTH, "h2", 2)]
    assert "all_reduce hung" in failed[1].message
    assert [f.message for f in gang_sweep_findings({}, [], [])] == [
        "the bandwidth sweep measured no row"]


ROUND = {"hosts": [["h1", 1], ["h2", 1], ["h3", 1]], "backend": "gloo", "deadline_s": 60.0,
         "run_id": "0123abcd-2", "pairs": [["h3", "h2"]],
         "addresses": ["10.0.0.1", "10.0.0.2", "10.0.0.3"],
         "sweep": replace(IN_JOB_SWEEP, min_bytes=16 << 20, factor=1).to_dict()}


def test_a_node_plans_its_own_pair_job_from_the_rounds_shape() -> None:
    """A round of pair jobs: the node's command is the one ``plan_round`` gives it, the
    pair's first node its master at its posted address; a node in no pair runs nothing."""
    own = node_host(PLACE, "h2", "10.0.0.2", "/opt/venv/bin/python")
    mine = node_launch_command(PLACE, own, LaunchOptions(), ROUND)
    spec = ClusterSpec(hosts=(node_host(PLACE, "h1", "10.0.0.1", "/usr/bin/python3"), own,
                              node_host(PLACE, "h3", "10.0.0.3", "/usr/bin/python3")),
                       rendezvous_port=29501, in_job=True)
    planned = plan_round(spec, [("h3", "h2")], Backend.GLOO, LaunchOptions(deadline_s=60.0),
                         SweepProgram.from_dict(ROUND["sweep"]), run_id="0123abcd-2")
    assert mine == planned[0].launches[1].command
    assert "--nnodes 2 --node-rank 1 --nproc-per-node 1 --master-addr 10.0.0.3" in mine
    assert "--master-port 29501" in mine and "-e 16777216 -f 1" in mine
    node0 = resolve({}, {"PET_NNODES": "3", "PET_NODE_RANK": "0", "PET_MASTER_ADDR": "h1"})
    assert node_launch_command(node0, node_host(node0, "h1", "h1", "/usr/bin/python3"),
                               LaunchOptions(), ROUND) is None


@pytest.mark.parametrize("change", [
    {"pairs": [["h2", "h3"], ["h3", "h1"]]},  # a node in two pairs at once
    {"pairs": [["h2", "h9"]]},  # not a node of this job
    {"addresses": ["10.0.0.1", "10.0.0.2"]},
    {"addresses": ["10.0.0.1", "$(reboot)", "10.0.0.3"]},
    {"run_id": "0123abcd-2; reboot"},
])
def test_a_round_that_does_not_fit_is_refused(change: dict) -> None:
    own = node_host(PLACE, "h2", "10.0.0.2", "/opt/venv/bin/python")
    with pytest.raises(StoreError, match="node 0's plan"):
        node_launch_command(PLACE, own, LaunchOptions(), {**ROUND, **change})


def test_nodes_that_share_a_hostname_get_names_every_node_accepts_in_node_0s_plan() -> None:
    """Cloned images report one hostname: node 0 keeps the nodes apart by node rank, and the
    plan it posts with those names is one the other nodes accept (a "#" in a name made every
    other node refuse it, and node 0 blamed them for going away)."""
    from ddpcheck.engine.instore import NodeJoin, gang_hosts

    joined = {rank: NodeJoin(rank, "vm", f"10.0.0.{rank + 1}", "/usr/bin/python3")
              for rank in range(3)}
    node0 = resolve({}, {"PET_NNODES": "3", "PET_NODE_RANK": "0", "PET_MASTER_ADDR": "10.0.0.1",
                         "PET_MASTER_PORT": "29500"})
    hosts, names = gang_hosts(node0, joined)
    assert list(names.values()) == ["vm", "vm_1", "vm_2"]
    assert [h.address for h in hosts] == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    plan = {**PLAN, "hosts": [[name, 2] for name in names.values()]}
    own = node_host(PLACE, "vm", "10.0.0.2", "/usr/bin/python3")
    assert "--node-rank 1 --nproc-per-node 2" in node_launch_command(PLACE, own,
                                                                       LaunchOptions(), plan)
