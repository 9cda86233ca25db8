"""The per-rank bandwidth sweep: ``torchrun ... -m ddpcheck.remote.sweep`` (what ``ddpcheck bandwidth``
launches on every rank; it runs by hand under torchrun or srun too).

For each op (``--ops``) and each size (``-b`` to ``-e`` by factor ``-f``): ``-w`` warm-up
iterations, a barrier, ``-n`` timed iterations back to back, then one more iteration on known
data whose result is checked element by element (``#wrong``). Time per iteration is taken with
CUDA events on a GPU (NCCL) and with the monotonic clock around the synchronized iterations on
CPU (gloo, whose collectives return when they are done); the slowest rank's time is the row's,
and the wrong elements are summed over ranks, so every rank reports the same rows.

The rank's record (identity as in ``ddpcheck.remote.probe``, plus the rows as ``collectives``) is one
marked line, ``@@DDPCHECK rank {json}``. A rank stuck past ``--deadline`` still prints its record
with the rows it finished, so a sweep cut short reports what it measured. Rank 0 also prints
each row as it is measured (``@@DDPCHECK row {json}``), as nccl-tests does: the launcher shows
it at once, and keeps it when the run is interrupted before any record comes.

Only the standard library, torch and ddpcheck's stdlib-only modules are imported.
"""

from __future__ import annotations

import argparse
import time
from datetime import timedelta
from typing import Callable, Optional

import torch
import torch.distributed as dist

from ..core.argtypes import collectives, message_size
from ..core.busbw import (ALL_COLLECTIVES, Collective, CollectiveRow, element_count, message_sizes,
                          parse_size)
from ..wire import emit
from .fastexit import run_then_exit
from .probe import RankProbe, run_rank, select_device

PATTERN_PERIOD = 13  # element i carries (i % 13) * 64 on top of its rank's value
PATTERN_STEP = 64.0  # all sums stay exact in float32 for thousands of ranks

_all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_reduce_scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


class OpBuffers:
    """Input/output tensors of one op at one size, the call that runs it, and its check."""

    def __init__(self, op: Collective, count: int, rank: int, world: int,
                 device: torch.device) -> None:
        self.op, self.count, self.rank, self.world, self.device = op, count, rank, world, device
        part = count // world if op in (Collective.ALL_GATHER, Collective.REDUCE_SCATTER,
                                         Collective.ALL_TO_ALL) else count
        self.part = part
        in_count = part if op is Collective.ALL_GATHER else count
        out_count = part if op is Collective.REDUCE_SCATTER else count
        self.input = torch.zeros(in_count, dtype=torch.float32, device=device)
        if op in (Collective.ALL_REDUCE, Collective.BROADCAST):
            self.output = self.input  # in place, as torch.distributed does them
        else:
            self.output = torch.zeros(out_count, dtype=torch.float32, device=device)

    def call(self) -> Callable[[], object]:
        op, inp, out = self.op, self.input, self.output
        if op is Collective.ALL_REDUCE:
            return lambda: dist.all_reduce(inp)
        if op is Collective.BROADCAST:
            return lambda: dist.broadcast(inp, 0)
        if op is Collective.ALL_GATHER:
            return lambda: _all_gather(out, inp)
        if op is Collective.REDUCE_SCATTER:
            return lambda: _reduce_scatter(out, inp)
        return lambda: dist.all_to_all_single(out, inp)

    def _pattern(self, length: int) -> torch.Tensor:
        index = torch.arange(length, device=self.device)
        return (index % PATTERN_PERIOD).to(torch.float32) * PATTERN_STEP

    def fill_known(self) -> None:
        """Rank-dependent data whose result is known exactly (see ``expected``)."""
        rank, world = self.rank, self.world
        if self.op is Collective.ALL_TO_ALL:
            blocks = self.input.view(world, self.part)
            base = self._pattern(self.part)
            for dest in range(world):  # block ``dest`` goes to rank ``dest``
                blocks[dest].copy_(base + float(rank * world + dest + 1))
            return
        self.input.copy_(self._pattern(self.input.numel()) + float(rank + 1))
        if self.output is not self.input:
            self.output.fill_(-1.0)

    def expected(self) -> torch.Tensor:
        rank, world, part = self.rank, self.world, self.part
        ranks_sum = world * (world + 1) / 2.0
        if self.op is Collective.ALL_REDUCE:
            return self._pattern(self.count) * world + ranks_sum
        if self.op is Collective.BROADCAST:
            return self._pattern(self.count) + 1.0
        if self.op is Collective.REDUCE_SCATTER:
            return self._pattern(self.count)[rank * part:(rank + 1) * part] * world + ranks_sum
        base = self._pattern(part)
        if self.op is Collective.ALL_GATHER:
            return torch.cat([base + float(source + 1) for source in range(world)])
        return torch.cat([base + float(source * world + rank + 1) for source in range(world)])

    def count_wrong(self) -> int:
        return int((self.output != self.expected()).sum().item())


class RankSweep(RankProbe):
    """One rank's sweep; the record is filled in as rows complete (see ``RankProbe``)."""

    def error_context(self) -> str:
        return f" at {self.record['size']} B" if "size" in self.record else ""

    def timeout_message(self) -> str:
        return (f"rank did not finish {self.record['stage']} within its deadline; the rows "
                f"measured before are reported")

    def run(self) -> None:
        args = self.args
        self.stage("device")
        device = select_device(self.record, self.args.backend)
        self.stage("init")
        timeout = timedelta(seconds=args.collective_timeout)
        if device.type == "cuda":
            try:
                dist.init_process_group(args.backend, timeout=timeout, device_id=device)
            except TypeError:  # torch without device_id
                dist.init_process_group(args.backend, timeout=timeout)
        else:
            dist.init_process_group(args.backend, timeout=timeout)
        rank, world = dist.get_rank(), dist.get_world_size()
        self.record["rank"] = rank
        self.record["world_size"] = world
        self.record["sweep"] = {
            "ops": [op.value for op in args.ops], "sizes": args.sizes, "iters": args.iters,
            "warmup": args.warmup,
            "timer": "cuda_events" if device.type == "cuda" else "monotonic"}
        for op in args.ops:
            for size in args.sizes:
                count = element_count(op, size, world)
                if count == 0:
                    continue
                self.stage(op.value)
                self.record["size"] = count * 4
                row = measure(op, count, rank, world, device, args.warmup, args.iters)
                self.record["collectives"].append(row.to_dict())
                if rank == 0:  # streamed as measured, as nccl-tests prints its rows
                    emit("row", row.to_dict())
        self.record.pop("size", None)
        self.stage("finish")
        dist.barrier()


def measure(op: Collective, count: int, rank: int, world: int, device: torch.device,
            warmup: int, iters: int) -> CollectiveRow:
    buffers = OpBuffers(op, count, rank, world, device)
    run_op = buffers.call()
    for _ in range(warmup):
        run_op()
    seconds = timed_iterations(run_op, iters, device)
    buffers.fill_known()
    _sync(device)
    run_op()
    _sync(device)
    wrong = buffers.count_wrong()
    slowest = torch.tensor([seconds], dtype=torch.float64, device=device)
    dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
    wrong_total = torch.tensor([wrong], dtype=torch.float64, device=device)
    dist.all_reduce(wrong_total)
    return CollectiveRow(op, count, world, float(slowest.item()), int(wrong_total.item()))


def timed_iterations(run_op: Callable[[], object], iters: int, device: torch.device) -> float:
    """Seconds per iteration of ``iters`` back-to-back runs, started together on every rank."""
    _sync(device)
    dist.barrier()
    _sync(device)
    if device.type == "cuda":
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            run_op()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / iters
    began = time.perf_counter()
    for _ in range(iters):
        run_op()
    return (time.perf_counter() - began) / iters


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m ddpcheck.remote.sweep",
                                     description="ddpcheck per-rank bandwidth sweep (run under "
                                                 "torchrun)")
    parser.add_argument("--host", default=None, help="host name as in hosts.yaml")
    parser.add_argument("--expected-world-size", type=int, default=None)
    parser.add_argument("--backend", default="auto", choices=["auto", "nccl", "gloo"])
    parser.add_argument("--collective-timeout", type=float, default=30.0)
    parser.add_argument("--deadline", type=float, default=600.0,
                        help="the rank reports what it has and exits after this many seconds")
    parser.add_argument("--ops", type=collectives, default=list(ALL_COLLECTIVES),
                        help="comma-separated ops, or all (default)")
    parser.add_argument("-b", "--minbytes", type=message_size, default=parse_size("1M"))
    parser.add_argument("-e", "--maxbytes", type=message_size, default=parse_size("32M"))
    parser.add_argument("-f", "--stepfactor", type=int, default=2)
    parser.add_argument("-n", "--iters", type=int, default=20)
    parser.add_argument("-w", "--warmup", type=int, default=5)
    args = parser.parse_args(argv)
    try:
        args.sizes = message_sizes(args.minbytes, args.maxbytes, args.stepfactor)
    except ValueError as exc:
        parser.error(str(exc))
    if args.iters < 1 or args.warmup < 0:
        parser.error("need -n >= 1 and -w >= 0")
    if args.backend == "auto":
        args.backend = "nccl" if torch.cuda.is_available() else "gloo"
    return args


def main(argv: Optional[list[str]] = None) -> int:
    return run_rank(RankSweep(parse_args(argv)))


if __name__ == "__main__":
    run_then_exit(main)
