"""Unit tests for ddpcheck.analyze.verdict: root cause, missing ranks, devices, hostnames, verdict."""

from __future__ import annotations

from ddpcheck.collect.facts import read_facts
from ddpcheck.model.checks import Check
from ddpcheck.model.outcomes import Failure
from ddpcheck.analyze.verdict import (duplicate_device_findings, failure_findings, host_findings,
                                     mark_single_root_cause, missing_rank_findings, order_findings,
                                     rank_findings, verdict)
from ddpcheck.model.records import EXIT_CODES
from ddpcheck.model.records import (Finding, HostRecord, RankRecord, RankStatus, Severity,
                              Verdict)


def rank(r, host, **kw):
    kw.setdefault("world_size", 4)
    return RankRecord(rank=r, host=host, **kw)


def ok_ranks():
    return [rank(0, "h1", local_rank=0), rank(1, "h1", local_rank=1),
            rank(2, "h2", local_rank=0), rank(3, "h2", local_rank=1)]


SLOTS = {"h1": 2, "h2": 2}


def checks(findings):
    return [f.check for f in findings]


# -- failures and root cause ---------------------------------------------------------------

def test_no_failures():
    assert failure_findings(ok_ranks()) == []
    assert rank_findings(ok_ranks(), SLOTS, {}, "gloo") == []


def test_root_cause_is_earliest_failed_at():
    ranks = [
        rank(0, "h1", status=RankStatus.ERROR, stage="all_reduce", error="peer died\nmore",
             failed_at=105.0),
        rank(1, "h1"),
        rank(2, "h2", status=RankStatus.ERROR, stage="init", error="CUDA OOM", failed_at=100.0),
        rank(3, "h2", status=RankStatus.TIMEOUT, stage="barrier", failed_at=130.0),
    ]
    findings = failure_findings(ranks)
    assert len(findings) == 3
    root = [f for f in findings if f.root_cause]
    assert len(root) == 1 and root[0].rank == 2 and root[0].host == "h2"
    assert findings[0] is root[0]  # the root cause comes first
    assert root[0].check == "rendezvous"
    assert "collateral" not in root[0].message and "CUDA OOM" in root[0].message
    others = {f.rank: f for f in findings if not f.root_cause}
    assert set(others) == {0, 3}
    assert all("possibly collateral" in f.message for f in others.values())
    assert others[0].check == "all_reduce"
    assert "peer died" in others[0].message and "more" not in others[0].message
    assert others[3].check == "timeout"
    assert all(f.severity is Severity.ERROR for f in findings)


def test_root_cause_missing_failed_at_sorts_last_then_lowest_rank():
    ranks = [rank(5, "h2", status=RankStatus.ERROR, stage="start"),
             rank(1, "h1", status=RankStatus.ERROR, stage="weird-stage"),
             rank(3, "h2", status=RankStatus.ERROR, failed_at=999.0)]
    assert [f.rank for f in failure_findings(ranks) if f.root_cause] == [3]
    ranks = ranks[:2]
    findings = failure_findings(ranks)
    assert [f.rank for f in findings if f.root_cause] == [1]
    assert {f.rank: f.check for f in findings} == {1: "probe", 5: "torch_import"}


# -- missing ranks -------------------------------------------------------------------------

def test_missing_ranks_named_per_host():
    ranks = [rank(0, "h1"), rank(2, "h2")]
    findings = missing_rank_findings(ranks, {"h1": 2, "h2": 2, "h3": 1})
    assert [(f.host, f.check) for f in findings] == [("h1", "world_size"), ("h2", "world_size"),
                                                     ("h3", "world_size")]
    assert findings[0].message == ("h1: 1 of 2 planned rank(s) reported back; nothing came "
                                   "from rank(s) 1")
    assert findings[1].message.endswith("nothing came from rank(s) 3")
    assert findings[2].message == ("h3: 0 of 1 planned rank(s) reported back; nothing came "
                                   "from rank(s) 4")
    assert all(f.severity is Severity.ERROR and not f.root_cause for f in findings)


def test_failed_hosts_excluded_from_missing():
    findings = missing_rank_findings([rank(0, "h1")], {"h1": 2, "h2": 2},
                                     failed_hosts=frozenset({"h2"}))
    assert [f.host for f in findings] == ["h1"]
    assert missing_rank_findings([], {"h1": 1}, frozenset({"h1"})) == []


def test_complete_hosts_have_no_missing_findings():
    assert missing_rank_findings(ok_ranks(), SLOTS) == []


# -- rank_findings: world size, gpu count, devices, all_reduce ---------------------------

def test_world_size_mismatch():
    ranks = ok_ranks()
    ranks[3] = rank(3, "h2", world_size=2)
    findings = rank_findings(ranks, SLOTS, {}, "gloo")
    assert len(findings) == 1
    f = findings[0]
    assert (f.check, f.host, f.rank, f.severity) == ("world_size", "h2", 3, Severity.ERROR)
    assert "world_size 2" in f.message and "expected 4" in f.message


def test_world_size_none_is_not_a_mismatch():
    ranks = [rank(0, "h1", world_size=None)]
    assert rank_findings(ranks, {"h1": 1}, {}, "gloo") == []


def test_gpu_count_only_with_nccl():
    gpus = {"h1": 1, "h2": 2}
    assert "gpu_count" not in checks(rank_findings(ok_ranks(), SLOTS, gpus, "gloo"))
    findings = [f for f in rank_findings(ok_ranks(), SLOTS, gpus, "nccl")
                if f.check == "gpu_count"]
    assert [(f.host, f.message) for f in findings] == [("h1", "h1 runs 2 ranks but has 1 GPU(s)")]
    # a host absent from gpus_by_host counts as 0 GPUs
    findings = [f for f in rank_findings(ok_ranks(), SLOTS, {"h1": 2}, "nccl")
                if f.check == "gpu_count"]
    assert [f.host for f in findings] == ["h2"]


def test_duplicate_device_names_both_ranks_and_uuid():
    uuid = "GPU-1234-abcd"
    ranks = [rank(0, "h1", device="cuda:0", gpu_uuid=uuid, gpu_bus_id="0000:3b:00.0"),
             rank(1, "h1", device="cuda:1", gpu_uuid=uuid, gpu_bus_id="0000:3b:00.0"),
             rank(2, "h2", device="cuda:0", gpu_uuid="GPU-other"),
             rank(3, "h2", device="cpu")]
    findings = duplicate_device_findings(ranks)
    assert len(findings) == 1
    f = findings[0]
    assert f.check == "duplicate_device" and f.severity is Severity.ERROR
    assert "rank 0 (h1 cuda:0)" in f.message and "rank 1 (h1 cuda:1)" in f.message
    assert uuid in f.message and "0000:3b:00.0" in f.message
    assert (f.host, f.rank) == ("h1", 0)
    assert "duplicate_device" in checks(rank_findings(ranks, SLOTS, {"h1": 2, "h2": 2}, "nccl"))


def test_no_duplicate_without_uuid():
    assert duplicate_device_findings([rank(0, "h1"), rank(1, "h1")]) == []


def test_all_reduce_wrong():
    ranks = ok_ranks()
    ranks[1] = rank(1, "h1", all_reduce_wrong=7)
    ranks[2] = rank(2, "h2", all_reduce_wrong=0)
    findings = [f for f in rank_findings(ranks, SLOTS, {}, "gloo") if f.check == "all_reduce"]
    assert len(findings) == 1
    assert (findings[0].host, findings[0].rank) == ("h1", 1)
    assert "7 wrong element(s)" in findings[0].message


def test_latency_info():
    ranks = [rank(0, "h1", barrier_us=10.0), rank(1, "h1", barrier_us=30.0),
             rank(2, "h2", barrier_us=500.0), rank(3, "h2")]
    findings = rank_findings(ranks, SLOTS, {}, "gloo")
    assert len(findings) == 1 and findings[0].severity is Severity.INFO
    assert findings[0].check == "barrier"
    assert "median 30 us over 3 ranks" in findings[0].message
    assert "slowest rank 2 on h2: 500 us" in findings[0].message


# -- hosts ---------------------------------------------------------------------------------

def host(name, **kw):
    kw["facts"] = read_facts(kw.get("facts"))
    kw.setdefault("reachable", True)
    kw.setdefault("hostname", name)
    kw.setdefault("stage", "done")
    return HostRecord(name=name, address=name, **kw)


def test_host_findings_each_error_is_a_root_cause():
    hosts = [host("h1"),
             host("h2", reachable=False, hostname=None, stage="connect",
                  failure=Failure(Check.SSH, "Connection refused")),
             host("h3", stage="stage0",
                  failure=Failure(Check.TORCH_IMPORT, "torch not importable")),
             host("h4", reachable=False, hostname=None, failure=Failure(Check.SSH, "no route"))]
    findings = host_findings(hosts)
    assert [(f.host, f.check, f.root_cause) for f in findings] == [
        ("h2", "ssh", True), ("h3", "torch_import", True), ("h4", "ssh", True)]
    assert findings[0].message == "h2: connect: Connection refused"


def test_hostname_duplicates():
    hosts = [host("h1", hostname="box"), host("h2", hostname="box"), host("h3", hostname="c"),
             host("h4", reachable=False, hostname=None), host("h5", reachable=False,
                                                                hostname=None)]
    findings = host_findings(hosts)
    assert len(findings) == 1  # hosts without a hostname are not "duplicates of None"
    f = findings[0]
    assert (f.check, f.severity, f.host) == ("hostname", Severity.WARNING, None)
    assert "h1, h2" in f.message and "'box'" in f.message


def test_hostname_loopback_only():
    hosts = [host("h1", facts={"addresses": ["127.0.1.1"]}),
             host("h2", facts={"addresses": ["10.0.0.2", "127.0.1.1"]}),
             host("h3", facts={"addresses": ["::1", "127.0.0.1"]}),
             host("h4", facts={})]
    findings = host_findings(hosts)
    assert [(f.check, f.host) for f in findings] == [("hostname", "h1"), ("hostname", "h3")]
    # nothing tells the ranks their interface: they would bind lo, peers cannot connect
    assert all(f.severity is Severity.ERROR for f in findings)
    assert "127.0.1.1" in findings[0].message and "loopback" in findings[0].message
    assert "GLOO_SOCKET_IFNAME" in findings[0].message


def test_hostname_loopback_with_pinned_interface_is_a_warning():
    hosts = [host("h1", facts={"addresses": ["127.0.1.1"]}),
             host("h3", facts={"addresses": ["127.0.1.1", "10.0.0.3"]})]
    findings = host_findings(hosts, pinned=frozenset({"h1"}))
    assert [(f.host, f.severity) for f in findings] == [
        ("h1", Severity.WARNING), ("h3", Severity.ERROR)]


def test_loopback_not_reported_for_single_host():
    assert host_findings([host("h1", facts={"addresses": ["127.0.0.1"]})]) == []


# -- verdict -------------------------------------------------------------------------------

def test_verdict_ok():
    assert verdict([Finding(Severity.WARNING, "hostname", "w"),
                    Finding(Severity.INFO, "barrier", "i")], [host("h1")]) is Verdict.OK


def test_verdict_error_on_reachable_host_beats_unreachable():
    hosts = [host("h1"), host("h2", reachable=False, failure=Failure(Check.SSH, "refused"))]
    findings = host_findings(hosts) + [
        Finding(Severity.ERROR, "rendezvous", "rank 0 failed", host="h1", rank=0)]
    assert verdict(findings, hosts) is Verdict.FAIL


def test_verdict_ssh_only_is_unreachable():
    hosts = [host("h1"), host("h2", reachable=False, failure=Failure(Check.SSH, "refused"))]
    assert verdict(host_findings(hosts), hosts) is Verdict.UNREACHABLE
    # an unreachable host with no finding at all is still unreachable
    assert verdict([], [host("h1", reachable=False)]) is Verdict.UNREACHABLE


def test_verdict_interrupted_wins():
    hosts = [host("h1", reachable=False)]
    findings = [Finding(Severity.ERROR, "rendezvous", "x")]
    assert verdict(findings, hosts, interrupted=True) is Verdict.INTERRUPTED
    assert verdict([], [host("h1")], interrupted=True) is Verdict.INTERRUPTED


def test_exit_codes():
    assert dict(EXIT_CODES) == {Verdict.OK: 0, Verdict.FAIL: 1, Verdict.UNREACHABLE: 3,
                                Verdict.INTERRUPTED: 130}


# -- ordering ------------------------------------------------------------------------------

def test_order_findings_root_cause_first_stable():
    info = Finding(Severity.INFO, "barrier", "i")
    warn = Finding(Severity.WARNING, "hostname", "w")
    err1 = Finding(Severity.ERROR, "world_size", "e1")
    err2 = Finding(Severity.ERROR, "all_reduce", "e2")
    root = Finding(Severity.ERROR, "rendezvous", "r", root_cause=True)
    root2 = Finding(Severity.ERROR, "ssh", "r2", root_cause=True)
    ordered = order_findings([info, warn, err1, root, err2, root2])
    assert ordered == [root, root2, err1, err2, warn, info]


def test_mark_single_root_cause():
    warn = Finding(Severity.WARNING, "hostname", "w")
    err = Finding(Severity.ERROR, "world_size", "e")
    err2 = Finding(Severity.ERROR, "gpu_count", "g")
    marked = mark_single_root_cause([warn, err, err2])
    assert [f.root_cause for f in marked] == [False, True, False]
    assert marked[1].message == "e"
    already = [err, Finding(Severity.ERROR, "ssh", "s", root_cause=True)]
    assert mark_single_root_cause(already) == already
    assert mark_single_root_cause([warn]) == [warn]
    assert mark_single_root_cause([]) == []


def test_pipeline_failure_scenario():
    """As preflight does it: host findings + rank findings, ordered, one root cause per cause."""
    hosts = [host("h1"), host("h2", reachable=False, hostname=None,
                              failure=Failure(Check.SSH, "refused"))]
    ranks = [rank(0, "h1", status=RankStatus.ERROR, stage="init", error="rdzv timeout",
                  failed_at=50.0),
             rank(1, "h1", status=RankStatus.ERROR, stage="init", error="rdzv timeout",
                  failed_at=51.0)]
    failed = frozenset(h.name for h in hosts if h.error)
    findings = host_findings(hosts) + rank_findings(ranks, SLOTS, {}, "gloo", failed)
    findings = mark_single_root_cause(order_findings(findings))
    assert [(f.check, f.host, f.rank, f.root_cause) for f in findings] == [
        ("ssh", "h2", None, True), ("rendezvous", "h1", 0, True),
        ("rendezvous", "h1", 1, False)]
    assert verdict(findings, hosts) is Verdict.FAIL
