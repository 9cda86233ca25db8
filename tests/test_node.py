"""``ddpcheck node`` as a SLURM prolog runs it on this machine: JSON, exit codes, --slurm-drain."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from slurmctl import NODE, SlurmController, slurm_available

from ddpcheck.commands.node import drain_command, drain_reason, slurm_node_name
from ddpcheck.model.records import Finding, Severity


def node(*args: str, env=None, cwd=None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ddpcheck", "node", *args],
                          capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env={**os.environ, **(env or {})})


def test_node_json_on_this_machine(tmp_path):
    report_path = tmp_path / "node.json"
    done = node("--json", str(report_path), cwd=tmp_path)
    report = json.loads(report_path.read_text())
    errors = [f for f in report["findings"] if f["severity"] == "error"]
    assert done.returncode == (1 if errors else 0), done.stdout + done.stderr
    assert report["schema"] == "ddpcheck/report/v1" and report["command"] == "node"
    assert report["exit_code"] == done.returncode
    (host,) = report["hosts"]
    facts = report["stage0"][host["name"]]
    assert host["reachable"] and host["versions"]["torch"] == facts["torch"]
    assert facts["import_s"] > 0 and facts["duration_s"] < 60
    assert "lo" in facts["interfaces"] and facts["memory"]["total"] > 0
    assert facts["workdir"]["path"] == str(tmp_path)
    assert facts["ulimit"]["nofile"][0] != 0 and facts["shm"]["total"] > 0
    assert facts["nvml"]["available"] in (True, False)  # no GPU here: False, never a crash
    assert host["gpus"] == len(facts["nvml"]["gpus"])
    assert done.stdout.startswith(f"# ddpcheck node: {host['name']}, python ")
    assert f"Verdict: {report['verdict'].upper()} (exit {done.returncode})" in done.stdout
    assert "Traceback" not in done.stderr


def test_missing_gpus_fail_the_node(tmp_path):
    report_path = tmp_path / "node.json"
    found = node("--no-torch", "--json", str(report_path))
    have = len(json.loads(report_path.read_text())["stage0"].popitem()[1]["nvml"]["gpus"])
    done = node("--no-torch", "--gpus", str(have + 1), "--json", str(report_path))
    assert found.returncode in (0, 1) and done.returncode == 1, done.stdout + done.stderr
    report = json.loads(report_path.read_text())
    root = [f for f in report["findings"] if f["root_cause"]]
    assert [f["check"] for f in root] == ["gpu_count"]
    assert f"{have} GPU(s) found" in root[0]["message"] and f"{have + 1} expected" in \
        root[0]["message"]
    assert "ROOT CAUSE [error] gpu_count" in done.stdout


def test_gloo_interface_that_does_not_exist_fails_the_node(tmp_path):
    report_path = tmp_path / "node.json"
    done = node("--no-torch", "--json", str(report_path),
                env={"GLOO_SOCKET_IFNAME": "nosuchif0", "NCCL_BLOCKING_WAIT": "1"})
    assert done.returncode == 1, done.stdout + done.stderr
    findings = json.loads(report_path.read_text())["findings"]
    env = [f for f in findings if f["check"] == "env"]
    assert env[0]["severity"] == "error" and env[0]["root_cause"]
    assert "GLOO_SOCKET_IFNAME=nosuchif0: no interface 'nosuchif0' on this host (it has: " in \
        env[0]["message"] and "lo" in env[0]["message"]
    assert any("NCCL_BLOCKING_WAIT is deprecated: use TORCH_NCCL_BLOCKING_WAIT" in f["message"]
               and f["severity"] == "warning" for f in env)


def test_slurm_drain_without_scontrol_says_so(tmp_path):
    report_path = tmp_path / "node.json"
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    done = node("--no-torch", "--gpus", "99", "--slurm-drain", "--node-name", "gpu017",
                "--json", str(report_path), env={"PATH": str(empty_bin)})
    assert done.returncode == 1, done.stdout + done.stderr
    assert "scontrol not found on PATH; node gpu017 was NOT drained" in done.stderr
    drained = json.loads(report_path.read_text())["slurm_drain"]
    assert drained["drained"] is False and drained["reason"] == "ddpcheck: gpu_count"
    assert drained["command"] == ["scontrol", "update", "NodeName=gpu017", "State=DRAIN",
                                  "Reason=ddpcheck: gpu_count"]
    assert "# SLURM: NOT drained gpu017" in done.stdout


def test_passing_node_is_not_drained(tmp_path):
    report_path = tmp_path / "node.json"
    done = node("--no-torch", "--slurm-drain", "--json", str(report_path),
                env={"PATH": str(tmp_path)})
    report = json.loads(report_path.read_text())
    if report["verdict"] == "ok":
        assert done.returncode == 0 and "slurm_drain" not in report
        assert "drain" not in done.stderr


def test_bad_options_exit_2(tmp_path):
    for args in (["--gpus", "-1"], ["--gpus", "x"], ["--workdir", str(tmp_path / "nope")],
                 ["--timeout", "0"]):
        done = node(*args)
        assert done.returncode == 2, (args, done.stderr)
        assert "Traceback" not in done.stderr and done.stdout == ""


def test_drain_argv_and_reason():
    findings = [Finding(Severity.WARNING, "hostname", "w"),
                Finding(Severity.ERROR, "gpu_health", "a", root_cause=True),
                Finding(Severity.ERROR, "resources", "b"),
                Finding(Severity.ERROR, "gpu_health", "c")]
    assert drain_reason(findings) == "ddpcheck: gpu_health, resources"
    hostile = "n1; rm -rf /"
    assert drain_command(hostile, "ddpcheck: env") == [
        "scontrol", "update", "NodeName=n1; rm -rf /", "State=DRAIN", "Reason=ddpcheck: env"]
    assert slurm_node_name({"SLURMD_NODENAME": "gpu-a17"}, "host.example.org") == "gpu-a17"
    assert slurm_node_name({}, "gpu017.cluster.example.org") == "gpu017"


@pytest.fixture
def slurm_controller(tmp_path):
    ok, reason = slurm_available()
    if not ok:
        if os.environ.get("CI") == "true":
            pytest.fail(f"SLURM controller unavailable under CI: {reason}")
        pytest.skip(f"SLURM controller unavailable: {reason}")
    controller = SlurmController(tmp_path / "slurm")
    try:
        controller.start()
        yield controller
    finally:
        controller.stop()


def test_slurm_drain_drains_the_node_on_a_real_controller(slurm_controller, tmp_path):
    assert "DRAIN" not in slurm_controller.node_state()["State"]
    report_path = tmp_path / "node.json"
    done = node("--no-torch", "--gpus", "99", "--slurm-drain", "--node-name", NODE,
                "--json", str(report_path), env={"SLURM_CONF": str(slurm_controller.conf)})
    assert done.returncode == 1, done.stdout + done.stderr
    state = slurm_controller.node_state()
    assert "DRAIN" in state["State"].split("+"), state
    assert state["Reason"] == "ddpcheck: gpu_count"
    drained = json.loads(report_path.read_text())["slurm_drain"]
    assert drained["drained"] is True and drained["error"] is None
    assert f"drained SLURM node {NODE}: ddpcheck: gpu_count" in done.stderr

    # a node SLURM does not know: scontrol's own error, and the report says NOT drained
    done = node("--no-torch", "--gpus", "99", "--slurm-drain", "--node-name", "nosuchnode",
                "--json", str(report_path), env={"SLURM_CONF": str(slurm_controller.conf)})
    assert done.returncode == 1
    drained = json.loads(report_path.read_text())["slurm_drain"]
    assert drained["drained"] is False and "scontrol exited" in drained["error"]
    assert "node nosuchnode was NOT drained" in done.stderr
