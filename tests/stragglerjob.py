"""A small real DDP training job (gloo, CPU) for the straggler tests and benchmark, run by
torchrun: an MLP, SGD, a fixed batch; every step does the same work on every rank, so a rank is
slower only when something outside makes it so (a cgroup CPU quota, SIGSTOP/SIGCONT).

    torchrun ... tests/stragglerjob.py --ready-dir DIR [--use-monitor] [--width N]
        [--steps N] [--sleep S] [--step-s S] [--flag-sleep S]

Without ``--use-monitor`` it never imports ddpcheck. After ``--ready-step`` steps each rank
writes ``<ready-dir>/rank-<rank>`` with its pid; every rank appends ``<step> <time>`` to
``<ready-dir>/steps-<rank>`` every ``--mark-every`` steps so a test can tell step rates apart.
With ``--step-s S`` every step from step 12 on ends in the same sleep, S less the median of
steps 2-11 (averaged over the ranks) (a step of about S seconds whose host thread mostly waits, as on a
GPU): the same sleep on every rank, so the ranks leave each collective together and stay in
step (a sleep to S from each rank's own start would keep each rank's phase for ever).
With ``--flag-sleep S`` a rank sleeps S seconds a step, outside any collective, while the file
``<ready-dir>/sleep-<rank>`` exists (a slow data loader, as a test turns it on and off).
Its log lines (the Monitor's warnings) begin with their wall-clock time.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import time
from typing import Optional

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

CALIBRATE = 12  # --step-s: the steps before the first padded one


def write_costs(prefix: str, rank: int, monitor, costs, steps_s) -> None:
    """The mean time of ``monitor.step()`` (its occasional heartbeat writes included) and of
    the training step, and the CPU time of the Monitor's threads (its background thread and
    the straggler sampler) against the training thread's, over the whole run."""
    import json
    import threading

    def oncpu(tid: int) -> float:
        with open(f"/proc/self/task/{tid}/schedstat", encoding="ascii") as handle:
            return int(handle.read().split()[0]) / 1e9

    sampler = getattr(monitor.clock, "sampler", None)  # the Monitor's second thread
    sampler_cpu = oncpu(sampler.thread.native_id) if sampler and sampler.thread.native_id \
        and sampler.thread.is_alive() else 0.0
    result = {"steps": len(steps_s), "step_s": statistics.fmean(steps_s),
              "monitor_step_s": statistics.fmean(costs),
              "monitor_step_median_s": statistics.median(costs),
              "step_median_s": statistics.median(steps_s),
              "monitor_thread_cpu_s": oncpu(monitor._thread.native_id) + sampler_cpu,
              "training_thread_cpu_s": oncpu(threading.get_native_id()),
              "warnings": monitor.warnings}
    with open(f"{prefix}{rank}.json", "w", encoding="utf-8") as handle:
        json.dump(result, handle)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ready-dir", required=True)
    parser.add_argument("--ready-step", type=int, default=3)
    parser.add_argument("--use-monitor", action="store_true")
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--step-s", type=float, default=0.0,
                        help="steps of about this many seconds: a fixed sleep after each")
    parser.add_argument("--flag-sleep", type=float, default=0.0)
    parser.add_argument("--mark-every", type=int, default=10)
    parser.add_argument("--no-stragglers", action="store_true",
                        help="Monitor(stragglers=False): the heartbeat alone")
    parser.add_argument("--measure", default=None,
                        help="with --use-monitor: write the Monitor's bookkeeping cost to "
                             "MEASURE<rank>.json at the end (benchmarks/straggler.py)")
    args = parser.parse_args()

    # each line with its wall-clock time: the benchmark times the naming by the line, not its poll
    logging.basicConfig(level=logging.WARNING, format="%(created).3f %(message)s")
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

        monitor = ddpcheck.Monitor(stragglers=not args.no_stragglers)
    costs: list[float] = []  # seconds in monitor.step(), per step
    steps_s: list[float] = []  # seconds of the training step before it
    marks = open(os.path.join(args.ready_dir, f"steps-{rank}"), "a", buffering=1)
    first: list[float] = []  # --step-s: the steps before CALIBRATE, unpadded
    pad: Optional[float] = None
    sleep_flag = os.path.join(args.ready_dir, f"sleep-{rank}")
    for step in range(args.steps):
        began = time.perf_counter()
        optimizer.zero_grad()
        ddp(inputs).square().mean().backward()
        optimizer.step()
        if monitor is not None:
            mark = time.perf_counter()
            monitor.step(step)
            if args.measure:
                costs.append(time.perf_counter() - mark)
                steps_s.append(mark - began)
        if step % args.mark_every == 0:
            marks.write(f"{step} {time.time():.3f}\n")
        if step == args.ready_step:
            with open(os.path.join(args.ready_dir, f"rank-{rank}"), "w") as handle:
                handle.write(str(os.getpid()))
        if args.sleep:
            time.sleep(args.sleep)
        if args.step_s and step < CALIBRATE:
            first.append(time.perf_counter() - began)
        elif args.step_s:
            if pad is None:  # one pad for all ranks, or the one that pads most is late
                mean = torch.tensor([statistics.median(first[2:])])
                dist.all_reduce(mean)
                pad = max(0.0, args.step_s - float(mean) / dist.get_world_size())
            time.sleep(pad)
            if steps_s:  # the step is the padded one
                steps_s[-1] = time.perf_counter() - began
        if args.flag_sleep and os.path.exists(sleep_flag):
            time.sleep(args.flag_sleep)
    if monitor is not None and args.measure:
        write_costs(args.measure, rank, monitor, costs, steps_s)
    if monitor is not None:
        monitor.close()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
