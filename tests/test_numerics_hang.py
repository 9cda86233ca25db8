"""``ddpcheck hang`` reports what the Monitor's numerics canary named: a real job (torchrun, 3
gloo ranks on this machine, tests/hangjob.py with ``Monitor(numerics_every=5)``) in which local
rank 2's matrix products are spoiled after torch loads (tests/wrongmatmul.py on PYTHONPATH, as
a bad device would be): a ``numerics`` error naming that rank, its host and device, exit 1,
while the job itself is reported as progressing (not hung). The same job unspoiled: exit 0 and
no ``numerics`` finding. On the namespace cluster (2 hosts x 2 ranks, the fault on h2's local
rank 1), ``ddpcheck hang hosts.yaml`` names h2's rank 3. The pure part (the findings from
heartbeat entries) on synthetic ones."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

import pytest

from ddpcheck.analyze.numerics import canary_findings
from hostsfile import cluster_hosts_yaml
from ddpcheck.core import heartbeat
from torchrunjob import ThisMachine, start_job
from wrongmatmul import wrong_matmul_site

BAD_LOCAL_RANK = 2


def hang_report(tmp_path: Path, port: int, plant: Optional[Path]) -> tuple[
        subprocess.CompletedProcess, dict]:
    env = {"DDPCHECK_HEARTBEAT_DIR": str(tmp_path / "beats")}
    if plant is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(plant),
                                                          os.environ.get("PYTHONPATH", "")]))
    # ready after step 40: the canary ran 9 rounds and rank 0 judged 8 of them
    job = start_job(None, [ThisMachine()], 3, port, tmp_path,
                    ["--use-monitor", "--numerics-every", "5", "--ready-step", "40"], env=env)
    try:
        job.wait_ready()
        report_path = tmp_path / "hang.json"
        done = subprocess.run([sys.executable, "-m", "ddpcheck", "hang", "--job",
                               f"127.0.0.1:{port}", "--window", "1.5", "--json",
                               str(report_path)], capture_output=True, text=True, timeout=120)
    finally:
        job.stop()
    return done, json.loads(report_path.read_text())


def numerics_findings(report: dict) -> list[dict]:
    return [f for f in report["findings"] if f["check"] == "numerics"]


def test_a_healthy_job_with_the_canary_has_no_numerics_finding(tmp_path):
    done, report = hang_report(tmp_path, 29600 + os.getpid() % 50, None)
    assert done.returncode == 0, done.stdout + done.stderr
    assert numerics_findings(report) == []
    (job,) = report["jobs"]
    assert not job["hung"]


def test_hang_names_the_device_the_canary_found_wrong(tmp_path):
    plant = wrong_matmul_site(tmp_path / "site", every=1, local_rank=BAD_LOCAL_RANK)
    done, report = hang_report(tmp_path, 29650 + os.getpid() % 50, plant)
    assert done.returncode == 1, done.stdout + done.stderr
    assert report["verdict"] == "fail"
    (job,) = report["jobs"]
    assert not job["hung"]  # the job runs on: its hang verdict is its own
    assert [r["role"] for r in job["ranks"]] == ["progressing"] * 3
    assert any("progressed during the window" in f["message"] for f in report["findings"])
    found = numerics_findings(report)
    assert [(f["host"], f["rank"], f["severity"]) for f in found] == [
        ("localhost", BAD_LOCAL_RANK, "error")], found
    message = found[0]["message"]
    hostname = os.uname().nodename
    assert (f"rank {BAD_LOCAL_RANK} on {hostname} (cpu) computed the Monitor's numerics canary "
            f"(fp32) wrong in ") in message
    assert "differs from its 2 peers bit for bit" in message
    assert "drain the node" in message and "RMA if it repeats" in message
    assert "numerics" in done.stdout


@pytest.mark.cluster
def test_hang_names_the_device_on_its_host_across_the_cluster(ns_cluster, tmp_path):
    hosts = ns_cluster.hosts[:2]
    plant = wrong_matmul_site(tmp_path / "site", every=1, local_rank=1, hostname="h2")
    env = {"DDPCHECK_HEARTBEAT_DIR": str(tmp_path / "beats"), "PYTHONPATH": os.pathsep.join(
        filter(None, [str(plant), os.environ.get("PYTHONPATH", "")]))}
    job = start_job(ns_cluster, hosts, 2, 29668, tmp_path,
                    ["--use-monitor", "--numerics-every", "5", "--ready-step", "40"], env=env)
    try:
        job.wait_ready()
        hosts_yaml = cluster_hosts_yaml(ns_cluster, tmp_path / "hosts.yaml", hosts)
        report_path = tmp_path / "hang.json"
        done = subprocess.run([sys.executable, "-m", "ddpcheck", "hang", str(hosts_yaml),
                               "--window", "2", "--json", str(report_path)],
                              capture_output=True, text=True, timeout=120)
    finally:
        job.stop()
    report = json.loads(report_path.read_text())
    assert done.returncode == 1, done.stdout + done.stderr
    (found_job,) = report["jobs"]
    assert not found_job["hung"]
    found = numerics_findings(report)
    assert [(f["host"], f["rank"], f["severity"]) for f in found] == [("h2", 3, "error")], found
    assert "rank 3 on h2 (cpu) computed the Monitor's numerics canary (fp32) wrong" in (
        found[0]["message"])
    assert "differs from its 3 peers bit for bit" in found[0]["message"]


def entry(rank, last, wrong=1, rounds=4, gpu=False):
    return {"rank": rank, "host": "node7", "where": f"rank {rank} on node7 (cpu)", "dtype": "fp32",
            "why": ["differs from its peers bit for bit"], "peers": 5, "compared": 6,
            "first_step": 100, "last_step": last, "wrong_rounds": wrong, "rounds": rounds,
            "gpu": gpu}


def test_canary_findings_from_heartbeat_entries():
    # the newest record of a device wins; the host is the inventory's name for the rank
    older, newer = entry(3, 100), entry(3, 300, wrong=3, rounds=9, gpu=True)
    [finding] = canary_findings("job-a", [[older], [], [newer]], {3: "h2"})
    assert (finding.host, finding.rank, finding.check) == ("h2", 3, "numerics")
    assert ("job job-a: rank 3 on node7 (cpu) computed the Monitor's numerics canary (fp32) "
            "wrong in 3 of 9 round(s) compared (steps 100 to 300; differs from its 5 peers bit "
            "for bit); drain the node; run DCGM diag level 3") in finding.message
    assert canary_findings("job-a", [[], []], {}) == []
    # a heartbeat carries the entries as the canary's judge serialized them
    beat = heartbeat.decode(heartbeat.encode({"rank": 0}, None, None, json.dumps([older])))
    assert heartbeat.numerics(beat) == [older]
    assert heartbeat.numerics(heartbeat.decode(heartbeat.encode({"rank": 0}))) == []
