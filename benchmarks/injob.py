"""``preflight --in-job`` on namespace hosts with no sshd, beside its floor, and its store
traffic per node with the projection to 1,000 and 4,096 nodes.

The floor is what any launcher inside the job pays: torchrun started in every namespace at once
(as a pod's command would start it), each rank only importing torch, joining the process group
and one barrier (``floor_rank.py``). The in-job preflight is started the same way, with the
``PET_*`` variables a PyTorchJob pod gets: with every check, and with ``--skip compute,numerics``
(the two checks with a fixed time budget per rank by design). The three are interleaved,
``--reps`` each, medians compared: ratios from one run, never an absolute time alone.

Traffic: every node prints its store traffic (every byte on the wire, and round trips) when it
ends; a node other than 0 moves a fixed part (join, stage 0, decision, launch command, result,
verdict) plus one heartbeat round trip a second. Node 0's own client polls two counters and
looks at every heartbeat once a second (one round trip for all of them). Needs root.

    .venv/bin/python benchmarks/injob.py [--reps 3] [--nodes 3] [--slots 2]
"""

from __future__ import annotations

import argparse
import itertools
import os
import pathlib
import re
import statistics
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from nscluster import NamespaceCluster  # noqa: E402

TRAFFIC = re.compile(r"node rank (\d+): store traffic (\d+) bytes sent, (\d+) received, "
                     r"(\d+) round trips")
_ports = itertools.count(29900, 10)


def pod_env(rank: int, nodes: int, slots: int, port: int) -> dict:
    return {"PATH": os.environ["PATH"], "HOME": "/root", "PET_NNODES": str(nodes),
            "PET_NODE_RANK": str(rank), "PET_MASTER_ADDR": "h1", "PET_MASTER_PORT": str(port),
            "PET_NPROC_PER_NODE": str(slots), "PYTHONUNBUFFERED": "1"}


def run_all(cluster: NamespaceCluster, argvs: list[list[str]], envs: list[dict]
            ) -> tuple[float, list[str]]:
    began = time.monotonic()
    procs = [cluster.popen_in(f"h{i + 1}", argv, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
             for i, (argv, env) in enumerate(zip(argvs, envs))]
    outs = []
    for proc in procs:
        out, _ = proc.communicate(timeout=300)
        if proc.returncode != 0:
            raise SystemExit(f"failed ({proc.returncode}):\n{out[-3000:]}")
        outs.append(out)
    return time.monotonic() - began, outs


def time_floor(cluster: NamespaceCluster, nodes: int, slots: int) -> float:
    port = next(_ports)
    argvs = [[sys.executable, "-m", "torch.distributed.run", "--nnodes", str(nodes),
              "--node-rank", str(rank), "--nproc-per-node", str(slots), "--master-addr", "h1",
              "--master-port", str(port), str(HERE / "floor_rank.py")] for rank in range(nodes)]
    envs = [dict(pod_env(rank, nodes, slots, port), GLOO_SOCKET_IFNAME="eth0")
            for rank in range(nodes)]
    return run_all(cluster, argvs, envs)[0]


def time_injob(cluster: NamespaceCluster, nodes: int, slots: int, *extra: str
               ) -> tuple[float, dict[int, tuple[int, int, int]], float]:
    port = next(_ports)
    argvs = [[sys.executable, "-m", "ddpcheck", "preflight", "--in-job", *extra]
             for _ in range(nodes)]
    elapsed, outs = run_all(cluster, argvs, [pod_env(r, nodes, slots, port)
                                             for r in range(nodes)])
    traffic = {int(m[1]): (int(m[2]), int(m[3]), int(m[4]))
               for out in outs for m in TRAFFIC.finditer(out)}
    verdict = re.search(r"Verdict: OK \(exit 0\) in ([0-9.]+)s", outs[0])
    return elapsed, traffic, float(verdict[1]) if verdict else elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--slots", type=int, default=2)
    args = parser.parse_args()
    full, lean, floor = [], [], []
    traffic: list[dict[int, tuple[int, int, int]]] = []
    durations: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        cluster = NamespaceCluster(args.nodes, pathlib.Path(tmp), sshd=False)
        cluster.start()
        try:
            for rep in range(args.reps):
                elapsed, seen, took = time_injob(cluster, args.nodes, args.slots)
                full.append(elapsed)
                traffic.append(seen)
                durations.append(elapsed)
                floor.append(time_floor(cluster, args.nodes, args.slots))
                lean.append(time_injob(cluster, args.nodes, args.slots, "--skip",
                                       "compute,numerics")[0])
                print(f"rep {rep + 1}: in-job {full[-1]:.1f}s  --skip compute,numerics "
                      f"{lean[-1]:.1f}s  floor {floor[-1]:.1f}s", file=sys.stderr)
        finally:
            cluster.stop()
    f = statistics.median(floor)
    print(f"{args.nodes} nodes x {args.slots} ranks, medians of {args.reps}:")
    print(f"| in-job/floor | in-job --skip compute,numerics/floor |")
    print(f"|---|---|")
    print(f"| {statistics.median(full) / f:.2f} | {statistics.median(lean) / f:.2f} |")
    per_node = [t[r] for t in traffic for r in t if r != 0]
    node0 = [t[0] for t in traffic if 0 in t]
    sent = statistics.median(p[0] for p in per_node)
    received = statistics.median(p[1] for p in per_node)
    trips = statistics.median(p[2] for p in per_node)
    seconds = statistics.median(durations)
    print(f"\nstore traffic per node other than 0 (median over {len(per_node)} node runs of "
          f"{seconds:.0f}s): {sent:.0f} B sent, {received:.0f} B received, {trips:.0f} round "
          f"trips; node 0's own client: {statistics.median(p[0] for p in node0):.0f} B sent, "
          f"{statistics.median(p[1] for p in node0):.0f} B received, "
          f"{statistics.median(p[2] for p in node0):.0f} round trips")
    print("| nodes | into node 0's store | out of it | round trips at node 0 | of which "
          "heartbeats, per second |")
    print("|---|---|---|---|---|")
    for nodes in (args.nodes, 1000, 4096):
        n = nodes - 1
        print(f"| {nodes} | {n * sent / 1e6:.1f} MB | {n * received / 1e6:.1f} MB | "
              f"{n * trips:.0f} | {n / 1.0:.0f} |")


if __name__ == "__main__":
    main()
