"""The one-call GPU suite (gpu/run-suite.sh) on a CPU machine: its dry run checks every step is
wired, and a gpu test that would pass (or fail) without a GPU is caught, never counted."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "gpu"))
import suite  # noqa: E402

STEPS = ("pytest -m gpu", "ddpcheck node", "ddpcheck preflight, 1 rank on NCCL", "compute check",
         "numerics check (bf16/fp16/fp32/TF32, exact all_reduce)",
         "preflight, 2 ranks on the one GPU -> duplicate_device", "ddpcheck bandwidth on NCCL",
         "Xid read (kernel log)", "DCGM diag -r 1", "NCCL RAS query against a live NCCL job")


def test_dry_run_wires_every_step_and_no_gpu_test_passes_without_a_gpu(tmp_path):
    if suite.run([sys.executable, "-c", "from ddpcheck.remote import nvml; import sys; "
                  "sys.exit(1 if nvml.read_gpus(clock_window_s=0).get('gpus') else 0)"],
                 60).returncode != 0:
        pytest.skip("this machine has a GPU: the dry run is for CPU machines")
    out = tmp_path / "gpu.md"
    done = subprocess.run(["bash", str(REPO / "gpu" / "run-suite.sh"), "--dry-run"],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path,
                          env={**os.environ, "PYTHON": sys.executable, "OUT": str(out)})
    assert done.returncode == 0, done.stderr
    page = out.read_text()
    assert "**Dry run** (no GPU)" in page
    for step in STEPS:
        assert f"| {step} | NOT RUN |" in page
    assert "0 passed, 0 failed" in page and " 0 passed, 0 failed" in done.stderr


def test_a_gpu_test_passing_without_a_gpu_is_a_wiring_problem(tmp_path):
    junit = tmp_path / "junit.xml"
    junit.write_text(
        '<testsuites><testsuite>'
        f'<testcase name="{suite.DUPLICATE_TEST}"><skipped message="NOT RUN: no GPU"/></testcase>'
        f'<testcase name="{suite.RAS_TEST}"/>'
        f'<testcase name="{suite.DCGM_TEST}"><skipped message=""/></testcase>'
        '<testcase name="test_other"><failure message="boom"/></testcase>'
        '</testsuite></testsuites>')
    outcomes = suite.junit_outcomes(junit)
    assert outcomes[suite.RAS_TEST] == ("passed", "")
    problems = " | ".join(suite.without_gpu_problems(outcomes))
    assert f"passed without a GPU (vacuous): {suite.RAS_TEST}" in problems
    assert f"skipped without saying why: {suite.DCGM_TEST}" in problems
    assert "failed without a GPU instead of skipping: test_other" in problems
    assert f"gpu test {suite.XID_TEST} is not collected" in problems


def test_a_real_run_page_names_versions_and_outcomes():
    page = suite.render({"gpu": "NVIDIA H200", "driver": "570.124.06", "nccl": "2.27.5"},
                        [suite.Step("ddpcheck node", "passed", "verdict OK",
                                    {"temperature_c": 31})], 201.0, dry=False)
    assert "| driver | 570.124.06 |" in page and "| ddpcheck node | passed | verdict OK |" in page
    assert '"temperature_c": 31' in page
