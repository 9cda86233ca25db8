"""The sweep's NCCL path on real GPUs: CUDA-event timing and every op's result checked.

Marked ``gpu`` (deselected by default; run with ``pytest -m gpu`` on a machine with NVIDIA GPUs).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.gpu


def test_sweep_on_every_gpu_with_nccl():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    gpus = torch.cuda.device_count()
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(gpus),
         "--master-port", "29690", "-m", "ddpcheck.remote.sweep", "--backend", "nccl", "--ops", "all",
         "-b", "1M", "-e", "16M", "-f", "4", "-n", "5", "-w", "2", "--deadline", "240"],
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    records = [json.loads(line.split(" ", 2)[2]) for line in done.stdout.splitlines()
               if line.startswith("@@DDPCHECK rank ")]
    assert len(records) == gpus
    assert sorted(r["device"] for r in records) == sorted(f"cuda:{i}" for i in range(gpus))
    assert len({r["gpu_uuid"] for r in records}) == gpus
    for record in records:
        assert record["status"] == "ok" and record["sweep"]["timer"] == "cuda_events"
        rows = record["collectives"]
        assert {r["op"] for r in rows} == {"all_reduce", "all_gather", "reduce_scatter",
                                           "broadcast", "all_to_all"}
        assert all(r["wrong"] == 0 and r["time_us"] > 0 for r in rows)
