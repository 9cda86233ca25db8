"""Alike findings on several hosts read as one line with a compressed host list, at any size
(not only past the grouped table's 32 ranks). The findings come from the real stage-0 rules."""

from __future__ import annotations

import json

from ddpcheck.collect.facts import read_facts
from ddpcheck.analyze import health
from ddpcheck.analyze.verdict import order_findings
from ddpcheck.model.records import HostRecord, RankRecord, Stage, Verdict
from ddpcheck.report.bandwidth import render_bandwidth
from ddpcheck.report.table import render_table, to_json
from ddpcheck.model.report import Report


def eight_hosts_report(hostnames, command="preflight"):
    names = [f"h{i}" for i in range(1, 9)]
    hosts = tuple(HostRecord(n, f"10.0.0.{i}", reachable=True, hostname=hostname, slots=1,
                             stage=Stage.DONE)
                  for i, (n, hostname) in enumerate(zip(names, hostnames), start=1))
    ranks = tuple(RankRecord(i, n, local_rank=0, hostname=hostname, pid=100 + i,
                             world_size=8, barrier_us=50.0, allreduce_small_us=60.0,
                             all_reduce_wrong=0)
                  for i, (n, hostname) in enumerate(zip(names, hostnames)))
    # the hostname does not resolve on any host (no /etc/hosts entry, no DNS)
    findings = order_findings(f for n, hostname in zip(names, hostnames)
                              for f in health.host_findings(n, read_facts({"hostname": hostname,
                                                                           "addresses": []})))
    return Report(command, Verdict.OK, 0, 1.0, "gloo", 8, 8, hosts, ranks, tuple(findings),
                  source="hosts.yaml", master="10.0.0.1:29500",
                  extra={"bandwidth": {"ops": [], "sizes": []}} if command == "bandwidth"
                  else {})


def test_eight_healthy_hosts_with_the_same_warning_give_one_line():
    report = eight_hosts_report([f"h{i}" for i in range(1, 9)])
    assert len(report.findings) == 8
    text = render_table(report)
    [line] = [line for line in text.splitlines() if "does not resolve" in line]
    assert line.startswith("#  [warning] hostname: h[1-8]: its hostname ")
    assert line.endswith("[8 findings on 8 hosts]")
    assert len(json.loads(to_json(report))["findings"]) == 8  # the JSON keeps each one


def test_hostnames_other_than_the_host_names_still_merge():
    report = eight_hosts_report([f"gpu-node-{i:02d}" for i in range(1, 9)])
    text = render_table(report)
    [line] = [line for line in text.splitlines() if "does not resolve" in line]
    assert "h[1-8]: its hostname '<hostname>' does not resolve" in line


def test_two_hosts_merge_and_a_host_alone_stays_as_it_is():
    report = eight_hosts_report([f"h{i}" for i in range(1, 9)])
    two = Report(**{**report.__dict__, "findings": report.findings[:2]})
    [line] = [line for line in render_table(two).splitlines() if "does not resolve" in line]
    assert "h[1-2]: " in line and "[2 findings on 2 hosts]" in line
    one = Report(**{**report.__dict__, "findings": report.findings[:1]})
    [line] = [line for line in render_table(one).splitlines() if "does not resolve" in line]
    assert line == f"#  [warning] hostname: {report.findings[0].message}"


def test_bandwidth_report_merges_them_too():
    text = render_bandwidth(eight_hosts_report([f"h{i}" for i in range(1, 9)], "bandwidth"))
    assert sum("does not resolve" in line for line in text.splitlines()) == 1
