"""Hang analysis: what the host scans saw -> which rank holds the job up (pure).

Input: each host's ``hangscan`` record (workers sampled twice, heartbeats of gone ranks). Per
job (torchrun run id + master address) every rank gets a role, root cause first:

* ``dead``: no process (a heartbeat says where it ran and its last step), or a zombie;
* ``stopped``: state T at both samples and all the time between, with no progress (SIGSTOP, a
  debugger, job control); a rank stopped part of the time is a straggler, not a hang;
* ``blocked``: outside any collective, in the same frame at both samples, while others wait in one;
* ``mismatch``: in another collective than the others (a rank took a different code path);
* ``behind``: a lower collective sequence number or step than the others (heartbeat or Flight
  Recorder), with no stack to say more;
* ``waiting``: in a collective, waiting for the above ("waiting in all_reduce (seq N)"); also a
  rank in an earlier collective than the others that a stopped or dead rank has not finished;
* ``progressing``: its heartbeat or collective sequence moved during the window.

A job whose ranks all progress is not hung (exit 0). One where every rank waits in the same
collective and none is behind gets an error of its own: the collective itself is stuck. A device
the Monitor's numerics canary named (its heartbeat's ``numerics``) is a ``numerics`` error of
the job (``analyze.numerics.canary_findings``), hung or not: the job's ``hung`` is unchanged.
"""

from __future__ import annotations

import enum
import statistics
from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Mapping, Optional, Sequence

from . import ras
from .numerics import canary_findings
from ..config.hostlist import hosts_text
from ..model.checks import Check
from ..model.records import Finding, HostRecord, RankRecord, RankStatus, Severity
from ..core import heartbeat
from ..core.links import (LINK_RULES, Connection, connections_between, ranks_sending_to_peers,
                          slow_links)
from ..core.straggler import (Reason, WindowAccount, WindowStraggler, busy_stragglers,
                              history_from_rows, identify_stragglers, job_progressed,
                              window_stragglers)
from .verdict import failure_finding, mark_single_root_cause, order_findings

# Functions of torch.distributed (distributed_c10d.py) a rank waits in for its peers.
COLLECTIVES = frozenset({
    "all_reduce", "all_reduce_coalesced", "reduce", "broadcast", "all_gather",
    "all_gather_into_tensor", "_all_gather_base", "all_gather_coalesced", "all_gather_object",
    "reduce_scatter", "reduce_scatter_tensor", "_reduce_scatter_base", "all_to_all",
    "all_to_all_single", "barrier", "monitored_barrier", "gather", "gather_object", "scatter",
    "scatter_object_list", "broadcast_object_list", "send", "recv", "isend", "irecv",
    "batch_isend_irecv", "send_object_list", "recv_object_list", "new_group",
    "wait_tensor", "wait",
})
TORCH_DISTRIBUTED = "/torch/distributed/"
LIBRARY_MARKS = ("/site-packages/", "/dist-packages/", "/lib/python3")
IDLE_CPU_PCT = 20.0  # a rank waiting in gloo sleeps in recv; above this it is doing something


class Role(str, enum.Enum):
    DEAD = "dead"
    STOPPED = "stopped"
    BLOCKED = "blocked"
    MISMATCH = "mismatch"
    BEHIND = "behind"
    WAITING = "waiting"
    PROGRESSING = "progressing"
    UNKNOWN = "unknown"


CULPRITS = (Role.DEAD, Role.STOPPED, Role.BLOCKED, Role.MISMATCH, Role.BEHIND)


@dataclass(frozen=True)
class Frame:
    name: str
    file: str
    line: Optional[int]

    def text(self) -> str:
        return f"{self.name} ({self.file}:{self.line if self.line is not None else '?'})"

    def short(self) -> str:
        return f"{self.name} ({self.file.rsplit('/', 1)[-1]}:{self.line or '?'})"


@dataclass(frozen=True)
class StackSample:
    frames: tuple[Frame, ...]  # main thread, innermost first
    text: str  # every thread, like py-spy dump

    @property
    def collective(self) -> Optional[str]:
        return collective_of(self.frames)

    @property
    def innermost(self) -> Optional[Frame]:
        return self.frames[0] if self.frames else None


@dataclass(frozen=True)
class RankView:
    """One rank as the scans saw it (a live process, or a gone one known by its heartbeat)."""

    job: str
    rank: int
    world_size: int
    host: str
    hostname: Optional[str] = None
    pid: Optional[int] = None
    local_rank: Optional[int] = None
    group_rank: Optional[int] = None
    local_world_size: Optional[int] = None
    status: str = "unknown"  # psutil status at the 2nd sample; "gone" when no process
    cpu_pct: Optional[float] = None
    step: Optional[int] = None  # heartbeat, 2nd sample
    seq: Optional[int] = None  # collective sequence: heartbeat seq_now, else Flight Recorder
    progressed: bool = False  # heartbeat step or seq moved between the samples
    heartbeat_age_s: Optional[float] = None
    first: Optional[StackSample] = None
    last: Optional[StackSample] = None
    stack_error: Optional[str] = None
    flight_record: Optional[Mapping[str, Any]] = None
    started: Optional[float] = None
    cmdline: str = ""
    busy: Optional[float] = None  # fraction of the window its main thread was busy (schedstat)
    step_rate: Optional[float] = None  # steps/s over the window (Monitor heartbeat)
    history: tuple[Any, ...] = ()  # the Monitor's last steps: [step, time, busy_s, wait_s]
    history_first: tuple[Any, ...] = ()  # the same, at the first sample
    status_first: str = "unknown"  # psutil status at the 1st sample
    window: Optional[WindowAccount] = None  # how its main thread spent the window
    verdict: Optional[tuple[Mapping[str, Any], ...]] = None  # the Monitor's, 2nd heartbeat
    numerics: tuple[Mapping[str, Any], ...] = ()  # devices its canary named, 2nd heartbeat
    connections: tuple[Connection, ...] = ()  # its TCP connections over the window


@dataclass(frozen=True)
class RankVerdict:
    view: RankView
    role: Role
    reason: str  # for culprits: what is wrong; for others: what it does
    op: Optional[str] = None  # the collective it waits in


@dataclass(frozen=True)
class JobVerdict:
    job: str
    world_size: int
    ranks: tuple[RankVerdict, ...]  # by rank; missing ranks included as dead
    findings: tuple[Finding, ...]
    hung: bool
    culprits: tuple[int, ...] = ()


@dataclass(frozen=True)
class HostScanResult:
    """One host's scan as the launcher got it (None scan: the host could not be scanned)."""

    host: str
    scan: Optional[Mapping[str, Any]]
    error: Optional[str] = None


@dataclass(frozen=True)
class HangAnalysis:
    jobs: tuple[JobVerdict, ...]
    findings: tuple[Finding, ...]  # job findings, root cause first, then host-level ones
    stacks: Mapping[str, str] = field(default_factory=dict)
    ras: Mapping[str, Any] = field(default_factory=dict)  # NCCL RAS: host, output, view, error


# -- stacks ------------------------------------------------------------------------------------

def collective_of(frames: Sequence[Frame]) -> Optional[str]:
    """The torch.distributed collective the main thread is in, innermost first."""
    for frame in frames:
        if TORCH_DISTRIBUTED in frame.file and frame.name.rsplit(".", 1)[-1] in COLLECTIVES:
            return frame.name.rsplit(".", 1)[-1]
    return None


def same_place(a: Optional[Frame], b: Optional[Frame]) -> bool:
    """The same function (a loop may be at another line of it at each sample)."""
    return a is not None and b is not None and (a.name, a.file) == (b.name, b.file)


def user_frame(frames: Sequence[Frame]) -> Optional[Frame]:
    """The innermost frame of the job's own code (not a library, not the standard library)."""
    for frame in frames:
        if not any(mark in frame.file for mark in LIBRARY_MARKS) and not frame.file.startswith("<"):
            return frame
    return None


def describe_location(frames: Sequence[Frame]) -> str:
    if not frames:
        return "no Python frame"
    inner, own = frames[0], user_frame(frames)
    if own is None or own == inner:
        return f"in {inner.short()}"
    return f"in {inner.short()}, called from {own.short()}"


def stack_sample(raw: Any, header: str) -> Optional[StackSample]:
    """A StackSample from the scan's py-spy threads (None when there is none)."""
    if not isinstance(raw, dict) or not isinstance(raw.get("threads"), list):
        return None
    main: tuple[Frame, ...] = ()
    lines = [header]
    for thread in raw["threads"]:
        if not isinstance(thread, dict):
            continue
        frames = tuple(Frame(str(f.get("name")), str(f.get("file")), _int(f.get("line")))
                       for f in thread.get("frames") or [] if isinstance(f, dict))
        if thread.get("main") and not main:
            main = frames
        state = "active" if thread.get("active") else "idle"
        gil = ", holds the GIL" if thread.get("gil") else ""
        lines.append(f"Thread {thread.get('os_tid')} {thread.get('name') or ''} "
                     f"({state}{gil})".replace("  ", " "))
        lines += [f"    {frame.text()}" for frame in frames]
    return StackSample(main, "\n".join(lines))


def current_collective(view: RankView) -> Optional[str]:
    """The collective the rank waits in: its stack's, else its Flight Recorder's last one when
    that had not completed (NCCL ranks wait in CUDA, where the Python stack shows no collective)."""
    if view.last is not None and view.last.collective is not None:
        return view.last.collective
    record = view.flight_record or {}
    if record.get("last_op_pending") and record.get("last_op"):
        return str(record["last_op"])
    for group in record.get("groups") or []:  # a collective of another process group
        if isinstance(group, dict) and group.get("pending") and group.get("last_op"):
            return str(group["last_op"])
    return None


# -- Flight Recorder: every process group ---------------------------------------------------------

@dataclass(frozen=True)
class GroupStall:
    """A process group in which some ranks wait in a collective that others never entered."""

    pg_id: str
    desc: str
    members: tuple[int, ...]  # global ranks, as far as the dumps tell
    op: str
    seq: int
    waiting: tuple[int, ...]
    missing: tuple[int, ...]  # members whose dumps show they never entered it
    culprits: tuple[int, ...]  # missing ranks not waiting in any collective themselves
    last_seq: Mapping[int, Optional[int]]  # missing rank -> its last collective in the group

    def describe(self) -> str:
        name = f"process group {self.pg_id}" + (f" ({self.desc})" if self.desc not in (
            "", "undefined") else "")
        return f"{name}, ranks {compress_ranks(self.members)}"


def group_stalls(views: Sequence[RankView], world: int) -> list[GroupStall]:
    """From the Flight Recorder dumps of a job's ranks: for every process group, the newest
    collective some members wait in and the members that never entered it. A group's members
    are the ranks its dumps name (pg_config), else the ranks whose dumps hold it; the default
    group (pg 0) is the whole world, so a rank without a dump is missing there."""
    seen: dict[str, dict[int, Mapping[str, Any]]] = defaultdict(dict)
    configured: dict[str, set[int]] = defaultdict(set)
    for view in views:
        groups = (view.flight_record or {}).get("groups")
        for group in groups if isinstance(groups, list) else []:
            if isinstance(group, dict) and isinstance(group.get("pg_id"), str):
                seen[group["pg_id"]][view.rank] = group
                configured[group["pg_id"]] |= {r for r in group.get("ranks") or []
                                               if isinstance(r, int)}
    pending_somewhere = {rank for groups in seen.values() for rank, g in groups.items()
                         if g.get("pending")}
    stalls = []
    for pg_id in sorted(seen, key=lambda text: int(text) if text.isdigit() else 1 << 30):
        by_rank = seen[pg_id]
        waiting = {r: g for r, g in by_rank.items()
                   if g.get("pending") and _int(g.get("last_enqueued")) is not None}
        if not waiting:
            continue
        seq = max(int(g["last_enqueued"]) for g in waiting.values())
        members = set(by_rank) | configured[pg_id] | (set(range(world)) if pg_id == "0" else set())
        missing = sorted(r for r in members if r not in by_rank
                         or (_int(by_rank[r].get("last_enqueued")) or -1) < seq)
        if not missing:
            continue
        waiters = sorted(r for r, g in waiting.items() if g["last_enqueued"] == seq)
        op = next((str(waiting[r]["last_op"]) for r in waiters if waiting[r].get("last_op")),
                  "a collective")
        stalls.append(GroupStall(
            pg_id=pg_id, desc=str(next(iter(by_rank.values())).get("desc") or ""),
            members=tuple(sorted(members)), op=op, seq=seq, waiting=tuple(waiters),
            missing=tuple(missing),
            culprits=tuple(r for r in missing if r not in pending_somewhere),
            last_seq={r: _int(by_rank[r].get("last_enqueued")) if r in by_rank else None
                      for r in missing}))
    # the group that explains the hang first: its missing ranks all culprits, then by pg id
    stalls.sort(key=lambda st: (not st.culprits, len(st.missing) - len(st.culprits)))
    return stalls


def stall_findings(job: str, stalls: Sequence[GroupStall], views: Sequence[RankView],
                   named: bool) -> tuple[list[Finding], tuple[int, ...]]:
    """Findings naming each stalled group and the ranks missing from its collective; the
    first group's culprits are an error (the root cause) unless the stacks ``named`` one."""
    hosts = {v.rank: v.host for v in views}
    findings, culprits = [], ()
    for index, stall in enumerate(stalls):
        absent = []
        for rank in stall.missing:
            last = stall.last_seq.get(rank)
            where = f" on {hosts[rank]}" if rank in hosts else " (no dump)"
            absent.append(f"{rank}{where}" + (f", its last seq {last}" if last is not None
                                               else ""))
        collateral = [r for r in stall.missing if r not in stall.culprits]
        text = (f"job {job}: Flight Recorder: in {stall.describe()}, rank(s) "
                f"{compress_ranks(stall.waiting)} wait in {stall.op} (collective seq "
                f"{stall.seq}) that rank(s) {'; '.join(absent)} never entered"
                + (f" (rank(s) {compress_ranks(collateral)} wait in another group)"
                   if collateral else ""))
        error = index == 0 and bool(stall.culprits) and not named
        rank = stall.culprits[0] if stall.culprits else None
        findings.append(Finding(Severity.ERROR if error else Severity.INFO, Check.HANG, text,
                                host=hosts.get(rank) if rank is not None else None,
                                rank=rank, root_cause=error))
        if error:
            culprits = stall.culprits
    return findings, culprits


# -- scans -> views ------------------------------------------------------------------------------

def worker_view(host: str, scan: Mapping[str, Any], worker: Mapping[str, Any]) -> RankView:
    samples = [s for s in worker.get("samples") or [] if isinstance(s, dict)]
    first = samples[0] if samples else {}
    last = samples[-1] if samples else {}
    beat_a, beat_b = first.get("heartbeat") or {}, last.get("heartbeat") or {}
    cpu = None
    if isinstance(first.get("cpu_s"), (int, float)) and isinstance(last.get("cpu_s"), (int, float)):
        span = (last.get("at") or 0) - (first.get("at") or 0)
        if span > 0.2:
            cpu = round(100.0 * (last["cpu_s"] - first["cpu_s"]) / span, 1)
    record = worker.get("flight_record") if isinstance(worker.get("flight_record"), dict) else None
    seq = _int(beat_b.get("seq_now"))
    if seq is None:
        seq = _int(beat_b.get("seq"))
    if seq is None and record:
        seq = _int(record.get("last_enqueued"))
    progressed = bool(beat_a and beat_b and (
        beat_a.get("step") != beat_b.get("step") or (
            _int(beat_a.get("seq_now")) is not None
            and beat_a.get("seq_now") != beat_b.get("seq_now"))))
    age = None
    if isinstance(beat_b.get("time"), (int, float)) and isinstance(last.get("at"), (int, float)):
        age = round(max(0.0, last["at"] - beat_b["time"]), 1)
    busy, rate = window_rates(first, last, beat_a, beat_b)
    header = (f"Process {worker.get('pid')} (rank {worker.get('rank')} on {host}): "
              f"{worker.get('cmdline') or ''}").rstrip()
    stack_error = (last.get("stack") or {}).get("error") or (first.get("stack") or {}).get("error")
    return RankView(
        job=str(worker.get("job")), rank=int(worker["rank"]),
        world_size=int(worker.get("world_size") or 0), host=host,
        hostname=scan.get("hostname"), pid=_int(worker.get("pid")),
        local_rank=_int(worker.get("local_rank")), group_rank=_int(worker.get("group_rank")),
        local_world_size=_int(worker.get("local_world_size")),
        status=str(last.get("status") or "unknown"), cpu_pct=cpu,
        step=_int(beat_b.get("step")), seq=seq, progressed=progressed,
        heartbeat_age_s=age,
        first=stack_sample(first.get("stack"), header),
        last=stack_sample(last.get("stack"), header),
        stack_error=stack_error, flight_record=record,
        started=worker.get("create_time") if isinstance(worker.get("create_time"),
                                                        (int, float)) else None,
        cmdline=str(worker.get("cmdline") or ""), busy=busy, step_rate=rate,
        history=tuple(heartbeat.history(beat_b)), history_first=tuple(heartbeat.history(beat_a)),
        status_first=str(first.get("status") or "unknown"),
        window=window_account(first, last, worker.get("states")),
        verdict=_verdict(beat_b), numerics=tuple(heartbeat.numerics(beat_b)),
        connections=tuple(connections_between(int(worker["rank"]), host, first.get("tcp") or [],
                                              last.get("tcp") or [])))


def _verdict(beat: Mapping[str, Any]) -> Optional[tuple[Mapping[str, Any], ...]]:
    named = heartbeat.verdict(beat)
    return None if named is None else tuple(named)


def window_account(first: Mapping[str, Any], last: Mapping[str, Any],
                   states: Any) -> Optional[WindowAccount]:
    """How the main thread spent the window: schedstat deltas and the polled states."""
    a, b = first.get("sched"), last.get("sched")
    span = (last.get("at") or 0) - (first.get("at") or 0)
    if not (isinstance(a, list) and isinstance(b, list) and len(a) == len(b) == 2
            and isinstance(states, dict) and span > 0.2):
        return None
    counts = tuple(sorted((str(k), int(n)) for k, n in states.items()
                          if isinstance(n, int) and not isinstance(n, bool) and n > 0))
    ta, tb = first.get("threads_sched"), last.get("threads_sched")  # older scans: none
    threads_runq = (max(0.0, float(tb[1]) - float(ta[1])) if isinstance(ta, list)
                    and isinstance(tb, list) and len(ta) == len(tb) == 2 else 0.0)
    return WindowAccount(span, max(0.0, float(b[0]) - float(a[0])),
                         max(0.0, float(b[1]) - float(a[1])), counts, threads_runq,
                         throttled_s=throttled_between(first.get("throttled"),
                                                       last.get("throttled")))


def throttled_between(first: Any, last: Any) -> float:
    """Seconds the rank's cgroups were throttled between two samples (the most of any one of
    them, a quota on its own group or an ancestor's), 0 when unknown or the group changed."""
    if not (isinstance(first, dict) and isinstance(last, dict)):
        return 0.0
    grown = [float(last[path]) - float(first[path]) for path in first.keys() & last.keys()
             if isinstance(first[path], (int, float)) and isinstance(last[path], (int, float))]
    return max([0.0] + grown)


def stopped_throughout(view: RankView) -> bool:
    """State T at both samples, never seen otherwise in between, and no progress: stopped. A
    rank stopped and resumed (a debugger, a sampling profiler) is at most a straggler."""
    stopped = ("stopped", "tracing-stop")
    if view.status not in stopped or view.progressed:
        return False
    if view.status_first not in ("unknown",) + stopped:
        return False
    return view.window is None or view.window.share("stopped") == 1.0


def window_rates(first: Mapping[str, Any], last: Mapping[str, Any], beat_a: Mapping[str, Any],
                 beat_b: Mapping[str, Any]) -> tuple[Optional[float], Optional[float]]:
    """(busy fraction of the window, steps per second) between the two samples, or None."""
    busy = rate = None
    span = (last.get("at") or 0) - (first.get("at") or 0)
    if span > 0.2 and all(isinstance(s.get("busy_s"), (int, float)) for s in (first, last)):
        busy = round(min(1.0, max(0.0, (last["busy_s"] - first["busy_s"]) / span)), 3)
    steps = [_int(b.get("step")) for b in (beat_a, beat_b)]
    times = [b.get("time") for b in (beat_a, beat_b)]
    if None not in steps and all(isinstance(t, (int, float)) for t in times) and \
            times[1] - times[0] > 0:
        rate = round((steps[1] - steps[0]) / (times[1] - times[0]), 2)
    return busy, rate


def straggler_findings(job: str, live: Sequence[RankView]) -> list[Finding]:
    """A progressing job's slow ranks: the Monitor's own verdict when its heartbeats carry one
    (the in-job finding, word for word; plus a rank the scan saw stopped part of the window,
    which the Monitor of a stopped process cannot time reliably); else from the Monitor's step
    history when every rank has one (named at both samples); else from how each main thread
    spent the window (its states, schedstat and cgroup throttling); else from its busy time
    alone."""
    hosts = {v.rank: v.host for v in live}
    window = ([] if not live or any(v.window is None for v in live) else window_stragglers(
        {v.rank: v.window for v in live if v.window is not None}, hosts))
    if any(v.verdict is not None for v in live):
        return monitor_findings(job, live, window)
    if live and all(v.history for v in live):
        named = identify_stragglers(history_from_rows({v.rank: v.history for v in live}), hosts)
        if all(v.history_first for v in live):
            before = {s.rank for s in identify_stragglers(
                history_from_rows({v.rank: v.history_first for v in live}), hosts)}
            named = [s for s in named if s.rank in before]
        return [Finding(Severity.WARNING, Check.STRAGGLER, f"job {job}: {s.message()}",
                        host=s.host, rank=s.rank) for s in named]
    if live and all(v.window is not None for v in live):
        return [Finding(Severity.WARNING, Check.STRAGGLER, f"job {job}: {s.message()}",
                        host=s.host, rank=s.rank) for s in window]
    busy = {v.rank: v.busy for v in live if v.busy is not None}
    if len(busy) != len(live):
        return []
    return [Finding(Severity.WARNING, Check.STRAGGLER, f"job {job}: {s.message()}", host=s.host,
                    rank=s.rank) for s in busy_stragglers(busy, hosts)]


def monitor_findings(job: str, live: Sequence[RankView],
                     window: Sequence[WindowStraggler]) -> list[Finding]:
    """The Monitor's verdict (in the newest heartbeat) word for word, with what the scan saw
    of a rank stopped part of the window: a process stopped now and then stops its Monitor
    too, which sees only a gap in its clock, and may name the rank for another reason (its
    stops fell in the step's sleeps) or not at all. The scan's state T is added to the
    Monitor's words for that rank, or stands alone when the Monitor names it not."""
    newest = max(live, key=lambda v: (v.verdict is not None, v.step or -1))
    said = [entry for entry in newest.verdict or () if entry.get("message")]
    stopped = {s.rank: s for s in window if s.reason is Reason.STOPPED}
    found = []
    for entry in said:
        rank = _int(entry.get("rank"))
        link = entry.get("rule") in LINK_RULES
        seen = stopped.pop(rank, None)
        also = ("" if seen is None or link or entry.get("reason") == Reason.STOPPED.value
                else f"; outside, its scan saw it {seen.explanation()}")
        found.append(Finding(Severity.WARNING, Check.SLOW_LINK if link else Check.STRAGGLER,
                             f"job {job}: {entry.get('message')}{also}",
                             host=entry.get("host"),
                             rank=None if len(entry.get("ranks") or ()) > 1 else rank))
    return found + [Finding(Severity.WARNING, Check.STRAGGLER, f"job {job}: {s.message()}",
                            host=s.host, rank=s.rank) for s in stopped.values()]


def link_findings(job: str, live: Sequence[RankView], named: set[str]) -> list[Finding]:
    """A slow host or link: the job's connections through it carry a fraction of what its
    other links carry while busy (``core.links``), though no rank arrives late. The links of a
    host already ``named`` (a straggler there, or the Monitor's verdict naming its network,
    whose words ``straggler_findings`` repeats) are not judged."""
    spans = [v.window.window_s for v in live if v.window is not None]
    if not spans:
        return []
    found = slow_links([c for v in live for c in v.connections], statistics.median(spans),
                       named)
    return [Finding(Severity.WARNING, Check.SLOW_LINK, f"job {job}: {s.message()}", host=s.host,
                    rank=s.ranks[0] if len(s.ranks) == 1 else None) for s in found]


def gone_view(host: str, scan: Mapping[str, Any], beat: Mapping[str, Any]) -> Optional[RankView]:
    rank, world = _int(beat.get("rank")), _int(beat.get("world_size"))
    if rank is None or world is None:
        return None
    age = None
    if isinstance(beat.get("time"), (int, float)) and isinstance(scan.get("time"), (int, float)):
        age = round(max(0.0, scan["time"] - beat["time"]), 1)
    return RankView(job=str(beat.get("job")), rank=rank, world_size=world, host=host,
                    hostname=beat.get("host"), pid=_int(beat.get("pid")),
                    local_rank=_int(beat.get("local_rank")), status="gone",
                    step=_int(beat.get("step")),
                    seq=_int(beat.get("seq_now")) if beat.get("seq_now") is not None
                    else _int(beat.get("seq")),
                    heartbeat_age_s=age,
                    started=beat.get("started") if isinstance(beat.get("started"),
                                                              (int, float)) else None)


def collect_views(results: Sequence[HostScanResult]) -> dict[str, list[RankView]]:
    """Views per job. A process seen twice (same machine, two scans) counts once; a gone
    heartbeat counts only for a job that still has live ranks, and only when it is newer than
    the job (an older file belongs to an earlier run with the same run id and master)."""
    live: dict[str, list[RankView]] = defaultdict(list)
    seen: set[tuple[Any, Any, Any]] = set()
    for result in results:
        scan = result.scan or {}
        for worker in scan.get("workers") or []:
            if not isinstance(worker, dict) or _int(worker.get("rank")) is None:
                continue
            key = (scan.get("boot_id"), worker.get("pid"), worker.get("create_time"))
            if key in seen and key[0] is not None:
                continue
            seen.add(key)
            live[str(worker.get("job"))].append(worker_view(result.host, scan, worker))
    jobs = {job: list(views) for job, views in live.items()}
    for result in results:
        scan = result.scan or {}
        for beat in scan.get("gone") or []:
            view = gone_view(result.host, scan, beat) if isinstance(beat, dict) else None
            if view is None or view.job not in jobs:
                continue
            if any(v.rank == view.rank for v in jobs[view.job]):
                continue
            job_start = min((v.started for v in live[view.job] if v.started), default=None)
            if job_start is not None and (view.started or 0) < job_start - 120:
                continue  # from an earlier run
            jobs[view.job].append(view)
    return jobs


# -- roles ---------------------------------------------------------------------------------------

def analyze_job(job: str, views: Sequence[RankView],
                scanned_hosts: Sequence[str] = (),
                unscanned_hosts: Sequence[str] = ()) -> JobVerdict:
    world = max((v.world_size for v in views), default=0)
    by_rank = {v.rank: v for v in sorted(views, key=lambda v: v.status != "gone")}  # live wins
    verdicts: dict[int, RankVerdict] = {}
    live = [v for r, v in sorted(by_rank.items()) if v.status not in ("gone", "zombie")]

    # Who is in which collective, where, how far.
    top_seq = max((v.seq for v in live if v.seq is not None), default=None)
    top_step = max((v.step for v in live if v.step is not None), default=None)
    running = [v for v in live if not stopped_throughout(v)]
    if running and ((all(v.window is not None for v in running) and job_progressed(
            [v.window for v in running if v.window is not None])) or (
            len(running) > 1 and {v.rank for v in running} <= ranks_sending_to_peers(
                [c for v in running for c in v.connections]))):
        # the main threads went round their loops during the window (the ranks of a hung job
        # wait in one place), or every rank sent its peers data over TCP (those of a hung
        # collective send nothing): the job progresses, heartbeat or not
        running = [replace(v, progressed=True) for v in running]
        by_rank.update({v.rank: v for v in running})
    in_collective = {v.rank: op for v in running if (op := current_collective(v)) is not None}
    ops = defaultdict(list)
    for rank, op in in_collective.items():
        ops[op].append(rank)
    main_op = max(ops, key=lambda op: (len(ops[op]), op)) if ops else None
    progressing = [v for v in running if v.progressed]
    waiters_idle = any(_idle(by_rank[r]) for r in in_collective)
    held_at = holding_seq(by_rank, world, {v.rank for v in running})

    for rank in range(world):
        view = by_rank.get(rank)
        if view is None:
            verdicts[rank] = RankVerdict(
                RankView(job=job, rank=rank, world_size=world, host="?", status="missing"),
                Role.DEAD, missing_reason(rank, world, views, scanned_hosts, unscanned_hosts))
            continue
        verdicts[rank] = classify(view, top_seq, top_step, in_collective, main_op,
                                  waiters_idle, held_at)
    for view in views:  # ranks outside the world (a mismatched WORLD_SIZE)
        if view.rank not in verdicts:
            verdicts[view.rank] = RankVerdict(view, Role.UNKNOWN, "outside the world size")

    ordered = tuple(verdicts[r] for r in sorted(verdicts))
    culprits = [v for v in ordered if v.role in CULPRITS]
    all_progress = bool(running) and len(progressing) == len(running) and not culprits
    stalls = [] if all_progress else group_stalls(views, world)
    if stalls and stalls[0].culprits:
        # The dumps tell every group apart; "behind" compares one group's sequence numbers
        # only, and a rank waiting in another group is not behind.
        culprits = [v for v in culprits if v.role is not Role.BEHIND]
    findings = job_findings(job, world, ordered, culprits, all_progress, main_op, ops)
    culprit_ranks = tuple(v.view.rank for v in culprits)
    more, from_dumps = stall_findings(job, stalls, views, named=bool(culprits))
    if from_dumps:  # the dumps name whom the stacks could not
        findings = [f for f in findings if not f.tentative]
        culprit_ranks = from_dumps
    findings += more
    if not culprits and not any(f.severity is Severity.ERROR for f in findings):
        late = straggler_findings(job, running)
        findings += late + link_findings(job, running, {f.host for f in late if f.host})
    hung = any(f.severity is Severity.ERROR for f in findings)
    return JobVerdict(job, world, ordered, tuple(findings), hung, culprit_ranks)


def holding_seq(by_rank: Mapping[int, RankView], world: int,
                running: set[int]) -> Optional[int]:
    """The lowest collective a rank not ``running`` (stopped, dead or missing) may still be in
    (-1: anywhere, as for a rank without a heartbeat); None when every rank runs. Such a rank
    holds every collective from there on: a rank waiting in one of them is waiting for it, not
    behind, though the others got further (the ring sends of an all_reduce the stopped rank
    made before it stopped let some ranks finish it and enter the next one)."""
    held = [-1 if (view := by_rank.get(rank)) is None or view.seq is None else view.seq
            for rank in range(world) if rank not in running]
    return min(held, default=None)


def classify(view: RankView, top_seq: Optional[int], top_step: Optional[int],
             in_collective: Mapping[int, str], main_op: Optional[str],
             waiters_idle: bool, held_at: Optional[int]) -> RankVerdict:
    at = position(view)
    if view.status == "gone":
        when = (f", {view.heartbeat_age_s:.0f}s ago" if view.heartbeat_age_s is not None else "")
        return RankVerdict(view, Role.DEAD, (
            f"rank {view.rank} on {view.host} is gone: pid {view.pid} no longer runs; its last "
            f"heartbeat was{at or ' before its first step'}{when}"))
    if view.status == "zombie":
        return RankVerdict(view, Role.DEAD, f"rank {view.rank} on {view.host} (pid {view.pid}) "
                                            f"has exited (zombie){at}")
    if stopped_throughout(view):
        where = f", {describe_location(view.last.frames)}" if view.last else ""
        return RankVerdict(view, Role.STOPPED, (
            f"rank {view.rank} on {view.host} (pid {view.pid}) is stopped (state T: SIGSTOP, a "
            f"debugger or job control){at}{where}"))
    if view.progressed:
        return RankVerdict(view, Role.PROGRESSING, f"progressing{at}")
    op = in_collective.get(view.rank)
    stable_outside = (view.first is not None and view.last is not None
                      and view.last.collective is None and view.first.collective is None
                      and same_place(view.first.innermost, view.last.innermost))
    if op is None and stable_outside and in_collective and waiters_idle:
        return RankVerdict(view, Role.BLOCKED, (
            f"rank {view.rank} on {view.host} (pid {view.pid}) is not in any collective: it "
            f"stays {describe_location(view.last.frames)} while the others wait in "
            f"{main_op}{at}"))
    if op is not None and main_op is not None and op != main_op:
        return RankVerdict(view, Role.MISMATCH, (
            f"rank {view.rank} on {view.host} (pid {view.pid}) waits in {op} while the others "
            f"wait in {main_op}: the ranks took different code paths{at}"))
    behind_seq = top_seq is not None and view.seq is not None and view.seq < top_seq
    behind_step = top_step is not None and view.step is not None and view.step < top_step
    held = op is not None and held_at is not None and (view.seq is None or held_at <= view.seq)
    if (behind_seq or behind_step) and not held:
        what = (f"collective seq {view.seq}, the others {top_seq}" if behind_seq
                else f"step {view.step}, the others {top_step}")
        where = f"; {describe_location(view.last.frames)}" if view.last else ""
        return RankVerdict(view, Role.BEHIND, (
            f"rank {view.rank} on {view.host} (pid {view.pid}) is behind: {what}{where}"))
    if op is not None:
        return RankVerdict(view, Role.WAITING, f"waiting in {op}" + _seq_text(view.seq), op)
    return RankVerdict(view, Role.UNKNOWN, (
        describe_location(view.last.frames) if view.last else
        f"no stack ({view.stack_error})" if view.stack_error else f"no stack{at}"))


def missing_reason(rank: int, world: int, views: Sequence[RankView],
                   scanned_hosts: Sequence[str], unscanned_hosts: Sequence[str]) -> str:
    """Why a rank of the world has no process: where it should run, as far as can be told."""
    text = (f"rank {rank} is missing: WORLD_SIZE is {world} but no process of rank {rank} runs "
            f"on the hosts scanned")
    sizes = {v.local_world_size for v in views if v.local_world_size}
    node = rank // next(iter(sizes)) if len(sizes) == 1 else None
    if node is not None:
        text += f" (node {node} by LOCAL_WORLD_SIZE {next(iter(sizes))})"
    with_ranks = {v.host for v in views}
    empty = [h for h in scanned_hosts if h not in with_ranks]
    if unscanned_hosts:
        text += f"; {hosts_text(unscanned_hosts)} could not be scanned"
    elif len(empty) == 1:
        text += f"; probably on {empty[0]}, the only host scanned without a rank of this job"
    return text


def position(view: RankView) -> str:
    """" at step S, collective seq N" as far as known, else ""."""
    parts = []
    if view.step is not None:
        parts.append(f"step {view.step}")
    if view.seq is not None:
        parts.append(f"collective seq {view.seq}")
    return f" at {', '.join(parts)}" if parts else ""


def job_findings(job: str, world: int, ranks: Sequence[RankVerdict],
                 culprits: Sequence[RankVerdict], all_progress: bool,
                 main_op: Optional[str], ops: Mapping[str, list[int]]) -> list[Finding]:
    findings: list[Finding] = []
    order = {role: index for index, role in enumerate(CULPRITS)}
    dead_by_host: dict[str, list[RankVerdict]] = defaultdict(list)
    for verdict in culprits:
        if verdict.role is Role.DEAD:
            dead_by_host[verdict.view.host].append(verdict)
    grouped: list[tuple[int, Finding]] = []
    for host, dead in dead_by_host.items():
        if host != "?" and len(dead) > 1:
            ranks_text = ", ".join(str(d.view.rank) for d in dead)
            grouped.append((0, Finding(Severity.ERROR, Check.HANG, (
                f"ranks {ranks_text} on {host} are gone: " + "; ".join(
                    d.reason.split(": ", 1)[-1] for d in dead)), host=host,
                rank=dead[0].view.rank)))
        else:
            grouped += [(0, Finding(Severity.ERROR, Check.HANG, d.reason,
                                    host=None if host == "?" else host, rank=d.view.rank))
                        for d in dead]
    for verdict in culprits:
        if verdict.role is not Role.DEAD:
            grouped.append((order[verdict.role], Finding(
                Severity.ERROR, Check.HANG, verdict.reason, host=verdict.view.host,
                rank=verdict.view.rank)))
    grouped.sort(key=lambda pair: pair[0])
    findings = [f for _, f in grouped]
    if findings:
        findings[0] = replace(findings[0], root_cause=True)
    waiting = [v for v in ranks if v.role is Role.WAITING]
    if waiting:
        findings.append(Finding(Severity.INFO, Check.HANG, f"job {job}: " + waiting_summary(waiting)
                                + (" (collateral: they wait for the rank(s) above)"
                                   if culprits else "")))
    if culprits:
        return findings
    live = [v for v in ranks if v.view.status not in ("gone", "missing")]
    if all_progress:
        steps = [v.view.step for v in live if v.view.step is not None]
        moved = f", at step {max(steps)}" if steps else ""
        findings.append(Finding(Severity.INFO, Check.HANG, (
            f"job {job}: all {len(live)} rank(s) progressed during the window{moved}: not hung")))
    elif waiting and len(waiting) == len(live) and len(ops) == 1 and all(
            _idle(v.view) for v in waiting):
        seqs = sorted({v.view.seq for v in waiting if v.view.seq is not None})
        findings.append(Finding(Severity.ERROR, Check.HANG, (
            f"job {job}: all {len(live)} ranks wait in {main_op}"
            f"{_seq_text(seqs[0]) if len(seqs) == 1 else ''} and none is behind: the "
            f"collective itself is stuck (a network fault, or a group the ranks disagree on); "
            f"try ddpcheck bandwidth"), root_cause=True, tentative=True))
    else:
        findings.append(Finding(Severity.INFO, Check.HANG, (
            f"job {job}: {len(live)} of {world} rank(s) seen, none stopped, gone or behind: "
            f"no sign of a hang"), tentative=True))
    return findings


def waiting_summary(waiting: Sequence[RankVerdict]) -> str:
    groups: dict[tuple[str, Optional[int]], list[int]] = defaultdict(list)
    for verdict in waiting:
        groups[(verdict.op or "?", verdict.view.seq)].append(verdict.view.rank)
    parts = []
    for (op, seq), ranks in sorted(groups.items(), key=lambda item: item[1][0]):
        noun = "rank" if len(ranks) == 1 else "ranks"
        verb = "is waiting" if len(ranks) == 1 else "are waiting"
        parts.append(f"{noun} {compress_ranks(ranks)} {verb} in {op}{_seq_text(seq)}")
    return "; ".join(parts)


def compress_ranks(ranks: Iterable[int]) -> str:
    """[0, 1, 2, 4] -> "0-2, 4"."""
    values = sorted(set(ranks))
    parts, start = [], None
    for index, value in enumerate(values):
        if start is None:
            start = value
        if index + 1 == len(values) or values[index + 1] != value + 1:
            parts.append(str(start) if start == value else f"{start}-{value}")
            start = None
    return ", ".join(parts)


def analyze_scans(results: Sequence[HostScanResult], job_filter: str = "") -> HangAnalysis:
    """Every job on the hosts (those whose key contains ``job_filter``), root causes first,
    plus host-level findings (no py-spy, ...)."""
    jobs_views = {job: views for job, views in collect_views(results).items()
                  if job_filter in job}
    scanned = [r.host for r in results if r.scan is not None and not r.scan.get("error")]
    unscanned = [r.host for r in results if r.host not in scanned]
    jobs = tuple(analyze_job(job, views, scanned, unscanned)
                 for job, views in sorted(jobs_views.items()))
    ras_view, ras_found = ras_of(results)
    if not any(f.severity is Severity.ERROR for f in ras_found):  # else NCCL RAS decided
        blind = stackless_reasons(results)
        jobs = tuple(replace(job, findings=tuple(unseen_findings(job, blind))) for job in jobs)
    # after the hang's own verdict, which a device computing wrong does not change
    jobs = tuple(replace(job, findings=job.findings + tuple(canary_findings(
        job.job, [v.view.numerics for v in job.ranks], {v.view.rank: v.view.host
                                                         for v in job.ranks})))
        for job in jobs)
    findings: list[Finding] = []
    for job in sorted(jobs, key=lambda j: not j.hung):
        findings += job.findings
    findings += ras_found
    findings += host_findings(results, bool(jobs_views), job_filter)
    stacks: dict[str, str] = {}
    for job in jobs:
        for verdict in job.ranks:
            if verdict.view.last is not None:
                key = str(verdict.view.rank) if len(jobs) == 1 else f"{job.job}:{verdict.view.rank}"
                stacks[key] = verdict.view.last.text
    return HangAnalysis(jobs, tuple(findings), stacks, ras_view)


# -- what no stack could show -------------------------------------------------------------------

def stackless_reasons(results: Sequence[HostScanResult]) -> dict[str, str]:
    """Why a scanned host took no stacks at all: host -> reason (hosts that took them: absent)."""
    reasons = {}
    for result in results:
        scan = result.scan or {}
        if result.scan is None or not scan.get("workers"):
            continue
        if not scan.get("stacks_requested"):
            reasons[result.host] = "stacks were not taken (--no-stacks)"
        elif not scan.get("py_spy"):
            reasons[result.host] = "py-spy is not installed"
    return reasons


def unseen_findings(job: JobVerdict, blind: Mapping[str, str]) -> list[Finding]:
    """A job in which nothing was named, yet some live rank was not seen (no stack, no moving
    heartbeat, no Flight Recorder entry placing it), is "cannot tell", never "no sign of a
    hang": a tool that finds hangs must not call a job healthy when it could not look. The
    finding is a ``stacks`` error, which the verdict counts as "could not check" (exit 3)."""
    findings = list(job.findings)
    if any(f.severity is Severity.ERROR for f in findings):
        return findings  # stacks, heartbeats or dumps named the culprit: decided
    unseen = [v.view for v in job.ranks if v.role is Role.UNKNOWN and v.view.last is None
              and v.view.status not in ("gone", "zombie", "missing")]
    if not unseen:
        return findings
    by_host: dict[str, list[int]] = defaultdict(list)
    for view in unseen:
        by_host[view.host].append(view.rank)
    reasons = []
    for host, ranks in by_host.items():
        why = blind.get(host) or next((v.stack_error for v in unseen
                                       if v.host == host and v.stack_error), "no stack")
        noun = "rank" if len(ranks) == 1 else "ranks"
        reasons.append(f"{noun} {compress_ranks(ranks)} on {host}: {why}")
    hosts = sorted(by_host)
    cannot = Finding(Severity.ERROR, Check.STACKS, (
        f"job {job.job}: cannot tell whether it is hung: no Python stack of "
        f"{'; '.join(reasons)}, and no ddpcheck.Monitor heartbeat or Flight Recorder dump "
        f"decides it (install py-spy into the hosts' Python, run as root or as the job's user "
        f"with ptrace allowed, or add ddpcheck.Monitor to the job)"),
        host=hosts[0] if len(hosts) == 1 else None,
        rank=unseen[0].rank if len(unseen) == 1 else None, root_cause=True)
    return [cannot] + [f for f in findings if not f.tentative]


def ras_of(results: Sequence[HostScanResult]) -> tuple[dict[str, Any], list[Finding]]:
    """NCCL RAS's answer from the host that asked it: its text, the parsed view, and its
    ``hang`` findings with RAS's (node, pid) named as the job's ranks where the pid says."""
    for result in results:
        answer = (result.scan or {}).get("ras")
        if not isinstance(answer, Mapping):
            continue
        facts: dict[str, Any] = {"host": result.host, **answer}
        if not answer.get("output"):
            return facts, []
        view = ras.parse(str(answer["output"]))
        facts["view"] = view
        ranks: dict[int, list[int]] = {}
        for other in results:
            for worker in (other.scan or {}).get("workers") or []:
                if isinstance(worker, Mapping) and isinstance(worker.get("pid"), int):
                    ranks.setdefault(worker["pid"], []).append(int(worker.get("rank", -1)))

        def rank_of(node: str, pid: int) -> Optional[int]:
            found = ranks.get(pid) or []
            return found[0] if len(found) == 1 and found[0] >= 0 else None

        return facts, ras.findings(view, rank_of)
    return {}, []


def host_findings(results: Sequence[HostScanResult], any_job: bool,
                  job_filter: str = "") -> list[Finding]:
    findings = []
    no_py_spy = [r for r in results if r.scan and r.scan.get("stacks_requested")
                 and not r.scan.get("py_spy") and r.scan.get("workers")]
    for result in no_py_spy:
        assert result.scan is not None
        findings.append(Finding(Severity.WARNING, Check.STACKS, (
            f"{result.host}: py-spy is not installed, so no Python stacks of its ranks: install "
            f"it with pip install 'ddpcheck[stacks]' (or pip install py-spy) into "
            f"{result.scan.get('python') or 'the python of hosts.yaml'}"), host=result.host))
    for result in results:
        scan = result.scan or {}
        failed = sorted({(w.get("samples") or [{}])[-1].get("stack", {}).get("error")
                         for w in scan.get("workers") or [] if isinstance(w, dict)} - {None})
        if failed:
            scope = scan.get("ptrace_scope")
            why = (f" (kernel.yama.ptrace_scope is {scope} on this host)"
                   if isinstance(scope, int) and scope > 0 and scan.get("uid") != 0 else "")
            findings.append(Finding(Severity.WARNING, Check.STACKS, (
                f"{result.host}: py-spy could not read some ranks: {failed[0]}{why}"),
                host=result.host))
        if scan.get("other_users"):
            findings.append(Finding(Severity.INFO, Check.HANG, (
                f"{result.host}: {scan['other_users']} Python process(es) of other users were "
                f"not inspected (ddpcheck hang reads only your own processes; root sees "
                f"every user's jobs)"), host=result.host))
        if scan.get("other_netns") and not scan.get("workers"):
            findings.append(Finding(Severity.INFO, Check.HANG, (
                f"{result.host}: {scan['other_netns']} torchrun worker(s) run in other network "
                f"namespaces (containers or other hosts on this machine) and were not "
                f"inspected; run ddpcheck hang where they run"), host=result.host))
        if result.scan is not None and scan.get("error"):
            findings.append(Finding(Severity.ERROR, Check.HANG, f"{result.host}: scan failed: "
                                                            f"{scan['error']}", host=result.host))
    # only the hosts whose scan answered: one that failed or was cut off has its own finding
    scanned = [r.host for r in results if r.scan is not None and not r.scan.get("error")]
    if not any_job and scanned:
        matching = f" of a job matching {job_filter!r}" if job_filter else ""
        count = f"the {len(scanned)} hosts scanned, " if len(scanned) > 8 else ""
        findings.append(Finding(Severity.WARNING, Check.HANG, (
            f"no running torchrun worker{matching} found on {count}{hosts_text(scanned)} (a "
            f"worker has RANK, WORLD_SIZE and LOCAL_RANK in its environment)")))
    return findings


def _idle(view: RankView) -> bool:
    return view.cpu_pct is None or view.cpu_pct < IDLE_CPU_PCT


def _seq_text(seq: Optional[int]) -> str:
    return f" (seq {seq})" if seq is not None else ""


def _int(value: Any) -> Optional[int]:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


# -- the hang report's findings and rank records ------------------------------------------

def host_error_findings(hosts: Sequence[HostRecord]) -> list[Finding]:
    """A host that could not be scanned, as an error finding (its stage and error; the stage
    once: a scan's own failure already starts with it)."""
    return [failure_finding(h, f"{h.name}: {h.stage}: {h.error.removeprefix(f'{h.stage}: ')}")
            for h in hosts if h.failure is not None]


def hang_findings(analysis: HangAnalysis, host_errors: list[Finding]) -> list[Finding]:
    """Job findings first (their root cause leads), then unreachable hosts, then the rest.
    With no job naming one, the first error is the root cause (a host that could not be
    scanned first), as in preflight; a host the --timeout ran out before (not reached in time)
    never is: that says nothing about it."""
    job_findings = list(analysis.findings)
    hosts = [replace(f, root_cause=False) for f in host_errors]
    return order_findings(mark_single_root_cause(
        [f for f in job_findings if f.root_cause] + hosts
        + [f for f in job_findings if not f.root_cause]))


def rank_records(jobs: tuple[JobVerdict, ...]) -> list[RankRecord]:
    records = []
    for job in jobs:
        for verdict in job.ranks:
            view = verdict.view
            status = (RankStatus.MISSING if verdict.role is Role.DEAD else
                      RankStatus.ERROR if verdict.role in CULPRITS else RankStatus.OK)
            records.append(RankRecord(
                rank=view.rank, host=view.host, local_rank=view.local_rank,
                node_rank=view.group_rank, hostname=view.hostname, pid=view.pid,
                world_size=view.world_size, status=status, stage=verdict.role.value,
                error=verdict.reason if verdict.role in CULPRITS else None))
    return records
