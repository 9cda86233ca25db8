"""Report grouping: what is alike at 1,000 hosts said once, what differs said on its own (pure).

Runs on the launcher, inside the report stage. Hosts are grouped by their *outcome* (reached
or not, the status of each rank, the versions, the checks that named them, a slow barrier);
a group reads as one line with its hosts as a compressed host list
(``node[001-096,098-512]  8 ranks ok  barrier 41-58 us``). The rule NCCL's RAS uses for its
outliers decides what is listed: the members of small groups are shown one by one (their rows
per rank), a large group is one line with a count. Findings about the same cause on many hosts
(the same check and message once the host, its address and the rank numbers are taken out)
merge into one finding with a host list. Everything here is linear in hosts + ranks + findings.
"""

from __future__ import annotations

import re
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Optional, Sequence

from ..config.hostlist import hostlist_text
from ..model.records import Finding, HostRecord, RankRecord, RankStatus, Severity

# A group of at most this many hosts that differs from the rest has its members listed.
SMALL_GROUP = 4
# Up to this many ranks the table stays one row per rank (a small cluster reads best that way).
FULL_TABLE_MAX_RANKS = 32
# A host is slow when its median barrier (or small all_reduce) is this many times the
# cluster's median and beyond the cluster's far-out fence (Q3 + 3 IQR, Tukey).
SLOW_FACTOR = 2.0
SLOW_MIN_HOSTS = 4  # with fewer hosts there is no "cluster" to be slower than

_SEVERITY_ORDER = {Severity.ERROR: 1, Severity.WARNING: 2, Severity.INFO: 3}


@dataclass(frozen=True)
class HostGroup:
    """Hosts with one outcome. ``listed``: show each member (with its rows per rank)."""

    hosts: tuple[str, ...]
    outcome: str
    ranks: int
    barrier_us: Optional[tuple[float, float]]  # (min, max) over the group's ranks
    allreduce_us: Optional[tuple[float, float]]
    listed: bool
    root_cause: bool
    severity: int  # 0 root cause, 1 error, 2 warning, 3 fine


@dataclass(frozen=True)
class MergedFinding:
    """One finding standing for ``count`` alike findings (the first of them is ``first``)."""

    first: Finding
    message: str
    hosts: tuple[str, ...] = ()
    ranks: tuple[int, ...] = ()
    count: int = 1


@dataclass(frozen=True)
class Grouping:
    groups: tuple[HostGroup, ...]
    notes: Mapping[str, str] = field(default_factory=dict)  # host -> why it stands out


def int_ranges(numbers: Iterable[int]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` -> ``"0-2,5,7-8"``."""
    values = sorted(set(numbers))
    parts = []
    start = previous = None
    for value in values:
        if previous is not None and value == previous + 1:
            previous = value
            continue
        if start is not None:
            parts.append(str(start) if start == previous else f"{start}-{previous}")
        start = previous = value
    if start is not None:
        parts.append(str(start) if start == previous else f"{start}-{previous}")
    return ",".join(parts)


def ranks_by_host(ranks: Sequence[RankRecord]) -> dict[str, list[RankRecord]]:
    """Each host's ranks in rank order, built once (linear)."""
    own: dict[str, list[RankRecord]] = defaultdict(list)
    for rank in ranks:
        own[rank.host].append(rank)
    for values in own.values():
        values.sort(key=lambda r: (r.rank is None, r.rank or 0))
    return own


def slow_hosts(own: Mapping[str, Sequence[RankRecord]]) -> dict[str, str]:
    """Hosts whose median barrier or small all_reduce time stands far out of the cluster's:
    host -> the words saying so."""
    notes: dict[str, str] = {}
    for attr, label in (("barrier_us", "barrier"), ("allreduce_small_us", "all_reduce")):
        medians = {}
        for host, ranks in own.items():
            values = [getattr(r, attr) for r in ranks if getattr(r, attr) is not None]
            if values:
                medians[host] = statistics.median(values)
        if len(medians) < SLOW_MIN_HOSTS:
            continue
        ordered = sorted(medians.values())
        middle = statistics.median(ordered)
        q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive")
        fence = max(SLOW_FACTOR * middle, q3 + 3 * (q3 - q1))
        for host, value in medians.items():
            if value > fence and value > 0:
                ratio = f", {value / middle:.1f}x" if middle > 0 else ""
                said = f"{label} median {value:.0f} us{ratio} the cluster's {middle:.0f} us"
                notes[host] = f"{notes[host]}; {said}" if host in notes else f"slow {said}"
    return notes


def group_hosts(hosts: Sequence[HostRecord], ranks: Sequence[RankRecord],
                findings: Sequence[Finding]) -> Grouping:
    """The hosts grouped by outcome, in reading order: root cause first, then errors,
    warnings, and the hosts that are fine (largest group first)."""
    own = ranks_by_host(ranks)
    slow = slow_hosts(own)
    flagged: dict[str, set[str]] = defaultdict(set)
    worst: dict[str, int] = {}
    for finding in findings:
        if finding.host is None or finding.severity is Severity.INFO:
            continue
        flagged[finding.host].add(finding.check)
        level = 0 if finding.root_cause else _SEVERITY_ORDER[finding.severity]
        worst[finding.host] = min(worst.get(finding.host, 9), level)
    common = Counter(_versions(h) for h in hosts if h.versions).most_common(1)
    usual_versions = common[0][0] if common else ()
    members: dict[tuple, list[HostRecord]] = {}
    for host in hosts:
        key = _outcome_key(host, own.get(host.name, ()), flagged.get(host.name, set()),
                           host.name in slow, usual_versions)
        members.setdefault(key, []).append(host)
    groups = []
    for key, group_hosts_ in members.items():
        names = tuple(h.name for h in group_hosts_)
        group_ranks = [r for name in names for r in own.get(name, ())]
        severity = min((worst.get(n, 3) for n in names), default=3)
        if severity == 3 and (not group_hosts_[0].reachable or key[1] != "ok"):
            severity = 1  # no finding named it, yet it failed: still not fine
        if severity == 3 and (key[-1] or key[-2]):
            severity = 2  # slow or other versions: worth a look
        groups.append(HostGroup(
            hosts=names, outcome=_outcome_text(key), ranks=len(group_ranks),
            barrier_us=_span(r.barrier_us for r in group_ranks),
            allreduce_us=_span(r.allreduce_small_us for r in group_ranks),
            listed=False, root_cause=severity == 0, severity=severity))
    biggest = max((len(g.hosts) for g in groups), default=0)
    groups = [_with_listing(g, biggest, len(groups)) for g in groups]
    groups.sort(key=lambda g: (g.severity, -len(g.hosts)))
    return Grouping(tuple(groups), slow)


def _with_listing(group: HostGroup, biggest: int, count: int) -> HostGroup:
    """Members of a small group that differs are shown; the largest fine group never is."""
    fine_majority = group.severity == 3 and len(group.hosts) == biggest
    listed = count > 1 and not fine_majority and len(group.hosts) <= SMALL_GROUP
    return HostGroup(group.hosts, group.outcome, group.ranks, group.barrier_us,
                     group.allreduce_us, listed, group.root_cause, group.severity)


def _versions(host: HostRecord) -> tuple:
    return tuple(sorted((k, str(v)) for k, v in host.versions.items()))


def _outcome_key(host: HostRecord, ranks: Sequence[RankRecord], checks: set[str], slow: bool,
                 usual_versions: tuple) -> tuple:
    versions = _versions(host)
    usual = dict(usual_versions)
    other_versions = tuple((k, v) for k, v in versions if usual.get(k) != v) \
        if versions and versions != usual_versions else ()
    if not host.reachable:
        state = ("unreachable", host.trouble_check)
    elif host.error and not ranks:
        state = ("failed", host.stage, host.trouble_check)
    elif not ranks and host.stage in ("connect", "stage0"):
        state = ("not launched",)  # reached and checked; torchrun was not started
    elif not ranks:
        state = ("no ranks",)
    else:
        counts = Counter((r.status.value, "" if r.status is RankStatus.OK else r.stage)
                         for r in ranks)
        wrong = sum(1 for r in ranks if r.all_reduce_wrong)
        devices = tuple(sorted({r.device.split(":")[0] for r in ranks}))
        state = ("ranks", tuple(sorted(counts.items())), wrong, devices)
    kind = "ok" if state[0] == "not launched" or (
        state[0] == "ranks" and all(s == "ok" for (s, _), _ in state[1]) and not state[2]) \
        else state[0]
    return (state, kind, tuple(sorted(checks)), other_versions, slow)


def _outcome_text(key: tuple) -> str:
    state, _, checks, other_versions, slow = key
    if state[0] == "unreachable":
        words = [f"unreachable ({state[1]})"]
    elif state[0] == "failed":
        words = [f"failed in {state[1]} ({state[2]})"]
    elif state[0] == "not launched":
        words = ["reached; torchrun not started"]
    elif state[0] == "no ranks":
        words = ["no rank reported"]
    else:
        _, counts, wrong, devices = state
        parts = []
        for (status, stage), n in counts:
            what = status if not stage else f"{status} ({stage})"
            parts.append(f"{n} rank{'s' if n != 1 else ''} {what}")
        words = [", ".join(parts) + (f" on {'/'.join(devices)}" if devices != ("cpu",) else "")]
        if wrong:
            words.append(f"{wrong} with wrong all_reduce")
    if other_versions:
        words.append(" ".join(f"{k} {v}" for k, v in other_versions))
    if slow:
        words.append("slow")
    if checks:
        words.append("findings: " + ",".join(checks))
    return "; ".join(words)


def _span(values: Iterable[Optional[float]]) -> Optional[tuple[float, float]]:
    present = [v for v in values if v is not None]
    return (min(present), max(present)) if present else None


# --- findings -----------------------------------------------------------------------------

_RANK_NUMBER = re.compile(r"\b(local rank|rank) (\d+)\b")
_HOST_MARK, _ADDRESS_MARK, _RANK_MARK = "\x00H", "\x00A", "\x00R"
_HOSTNAME_MARK, _RANK_LIST_MARK = "\x00N", "\x00L"
_RANK_LIST = re.compile(r"\brank\(s\) (\d+(?:, \d+)*)")  # "nothing came from rank(s) 4, 5"


def merge_findings(findings: Sequence[Finding],
                   hosts: Sequence[HostRecord]) -> list[MergedFinding]:
    """Alike findings on many hosts as one, in the order of their first member (root cause
    first stays first). Findings about no host, or alone, are kept as they are."""
    address = {h.name: h.address for h in hosts}
    hostname = {h.name: h.hostname for h in hosts if h.hostname}
    merged: dict[tuple, list[tuple[Finding, list[int]]]] = {}
    order: list[tuple] = []
    for index, finding in enumerate(findings):
        if finding.host is None:
            key: tuple = ("single", index)
            numbers: list[int] = []
        else:
            template, numbers = _template(finding.message, finding.host,
                                          address.get(finding.host), hostname.get(finding.host))
            key = (finding.severity, finding.check, finding.root_cause, template)
        if key not in merged:
            merged[key] = []
            order.append(key)
        merged[key].append((finding, numbers))
    return [_merged(key, merged[key]) for key in order]


def _template(message: str, host: str, address: Optional[str],
              hostname: Optional[str] = None) -> tuple[str, list[int]]:
    """The message with its host, address, hostname and rank numbers taken out (and those
    numbers)."""
    text = re.sub(rf"(?<![\w.-]){re.escape(host)}(?![\w-])", _HOST_MARK, message)
    if address and address != host:
        text = re.sub(rf"(?<![\w.:-]){re.escape(address)}(?![\w:-])", _ADDRESS_MARK, text)
    if hostname and hostname not in (host, address):
        text = re.sub(rf"(?<![\w.-]){re.escape(hostname)}(?![\w-])", _HOSTNAME_MARK, text)
    numbers: list[int] = []

    def take(match: re.Match) -> str:
        if match.group(1) == "rank":
            numbers.append(int(match.group(2)))
        return f"{match.group(1)} {_RANK_MARK}"

    def take_list(match: re.Match) -> str:
        numbers.extend(int(n) for n in match.group(1).split(", "))
        return f"rank(s) {_RANK_LIST_MARK}"

    return _RANK_LIST.sub(take_list, _RANK_NUMBER.sub(take, text)), numbers


def _merged(key: tuple, members: list[tuple[Finding, list[int]]]) -> MergedFinding:
    first = members[0][0]
    if len(members) == 1:
        return MergedFinding(first, first.message,
                             (first.host,) if first.host else (),
                             (first.rank,) if first.rank is not None else ())
    template = key[3]
    hosts = tuple(dict.fromkeys(f.host for f, _ in members if f.host))
    ranks = tuple(sorted({n for _, numbers in members for n in numbers}))
    host_text = hostlist_text(hosts)
    rank_text = int_ranges(ranks)
    if len(rank_text) > 40:
        rank_text = f"({len(ranks)} ranks)"
    text = template.replace(_HOST_MARK, host_text, 1).replace(_HOST_MARK, "<host>")
    text = text.replace(_ADDRESS_MARK, "<address>").replace(_HOSTNAME_MARK, "<hostname>")
    text = re.sub(rf"\brank {_RANK_MARK}", f"ranks {rank_text}" if ranks else "ranks", text, 1)
    text = text.replace(_RANK_MARK, "<n>")
    text = text.replace(_RANK_LIST_MARK, rank_text, 1).replace(_RANK_LIST_MARK, "<n>")
    count = f"{len(members)} findings" if not ranks else f"{len(ranks)} ranks"
    text += f" [{count} on {len(hosts)} hosts]"
    return MergedFinding(first, text, hosts, ranks, len(members))


# --- hang ------------------------------------------------------------------------------------

# Roles of ranks that are alike by nature (the crowd around the named ranks).
CROWD_ROLES = frozenset({"waiting", "progressing"})
HANG_HEADERS = ["hosts", "ranks", "#", "state", "cpu%", "step", "seq", "role",
                "where (innermost < job code)"]


def hang_rows(ranks: Sequence[Mapping]) -> list[list[str]]:
    """``ddpcheck hang``'s rows at scale: the named ranks (blocked, behind, stopped, gone, ...)
    a row each, first; the crowd (waiting, progressing) a row per (role, state, step, seq,
    where) with its hosts and ranks compressed: ``node[0001-0128]  0-1022  1023  waiting ...``."""
    named, crowd = [], {}
    for rank in ranks:
        if rank.get("role") in CROWD_ROLES:
            key = (rank.get("role"), rank.get("state"), rank.get("step"), rank.get("seq"),
                   rank.get("where"))
            crowd.setdefault(key, []).append(rank)
        else:
            named.append(rank)
    rows = [[str(r.get("host")), _dash(r.get("rank")), "1", str(r.get("state")),
             _dash(r.get("cpu_pct")), _dash(r.get("step")), _dash(r.get("seq")),
             str(r.get("role")), r.get("where") or "-"] for r in named]
    for (role, state, step, seq, where), members in sorted(
            crowd.items(), key=lambda item: -len(item[1])):
        hosts = list(dict.fromkeys(str(r.get("host")) for r in members))
        numbers = [r["rank"] for r in members if isinstance(r.get("rank"), int)]
        text = int_ranges(numbers)
        cpu = _span(float(r["cpu_pct"]) for r in members
                    if isinstance(r.get("cpu_pct"), (int, float)))
        rows.append([hostlist_text(hosts, 48), text if len(text) <= 24 else
                     f"{len(numbers)} ranks", str(len(members)), str(state),
                     "-" if cpu is None else (f"{cpu[0]:g}" if cpu[0] == cpu[1]
                                              else f"{cpu[0]:g}-{cpu[1]:g}"),
                     _dash(step), _dash(seq), str(role), where or "-"])
    return rows


def _dash(value: object) -> str:
    return "-" if value is None else str(value)
