"""The command as a user runs it on one machine: the embedded default, bad input, --dry-run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def ddpcheck(*args: str, cwd=None, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ddpcheck", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd)


def test_embedded_default_passes_with_two_cpu_ranks(tmp_path):
    report_path = tmp_path / "report.json"
    workdir = Path(f"/tmp/ddpcheck-{os.geteuid()}")  # the embedded default's workdir
    before = set(workdir.glob("ddpcheck-*")) if workdir.exists() else set()
    done = ddpcheck("preflight", "--json", str(report_path), cwd=tmp_path)
    assert set(workdir.glob("ddpcheck-*")) - before == set()  # the run directory is removed
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(report_path.read_text())
    assert report["schema"] == "ddpcheck/report/v1"
    assert report["verdict"] == "ok" and report["backend"] == "gloo"
    assert report["world_size"] == report["expected_world_size"] == 2
    assert [r["status"] for r in report["ranks"]] == ["ok", "ok"]
    assert report["collectives"][0]["op"] == "all_reduce"
    assert report["collectives"][0]["wrong"] == 0
    assert "Verdict: OK (exit 0)" in done.stdout
    assert "localhost: done: 2 rank(s) ok" in done.stderr


def test_bad_hosts_yaml_names_file_line_and_key_and_runs_nothing(tmp_path):
    hosts = tmp_path / "hosts.yaml"
    hosts.write_text("hosts:\n  - name: a\n    slots: 0\n")
    report_path = tmp_path / "report.json"
    done = ddpcheck("preflight", str(hosts), "--json", str(report_path))
    assert done.returncode == 2
    assert f"{hosts}:3: hosts[0].slots" in done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""


def test_missing_hosts_file_and_bad_option_exit_2(tmp_path):
    done = ddpcheck("preflight", str(tmp_path / "nope.yaml"))
    assert done.returncode == 2 and "nope.yaml" in done.stderr
    done = ddpcheck("preflight", "--timeout", "-1")
    assert done.returncode == 2 and "--timeout" in done.stderr


def test_local_dry_run_prints_torchrun_command():
    done = ddpcheck("preflight", "--dry-run")
    assert done.returncode == 0
    assert "torch.distributed.run" not in done.stdout  # the agent starts torchrun itself
    assert "ddpcheck.remote.agent launch" in done.stdout and "--nproc-per-node 2" in done.stdout
    assert "--master-addr 127.0.0.1" in done.stdout


def test_skip_compute_leaves_the_compute_check_out_and_says_nothing_of_it(tmp_path):
    report_path = tmp_path / "report.json"
    done = ddpcheck("preflight", "--skip", "compute,consistency", "--json", str(report_path),
                    cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(report_path.read_text())
    assert [r["status"] for r in report["ranks"]] == ["ok", "ok"]
    assert all(not r.get("compute") for r in report["ranks"]), report["ranks"]
    assert "GFLOP/s" not in done.stdout
    wrong = ddpcheck("preflight", "--skip", "gpus")
    assert wrong.returncode == 2 and "consistency, rendezvous, compute" in wrong.stderr
