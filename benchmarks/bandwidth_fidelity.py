"""Fidelity and overhead of ``ddpcheck bandwidth`` on the namespace cluster, side by side.

1. Fidelity: every host's link shaped to RATE with tc (both directions); all_reduce busbw of
   ``ddpcheck bandwidth`` on 4 hosts against the shaped rate, and against a plain torch loop
   timing the same all_reduce (same hosts, size, iterations; ``plain_allreduce.py``) started
   with torchrun over ssh. Repetitions interleaved (the order alternating); the ratio is the
   median of the repetitions' ratios.
2. Overhead of ``--pairwise``: its wall time for 2, 4 and 6 hosts, as a ratio to one all-host
   sweep of the same op and size on the same hosts, interleaved.

Needs root.

    .venv/bin/python benchmarks/bandwidth_fidelity.py [--reps 5] [--pair-reps 3] [--rate-mbit 200]
"""

from __future__ import annotations

import argparse
import json
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

FIDELITY_SIZE = 8 << 20
PAIR_SIZE = 4 << 20


def run_ddpcheck(hosts_yaml: pathlib.Path, report: pathlib.Path, *args: str) -> float:
    began = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "ddpcheck", "bandwidth", str(hosts_yaml),
                           "--json", str(report), *args], capture_output=True, text=True,
                          timeout=1200)
    elapsed = time.monotonic() - began
    if done.returncode not in (0, 1):
        raise SystemExit(f"ddpcheck bandwidth failed:\n{done.stdout}\n{done.stderr}")
    return elapsed


def ddpcheck_busbw(hosts_yaml: pathlib.Path, report: pathlib.Path, iters: int) -> float:
    run_ddpcheck(hosts_yaml, report, "--ops", "all_reduce", "-b", str(FIDELITY_SIZE), "-e",
                 str(FIDELITY_SIZE), "-n", str(iters), "-w", "1")
    rows = json.loads(report.read_text())["collectives"]
    return rows[0]["busbw_gbs"]


def plain_busbw(cluster: NamespaceCluster, hosts, port: int, iters: int) -> float:
    procs = []
    for node_rank, host in enumerate(hosts):
        command = (f"GLOO_SOCKET_IFNAME=eth0 {sys.executable} -m torch.distributed.run "
                   f"--nnodes {len(hosts)} --node-rank {node_rank} --nproc-per-node 1 "
                   f"--master-addr {hosts[0].address} --master-port {port} "
                   f"{HERE / 'plain_allreduce.py'} {FIDELITY_SIZE} {iters} 1")
        procs.append(subprocess.Popen(cluster.ssh_argv(host, command), stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    result = None
    for proc in procs:
        out, _ = proc.communicate(timeout=600)
        for line in out.splitlines():
            if line.startswith("RESULT "):
                result = float(line.split()[1])
        if proc.returncode != 0:
            raise SystemExit(f"plain loop failed: {out[-2000:]}")
    if result is None:
        raise SystemExit("plain loop printed no result")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=5, help="fidelity repetitions")
    parser.add_argument("--pair-reps", type=int, default=3, help="--pairwise repetitions")
    parser.add_argument("--rate-mbit", type=float, default=200.0)
    parser.add_argument("--iters", type=int, default=5)
    args = parser.parse_args()
    rate_gbs = args.rate_mbit * 1e6 / 8 / 1e9
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = pathlib.Path(tmp_name)
        cluster = NamespaceCluster(6, tmp)
        cluster.start()
        try:
            for host in cluster.hosts:
                cluster.shape(host, args.rate_mbit)
            port = 29900
            four = cluster.hosts[:4]
            ours, plain = [], []
            for rep in range(args.reps):
                port += 2
                yaml_path = cluster_hosts_yaml(cluster, tmp / "four.yaml", four, slots=1,
                                               port=port)
                # alternate which goes first, so a drift in the machine's load cancels out
                if rep % 2 == 0:
                    ours.append(ddpcheck_busbw(yaml_path, tmp / "four.json", args.iters))
                    plain.append(plain_busbw(cluster, four, port + 1, args.iters))
                else:
                    plain.append(plain_busbw(cluster, four, port + 1, args.iters))
                    ours.append(ddpcheck_busbw(yaml_path, tmp / "four.json", args.iters))
                print(f"busbw: ddpcheck {ours[-1]:.5f}  plain loop {plain[-1]:.5f}  "
                      f"rate {rate_gbs:.5f} GB/s", file=sys.stderr)
            pair_rows = []
            for count in (2, 4, 6):
                hosts = cluster.hosts[:count]
                ratios = []
                for rep in range(args.pair_reps):
                    port += 10
                    yaml_path = cluster_hosts_yaml(cluster, tmp / f"h{count}.yaml", hosts,
                                                   slots=1, port=port)
                    common = ["-e", str(PAIR_SIZE), "-n", str(args.iters), "-w", "1"]
                    runs = [("pairwise", ["--pairwise", *common]),
                            ("sweep", ["--ops", "all_reduce", "-b", str(PAIR_SIZE), *common])]
                    walls = {}
                    for name, extra in (runs if rep % 2 == 0 else runs[::-1]):
                        walls[name] = run_ddpcheck(yaml_path, tmp / f"{name}.json", *extra)
                    ratios.append(walls["pairwise"] / walls["sweep"])
                    print(f"{count} hosts: pairwise {walls['pairwise']:.1f}s  sweep "
                          f"{walls['sweep']:.1f}s  ratio {ratios[-1]:.2f}", file=sys.stderr)
                pair_rows.append((count, count - 1, statistics.median(ratios), ratios))
        finally:
            cluster.stop()
    fidelity = [o / p for o, p in zip(ours, plain)]
    print(f"| measure (median over {args.reps} interleaved repetitions) | ratio |")
    print("|---|---|")
    print(f"| ddpcheck all_reduce busbw / shaped rate ({args.rate_mbit:g} Mbit/s, 4 hosts, "
          f"8 MiB) | {statistics.median(ours) / rate_gbs:.3f} |")
    print(f"| plain torch loop busbw / shaped rate | {statistics.median(plain) / rate_gbs:.3f} |")
    print(f"| ddpcheck busbw / plain torch loop busbw | {statistics.median(fidelity):.3f} "
          f"(each repetition: {', '.join(f'{r:.3f}' for r in fidelity)}) |")
    print()
    print(f"| hosts | rounds | --pairwise wall / one all-host sweep wall (median of "
          f"{args.pair_reps}) | each repetition |")
    print("|---|---|---|---|")
    for count, rounds, ratio, ratios in pair_rows:
        print(f"| {count} | {rounds} | {ratio:.2f} | {', '.join(f'{r:.2f}' for r in ratios)} |")


if __name__ == "__main__":
    main()
