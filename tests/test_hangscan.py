"""The host scan of ``ddpcheck hang`` on real processes of this machine (no torch, no SSH):
processes that carry a torchrun worker's environment, a real SIGSTOP, real py-spy stacks, real
Monitor heartbeats, a real Flight Recorder dump."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import textwrap

import psutil
import pytest

from ddpcheck.remote.hangscan import (find_py_spy, orphan_heartbeats, parse_py_spy_json, topmost,
                               worker_identity)

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "flight_recorder"

# A fake rank: the environment torchrun gives a worker, a Monitor heartbeat, then it waits in an
# ordinary function (and a child that inherits the environment, like a data-loader worker).
FAKE_RANK = textwrap.dedent("""
    import os, subprocess, sys, time
    import ddpcheck
    monitor = ddpcheck.Monitor()
    monitor.step(41)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    def wait_for_batch():
        print("ready", flush=True)
        time.sleep(120)
    wait_for_batch()
""")


def worker_env(tmp_path: pathlib.Path, rank: int, port: int) -> dict[str, str]:
    return {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
            "LOCAL_WORLD_SIZE": "2", "GROUP_RANK": "0", "TORCHELASTIC_RUN_ID": "scan-test",
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
            "DDPCHECK_HEARTBEAT_DIR": str(tmp_path / "beats"),
            "TORCH_FR_DUMP_TEMP_FILE": str(tmp_path / "trace_rank_")}


def run_scan(*args: str) -> dict:
    done = subprocess.run([sys.executable, "-m", "ddpcheck.remote.hangscan", *args],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    (line,) = [l for l in done.stdout.splitlines() if l.startswith("@@DDPCHECK hangscan ")]
    return json.loads(line.split(" ", 2)[2])


@pytest.fixture
def fake_ranks(tmp_path):
    procs = []
    pids: list[int] = []

    def start(rank: int, port: int) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", FAKE_RANK],
                                env=worker_env(tmp_path, rank, port), stdout=subprocess.PIPE,
                                text=True)
        procs.append(proc)
        assert proc.stdout.readline().strip() == "ready"
        pids.extend(c.pid for c in psutil.Process(proc.pid).children())
        return proc

    yield start
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGCONT)
        proc.kill()
        proc.wait()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_scan_finds_ranks_samples_and_stacks_them(tmp_path, fake_ranks):
    if not find_py_spy():
        pytest.skip("py-spy is not installed (pip install 'ddpcheck[stacks]')")
    port = 39000 + os.getpid() % 1000
    running = fake_ranks(0, port)
    stopped = fake_ranks(1, port)
    shutil.copy(FIXTURES / "gloo_trace_rank_0", tmp_path / "trace_rank_0")
    os.kill(stopped.pid, signal.SIGSTOP)
    scan = run_scan("--window", "0.5")
    mine = {w["rank"]: w for w in scan["workers"] if w["job"] == f"scan-test@127.0.0.1:{port}"}
    assert set(mine) == {0, 1}
    assert mine[0]["pid"] == running.pid and mine[0]["children"] == 1  # the child is no rank
    assert mine[1]["samples"][1]["status"] == "stopped"
    for worker in mine.values():
        first, last = worker["samples"]
        assert last["at"] - first["at"] >= 0.4
        assert last["heartbeat"]["step"] == 41 and last["heartbeat"]["pid"] == worker["pid"]
        main = last["stack"]["threads"][0]
        assert main["main"] and main["frames"][0]["name"] == "wait_for_batch"
    assert mine[0]["flight_record"]["last_op"] == "all_reduce"
    assert mine[0]["flight_record"]["last_op_seq"] == 5
    assert mine[1]["flight_record"] is None
    assert scan["py_spy"] and scan["hostname"]


def test_scan_reports_the_heartbeat_of_a_dead_rank(tmp_path, fake_ranks):
    port = 38000 + os.getpid() % 1000
    victim = fake_ranks(1, port)
    for child in psutil.Process(victim.pid).children():  # its data loader dies with it
        child.kill()
    victim.kill()
    victim.wait()
    scan = run_scan("--window", "0.2", "--no-stacks", "--heartbeat-dir", str(tmp_path / "beats"))
    gone = [b for b in scan["gone"] if b["job"] == f"scan-test@127.0.0.1:{port}"]
    assert [(b["rank"], b["pid"], b["step"]) for b in gone] == [(1, victim.pid, 41)]


def test_worker_identity_needs_torchrun_variables():
    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "n1",
           "MASTER_PORT": "29500", "TORCHELASTIC_RUN_ID": "abc", "GROUP_RANK": "1",
           "LOCAL_WORLD_SIZE": "2"}
    assert worker_identity(env) == {"job": "abc@n1:29500", "rank": 3, "local_rank": 1,
                                    "world_size": 4, "group_rank": 1, "local_world_size": 2}
    assert worker_identity({**env, "RANK": "x"}) is None
    assert worker_identity({**env, "RANK": "4"}) is None
    no_master = {k: v for k, v in env.items() if k not in ("MASTER_ADDR",
                                                           "TORCHELASTIC_RUN_ID")}
    assert worker_identity(no_master) is None


def test_topmost_skips_children_and_prefers_python_over_a_wrapper():
    base = {"job": "j", "rank": 0, "create_time": 1.0}
    rank = {**base, "pid": 10, "ppid": 1, "name": "python3"}
    loader = {**base, "pid": 11, "ppid": 10, "name": "python3"}
    (chosen,) = topmost([loader, rank])
    assert chosen["pid"] == 10 and chosen["children"] == 1
    shell = {**base, "pid": 20, "ppid": 1, "name": "bash"}
    inner = {**base, "pid": 21, "ppid": 20, "name": "python3.11", "create_time": 2.0}
    assert topmost([shell, inner])[0]["pid"] == 21


def test_parse_py_spy_json_puts_the_main_thread_first():
    text = json.dumps([
        {"thread_name": "worker", "os_thread_id": 8, "active": True, "owns_gil": True,
         "frames": [{"name": "run", "filename": "/t.py", "line": 3}]},
        {"thread_name": "MainThread", "os_thread_id": 7, "active": False, "owns_gil": False,
         "frames": [{"name": "f", "filename": "/m.py", "line": 1}, "junk"]}])
    threads = parse_py_spy_json(text, pid=7)
    assert threads[0]["main"] and threads[0]["frames"] == [{"name": "f", "file": "/m.py",
                                                            "line": 1}]
    assert threads[1]["gil"] and not threads[1]["main"]
    with pytest.raises(ValueError):
        parse_py_spy_json("{}", pid=1)


def test_find_py_spy_honours_the_variable(tmp_path):
    tool = tmp_path / "py-spy"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    assert find_py_spy({"DDPCHECK_PY_SPY": str(tool)}) == str(tool)


def test_orphan_heartbeats_keep_only_this_hosts_dead_ranks(tmp_path):
    folder = tmp_path / "job"
    folder.mkdir()
    for rank, host, pid in ((0, "here", 111), (1, "here", 222), (2, "elsewhere", 333),
                            (3, "here", 444)):
        (folder / f"rank-{rank}.json").write_text(json.dumps(
            {"job": "j", "rank": rank, "host": host, "pid": pid, "started": 1.0}))
    (folder / "rank-9.json").write_text("{half")
    found = orphan_heartbeats([str(tmp_path)], "here", live={("j", 3)},
                              alive=lambda pid, started: pid == 111)
    assert [b["rank"] for b in found] == [1]


def test_orphan_heartbeats_are_read_only_from_their_owners_folders_and_files(tmp_path):
    """A dead rank's heartbeat counts only from a folder of the scanning user (every user's
    for root) and only when the file belongs to that folder's owner: a heartbeat another user
    forged, or a link in a folder's place, is not taken for a dead rank."""
    from ddpcheck.remote.hangscan import orphan_heartbeats

    root = tmp_path / "ddpcheck-heartbeat-0"
    beat = {"host": "h1", "rank": 1, "pid": 999999, "job": "j", "started": 1.0}
    (root / "job").mkdir(parents=True)
    (root / "job" / "rank-1.json").write_text(json.dumps(beat))
    (root / "forged").mkdir()
    (root / "forged" / "rank-2.json").write_text(json.dumps({**beat, "rank": 2}))
    (root / "link").symlink_to(root / "job")

    def dead(pid, started):
        return False

    me = os.geteuid()
    found = orphan_heartbeats([str(root)], "h1", set(), dead, uid=me)
    assert sorted(b["rank"] for b in found) == [1, 2]
    assert orphan_heartbeats([str(root)], "h1", set(), dead, uid=me + 4242) == []
    if me == 0:
        os.chown(root / "forged" / "rank-2.json", 65534, 65534)
        found = orphan_heartbeats([str(root)], "h1", set(), dead, uid=0)
        assert [b["rank"] for b in found] == [1]
