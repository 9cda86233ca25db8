"""A small gloo job with ``Monitor(numerics_every=...)``, run by torchrun in the canary tests.

    python -m torch.distributed.run --nproc-per-node 3 numerics_job.py OUTDIR STEPS EVERY [WIDTH]

Each step is a forward, backward and a gradient all_reduce of a small model (WIDTH wide, 64 by
default; the ranks stay in lockstep, as under DDP), then ``monitor.step``. Every rank writes
``rank<R>.json``: the devices its canary named wrong, its warnings, the canary rounds, the time
the canaries took and the training loop's (EVERY 0: no canary, for a baseline).
"""

import json
import os
import pathlib
import sys
import time

import torch
import torch.distributed as dist

import ddpcheck

outdir, steps, every = pathlib.Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
width = int(sys.argv[4]) if len(sys.argv) > 4 else 64
dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.ReLU(),
                            torch.nn.Linear(width, 1))
data = torch.randn(32, width)
monitor = ddpcheck.Monitor(str(outdir / "beats"), numerics_every=every, stragglers=False)
dist.barrier()
began = time.perf_counter()
for step in range(steps):
    model.zero_grad()
    model(data).square().mean().backward()
    for param in model.parameters():
        dist.all_reduce(param.grad)
    monitor.step(step)
loop_s = time.perf_counter() - began
monitor.close()
canary = monitor.numerics
if canary is not None:
    canary.flush()  # rank 0 judges in the background: wait for the last round's verdict
(outdir / f"rank{rank}.json").write_text(json.dumps({
    "rank": rank, "warnings": monitor.warnings, "loop_s": loop_s, "steps": steps,
    **({"wrong": canary.wrong, "rounds": canary.rounds, "seconds": canary.seconds,
        "times": canary.times, "disabled": canary.disabled} if canary is not None else {})}))
dist.barrier()
dist.destroy_process_group()
sys.stdout.flush()
sys.stderr.flush()
os._exit(0)  # no interpreter teardown: see the end of consistency_job.py (a gloo exit race)
