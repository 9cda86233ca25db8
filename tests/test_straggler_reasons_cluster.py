"""Stragglers whatever holds them, on the real namespace cluster: a 3-host x 2-rank DDP job
(gloo, torchrun) with one rank (4, on h3) slowed for real, one fault after the other on the same
job: a cgroup CPU quota, a sleep of 80 ms a step outside any collective (while a flag file
exists), and a SIGSTOP/SIGCONT duty cycle (stopped 40 % of the time). ``ddpcheck hang`` from
outside names exactly that rank with the right reason, never calls the progressing job hung,
and, reading a Monitor's heartbeats, says what the Monitor says; a healthy stretch names no one.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import pytest

import cpuquota
from hostsfile import cluster_hosts_yaml
from stragglerfaults import flag_file, stop_cycle
from torchrunjob import TorchrunJob, start_job
from test_straggler_cluster import STRAGGLERJOB, last_step

pytestmark = pytest.mark.cluster

VICTIM = 4  # rank 4: h3's first rank
OUTSIDE = {"starved": "starved of CPU", "blocked": "blocked outside the collectives",
           "stopped": "stopped"}
# a stopped process stops its Monitor too: with a Monitor, hang adds what its scan saw
INSIDE = {"starved": "starved of CPU", "blocked": "blocked outside the collectives"}


def named_inside(job: TorchrunJob, reason: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not any(f"rank {VICTIM} on h3 arrives" in line and INSIDE[reason] in line
                  for line in monitor_lines(job)):
        assert time.monotonic() < deadline, (reason, monitor_lines(job), job.logs()[-3000:])
        time.sleep(0.3)


def recovered(tmp_path, timeout_s: float = 60) -> None:
    """Until the Monitor's verdict (in rank 0's heartbeat) names no one again."""
    deadline = time.monotonic() + timeout_s
    while True:
        (path,) = (tmp_path / "beats").glob("*/rank-0.json")
        try:
            if json.loads(path.read_text()).get("stragglers") == []:
                return
        except ValueError:
            pass  # being replaced
        assert time.monotonic() < deadline, "the Monitor still names a straggler"
        time.sleep(0.3)


@pytest.fixture(autouse=True)
def needs_quota():
    ok, why = cpuquota.available()
    if not ok:
        pytest.skip(why)


def hang(cluster, tmp_path, name: str) -> tuple[subprocess.CompletedProcess, dict]:
    hosts_yaml = cluster_hosts_yaml(cluster, tmp_path / "hosts.yaml", cluster.hosts[:3])
    report_path = tmp_path / f"hang-{name}.json"
    done = subprocess.run([sys.executable, "-m", "ddpcheck", "hang", str(hosts_yaml), "--json",
                           str(report_path), "--window", "3", "--no-stacks", "--timeout", "150"],
                          capture_output=True, text=True, timeout=180)
    return done, json.loads(report_path.read_text())


def stragglers(report: dict) -> list[dict]:
    return [f for f in report["findings"] if f["check"] == "straggler"]


def wait_steps(tmp_path, rank: int, steps: int, job: TorchrunJob) -> None:
    onset = last_step(tmp_path, rank)
    deadline = time.monotonic() + 90
    while last_step(tmp_path, rank) < onset + steps:
        assert time.monotonic() < deadline, job.logs()
        time.sleep(0.3)


def monitor_lines(job: TorchrunJob) -> list[str]:
    return [line for host in job.hosts for line in job.log_of(host).splitlines()
            if "straggler:" in line]


@pytest.mark.parametrize("monitor", [False, True], ids=["without-ddpcheck", "with-monitor"])
def test_each_fault_names_the_slowed_rank_with_its_reason_and_never_a_hang(
        ns_cluster, tmp_path, monitor):
    hosts = ns_cluster.hosts[:3]
    job = start_job(ns_cluster, hosts, 2, 29691 + monitor, tmp_path,
                    ["--mark-every", "1", "--flag-sleep", "0.08", "--width", "256"]
                    + (["--use-monitor"] if monitor else []),
                    env={"DDPCHECK_HEARTBEAT_DIR": str(tmp_path / "beats")},
                    script=STRAGGLERJOB)
    try:
        pids = job.wait_ready()
        time.sleep(3.0)
        done, healthy = hang(ns_cluster, tmp_path, "healthy")
        assert stragglers(healthy) == [], done.stdout + done.stderr
        assert done.returncode == 0, done.stdout + done.stderr

        faults = {
            "starved": lambda: cpuquota.cpu_quota([pids[VICTIM]], 0.03),
            "blocked": lambda: flag_file(tmp_path / "ready" / f"sleep-{VICTIM}"),
            "stopped": lambda: stop_cycle(pids[VICTIM]),
        }
        for reason, fault in faults.items():
            with fault():
                wait_steps(tmp_path, VICTIM, 12, job)
                if monitor and reason != "stopped":  # the Monitor names it first, then hang
                    named_inside(job, reason)
                done, report = hang(ns_cluster, tmp_path, reason)
            found = stragglers(report)
            text = done.stdout + done.stderr
            assert [(f["rank"], f["host"]) for f in found] == [(VICTIM, "h3")], (reason, text)
            assert done.returncode == 0, (reason, text)  # a progressing job is never hung
            assert not [f for f in report["findings"] if f["severity"] == "error"], text
            message = found[0]["message"]
            if monitor and reason != "stopped":  # the Monitor's own words, as it logged them
                assert f"after the median, {INSIDE[reason]}" in message, (reason, text)
                assert any(message.split(": ", 1)[1] in line for line in monitor_lines(job))
            elif monitor:  # stopped: the scan's words, alone or after the Monitor's own
                assert f"rank {VICTIM} on h3 " in message and "stopped" in message, text
            else:
                assert f"rank {VICTIM} on h3 {OUTSIDE[reason]}" in message, (reason, text)
            if reason == "blocked":
                assert "hrtimer_nanosleep: a sleep" in message, text
            if reason == "starved":  # its cgroup's cpu.stat, read inside and outside alike
                assert "its cgroup's CPU quota throttled it" in message, text
            if reason == "stopped":  # the scan's share of its window (the duty cycle's 40 %),
                # or the Monitor's share of the victim's late step, when the Monitor named it
                share = re.search(r"stopped (\d+)% of (the window|its step)", message)
                assert share, message
                low, high = (20, 60) if share.group(2) == "the window" else (1, 100)
                assert low <= int(share.group(1)) <= high, message
            if monitor:
                recovered(tmp_path)
            else:
                time.sleep(2.0)  # the job recovers before the next fault
    finally:
        job.stop()

