"""ddpcheck.Monitor: heartbeat files, the cheap import, and the stall watchdog against a real
stopped process (file mode: no torch, no store)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from ddpcheck.core.heartbeat import job_key, path as heartbeat_path
from ddpcheck.injob.monitor import Monitor, stall_message


def env_of(rank: int, world: int = 2, run_id: str = "mon-test") -> dict[str, str]:
    return {"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
            "TORCHELASTIC_RUN_ID": run_id}


def read(path: str) -> dict:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def wait_for(predicate, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_import_ddpcheck_stays_light_and_monitor_loads_on_use():
    code = ("import sys, ddpcheck; assert 'ddpcheck.injob.monitor' not in sys.modules; "
            "ddpcheck.Monitor; assert 'ddpcheck.injob.monitor' in sys.modules; "
            "assert not [m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'psutil', 'paramiko', 'yaml', 'tabulate')], sorted(sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr


def test_heartbeat_is_written_atomically_with_rank_step_and_host(tmp_path):
    env = env_of(1)
    with Monitor(str(tmp_path), env=env, beat_s=0.1) as monitor:
        assert monitor.path == heartbeat_path(str(tmp_path), job_key(env), 1)
        monitor.step(5)
        beat = read(monitor.path)
        assert (beat["rank"], beat["world_size"], beat["step"]) == (1, 2, 5)
        assert beat["job"] == "mon-test@?:?" and beat["pid"] == os.getpid()
        assert beat["host"] == socket.gethostname() and beat["seq"] is None
        monitor.step(6)  # within write_every_s of the last write: left to the thread
        wait_for(lambda: read(monitor.path)["step"] == 6, 3.0)
        assert sorted(os.listdir(os.path.dirname(monitor.path))) == ["rank-1.json"]


def thread_cpu_s(tid: int) -> float:
    with open(f"/proc/self/task/{tid}/schedstat", encoding="ascii") as handle:
        return int(handle.read().split()[0]) / 1e9


def test_step_leaves_the_write_to_the_thread_which_writes_each_new_step_soon(tmp_path):
    """A step longer than write_every_s would pay a write and rename in step() every step
    (milliseconds on a disk folder): step() only records it; the thread writes it within
    write_every_s, and waits, not spins, while no step comes."""
    with Monitor(str(tmp_path), env=env_of(0), write_every_s=0.3, beat_s=30,
                 stragglers=False) as monitor:
        monitor.step(1)  # the first step is written at once
        assert read(monitor.path)["step"] == 1
        for step in (2, 3):
            time.sleep(0.4)  # longer than write_every_s: the old step() wrote here
            began = os.stat(monitor.path).st_mtime_ns
            monitor.step(step)
            assert os.stat(monitor.path).st_mtime_ns == began  # step() wrote nothing
            written = time.monotonic()
            wait_for(lambda: read(monitor.path)["step"] == step, 3.0)
            assert time.monotonic() - written < 0.3 + 0.5  # within write_every_s (and a slack)
        cpu = thread_cpu_s(monitor._thread.native_id)
        time.sleep(1.0)  # no step: the thread looks three times, and writes nothing
        assert thread_cpu_s(monitor._thread.native_id) - cpu < 0.05
        assert read(monitor.path)["step"] == 3


def test_close_writes_the_last_step(tmp_path):
    with Monitor(str(tmp_path), env=env_of(0), write_every_s=5.0, beat_s=30,
                 stragglers=False) as monitor:
        monitor.step(1)
        monitor.step(2)  # the thread would write it 5 s after the first
    assert read(monitor.path)["step"] == 2


def test_every_step_written_when_asked(tmp_path):
    with Monitor(str(tmp_path), env=env_of(0), write_every_s=0.0, beat_s=30) as monitor:
        for step in range(3):
            monitor.step(step)
            assert read(monitor.path)["step"] == step


def test_default_folder_is_private_and_one_planted_by_another_user_is_refused(tmp_path,
                                                                               monkeypatch):
    monkeypatch.setattr("ddpcheck.core.heartbeat.SHM_DIR", str(tmp_path))
    with Monitor(env=env_of(0)) as monitor:
        root = tmp_path / f"ddpcheck-heartbeat-{os.getuid()}"
        assert monitor.path.startswith(str(root))
        assert (root.stat().st_mode & 0o777) == 0o700
    if os.getuid() != 0:
        return  # giving the folder away needs root
    os.chown(root, 54321, 54321)
    with pytest.raises(PermissionError, match="uid 54321"):
        Monitor(env=env_of(0))


def test_stall_message_names_silent_and_behind_ranks():
    first = {0: {"step": 9, "seq": 20, "beat": 5, "host": "h1", "pid": 10},
             1: {"step": 9, "seq": 20, "beat": 7, "host": "h1", "pid": 11},
             2: {"step": 9, "seq": 19, "beat": 3, "host": "h2", "pid": 12},
             3: {"step": 8, "seq": 18, "beat": 4, "host": "h2", "pid": 13}}
    second = {**first, 0: {**first[0], "beat": 6}, 1: {**first[1], "beat": 8},
              2: {**first[2], "beat": 4}}
    text = stall_message(0, "h1", 9, 20, 31.4, 5, first, second)
    assert text.startswith("ddpcheck.Monitor [h1:rank 0]: no progress for 31s at step 9, "
                           "collective seq 20; lagging: ")
    assert "rank 3 on h2 (pid 13) not responding, its last report at step 8" in text
    assert "rank 4 never reported" in text
    assert "rank 2 on h2 (pid 12) behind at step 9, collective seq 19" in text
    assert "rank 1" not in text
    calm = stall_message(0, "h1", 9, 20, 31, 2, first, {0: second[0], 1: second[1]})
    assert "no rank is behind" in calm


STOPPING_RANK = textwrap.dedent("""
    import sys, time
    import ddpcheck
    monitor = ddpcheck.Monitor(sys.argv[1], beat_s=0.1)
    for step in range(4):
        monitor.step(step)
    time.sleep(0.3)
    print("ready", flush=True)
    time.sleep(120)
""")


def test_watchdog_names_a_stopped_rank_of_this_host(tmp_path):
    peer = subprocess.Popen([sys.executable, "-c", STOPPING_RANK, str(tmp_path)],
                            env={**os.environ, **env_of(1)}, stdout=subprocess.PIPE, text=True)
    try:
        assert peer.stdout.readline().strip() == "ready"
        os.kill(peer.pid, signal.SIGSTOP)
        with Monitor(str(tmp_path), watchdog_s=0.5, beat_s=0.1, env=env_of(0)) as monitor:
            for step in range(4):
                monitor.step(step)
            wait_for(lambda: monitor.warnings, 10.0)  # this rank now waits: no more steps
        (warning,) = monitor.warnings
        assert "no progress for" in warning and "at step 3" in warning
        assert (f"rank 1 on {socket.gethostname()} (pid {peer.pid}) not responding, its last "
                f"report at step 3") in warning
    finally:
        os.kill(peer.pid, signal.SIGCONT)
        peer.kill()
        peer.wait()


def test_the_background_thread_wakes_at_the_exchange_instant_or_the_beat_whichever_first():
    """The straggler exchange happens at the same wall-clock instants on every rank, so the
    thread sleeps until the next one (not a period from wherever it woke), and never past its
    beat, whatever the wall clock does."""
    from types import SimpleNamespace

    from ddpcheck.injob.monitor import _until

    now, mono = time.time(), time.monotonic()
    exchange = SimpleNamespace(next_at=now + 0.1)
    assert 0.05 < _until(mono + 1.0, exchange) <= 0.1
    assert 0.5 < _until(mono + 0.6, None) <= 0.6
    assert _until(mono + 1.0, SimpleNamespace(next_at=now - 5)) == 0.0  # overdue: at once
    assert 0.5 < _until(mono + 0.6, SimpleNamespace(next_at=now + 3600)) <= 0.6  # clock stepped
    assert _until(mono - 1.0, exchange) == 0.0
