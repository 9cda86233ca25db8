"""Where a process's CPU quota is accounted, and how long it was throttled: pure parsing of
``/proc/PID/cgroup``, ``/proc/PID/mountinfo`` and a cgroup's ``cpu.stat``.

Bottom layer (standard library only): the Monitor (``injob.stragglers``) reads the files and
calls these. A CFS quota (``cpu.cfs_quota_us`` on cgroup v1, ``cpu.max`` on v2, what a
Kubernetes CPU limit or ``docker --cpus`` sets) holds every thread of the group off the CPU
once its quota of the period is spent; the group's ``cpu.stat`` counts that time
(``throttled_time`` in ns on v1, ``throttled_usec`` on v2). No neighbour's load produces it,
which is why the straggler rules may trust it sooner than a run-queue delay. The quota may sit
on the process's own group or on any ancestor (a pod's group above its container's), so every
group from the process's own up to the hierarchy's root is read.
"""

from __future__ import annotations

import os
from typing import Optional


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (``\\040``)."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def _cpu_mounts(mountinfo: str) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """([(root, mount point)] of cgroup v1 hierarchies with the ``cpu`` controller,
    [(root, mount point)] of cgroup2 mounts), in the order mountinfo lists them."""
    v1, v2 = [], []
    for line in mountinfo.splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        dash = fields.index("-")
        if dash < 5 or len(fields) < dash + 4:
            continue
        root, point = _unescape(fields[3]), _unescape(fields[4])
        fstype, options = fields[dash + 1], fields[dash + 3].split(",")
        if fstype == "cgroup" and "cpu" in options:
            v1.append((root, point))
        elif fstype == "cgroup2":
            v2.append((root, point))
    return v1, v2


def _under(path: str, root: str) -> Optional[str]:
    """``path`` relative to the mount's ``root`` ("" for the root itself), None if outside."""
    path, root = path.rstrip("/") or "/", root.rstrip("/") or "/"
    if root == "/":
        return path.lstrip("/")
    if path == root:
        return ""
    if path.startswith(root + "/"):
        return path[len(root) + 1:]
    return None


def cpu_stat_paths(proc_cgroup: str, mountinfo: str) -> list[str]:
    """The ``cpu.stat`` files of the process's CPU cgroup and each ancestor up to the
    mount's root, own group first. The v1 ``cpu`` hierarchy when there is one (on a hybrid
    host the v2 tree carries no quota), else the v2 tree. [] when neither is mounted where the
    process can see its group."""
    v1_mounts, v2_mounts = _cpu_mounts(mountinfo)
    v1_path = v2_path = None
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":
            v2_path = path
        elif "cpu" in controllers.split(","):
            v1_path = path
    for path, mounts in ((v1_path, v1_mounts), (v2_path, v2_mounts)):
        if path is None:
            continue
        for root, point in mounts:
            relative = _under(path, root)
            if relative is None:
                continue
            groups = [part for part in relative.split("/") if part]
            return [os.path.join(point, *groups[:depth], "cpu.stat")
                    for depth in range(len(groups), -1, -1)]
    return []


def throttled_s(cpu_stat: str) -> Optional[float]:
    """Seconds the group was throttled, from its ``cpu.stat`` (v1 ``throttled_time`` ns, v2
    ``throttled_usec``); None when the file has neither (no cpu controller there)."""
    for line in cpu_stat.splitlines():
        key, _, value = line.partition(" ")
        try:
            if key == "throttled_time":
                return int(value) / 1e9
            if key == "throttled_usec":
                return int(value) / 1e6
        except ValueError:
            return None
    return None
