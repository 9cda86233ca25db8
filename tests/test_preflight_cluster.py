"""Preflight end to end on the real namespace cluster: real sshd, real torchrun, gloo on veths."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hostsfile import cluster_hosts_yaml
from plantedtorch import broken_torch

pytestmark = pytest.mark.cluster


def ddpcheck(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ddpcheck", *args], capture_output=True,
                          text=True, timeout=timeout)


def no_torchrun_left(cluster) -> None:
    for host in cluster.hosts:
        for pid in cluster.pids_in(host):
            try:
                cmdline = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ")
            except OSError:
                continue
            assert b"ddpcheck" not in cmdline and b"torch.distributed.run" not in cmdline, (
                f"left behind on {host.name}: {cmdline!r}")


def test_three_hosts_two_slots_pass(ns_cluster, tmp_path):
    hosts_yaml = cluster_hosts_yaml(ns_cluster, tmp_path / "hosts.yaml", ns_cluster.hosts[:3],
                                    slots=2, port=29610)
    report_path = tmp_path / "report.json"
    done = ddpcheck("preflight", str(hosts_yaml), "--json", str(report_path), "--keep")
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(report_path.read_text())
    assert report["verdict"] == "ok" and report["exit_code"] == 0
    assert report["world_size"] == report["expected_world_size"] == 6
    ranks = report["ranks"]
    assert sorted(r["rank"] for r in ranks) == list(range(6))
    for rank in ranks:
        assert rank["status"] == "ok"
        assert rank["hostname"] == rank["host"]  # each rank ran in its own host's UTS namespace
        assert rank["all_reduce_wrong"] == 0
    assert {r["host"] for r in ranks} == {"h1", "h2", "h3"}
    assert [h["hostname"] for h in report["hosts"]] == ["h1", "h2", "h3"]
    assert "Verdict: OK" in done.stdout
    for name in ("h1", "h2", "h3"):
        assert f"{name}: checked" in done.stderr and f"{name}: done" in done.stderr
    no_torchrun_left(ns_cluster)
    # --keep: each host's run directory stays, named in the report, with its launch.log
    for host in report["hosts"]:
        run_dir = Path(host["run_dir"])
        assert run_dir.parent == tmp_path / f"work-{host['name']}"
        assert run_dir.name.startswith("ddpcheck-") and f"kept {run_dir}" in done.stderr
        assert "@@DDPCHECK rank" in (run_dir / "launch.log").read_text()
        assert list((tmp_path / f"work-{host['name']}").iterdir()) == [run_dir]


def test_host_missing_from_known_hosts_is_named_and_nothing_starts(ns_cluster, tmp_path):
    unknown = ns_cluster.hosts[1]
    known = tmp_path / "known_hosts"
    known.write_text("".join(
        line + "\n" for line in ns_cluster.known_hosts.read_text().splitlines()
        if not line.startswith((unknown.address + " ", unknown.name + " "))))
    hosts_yaml = cluster_hosts_yaml(ns_cluster, tmp_path / "hosts.yaml", ns_cluster.hosts[:3],
                                    port=29611, known_hosts=known)
    report_path = tmp_path / "report.json"
    done = ddpcheck("preflight", str(hosts_yaml), "--json", str(report_path))
    assert done.returncode == 3, done.stdout + done.stderr
    report = json.loads(report_path.read_text())
    assert report["verdict"] == "unreachable"
    ssh_findings = [f for f in report["findings"] if f["check"] == "ssh"]
    assert [f["host"] for f in ssh_findings] == [unknown.name]
    assert "known_hosts" in ssh_findings[0]["message"]
    assert report["ranks"] == []
    assert all(h["stage"] != "launch" and h["stage"] != "done" for h in report["hosts"])
    assert "launched torchrun" not in done.stderr
    no_torchrun_left(ns_cluster)


def test_dry_run_prints_commands_and_runs_nothing(ns_cluster, tmp_path):
    hosts_yaml = cluster_hosts_yaml(ns_cluster, tmp_path / "hosts.yaml", ns_cluster.hosts[:2],
                                    port=29612)
    done = ddpcheck("preflight", str(hosts_yaml), "--dry-run")
    assert done.returncode == 0, done.stderr
    assert "--node-rank 0" in done.stdout and "--node-rank 1" in done.stdout
    assert f"--master-addr {ns_cluster.hosts[0].address}" in done.stdout
    assert done.stderr == ""
    assert not (tmp_path / "work-h1").exists()


def wait_until_clean(cluster, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            no_torchrun_left(cluster)
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def test_ctrl_c_mid_run_exits_130_writes_report_and_leaves_nothing(ns_cluster, tmp_path):
    hosts_yaml = cluster_hosts_yaml(ns_cluster, tmp_path / "hosts.yaml", ns_cluster.hosts[:3],
                                    port=29613)
    report_path = tmp_path / "report.json"
    proc = subprocess.Popen([sys.executable, "-m", "ddpcheck", "preflight", str(hosts_yaml),
                             "--json", str(report_path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    seen = []
    assert proc.stderr is not None
    for line in proc.stderr:  # wait until torchrun runs on every host
        seen.append(line)
        if sum("launched torchrun" in s for s in seen) == 3:
            break
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    sent = time.monotonic()
    out, err = proc.communicate(timeout=60)
    answered = time.monotonic() - sent
    assert proc.returncode == 130, "".join(seen) + err + out
    assert answered < 15, answered
    report = json.loads(report_path.read_text())
    assert report["verdict"] == "interrupted" and report["exit_code"] == 130
    assert [h["name"] for h in report["hosts"]] == ["h1", "h2", "h3"]
    # partial: what each host reached (all three were checked and launched)
    assert all(h["reachable"] and h["hostname"] == h["name"] and h["stage"] in ("launch", "done")
               for h in report["hosts"]), report["hosts"]
    print(f"Ctrl-C: exited 130 {answered:.1f}s after SIGINT")
    wait_until_clean(ns_cluster)
    # each host's agent removed its run directory on the hang-up
    deadline = time.monotonic() + 20
    workdirs = [tmp_path / f"work-{name}" for name in ("h1", "h2", "h3")]
    while any(w.exists() and any(w.iterdir()) for w in workdirs):
        assert time.monotonic() < deadline, [list(w.iterdir()) for w in workdirs]
        time.sleep(0.2)


def test_a_host_whose_torchrun_never_starts_stops_the_others_at_once(ns_cluster, tmp_path):
    """h2's torch is installed whole but will not import: stage 0 (which reads torch without
    importing it) passes, h2's torchrun dies at its import, and h1 and h3, waiting in the
    rendezvous for a node that will never come, are asked to stop at once: not after the
    collective timeout (30 s) nor torchrun's join timeout (60 s here)."""
    site = broken_torch(tmp_path / "site", "libtorch_cpu.so: undefined symbol: x")
    hosts_yaml = cluster_hosts_yaml(
        ns_cluster, tmp_path / "hosts.yaml", ns_cluster.hosts[:3], port=29631,
        host_overrides={"h2": {"env": {"GLOO_SOCKET_IFNAME": "eth0",
                                       "PYTHONPATH": str(site)}}})
    report_path = tmp_path / "report.json"
    began = time.monotonic()
    done = ddpcheck("preflight", str(hosts_yaml), "--json", str(report_path),
                    "--rendezvous-timeout", "60")
    took = time.monotonic() - began
    assert done.returncode == 1, done.stdout + done.stderr
    assert took < 25, (took, done.stderr)
    report = json.loads(report_path.read_text())
    [root] = [f for f in report["findings"] if f["root_cause"]]
    assert root["check"] == "torch_import" and root["host"] == "h2", report["findings"]
    assert "launch: import torch failed: ImportError: libtorch_cpu.so" in root["message"]
    assert "asked to stop now" in done.stderr
    stopped = {f["host"]: f for f in report["findings"] if f["host"] in ("h1", "h3")}
    for name in ("h1", "h3"):  # stopped by the launcher: a consequence, not a root cause
        assert "asked to stop by the launcher" in stopped[name]["message"], stopped
        assert not stopped[name]["root_cause"]
    no_torchrun_left(ns_cluster)
