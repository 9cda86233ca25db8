"""The numerics check on a real NVIDIA GPU: bf16, fp16, fp32 and TF32 products with
deterministic cuBLAS, the exact all_reduce on NCCL across its protocol sizes, and a lone GPU whose
products flicker (planted after torch loads, tests/wrongmatmul.py) named by its own repetitions.
Run with ``pytest -m gpu`` (gpu/run-suite.sh runs every gpu test); without a GPU they skip.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ddpcheck.remote import nvml
from wrongmatmul import wrong_matmul_site


def _nvml_gpus() -> int:
    facts = nvml.read_gpus()
    return len(facts["gpus"]) if facts.get("available") else 0


pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(_nvml_gpus() == 0, reason="needs an NVIDIA GPU and driver")]


def preflight(tmp_path, env_extra: dict) -> tuple[subprocess.CompletedProcess, dict]:
    report_path = tmp_path / "report.json"
    done = subprocess.run([sys.executable, "-m", "ddpcheck", "preflight", "--json",
                           str(report_path), "--skip", "consistency"], capture_output=True,
                          text=True, timeout=300, cwd=tmp_path,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": "0", **env_extra})
    return done, json.loads(report_path.read_text())


def test_products_are_the_same_every_time_and_within_the_reference():
    import torch

    from ddpcheck.remote import numerics

    numerics.prepare_environment()
    device = torch.device("cuda", 0)
    tf32_before = torch.backends.cuda.matmul.allow_tf32
    first = numerics.check_products(device, 1.0)
    second = numerics.check_products(device, 0.5)
    major, _ = torch.cuda.get_device_capability(device)
    assert {"fp16", "fp32"} <= set(first)
    if major >= 8:
        assert {"bf16", "tf32"} <= set(first)
    for name, result in first.items():
        assert len(result["digests"]) == 1, (name, result)
        assert result["nonfinite"] == 0 and result["reference_bad"] == 0, (name, result)
        assert second[name]["digests"].keys() == result["digests"].keys()
    if major >= 8:  # TF32 really rounds: its bits are not fp32's
        assert first["tf32"]["digests"].keys() != first["fp32"]["digests"].keys()
    assert torch.backends.cuda.matmul.allow_tf32 == tf32_before  # the job's setting, restored


def test_the_localizing_all_reduce_pattern_on_the_gpu_decodes_whose_share_was_lost():
    """All three sizes (LL, LL128, Simple) in every dtype on the GPU, as 8 ranks would send
    them: rank 5's share dropped at three elements is found there, and only there (the sizes' wrong
elements all point at rank 5)."""
    import torch

    from ddpcheck.remote import numerics

    device, world = torch.device("cuda", 0), 8

    def all_reduce_of_8_ranks(tensor):  # the sum 8 ranks' shares make, rank 5's short
        total = sum(numerics.all_reduce_contribution(tensor.numel(), r, world, name, device)
                    for r in range(world) if r != 0)
        lost = numerics.all_reduce_contribution(tensor.numel(), 5, world, name, device)
        total[[1, 7, 100]] -= lost[[1, 7, 100]]
        tensor.add_(total.to(tensor.dtype))

    for name in [n for n in numerics.device_dtypes(device) if n in numerics.EXACT_BITS]:
        results = [r for r in numerics.check_all_reduce(device, 0, world, all_reduce_of_8_ranks)
                   if r["dtype"] == name]
        assert [r["bytes"] for r in results] == list(numerics.GPU_ALL_REDUCE_BYTES)
        # past the dtype's bits a rank has no share in every element: those stay right
        shares = int((numerics.all_reduce_contribution(101, 5, world, name, device)[
            [1, 7, 100]] != 0).sum())
        assert shares >= 2
        assert all(r["wrong"] == shares and r["suspects"] == {"5": shares}
                   for r in results), results


def test_healthy_gpu_preflight_has_an_exact_all_reduce_and_no_numerics_finding(tmp_path):
    done, report = preflight(tmp_path, {})
    assert done.returncode == 0, done.stdout + done.stderr
    [rank] = report["ranks"]
    numerics = rank["numerics"]
    assert "uuid" in numerics and numerics["bus_id"] == rank["gpu_bus_id"]
    sizes = {(e["dtype"], e["bytes"]) for e in numerics["all_reduce"]}
    assert {b for _, b in sizes} == {4 << 10, 1 << 20, 64 << 20}
    assert all(e["wrong"] == 0 for e in numerics["all_reduce"])
    assert numerics["seconds"] < 5
    assert not [f for f in report["findings"] if f["check"] == "numerics"]


@pytest.mark.parametrize("every,nan_at,words", [(3, None, "disagrees with its own repetitions"),
                                                (None, 4, "NaN or Inf in the result")],
                         ids=["every-3rd", "nan-once"])
def test_a_lone_gpu_that_computes_wrong_is_named(tmp_path, every, nan_at, words):
    site = wrong_matmul_site(tmp_path / "site", every=every, nan_at=nan_at, local_rank=0)
    done, report = preflight(tmp_path, {"PYTHONPATH": str(site)})
    assert done.returncode == 1, done.stdout + done.stderr
    [finding] = [f for f in report["findings"] if f["check"] == "numerics"]
    assert finding["rank"] == 0 and words in finding["message"]
    assert "computes wrong" in finding["message"] and "dcgmi diag -r 3" in finding["message"]
