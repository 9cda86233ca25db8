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


def _one_rank_nccl_group(monkeypatch, port: int):
    import torch.distributed as dist

    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))
    torch.cuda.set_device(0)
    dist.init_process_group("nccl", rank=0, world_size=1, device_id=torch.device("cuda", 0))
    return dist


def test_monitor_clock_credits_each_steps_wait_from_the_nccl_collectives_it_issued(monkeypatch):
    """A group created after ``ask_nccl_timing`` (as a Monitor made before init_process_group
    does) times its collectives; the hook's records reach the Monitor up to a watchdog poll
    (100 ms) late, and each step gets the GPU time of the collectives it issued, not of those
    that completed meanwhile: a 50 ms step without a collective waits 0 after a step with 20."""
    from ddpcheck.injob.stragglers import (NCCL_TIMING_ENV, StepClock, ask_nccl_timing,
                                           nccl_collective_log)

    environ: dict[str, str] = {}
    ask_nccl_timing(environ)  # as the Monitor does to os.environ; here through monkeypatch
    monkeypatch.setenv(NCCL_TIMING_ENV, environ[NCCL_TIMING_ENV])
    dist = _one_rank_nccl_group(monkeypatch, 29797)
    try:
        log = nccl_collective_log()
        assert log is not None
        clock = StepClock()
        clock.attach(log)
        big = torch.ones(64 << 20, device="cuda")
        out = torch.empty_like(big)
        clock.sample(0, time.time())
        for _ in range(20):  # a copy kernel each (an in-place one-rank all_reduce launches none)
            dist.all_gather_into_tensor(out, big)
        torch.cuda.synchronize()  # as a training step's loss.item() does
        clock.sample(1, time.time())
        time.sleep(0.05)
        clock.sample(2, time.time())
        dist.all_gather_into_tensor(out, big)
        torch.cuda.synchronize()
        clock.sample(3, time.time())
        time.sleep(0.6)  # the completion hook runs on NCCL's hook thread; step 3 settles
        rows = clock.recent()
        assert [row[0] for row in rows] == [1, 2, 3]
        (_, _, busy1, wait1, *_), (_, _, busy2, wait2, *_), (_, _, _, wait3, *_) = rows
        assert wait1 > 20 * 256e6 / 10e12  # 256 MB copied 20 times, at most 10 TB/s
        assert busy1 >= 0 and wait2 == 0 and busy2 > 0.04
        assert 0 < wait3 < wait1
    finally:
        dist.destroy_process_group()


def test_a_group_created_without_timing_gets_no_hook_and_keeps_working(monkeypatch, caplog):
    """Timing turned on while collectives are in flight would leave them untimed, and the hook
    aborts the group on the first: such a group gets no hook, a warning, and keeps working."""
    from ddpcheck.injob.stragglers import NCCL_TIMING_ENV, nccl_collective_log

    monkeypatch.delenv(NCCL_TIMING_ENV, raising=False)
    dist = _one_rank_nccl_group(monkeypatch, 29798)
    try:
        big = torch.ones(1 << 20, device="cuda")
        dist.all_reduce(big, async_op=True)  # in flight while the Monitor looks
        with caplog.at_level("WARNING"):
            assert nccl_collective_log() is None
        assert f"without {NCCL_TIMING_ENV}=1" in caplog.text
        for _ in range(5):
            dist.all_reduce(big)
        torch.cuda.synchronize()
        assert float(big[0]) == 1.0
    finally:
        dist.destroy_process_group()
