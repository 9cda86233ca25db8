"""``ddpcheck hang`` on the namespace cluster when --timeout runs out during one host's scan:
that host's scan process is stopped for real (kill -STOP), so its answer never comes. The host
is reported as not reached in time, never as the root cause, and with nothing else wrong the
exit code is 3 (not checked), as preflight does for its stage 0."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from hostsfile import cluster_hosts_yaml

pytestmark = pytest.mark.cluster


def scan_pids(cluster, host) -> list[int]:
    """The host's ``python -m ddpcheck.remote.hangscan`` processes."""
    found = []
    for pid in cluster.pids_in(host):
        try:
            argv = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"ddpcheck.remote.hangscan" in argv and not argv[0].endswith(b"sh"):
            found.append(pid)
    return found


def test_a_scan_cut_off_by_the_timeout_is_not_reached_and_exits_3(ns_cluster, tmp_path):
    hosts = ns_cluster.hosts[:3]
    victim = hosts[2]
    hosts_yaml = cluster_hosts_yaml(ns_cluster, tmp_path / "hosts.yaml", hosts)
    report_path = tmp_path / "hang.json"
    proc = subprocess.Popen([sys.executable, "-m", "ddpcheck", "hang", str(hosts_yaml),
                             "--json", str(report_path), "--window", "3", "--timeout", "20",
                             "--no-stacks", "--no-ras"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stopped: list[int] = []
    try:
        deadline = time.monotonic() + 15
        while not stopped and time.monotonic() < deadline and proc.poll() is None:
            for pid in scan_pids(ns_cluster, victim):
                os.kill(pid, signal.SIGSTOP)
                stopped.append(pid)
            time.sleep(0.05)
        assert stopped, "the victim's scan was never seen running"
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        for pid in stopped:  # a stopped process still dies of SIGKILL
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert proc.returncode == 3, out + err
    report = json.loads(report_path.read_text())
    assert report["exit_code"] == 3 and report["verdict"] == "unreachable"
    assert not any(f["root_cause"] for f in report["findings"]), report["findings"]
    (cut,) = [f for f in report["findings"] if f["host"] == victim.name]
    assert cut["message"] == (f"{victim.name}: scan: not reached in time: its scan was running "
                              f"when --timeout (20s) ran out; raise --timeout or ssh.fanout "
                              f"for this many hosts")
    assert "ROOT CAUSE" not in out
    (warning,) = [line for line in out.splitlines() if "no running torchrun worker" in line]
    assert f"found on {hosts[0].name}, {hosts[1].name} (a worker" in warning  # not the victim
