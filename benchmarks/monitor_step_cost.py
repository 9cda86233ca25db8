"""What ``Monitor.step()`` itself costs the training thread, away from a busy machine's
scheduling: one process, no job, the Monitor with stragglers on and off (heartbeat only),
alternated over rounds in one run; each step sleeps a millisecond (the Monitor's threads run
meanwhile, as they do during a real step). ``straggler.py --cost-only`` measures the same call
inside a 6-rank job on the 2-core machine, where a rank descheduled inside the call counts too.

    .venv/bin/python benchmarks/monitor_step_cost.py
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time

STEPS = 1000
ROUNDS = 3
STEP_S = 0.001


def step_costs(stragglers: bool) -> list[float]:
    import ddpcheck

    monitor = ddpcheck.Monitor(stragglers=stragglers)
    costs = []
    try:
        for step in range(STEPS):
            began = time.perf_counter()
            monitor.step(step)
            costs.append(time.perf_counter() - began)
            time.sleep(STEP_S)
    finally:
        monitor.close()
    return costs


def main() -> None:
    os.environ["DDPCHECK_HEARTBEAT_DIR"] = tempfile.mkdtemp(prefix="ddpcheck-bench-")
    costs: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(ROUNDS):
        for stragglers in (True, False):
            costs[stragglers] += step_costs(stragglers)
    print("| Monitor | median us | mean us | 99th percentile us | median, share of a 0.1 s step |")
    print("|---|---|---|---|---|")
    for stragglers, label in ((True, "stragglers on"), (False, "heartbeat only")):
        values = sorted(costs[stragglers])
        median = statistics.median(values)
        print(f"| {label} | {median * 1e6:.1f} | {statistics.fmean(values) * 1e6:.1f} | "
              f"{values[int(len(values) * 0.99)] * 1e6:.1f} | {median / 0.1:.5%} |")


if __name__ == "__main__":
    main()
