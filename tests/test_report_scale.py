"""The grouped report at 1,024 hosts x 8 ranks: golden tables from synthetic records run
through the real analysis (analyze.verdict, drift), and the renderers' cost staying linear."""

from __future__ import annotations

import csv
import io
import json
import random
from dataclasses import replace

import pytest

from goldenfile import check_golden

from ddpcheck.model.checks import Check
from ddpcheck.model.outcomes import Failure
from ddpcheck.analyze import verdict as analyze
from ddpcheck.config.hostlist import expand_hostlist
from ddpcheck.analyze.outcomes import not_launched_finding
from ddpcheck.model.records import EXIT_CODES
from ddpcheck.model.records import HostRecord, RankRecord, RankStatus
from ddpcheck.report.grouping import group_hosts, hostlist_text, int_ranges, merge_findings
from ddpcheck.report.machine import render_csv, render_junit
from ddpcheck.report.table import render_table, to_json_dict
from ddpcheck.model.report import Report

HOSTS = 1024
SLOTS = 8
VERSIONS = {"python": "3.11.7", "torch": "2.3.0"}


def name(index: int) -> str:
    return f"node{index + 1:04d}"


def cluster(bad_gpu=None, slow=None, drift=(), unreachable=(), hosts=HOSTS,
            crash=None) -> Report:
    """Synthetic records of a run on ``hosts`` x 8 ranks (barrier 41-58 us, all_reduce
    20-31 us, drawn from a fixed seed), analysed the way preflight does."""
    rng = random.Random(14)
    host_records, ranks = [], []
    for index in range(hosts):
        host = name(index)
        versions = dict(VERSIONS, torch="2.4.0") if index in drift else VERSIONS
        if index in unreachable:
            host_records.append(HostRecord(
                host, f"10.1.{index // 256}.{index % 256}", reachable=False, stage="connect",
                failure=Failure(Check.SSH, f"ssh: connect to host 10.1.{index // 256}."
                                           f"{index % 256} port 22: Connection timed out")))
            continue
        host_records.append(HostRecord(host, f"10.1.{index // 256}.{index % 256}",
                                       reachable=True, hostname=host, slots=SLOTS, gpus=SLOTS,
                                       stage="done", versions=versions))
        for local in range(SLOTS):
            rank = index * SLOTS + local
            barrier = rng.uniform(41, 58) * (20 if index == slow else 1)
            record = RankRecord(
                rank=rank, host=host, local_rank=local, node_rank=index, hostname=host,
                pid=1000 + local, world_size=hosts * SLOTS, device=f"cuda:{local}",
                gpu_uuid=f"GPU-{index:04d}-{local}", gpu_bus_id=f"0000:{0x18 + local:02x}:00.0",
                status=RankStatus.OK, stage="finish", barrier_us=barrier,
                allreduce_small_us=rng.uniform(20, 31), all_reduce_wrong=0,
                versions=versions,
                fingerprint={"versions": {"python": versions["python"],
                                          "torch": versions["torch"]}})
            if (index, local) == bad_gpu:
                record = replace(record, status=RankStatus.ERROR, stage="device",
                                 error="CUDA error: uncorrectable ECC error encountered",
                                 barrier_us=None, allreduce_small_us=None,
                                 all_reduce_wrong=None, failed_at=3.0)
            ranks.append(record)
    if crash is not None:
        ranks = [replace(r, status=RankStatus.TIMEOUT, stage="barrier", failed_at=30.0,
                         barrier_us=None, allreduce_small_us=None, all_reduce_wrong=None)
                 if r.rank != crash else
                 replace(r, status=RankStatus.ERROR, stage="all_reduce", failed_at=5.0,
                         error="RuntimeError: NCCL error: unhandled system error",
                         barrier_us=None, allreduce_small_us=None, all_reduce_wrong=None)
                 for r in ranks]
    failed = frozenset(h.name for h in host_records if h.error)
    findings = analyze.host_findings(host_records)
    if failed:  # as preflight does: a world with a missing node can only hang, so no launch
        ranks = []
        host_records = [replace(h, stage="stage0") if h.reachable else h for h in host_records]
        findings.append(not_launched_finding([h.name for h in host_records if h.error]))
    else:
        findings += analyze.rank_findings(ranks, {h.name: SLOTS for h in host_records},
                                          {h.name: h.gpus for h in host_records}, "nccl")
    drifted, rows = analyze.drift_report(ranks, seeded=False)
    findings = analyze.mark_single_root_cause(analyze.order_findings(findings + drifted))
    verdict = analyze.verdict(findings, host_records)
    return Report(command="preflight", verdict=verdict, exit_code=EXIT_CODES[verdict],
                  duration_s=21.4, backend="nccl", world_size=hosts * SLOTS,
                  expected_world_size=hosts * SLOTS, hosts=tuple(host_records),
                  ranks=tuple(ranks), findings=tuple(findings), source="hosts.yaml",
                  master="node0001:29500", extra={"drift": rows} if rows else {})


def test_healthy_is_a_handful_of_lines():
    text = render_table(cluster())
    check_golden("scale_healthy.txt", text)
    assert len(text.splitlines()) <= 12
    assert "node[0001-1024]" in text and "8192" in text


def test_one_bad_gpu():
    text = render_table(cluster(bad_gpu=(516, 3)))
    check_golden("scale_bad_gpu.txt", text)
    lines = text.splitlines()
    assert len(lines) <= 30
    # the host is listed on its own, its bad rank's row first among the findings' root cause
    assert any(line.startswith("node0517") and "error (device)" not in line for line in lines)
    assert any("error (device)" in line for line in lines)
    assert "node[0001-0516,0518-1024]" in text
    root = next(line for line in lines if "ROOT CAUSE [error]" in line)
    assert "rank 4131 on node0517" in root and "ECC" in root


def test_one_slow_host():
    text = render_table(cluster(slow=99))
    check_golden("scale_slow_host.txt", text)
    assert "#  node0100: slow barrier median" in text
    assert "node[0001-0099,0101-1024]" in text
    assert len(text.splitlines()) <= 30


def test_version_drift_on_three_hosts():
    text = render_table(cluster(drift=(7, 300, 1000)))
    check_golden("scale_drift.txt", text)
    for host in ("node0008", "node0301", "node1001"):
        assert f"\n{host} " in text  # listed on its own, with its rows per rank
    assert len(text.splitlines()) <= 60
    assert max(len(line) for line in text.splitlines()) < 400


def test_forty_hosts_unreachable():
    unreachable = set(range(100, 140))
    text = render_table(cluster(unreachable=unreachable))
    check_golden("scale_unreachable.txt", text)
    lines = text.splitlines()
    assert len(lines) <= 14
    roots = [line for line in lines if "ROOT CAUSE [error] ssh" in line]
    assert len(roots) == 1 and "node[0101-0140]" in roots[0] and "40 findings on 40 hosts" \
        in roots[0]
    assert "Verdict: UNREACHABLE (exit 3)" in text
    assert "node[0101-0140] failed before launch" in text


def test_collateral_timeouts_merge_into_one_finding():
    text = render_table(cluster(crash=4131))
    lines = text.splitlines()
    assert len(lines) <= 30
    findings = [line for line in lines if line.startswith("#  ")]
    assert "ROOT CAUSE" in findings[0] and "rank 4131 on node0517" in findings[0]
    assert "8191 ranks on 1024 hosts" in findings[1] and "possibly collateral" in findings[1]


def test_machine_outputs_stay_complete():
    """JSON, CSV and JUnit keep an entry per host and rank and one finding per host."""
    report = cluster(unreachable=set(range(100, 140)))
    data = to_json_dict(report)
    assert len(data["hosts"]) == HOSTS and len(data["ranks"]) == 0
    assert sum(1 for f in data["findings"] if f["check"] == "ssh") == 40
    rows = list(csv.DictReader(io.StringIO(render_csv(report))))
    assert len(rows) == HOSTS
    junit = render_junit(report)
    assert junit.count('<error type="ssh"') >= 40
    report = cluster(bad_gpu=(516, 3))
    assert len(to_json_dict(report)["ranks"]) == HOSTS * SLOTS
    assert len(list(csv.DictReader(io.StringIO(render_csv(report))))) == HOSTS * SLOTS
    assert render_junit(report).count("<testcase ") >= HOSTS * SLOTS


def test_full_gives_a_row_per_rank():
    report = cluster(hosts=64)
    text = render_table(report, full=True)
    assert sum(1 for line in text.splitlines() if "ok" in line.split()) == 64 * SLOTS
    grouped = render_table(report)
    assert len(grouped.splitlines()) < 15


def test_small_cluster_keeps_rows_per_rank():
    text = render_table(cluster(hosts=4))
    assert sum(1 for line in text.splitlines() if " ok " in line) == 32


def test_hostlist_text_cuts_and_counts():
    names = [name(i) for i in range(0, 2000, 2)]
    text = hostlist_text(names, width=60)
    assert len(text) < 90 and text.endswith("hosts)")
    shown = text.split(" ...")[0]
    hidden = int(text.rsplit("+", 1)[1].split()[0])
    assert len(expand_hostlist(shown)) + hidden == len(names)
    assert hostlist_text(["a", "b"]) == "a,b"


def test_int_ranges():
    assert int_ranges([5, 0, 1, 2, 7, 8]) == "0-2,5,7-8"
    assert int_ranges([]) == ""


def test_merge_keeps_distinct_causes_apart():
    report = cluster(hosts=64, unreachable={3, 4, 5})
    refused = replace(report.findings[0], message=report.findings[0].message.replace(
        "Connection timed out", "Connection refused"))
    merged = merge_findings((refused, *report.findings[1:]), report.hosts)
    messages = [m.message for m in merged if m.first.check == "ssh"]
    assert len(messages) == 2 and "Connection refused" in messages[0]
    assert "node[0005-0006]" in messages[1]


def test_groups_order_root_cause_first():
    report = cluster(hosts=128, bad_gpu=(50, 0), slow=90)
    groups = group_hosts(report.hosts, report.ranks, report.findings).groups
    assert groups[0].root_cause and groups[0].hosts == ("node0051",)
    assert groups[1].hosts == ("node0091",) and groups[1].severity == 2
    assert groups[-1].severity == 3 and len(groups[-1].hosts) == 126


def test_json_is_unchanged_by_grouping():
    report = cluster(hosts=64)
    assert json.loads(json.dumps(to_json_dict(report)))["ranks"][0]["rank"] == 0


def test_hang_rows_group_the_crowd_around_the_named_rank():
    from ddpcheck.report.grouping import hang_rows
    ranks = [{"host": name(r // 8), "rank": r, "pid": 100 + r, "state": "sleeping",
              "cpu_pct": 0.3, "step": 40, "seq": 8812, "role": "waiting",
              "where": "all_reduce < train (train.py:40)"} for r in range(1024) if r != 517]
    ranks.insert(517, {"host": name(64), "rank": 517, "pid": 9, "state": "sleeping",
                       "cpu_pct": 0.0, "step": 40, "seq": 8811, "role": "behind",
                       "where": "get (queue.py:171) < load_batch (train.py:12)"})
    rows = hang_rows(ranks)
    assert len(rows) == 2
    assert rows[0][:2] == [name(64), "517"] and rows[0][7] == "behind"
    assert rows[1][0] == "node[0001-0128]" and rows[1][1:3] == ["0-516,518-1023", "1023"]
    assert rows[1][6] == "8812" and rows[1][7] == "waiting"


def test_render_hang_groups_the_waiting_ranks_at_scale():
    from ddpcheck.model.records import Verdict
    from ddpcheck.report.hang import render_hang
    ranks = [{"host": name(r // 8), "rank": r, "pid": 100 + r, "state": "sleeping",
              "cpu_pct": 0.3, "step": 40, "seq": 8812, "role": "waiting",
              "where": "all_reduce < train (train.py:40)"} for r in range(8192)]
    ranks[517] = dict(ranks[517], role="blocked", seq=None,
                      where="get (queue.py:171) < load_batch (train.py:12)")
    hosts = tuple(HostRecord(name(i), "10.0.0.1", reachable=True, hostname=name(i))
                  for i in range(HOSTS))
    report = Report(command="hang", verdict=Verdict.FAIL, exit_code=1, duration_s=4.0,
                    backend=None, world_size=None, expected_world_size=None, hosts=hosts,
                    ranks=(), findings=(), source="hosts.yaml",
                    extra={"window_s": 3.0, "jobs": [{"job": "j@10.0.0.1:29500",
                                                      "world_size": 8192, "ranks": ranks,
                                                      "culprits": [517]}]})
    text = render_hang(report)
    assert len(text.splitlines()) < 15
    assert "8191" in text and "node[0001-1024]" in text and "blocked" in text
    assert len(render_hang(report, full=True).splitlines()) > 8192


def test_bandwidth_rank_lines_grouped_at_scale():
    from ddpcheck.report.bandwidth import render_bandwidth
    report = replace(cluster(hosts=128, bad_gpu=(5, 2)), command="bandwidth",
                     extra={"bandwidth": {"ops": ["all_reduce"], "sizes": [1 << 20]}})
    text = render_bandwidth(report)
    rank_lines = [line for line in text.splitlines() if line.startswith("#  Rank")]
    assert len(rank_lines) == 1 and "error (device)" in rank_lines[0]
    assert "#  node[0001-0005,0007-0128]: 8 ranks ok on cuda" in text
