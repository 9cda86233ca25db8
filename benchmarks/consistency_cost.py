"""What the consistency checks cost, as ratios measured side by side in one run.

1. In the job: ``check_consistency`` on a ~10M-parameter model (CPU, gloo, 2 ranks under
   torchrun) against one training step of that model (forward, backward with DDP's gradient
   all_reduce, optimizer step), interleaved, medians of ``--reps``.
2. In preflight (needs root): ``ddpcheck preflight`` with its consistency checks (fingerprints,
   the tiny DDP run, the rendezvous check) against ``--skip consistency,rendezvous`` (the spine),
   on the namespace cluster with 2 hosts x 2 ranks, interleaved, medians.

    .venv/bin/python benchmarks/consistency_cost.py [--reps 5] [--preflight-reps 3]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

# Run under torchrun by part 1: prints {"step_s": [...], "check_s": [...]} from rank 0.
JOB = r'''
import json, sys, time
import torch, torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
import ddpcheck

dist.init_process_group("gloo")
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(1024, 4096), torch.nn.ReLU(),
                            torch.nn.Linear(4096, 1024), torch.nn.ReLU(),
                            torch.nn.Linear(1024, 1024))
ddp = DistributedDataParallel(model)
optimizer = torch.optim.Adam(ddp.parameters(), lr=1e-4)
inputs, targets = torch.randn(32, 1024), torch.randn(32, 1024)

def step():
    optimizer.zero_grad()
    torch.nn.functional.mse_loss(ddp(inputs), targets).backward()
    optimizer.step()

def timed(call):
    dist.barrier()
    began = time.perf_counter()
    call()
    dist.barrier()
    return time.perf_counter() - began

step(); ddpcheck.check_consistency(model, step=0, optimizer=optimizer)  # warm-up
steps, checks = [], []
for i in range(int(sys.argv[1])):
    steps.append(timed(step))
    checks.append(timed(lambda: ddpcheck.check_consistency(model, step=i, optimizer=optimizer)))
if dist.get_rank() == 0:
    params = sum(p.numel() for p in model.parameters())
    print("RESULT " + json.dumps({"params": params, "step_s": steps, "check_s": checks}))
dist.destroy_process_group()
'''


def in_job(reps: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        script = pathlib.Path(tmp) / "job.py"
        script.write_text(JOB)
        done = subprocess.run([sys.executable, "-m", "torch.distributed.run",
                               "--nproc-per-node", "2", "--master-port", "29791", str(script),
                               str(reps)], capture_output=True, text=True, timeout=900,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    line = next((l for l in done.stdout.splitlines() if l.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(f"job failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return json.loads(line[len("RESULT "):])


def preflight_seconds(hosts_yaml: pathlib.Path, *extra: str) -> float:
    began = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "ddpcheck", "preflight", str(hosts_yaml),
                           *extra], capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise SystemExit(f"preflight failed:\n{done.stdout}\n{done.stderr}")
    return time.monotonic() - began


def in_preflight(reps: int) -> tuple[list[float], list[float]]:
    from hostsfile import cluster_hosts_yaml
    from nscluster import NamespaceCluster

    with tempfile.TemporaryDirectory() as tmp:
        cluster = NamespaceCluster(2, pathlib.Path(tmp))
        cluster.start()
        try:
            hosts_yaml = cluster_hosts_yaml(cluster, pathlib.Path(tmp) / "hosts.yaml",
                                            slots=2, port=29792)
            preflight_seconds(hosts_yaml)  # warm the page cache
            full, spine = [], []
            for _ in range(reps):
                full.append(preflight_seconds(hosts_yaml))
                spine.append(preflight_seconds(hosts_yaml, "--skip", "consistency,rendezvous"))
            return full, spine
        finally:
            cluster.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--preflight-reps", type=int, default=3)
    args = parser.parse_args()
    job = in_job(args.reps)
    step, check = statistics.median(job["step_s"]), statistics.median(job["check_s"])
    print(f"in-job: {job['params'] / 1e6:.1f}M parameters, 2 ranks gloo: "
          f"check_consistency / training step = {check / step:.2f} (median of {args.reps})")
    if args.preflight_reps:
        full, spine = in_preflight(args.preflight_reps)
        print(f"preflight, 2 hosts x 2 ranks: with consistency+rendezvous / spine = "
              f"{statistics.median(full) / statistics.median(spine):.2f} "
              f"(median of {args.preflight_reps})")


if __name__ == "__main__":
    main()
