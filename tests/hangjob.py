"""A small training-like job for the hang tests and benchmark, run by torchrun on gloo.

Every step: an optional stall, one all_reduce, an optional ``ddpcheck.Monitor`` step, a short
sleep. Without ``--use-monitor`` it never imports ddpcheck. After ``--ready-step`` steps each rank
writes ``<ready-dir>/rank-<rank>`` with its pid, so a test knows the job runs and whom to hit.

    torchrun ... tests/hangjob.py --ready-dir DIR [--use-monitor] [--watchdog S]
        [--numerics-every N] [--block-rank R --block-step S] [--flight-recorder]

``--block-rank``: that rank calls ``load_batch()``, an ordinary function that never returns,
before the all_reduce of ``--block-step``: the others wait for it in all_reduce.
``--subgroup 0,1,2``: after the step's all_reduce the ranks listed run one more all_reduce in
their own group (``new_group``, as tensor or pipeline groups are made); the block rank, when it
is one of them, blocks just before that one, so its group's ranks wait for it there while the
others go on to the next step's all_reduce.
``--slow-rank R``: that rank sleeps ``--slow-s`` (0.08 s) more every step (a slow data loader).
``--numerics-every N``: the Monitor runs its numerics canary every N steps.
``--flight-recorder``: a thread of every rank writes its Flight Recorder dump to
``$TORCH_FR_DUMP_TEMP_FILE<rank>`` every 0.5 s, in the format and place NCCL's watchdog uses on a
timeout.
"""

from __future__ import annotations

import argparse
import os
import threading
import time

import torch
import torch.distributed as dist


def load_batch() -> None:
    """Stands for a data loader that never delivers."""
    while True:
        time.sleep(1.0)


def write_flight_record(rank: int) -> None:
    from torch._C._distributed_c10d import _dump_fr_trace

    path = os.environ["TORCH_FR_DUMP_TEMP_FILE"] + str(rank)
    data = _dump_fr_trace(includeCollectives=True, includeStackTraces=False, onlyActive=False)
    with open(path + ".tmp", "wb") as handle:
        handle.write(data)
    os.replace(path + ".tmp", path)


def flight_recorder_thread(rank: int) -> None:
    def run() -> None:
        while True:
            write_flight_record(rank)
            time.sleep(0.5)

    threading.Thread(target=run, name="flight-recorder", daemon=True).start()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ready-dir", required=True)
    parser.add_argument("--ready-step", type=int, default=3)
    parser.add_argument("--use-monitor", action="store_true")
    parser.add_argument("--watchdog", type=float, default=None)
    parser.add_argument("--numerics-every", type=int, default=None)
    parser.add_argument("--block-rank", type=int, default=-1)
    parser.add_argument("--block-step", type=int, default=5)
    parser.add_argument("--flight-recorder", action="store_true")
    parser.add_argument("--sleep", type=float, default=0.05)
    parser.add_argument("--subgroup", default="")
    parser.add_argument("--slow-rank", type=int, default=-1)
    parser.add_argument("--slow-s", type=float, default=0.08)
    args = parser.parse_args()

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    members = [int(r) for r in args.subgroup.split(",") if r.strip()]
    group = dist.new_group(members) if members else None  # every rank calls new_group
    monitor = None
    if args.use_monitor:
        import ddpcheck

        monitor = ddpcheck.Monitor(watchdog_s=args.watchdog, numerics_every=args.numerics_every)
    tensor = torch.ones(16)
    if args.flight_recorder:
        flight_recorder_thread(rank)
    in_group = rank in members
    for step in range(1_000_000):
        if rank == args.block_rank and step == args.block_step and not in_group:
            load_batch()
        dist.all_reduce(tensor)
        tensor.fill_(1.0)
        if in_group:
            if rank == args.block_rank and step == args.block_step:
                load_batch()
            dist.all_reduce(tensor, group=group)
            tensor.fill_(1.0)
        if monitor is not None:
            monitor.step(step)
        if step == args.ready_step:
            with open(os.path.join(args.ready_dir, f"rank-{rank}"), "w") as handle:
                handle.write(str(os.getpid()))
        time.sleep(args.sleep + (args.slow_s if rank == args.slow_rank else 0.0))


if __name__ == "__main__":
    main()
