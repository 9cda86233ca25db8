"""engine.instore: a node plans its own torchrun from node 0's plan, never runs a command line
read from the store, and refuses a plan that does not fit its job."""

from __future__ import annotations

import pytest

from ddpcheck.config.jobenv import resolve
from ddpcheck.engine.instore import node_launch_command, node_host
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
