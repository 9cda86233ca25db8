"""The host agent and the probe on this machine, for real: the agent's deadline, a stop asked
by the launcher, the run directory (removed, or kept with --keep), the probe's watchdog.

Launches that cannot finish by themselves: torchrun with two nodes while only node 0 exists
(it waits in its rendezvous, as when a node never shows up), or one rank told to repeat its
barrier a billion times (a rank that is busy for good).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ddpcheck.remote.agent import descendants
from ddpcheck.collect.hostoutput import parse_output

from sshserver import free_port


WAIT_FOR_A_MISSING_NODE = ["--nnodes", "2"]
BUSY_FOR_GOOD = ["--nnodes", "1", "--iterations", "1000000000"]


def agent_argv(run_dir: str, deadline: float, launch: list[str], *extra: str) -> list[str]:
    nnodes, probe = launch[:2], launch[2:]
    return [sys.executable, "-m", "ddpcheck.remote.agent", "launch", "--deadline", str(deadline),
            "--run-dir", run_dir, *extra, "--",
            *nnodes, "--node-rank", "0", "--nproc-per-node", "1",
            "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
            "--max-restarts", "0", "--monitor-interval", "0.5", "--rdzv-conf", "timeout=300",
            "-m", "ddpcheck.remote.probe", "--backend", "gloo", "--deadline", "300",
            "--no-consistency", *probe]


def start_agent(workdir: Path, deadline: float, launch: list[str],
                *extra: str, env: dict = {}) -> subprocess.Popen:
    return subprocess.Popen(agent_argv("ddpcheck-test", deadline, launch, *extra), cwd=workdir,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, **env})


def finish(proc: subprocess.Popen, timeout: float = 60) -> tuple[str, dict]:
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    agent = parse_output(out.decode("utf-8", "replace")).agent
    assert agent is not None, out[-3000:]
    return out.decode("utf-8", "replace"), agent


def nothing_left_of(pid: int) -> bool:
    """No process of the agent's session remains (torchrun, its workers)."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getsid(int(entry)) == pid:
                    return False
            except OSError:
                continue
    return True


def test_agent_deadline_stops_torchrun_and_removes_the_run_dir(tmp_path):
    began = time.monotonic()
    proc = start_agent(tmp_path, 4, WAIT_FOR_A_MISSING_NODE)
    _, agent = finish(proc)
    took = time.monotonic() - began
    assert proc.returncode == 124
    assert agent["stopped"] == "deadline of 4s"
    assert agent["removed"] is True and agent["kept"] is False
    run_dir = Path(agent["run_dir"])  # ddpcheck-test-<random>, made with mkdtemp
    assert run_dir.parent == tmp_path and run_dir.name.startswith("ddpcheck-test-")
    assert not run_dir.exists()
    assert list(tmp_path.iterdir()) == []  # torchrun's temporary files went with it
    assert took < 4 + 8, took  # the deadline, then at most the kill grace
    assert nothing_left_of(proc.pid)


def test_torchrun_rendezvous_timeout_fires_before_the_agent_deadline(tmp_path):
    """--rendezvous-timeout: torchrun gives up on the missing node by itself, and the agent
    reports its exit (not a deadline of its own)."""
    argv = agent_argv("ddpcheck-test", 120, WAIT_FOR_A_MISSING_NODE)
    argv[argv.index("timeout=300")] = "timeout=3"
    began = time.monotonic()
    proc = subprocess.Popen(argv, cwd=tmp_path, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    out, agent = finish(proc)
    took = time.monotonic() - began
    assert agent["stopped"] is None and agent["exit_code"] not in (0, None)
    assert "timeout" in out.lower() or "timed out" in out.lower()
    assert took < 60, took  # torch's import, then 3 s (torch's default: 600 s)
    assert agent["removed"] is True and list(tmp_path.iterdir()) == []


def test_agent_stops_when_asked_on_stdin_and_says_who_was_running(tmp_path):
    """What the launcher does when another host's ranks failed: "stop" on the agent's stdin.
    The worker is alive (busy in its barriers) and is named with its rank and pid."""
    proc = start_agent(tmp_path, 120, BUSY_FOR_GOOD, "--keep")
    assert proc.stdin is not None
    deadline = time.monotonic() + 60
    while not any(w for w in _workers(proc.pid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)  # one watch round sees it
    environ = dict(item.split(b"=", 1) for pid in _workers(proc.pid)[:1]
                   for item in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                   if b"=" in item)
    asked = time.monotonic()
    proc.stdin.write(b"stop\n")
    proc.stdin.flush()
    out, agent = finish(proc)
    assert time.monotonic() - asked < 10
    assert agent["stopped"] == "asked to stop by the launcher"
    [worker] = agent["workers"]
    assert (worker["rank"], worker["local_rank"]) == (0, 0) and worker["pid"] > 0
    assert worker["alive"] is True and worker["state"] in ("S", "R", "D")
    # --keep: the run directory stays, with the launch's output in launch.log
    run_dir = Path(agent["run_dir"])
    assert run_dir.parent == tmp_path and run_dir.name.startswith("ddpcheck-test-")
    assert agent["kept"] is True and run_dir.is_dir()
    assert run_dir.stat().st_mode & 0o777 == 0o700
    # the rank's temporary files and NCCL dumps go in it; its cwd is off sys.path
    assert environ[b"TMPDIR"] == str(run_dir).encode()
    assert environ[b"TORCH_FR_DUMP_TEMP_FILE"] == str(run_dir / "nccl_trace_rank_").encode()
    assert environ[b"PYTHONSAFEPATH"] == b"1"
    log = (run_dir / "launch.log").read_text()
    assert log and log in out
    assert any(p.name.startswith("torchelastic_") for p in run_dir.iterdir())
    assert nothing_left_of(proc.pid)


def _workers(agent_pid: int) -> list[int]:
    found = []
    for pid in descendants(agent_pid):
        try:
            if b"LOCAL_RANK=" in Path(f"/proc/{pid}/environ").read_bytes():
                found.append(pid)
        except OSError:
            continue
    return found


def test_agent_reports_an_unusable_run_dir_and_starts_nothing(tmp_path):
    (tmp_path / "work").write_text("a file where the workdir should go")
    proc = start_agent(tmp_path, 60, WAIT_FOR_A_MISSING_NODE,
                       env={"DDPCHECK_WORKDIR": str(tmp_path / "work")})
    _, agent = finish(proc)
    assert proc.returncode == 1
    assert agent["error"].startswith(f"workdir {tmp_path / 'work'} is not a directory")
    assert agent["exit_code"] is None and agent["workers"] == []


def test_agent_refuses_a_workdir_others_may_write_and_starts_nothing(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    planted = shared / "ddpcheck-test-planted"
    proc = start_agent(tmp_path, 60, WAIT_FOR_A_MISSING_NODE,
                       env={"DDPCHECK_WORKDIR": str(shared)})
    _, agent = finish(proc)
    assert proc.returncode == 1
    assert agent["error"].startswith(f"workdir {shared} is owned by ")
    assert "mode 0777: writable by group or others" in agent["error"]
    assert agent["exit_code"] is None and agent["workers"] == [] and not planted.exists()
    assert list(shared.iterdir()) == []  # nothing was made there


def test_probe_watchdog_reports_timeout_at_its_deadline(tmp_path):
    """A rank whose peer never comes: the probe's own deadline leaves a timeout record."""
    env = {**os.environ, "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2",
           "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    began = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "ddpcheck.remote.probe", "--backend", "gloo",
                           "--deadline", "5", "--collective-timeout", "120"],
                          capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    took = time.monotonic() - began
    [record] = parse_output(done.stdout).ranks
    assert done.returncode == 3
    assert record["status"] == "timeout" and record["stage"] == "init"
    assert "(its deadline)" in record["error"]
    assert took < 60, took  # the import of torch, then the deadline (minus its 3 s margin)
    assert json.dumps(record)


def _marked(mark: bytes) -> list[int]:
    """Live processes that carry ``mark`` in their environment (zombies have none)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                if mark in Path(f"/proc/{entry}/environ").read_bytes():
                    found.append(int(entry))
            except OSError:
                continue
    return found


def test_whole_command_deadline_mid_launch_stops_every_rank_and_leaves_nothing(tmp_path):
    """``ddpcheck preflight --timeout`` on this machine while both ranks are busy for good:
    the deadline ends the run, the ranks are reported as timed out, no process or run
    directory is left."""
    mark = f"DDPCHECK_TEST_MARK={time.time_ns()}"
    workdir = Path(f"/tmp/ddpcheck-{os.geteuid()}")  # the embedded default's workdir
    before = set(workdir.glob("ddpcheck-*")) if workdir.exists() else set()
    report_path = tmp_path / "report.json"
    began = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "ddpcheck", "preflight", "--timeout", "25",
                           "--iterations", "1000000000", "--skip", "consistency", "--json",
                           str(report_path)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, mark.split("=")[0]: mark.split("=")[1]},
                          cwd=tmp_path)
    took = time.monotonic() - began
    report = json.loads(report_path.read_text())
    assert done.returncode == 1, done.stdout + done.stderr
    assert report["verdict"] == "fail"
    # both ranks reached their deadline: the first to report timed out; the other timed out
    # too, or failed in a collective when its peer went first (collateral)
    statuses = [r["status"] for r in report["ranks"]]
    assert len(statuses) == 2 and "timeout" in statuses and set(statuses) <= {"timeout", "error"}
    [root] = [f for f in report["findings"] if f["root_cause"]]
    assert root["check"] == "timeout"
    assert took < 25 + 10, took
    ends = time.monotonic() + 15
    while (_marked(mark.encode()) or set(workdir.glob("ddpcheck-*")) - before) \
            and time.monotonic() < ends:
        time.sleep(0.2)
    assert _marked(mark.encode()) == []
    assert set(workdir.glob("ddpcheck-*")) - before == set()
    print(f"--timeout 25 mid-launch: exited after {took:.1f}s")
