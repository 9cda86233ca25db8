"""``ddpcheck hang`` as a user runs it on one machine (no HOSTS): a healthy job, no job, bad
options. The job is real: torchrun with 2 gloo ranks on this machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from torchrunjob import ThisMachine, start_job


def ddpcheck(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ddpcheck", *args], capture_output=True,
                          text=True, timeout=timeout)


def test_progressing_local_job_exits_0(tmp_path):
    port = 29700 + os.getpid() % 200
    job = start_job(None, [ThisMachine()], 2, port, tmp_path, ["--use-monitor"],
                    env={"DDPCHECK_HEARTBEAT_DIR": str(tmp_path / "beats")})
    try:
        job.wait_ready()
        report_path = tmp_path / "hang.json"
        done = ddpcheck("hang", "--job", f"127.0.0.1:{port}", "--window", "1.5", "--json",
                        str(report_path))
    finally:
        job.stop()
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(report_path.read_text())
    assert report["command"] == "hang" and report["verdict"] == "ok"
    (found,) = report["jobs"]
    assert found["job"] == f"none@127.0.0.1:{port}" and not found["hung"]
    assert [r["role"] for r in found["ranks"]] == ["progressing", "progressing"]
    assert "progressed during the window" in report["findings"][0]["message"]
    assert "localhost: scanned: 2 torchrun worker(s)" in done.stderr


def test_no_job_exits_0_with_a_warning_and_an_empty_report(tmp_path):
    report_path = tmp_path / "hang.json"
    done = ddpcheck("hang", "--job", "no-such-job", "--json", str(report_path))
    assert done.returncode == 0, done.stderr
    report = json.loads(report_path.read_text())
    assert report["stacks"] == {} and report["jobs"] == [] and report["ranks"] == []
    assert report["findings"][0]["severity"] == "warning"
    assert "no running torchrun worker of a job matching 'no-such-job'" in done.stdout


def test_bad_window_is_a_usage_error():
    done = ddpcheck("hang", "--window", "0")
    assert done.returncode == 2 and "--window" in done.stderr and "Traceback" not in done.stderr
