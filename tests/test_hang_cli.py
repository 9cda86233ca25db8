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


def test_hang_inside_a_subgroup_names_the_group_and_the_missing_rank(tmp_path):
    """A real 4-rank gloo job with the Flight Recorder on (TORCH_FR_BUFFER_SIZE): ranks 0-2
    have their own group (new_group); rank 2 never calls that group's all_reduce. From the
    dumps alone (no stacks) ddpcheck names group 1 (ranks 0-2) and rank 2."""
    port = 29700 + (os.getpid() + 97) % 200
    dumps = tmp_path / "fr"
    dumps.mkdir()
    job = start_job(None, [ThisMachine()], 4, port, tmp_path,
                    ["--subgroup", "0,1,2", "--block-rank", "2", "--block-step", "6",
                     "--flight-recorder"],
                    env={"TORCH_FR_BUFFER_SIZE": "2000",
                         "TORCH_FR_DUMP_TEMP_FILE": str(dumps / "trace_")})
    try:
        job.wait_ready()
        deadline = time.monotonic() + 60
        from ddpcheck.remote.flightrecorder import parse_dump
        while True:  # until rank 0's dump shows it waiting in the group's all_reduce
            path = dumps / "trace_0"
            groups = parse_dump(path.read_bytes()).groups if path.exists() else ()
            if any(g.pg_id == "1" and g.pending for g in groups):
                break
            assert time.monotonic() < deadline, "the job never hung in its subgroup"
            time.sleep(0.5)
        report_path = tmp_path / "hang.json"
        done = ddpcheck("hang", "--job", f"127.0.0.1:{port}", "--window", "1.5", "--no-stacks",
                        "--json", str(report_path))
    finally:
        job.stop()
    report = json.loads(report_path.read_text())
    assert done.returncode == 1, done.stdout + done.stderr
    (found,) = report["jobs"]
    assert found["hung"] and found["culprits"] == [2]
    [root] = [f for f in report["findings"] if f.get("root_cause")]
    assert root["rank"] == 2 and "process group 1, ranks 0-2" in root["message"]
    assert "wait in all_reduce" in root["message"]


def test_a_near_idle_job_with_a_sleeping_rank_is_a_straggler_never_a_hang(tmp_path):
    """Each step a small all_reduce and a 50 ms sleep; rank 1 sleeps 80 ms more (a slow data
    loader). Each main thread runs a few milliseconds of the window and no poll may see it
    running, so the stacks alone (rank 1 outside any collective at both samples) said "hang"
    in 4 of 6 runs; the job's loops turn, so every run names rank 1 a straggler, exit 0."""
    port = 29700 + (os.getpid() + 101) % 200
    job = start_job(None, [ThisMachine()], 3, port, tmp_path, ["--slow-rank", "1"])
    try:
        job.wait_ready()
        for run in range(3):
            report_path = tmp_path / f"hang-{run}.json"
            done = ddpcheck("hang", "--job", f"127.0.0.1:{port}", "--json", str(report_path))
            report = json.loads(report_path.read_text())
            text = done.stdout + done.stderr
            assert done.returncode == 0, text
            assert not [f for f in report["findings"] if f["severity"] == "error"], text
            named = [f for f in report["findings"] if f["check"] == "straggler"]
            assert [(f["rank"], f["host"]) for f in named] == [(1, "localhost")], text
            assert "blocked outside the collectives" in named[0]["message"], text
            assert "hrtimer_nanosleep: a sleep" in named[0]["message"], text
    finally:
        job.stop()
