"""TF32 switched and restored through the API the job uses (ddpcheck/remote/tf32.py), with
torch itself as the oracle: for each way a job can set TF32 (nothing, the legacy flag or
precision, the new ``fp32_precision`` per backend or globally), a fresh interpreter applies
it, reads it back through that same API, lets ddpcheck read the settings and switch TF32 on
and off and restore it, then reads again. Every read must work and give what it gave before;
two jobs that set the same through different APIs must fingerprint alike."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

SCRIPT = r"""
import json, sys, torch
from ddpcheck.remote.fingerprint import numeric_settings
from ddpcheck.remote.tf32 import MatmulTF32, matmul_tf32
setup, reads = sys.argv[1], sys.argv[2:]
exec(setup)
def job_reads():
    return [repr(eval(expr)) for expr in reads]
before = job_reads()
settings = numeric_settings()
switch = MatmulTF32()
seen = []
for allowed in (True, False, True):
    switch.allow(allowed)
    seen.append(matmul_tf32())
switch.restore()
print(json.dumps({"before": before, "after": job_reads(), "seen": seen,
                  "settings": settings, "settings_after": numeric_settings(),
                  "tf32": matmul_tf32()}))
"""

LEGACY = ["torch.backends.cuda.matmul.allow_tf32", "torch.get_float32_matmul_precision()"]
NEW = ["torch.backends.cuda.matmul.fp32_precision"]
JOBS = {
    "nothing": ("pass", LEGACY + NEW),
    "legacy flag": ("torch.backends.cuda.matmul.allow_tf32 = True", LEGACY),
    "legacy medium": ("torch.set_float32_matmul_precision('medium')", LEGACY),
    "legacy high": ("torch.set_float32_matmul_precision('high')", LEGACY),
    "new matmul tf32": ("torch.backends.cuda.matmul.fp32_precision = 'tf32'", NEW),
    "new matmul ieee": ("torch.backends.cuda.matmul.fp32_precision = 'ieee'", NEW),
    "new global tf32": ("torch.backends.fp32_precision = 'tf32'",
                        NEW + ["torch.backends.fp32_precision"]),
}


def run_job(setup: str, reads: list[str]) -> dict:
    done = subprocess.run([sys.executable, "-c", SCRIPT, setup, *reads], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def results() -> dict[str, dict]:
    return {name: run_job(*job) for name, job in JOBS.items()}


@pytest.mark.parametrize("name", list(JOBS))
def test_the_job_reads_its_tf32_settings_as_before(results, name):
    result = results[name]
    assert result["after"] == result["before"]
    assert result["seen"] == [True, False, True]  # the switch took effect each time
    assert result["settings_after"] == result["settings"]


def test_the_same_setting_through_either_api_fingerprints_alike(results):
    def precision(name: str) -> str:
        return results[name]["settings"]["float32_matmul_precision"]

    assert precision("legacy high") == precision("new matmul tf32") == "high"
    assert precision("new matmul ieee") == precision("nothing") == "highest"
    assert results["legacy flag"]["tf32"] and results["new global tf32"]["tf32"]
    assert not results["nothing"]["tf32"]
