"""A real CPU slowdown for tests: a cgroup v1 ``cpu`` group with a CFS quota
(``cpu.cfs_quota_us``), or on cgroup v2 a child group with ``cpu.max``, holding chosen
processes (all their threads). Needs root. Leaving the context moves the processes back to the
root group and removes the group, whatever happened."""

from __future__ import annotations

import contextlib
import itertools
import os
import pathlib
from typing import Iterable, Iterator

V1 = pathlib.Path("/sys/fs/cgroup/cpu")
V2 = pathlib.Path("/sys/fs/cgroup")
_counter = itertools.count()


def available() -> tuple[bool, str]:
    if os.geteuid() != 0:
        return False, "needs root"
    if (V1 / "cpu.cfs_quota_us").exists() or (V2 / "cgroup.controllers").exists():
        return True, ""
    return False, "no cgroup cpu controller"


@contextlib.contextmanager
def cpu_quota(pids: Iterable[int], fraction: float, period_us: int = 100_000
              ) -> Iterator[pathlib.Path]:
    """Limit ``pids`` together to ``fraction`` of one CPU."""
    quota = max(1000, int(period_us * fraction))
    name = f"ddpc-quota-{os.getpid()}-{next(_counter)}"
    v1 = (V1 / "cpu.cfs_quota_us").exists()
    root = V1 if v1 else V2
    group = root / name
    group.mkdir()
    try:
        if v1:
            (group / "cpu.cfs_period_us").write_text(str(period_us))
            (group / "cpu.cfs_quota_us").write_text(str(quota))
        else:
            (group / "cpu.max").write_text(f"{quota} {period_us}")
        for pid in pids:
            (group / "cgroup.procs").write_text(str(pid))
        yield group
    finally:
        for pid in (group / "cgroup.procs").read_text().split():
            try:
                (root / "cgroup.procs").write_text(pid)
            except OSError:
                pass  # the process is gone
        group.rmdir()
