"""Where a process's CPU quota is accounted (core/cgroupcpu.py) and the Monitor's QuotaClock,
against the kernel itself: real cgroups made here, processes moved into them, and the paths the
parser finds from those processes' own /proc/PID/cgroup and mountinfo; a real quota spent by a
spinning process, read as the Monitor reads it."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

import cpuquota
from ddpcheck.core.cgroupcpu import cpu_stat_paths, throttled_s

V1_CPU = pathlib.Path("/sys/fs/cgroup/cpu")


def paths_of(pid: int, mountinfo: str = "") -> list[str]:
    return cpu_stat_paths(pathlib.Path(f"/proc/{pid}/cgroup").read_text(),
                          mountinfo or pathlib.Path(f"/proc/{pid}/mountinfo").read_text())


@pytest.fixture
def nested_v1(tmp_path):
    """A parent and a child group in the v1 cpu hierarchy, and a sleeping process in the
    child; everything undone afterwards."""
    if os.geteuid() != 0 or not (V1_CPU / "cpu.cfs_quota_us").exists():
        pytest.skip("needs root and a cgroup v1 cpu hierarchy")
    parent = V1_CPU / f"ddpc-test-{os.getpid()}"
    child = parent / "ctr"
    child.mkdir(parents=True)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (child / "cgroup.procs").write_text(str(sleeper.pid))
        yield parent, child, sleeper.pid
    finally:
        sleeper.kill()
        sleeper.wait()
        child.rmdir()
        parent.rmdir()


def test_a_process_in_a_nested_group_finds_its_group_then_each_ancestor(nested_v1):
    parent, child, pid = nested_v1
    found = paths_of(pid)
    real = [os.path.realpath(os.path.dirname(path)) for path in found]
    assert real[:2] == [os.path.realpath(child), os.path.realpath(parent)]
    assert real[-1] == os.path.realpath(V1_CPU)  # up to the hierarchy's root
    assert all(pathlib.Path(path).exists() for path in found)
    assert all(throttled_s(pathlib.Path(path).read_text()) is not None for path in found)


def test_without_a_v1_cpu_hierarchy_the_v2_tree_is_read(nested_v1):
    """The process moved into a v2 group of its own too, and the kernel's own mountinfo with the
    v1 cpu mounts taken out: what a v2-only host shows."""
    _, _, pid = nested_v1
    mountinfo = pathlib.Path(f"/proc/{pid}/mountinfo").read_text()
    v2_mounts = [line.split()[4] for line in mountinfo.splitlines() if " - cgroup2 " in line]
    if not v2_mounts:
        pytest.skip("no cgroup2 mount")
    group = pathlib.Path(v2_mounts[0]) / f"ddpc-test-{os.getpid()}"
    group.mkdir()
    try:
        (group / "cgroup.procs").write_text(str(pid))
        v2_only = "\n".join(line for line in mountinfo.splitlines()
                            if not (" - cgroup " in line and "cpu" in
                                    line.split(" - ")[1].split()[2].split(",")))
        assert paths_of(pid, v2_only) == [str(group / "cpu.stat"),
                                          os.path.join(v2_mounts[0], "cpu.stat")]
        assert (group / "cpu.stat").exists()
    finally:
        (pathlib.Path(v2_mounts[0]) / "cgroup.procs").write_text(str(pid))
        group.rmdir()


def test_a_mount_rooted_below_the_hierarchy_and_escaped_names():
    """A container's view (the mount's root is the pod's group, as in a cgroup namespace) and
    a mount point with a space, as mountinfo escapes it (\\040)."""
    mountinfo = ("30 25 0:26 /kubepods/pod1 /sys/fs/cgroup/cpu\\040x rw,nosuid - cgroup cgroup "
                 "rw,cpu,cpuacct\n"
                 "31 25 0:27 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n")
    assert cpu_stat_paths("4:cpu,cpuacct:/kubepods/pod1/ctr\n0::/\n", mountinfo) == [
        "/sys/fs/cgroup/cpu x/ctr/cpu.stat", "/sys/fs/cgroup/cpu x/cpu.stat"]
    # a group outside the mount's root is not visible: the v2 tree then
    assert cpu_stat_paths("4:cpu,cpuacct:/other\n0::/a\n", mountinfo) == [
        "/sys/fs/cgroup/unified/a/cpu.stat", "/sys/fs/cgroup/unified/cpu.stat"]
    assert cpu_stat_paths("", mountinfo) == []
    assert cpu_stat_paths("garbage\n", "garbage\n") == []


def test_throttled_time_in_either_version():
    assert throttled_s("nr_periods 21\nnr_throttled 20\nthrottled_time 1920000000\n") == 1.92
    assert throttled_s("usage_usec 10\nnr_throttled 3\nthrottled_usec 250000\n") == 0.25
    assert throttled_s("usage_usec 10\nuser_usec 5\n") is None
    assert throttled_s("throttled_time x\n") is None


QUOTA_RATE = textwrap.dedent("""
    import sys, time
    from ddpcheck.injob.stragglers import QuotaClock
    clock = QuotaClock()
    clock.refresh()
    sys.stdout.write("ready\\n"); sys.stdout.flush()
    sys.stdin.readline()  # moved into its group by now
    clock.refresh()
    end = time.monotonic() + 1.5
    while time.monotonic() < end:
        pass
    clock.refresh()
    print(clock.rate)
""")


@pytest.mark.parametrize("quota", [0.05, None], ids=["quota-5pct", "no-quota"])
def test_the_monitor_reads_its_own_quota_as_a_throttled_rate(nested_v1, quota):
    """A spinning process reads how long its cgroup's parent quota held it, as the Monitor's
    background thread does; without a quota it reads 0."""
    ok, why = cpuquota.available()
    if not ok:
        pytest.skip(why)
    parent, child, _ = nested_v1
    proc = subprocess.Popen([sys.executable, "-c", QUOTA_RATE], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "ready\n"
        if quota is not None:  # on the parent: the ancestor's quota is the one that holds it
            (parent / "cpu.cfs_period_us").write_text("100000")
            (parent / "cpu.cfs_quota_us").write_text(str(int(100000 * quota)))
        (child / "cgroup.procs").write_text(str(proc.pid))
        proc.stdin.write("\n")
        proc.stdin.flush()
        rate = float(proc.stdout.readline())
    finally:
        proc.kill()
        proc.wait()
        (parent / "cpu.cfs_quota_us").write_text("-1")
    if quota is None:
        assert rate == 0.0
    else:
        assert rate > 0.5  # held for most of its 1.5 s: about 95 %


def test_the_hang_scan_reads_only_its_own_mounts_and_never_blocks(tmp_path):
    """A process in a mount namespace of its own lists a cgroup mount at a path where, in the
    scan's namespace, a FIFO named cpu.stat waits (what another user could plant): the scan
    resolves the group with its own mounts, reads no FIFO, and returns at once."""
    if os.geteuid() != 0 or not (V1_CPU / "cpu.cfs_quota_us").exists():
        pytest.skip("needs root and a cgroup v1 cpu hierarchy")
    import threading

    from ddpcheck.remote.hangscan import cgroup_throttled

    trap = tmp_path / "trap"
    trap.mkdir()
    os.mkfifo(trap / "cpu.stat")
    proc = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c",
                             f"umount -l {V1_CPU} && mount -t cgroup -o cpu cgroup {trap} && "
                             f"echo up && exec sleep 60"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "up\n"
        assert str(trap) in pathlib.Path(f"/proc/{proc.pid}/mountinfo").read_text()
        result: list = []
        reader = threading.Thread(target=lambda: result.append(cgroup_throttled(proc.pid)),
                                  daemon=True)
        reader.start()
        reader.join(5.0)
        assert result, "the scan blocked"
        (found,) = result
        assert found and all(not path.startswith(str(trap)) for path in found), found
        assert os.path.realpath(V1_CPU) in {os.path.realpath(os.path.dirname(p))
                                           for p in found}
    finally:
        proc.kill()
        proc.wait()
