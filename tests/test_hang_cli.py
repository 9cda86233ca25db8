"""``ddpcheck hang`` as a user runs it on one machine (no HOSTS): a healthy job, no job, bad
options. The job is real: torchrun with 2 gloo ranks on this machine."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psutil

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
        interrupted = interrupt_a_long_scan(port, tmp_path / "interrupted.json")
    finally:
        job.stop()
    assert interrupted["verdict"] == "interrupted" and interrupted["exit_code"] == 130
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(report_path.read_text())
    assert report["command"] == "hang" and report["verdict"] == "ok"
    (found,) = report["jobs"]
    assert found["job"] == f"none@127.0.0.1:{port}" and not found["hung"]
    assert [r["role"] for r in found["ranks"]] == ["progressing", "progressing"]
    assert "progressed during the window" in report["findings"][0]["message"]
    assert "localhost: scanned: 2 torchrun worker(s)" in done.stderr


def interrupt_a_long_scan(port: int, report_path) -> dict:
    """Ctrl-C during the scan window: exit 130, the report written, no scan left running."""
    proc = subprocess.Popen([sys.executable, "-m", "ddpcheck", "hang", "--job",
                             f"127.0.0.1:{port}", "--window", "60", "--json", str(report_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    scans = []
    deadline = time.monotonic() + 30
    while not scans:
        assert time.monotonic() < deadline, "the scan never started"
        scans = [p for p in psutil.process_iter(["cmdline"])
                 if "ddpcheck.remote.hangscan" in " ".join(p.info["cmdline"] or [])
                 and f"127.0.0.1:{port}" in " ".join(p.info["cmdline"] or [])]
        time.sleep(0.1)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=30)
    assert proc.returncode == 130
    psutil.wait_procs(scans, timeout=10)
    assert not [p for p in scans if p.is_running()], "scan left running"
    return json.loads(report_path.read_text())


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
