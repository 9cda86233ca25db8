"""A slow host's network, for real: a 3-host x 2-rank DDP job (gloo, torchrun) whose step is an
all_reduce of the gradients, and h3's link shaped with tc to 20 Mbit/s each way. No rank
arrives late (every rank waits inside the same collective), so the arrival rules say nothing;
``ddpcheck hang`` from outside names h3 and its ranks from their TCP connections; a Monitor in
the job names it first, on every rank, in the same words, which hang then repeats. Neither
calls the job hung, and no one is named while it is healthy.
"""

from __future__ import annotations

import time

import pytest

from test_straggler_cluster import STRAGGLERJOB, last_step
from test_straggler_reasons_cluster import hang, monitor_lines
from torchrunjob import start_job

pytestmark = pytest.mark.cluster

SLOW_MBIT = 20.0


def stragglers(report: dict) -> list[dict]:
    """Its slow ranks and links (a slow network is a ``slow_link`` warning)."""
    return [f for f in report["findings"] if f["check"] in ("straggler", "slow_link")]


@pytest.mark.parametrize("monitor", [False, True], ids=["without-ddpcheck", "with-monitor"])
def test_a_slow_hosts_network_is_named_from_its_connections(ns_cluster, tmp_path, monitor):
    hosts = ns_cluster.hosts[:3]
    job = start_job(ns_cluster, hosts, 2, 29695 + monitor, tmp_path,
                    ["--mark-every", "1", "--width", "256"]
                    + (["--use-monitor"] if monitor else []),
                    env={"DDPCHECK_HEARTBEAT_DIR": str(tmp_path / "beats")},
                    script=STRAGGLERJOB)
    try:
        job.wait_ready()
        time.sleep(3.0)
        done, healthy = hang(ns_cluster, tmp_path, "healthy")
        assert stragglers(healthy) == [], done.stdout + done.stderr
        assert done.returncode == 0, done.stdout + done.stderr

        ns_cluster.shape(hosts[2], SLOW_MBIT)
        try:
            onset = last_step(tmp_path, 4)
            deadline = time.monotonic() + 60
            while last_step(tmp_path, 4) < onset + 3:
                assert time.monotonic() < deadline, job.logs()[-3000:]
                time.sleep(0.3)
            if monitor:  # the Monitor names it first (the same rule and words), then hang
                deadline = time.monotonic() + 60
                while not [line for line in monitor_lines(job) if "network is slow" in line]:
                    assert time.monotonic() < deadline, job.logs()[-3000:]
                    time.sleep(0.3)
            done, report = hang(ns_cluster, tmp_path, "slow")
        finally:
            ns_cluster.shape(hosts[2], None)
        text = done.stdout + done.stderr
        found = stragglers(report)
        links = [f for f in found if f["check"] == "slow_link"]
        assert [(f["host"], f["rank"]) for f in links] == [("h3", None)], text
        assert "rank 4, 5 on h3: h3's network is slow" in links[0]["message"], text
        assert links[0]["severity"] == "warning", text
        assert not [f for f in found if f["host"] != "h3"], text
        if monitor:  # the Monitor's own words, as every rank logged them
            said = [line for line in monitor_lines(job) if "network is slow" in line]
            assert any(links[0]["message"].split(": ", 1)[1] in line for line in said), said
            assert all("rank 4, 5 on h3: h3's network is slow" in line for line in said), said
            assert {line.split("[", 1)[1].split(":rank")[0] for line in said} >= {"h1", "h2",
                                                                                  "h3"}
        assert done.returncode == 0, text  # a progressing job is never hung
        assert not [f for f in report["findings"] if f["severity"] == "error"], text
    finally:
        job.stop()
