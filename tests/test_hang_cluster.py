"""``ddpcheck hang`` on the real namespace cluster: real torchrun jobs on gloo across hosts,
real faults (kill -STOP, a rank blocked in an ordinary function, kill -9), real sshd and py-spy.

Every job is started with torchrun in the hosts' namespaces, as a user would start it, and is
continued and killed at the end of its test whatever happened.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from hostsfile import cluster_hosts_yaml
from torchrunjob import TorchrunJob, start_job

pytestmark = pytest.mark.cluster


def ddpcheck(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ddpcheck", *args], capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture
def jobs():
    started: list[TorchrunJob] = []

    def start(*args, **kwargs) -> TorchrunJob:
        job = start_job(*args, **kwargs)
        started.append(job)
        return job

    yield start
    for job in started:
        job.stop()


def run_hang(cluster, tmp_path, hosts, *extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    hosts_yaml = cluster_hosts_yaml(cluster, tmp_path / "hosts.yaml", hosts)
    report_path = tmp_path / "hang.json"
    done = ddpcheck("hang", str(hosts_yaml), "--json", str(report_path), "--window", "2",
                    *extra)
    return done, json.loads(report_path.read_text())


def roles(report: dict) -> dict[int, dict]:
    (job,) = report["jobs"]
    return {r["rank"]: r for r in job["ranks"]}


def test_stopped_rank_is_named_with_its_host(ns_cluster, tmp_path, jobs):
    hosts = ns_cluster.hosts[:2]
    job = jobs(ns_cluster, hosts, 2, 29661, tmp_path, ["--use-monitor", "--watchdog", "4"],
               env={"DDPCHECK_HEARTBEAT_DIR": str(tmp_path / "heartbeats")})
    pids = job.wait_ready()
    victim = 3
    os.kill(pids[victim], signal.SIGSTOP)
    time.sleep(1.0)
    done, report = run_hang(ns_cluster, tmp_path, hosts)
    assert done.returncode == 1, done.stdout + done.stderr
    root = report["findings"][0]
    assert root["root_cause"] and root["check"] == "hang"
    assert (root["rank"], root["host"]) == (victim, "h2")
    assert "stopped" in root["message"] and str(pids[victim]) in root["message"]
    ranks = roles(report)
    assert ranks[victim]["role"] == "stopped" and ranks[victim]["state"] == "stopped"
    for rank in (0, 1, 2):
        assert ranks[rank]["role"] == "waiting" and ranks[rank]["op"] == "all_reduce"
        # from the heartbeats: a rank may still wait in the all_reduce the stopped rank was in
        # (its ring sends let the others finish it), never in an earlier one
        assert ranks[rank]["seq"] >= ranks[victim]["seq"]
    assert max(ranks[rank]["seq"] for rank in (0, 1, 2)) > ranks[victim]["seq"]
    assert "waiting in all_reduce" in done.stdout and "ROOT CAUSE" in done.stdout
    assert set(report["stacks"]) == {"0", "1", "2", "3"}
    # The in-job watchdog on h1's ranks names the stopped rank long before any timeout.
    deadline = time.monotonic() + 20
    while f"rank {victim} on h2 (pid {pids[victim]}) not responding" not in job.log_of(hosts[0]):
        assert time.monotonic() < deadline, job.logs()
        time.sleep(0.5)


def test_rank_blocked_in_a_function_of_a_job_without_ddpcheck(ns_cluster, tmp_path, jobs):
    hosts = ns_cluster.hosts[:2]
    job = jobs(ns_cluster, hosts, 2, 29662, tmp_path,
               ["--block-rank", "3", "--block-step", "6", "--flight-recorder"],
               env={"TORCH_FR_DUMP_TEMP_FILE": str(tmp_path / "fr_trace_rank_")})
    pids = job.wait_ready()
    time.sleep(1.0)  # steps 4 and 5, then rank 3 enters load_batch
    done, report = run_hang(ns_cluster, tmp_path, hosts)
    assert done.returncode == 1, done.stdout + done.stderr
    root = report["findings"][0]
    assert root["root_cause"] and (root["rank"], root["host"]) == (3, "h2")
    assert "load_batch" in root["message"] and "not in any collective" in root["message"]
    assert "load_batch" in report["stacks"]["3"] and "hangjob.py" in report["stacks"]["3"]
    assert "all_reduce" in report["stacks"]["0"]
    ranks = roles(report)
    assert ranks[3]["role"] == "blocked" and ranks[3]["pid"] == pids[3]
    seqs = {ranks[r]["seq"] for r in (0, 1, 2)}
    assert len(seqs) == 1 and seqs == {ranks[3]["seq"] + 1}  # from the Flight Recorder dumps
    assert ranks[0]["flight_record"]["last_op"] == "all_reduce"
    assert all(ranks[r]["role"] == "waiting" for r in (0, 1, 2))
    summary = [f for f in report["findings"] if f["severity"] == "info"]
    assert any(f"ranks 0-2 are waiting in all_reduce (seq {seqs.pop()})" in f["message"]
               for f in summary), report["findings"]
    assert "Stack of rank 3" in done.stdout and "load_batch" in done.stdout


def test_killed_rank_is_named_as_dead(ns_cluster, tmp_path, jobs):
    """Gloo over TCP hears a dead peer's FIN and fails every rank within a second; NCCL over
    InfiniBand, or a host that crashed, gives no such sign and the others wait until the
    10-minute timeout. The victim's host drops its outgoing FIN/RST (ssh excepted) to get that
    case on gloo."""
    hosts = ns_cluster.hosts[:3]
    beats = tmp_path / "heartbeats"
    job = jobs(ns_cluster, hosts, 1, 29663, tmp_path, ["--use-monitor"],
               env={"DDPCHECK_HEARTBEAT_DIR": str(beats)})
    pids = job.wait_ready()
    victim_host = hosts[1]
    rules = [["OUTPUT", "-p", "tcp", "!", "--sport", "22", "--tcp-flags", flag, flag, "-j",
              "DROP"] for flag in ("FIN", "RST")]
    try:
        for rule in rules:
            ns_cluster.run_in(victim_host, ["iptables", "-w", "5", "-A", *rule], check=True)
        os.kill(pids[1], signal.SIGKILL)
        job.procs[1].wait(timeout=30)  # h2's torchrun sees its worker die and exits
        time.sleep(1.0)
        done, report = run_hang(ns_cluster, tmp_path, hosts, "--heartbeat-dir", str(beats))
    finally:
        for rule in rules:
            ns_cluster.run_in(victim_host, ["iptables", "-w", "5", "-D", *rule])
    assert done.returncode == 1, done.stdout + done.stderr
    root = report["findings"][0]
    assert root["root_cause"] and (root["rank"], root["host"]) == (1, "h2")
    assert "gone" in root["message"] and str(pids[1]) in root["message"]
    ranks = roles(report)
    assert ranks[1]["role"] == "dead" and ranks[1]["state"] == "gone"
    assert ranks[0]["role"] == ranks[2]["role"] == "waiting"
    assert {ranks[0]["host"], ranks[2]["host"]} == {"h1", "h3"}
