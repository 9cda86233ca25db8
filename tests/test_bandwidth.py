"""Unit tests for the bandwidth analysis and rendering (ddpcheck.report.bandwidth), the sweep's
known-data checks (ddpcheck.remote.sweep.OpBuffers, no process group needed) and the pair planning."""

from __future__ import annotations

import itertools
import random

import pytest

from goldenfile import check_golden

from ddpcheck.analyze.bandwidth import (PairResult, SweepSettings, analyze_pairs, average_busbw,
                                        gbs, pair_findings, pairs_json, pairs_summary,
                                        sweep_findings, sweep_summary)
from ddpcheck.report.bandwidth import render_bandwidth
from ddpcheck.analyze.outcomes import pair_result
from ddpcheck.plan.bandwidth import plan_round, sweep_program
from ddpcheck.core.busbw import ALL_COLLECTIVES, Collective, CollectiveRow
from ddpcheck.plan.pairing import circle_rounds
from ddpcheck.plan.cmdlines import LaunchOptions
from ddpcheck.model.records import HostRecord, RankRecord, Verdict
from ddpcheck.model.report import Report
from ddpcheck.model.spec import Backend, ClusterSpec, HostSpec
from ddpcheck.model.outcomes import CommandResult

HOSTS = [f"h{i}" for i in range(1, 7)]
RATE = 1.0


def row(busbw: float, op: Collective = Collective.ALL_REDUCE, world: int = 2,
        nbytes: int = 4 << 20, wrong: int = 0) -> CollectiveRow:
    """A row whose busbw is ``busbw`` GB/s."""
    count = nbytes // 4
    probe = CollectiveRow(op, count, world, 1.0, wrong)
    return CollectiveRow(op, count, world, probe.busbw_gbs / busbw, wrong)


def measure(hosts, busbw_of) -> list[PairResult]:
    results = []
    for number, pairs in enumerate(circle_rounds(hosts), 1):
        for pair in pairs:
            value = busbw_of(pair)
            results.append(PairResult(pair, number, row=None if value is None else row(value),
                                      error="failed" if value is None else None))
    return results


def slow_link_hosts(findings):
    return [f.host for f in findings if f.check == "slow_link" and f.severity.value == "error"]


# -- the outlier rule ---------------------------------------------------------------------------


@pytest.mark.parametrize("count", [3, 4, 5, 6])
def test_one_quarter_rate_host_is_the_only_suspect(count):
    hosts = HOSTS[:count]
    slow = hosts[1]
    noise = random.Random(count)
    pairs = measure(hosts, lambda p: (RATE / 4 if slow in p else RATE) * noise.uniform(0.9, 1.1))
    analysis = analyze_pairs(hosts, pairs)
    assert analysis.suspect_hosts == (slow,)
    assert analysis.suspect_links == ()
    assert analysis.slow == {p.hosts for p in pairs if slow in p.hosts}
    assert analysis.reference_gbs == pytest.approx(RATE, rel=0.15)
    findings = pair_findings(hosts, pairs, SweepSettings((Collective.ALL_REDUCE,), (4 << 20,),
                                                         3, 1, pairwise=True), 3)
    assert slow_link_hosts(findings) == [slow]
    message = next(f.message for f in findings if f.host == slow)
    assert f"{slow} is the suspect" in message
    for other in set(hosts) - {slow}:  # named as partners nowhere
        assert f"{other} is the suspect" not in " ".join(f.message for f in findings)


def test_one_slow_link_names_the_link_not_its_hosts():
    hosts = HOSTS[:5]
    link = ("h2", "h4")
    pairs = measure(hosts, lambda p: RATE / 3 if p == link else RATE)
    analysis = analyze_pairs(hosts, pairs)
    assert analysis.suspect_hosts == ()
    assert analysis.suspect_links == (link,)
    findings = pair_findings(hosts, pairs, SweepSettings((Collective.ALL_REDUCE,), (1,), 1, 0,
                                                         pairwise=True), 5)
    errors = [f for f in findings if f.check == "slow_link" and f.severity.value == "error"]
    assert len(errors) == 1 and errors[0].host is None
    assert errors[0].message.startswith("link h2-h4:")


def test_two_slow_hosts_of_six_are_both_named():
    pairs = measure(HOSTS, lambda p: RATE / 4 if {"h2", "h5"} & set(p) else RATE)
    analysis = analyze_pairs(HOSTS, pairs)
    assert analysis.suspect_hosts == ("h2", "h5")
    assert analysis.suspect_links == ()


def test_uniform_noise_names_nothing():
    noise = random.Random(7)
    pairs = measure(HOSTS, lambda p: RATE * noise.uniform(0.75, 1.25))
    analysis = analyze_pairs(HOSTS, pairs)
    assert analysis.slow == frozenset()
    assert analysis.suspect_hosts == () and analysis.suspect_links == ()


def test_two_hosts_cannot_be_compared():
    pairs = measure(HOSTS[:2], lambda p: RATE / 100)
    analysis = analyze_pairs(HOSTS[:2], pairs)
    assert analysis.reference_gbs is None and analysis.slow == frozenset()
    findings = pair_findings(HOSTS[:2], pairs, SweepSettings((Collective.ALL_REDUCE,), (1,), 1,
                                                             0, pairwise=True), 1)
    assert slow_link_hosts(findings) == []
    assert "nothing to compare" in findings[-1].message


def test_host_whose_pairs_are_slow_or_failed_is_the_suspect_and_failures_are_findings():
    hosts = HOSTS[:4]
    pairs = measure(hosts, lambda p: None if p == ("h1", "h3") else
                    RATE / 5 if "h3" in p else RATE)
    analysis = analyze_pairs(hosts, pairs)
    assert analysis.suspect_hosts == ("h3",)
    findings = pair_findings(hosts, pairs, SweepSettings((Collective.ALL_REDUCE,), (1,), 1, 0,
                                                         pairwise=True), 3)
    assert any(f.message == "pair h1-h3: failed" for f in findings)
    assert "1 failed" in next(f.message for f in findings if f.host == "h3")


def test_slow_fraction_is_the_threshold():
    hosts = HOSTS[:4]
    pairs = measure(hosts, lambda p: RATE * 0.6 if "h4" in p else RATE)
    assert analyze_pairs(hosts, pairs, 0.5).suspect_hosts == ()
    assert analyze_pairs(hosts, pairs, 0.7).suspect_hosts == ("h4",)


def test_min_busbw_for_pairs_collapses_into_one_finding():
    hosts = HOSTS
    pairs = measure(hosts, lambda p: RATE)
    settings = SweepSettings((Collective.ALL_REDUCE,), (1,), 1, 0, min_busbw_gbs=2 * RATE,
                             pairwise=True)
    errors = [f for f in pair_findings(hosts, pairs, settings, 5) if f.check == "bandwidth"]
    assert len(errors) == 1 and errors[0].message.startswith("15 of 15 pair(s) below")
    assert pairs_summary(pairs, hosts, settings, 5)["check"] == "FAILED"
    ok = SweepSettings((Collective.ALL_REDUCE,), (1,), 1, 0, min_busbw_gbs=RATE / 2,
                       pairwise=True)
    assert pairs_summary(pairs, hosts, ok, 5)["check"] == "OK"


# -- the sweep's findings and footer -------------------------------------------------------------


def test_sweep_min_busbw_compares_the_average_like_nccl_tests():
    rows = [row(1.0, nbytes=1 << 20, world=4), row(3.0, nbytes=8 << 20, world=4)]
    assert average_busbw(rows) == pytest.approx(2.0)
    settings = SweepSettings((Collective.ALL_REDUCE,), (1 << 20, 8 << 20), 5, 1,
                             min_busbw_gbs=2.5)
    findings = sweep_findings(rows, settings)
    assert [f.check for f in findings] == ["bandwidth"]
    assert "average busbw 2.00 GB/s" in findings[0].message
    assert sweep_summary(rows, settings)["check"] == "FAILED"
    passing = SweepSettings((Collective.ALL_REDUCE,), (1 << 20, 8 << 20), 5, 1,
                            min_busbw_gbs=1.5)
    assert sweep_findings(rows, passing) == []
    assert sweep_summary(rows, passing)["check"] == "OK"
    assert sweep_summary(rows, SweepSettings((Collective.ALL_REDUCE,), (1,), 1, 0))["check"] is None


def test_sweep_wrong_elements_are_an_error():
    rows = [row(1.0, op=Collective.ALL_GATHER, wrong=12)]
    settings = SweepSettings((Collective.ALL_GATHER,), (4 << 20,), 5, 1)
    findings = sweep_findings(rows, settings)
    assert len(findings) == 1 and "12 wrong element(s)" in findings[0].message
    assert sweep_summary(rows, settings)["out_of_bounds"] == 12


def test_gbs_keeps_enough_digits():
    assert [gbs(v) for v in (0.0125, 0.02274, 3.14159, 371.2, None)] == [
        "0.0125", "0.0227", "3.14", "371.2", "-"]


# -- rendering (golden) ---------------------------------------------------------------------------


def _hosts(names):
    return tuple(HostRecord(n, f"10.0.0.{i}", reachable=True, hostname=n, slots=1,
                            stage="done", versions={"python": "3.11.7", "torch": "2.13.0"})
                 for i, n in enumerate(names, 1))


def test_render_sweep_golden():
    settings = SweepSettings((Collective.ALL_REDUCE, Collective.ALL_GATHER), (1 << 20, 8 << 20),
                             20, 5, min_busbw_gbs=0.05)
    rows = [CollectiveRow(Collective.ALL_REDUCE, 262144, 4, 0.0662414, 0),
            CollectiveRow(Collective.ALL_REDUCE, 2097152, 4, 0.5541764, 0),
            CollectiveRow(Collective.ALL_GATHER, 262144, 4, 0.0349, 0),
            CollectiveRow(Collective.ALL_GATHER, 2097152, 4, 0.27712, 0)]
    ranks = tuple(RankRecord(rank=i, host=f"h{i + 1}", hostname=f"h{i + 1}", pid=4242 + i,
                             world_size=4) for i in range(4))
    findings = tuple(sweep_findings(rows, settings))
    report = Report("bandwidth", Verdict.FAIL, 1, 34.6, "gloo", 4, 4, _hosts(["h1", "h2", "h3",
                                                                               "h4"]),
                    ranks, findings, source="hosts.yaml", master="10.0.0.1:29500",
                    collectives=tuple(r.to_dict() for r in rows),
                    extra={"bandwidth": sweep_summary(rows, settings)})
    check_golden("bandwidth_sweep.txt", render_bandwidth(report))


def test_render_pairwise_golden():
    hosts = ["h1", "h2", "h3", "h4"]
    pairs = measure(hosts, lambda p: 0.0050 if "h3" in p else 0.0240)
    settings = SweepSettings((Collective.ALL_REDUCE,), (4 << 20,), 3, 1, pairwise=True)
    findings = tuple(pair_findings(hosts, pairs, settings, 3))
    summary = {**pairs_summary(pairs, hosts, settings, 3), "ports": [29500, 29501]}
    report = Report("bandwidth", Verdict.FAIL, 1, 88.3, "gloo", 2, 2, _hosts(hosts), (),
                    findings, source="hosts.yaml", pairs=pairs_json(pairs, hosts, 0.5),
                    extra={"bandwidth": summary})
    text = render_bandwidth(report)
    check_golden("bandwidth_pairwise.txt", text)
    assert text.count("*") == 3 + 3 + 1  # h3's row and column, and the legend


# -- the sweep's known data (torch, no process group) --------------------------------------------


def simulate(op: Collective, inputs):
    """What the collective must produce on each rank, computed here from every rank's input."""
    import torch

    world = len(inputs)
    if op is Collective.ALL_REDUCE:
        total = sum(inputs)
        return [total.clone() for _ in range(world)]
    if op is Collective.BROADCAST:
        return [inputs[0].clone() for _ in range(world)]
    if op is Collective.ALL_GATHER:
        gathered = torch.cat(inputs)
        return [gathered.clone() for _ in range(world)]
    if op is Collective.REDUCE_SCATTER:
        total = sum(inputs)
        return list(total.chunk(world))
    return [torch.cat([inputs[src].chunk(world)[dst] for src in range(world)])
            for dst in range(world)]


@pytest.mark.parametrize("op", ALL_COLLECTIVES)
@pytest.mark.parametrize("world", [1, 2, 3, 5])
def test_sweep_known_data_matches_the_collective_and_catches_a_bad_element(op, world):
    torch = pytest.importorskip("torch")
    from ddpcheck.remote.sweep import OpBuffers

    count = 60 * world
    buffers = [OpBuffers(op, count, rank, world, torch.device("cpu")) for rank in range(world)]
    for b in buffers:
        b.fill_known()
    results = simulate(op, [b.input.clone() for b in buffers])
    for b, result in zip(buffers, results):
        b.output.copy_(result)
        assert b.count_wrong() == 0
    buffers[-1].output[7] += 1.0
    assert buffers[-1].count_wrong() == 1


# -- pair planning and outcome parsing -----------------------------------------------------------


def _spec(n: int) -> ClusterSpec:
    hosts = tuple(HostSpec(name=f"n{i}", address=f"10.0.0.{i}", python="/opt/py/bin/python3")
                  for i in range(1, n + 1))
    return ClusterSpec(hosts=hosts, rendezvous_port=29600)


def test_plan_round_gives_each_pair_its_master_and_port():
    spec = _spec(4)
    program = sweep_program((Collective.ALL_REDUCE,), 4 << 20, 4 << 20, 1, 3, 1)
    planned = plan_round(spec, [("n1", "n4"), ("n2", "n3")], Backend.GLOO,
                         LaunchOptions(deadline_s=50), program, run_id="r1")
    assert [p.port for p in planned] == [29600, 29601]
    first = planned[0]
    assert [l.host for l in first.launches] == ["n1", "n4"]
    for node_rank, launch in enumerate(first.launches):
        assert f"--node-rank {node_rank}" in launch.command
        assert "--nnodes 2" in launch.command and "--nproc-per-node 1" in launch.command
        assert "--master-addr 10.0.0.1 --master-port 29600" in launch.command
        assert "-m ddpcheck.remote.sweep" in launch.command and "--expected-world-size 2" in launch.command
        assert "-b 4194304 -e 4194304 -f 1" in launch.command
    assert "--master-addr 10.0.0.2 --master-port 29601" in planned[1].launches[1].command


def _rank_line(rank: int, host: str, rows, status: str = "ok", stage: str = "finish") -> str:
    import json

    record = {"rank": rank, "host": host, "status": status, "stage": stage, "world_size": 2,
              "collectives": [r.to_dict() for r in rows], "error": None if status == "ok"
              else "RuntimeError: Connection reset by peer", "failed_at": 5.0}
    return f"@@DDPCHECK rank {json.dumps(record)}\n"


def test_pair_result_reads_the_largest_row_and_failures():
    rows = [row(0.02, nbytes=1 << 20), row(0.024, nbytes=4 << 20)]
    ok = pair_result(("a", "b"), 1, [("a", CommandResult(0, _rank_line(0, "a", rows)), None),
                                     ("b", CommandResult(0, _rank_line(1, "b", rows)), None)],
                     3.0, Collective.ALL_REDUCE)
    assert ok.error is None and ok.row is not None and ok.row.nbytes == 4 << 20
    assert ok.busbw_gbs == pytest.approx(0.024, rel=1e-3)

    failed = pair_result(("a", "b"), 2, [
        ("a", CommandResult(1, _rank_line(0, "a", [], "error", "all_reduce")), None),
        ("b", CommandResult(None, "torchrun: waiting\n", timed_out=True), None)],
        9.0, Collective.ALL_REDUCE)
    assert failed.row is None
    assert failed.check == "all_reduce" and "Connection reset" in (failed.error or "")

    silent = pair_result(("a", "b"), 3, [
        ("a", CommandResult(None, "RuntimeError: timed out waiting for rendezvous\n",
                            timed_out=True), None),
        ("b", None, "connection closed")], 9.0, Collective.ALL_REDUCE)
    assert silent.row is None and silent.check == "timeout"
    assert "a: no rank reported back (no answer within the deadline)" in (silent.error or "")
    assert "b: connection closed" in (silent.error or "")


def test_every_pair_planned_once_over_all_rounds():
    spec = _spec(7)
    program = sweep_program((Collective.ALL_REDUCE,), 1024, 1024, 1, 1, 0)
    seen = []
    for pairs in circle_rounds([h.name for h in spec.hosts]):
        planned = plan_round(spec, pairs, Backend.GLOO, LaunchOptions(), program)
        hosts_in_round = [l.host for p in planned for l in p.launches]
        assert len(hosts_in_round) == len(set(hosts_in_round))
        seen += [p.hosts for p in planned]
    assert sorted(seen) == sorted(itertools.combinations([h.name for h in spec.hosts], 2))


def test_sweep_imports_only_stdlib_torch_and_ddpcheck():
    import subprocess
    import sys

    code = ("import sys, torch\n"
            "before = {m.split('.')[0] for m in sys.modules}\n"
            "import ddpcheck.remote.sweep\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} - before - "
            "set(sys.stdlib_module_names) - {'ddpcheck'}))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
