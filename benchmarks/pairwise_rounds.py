"""Pairwise search rounds and wall time for 4, 8 and 16 hosts, beside one all-host sweep.

One namespace cluster of max(--counts) hosts, every link shaped to 100 Mbit/s with ``tc`` and
one host at a quarter of that (the fault to find). For each host count, in one run: ``bandwidth
--pairwise`` (adaptive: at most 3 rounds), ``--pairwise all`` (the circle method: n-1 rounds;
only up to --all-up-to hosts, as it grows with n) and the all-host sweep of the same op and
size (one torchrun start on every host: the floor any search pays once). Reports rounds and
wall time as ratios to the sweep, and whether the slow host was named. Needs root:

    .venv/bin/python benchmarks/pairwise_rounds.py [--counts 4,8,16] [--all-up-to 8]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from hostsfile import cluster_hosts_yaml  # noqa: E402
from nscluster import NamespaceCluster  # noqa: E402

RATE_MBIT = 100.0
SIZE = ["-e", "4M", "-n", "3", "-w", "1"]


def bandwidth(hosts_yaml: pathlib.Path, report: pathlib.Path, *extra: str) -> tuple[float, dict]:
    began = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "ddpcheck", "bandwidth", str(hosts_yaml),
                           *SIZE, "--ops", "all_reduce", "--json", str(report), "-q", *extra],
                          capture_output=True, text=True, timeout=3600)
    wall = time.monotonic() - began
    if done.returncode not in (0, 1):
        raise SystemExit(f"bandwidth {extra} failed ({done.returncode}):\n{done.stdout}\n"
                         f"{done.stderr[-3000:]}")
    return wall, json.loads(report.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="4,8,16")
    parser.add_argument("--all-up-to", type=int, default=8)
    args = parser.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base = pathlib.Path(tmp)
        cluster = NamespaceCluster(max(counts), base)
        cluster.start()
        try:
            for host in cluster.hosts:
                cluster.shape(host, RATE_MBIT)
            port = 29900
            for count in counts:
                hosts = cluster.hosts[:count]
                slow = hosts[count // 2 + 1 if count > 2 else 0]
                cluster.shape(slow, RATE_MBIT / 4)
                port += 40
                path = cluster_hosts_yaml(cluster, base / f"h{count}.yaml", hosts, slots=1,
                                          port=port)
                sweep_s, _ = bandwidth(path, base / "sweep.json")
                adaptive_s, adaptive = bandwidth(path, base / "adaptive.json", "--pairwise")
                every = None
                if count <= args.all_up_to:
                    every = bandwidth(path, base / "all.json", "--pairwise", "all")
                cluster.shape(slow, RATE_MBIT)
                found = adaptive["bandwidth"]["suspect_hosts"] == [slow.name]
                rows.append((count, sweep_s, adaptive_s, adaptive["bandwidth"]["rounds"], found,
                             every))
                print(f"{count} hosts: sweep {sweep_s:.0f}s adaptive {adaptive_s:.0f}s "
                      f"({adaptive['bandwidth']['rounds']} rounds, found {found}) all "
                      f"{every[0] if every else '-'}", file=sys.stderr)
        finally:
            cluster.stop()
    print("| hosts | adaptive rounds | adaptive wall / sweep | slow host named | all rounds | "
          "all wall / sweep |")
    print("|---|---|---|---|---|---|")
    for count, sweep_s, adaptive_s, rounds, found, every in rows:
        all_rounds = every[1]["bandwidth"]["rounds"] if every else "-"
        all_ratio = f"{every[0] / sweep_s:.2f}" if every else "-"
        print(f"| {count} | {rounds} | {adaptive_s / sweep_s:.2f} | {'yes' if found else 'no'} "
              f"| {all_rounds} | {all_ratio} |")


if __name__ == "__main__":
    main()
