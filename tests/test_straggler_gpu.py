"""The straggler checks' GPU paths on a real NVIDIA GPU (``pytest -m gpu``; skipped elsewhere):
the compute check's CUDA matmul in every supported precision and device copy, timed with CUDA
events, and the Monitor's NCCL clock (collective time from the process group's completion
hook) on a one-rank NCCL group."""

from __future__ import annotations

import os
import socket
import time

import pytest

torch = pytest.importorskip("torch")

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_compute_check_measures_every_supported_precision_with_cuda_events():
    from ddpcheck.remote.computecheck import compute_check, cuda_dtypes

    device = torch.device("cuda", 0)
    result = compute_check(device, socket.gethostname(), 0, seconds=1.0)
    props = torch.cuda.get_device_properties(device)
    assert result["device_model"] == props.name
    assert result["where"].startswith(f"GPU 0 on {socket.gethostname()} (bus ")
    names = {f"{name} TFLOP/s" for name, _ in cuda_dtypes(device)} | {"memory GB/s"}
    assert set(result["metrics"]) == names
    major, _ = torch.cuda.get_device_capability(device)
    if major >= 8:
        assert {"bf16 TFLOP/s", "fp16 TFLOP/s", "tf32 TFLOP/s"} <= names
        # tensor cores: half precision well above TF32, and far above any CPU
        assert result["metrics"]["bf16 TFLOP/s"] > 20
        assert result["metrics"]["bf16 TFLOP/s"] > result["metrics"]["tf32 TFLOP/s"]
    assert result["metrics"]["memory GB/s"] > 100  # HBM/GDDR, not a host copy
    assert result["seconds"] < 10


def test_monitor_clock_takes_wait_from_nccl_collectives(tmp_path, monkeypatch):
    import torch.distributed as dist

    from ddpcheck.injob.stragglers import StepClock, nccl_collective_clock

    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29797")
    torch.cuda.set_device(0)
    dist.init_process_group("nccl", rank=0, world_size=1, device_id=torch.device("cuda", 0))
    try:
        total = nccl_collective_clock()
        assert total is not None
        clock = StepClock()
        clock.attach(total)
        big = torch.ones(64 << 20, device="cuda")
        clock.sample(0, time.time())
        for _ in range(20):
            dist.all_reduce(big)
        torch.cuda.synchronize()
        time.sleep(0.5)  # the completion hook runs on NCCL's watchdog thread
        clock.sample(1, time.time())
        assert total() > 0
        ((step, _, busy, wait, *_),) = clock.recent()
        assert step == 1 and wait > 0 and busy >= 0
    finally:
        dist.destroy_process_group()
