"""The per-rank probe: ``torchrun ... -m ddpcheck.remote.probe`` (or srun, see launch/).

Each rank states who it is (host, hostname, pid, rank, device, GPU UUID and bus id), joins the
process group with a short timeout, checks all_reduce correctness (every element must equal the
sum of rank+1 over the world) and times barrier and small all_reduce (median of repeats). It
prints one marked JSON line, its record, which ``collect`` reads back; a rank that raises
still prints its record with the stage it reached and the traceback, and a watchdog makes sure
a rank stuck past its deadline leaves a ``timeout`` record instead of hanging.

Consistency (``fingerprint``): after ``--seed`` and the user's ``--setup`` function, the rank
takes its fingerprint (versions, numeric settings, NCCL_*/TORCH_*/... environment, RNG state
hashes, a tiny model's parameters) and gathers everyone's in one collective; when every layout
and dtype agrees, it trains that model for ``--ddp-steps`` steps the way DDP does (rank 0's
parameters broadcast, gradients averaged by all_reduce) on identical data, recording a checksum
of every parameter after each step. ``drift`` compares them afterwards.

Compute (``computecheck``): after the latency stage every rank measures its device's matmul
throughput and memory bandwidth, all ranks at once, in half of ``--compute-seconds`` (1 s), and
in a second half only when the first shows a rank below its peers; ``analyze`` names ranks far
below the median of their peers of the same device model (``straggler``).

Numerics (``numerics``): right after the latency stage, before anything else multiplies, every
rank runs the same seeded chain of matrix products in each training dtype, repeated for its
share of ``--numerics-seconds`` (1 s), and hashes the results' bits; then an all_reduce of known
integers per dtype and size. ``analyze`` names the ranks whose bits differ from their peers of
the same device model and versions, or that hold NaN/Inf (``numerics``).

Only the standard library and torch are imported here, so a host needs just torch and ddpcheck.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import socket
import statistics
import sys
import threading
import time
import traceback
from datetime import timedelta
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist

from .. import wire
from .agent import set_parent_death_signal
from .computecheck import measure_confirmed
from .fastexit import run_then_exit
from .fingerprint import (call_setup, gather_json, load_setup, model_fingerprint,
                          numeric_settings, relevant_env, rng_hashes, runtime_versions,
                          seed_everything)
from .numerics import numerics_check, prepare_environment

CORRECTNESS_ELEMENTS = 1 << 18  # 1 MiB of float32
LEARNING_RATE = 0.1  # the tiny run's plain SGD
DATA_SEED = 1234  # the tiny DDP run's inputs: the same on every rank, whatever the user seeds


class RankProbe:
    """One rank's run; ``record`` is filled in as stages complete, so it is useful at any point."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.started = time.monotonic()
        self.failed_at: Optional[float] = None
        self.emitted = threading.Lock()
        self.done = False
        env = os.environ
        self.record: dict[str, Any] = {
            "host": args.host or socket.gethostname(),
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "rank": _int_env("RANK"),
            "local_rank": _int_env("LOCAL_RANK"),
            "node_rank": _int_env("GROUP_RANK"),
            "world_size": _int_env("WORLD_SIZE"),
            "local_world_size": _int_env("LOCAL_WORLD_SIZE"),
            "master": f"{env.get('MASTER_ADDR', '?')}:{env.get('MASTER_PORT', '?')}",
            "expected_world_size": args.expected_world_size,
            "backend": args.backend,
            "device": "cpu",
            "visible_gpus": torch.cuda.device_count(),
            "versions": {"python": platform.python_version(), "torch": torch.__version__},
            "status": "running",
            "stage": "start",
            "error": None,
            "collectives": [],
        }

    # -- output ---------------------------------------------------------------------------
    def emit(self, status: str, error: Optional[str] = None) -> None:
        with self.emitted:
            if self.done:
                return
            self.done = True
            self.record["status"] = status
            self.record["error"] = error
            self.record["duration_s"] = round(time.monotonic() - self.started, 3)
            if self.failed_at is not None:
                self.record["failed_at"] = self.failed_at
            sys.stdout.write(wire.encode("rank", self.record) + "\n")
            sys.stdout.flush()

    def watchdog(self) -> None:
        """Leave a ``timeout`` record and exit when the rank is stuck past its deadline, or
        just before the host agent's (``DDPCHECK_RANK_DEADLINE``, a time.time() it sets: the
        agent's deadline runs from before torch was imported, ours from after)."""
        wait = max(self.args.deadline - 3.0, 1.0)
        try:
            cutoff = float(os.environ.get("DDPCHECK_RANK_DEADLINE", "inf"))
            wait = min(wait, max(cutoff - time.time(), 0.5))
        except ValueError:
            pass
        time.sleep(wait)
        self.failed_at = time.time()
        self.emit("timeout", self.timeout_message())
        os._exit(3)

    def error_context(self) -> str:
        """Where in its work the rank was when it raised, for the error line."""
        return ""

    def timeout_message(self) -> str:
        return (f"rank did not finish stage '{self.record['stage']}' within "
                f"{time.monotonic() - self.started:.0f}s (its deadline)")

    # -- stages ---------------------------------------------------------------------------
    def stage(self, name: str) -> None:
        self.record["stage"] = name

    def run(self) -> None:
        self.stage("device")
        device = select_device(self.record, self.args.backend)
        self.stage("setup")
        rng = self.run_setup(device)
        self.stage("init")
        init_options: dict[str, Any] = {}
        if device.type == "cuda" and "device_id" in inspect.signature(
                dist.init_process_group).parameters:  # torch >= 2.3
            # Binds the process group to this rank's GPU: NCCL's communicator is created for
            # it (no guessing the device at the first barrier).
            init_options["device_id"] = device
        dist.init_process_group(self.args.backend,
                                timeout=timedelta(seconds=self.args.collective_timeout),
                                **init_options)
        self.record["timer"] = timer_name(device)
        self.record["rank"] = dist.get_rank()
        self.record["world_size"] = dist.get_world_size()
        self.stage("all_reduce")
        check_all_reduce(self.record, device)
        self.stage("barrier")
        iters = self.args.iterations
        self.record["barrier_us"] = median_us(dist.barrier, iters, device)
        self.stage("latency")
        one = torch.ones(1, device=device)
        self.record["allreduce_small_us"] = median_us(lambda: dist.all_reduce(one), iters, device)
        if self.args.numerics_seconds > 0:
            self.stage("numerics")
            self.record["numerics"] = numerics_check(
                device, self.record["host"], self.record["rank"], self.record["world_size"],
                self.args.numerics_seconds, dist.all_reduce)
        if self.args.compute_seconds > 0:
            self.stage("compute")
            dist.barrier()  # all ranks at once: neighbours contend as they will in the job
            self.record["compute"] = measure_confirmed(
                device, self.record["host"], self.record["rank"], self.args.compute_seconds,
                gather_json, dist.barrier)
        if self.args.consistency:
            self.stage("fingerprint")
            self.check_consistency(device, rng)
        self.stage("finish")
        dist.barrier()

    def run_setup(self, device: torch.device) -> Optional[dict[str, Optional[str]]]:
        """--seed, then the user's --setup; the RNG hashes right after (None when neither
        was asked for: unseeded generators differ by design)."""
        if self.args.seed is not None:
            seed_everything(self.args.seed)
        if self.args.setup:
            call_setup(load_setup(self.args.setup), self.args.seed)
        if self.args.seed is None and not self.args.setup:
            return None
        return rng_hashes(device)

    def check_consistency(self, device: torch.device,
                          rng: Optional[dict[str, Optional[str]]]) -> None:
        if rng is not None:
            model = tiny_model().to(device)  # from the user's seeding: is it the same everywhere?
        else:
            # torch seeds each process at random: unseeded, build it from a fixed seed, leaving
            # the global RNG as it was
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(DATA_SEED)
                model = tiny_model().to(device)
        mine: dict[str, Any] = {"versions": runtime_versions(), "settings": numeric_settings(),
                                "env": relevant_env(), "ddp": {"start": model_fingerprint(model)}}
        if rng is not None:
            mine["rng"] = rng
        self.record["fingerprint"] = mine
        everyone = gather_json(mine)  # one collective for the whole fingerprint
        layouts = {json.dumps([row[:3] for row in fp["ddp"]["start"]["params"]])
                   for fp in everyone}
        if len(layouts) > 1:
            mine["ddp"]["skipped"] = "parameter dtypes or shapes differ across ranks"
            return
        self.stage("ddp")
        mine["ddp"]["after"] = train_tiny_ddp(model, device, self.args.ddp_steps)

def select_device(record: dict[str, Any], backend: str) -> torch.device:
    """The rank's device (its local GPU with nccl), noted in its record."""
    if backend != "nccl":
        return torch.device("cpu")
    local_rank = record["local_rank"] or 0
    torch.cuda.set_device(local_rank)
    props = torch.cuda.get_device_properties(local_rank)
    record["device"] = f"cuda:{local_rank}"
    record["gpu_name"] = props.name
    record["gpu_uuid"] = str(getattr(props, "uuid", "")) or None
    bus = (getattr(props, "pci_domain_id", 0), getattr(props, "pci_bus_id", 0),
           getattr(props, "pci_device_id", 0))
    record["gpu_bus_id"] = "%04x:%02x:%02x.0" % bus
    return torch.device("cuda", local_rank)


def check_all_reduce(record: dict[str, Any], device: torch.device) -> None:
    """all_reduce of known values: how many came back wrong, and its time, in the record."""
    world = dist.get_world_size()
    expected = world * (world + 1) / 2
    tensor = torch.full((CORRECTNESS_ELEMENTS,), float(dist.get_rank() + 1), device=device)
    dist.all_reduce(tensor)
    _sync(device)
    wrong = int((tensor != expected).sum().item())
    nbytes = tensor.numel() * tensor.element_size()
    times = []
    for _ in range(3):
        tensor.fill_(float(dist.get_rank() + 1))
        _sync(device)
        times.append(time_once_s(lambda: dist.all_reduce(tensor), device))
        wrong += int((tensor != expected).sum().item())
    seconds = statistics.median(times)
    algbw = nbytes / seconds / 1e9
    record["all_reduce_wrong"] = wrong
    record["collectives"].append({
        "op": "all_reduce", "bytes": nbytes, "time_us": round(seconds * 1e6, 1),
        "algbw_gbs": round(algbw, 3), "busbw_gbs": round(algbw * 2 * (world - 1) / world, 3),
        "wrong": wrong, "timer": timer_name(device)})


def tiny_model() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.LayerNorm(64), torch.nn.ReLU(),
                               torch.nn.Linear(64, 8))


def train_tiny_ddp(model: torch.nn.Module, device: torch.device,
                   steps: int) -> list[dict[str, Any]]:
    """``steps`` SGD steps the way DDP trains, on identical data; a fingerprint after each.

    DDP's algorithm without torch's ``DistributedDataParallel`` class: rank 0's parameters are
    broadcast first (what DDP's constructor does), and after each backward the gradients are
    averaged across ranks with one all_reduce of a flat bucket (what DDP's reducer does). The
    class itself is not built because its constructor imports ``torch._dynamo`` (about 800
    modules, sympy included): seconds of CPU on every rank, the largest part of preflight's
    consistency stage, for nothing this check looks at. ``torch.optim.SGD`` imports it too, so
    the SGD step is written out (``p -= lr * grad``, as SGD without momentum computes it)."""
    with torch.no_grad():
        flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        dist.broadcast(flat, src=0)
        offset = 0
        for param in model.parameters():
            param.copy_(flat[offset:offset + param.numel()].view_as(param))
            offset += param.numel()
    generator = torch.Generator().manual_seed(DATA_SEED)
    dtype = next(model.parameters()).dtype
    inputs = torch.randn(16, 32, generator=generator, dtype=dtype).to(device)
    targets = torch.randn(16, 8, generator=generator, dtype=dtype).to(device)
    world = dist.get_world_size()
    after = []
    for step in range(1, steps + 1):
        model.zero_grad(set_to_none=True)
        torch.nn.functional.mse_loss(model(inputs), targets).backward()
        average_gradients(model, world)
        with torch.no_grad():  # plain SGD, lr 0.1: what torch.optim.SGD's step computes
            for param in model.parameters():
                if param.grad is not None:
                    param.add_(param.grad, alpha=-LEARNING_RATE)
        after.append(model_fingerprint(model, step=step))
    return after


def average_gradients(model: torch.nn.Module, world: int) -> None:
    """DDP's gradient averaging: every gradient divided by the world size and summed across
    ranks, in one flat bucket (one all_reduce per step)."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return
    bucket = torch.cat([g.reshape(-1) for g in grads]).div_(world)
    dist.all_reduce(bucket)
    offset = 0
    for grad in grads:
        grad.copy_(bucket[offset:offset + grad.numel()].view_as(grad))
        offset += grad.numel()


def median_us(op: Callable[[], Any], iterations: int, device: torch.device) -> float:
    op()  # warm-up
    _sync(device)
    times = [time_once_s(op, device) for _ in range(max(iterations, 1))]
    return round(statistics.median(times) * 1e6, 1)


def time_once_s(op: Callable[[], Any], device: torch.device) -> float:
    """Seconds ``op`` takes: CUDA events on a GPU (the collective's time on the device, as
    nccl-tests measures it), a monotonic clock around the synchronized op on CPU."""
    if device.type == "cuda":
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        op()  # a synchronous collective makes the current stream wait for NCCL's stream
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    begin = time.perf_counter()
    op()
    return time.perf_counter() - begin


def timer_name(device: torch.device) -> str:
    return "cuda_event" if device.type == "cuda" else "monotonic"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _int_env(name: str) -> Optional[int]:
    value = os.environ.get(name)
    return int(value) if value is not None and value.lstrip("-").isdigit() else None


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m ddpcheck.remote.probe",
                                     description="ddpcheck per-rank probe (run under torchrun)")
    parser.add_argument("--host", default=None, help="host name as in hosts.yaml")
    parser.add_argument("--expected-world-size", type=int, default=None)
    parser.add_argument("--backend", default="auto", choices=["auto", "nccl", "gloo"])
    parser.add_argument("--collective-timeout", type=float, default=30.0,
                        help="process group timeout in seconds (default 30)")
    parser.add_argument("--deadline", type=float, default=120.0,
                        help="the rank gives up and reports 'timeout' after this many seconds")
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--seed", type=int, default=None,
                        help="seed Python, NumPy and torch on every rank, then compare RNG states")
    parser.add_argument("--setup", metavar="MODULE:FUNCTION", default=None,
                        help="call the user's set-up function first (FILE.py:FUNCTION works "
                             "too); it gets the seed when it takes an argument")
    parser.add_argument("--ddp-steps", type=int, default=3,
                        help="steps of the tiny DDP run (default 3)")
    parser.add_argument("--compute-seconds", type=float, default=1.0,
                        help="the compute check's time on each rank: matmul throughput and "
                             "memory bandwidth (default 1; 0 skips it)")
    parser.add_argument("--numerics-seconds", type=float, default=1.0,
                        help="the numerics check's time on each rank: seeded matrix products "
                             "in every training dtype, their bits compared across ranks, and an "
                             "exact all_reduce (default 1; 0 skips it)")
    parser.add_argument("--no-consistency", dest="consistency", action="store_false",
                        help="skip fingerprints and the tiny DDP run")
    args = parser.parse_args(argv)
    if args.backend == "auto":
        args.backend = "nccl" if torch.cuda.is_available() else "gloo"
    return args


def run_rank(probe: RankProbe) -> int:
    """A rank's whole life: watchdog, run, and a record on every way out (ok, error, timeout)."""
    set_parent_death_signal(9)  # torchrun gone -> this rank goes too
    prepare_environment()  # before the first product starts cuBLAS
    threading.Thread(target=probe.watchdog, daemon=True).start()
    try:
        probe.run()
    except BaseException as exc:  # noqa: BLE001 - every failure must leave a record
        probe.failed_at = time.time()
        probe.emit("error", f"{type(exc).__name__}{probe.error_context()}: {exc}\n"
                            f"{traceback.format_exc()}")
        return 1
    finally:
        if dist.is_initialized():
            try:
                dist.destroy_process_group()
            except Exception:  # noqa: BLE001 - the record is already out
                pass
    probe.emit("ok")
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    return run_rank(RankProbe(parse_args(argv)))


if __name__ == "__main__":
    run_then_exit(main)
