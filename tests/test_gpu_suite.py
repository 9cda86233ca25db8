"""The live halves of node health and NCCL RAS, on a machine with an NVIDIA GPU (marked gpu;
``gpu/run-suite.sh`` runs them): a real kernel log read mapped to NVML's GPUs, DCGM where dcgmi
exists, RAS asked about a live NCCL job, and two ranks on one GPU named ``duplicate_device``.
Without a GPU every test here skips and says why: none can pass without running."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from ddpcheck.analyze import ras
from ddpcheck.remote import ncclras, nvml

pytestmark = pytest.mark.gpu
HERE = Path(__file__).parent


def gpus() -> int:
    facts = nvml.read_gpus(clock_window_s=0)
    return len(facts.get("gpus") or []) if facts.get("available") else 0


@pytest.fixture(autouse=True)
def needs_a_gpu():
    if gpus() == 0:
        pytest.skip("NOT RUN: needs an NVIDIA GPU and driver (NVML sees none)")


def ddpcheck(*args: str, cwd: Path, timeout: float = 300, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ddpcheck", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd, env={**os.environ, **(env or {})})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_node_reads_the_kernel_log_and_maps_xids_to_gpus(tmp_path):
    done = ddpcheck("node", "--no-torch", "-v", "--json", str(tmp_path / "node.json"),
                    cwd=tmp_path)
    report = json.loads((tmp_path / "node.json").read_text())
    facts = report["stage0"][report["hosts"][0]["name"]]
    log = facts["kernel_log"]
    print(done.stdout)
    if os.geteuid() == 0:
        assert log.get("source") == "/dev/kmsg", log
    assert log.get("source") or "Xid/SXid errors were NOT checked" in log.get("error", "")
    buses = {g["bus_id"] for g in facts["nvml"]["gpus"]}
    for event in log.get("events") or []:  # a real Xid names a GPU NVML knows (or is lost)
        assert event["kind"] == "SXid" or event["bus_id"] in buses or event["xid"] == 79
    gpu = facts["nvml"]["gpus"][0]
    assert gpu["clock_event_samples"]["samples"] == nvml.CLOCK_SAMPLES
    assert "recovery_action" in gpu and "nvlink" in gpu


def test_dcgm_diag_level_1(tmp_path):
    if subprocess.run(["sh", "-c", "command -v dcgmi"], capture_output=True).returncode != 0:
        pytest.skip("NOT RUN: dcgmi is not installed on this machine")
    done = ddpcheck("node", "--no-torch", "--dcgm", "1", "--json", str(tmp_path / "node.json"),
                    cwd=tmp_path, timeout=200)
    report = json.loads((tmp_path / "node.json").read_text())
    diag = report["stage0"][report["hosts"][0]["name"]]["dcgm"]
    print(done.stdout, json.dumps(diag)[:2000])
    assert diag["level"] == 1 and diag["available"]
    assert diag.get("tests") or diag.get("error"), diag


def test_nccl_ras_answers_for_a_live_job(tmp_path):
    torch = pytest.importorskip("torch")
    version = torch.cuda.nccl.version()
    if tuple(version) < (2, 24, 0):
        pytest.skip(f"NOT RUN: torch's NCCL {'.'.join(map(str, version))} has no RAS (< 2.24)")
    port = free_port()
    ready = tmp_path / "ready"
    ready.mkdir()
    env = {**os.environ, "NCCL_RAS_ADDR": f"127.0.0.1:{port}", "NCCL_RAS_ENABLE": "1"}
    job = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node",
                            "1", "--master-port", str(free_port()),
                            str(HERE / "jobs" / "nccl_ras_job.py"), "--ready-dir", str(ready),
                            "--seconds", "90"], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not list(ready.iterdir()):
            assert job.poll() is None, job.stdout.read()[-3000:]
            assert time.monotonic() < deadline, "the NCCL job did not get ready"
            time.sleep(0.5)
        answer = ncclras.query("127.0.0.1", port, timeout_s=20)
        print(answer.get("output") or answer)
        assert not answer.get("error"), answer
        view = ras.parse(answer["output"])
        assert view["communicators"], answer["output"]
        assert view["communicators"][0]["status"] in ("RUNNING", "INIT")
        assert ras.findings(view) == [] or all(f.severity.value != "error"
                                               for f in ras.findings(view))
        (tmp_path / "ras.txt").write_text(answer["output"])
    finally:
        os.killpg(job.pid, 9)
        job.wait()


def test_two_ranks_on_one_gpu_are_duplicate_device(tmp_path):
    """Two 'hosts' (two SSH servers of this machine, one slot each): each rank is LOCAL_RANK 0,
    so both take GPU 0 and preflight must name duplicate_device."""
    sys.path.insert(0, str(HERE))
    from sshserver import FakeSSHServer, new_key, run_locally

    server_key, client_key = new_key(), new_key()
    servers = [FakeSSHServer(server_key, client_key, run_locally).start() for _ in range(2)]
    try:
        key = tmp_path / "id_ecdsa"
        client_key.write_private_key_file(str(key))
        known = tmp_path / "known_hosts"
        known.write_text("".join(s.known_hosts_line() + "\n" for s in servers))
        hosts_yaml = tmp_path / "hosts.yaml"
        hosts_yaml.write_text(yaml.safe_dump({
            "defaults": {"user": "tester", "identity_file": str(key), "python": sys.executable,
                         "workdir": str(tmp_path / "work"), "slots": 1},
            "ssh": {"known_hosts": str(known), "connect_timeout": 5},
            "backend": "nccl",
            "hosts": [{"name": f"gpu-{i}", "address": "127.0.0.1", "port": s.port}
                      for i, s in enumerate(servers)]}, sort_keys=False))
        report_path = tmp_path / "report.json"
        done = ddpcheck("preflight", str(hosts_yaml), "--json", str(report_path), "--timeout",
                        "150", cwd=tmp_path, timeout=200)
        print(done.stdout)
        report = json.loads(report_path.read_text())
        duplicate = [f for f in report["findings"] if f["check"] == "duplicate_device"]
        assert duplicate, done.stdout + done.stderr
        assert "rank 0" in duplicate[0]["message"] and "rank 1" in duplicate[0]["message"]
        assert done.returncode == 1
    finally:
        for server in servers:
            server.stop()
