"""``ddpcheck preflight --in-job`` on namespace hosts with no sshd: each node's ddpcheck started
in its own namespace with the environment a PyTorchJob pod gets (``PET_*``), as the operator
would start it; node 0 hosts the store, gloo crosses the bridge, faults are real (a node never
started, a missing interface, an env that differs, iptables on the master's port, SIGTERM and
SIGKILL). Nothing reaches any host by ssh: there is no sshd to reach."""

from __future__ import annotations

import itertools
import json
import os
import pathlib
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Optional

import pytest

from conftest import started_cluster
from plantedtorch import broken_torch
from wrongmatmul import wrong_matmul_site

pytestmark = pytest.mark.cluster

PYTHON = sys.executable
NODES = 3
_ports = itertools.count(29700, 10)  # a port per run: no run meets an earlier one's store
FAST = ["--skip", "compute,numerics,consistency"]  # the fault runs need no rank checks
LEFTOVER_WORDS = ("ddpcheck", "torchrun", "torch.distributed.run")


@pytest.fixture(scope="module")
def gang(tmp_path_factory):
    """Three namespace hosts h1..h3, no sshd, for the whole module."""
    yield from started_cluster(NODES, tmp_path_factory, "injob", sshd=False)


@dataclass
class NodeRun:
    rank: int
    exit_code: Optional[int]
    output: str
    elapsed_s: float

    @property
    def summary(self) -> str:
        lines = [line for line in self.output.splitlines()
                 if line.startswith(f"ddpcheck: node rank {self.rank} ")]
        return lines[-1] if lines else ""


def pod_env(rank: int, port: int, extra: Optional[dict] = None) -> dict:
    """What a PyTorchJob pod's container gets from the operator (and our PATH)."""
    env = {"PATH": os.environ["PATH"], "HOME": "/root", "PET_NNODES": str(NODES),
           "PET_NODE_RANK": str(rank), "PET_MASTER_ADDR": "h1", "PET_MASTER_PORT": str(port),
           "PET_NPROC_PER_NODE": "2", "PYTHONUNBUFFERED": "1"}
    env.update(extra or {})
    return env


def start_node(cluster, rank: int, port: int, args: list[str], tmp_path: pathlib.Path,
               extra: Optional[dict] = None) -> subprocess.Popen:
    report = ["--json", str(tmp_path / "report.json")] if rank == 0 else []
    return cluster.popen_in(f"h{rank + 1}", [PYTHON, "-m", "ddpcheck", "preflight", "--in-job",
                                             *report, *args],
                            env=pod_env(rank, port, extra), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def finish(procs: dict[int, subprocess.Popen], started: float, limit_s: float
           ) -> dict[int, NodeRun]:
    runs = {}
    for rank, proc in procs.items():
        try:
            out, _ = proc.communicate(timeout=max(limit_s - (time.monotonic() - started), 1))
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
            runs[rank] = NodeRun(rank, None, out, time.monotonic() - started)
            continue
        runs[rank] = NodeRun(rank, proc.returncode, out, time.monotonic() - started)
    return runs


def run_gang(cluster, tmp_path, args: list[str], ranks=range(NODES), extra=None,
             limit_s: float = 150.0) -> tuple[dict[int, NodeRun], dict]:
    port = next(_ports)
    started = time.monotonic()
    procs = {rank: start_node(cluster, rank, port, args, tmp_path, (extra or {}).get(rank))
             for rank in ranks}
    runs = finish(procs, started, limit_s)
    path = tmp_path / "report.json"
    return runs, json.loads(path.read_text()) if path.exists() else {}


def leftovers(cluster) -> list[str]:
    """Processes of ours still alive in any namespace (there is no sshd to leave out)."""
    found = []
    for host in cluster.hosts:
        for pid in cluster.pids_in(host.name):
            try:
                cmdline = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if any(word.encode() in cmdline for word in LEFTOVER_WORDS):
                found.append(f"{host.name}: {pid} {cmdline.decode(errors='replace')[:120]}")
    return found


def assert_nothing_left(cluster) -> None:
    deadline = time.monotonic() + 10
    while leftovers(cluster) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not leftovers(cluster)


def errors(report: dict) -> list[dict]:
    return [f for f in report["findings"] if f["severity"] == "error"]


def test_healthy_gang_every_node_exits_0_and_node_0_reports_six_ranks(gang, tmp_path):
    runs, report = run_gang(gang, tmp_path, ["--timeout", "120"])
    for run in runs.values():
        assert run.exit_code == 0, run.output
        assert run.summary.endswith("OK: every check passed"), run.output
    assert [h["name"] for h in report["hosts"]] == ["h1", "h2", "h3"]
    assert report["world_size"] == report["expected_world_size"] == 6
    assert sorted(r["rank"] for r in report["ranks"] if r["status"] == "ok") == list(range(6))
    assert {r["host"] for r in report["ranks"]} == {"h1", "h2", "h3"}
    assert not errors(report) and report["verdict"] == "ok"
    assert "stage0" in report and set(report["stage0"]) == {"h1", "h2", "h3"}
    assert_nothing_left(gang)


def test_a_node_that_never_started_is_named_by_node_rank_within_the_timeout(gang, tmp_path):
    runs, report = run_gang(gang, tmp_path, ["--timeout", "40", "--join-timeout", "10", *FAST],
                            ranks=(0, 1))
    for run in runs.values():
        assert run.exit_code == 3, run.output
        assert run.elapsed_s < 40 + 10, run.output
    joins = [f for f in errors(report) if f["check"] == "join"]
    assert len(joins) == 1 and "node rank 2 never joined within 10s (joined: h1, h2)" in \
        joins[0]["message"], report["findings"]
    assert joins[0]["root_cause"]
    assert not report["ranks"]  # nothing started on a bad gang
    assert "node rank 2 never joined" in runs[1].summary, runs[1].output
    assert_nothing_left(gang)


def test_a_missing_gloo_interface_on_one_node_is_named_and_nothing_starts(gang, tmp_path):
    runs, report = run_gang(gang, tmp_path, ["--timeout", "60", *FAST],
                            extra={2: {"GLOO_SOCKET_IFNAME": "eth9"}})
    assert all(run.exit_code == 1 for run in runs.values()), [r.output for r in runs.values()]
    named = [f for f in errors(report) if f["host"] == "h3" and "GLOO_SOCKET_IFNAME" in
             f["message"]]
    assert named and "eth9" in named[0]["message"], report["findings"]
    assert not report["ranks"]
    assert "GLOO_SOCKET_IFNAME" in runs[2].summary, runs[2].output
    assert_nothing_left(gang)


def test_a_device_that_computes_wrong_on_one_node_is_named_by_the_gangs_numerics(gang, tmp_path):
    """The numerics check runs in the gang as in ``preflight``: node 1's local rank 1 gets every
    third matrix product spoiled (a planted sitecustomize); node 0 names exactly that rank and
    host, and every node exits 1."""
    plant = wrong_matmul_site(tmp_path / "site", every=3, local_rank=1)
    runs, report = run_gang(gang, tmp_path, ["--timeout", "120", "--skip", "compute,consistency"],
                            extra={1: {"PYTHONPATH": str(plant)}})
    for run in runs.values():
        assert run.exit_code == 1, run.output
    found = [f for f in report["findings"] if f["check"] == "numerics"]
    assert [(f["host"], f["rank"], f["severity"]) for f in found] == [("h2", 3, "error")], found
    assert "rank 3 on h2 (cpu) computes wrong" in found[0]["message"]
    assert_nothing_left(gang)


def test_an_env_that_differs_on_one_node_is_named(gang, tmp_path):
    runs, report = run_gang(gang, tmp_path, ["--timeout", "90", "--skip", "compute,numerics"],
                            extra={1: {"NCCL_IB_DISABLE": "1"}})
    drift = [f for f in report["findings"] if f["check"] == "env_drift"
             and "NCCL_IB_DISABLE" in f["message"]]
    assert drift and "h2" in drift[0]["message"], report["findings"]
    assert runs[0].exit_code == runs[1].exit_code == runs[2].exit_code == report["exit_code"]
    assert_nothing_left(gang)


def test_the_master_port_dropped_for_one_node_is_named_on_both_sides(gang, tmp_path):
    port = next(_ports)
    rule = ["OUTPUT", "-p", "tcp", "--dport", str(port), "-j", "DROP"]
    gang.run_in("h3", ["iptables", "-w", "5", "-I", *rule], check=True)
    try:
        started = time.monotonic()
        procs = {rank: start_node(gang, rank, port, ["--timeout", "40", "--join-timeout", "10",
                                                     *FAST], tmp_path) for rank in range(NODES)}
        runs = finish(procs, started, 120)
    finally:
        gang.run_in("h3", ["iptables", "-w", "5", "-D", *rule], check=False)
    report = json.loads((tmp_path / "report.json").read_text())
    assert all(run.exit_code == 3 for run in runs.values()), [r.output for r in runs.values()]
    assert all(run.elapsed_s < 40 + 10 for run in runs.values())
    assert "node rank 2 never joined" in " ".join(f["message"] for f in errors(report))
    assert f"cannot reach the master's store at h1:{port}" in runs[2].summary, runs[2].output
    assert_nothing_left(gang)


def test_a_node_that_joined_but_cannot_reach_torchruns_port_is_named_with_that_cause(
        gang, tmp_path):
    """h2 reaches the store (the master port) but its packets to the next port, where
    torchrun's ranks would meet, are dropped: its stage 0's rendezvous check names it, in
    seconds, and nothing starts (not torchrun's rendezvous timeout)."""
    port = next(_ports)
    rule = ["OUTPUT", "-p", "tcp", "--dport", str(port + 1), "-j", "DROP"]
    gang.run_in("h2", ["iptables", "-w", "5", "-I", *rule], check=True)
    try:
        started = time.monotonic()
        procs = {rank: start_node(gang, rank, port, ["--timeout", "60", *FAST], tmp_path)
                 for rank in range(NODES)}
        runs = finish(procs, started, 120)
    finally:
        gang.run_in("h2", ["iptables", "-w", "5", "-D", *rule], check=False)
    report = json.loads((tmp_path / "report.json").read_text())
    named = [f for f in errors(report) if f["check"] == "rendezvous" and f["host"] == "h2"]
    assert named and f"cannot connect to master h1 h1:{port + 1}" in named[0]["message"], \
        report["findings"]
    assert [f["host"] for f in errors(report) if f["root_cause"]] == ["h2"]
    assert not report["ranks"]
    assert all(run.exit_code == 1 for run in runs.values()), [r.output for r in runs.values()]
    assert "rendezvous" in runs[1].summary, runs[1].output
    assert_nothing_left(gang)


def wait_for_line(proc: subprocess.Popen, text: str, limit_s: float) -> str:
    """Read ``proc``'s output until a line holds ``text``; what was read."""
    seen = []
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if text in line:
            return "".join(seen)
    raise AssertionError(f"no line with {text!r} in {limit_s}s:\n{''.join(seen)}")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_node_stopped_after_it_joined_is_named_and_nothing_is_left(gang, tmp_path, sig):
    """SIGTERM (a pod deleted) while its torchrun runs: it says it left; SIGKILL: its
    heartbeat stops. Either way node 0 names it long before --timeout, and no torchrun or
    rank is left on any node."""
    port = next(_ports)
    started = time.monotonic()
    procs = {rank: start_node(gang, rank, port, ["--timeout", "120", "--collective-timeout",
                                                 "10"], tmp_path) for rank in range(NODES)}
    head = wait_for_line(procs[1], "launching torchrun", 90)
    time.sleep(1.0)  # its torchrun and ranks are starting
    if sig == signal.SIGKILL:  # the whole pod goes: ddpcheck, torchrun, ranks
        for pid in gang.pids_in("h2"):
            os.kill(pid, signal.SIGKILL)
    else:
        procs[1].send_signal(signal.SIGTERM)
    runs = finish(procs, started, 150)
    report = json.loads((tmp_path / "report.json").read_text())
    assert runs[0].elapsed_s < 100, runs[0].output
    joins = [f for f in errors(report) if f["check"] == "join" and f["host"] == "h2"]
    word = "left during launch: interrupted (SIGTERM)" if sig == signal.SIGTERM else \
        "joined, then stopped answering during launch"
    assert joins and word in joins[0]["message"], report["findings"]
    assert runs[0].exit_code != 0 and runs[2].exit_code != 0
    if sig == signal.SIGTERM:
        assert runs[1].exit_code == 130, head + runs[1].output
    assert_nothing_left(gang)


def test_a_node_whose_torch_will_not_import_still_joins_and_is_named(gang, tmp_path):
    """h2's torch is installed whole but will not import (planted on its PYTHONPATH): the
    store needs no torch, so h2 joins and its stage 0 passes (torch is read, not imported);
    its torchrun dies at the import and node 0 names it, root cause, on h2; the others are
    stopped, and every node exits 1."""
    site = broken_torch(tmp_path / "site", "libtorch_cpu.so: undefined symbol: x")
    runs, report = run_gang(gang, tmp_path, ["--timeout", "90", *FAST],
                            extra={1: {"PYTHONPATH": str(site)}})
    assert all(run.exit_code == 1 for run in runs.values()), [r.output for r in runs.values()]
    [root] = [f for f in report["findings"] if f["root_cause"]]
    assert root["check"] == "torch_import" and root["host"] == "h2", report["findings"]
    assert "import torch failed: ImportError: libtorch_cpu.so" in root["message"]
    assert "torch_import" in runs[1].summary, runs[1].output
    assert_nothing_left(gang)


def test_node_0_stopped_by_sigterm_stops_every_node_and_writes_its_report(gang, tmp_path):
    """Node 0's pod deleted while the ranks run: node 0 reports the interruption (its JSON
    written), every node's torchrun is stopped through the store, every node exits 130 with
    its summary line, and nothing is left anywhere."""
    port = next(_ports)
    started = time.monotonic()
    procs = {rank: start_node(gang, rank, port, ["--timeout", "120"], tmp_path)
             for rank in range(NODES)}
    wait_for_line(procs[2], "launching torchrun", 90)
    time.sleep(1.5)
    procs[0].send_signal(signal.SIGTERM)
    runs = finish(procs, started, 150)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["verdict"] == "interrupted", report["findings"]
    assert all(run.exit_code == 130 for run in runs.values()), [r.output for r in runs.values()]
    assert all("INTERRUPTED" in run.summary for run in runs.values())
    assert max(run.elapsed_s for run in runs.values()) < 100
    assert_nothing_left(gang)
