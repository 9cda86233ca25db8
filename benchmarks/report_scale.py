"""The report at 256 to 4,096 hosts x 8 ranks: rendering cost against the cluster's size.

Synthetic records (tests/test_report_scale.py's generator: one bad GPU, analysed the way
preflight does) rendered as the grouped table, the ``--full`` table, CSV and JUnit; CPU time,
best of 3, side by side in one run. Linear rendering shows as a ratio near 4 for 4x the hosts.
No root, no cluster:

    .venv/bin/python benchmarks/report_scale.py [--counts 256,1024,4096]
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE.parent))

from test_report_scale import cluster  # noqa: E402

from ddpcheck.report.machine import render_csv, render_junit  # noqa: E402
from ddpcheck.report.table import render_table  # noqa: E402

RENDERERS = {
    "grouped table": lambda r: render_table(r),
    "--full table": lambda r: render_table(r, full=True),
    "csv": render_csv,
    "junit": render_junit,
}


def cpu_time(render, report, reps: int = 3) -> float:
    best = float("inf")
    for _ in range(reps):
        start = time.process_time()
        render(report)
        best = min(best, time.process_time() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="256,1024,4096")
    args = parser.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    times = {name: [] for name in RENDERERS}
    lines = []
    for count in counts:
        report = cluster(hosts=count, bad_gpu=(count // 2, 3))
        for name, render in RENDERERS.items():
            times[name].append(cpu_time(render, report))
        lines.append(len(render_table(report).splitlines()))
    print("| renderer | " + " | ".join(f"{b} / {a} hosts" for a, b in zip(counts, counts[1:]))
          + " | hosts ratio |")
    print("|---|" + "---|" * len(counts))
    for name, values in times.items():
        ratios = [f"{b / a:.2f}" for a, b in zip(values, values[1:])]
        print(f"| {name} | " + " | ".join(ratios) + " | "
              + ", ".join(f"{b / a:g}" for a, b in zip(counts, counts[1:])) + " |")
    print("grouped table lines: " + ", ".join(f"{c} hosts: {n}" for c, n in zip(counts, lines)))


if __name__ == "__main__":
    main()
