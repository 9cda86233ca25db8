"""A small gloo job with ``Monitor(numerics_every=...)``, run by torchrun in the canary tests.

    python -m torch.distributed.run --nproc-per-node 3 numerics_job.py OUTDIR STEPS EVERY

Each step is a forward, backward and a gradient all_reduce of a small model (the ranks stay in
lockstep, as under DDP), then ``monitor.step``. Every rank writes ``rank<R>.json``: the devices
its canary named wrong, its warnings, the canary rounds and the time the canaries took.
"""

import json
import pathlib
import sys

import torch
import torch.distributed as dist

import ddpcheck

outdir, steps, every = pathlib.Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))
data = torch.randn(32, 64)
monitor = ddpcheck.Monitor(str(outdir / "beats"), numerics_every=every, stragglers=False)
for step in range(steps):
    model.zero_grad()
    model(data).square().mean().backward()
    for param in model.parameters():
        dist.all_reduce(param.grad)
    monitor.step(step)
monitor.close()
canary = monitor.numerics
(outdir / f"rank{rank}.json").write_text(json.dumps({
    "rank": rank, "wrong": canary.wrong, "warnings": monitor.warnings, "rounds": canary.rounds,
    "seconds": canary.seconds, "disabled": canary.disabled}))
dist.barrier()
dist.destroy_process_group()
