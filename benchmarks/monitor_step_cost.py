"""What ``Monitor.step()`` itself costs the training thread, away from a busy machine's
scheduling: one process, no job, alternated over rounds in one run.

1. Short steps: the Monitor with stragglers on and off (heartbeat only); each step sleeps a
   millisecond (the Monitor's threads run meanwhile, as they do during a real step).
2. Steps as long as ``write_every_s`` (0.1 s, ``--long-steps`` of them a round): the default
   Monitor, whose background thread writes each new step, beside ``write_every_s=0``, which
   writes in ``step()`` on every step, as ``step()`` itself did at such steps before the write
   moved to the thread; each in /dev/shm (the default) and in a folder on the checkout's disk
   (a ``DDPCHECK_HEARTBEAT_DIR`` a user chose there).

Each table has a floor beside it: no Monitor, a small Python function (a 20-entry dict) called
in its place. After a sleep of 0.1 s the CPU's caches are cold and even that takes tens of
microseconds here; in a real job the call follows the step's own work.

``straggler.py --cost-only`` measures the same call inside a job on the 2-core machine, where a
rank descheduled inside the call counts too.

    .venv/bin/python benchmarks/monitor_step_cost.py [--long-steps 100]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import statistics
import tempfile
import time
from typing import Optional

STEPS = 1000
ROUNDS = 3
STEP_S = 0.001
LONG_STEP_S = 0.1
HERE = pathlib.Path(__file__).resolve().parent
FLOOR = "no Monitor: a small function in its place"


def small_function(step: int) -> dict[int, float]:
    """The floor: about as much Python as a call, with no Monitor."""
    return {i: i * 2.0 + step for i in range(20)}


def step_costs(steps: int, step_s: float, directory: Optional[str] = None,
               floor: bool = False, **options) -> list[float]:
    import ddpcheck

    monitor = None if floor else ddpcheck.Monitor(directory, **options)
    call = small_function if monitor is None else monitor.step
    costs = []
    try:
        for step in range(steps):
            began = time.perf_counter()
            call(step)
            costs.append(time.perf_counter() - began)
            time.sleep(step_s)
    finally:
        if monitor is not None:
            monitor.close()
    return costs


def alternated(variants: dict[str, dict], steps: int, step_s: float,
               directory: str) -> dict[str, list[float]]:
    """Each variant's (label: its ``step_costs`` options) call times over ``ROUNDS`` rounds,
    the variants taking turns within each round."""
    costs: dict[str, list[float]] = {label: [] for label in variants}
    for _ in range(ROUNDS):
        for label, options in variants.items():
            costs[label] += step_costs(steps, step_s, **{"directory": directory, **options})
    return costs


def table(costs: dict[str, list[float]], step_s: float) -> None:
    print(f"| Monitor | median us | mean us | 99th percentile us | mean, share of a {step_s} s "
          "step |")
    print("|---|---|---|---|---|")
    for label, values in costs.items():
        values = sorted(values)
        mean = statistics.fmean(values)
        print(f"| {label} | {statistics.median(values) * 1e6:.1f} | {mean * 1e6:.1f} | "
              f"{values[int(len(values) * 0.99)] * 1e6:.1f} | {mean / step_s:.4%} |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--long-steps", type=int, default=100,
                        help="steps of 0.1 s per variant and round in part 2 (0: skip it)")
    args = parser.parse_args()
    shm = tempfile.mkdtemp(prefix="ddpcheck-bench-", dir="/dev/shm" if os.path.isdir(
        "/dev/shm") else None)
    disk = tempfile.mkdtemp(prefix="ddpcheck-bench-", dir=HERE.parent)
    try:
        short = {"stragglers on": {"stragglers": True},
                 "heartbeat only": {"stragglers": False}, FLOOR: {"floor": True}}
        print(f"Steps of {STEP_S * 1e3:.0f} ms, /dev/shm:\n")
        table(alternated(short, STEPS, STEP_S, shm), 0.1)
        if not args.long_steps:
            return
        long = {f"{how}, {where}": {"directory": folder, "write_every_s": every}
                for where, folder in (("/dev/shm", shm), ("disk folder", disk))
                for how, every in (("default (the thread writes)", 0.1),
                                   ("write_every_s=0 (step() writes)", 0.0))}
        long[FLOOR] = {"floor": True}
        print(f"\nSteps of {LONG_STEP_S} s (stragglers on):\n")
        table(alternated(long, args.long_steps, LONG_STEP_S, shm), LONG_STEP_S)
    finally:
        for folder in (shm, disk):
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
