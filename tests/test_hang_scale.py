"""``ddpcheck hang``'s report at 1,000 hosts, from generated host records and scans run through
the real analysis (``engine.hang.hang_report``, pure): hosts the --timeout cut off are not
reached (never the root cause, exit 3 when nothing else failed), and the report's length does
not grow with the number of hosts."""

from __future__ import annotations

from typing import Any

import pytest

from ddpcheck.model.checks import Check
from ddpcheck.model.outcomes import Failure
from ddpcheck.analyze.hang import HostScanResult
from ddpcheck.analyze.outcomes import not_reached_failure
from ddpcheck.config.hostlist import expand_hostlist
from ddpcheck.engine.hang import HangOptions, hang_report
from ddpcheck.model.records import HostRecord, Severity, Stage, Verdict
from ddpcheck.model.spec import ClusterSpec, HostSpec
from ddpcheck.report.hang import render_hang

JOB = "none@10.0.0.1:29500"
TORCH = "/venv/lib/python3.11/site-packages/torch/distributed"
IN_ALL_REDUCE = [{"name": "all_reduce", "file": f"{TORCH}/distributed_c10d.py", "line": 3252},
                 {"name": "train", "file": "/job/train.py", "line": 40}]
IN_FORWARD = [{"name": "forward", "file": "/job/model.py", "line": 7},
              {"name": "train", "file": "/job/train.py", "line": 36}]


def name(index: int) -> str:
    return f"h{index + 1}"


def address(index: int) -> str:
    return f"10.1.{index // 256}.{index % 256}"


def worker(rank: int, world: int, status: str = "sleeping", frames=IN_ALL_REDUCE) -> dict:
    def sample(at: float) -> dict[str, Any]:
        return {"status": status, "cpu_s": 1.0, "at": at, "heartbeat": None,
                "stack": {"threads": [{"name": "MainThread", "os_tid": 1000 + rank,
                                       "main": True, "frames": frames}]}}

    return {"job": JOB, "rank": rank, "local_rank": 0, "world_size": world, "group_rank": rank,
            "local_world_size": 1, "pid": 1000 + rank, "create_time": 100.0,
            "cmdline": "python train.py", "samples": [sample(10.0), sample(13.0)]}


def scan(host: str, workers: list, **more: Any) -> dict[str, Any]:
    return {"hostname": host, "boot_id": f"boot-{host}", "time": 13.0, "workers": workers,
            "gone": [], "py_spy": "/venv/bin/py-spy", "stacks_requested": True,
            "python": "/venv/bin/python", "other_netns": 0, **more}


def hang_run(hosts: int, cut_off: frozenset[int] = frozenset(),
             scan_failed: frozenset[int] = frozenset(), refused: frozenset[int] = frozenset(),
             job_hosts: int = 0, stopped: int = -1):
    """A hang run on ``hosts`` hosts as the engine leaves it: ``cut_off`` hosts' scans were
    running when --timeout (60s) ran out, ``scan_failed`` hosts' scans ran and reported an
    error, ``refused`` hosts refused the connection; the first ``job_hosts`` hosts run one
    rank each of a job (rank ``stopped`` in state T, the others waiting in all_reduce)."""
    spec = ClusterSpec(hosts=tuple(HostSpec(name(i), address(i))
                                   for i in range(hosts)), source="hosts.yaml")
    records, scans = [], {}
    for i in range(hosts):
        host = name(i)
        if i in refused:
            records.append(HostRecord(host, address(i), reachable=False, stage=Stage.CONNECT,
                                      failure=Failure(Check.SSH, "Connection refused")))
            continue
        if i in cut_off:
            failure = not_reached_failure(60.0, "its scan was running")
            records.append(HostRecord(host, address(i), reachable=True, stage=Stage.SCAN,
                                      failure=failure))
            continue
        records.append(HostRecord(host, address(i), reachable=True, stage=Stage.DONE, hostname=host))
        if i in scan_failed:
            scans[host] = HostScanResult(host, scan(host, [], error="psutil: access denied"))
        elif i < job_hosts:
            state, frames = ("stopped", IN_FORWARD) if i == stopped else ("sleeping",
                                                                            IN_ALL_REDUCE)
            scans[host] = HostScanResult(host, scan(host, [worker(i, job_hosts, state,
                                                                  frames)]))
        else:
            scans[host] = HostScanResult(host, scan(host, []))
    report = hang_report(spec, records, scans, HangOptions(), interrupted=False, duration_s=61.0)
    return report, render_hang(report)


def spread(hosts: int, every: int, offset: int) -> frozenset[int]:
    return frozenset(range(offset, hosts, every))


def worker_line(text: str) -> str:
    (line,) = [line for line in text.splitlines() if "no running torchrun worker" in line]
    return line


@pytest.mark.parametrize("hosts", [100, 1000])
def test_scans_cut_off_by_the_timeout_are_not_reached_not_the_root_cause(hosts):
    report, text = hang_run(hosts, cut_off=spread(hosts, 7, 3))
    assert report.verdict is Verdict.UNREACHABLE and report.exit_code == 3
    assert "ROOT CAUSE" not in text
    assert not any(f.root_cause for f in report.findings)
    (line,) = [line for line in text.splitlines() if "not reached in time" in line]
    assert "scan: not reached in time: its scan was running when --timeout (60s) ran out" in line
    assert f"[{len(spread(hosts, 7, 3))} findings on {len(spread(hosts, 7, 3))} hosts]" in line


def test_a_real_failure_stays_the_root_cause_beside_hosts_cut_off():
    report, text = hang_run(1000, cut_off=spread(1000, 7, 3), scan_failed=frozenset({501}))
    root = [line for line in text.splitlines() if "ROOT CAUSE" in line]
    assert len(root) == 1 and "h502: scan failed: psutil: access denied" in root[0]
    assert report.exit_code == 1


def test_a_hung_job_is_named_first_and_the_hosts_cut_off_are_one_line():
    report, text = hang_run(1000, cut_off=spread(1000, 7, 3) - {3}, job_hosts=3, stopped=1)
    assert report.verdict is Verdict.FAIL and report.exit_code == 1
    root = [f for f in report.findings if f.root_cause]
    assert [(f.rank, f.host) for f in root] == [(1, "h2")]
    assert len([line for line in text.splitlines() if "not reached in time" in line]) == 1


def test_the_no_worker_line_names_only_hosts_scanned_and_stays_short():
    lines = {}
    for hosts in (100, 1000):
        failed = spread(hosts, 9, 4) | spread(hosts, 13, 6)
        report, text = hang_run(hosts, cut_off=spread(hosts, 7, 3), scan_failed=failed,
                                refused=frozenset({1}))
        line = worker_line(text)
        shown = line.split(" found on the ", 1)[1].split(", ", 1)[1].split(" ")[0]
        answered = {name(i) for i in range(hosts)} - {name(i) for i in failed | {1} | spread(
            hosts, 7, 3)}
        assert f"the {len(answered)} hosts scanned, " in line
        assert set(expand_hostlist(shown)) <= answered  # none that failed, was cut off or refused
        assert "(+" in line  # the rest counted, not listed
        lines[hosts] = line
    assert len(lines[1000]) <= len(lines[100]) + 8 and len(lines[1000]) < 300, lines


def test_a_scan_that_ran_out_of_its_own_deadline_names_its_stage_once():
    spec = ClusterSpec(hosts=(HostSpec("h1", address(0)),), source="hosts.yaml")
    record = HostRecord("h1", address(0), reachable=True, stage=Stage.SCAN,
                        failure=Failure(Check.TIMEOUT, "scan: no answer within the deadline"))
    report = hang_report(spec, [record], {}, HangOptions(), interrupted=False, duration_s=40.0)
    assert report.findings[0].message == "h1: scan: no answer within the deadline"
    assert report.exit_code == 3  # not checked, as a stage-0 deadline is


def test_a_few_hosts_are_still_named_one_by_one():
    report, text = hang_run(4, scan_failed=frozenset({2}))
    assert "no running torchrun worker found on h1, h2, h4 (a worker has" in text
    warning = [f for f in report.findings if "no running torchrun worker" in f.message]
    assert warning[0].severity is Severity.WARNING


def test_the_whole_report_does_not_grow_with_the_hosts():
    sizes, widest = {}, 0
    for hosts in (1000, 4000):
        failed = spread(hosts, 9, 4)
        _, text = hang_run(hosts, cut_off=spread(hosts, 7, 3), scan_failed=failed,
                           refused=frozenset({1}))
        sizes[hosts] = (len(text.splitlines()), len(text))
        widest = max(widest, *(len(line) for line in text.splitlines()))
    # the same lines; only the counts in them get a digit longer
    assert sizes[4000][0] == sizes[1000][0] <= 14, sizes
    assert sizes[4000][1] < sizes[1000][1] + 40 and sizes[1000][1] < 2500, sizes
    assert widest < 320
