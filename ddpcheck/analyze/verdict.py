"""Analyze: host and rank records -> findings, root cause first, and the verdict.

Pure. Like torch elastic's error handling, the *first observed* failure is the root cause and
later failures are marked as possibly collateral: when one rank dies, the others fail in the
next collective, and naming them all as culprits would bury the one that matters.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace
from typing import Iterable, Mapping, Optional, Sequence

from ..core import drift
from ..core.drift import RankPrint
from .compute import compute_findings
from .health import is_loopback
from .numerics import numerics_findings
from ..model.checks import Check
from ..wire import STOPPED_BY_LAUNCHER
from ..model.records import (REACHABILITY_CHECKS, Finding, HostRecord, RankRecord, RankStatus,
                      Severity, Stage, Verdict)

# Which check a rank failure belongs to, by the probe stage it was in.
STAGE_CHECKS: Mapping[str, Check] = {
    "start": Check.TORCH_IMPORT, "device": Check.GPU_COUNT, "init": Check.RENDEZVOUS,
    "all_reduce": Check.ALL_REDUCE, "barrier": Check.BARRIER, "latency": Check.ALL_REDUCE,
    "compute": Check.STRAGGLER, "numerics": Check.NUMERICS,
    "finish": Check.BARRIER, "setup": Check.SEED, "fingerprint": Check.ENV_DRIFT,
    "ddp": Check.PARAMS,
    # bandwidth sweep (ddpcheck.remote.sweep): the stage is the op being measured
    "all_gather": Check.BANDWIDTH, "reduce_scatter": Check.BANDWIDTH,
    "broadcast": Check.BANDWIDTH, "all_to_all": Check.BANDWIDTH,
}


def host_findings(hosts: Sequence[HostRecord],
                  pinned: frozenset[str] = frozenset()) -> list[Finding]:
    """A host that could not be reached or checked: each one is its own root cause, except a
    host the run's --timeout ran out before (its failure's ``not_reached``): that says nothing
    about it."""
    stopped = {h.name for h in hosts if h.launch_stopped == STOPPED_BY_LAUNCHER}
    failed_alone = any(h.failure is not None and h.name not in stopped for h in hosts)
    findings = []
    for host in hosts:
        if host.failure is None:
            continue
        # a host the launcher stopped because another failed is that failure's consequence
        collateral = host.name in stopped and failed_alone
        findings.append(failure_finding(host, f"{host.name}: {host.stage}: {host.error}",
                                        root_cause=not host.not_reached and not collateral))
    findings += hostname_findings([h for h in hosts if h.hostname], pinned)
    return findings


def failure_finding(host: HostRecord, message: str, root_cause: bool = False) -> Finding:
    """A host's typed failure as an error finding (``message``: how the caller words it), its
    flags carried over."""
    failure = host.failure
    return Finding(Severity.ERROR, host.trouble_check, message, host=host.name,
                   root_cause=root_cause,
                   not_reached=failure is not None and failure.not_reached,
                   interrupted=failure is not None and failure.interrupted,
                   no_result=failure is not None and failure.no_result)


def hostname_findings(hosts: Sequence[HostRecord],
                      pinned: frozenset[str] = frozenset()) -> list[Finding]:
    """Hostnames that resolve to loopback (gloo/NCCL then bind to lo) or repeat across hosts.

    Loopback is an error on a host whose ranks are not told their interface (a
    *_SOCKET_IFNAME in its env): there gloo and NCCL pick the address of the hostname, lo, and
    peers cannot connect. With the interface pinned it is a warning."""
    findings = []
    if len(hosts) > 1:
        for host in hosts:
            addresses = list(host.facts.addresses or ())
            # the first address is the one a bind by hostname picks (127.0.1.1 on Debian)
            if addresses and is_loopback(addresses[0]):
                harmless = host.name in pinned
                findings.append(Finding(
                    Severity.WARNING if harmless else Severity.ERROR, Check.HOSTNAME,
                    f"{host.name}: its hostname {host.hostname!r} resolves first to loopback "
                    f"({', '.join(addresses)}); " + (
                        "its *_SOCKET_IFNAME keeps ranks off lo, but other tools may bind lo"
                        if harmless else "gloo and NCCL will bind lo and peers cannot connect: "
                        "fix /etc/hosts or set GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME"),
                    host=host.name))
    by_hostname: dict[str, list[str]] = defaultdict(list)
    for host in hosts:
        by_hostname[str(host.hostname)].append(host.name)
    for hostname, names in by_hostname.items():
        if len(names) > 1:
            findings.append(Finding(Severity.WARNING, Check.HOSTNAME,
                                    f"hosts {', '.join(names)} all report hostname {hostname!r}"))
    return findings


def rank_findings(ranks: Sequence[RankRecord], slots_by_host: Mapping[str, int],
                  gpus_by_host: Mapping[str, int], backend: str,
                  failed_hosts: frozenset[str] = frozenset()) -> list[Finding]:
    expected_world = sum(slots_by_host.values())
    findings: list[Finding] = []
    findings += failure_findings(ranks)
    findings += missing_rank_findings(ranks, slots_by_host, failed_hosts)
    for rank in ranks:
        if rank.world_size is not None and rank.world_size != expected_world:
            findings.append(Finding(
                Severity.ERROR, Check.WORLD_SIZE,
                f"rank {rank.rank} on {rank.host} sees world_size {rank.world_size}, expected "
                f"{expected_world} (the sum of slots over all hosts)",
                host=rank.host, rank=rank.rank))
    if backend == "nccl":
        for host, slots in slots_by_host.items():
            gpus = gpus_by_host.get(host, 0)
            if slots > gpus:
                findings.append(Finding(Severity.ERROR, Check.GPU_COUNT,
                                        f"{host} runs {slots} ranks but has {gpus} GPU(s)",
                                        host=host))
    findings += duplicate_device_findings(ranks)
    for rank in ranks:
        if rank.all_reduce_wrong:
            findings.append(Finding(
                Severity.ERROR, Check.ALL_REDUCE,
                f"rank {rank.rank} on {rank.host}: all_reduce gave {rank.all_reduce_wrong} "
                f"wrong element(s) (expected the sum of rank+1 over the world)",
                host=rank.host, rank=rank.rank))
    findings += latency_findings(ranks)
    findings += compute_findings(ranks)
    findings += numerics_findings(ranks)
    return findings


def drift_report(ranks: Sequence[RankRecord],
                 seeded: bool) -> tuple[list[Finding], list[dict]]:
    """Versions, settings, env, RNG (when seeded) and the tiny DDP run compared across ranks:
    the findings and the host-by-value rows of what differs."""
    prints = [RankPrint(r.rank, r.host, r.fingerprint) for r in ranks
              if r.rank is not None and r.fingerprint]
    if len(prints) < 2:
        return [], []
    host_of = {p.rank: p.host for p in prints}
    diffs = drift.all_differences(prints, seeded)
    return [drift.finding(d, host_of) for d in diffs], drift.value_rows(diffs, host_of)


def failure_findings(ranks: Sequence[RankRecord]) -> list[Finding]:
    """Ranks that raised, timed out or vanished; the root cause first, the rest collateral.

    A rank that left no record of its own (stopped, killed, still running at the deadline) is
    the root cause before any rank that reported a failure: those were waiting for it in a
    collective. Among the others the earliest failure is. A rank torchrun stopped because
    another rank of its host failed is never the root cause."""
    failed = [r for r in ranks
              if r.status in (RankStatus.ERROR, RankStatus.TIMEOUT, RankStatus.MISSING)]
    candidates = [r for r in failed if r.status is not RankStatus.MISSING]
    if not failed:
        return []
    first = min(candidates, key=lambda r: (r.reported, r.failed_at is None, r.failed_at or 0.0,
                                           r.rank if r.rank is not None else 1 << 30),
                default=None)
    findings = []
    for rank in sorted(failed, key=lambda r: r is not first):
        note = "" if rank is first else " (possibly collateral: failed after the root cause)"
        reason = summary_line(rank.error) or rank.status.value
        if rank.reported:
            check = Check.TIMEOUT if rank.status is RankStatus.TIMEOUT else STAGE_CHECKS.get(
                rank.stage or "", Check.PROBE)
            message = f"rank {rank.rank} on {rank.host} failed in {rank.stage or 'start'}: "
        else:
            check = Check.TIMEOUT if rank.status is RankStatus.TIMEOUT else Check.CRASH
            message = f"rank {rank.rank} on {rank.host} (local rank {rank.local_rank}): "
        findings.append(Finding(Severity.ERROR, check, message + reason + note,
                                host=rank.host, rank=rank.rank, root_cause=rank is first))
    return findings


def missing_rank_findings(ranks: Sequence[RankRecord], slots_by_host: Mapping[str, int],
                          failed_hosts: frozenset[str] = frozenset()) -> list[Finding]:
    """Hosts that returned fewer rank records than planned, naming the ranks nothing is known
    of (hosts that failed as a whole already have their own finding). ``slots_by_host`` is in
    node-rank order, which gives each host's global ranks."""
    returned: dict[str, set[Optional[int]]] = defaultdict(set)
    for rank in ranks:
        returned[rank.host].add(rank.rank)
    findings = []
    base = 0
    for host, slots in slots_by_host.items():
        planned = range(base, base + slots)
        base += slots
        if len(returned[host]) < slots and host not in failed_hosts:
            missing = [r for r in planned if r not in returned[host]]
            names = ", ".join(str(r) for r in missing[:8]) + (" ..." if len(missing) > 8 else "")
            findings.append(Finding(
                Severity.ERROR, Check.WORLD_SIZE,
                f"{host}: {len(returned[host])} of {slots} planned rank(s) reported back; "
                f"nothing came from rank(s) {names}",
                host=host))
    return findings


def duplicate_device_findings(ranks: Sequence[RankRecord]) -> list[Finding]:
    by_gpu: dict[str, list[RankRecord]] = defaultdict(list)
    for rank in ranks:
        if rank.gpu_uuid:
            by_gpu[rank.gpu_uuid].append(rank)
    findings = []
    for uuid, sharing in by_gpu.items():
        if len(sharing) > 1:
            names = ", ".join(f"rank {r.rank} ({r.host} {r.device})" for r in sharing)
            bus = sharing[0].gpu_bus_id or "?"
            findings.append(Finding(Severity.ERROR, Check.DUPLICATE_DEVICE,
                                    f"{names} share one GPU: {uuid} at bus id {bus}",
                                    host=sharing[0].host, rank=sharing[0].rank))
    return findings


def latency_findings(ranks: Sequence[RankRecord]) -> list[Finding]:
    timed = [r for r in ranks if r.barrier_us is not None]
    if not timed:
        return []
    slowest = max(timed, key=lambda r: r.barrier_us or 0.0)
    values = sorted(r.barrier_us or 0.0 for r in timed)
    median = values[len(values) // 2]
    return [Finding(Severity.INFO, Check.BARRIER,
                    f"barrier median {median:.0f} us over {len(timed)} ranks; slowest rank "
                    f"{slowest.rank} on {slowest.host}: {slowest.barrier_us:.0f} us")]


def order_findings(findings: Iterable[Finding]) -> list[Finding]:
    """Root causes first, then errors, warnings, info; stable otherwise."""
    rank_of = {Severity.ERROR: 1, Severity.WARNING: 2, Severity.INFO: 3}
    return sorted(findings, key=lambda f: 0 if f.root_cause else rank_of[f.severity])


def mark_single_root_cause(findings: list[Finding]) -> list[Finding]:
    """With no explicit root cause, the first error is it (e.g. a lone world_size finding);
    a host the --timeout ran out before (its ``not_reached`` flag) is never it."""
    if any(f.root_cause for f in findings):
        return findings
    for index, finding in enumerate(findings):
        if finding.severity is Severity.ERROR and not finding.not_reached:
            return findings[:index] + [replace(finding, root_cause=True)] + findings[index + 1:]
    return findings


# A deadline before a host's ranks ran means it could not be checked (exit 3), as ssh does;
# so does one in ddpcheck hang's scan, which is that command's stage 0.
PRE_LAUNCH_STAGES = frozenset({Stage.CONNECT, Stage.STAGE0, Stage.SCAN})


def not_checked(finding: Finding, hosts: Sequence[HostRecord],
                stages: Optional[Mapping[str, Stage]] = None) -> bool:
    """The finding says a host could not be reached or checked, not that a check failed.
    ``stages``: host -> stage, built once by the caller (else looked up here)."""
    if finding.check in REACHABILITY_CHECKS:
        return True
    if stages is None:
        stages = {h.name: h.stage for h in hosts}
    stage = stages.get(finding.host) if finding.host is not None else None
    return finding.check == Check.TIMEOUT and finding.rank is None and stage in PRE_LAUNCH_STAGES


def verdict(findings: Sequence[Finding], hosts: Sequence[HostRecord],
            interrupted: bool = False) -> Verdict:
    """A failed check on a reachable host wins over an unreachable host (exit 1, not 3)."""
    if interrupted:
        return Verdict.INTERRUPTED
    errors = [f for f in findings if f.severity is Severity.ERROR]
    stages = {h.name: h.stage for h in hosts}
    if any(not not_checked(f, hosts, stages) for f in errors):
        return Verdict.FAIL
    if errors or any(not h.reachable for h in hosts):
        return Verdict.UNREACHABLE
    return Verdict.OK


def summary_line(text: Optional[str]) -> str:
    if not text:
        return ""
    first = text.strip().splitlines()[0]
    return first[:300]
