"""Unit tests for ddpcheck.report.table: golden tables and the JSON report's keys."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from goldenfile import check_golden

from ddpcheck.model.checks import Check
from ddpcheck.model.outcomes import Failure
from ddpcheck.model.records import (Finding, HostRecord, RankRecord, RankStatus, Severity,
                              Verdict)
from ddpcheck.report.table import SCHEMA, render_table, to_json, to_json_dict
from ddpcheck.model.report import Report

# The interface contract users rely on.
INTERFACE = Path(__file__).resolve().parents[1] / "docs" / "interface.md"

VERSIONS = {"python": "3.11.7", "torch": "2.3.0"}


def healthy_report() -> Report:
    hosts = (
        HostRecord("h1", "10.0.0.1", reachable=True, hostname="h1", slots=2, gpus=0,
                   stage="done", versions=VERSIONS),
        HostRecord("h2", "10.0.0.2", reachable=True, hostname="h2", slots=2, gpus=0,
                   stage="done", versions=VERSIONS),
    )
    ranks = tuple(
        RankRecord(rank=r, host=h, local_rank=r % 2, node_rank=r // 2, hostname=h,
                   pid=4000 + r, world_size=4, device="cpu", status=RankStatus.OK,
                   stage="finish", barrier_us=100.0 + r, allreduce_small_us=50.25 + r,
                   all_reduce_wrong=0)
        for r, h in [(1, "h1"), (0, "h1"), (2, "h2"), (3, "h2")])
    findings = (Finding(Severity.INFO, "barrier",
                        "barrier median 102 us over 4 ranks; slowest rank 3 on h2: 103 us"),)
    return Report(command="preflight", verdict=Verdict.OK, exit_code=0, duration_s=4.2345,
                  backend="gloo", world_size=4, expected_world_size=4, hosts=hosts,
                  ranks=ranks, findings=findings, source="hosts.yaml", master="h1",
                  collectives=({"op": "all_reduce", "bytes": 1048576, "time_us": 812.0,
                                "algbw_gbs": 1.29, "busbw_gbs": 2.15, "wrong": 0},))


def failed_report() -> Report:
    hosts = (
        HostRecord("h1", "10.0.0.1", reachable=True, hostname="h1", slots=2, gpus=1,
                   stage="done", versions=VERSIONS),
        HostRecord("h2", "10.0.0.2", reachable=False, stage="connect",
                   failure=Failure(Check.SSH,
                                   "ssh: connect to host 10.0.0.2 port 22: Connection refused")),
        HostRecord("h3", "10.0.0.3", reachable=True, hostname="h3", slots=1, gpus=1,
                   stage="done", versions={"python": "3.10.12", "torch": "2.3.0"}),
    )
    ranks = (
        RankRecord(rank=0, host="h1", local_rank=0, hostname="h1", pid=11, world_size=4,
                   device="cuda:0", gpu_uuid="GPU-aaa", gpu_bus_id="0000:3b:00.0",
                   status=RankStatus.ERROR, stage="init", error="rendezvous timed out",
                   failed_at=10.0),
        RankRecord(rank=1, host="h1", local_rank=1, hostname="h1", pid=12, world_size=4,
                   device="cuda:1", status=RankStatus.TIMEOUT, stage="barrier",
                   failed_at=20.0),
    )
    findings = (
        Finding(Severity.ERROR, "ssh",
                "h2: connect: ssh: connect to host 10.0.0.2 port 22: Connection refused",
                host="h2", root_cause=True),
        Finding(Severity.ERROR, "rendezvous",
                "rank 0 on h1 failed in init: rendezvous timed out", host="h1", rank=0,
                root_cause=True),
        Finding(Severity.ERROR, "timeout", "rank 1 on h1 failed in barrier: timeout "
                "(possibly collateral: failed after the root cause)", host="h1", rank=1),
        Finding(Severity.ERROR, "world_size", "h3: 0 of 1 planned rank(s) reported back",
                host="h3"),
        Finding(Severity.WARNING, "hostname", "hosts h1, h3 all report hostname 'x'"),
    )
    return Report(command="preflight", verdict=Verdict.FAIL, exit_code=1, duration_s=31.06,
                  backend="nccl", world_size=None, expected_world_size=4, hosts=hosts,
                  ranks=ranks, findings=findings, source="cluster.yaml", master=None)


def test_table_healthy_golden():
    text = render_table(healthy_report())
    check_golden("report_healthy.txt", text)


def test_table_failed_golden():
    text = render_table(failed_report())
    check_golden("report_failed.txt", text)


def test_table_healthy_content():
    text = render_table(healthy_report())
    lines = text.splitlines()
    assert lines[0] == "# ddpcheck preflight: 2 host(s) from hosts.yaml, 2 reachable"
    assert "# versions: python 3.11.7, torch 2.3.0" in lines
    assert lines[-1] == "# Verdict: OK (exit 0) in 4.2s"
    # ranks grouped by host and sorted: rank 0 before rank 1 on h1
    rows = [l for l in lines if re.match(r"^(h1|h2|\s+)\s+\d\s", l)]
    assert [int(l.split()[1] if l.startswith("h") else l.split()[0]) for l in rows] == [0, 1, 2, 3]


def test_table_failed_content():
    text = render_table(failed_report())
    assert "2 reachable" in text and "world_size ? (expected 4)" in text
    assert "master ?" in text
    assert re.search(r"^h2 .*unreachable", text, re.M)
    assert re.search(r"^h3 .*-\s*$", text, re.M)  # reachable, no ranks, no error
    assert "error (init)" in text and "timeout (barrier)" in text
    assert "cuda:0 0000:3b:00.0" in text
    findings = [l for l in text.splitlines() if l.startswith("#  ")]
    assert findings[0].startswith("#  ROOT CAUSE [error] ssh:")
    assert findings[1].startswith("#  ROOT CAUSE [error] rendezvous:")
    assert text.endswith("# Verdict: FAIL (exit 1) in 31.1s\n")


def test_table_no_findings():
    report = healthy_report()
    from dataclasses import replace
    assert "# Findings: none" in render_table(replace(report, findings=()))


def _interface_example() -> dict:
    text = INTERFACE.read_text()
    section = text[text.index("## The JSON report"):]
    block = re.search(r"```json\n(.*?)```", section, re.S).group(1)
    block = re.sub(r'"ok \| fail \| unreachable \| interrupted"', '"ok"', block)
    return json.loads(block)


@pytest.mark.parametrize("make", [healthy_report, failed_report])
def test_json_has_every_interface_key(make):
    example = _interface_example()
    report = make()
    data = to_json_dict(report)
    assert set(example) <= set(data), set(example) - set(data)
    for section in ("hosts", "ranks", "findings", "collectives"):
        want = set(example[section][0])
        entries = data[section]
        if section == "collectives" and not entries:
            continue
        assert entries, section
        for entry in entries:
            assert want <= set(entry), (section, want - set(entry))


def test_json_values():
    data = to_json_dict(failed_report())
    assert data["schema"] == SCHEMA == "ddpcheck/report/v1"
    assert data["verdict"] == "fail" and data["exit_code"] == 1
    assert data["duration_s"] == 31.06 and data["world_size"] is None
    assert [h["reachable"] for h in data["hosts"]] == [True, False, True]
    assert data["hosts"][1]["error"].startswith("ssh: connect")
    assert data["ranks"][1]["status"] == "timeout"
    assert data["findings"][0] == {"severity": "error", "check": "ssh", "host": "h2",
                                   "rank": None, "message": data["findings"][0]["message"],
                                   "root_cause": True}
    assert data["collectives"] == []
    healthy = to_json_dict(healthy_report())
    assert healthy["duration_s"] == 4.234 or healthy["duration_s"] == 4.235
    assert healthy["collectives"][0]["busbw_gbs"] == 2.15
    # round-trips through JSON unchanged (no enums or tuples left)
    assert json.loads(to_json(failed_report())) == data
    assert json.loads(to_json(healthy_report())) == healthy
