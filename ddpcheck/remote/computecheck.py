"""The preflight compute check, run by every rank of the probe (stdlib + torch only).

Matrix-multiply throughput and memory bandwidth of the rank's device, all ranks at once (after a
barrier, so neighbours contend as they will in the job), in up to two windows of half the
budget (``--compute-seconds``, 1 s): when the first shows no rank below its peers (the rule
``analyze`` applies, ``core.straggler.slow_devices``), that is the answer; when it shows one,
every rank measures a second window and keeps its better one, so a rank preempted for a moment
is not named, while a slow device (slow in both) still is (``measure_confirmed``).

* GPU: ``torch.matmul`` of square matrices in bf16 and fp16 (where the GPU supports them) and
  fp32 with TF32 allowed (Ampere and newer) -> TFLOP/s; a device-to-device copy of a large
  buffer -> GB/s (bytes read + written). Timed with CUDA events around batches of launches, the
  median batch reported.
* CPU: fp32 matmul -> GFLOP/s and a large tensor copy -> GB/s, timed as total work over the
  *wall time of the whole window* (never the best iteration): a CPU-quota'd or throttled rank
  does short bursts at full speed and then waits, and only the window shows it.

``analyze`` compares each rank with the median of the ranks with the same device model.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from typing import Any, Callable, Optional

import torch

from ..core.straggler import slow_devices
from .tf32 import MatmulTF32

CPU_MATMUL_N = 256
CPU_COPY_BYTES = 8 << 20
GPU_MATMUL_N = 8192
GPU_COPY_BYTES = 1 << 30


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), so peers are CPUs of the same kind."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def run_for(op: Callable[[], Any], seconds: float) -> tuple[int, float]:
    """Runs ``op`` until ``seconds`` of wall time have passed: (iterations, elapsed)."""
    op()  # warm-up (allocation, kernel selection)
    count = 0
    begin = time.perf_counter()
    while True:
        op()
        count += 1
        elapsed = time.perf_counter() - begin
        if elapsed >= seconds:
            return count, elapsed


def measure_cpu(seconds: float = 1.0) -> dict[str, float]:
    """{"fp32 GFLOP/s": ..., "memory GB/s": ...} over ``seconds`` split between the two."""
    n = CPU_MATMUL_N
    a = torch.randn(n, n)
    b = torch.randn(n, n)
    out = torch.empty(n, n)
    count, elapsed = run_for(lambda: torch.matmul(a, b, out=out), seconds * 0.6)
    gflops = 2 * n ** 3 * count / elapsed / 1e9
    src = torch.ones(CPU_COPY_BYTES // 4)
    dst = torch.empty_like(src)
    count, elapsed = run_for(lambda: dst.copy_(src), seconds * 0.4)
    gbs = 2 * CPU_COPY_BYTES * count / elapsed / 1e9
    return {"fp32 GFLOP/s": round(gflops, 2), "memory GB/s": round(gbs, 2)}


def cuda_dtypes(device: torch.device) -> list[tuple[str, torch.dtype]]:
    """The matmul precisions this GPU runs fast: bf16 (Ampere+), fp16, tf32 (Ampere+)."""
    major, _ = torch.cuda.get_device_capability(device)
    dtypes = []
    if major >= 8 and torch.cuda.is_bf16_supported():
        dtypes.append(("bf16", torch.bfloat16))
    if major >= 6:
        dtypes.append(("fp16", torch.float16))
    if major >= 8:
        dtypes.append(("tf32", torch.float32))
    else:
        dtypes.append(("fp32", torch.float32))
    return dtypes


def time_cuda(op: Callable[[], Any], device: torch.device, seconds: float,
              batch: int) -> float:
    """Median seconds per ``op`` over batches of ``batch`` launches, CUDA events around each
    batch, for about ``seconds`` of wall time."""
    op()
    torch.cuda.synchronize(device)
    per_op = []
    deadline = time.perf_counter() + seconds
    while not per_op or (time.perf_counter() < deadline and len(per_op) < 50):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(batch):
            op()
        end.record()
        end.synchronize()
        per_op.append(start.elapsed_time(end) / 1e3 / batch)
    return statistics.median(per_op)


def measure_cuda(device: torch.device, seconds: float = 1.0) -> dict[str, float]:
    """TFLOP/s per precision and copy GB/s on ``device``, each timed with CUDA events."""
    results: dict[str, float] = {}
    dtypes = cuda_dtypes(device)
    share = seconds / (len(dtypes) + 1)
    n = GPU_MATMUL_N
    tf32 = MatmulTF32()
    try:
        for name, dtype in dtypes:
            tf32.allow(name == "tf32")
            a = torch.randn(n, n, device=device, dtype=dtype)
            b = torch.randn(n, n, device=device, dtype=dtype)
            out = torch.empty(n, n, device=device, dtype=dtype)
            per = time_cuda(lambda: torch.matmul(a, b, out=out), device, share, 4)
            results[f"{name} TFLOP/s"] = round(2 * n ** 3 / per / 1e12, 2)
            del a, b, out
    finally:
        tf32.restore()
    src = torch.empty(GPU_COPY_BYTES, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    per = time_cuda(lambda: dst.copy_(src), device, share, 8)
    results["memory GB/s"] = round(2 * GPU_COPY_BYTES / per / 1e9, 1)
    del src, dst
    torch.cuda.empty_cache()
    return results


def compute_check(device: torch.device, host: str, rank: Optional[int],
                  seconds: float = 1.0) -> dict[str, Any]:
    """This rank's compute record: device model, where it is (for messages) and metrics."""
    begin = time.perf_counter()
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        bus = "%04x:%02x:%02x.0" % (getattr(props, "pci_domain_id", 0),
                                    getattr(props, "pci_bus_id", 0),
                                    getattr(props, "pci_device_id", 0))
        model = props.name
        where = f"GPU {device.index} on {host} (bus {bus}, rank {rank})"
        metrics = measure_cuda(device, seconds)
    else:
        threads = torch.get_num_threads()
        model = f"{cpu_model()} ({threads} thread{'s' if threads > 1 else ''})"
        threads = torch.get_num_threads()
        where = f"rank {rank} on {host} (cpu, {threads} thread{'s' if threads > 1 else ''})"
        metrics = measure_cpu(seconds)
    return {"device_model": model, "where": where, "metrics": metrics,
            "seconds": round(time.perf_counter() - begin, 3), "pid": os.getpid()}


def better_window(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    """The second window's record with each metric the better (higher) of the two windows."""
    metrics = dict(first.get("metrics") or {})
    for name, value in (second.get("metrics") or {}).items():
        metrics[name] = max(value, metrics.get(name, value))
    return {**second, "metrics": metrics,
            "seconds": round(first.get("seconds", 0) + second.get("seconds", 0), 3),
            "windows": 2}


def suspects(records: list[dict[str, Any]]) -> bool:
    """Whether any rank's first window falls below its peers (the same rule as ``analyze``)."""
    return bool(slow_devices(records))


def measure_confirmed(device: torch.device, host: str, rank: Optional[int], seconds: float,
                      gather: Callable[[Any], list[Any]],
                      barrier: Callable[[], None]) -> dict[str, Any]:
    """The compute check of every rank (a collective: every rank calls it): a window of half
    ``seconds``; a second one, kept where better, only when the first shows a suspect
    (``gather`` shares the records, ``barrier`` lines the ranks up again)."""
    first = {**compute_check(device, host, rank, seconds / 2), "windows": 1}
    peers = gather({"rank": rank, "host": host, **first})
    if not suspects(peers):
        return first
    barrier()
    return better_window(first, compute_check(device, host, rank, seconds / 2))
