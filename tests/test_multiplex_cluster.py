"""Many hosts' commands at once without a thread per host, on a 64-host namespace cluster.

Every host runs a real sshd; the launcher (``SSHLauncher.run_jobs``, the path of the pair rounds)
runs a command of a few seconds on all 64 at once with ``ssh.fanout`` 8: one host's command is
killed mid-run, one reaches its own deadline. Every host's result must be its own, and the
launcher's threads while the commands run (paramiko's one transport thread per connection left
out: it stays by design) must stay within the start pool and a constant, not grow with the
hosts (a thread per host made it 64 and more). A second run waits on commands that end at
different times and on commands asked to stop: each is reported as soon as it ends.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time

import paramiko
import pytest

from conftest import started_cluster
from launcherrun import launcher_run
from ddpcheck.engine.launchers import HostJob, SSHLauncher
from ddpcheck.model.spec import ClusterSpec, HostSpec, SSHSpec
from ddpcheck.transport.multiplex import Job, run_many
from ddpcheck.transport.fanout import fan_out
from ddpcheck.transport.ssh import SSHSession

pytestmark = pytest.mark.cluster

HOSTS = 64
FANOUT = 8


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    yield from started_cluster(HOSTS, tmp_path_factory, "multiplex")


@pytest.fixture(scope="module")
def launcher(cluster):
    """An SSHLauncher connected to every host, and its spec."""
    spec = ClusterSpec(hosts=tuple(
        HostSpec(name=h.name, address=h.address, user="root",
                 identity_file=str(cluster.identity_file)) for h in cluster.hosts),
        ssh=SSHSpec(known_hosts=str(cluster.known_hosts), fanout=FANOUT))
    launcher = SSHLauncher()
    outcomes = fan_out(list(spec.hosts), lambda h: SSHSession.connect(h, spec.ssh), FANOUT,
                       threading.Event())
    assert all(o.error is None for o in outcomes), [o.error for o in outcomes if o.error]
    launcher.sessions = {o.item.name: o.result for o in outcomes}
    yield launcher, spec
    launcher.close()


def threads_but_transports() -> int:
    """This process's threads, less paramiko's one per connection."""
    return sum(not isinstance(t, paramiko.Transport) for t in threading.enumerate())


def kill_when_running(cluster, host, marker: bytes) -> list[int]:
    """SIGKILL the host's shell running ``marker`` and its ``sleep 30`` once that runs (its
    login shell's start-up is over then: a hang-up during it may leave the start-up files'
    locks behind)."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        found = {pid: cmdline for pid, cmdline in commands_on(cluster, host)
                 if marker in cmdline or cmdline.startswith(b"sleep 30")}
        if any(cmdline.startswith(b"sleep 30") for cmdline in found.values()):
            for pid in found:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            return list(found)
        time.sleep(0.1)
    return []


def commands_on(cluster, host) -> list[tuple[int, bytes]]:
    found = []
    for pid in cluster.pids_in(host):
        with contextlib.suppress(OSError):
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                found.append((pid, handle.read().replace(b"\0", b" ")))
    return found


def test_64_hosts_run_at_once_with_threads_bounded_by_the_pool(cluster, launcher):
    launcher, spec = launcher
    run = launcher_run(spec, 120.0)
    names = [h.name for h in spec.hosts]
    killed_host, late_host = names[5], names[9]
    jobs = [HostJob(name, "sleep 3; echo done-$(hostname)", 20.0) for name in names]
    jobs[5] = HostJob(killed_host, "sleep 30; echo never-killed", 20.0)
    # its own deadline, once its shell surely started (64 start at once on shared cores)
    jobs[9] = HostJob(late_host, "sleep 30; echo never-late", 6.0)
    before = threads_but_transports()
    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], threads_but_transports())
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    killer_pids: list[int] = []
    killer = threading.Thread(target=lambda: killer_pids.extend(kill_when_running(
        cluster, killed_host, b"never-killed")), daemon=True)
    killer.start()
    began = time.monotonic()
    try:
        results = launcher.run_jobs(run, jobs)
    finally:
        stop.set()
        sampler.join()
        killer.join()
    took = time.monotonic() - began
    assert killer_pids, "the killed host's command was never seen running"
    assert set(results) == set(range(HOSTS))
    for index, name in enumerate(names):
        result = results[index]
        if name == killed_host:
            # closed without an exit status (its shell died of SIGKILL), not a lost connection
            assert result.exit_code == -1 and not (result.lost or result.timed_out), result
            assert "never-killed" not in result.output
        elif name == late_host:
            assert result.timed_out and result.exit_code is None, result
            assert 5.9 <= result.duration_s < 7.5, result
        else:
            # (the last line: root's login shell start-up may say things of its own first)
            assert result.exit_code == 0, result
            assert result.output.strip().splitlines()[-1] == f"done-{name}", result
            assert not (result.lost or result.timed_out or result.cancelled)
    assert took < 15, took
    # the start pool (a thread and a pty watchdog per start), this thread, the sampler and the
    # killer; a thread per host would be 64 more
    grown = peak[0] - (before + 2)
    print(f"threads beyond the {before} before and the test's two: {grown} at most")
    assert grown <= 2 * FANOUT + 2, f"threads grew by {grown} for {HOSTS} hosts"
    # the connections are all still usable: nothing was left half-read
    again = launcher.run_jobs(run, [HostJob(name, "echo again", 10.0) for name in names[:8]])
    assert all(again[i].exit_code == 0 and again[i].output.strip().endswith("again")
               for i in range(8)), again


def test_each_command_is_reported_as_it_ends_and_a_stop_is_sent_once(launcher):
    """``run_many`` as launch uses it: the ``ended`` callback fires per host when that host's
    command ends; the stop event writes one stop line to the commands still running."""
    launcher, spec = launcher
    names = [h.name for h in spec.hosts][:16]
    stop = threading.Event()
    began = time.monotonic()
    commands = {name: "sleep 6; echo late" for name in names}
    commands[names[0]] = "sleep 0.3; echo early"
    for name in names[1:4]:
        commands[name] = "read line; echo got-$line; read again; echo twice-$again"
    jobs = [Job(launcher.sessions[name], commands[name],
                began + (8 if name in names[1:4] else 20), stop) for name in names]
    ended_at: dict[str, float] = {}

    def ended(index: int, result) -> None:
        ended_at[names[index]] = time.monotonic() - began
        if names[index] == names[0]:
            threading.Timer(0.7, stop.set).start()  # the first end starts the "world broken" clock

    outcomes = run_many(jobs, FANOUT, threading.Event(), ended)
    results = {name: o.result for name, o in zip(names, outcomes)}
    late = min(ended_at[name] for name in names[4:])
    # (the remote shells start as the shared cores allow: about a second apart at worst)
    assert ended_at[names[0]] < late - 3, ended_at
    assert results[names[0]].exit_code == 0 and "early" in results[names[0]].output
    for name in names[1:4]:
        # one stop line reached it (the second read then waits until the deadline: no second)
        assert "got-stop" in results[name].output, results[name]
        assert "twice-" not in results[name].output
        assert results[name].timed_out and 8 <= ended_at[name] < 9, results[name]
    for name in names[4:]:
        assert results[name].exit_code == 0 and "late" in results[name].output
        assert ended_at[name] >= 6
