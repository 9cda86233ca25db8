"""The GPU path on a real NVIDIA GPU: NVML reads, ``ddpcheck node``, CUDA-event timing and the
probe on NCCL with CUDA tensors. Run with ``pytest -m gpu`` on a machine with a GPU (the default
run deselects these; without a GPU they skip). torch is imported inside the tests, so collecting
this file stays cheap everywhere.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest

from ddpcheck.collect.facts import read_facts
from ddpcheck.analyze import health
from ddpcheck.remote import nvml


def _nvml_gpus() -> int:
    facts = nvml.read_gpus()
    return len(facts["gpus"]) if facts.get("available") else 0


pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(_nvml_gpus() == 0, reason="needs an NVIDIA GPU and driver")]

BUS_ID = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-9a-f]$")


def ddpcheck(*args: str, cwd=None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ddpcheck", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd)


def torch_bus_id(props) -> str:
    """As the probe writes it."""
    return "%04x:%02x:%02x.0" % (props.pci_domain_id, props.pci_bus_id, props.pci_device_id)


def test_nvml_reads_every_gpu_torch_sees():
    import torch

    facts = nvml.read_gpus()
    assert facts["available"] and facts["driver"] != nvml.NA, facts
    json.dumps(facts)
    gpus = facts["gpus"]
    if "CUDA_VISIBLE_DEVICES" not in os.environ:
        assert len(gpus) == torch.cuda.device_count()
    by_bus = {g["bus_id"]: g for g in gpus}
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        gpu = by_bus[torch_bus_id(props)]
        assert gpu["uuid"].removeprefix("GPU-") == str(props.uuid)
        assert gpu["name"] == props.name
        assert abs(gpu["memory_total_mib"] - props.total_memory // (1 << 20)) < 1024
    for gpu in gpus:
        assert BUS_ID.match(gpu["bus_id"]), gpu
        assert "lost" not in gpu and not gpu.get("errors"), gpu
        assert isinstance(gpu["temperature_c"], int) and 0 < gpu["temperature_c"] < 120
        for key in ("gen", "max_gen", "width", "max_width"):
            assert gpu["pcie"][key] == nvml.NA or gpu["pcie"][key] > 0
        assert gpu["clock_event_reasons"] == nvml.NA or isinstance(gpu["clock_event_reasons"],
                                                                   list)
    if len(gpus) > 1:
        matrix = facts["topology"]
        assert [row[i] for i, row in enumerate(matrix)] == ["X"] * len(gpus)
    for finding in health.gpu_health_findings("this", read_facts({"nvml": facts}),
                                              health.Stage0Context()):
        print(finding.severity.value, finding.message)  # shown with -s: the GPUs' real state


def test_node_counts_the_gpus(tmp_path):
    count = _nvml_gpus()
    report_path = tmp_path / "node.json"
    done = ddpcheck("node", "-v", "--gpus", str(count), "--json", str(report_path), cwd=tmp_path)
    report = json.loads(report_path.read_text())
    print(done.stdout)
    assert report["hosts"][0]["gpus"] == count
    assert not [f for f in report["findings"] if f["check"] == "gpu_count"], report["findings"]
    failing = {f["check"] for f in report["findings"] if f["severity"] == "error"}
    assert done.returncode == (1 if failing else 0) and failing <= {"gpu_health", "resources"}
    facts = report["stage0"][report["hosts"][0]["name"]]
    assert facts["cuda_available"] and facts["gpus"] >= 1
    for gpu in facts["nvml"]["gpus"]:  # the GPU table has a row per GPU
        assert gpu["bus_id"] in done.stdout


def test_cuda_event_timing_measures_the_device():
    import torch

    from ddpcheck.remote.probe import time_once_s, timer_name

    device = torch.device("cuda", 0)
    a = torch.randn(4096, 4096, device=device)
    (a @ a).sum().item()  # warm-up
    torch.cuda.synchronize()
    begin = time.perf_counter()
    seconds = time_once_s(lambda: a @ a, device)
    wall = time.perf_counter() - begin
    assert timer_name(device) == "cuda_event"
    assert 0 < seconds <= wall * 1.05 + 1e-4


def test_probe_on_nccl_with_cuda_tensors(tmp_path):
    """The embedded default on a GPU machine: one rank per GPU on nccl."""
    count = _nvml_gpus()
    report_path = tmp_path / "report.json"
    done = ddpcheck("preflight", "--json", str(report_path), cwd=tmp_path)
    report = json.loads(report_path.read_text())
    print(done.stdout)
    assert done.returncode == 0, done.stdout + done.stderr
    assert report["backend"] == "nccl"
    if "CUDA_VISIBLE_DEVICES" not in os.environ:
        assert report["world_size"] == report["expected_world_size"] == count
    ranks = report["ranks"]
    assert sorted(r["device"] for r in ranks) == [f"cuda:{i}" for i in range(len(ranks))]
    assert len({r["gpu_uuid"] for r in ranks}) == len(ranks)  # no two ranks on one GPU
    nvml_bus = {g["bus_id"] for g in report["stage0"]["localhost"]["nvml"]["gpus"]}
    assert {r["gpu_bus_id"] for r in ranks} <= nvml_bus
    (collective,) = report["collectives"]
    assert collective["timer"] == "cuda_event" and collective["wrong"] == 0
    assert collective["busbw_gbs"] >= 0 and collective["time_us"] > 0
