"""What a launcher sees of a run (``engine.launchers.Run``), without the engine: for tests and
benchmarks that drive ``SSHLauncher`` directly. Runs on the launcher side."""

from __future__ import annotations

from dataclasses import dataclass

from ddpcheck.engine.state import RunState
from ddpcheck.model.spec import ClusterSpec
from ddpcheck.report.progress import Progress


@dataclass
class LauncherRun:
    spec: ClusterSpec
    state: RunState
    progress: Progress
    verbose: bool = False
    launch_grace_s: float = 5.0


def launcher_run(spec: ClusterSpec, timeout_s: float) -> LauncherRun:
    """A run of ``spec`` bounded by ``timeout_s``, reporting no progress."""
    return LauncherRun(spec, RunState(spec, timeout_s), Progress(None))
