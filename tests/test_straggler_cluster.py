"""Stragglers on the real namespace cluster: a real DDP job (gloo, torchrun, one rank per host)
with one rank made slow for real by a cgroup CPU quota (cpu.cfs_quota_us): the in-job Monitor
names it on every rank within a few steps, and stays silent over a long healthy stretch first.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import time

import pytest

import cpuquota
from torchrunjob import TorchrunJob, start_job

pytestmark = pytest.mark.cluster

STRAGGLERJOB = pathlib.Path(__file__).resolve().parent / "stragglerjob.py"
# a healthy stretch of this many steps (about 80 s on a loaded 2-core machine) names nobody
HEALTHY_STEPS = int(os.environ.get("DDPCHECK_TEST_HEALTHY_STEPS", 400))
QUOTA = 0.03  # the slowed rank gets 3 % of a CPU (a loaded 2-core machine gives each ~15 %)


@pytest.fixture
def jobs():
    started: list[TorchrunJob] = []

    def start(*args, **kwargs) -> TorchrunJob:
        job = start_job(*args, script=STRAGGLERJOB, **kwargs)
        started.append(job)
        return job

    yield start
    for job in started:
        job.stop()


@pytest.fixture(autouse=True)
def needs_quota():
    ok, why = cpuquota.available()
    if not ok:
        pytest.skip(why)


def last_step(workdir: pathlib.Path, rank: int) -> int:
    lines = (workdir / "ready" / f"steps-{rank}").read_text().split("\n")
    return max(int(line.split()[0]) for line in lines if line.strip())


def heartbeat_step(beats: pathlib.Path, rank: int) -> int:
    (path,) = beats.glob(f"*/rank-{rank}.json")
    return json.loads(path.read_text())["step"]


def straggler_lines(job: TorchrunJob) -> list[str]:
    return [line for host in job.hosts for line in job.log_of(host).splitlines()
            if "straggler:" in line]


def test_monitor_names_a_throttled_rank_on_every_rank_and_never_a_healthy_one(
        ns_cluster, tmp_path):
    hosts = ns_cluster.hosts[:3]
    beats = tmp_path / "heartbeats"
    job = start_job(ns_cluster, hosts, 1, 29681, tmp_path, ["--use-monitor", "--mark-every", "1"],
                    env={"DDPCHECK_HEARTBEAT_DIR": str(beats)}, script=STRAGGLERJOB)
    try:
        pids = job.wait_ready()
        deadline = time.monotonic() + 240
        while min(last_step(tmp_path, r) for r in range(3)) < HEALTHY_STEPS:
            assert time.monotonic() < deadline, job.logs()
            assert not straggler_lines(job), straggler_lines(job)
            time.sleep(1.0)
        time.sleep(2.0)  # the exchange of the last healthy steps
        assert not straggler_lines(job), straggler_lines(job)

        victim = 2  # on h3
        with cpuquota.cpu_quota([pids[victim]], QUOTA):
            onset = heartbeat_step(beats, victim)
            deadline = time.monotonic() + 90
            while not any(f"rank {victim} on h3" in line for line in straggler_lines(job)):
                assert time.monotonic() < deadline, job.logs()
                time.sleep(0.2)
            named_at = heartbeat_step(beats, victim)
            # every rank logs it, in the same words
            deadline = time.monotonic() + 30
            while len(straggler_lines(job)) < 3:
                assert time.monotonic() < deadline, straggler_lines(job)
                time.sleep(0.2)
    finally:
        job.stop()
    lines = straggler_lines(job)
    assert {re.search(r"\[h\d:rank (\d)\]", line).group(1) for line in lines} == {"0", "1", "2"}
    for line in lines:
        assert re.search(r"straggler: rank 2 on h3 arrives \d+ ms after the median, starved of "
                         r"CPU \d+% of its step \(its cgroup's CPU quota throttled it \d+% of "
                         r"the window\), its peers "
                         r"\d+%, \d+ of the last \d+ steps", line)
    assert named_at - onset <= 30, (onset, named_at)  # 5 slow steps, then one exchange
    print(f"healthy steps without a straggler: {HEALTHY_STEPS}; named {named_at - onset} "
          f"steps after onset")


def run_hang(cluster, tmp_path, hosts, *extra: str):
    import subprocess
    import sys

    from hostsfile import cluster_hosts_yaml

    hosts_yaml = cluster_hosts_yaml(cluster, tmp_path / "hosts.yaml", hosts)
    report_path = tmp_path / "hang.json"
    done = subprocess.run([sys.executable, "-m", "ddpcheck", "hang", str(hosts_yaml), "--json",
                           str(report_path), "--window", "3", *extra], capture_output=True,
                          text=True, timeout=180)
    return done, json.loads(report_path.read_text())


@pytest.mark.parametrize("monitor", [False, True], ids=["without-ddpcheck", "with-monitor"])
def test_hang_names_the_throttled_rank_of_a_progressing_job(ns_cluster, tmp_path, jobs,
                                                            monitor):
    hosts = ns_cluster.hosts[:3]
    beats = tmp_path / "heartbeats"
    job = jobs(ns_cluster, hosts, 1, 29683 + monitor, tmp_path,
               ["--mark-every", "1"] + (["--use-monitor"] if monitor else []),
               env={"DDPCHECK_HEARTBEAT_DIR": str(beats)})
    pids = job.wait_ready()
    time.sleep(3.0)
    done, healthy = run_hang(ns_cluster, tmp_path, hosts)
    assert [f for f in healthy["findings"] if f["check"] == "straggler"] == [], \
        done.stdout + done.stderr
    with cpuquota.cpu_quota([pids[2]], QUOTA):
        onset = last_step(tmp_path, 2)
        deadline = time.monotonic() + 90
        while last_step(tmp_path, 2) < onset + 15:  # both samples see 10 slow steps
            assert time.monotonic() < deadline, job.logs()
            time.sleep(0.5)
        done, report = run_hang(ns_cluster, tmp_path, hosts)
    found = [f for f in report["findings"] if f["check"] == "straggler"]
    assert [(f["rank"], f["host"]) for f in found] == [(2, "h3")], done.stdout + done.stderr
    assert f"rank 2 on h3 " in found[0]["message"]
    if monitor:
        assert "after the median" in found[0]["message"]  # the Monitor's own words
    else:
        assert "rank 2 on h3 starved of CPU" in found[0]["message"]
    assert done.returncode == 0 and "straggler" in done.stdout
    (ranks,) = [job["ranks"] for job in report["jobs"]]
    assert all(r["busy_pct"] is not None for r in ranks)
    if monitor:
        assert all(r["steps_per_s"] for r in ranks)
