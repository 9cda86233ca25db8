"""``Monitor(numerics_every=N)`` in a real job: torchrun with 3 CPU ranks on gloo; one rank's
matrix products spoiled after torch loads (tests/wrongmatmul.py on PYTHONPATH) is named by rank 0's
canary, a healthy job is named nothing, and the pure parts on synthetic posts."""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys

import pytest

from ddpcheck.injob.numerics import canary_message, rank_results
from ddpcheck.core.numerics_vote import odd_ones
from wrongmatmul import wrong_matmul_site

JOB = pathlib.Path(__file__).parent / "jobs" / "numerics_job.py"
STEPS, EVERY = 31, 5


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_job(outdir: pathlib.Path, plant: pathlib.Path | None) -> dict[int, dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if plant is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(plant),
                                                          env.get("PYTHONPATH", "")]))
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "3",
         "--master-port", str(free_port()), str(JOB), str(outdir), str(STEPS), str(EVERY)],
        capture_output=True, text=True, timeout=180, env=env, cwd=outdir)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return {int(p.stem[4:]): json.loads(p.read_text()) for p in outdir.glob("rank*.json")}


@pytest.fixture(scope="module")
def jobs(tmp_path_factory):
    healthy = run_job(tmp_path_factory.mktemp("healthy"), None)
    site = wrong_matmul_site(tmp_path_factory.mktemp("site"), every=1, local_rank=2)
    spoiled = run_job(tmp_path_factory.mktemp("spoiled"), site)
    return healthy, spoiled


def test_a_healthy_job_names_nobody(jobs):
    healthy, _ = jobs
    assert sorted(healthy) == [0, 1, 2]
    for result in healthy.values():
        assert result["disabled"] is None
        assert result["rounds"] == list(range(0, STEPS, EVERY))
        assert result["wrong"] == [] and result["warnings"] == []


def test_a_spoiled_rank_is_named_by_rank_0_at_every_compared_round(jobs):
    _, spoiled = jobs
    named = spoiled[0]["wrong"]
    compared = list(range(0, STEPS - EVERY, EVERY))  # the last round has no next canary
    assert [(w["step"], w["rank"]) for w in named] == [(s, 2) for s in compared]
    assert all(w["why"] == ["differs from its peers bit for bit"] for w in named)
    [warning, *_] = spoiled[0]["warnings"]
    assert "numerics: rank 2 on" in warning and "step-0 canary (fp32) wrong" in warning
    assert "differs from its 2 peers bit for bit; 3 rank(s) compared" in warning
    assert spoiled[1]["wrong"] == [] and spoiled[2]["wrong"] == []  # rank 0 judges


def post(rank, digest="a", group="g", nonfinite=0, off=0):
    return {"rank": rank, "host": f"h{rank}", "where": f"rank {rank} on h{rank} (cpu)",
            "group": group, "dtype": "fp32", "digest": digest, "nonfinite": nonfinite, "off": off}


def test_the_canary_vote_on_synthetic_posts():
    assert odd_ones(rank_results([post(0), post(1), post(2)])) == []
    [wrong] = odd_ones(rank_results([post(0), post(1, digest="b"), post(2), post(3)]))
    assert wrong.rank == 1 and wrong.peers == 3
    # two models: each votes with its own kind; a lone rank is judged by NaN and the reference
    mixed = [post(0), post(1), post(2), post(3, digest="z", group="other", nonfinite=1)]
    [wrong] = odd_ones(rank_results(mixed))
    assert wrong.rank == 3 and [str(w) for w in wrong.why] == ["NaN or Inf in the result"]
    message = canary_message("h0", 0, 40, wrong, 4)
    assert message.startswith("ddpcheck.Monitor [h0:rank 0]: numerics: rank 3 on h3 (cpu) "
                              "computed the step-40 canary (fp32) wrong (NaN or Inf")
    assert "dcgmi diag -r 3" in message


def test_a_monitor_without_the_canary_keeps_its_own_step(tmp_path):
    monitor = ddpcheck_monitor(tmp_path)
    try:
        assert monitor.numerics is None and "step" not in vars(monitor)
    finally:
        monitor.close()


def ddpcheck_monitor(tmp_path, **options):
    import ddpcheck

    return ddpcheck.Monitor(str(tmp_path), env={}, stragglers=False, **options)


def test_numerics_every_must_be_positive(tmp_path):
    with pytest.raises(ValueError):
        ddpcheck_monitor(tmp_path, numerics_every=-1)
