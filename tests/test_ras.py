"""NCCL RAS: the text answers of NCCL 2.24 and 2.29 (fixtures written from NCCL's
src/ras/client_support.cc and the RAS page of its user guide) parsed into ``hang`` findings, and
the client speaking RAS's wire protocol (client.cc) to a server that answers as NCCL does. The
live query against a real NCCL job is in test_gpu_suite (marked gpu)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from ddpcheck.analyze import ras
from ddpcheck.model.records import Severity
from ddpcheck.remote import ncclras

from test_hangscan import fake_ranks  # noqa: F401 - the fixture

FIXTURES = Path(__file__).parent / "fixtures" / "ras"


def view(name: str) -> dict:
    return ras.parse((FIXTURES / name).read_text())


def test_healthy_job_has_one_running_communicator_and_no_findings():
    parsed = view("healthy_2.29.txt")
    assert parsed["nccl"] == "2.29.1"
    assert parsed["communicators"] == [{"group": 0, "comms": 1, "nodes": 4, "ranks_per_node": "8",
                                        "ranks_per_comm": 32, "ranks": 32, "status": "RUNNING",
                                        "errors": "OK"}]
    assert ras.findings(parsed) == []


def test_a_stopped_process_is_unresponsive_and_its_rank_missing():
    parsed = view("stopped_2.29.txt")
    assert parsed["unresponsive"] == [{"pid": 3487984, "node": "172.16.64.213", "gpu": "5"}]
    assert parsed["missing"][0]["rank"] == 21 and parsed["missing"][0]["id"] == "#0-0"
    assert parsed["timeouts"] == 2
    ranks = {("172.16.64.213", 3487984): 21}
    found = ras.findings(parsed, lambda node, pid: ranks.get((node, pid)))
    (finding,) = found  # the missing rank is the same process: said once
    assert finding.severity is Severity.ERROR and finding.check == "hang" and finding.rank == 21
    assert "process 3487984 on node 172.16.64.213 (GPU 5, rank 21) did not answer NCCL RAS" \
        in finding.message


def test_a_dead_process_and_the_2_24_missing_rank_line():
    parsed = view("dead_2.24.txt")
    assert parsed["dead"] == [{"pid": 3487984, "node": "172.16.64.213", "gpu": "5"}]
    assert [m["rank"] for m in parsed["missing"]] == [21]
    messages = [f.message for f in ras.findings(parsed)]
    assert any("is considered dead by NCCL RAS" in m for m in messages)
    assert any("communicator #0-0 (cf264af53edbe986) is missing rank 21" in m for m in messages)


def test_ranks_behind_in_operation_counts_are_named():
    parsed = view("mismatch_2.29.txt")
    (mismatch,) = parsed["mismatches"]
    assert mismatch["collective"] == "AllReduce"
    assert [(g["operation"], g["count"]) for g in mismatch["groups"]] == [(6650, 31), (6649, 1)]
    (finding,) = ras.findings(parsed, lambda node, pid: 13 if pid == 483077 else None)
    assert finding.severity is Severity.WARNING and finding.rank == 13
    assert "rank(s) 13 launched AllReduce operations only up to 6649, others up to 6650" \
        in finding.message


def test_the_2_24_mismatch_layout_with_members_listed_under_their_group():
    text = (FIXTURES / "mismatch_2.29.txt").read_text().replace(
        "  Communicator ranks have different AllReduce operation counts\n"
        "  31 ranks have launched up to operation 6650\n"
        "  Rank 13 has launched up to operation 6649 -- GPU 5 managed by process 483077 on node "
        "172.16.64.211\n",
        "  Communicator ranks have different collective operation counts\n"
        "  26 ranks have launched up to operation 6650\n"
        "  6 ranks have launched up to operation 6649\n" + "".join(
            f"  Rank {r} -- GPU {r} managed by process {483072 + r} on node 172.16.64.210\n"
            for r in (0, 2, 3, 4, 5, 7)))
    (finding,) = ras.findings(ras.parse(text))
    assert "rank(s) 0, 2, 3, 4, 5, 7 launched collective operations only up to 6649" \
        in finding.message


def test_asynchronous_errors_are_errors():
    (finding,) = ras.findings(view("async_error_2.29.txt"))
    assert finding.severity is Severity.ERROR
    assert "rank 1 reported remote process exited or there was a network error" in finding.message


def test_address_from_nccl_ras_addr():
    assert ncclras.address({}) == ("localhost", 28028)
    assert ncclras.address({"NCCL_RAS_ADDR": "127.0.0.1:30000"}) == ("127.0.0.1", 30000)
    assert ncclras.address({"NCCL_RAS_ADDR": "[::1]:30001"}) == ("::1", 30001)


class RasServer:
    """Answers as NCCL's RAS thread does (client_support.cc): SERVER PROTOCOL, OK to TIMEOUT,
    then the status text, then closes the connection."""

    def __init__(self, answer: str, protocol: str = "SERVER PROTOCOL 2\n") -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.port = self.sock.getsockname()[1]
        self.answer, self.protocol, self.commands = answer, protocol, []
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn, conn.makefile("rb") as reader:
            while True:
                line = reader.readline().decode().strip()
                if not line:
                    return
                self.commands.append(line)
                if line.upper().startswith("CLIENT PROTOCOL"):
                    conn.sendall(self.protocol.encode())
                    if not self.protocol.startswith("SERVER"):
                        return
                elif line.upper().startswith("TIMEOUT"):
                    conn.sendall(b"OK\n")
                elif line.upper().endswith("STATUS"):
                    conn.sendall(self.answer.encode())
                    return


def test_client_speaks_the_ras_protocol():
    text = (FIXTURES / "stopped_2.29.txt").read_text()
    server = RasServer(text)
    facts = ncclras.query("127.0.0.1", server.port, timeout_s=10)
    assert facts["output"] == text and facts["server_protocol"] == "2"
    assert server.commands == ["CLIENT PROTOCOL 2", "TIMEOUT 3", "VERBOSE STATUS"]


def test_client_says_plainly_when_there_is_no_ras():
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    facts = ncclras.query("127.0.0.1", port, timeout_s=2)
    assert "cannot connect to NCCL RAS" in facts["error"] and "NCCL < 2.24" in facts["error"]
    other = RasServer("", protocol="SSH-2.0-OpenSSH_9.6\n")
    assert "not an NCCL RAS server" in ncclras.query("127.0.0.1", other.port)["error"]


def test_module_prints_one_marked_line(capsys):
    server = RasServer((FIXTURES / "healthy_2.29.txt").read_text())
    assert ncclras.main(["--host", "127.0.0.1", "--port", str(server.port)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("@@DDPCHECK ras ")
    assert "Job summary" in json.loads(line.split(" ", 2)[2])["output"]


def test_hang_scan_asks_ras_and_the_analysis_names_the_rank(tmp_path, fake_ranks, monkeypatch):
    """Real worker processes (one stopped with SIGSTOP) whose environment names the RAS port
    (NCCL_RAS_ADDR), the host scan with --ras asking it, and the hang analysis folding RAS's
    answer in, RAS's pid named as the job's rank."""
    from ddpcheck.analyze.hang import HostScanResult, analyze_scans

    server = RasServer("")
    monkeypatch.setenv("NCCL_RAS_ADDR", f"127.0.0.1:{server.port}")
    port = 29000 + os.getpid() % 1000
    ranks = [fake_ranks(rank, port) for rank in (0, 1)]
    stopped = ranks[1]
    server.answer = (FIXTURES / "stopped_2.29.txt").read_text().replace(
        "3487984", str(stopped.pid)).replace("Rank 21", "Rank 1").replace(
        "172.16.64.213", "127.0.0.1")
    os.kill(stopped.pid, signal.SIGSTOP)
    done = subprocess.run([sys.executable, "-m", "ddpcheck.remote.hangscan", "--window", "0.5",
                           "--no-stacks", "--ras", "--job", "scan-test", "--deadline", "20"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    (line,) = [l for l in done.stdout.splitlines() if l.startswith("@@DDPCHECK hangscan ")]
    scan = json.loads(line.split(" ", 2)[2])
    assert scan["ras"].get("output") == server.answer, scan["ras"]
    analysis = analyze_scans([HostScanResult("h1", scan)])
    named = [f for f in analysis.findings if f.message.startswith("NCCL RAS")]
    assert [f.rank for f in named] == [1], [f.message for f in analysis.findings]
    assert "(GPU 5, rank 1) did not answer NCCL RAS" in named[0].message
    assert analysis.ras["host"] == "h1"
    assert analysis.ras["view"]["unresponsive"][0]["pid"] == stopped.pid


def test_ddpcheck_hang_folds_ras_into_its_verdict_and_json(tmp_path, monkeypatch):
    """`ddpcheck hang` on this machine: a stopped rank named by stacks/state AND by RAS, whose
    text is in -v and in the JSON."""
    import time

    from test_hangscan import FAKE_RANK, worker_env

    server = RasServer("")
    run_id = f"ras-hang-{os.getpid()}-{time.monotonic_ns()}"
    procs = []
    try:
        for rank in (0, 1):
            env = {**worker_env(tmp_path, rank, 29000 + os.getpid() % 1000),
                   "TORCHELASTIC_RUN_ID": run_id,
                   "NCCL_RAS_ADDR": f"127.0.0.1:{server.port}"}
            proc = subprocess.Popen([sys.executable, "-c", FAKE_RANK], env=env,
                                    stdout=subprocess.PIPE, text=True, start_new_session=True)
            procs.append(proc)
            assert proc.stdout.readline().strip() == "ready"
        stopped = procs[1]
        server.answer = (FIXTURES / "stopped_2.29.txt").read_text().replace(
            "3487984", str(stopped.pid)).replace("Rank 21", "Rank 1")
        os.kill(stopped.pid, signal.SIGSTOP)
        report_path = tmp_path / "hang.json"
        done = subprocess.run([sys.executable, "-m", "ddpcheck", "hang", "--job", run_id,
                               "--window", "1", "--no-stacks", "-v", "--json",
                               str(report_path)], capture_output=True, text=True, timeout=120)
    finally:
        for proc in procs:
            os.killpg(proc.pid, signal.SIGCONT)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    report = json.loads(report_path.read_text())
    assert done.returncode == 1, done.stdout + done.stderr
    assert report["ras"]["view"]["unresponsive"][0]["pid"] == stopped.pid
    assert "Job summary" in report["ras"]["output"]
    ras_findings = [f for f in report["findings"] if f["message"].startswith("NCCL RAS")]
    assert [(f["check"], f["rank"], f["severity"]) for f in ras_findings] == [("hang", 1, "error")]
    assert "# NCCL RAS (asked on localhost, NCCL 2.29.1): 1 comm(s) of 32 rank(s) RUNNING " \
           "INCOMPLETE" in done.stdout
    assert "#     Missing communicator data from 1 job process" in done.stdout  # -v: RAS's text
