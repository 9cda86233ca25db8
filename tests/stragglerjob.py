"""A small real DDP training job (gloo, CPU) for the straggler tests and benchmark, run by
torchrun: an MLP, SGD, a fixed batch; every step does the same work on every rank, so a rank is
slower only when something outside makes it so (a cgroup CPU quota, SIGSTOP/SIGCONT).

    torchrun ... tests/stragglerjob.py --ready-dir DIR [--use-monitor] [--width N]
        [--steps N] [--sleep S]

Without ``--use-monitor`` it never imports ddpcheck. After ``--ready-step`` steps each rank
writes ``<ready-dir>/rank-<rank>`` with its pid; every rank appends ``<step> <time>`` to
``<ready-dir>/steps-<rank>`` every ``--mark-every`` steps so a test can tell step rates apart.
"""

from __future__ import annotations

import argparse
import logging
import os
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ready-dir", required=True)
    parser.add_argument("--ready-step", type=int, default=3)
    parser.add_argument("--use-monitor", action="store_true")
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--mark-every", type=int, default=10)
    args = parser.parse_args()

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    width = args.width
    model = torch.nn.Sequential(*[layer for _ in range(4) for layer in
                                  (torch.nn.Linear(width, width), torch.nn.ReLU())])
    ddp = DistributedDataParallel(model)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=1e-3)
    inputs = torch.randn(args.batch, width)
    monitor = None
    if args.use_monitor:
        import ddpcheck

        monitor = ddpcheck.Monitor()
    marks = open(os.path.join(args.ready_dir, f"steps-{rank}"), "a", buffering=1)
    for step in range(args.steps):
        optimizer.zero_grad()
        ddp(inputs).square().mean().backward()
        optimizer.step()
        if monitor is not None:
            monitor.step(step)
        if step % args.mark_every == 0:
            marks.write(f"{step} {time.time():.3f}\n")
        if step == args.ready_step:
            with open(os.path.join(args.ready_dir, f"rank-{rank}"), "w") as handle:
                handle.write(str(os.getpid()))
        if args.sleep:
            time.sleep(args.sleep)
    if monitor is not None:
        monitor.close()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
