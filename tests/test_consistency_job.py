"""check_consistency inside a real job: torchrun with 3 CPU ranks on gloo, faults made for real
(a rank casts its model, a rank is a step ahead, one element of one parameter drifts)."""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys

import pytest

JOB = pathlib.Path(__file__).parent / "jobs" / "consistency_job.py"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    outdir = tmp_path_factory.mktemp("job")
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "3",
         "--master-port", str(free_port()), str(JOB), str(outdir), "2"], capture_output=True, text=True,
        timeout=180, env=env, cwd=outdir)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    found: dict[str, dict[int, dict]] = {}
    for path in outdir.glob("rank*.jsonl"):
        for line in path.read_text().splitlines():
            result = json.loads(line)
            found.setdefault(result["scenario"], {})[result["rank"]] = result
    return found


def test_healthy_job_passes_on_every_rank(results):
    assert sorted(results["healthy"]) == [0, 1, 2]
    for result in results["healthy"].values():
        assert result["raised"] is False
        # Python's RNG is unseeded in the job: a warning at most, never an error
        assert all(check == "seed" for check, *_ in result["findings"])


def test_dtype_cast_on_one_rank_names_exactly_that_rank_and_the_parameter(results):
    for result in results["dtype"].values():  # every rank raises the same error
        assert result["raised"] is True
        errors = [f for f in result["findings"] if f[0] == "dtype"]
        assert len(errors) == 1 and errors[0][1] == 2
        assert "parameter '0.weight'" in errors[0][3]
        assert "float16 on" in errors[0][3] and "(rank 2)" in errors[0][3]
        message = result["message"]
        assert "ranks disagree at step 1" in message and "<- differs" in message
        differing = [line for line in message.splitlines() if line.endswith("<- differs")]
        assert differing and all(" 2 " in line for line in differing if "dtype" in line)


def test_step_off_by_one_names_exactly_that_rank(results):
    for result in results["step"].values():
        assert result["raised"] is True
        steps = [f for f in result["findings"] if f[0] == "step"]
        assert [(f[1], "11 on" in f[3]) for f in steps] == [(2, True)]


def test_one_drifted_element_is_found_and_returned_without_raising(results):
    for result in results["params"].values():
        assert result["raised"] is False
        params = [f for f in result["findings"] if f[0] == "params"]
        assert len(params) == 1 and params[0][1] == 2 and "'2.bias'" in params[0][3]
