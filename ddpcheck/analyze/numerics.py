"""Analyze the preflight numerics check (pure): the devices that computed wrong.

Each rank's record carries ``numerics`` (``remote.numerics``): where its device is, its group
(device model, driver and library versions), each dtype's repetition digests, NaN/Inf and
float64-reference counts, and the wrong elements of an all_reduce of known integers.
``core.numerics_vote.odd_ones`` applies the rule the in-job canary applies too; this module
turns its answer into findings that say what to do. ``canary_findings`` does the same for what
the Monitor's canary named, as ``ddpcheck hang`` reads it from the heartbeats.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Iterable, Mapping, Optional, Sequence

from ..model.checks import Check
from ..model.records import Finding, RankRecord, Severity
from ..core.numerics_vote import WrongProducts, odd_ones, rank_numerics

GPU_ADVICE = ("drain the node; run DCGM diag level 3 (`dcgmi diag -r 3`) or the vendor's field "
              "diagnostics; RMA if it repeats")
CPU_ADVICE = "drain the node; run the vendor's CPU and memory field diagnostics; RMA if it repeats"


def numerics_findings(ranks: Sequence[RankRecord]) -> list[Finding]:
    """Wrong products (one finding per rank, every dtype in it) and wrong all_reduce results."""
    checked = [r for r in ranks if r.numerics]
    return product_findings(checked) + all_reduce_findings(checked)


def product_findings(ranks: Sequence[RankRecord]) -> list[Finding]:
    device_of = {(r.rank, r.host): r.device for r in ranks}
    by_rank: dict[tuple, list[WrongProducts]] = defaultdict(list)
    for wrong in odd_ones(rank_numerics(r.rank, r.host, r.numerics) for r in ranks):
        by_rank[(wrong.rank, wrong.host)].append(wrong)
    findings = []
    for (rank, host), wrongs in by_rank.items():
        decisive = any(w.decisive for w in wrongs)
        parts = "; ".join(describe(w) for w in wrongs)
        gpu = str(device_of.get((rank, host), "cpu")).startswith("cuda")
        if decisive:
            message = (f"{wrongs[0].where} computes wrong: {parts}; "
                       f"{GPU_ADVICE if gpu else CPU_ADVICE}")
        else:
            message = (f"{wrongs[0].where}: {parts}; run the check again, and with a third "
                       f"device of this model to outvote")
        findings.append(Finding(Severity.ERROR if decisive else Severity.WARNING,
                                Check.NUMERICS, message, host=host, rank=rank))
    return findings


def describe(wrong: WrongProducts) -> str:
    """"bf16 products wrong in 3 of 40 repetitions (differs from its 5 peers bit for bit)"."""
    reasons = ", ".join(str(w) for w in wrong.why).replace(
        "its peers", f"its {wrong.peers} peer{'s' if wrong.peers != 1 else ''}")
    return f"{wrong.dtype} products wrong in {wrong.wrong} of {wrong.reps} repetitions ({reasons})"


def all_reduce_findings(ranks: Sequence[RankRecord]) -> list[Finding]:
    """Ranks that received wrong elements from an all_reduce of known integers.

    When every rank did, the data went wrong before the result was shared: the wrong elements
    are off by one rank's power of two (``remote.numerics.whose_bit``), and the rank most of
    them point at is named (its device or memory, or its link out). When only some did, the
    corruption sits on their way in: in ring order (rank order, gloo's ring) each run of ranks
    that received wrong elements starts past the link between its first rank and the rank
    before it, which got the right result; that pair is named."""
    bad: dict[int, list[dict[str, Any]]] = {}
    hosts = {r.rank: r.host for r in ranks if r.rank is not None}
    for rank in ranks:
        entries = rank.numerics.get("all_reduce")
        wrong = [e for e in entries if isinstance(e, dict) and isinstance(e.get("wrong"), int)
                 and e["wrong"] > 0] if isinstance(entries, list) else []
        if wrong and rank.rank is not None:
            bad[rank.rank] = wrong
    if not bad:
        return []
    if len(bad) == len(hosts):
        gpus = {r.rank for r in ranks if str(r.device).startswith("cuda")}
        return contribution_findings(bad, hosts, gpus)
    return [link_finding(run, bad, hosts) for run in ring_runs(sorted(hosts), set(bad))]


def sizes_text(wrong: Sequence[Mapping[str, Any]]) -> str:
    return ", ".join(f"{e['wrong']} wrong element(s) in {e.get('dtype')} at {e.get('bytes')} "
                     f"bytes" for e in wrong)


def contribution_findings(bad: Mapping[int, list[dict[str, Any]]], hosts: Mapping[int, str],
                          gpus: set[int]) -> list[Finding]:
    """Every rank received wrong elements: the rank whose contribution most of them are off by,
    when a strict majority of the decoded ones agree; else every rank, as before."""
    votes: dict[str, int] = defaultdict(int)
    for entries in bad.values():
        for entry in entries:
            suspects = entry.get("suspects")
            for key, count in (suspects.items() if isinstance(suspects, dict) else ()):
                if isinstance(count, int):
                    votes[str(key)] += count
    decoded = sum(votes.values())
    top = max((k for k in votes if k != "?"), key=lambda k: votes[k], default=None)
    if top is not None and votes[top] * 2 > decoded and top.isdigit() and int(top) in hosts:
        culprit = int(top)
        sample = bad[min(bad)]
        return [Finding(
            Severity.ERROR, Check.NUMERICS,
            f"rank {culprit} on {hosts[culprit]}: its data went wrong in an all_reduce of known "
            f"integers: every rank received a wrong sum ({sizes_text(sample)} on rank "
            f"{min(bad)}), and {votes[top]} of the {decoded} wrong element(s) examined are off "
            f"by exactly rank {culprit}'s share; suspect its device or memory, or its link out "
            f"(NIC, cable, switch port): {GPU_ADVICE if culprit in gpus else CPU_ADVICE}",
            host=hosts[culprit], rank=culprit)]
    return [Finding(
        Severity.ERROR, Check.NUMERICS,
        f"rank {rank} on {hosts[rank]}: an all_reduce of known integers came back wrong "
        f"({sizes_text(wrong)}); every rank received them: the data went wrong before the "
        f"result was shared (a rank's reduction or a link on the way)", host=hosts[rank],
        rank=rank) for rank, wrong in sorted(bad.items())]


def ring_runs(order: Sequence[int], bad: set[int]) -> list[list[int]]:
    """The runs of consecutive ranks in ``bad`` around the ring ``order`` (not all of it)."""
    start = next(i for i, r in enumerate(order) if r not in bad)
    rotated = list(order[start:]) + list(order[:start])
    runs: list[list[int]] = []
    for previous, rank in zip(rotated[-1:] + rotated[:-1], rotated):
        if rank in bad:
            if previous in bad and runs:
                runs[-1].append(rank)
            else:
                runs.append([previous, rank])
    return runs


def link_finding(run: Sequence[int], bad: Mapping[int, list[dict[str, Any]]],
                 hosts: Mapping[int, str]) -> Finding:
    """``run``: the rank before the run (right result), then the run's ranks (wrong)."""
    before, first, *rest = run
    also = (f" (and after it rank(s) {', '.join(str(r) for r in rest)}, downstream)"
            if rest else "")
    return Finding(
        Severity.ERROR, Check.NUMERICS,
        f"rank {first} on {hosts[first]}: an all_reduce of known integers came back wrong "
        f"({sizes_text(bad[first])}){also}; {len(hosts) - len(bad)} other rank(s) received "
        f"the right result: the data went wrong between rank {before} on {hosts[before]} and "
        f"rank {first} on {hosts[first]} (neighbours in the ring: rank {before}'s link out, "
        f"rank {first}'s link in: NIC, cable, switch port; or rank {first}'s device); drain "
        f"the suspect node, test the link with ddpcheck bandwidth --pairwise; RMA if it repeats",
        host=hosts[first], rank=first)


def canary_findings(job: str, named: Iterable[Iterable[Mapping[str, Any]]],
                    hosts: Mapping[int, str]) -> list[Finding]:
    """The devices the Monitor's canary named, from the heartbeats (``named``: each rank's
    ``numerics`` entries; the judging rank's is the one that has them): one error per device and
    dtype, the newest record of it, the host by the inventory's name (``hosts``: rank -> host)."""
    newest: dict[tuple[Optional[int], str], Mapping[str, Any]] = {}
    for entries in named:
        for entry in entries:
            rank = entry.get("rank") if isinstance(entry.get("rank"), int) else None
            key = (rank, str(entry.get("dtype")))
            last = entry.get("last_step") if isinstance(entry.get("last_step"), int) else -1
            held = newest.get(key)
            if held is None or last > (held.get("last_step") or -1):
                newest[key] = entry
    findings = []
    for (rank, dtype), entry in sorted(newest.items(), key=lambda item: (item[0][0] or 0,
                                                                         item[0][1])):
        why = ", ".join(str(w) for w in entry.get("why") or ()).replace(
            "its peers", f"its {entry.get('peers')} peer{'s' if entry.get('peers') != 1 else ''}")
        first, last = entry.get("first_step"), entry.get("last_step")
        steps = f"step {first}" if first == last else f"steps {first} to {last}"
        findings.append(Finding(
            Severity.ERROR, Check.NUMERICS,
            f"job {job}: {entry.get('where')} computed the Monitor's numerics canary ({dtype}) "
            f"wrong in {entry.get('wrong_rounds')} of {entry.get('rounds')} round(s) compared "
            f"({steps}; {why}); {GPU_ADVICE if entry.get('gpu') else CPU_ADVICE}",
            host=hosts.get(rank) if rank is not None else entry.get("host"), rank=rank))
    return findings
