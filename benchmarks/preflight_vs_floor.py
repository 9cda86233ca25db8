"""Preflight wall time on the namespace cluster for 1, 2 and 3 hosts, beside the floor.

Also ``preflight --skip compute``: the compute check is a fixed second per rank by design.

The floor is torchrun started over ssh on the same hosts with the same ranks, each rank only
importing torch and joining one barrier: what any launcher must pay. Both are timed in the same
run, interleaved, so the ratio preflight/floor holds on a noisy machine. Needs root.

    .venv/bin/python benchmarks/preflight_vs_floor.py [--reps 3] [--slots 2] [--counts 1,2,3]
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from hostsfile import cluster_hosts_yaml  # noqa: E402
from nscluster import NamespaceCluster  # noqa: E402


def time_preflight(hosts_yaml: pathlib.Path, *extra: str) -> float:
    began = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "ddpcheck", "preflight", str(hosts_yaml),
                           *extra], capture_output=True, text=True, timeout=300)
    elapsed = time.monotonic() - began
    if done.returncode != 0:
        raise SystemExit(f"preflight failed:\n{done.stdout}\n{done.stderr}")
    return elapsed


def time_floor(cluster: NamespaceCluster, hosts, slots: int, port: int) -> float:
    master = hosts[0].address
    began = time.monotonic()
    procs = []
    for node_rank, host in enumerate(hosts):
        command = (f"GLOO_SOCKET_IFNAME=eth0 {sys.executable} -m torch.distributed.run "
                   f"--nnodes {len(hosts)} --node-rank {node_rank} --nproc-per-node {slots} "
                   f"--master-addr {master} --master-port {port} {HERE / 'floor_rank.py'}")
        procs.append(subprocess.Popen(cluster.ssh_argv(host, command), stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT))
    for proc in procs:
        out, _ = proc.communicate(timeout=300)
        if proc.returncode != 0:
            raise SystemExit(f"floor failed: {out.decode()[-2000:]}")
    return time.monotonic() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--counts", default="1,2,3")
    args = parser.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        cluster = NamespaceCluster(max(counts), pathlib.Path(tmp))
        cluster.start()
        try:
            rows = []
            port = 29800
            for count in counts:
                hosts = cluster.hosts[:count]
                pre, lean, floor = [], [], []
                for rep in range(args.reps):
                    port += 1
                    yaml_path = cluster_hosts_yaml(cluster, pathlib.Path(tmp) / f"h{count}.yaml",
                                                   hosts, slots=args.slots, port=port)
                    pre.append(time_preflight(yaml_path))
                    port += 1
                    floor.append(time_floor(cluster, hosts, args.slots, port))
                    port += 1
                    yaml_path = cluster_hosts_yaml(cluster, pathlib.Path(tmp) / f"h{count}.yaml",
                                                   hosts, slots=args.slots, port=port)
                    lean.append(time_preflight(yaml_path, "--skip", "compute"))
                p, q, f = (statistics.median(pre), statistics.median(lean),
                           statistics.median(floor))
                rows.append((count, count * args.slots, p / f, q / f))
                print(f"{count} host(s): preflight {p:.1f}s  --skip compute {q:.1f}s  "
                      f"floor {f:.1f}s", file=sys.stderr)
        finally:
            cluster.stop()
    print(f"| hosts | ranks | preflight/floor | preflight --skip compute/floor |"
          f"  (medians of {args.reps})")
    print("|---|---|---|---|")
    for count, ranks, full, lean in rows:
        print(f"| {count} | {ranks} | {full:.2f} | {lean:.2f} |")


if __name__ == "__main__":
    main()
