"""Who is the straggler: pure functions over per-rank step samples (runs anywhere).

The in-job ``Monitor`` (on its leader rank), ``ddpcheck hang``'s analysis of Monitor heartbeats
and the preflight compute check all name slow ranks here, so the three speak one language.

A collective evens out the step durations of all ranks (everyone leaves it together), so
duration cannot blame anyone. What differs is how each rank spent the step: its *busy* time
(on a CPU or wanting one: running, waiting in the run queue, or throttled by a cgroup quota)
and its *wait* time (blocked: in a collective waiting for the others, or in I/O). The last rank
to arrive at the collective waits least; its arrival lag behind the median rank is the median
wait of its peers minus its own (no cross-host clock needed). A rank is named when it arrived
late by 30 % of a step or more in each of its last few steps (``quick``: a
straggler that holds everyone up every step is named within 5 steps, within 3 when its own
clock saw it asleep outside the collectives or stopped for 25 % of each of them more than its
peers, which no neighbour's load makes), in at least
``min_steps`` of the last ``window`` steps (``steady``), or in 3 of them while its own clock
saw the process stopped (``stopped``: a SIGSTOP duty cycle makes it late only in the steps a
stop falls in) or its cgroup's CPU quota throttled it (``throttled``: a quota is spent in
100 ms periods, so some steps pass at full speed), held more than its peers since the first of
them: arrival lag is the evidence. How it spent
the step is the explanation, not a gate: on a CPU longer than its peers (*compute*), or
runnable but not running (*starved*: its run-queue time, a CPU quota). Noise on a healthy run
moves the last place from rank to rank; a straggler holds it.

From outside (``ddpcheck hang`` on a job without a Monitor) the same question is asked of how
each rank's main thread spent the window (``WindowAccount``, ``window_stragglers``): the share
not spent waiting for the others, and what it was spent on.
"""

from __future__ import annotations

import bisect
import enum
import math
import statistics
from dataclasses import dataclass, replace
from typing import Any, Iterable, Mapping, Optional, Sequence


@dataclass(frozen=True)
class StepSample:
    """One rank's account of one step: ``busy_s`` working (on a CPU or runnable), ``wait_s``
    blocked (the rest of the wall time since its previous step), ``time`` the wall clock at the
    step boundary, ``starved_s`` the part of ``busy_s`` it was runnable but not running,
    ``throttled_s`` the time its cgroup's CPU quota held it meanwhile (counted in
    ``starved_s``)."""
    step: int
    busy_s: float
    wait_s: float
    time: float = 0.0
    starved_s: float = 0.0
    blocked_s: float = 0.0  # asleep outside the collectives (not part of wait_s)
    stopped_s: float = 0.0  # the process stopped (not part of wait_s)
    throttled_s: float = 0.0  # its cgroup throttled by a CPU quota (within starved_s)

    @property
    def wall_s(self) -> float:
        return self.busy_s + self.wait_s + self.blocked_s + self.stopped_s

    def shares(self) -> dict["Reason", float]:
        """Its step's shares by reason: what it spent not waiting for the others."""
        wall = self.wall_s or 1e-9
        return {Reason.COMPUTE: (self.busy_s - self.starved_s) / wall,
                Reason.STARVED: self.starved_s / wall, Reason.BLOCKED: self.blocked_s / wall,
                Reason.STOPPED: self.stopped_s / wall}

    def as_list(self) -> list[Any]:
        """The compact form heartbeats and the store carry: [step, time, busy, wait, starved,
        blocked, stopped, throttled]."""
        return [self.step, round(self.time, 6), round(self.busy_s, 6), round(self.wait_s, 6),
                round(self.starved_s, 6), round(self.blocked_s, 6), round(self.stopped_s, 6),
                round(self.throttled_s, 6)]

    @staticmethod
    def from_list(row: Sequence[Any]) -> Optional["StepSample"]:
        """A row of 4 to 8 numbers (older Monitors wrote the first four, then seven)."""
        try:
            step, when, busy, wait = row[:4]
            more = [float(value) for value in row[4:8]] + [0.0] * (8 - max(4, len(row[:8])))
            return StepSample(int(step), float(busy), float(wait), float(when), *more)
        except (TypeError, ValueError):
            return None


@dataclass(frozen=True)
class Thresholds:
    """When a rank is named. ``window``: the last steps looked at; ``min_steps``: in how many
    of them it must be late; late means arriving at least ``max(min_lag_s, min_lag_fraction
    x the median step)`` after its peers' median *and* busy for at least ``min_compute_ratio``
    x their median busy time. With a healthy rank's compute time jittering by 20 % from step to
    step, the chance that it is late in 9 of 10 steps is about 1e-6 per window (see
    tests/test_straggler.py). Short steps make 10 steps a short time, and a neighbour can starve
    a healthy rank for half a second: the Monitor therefore names a rank by the ``steady``
    rule only when its exchanges agree for ``confirm_s``, and ``ddpcheck hang`` when both of
    its samples do (benchmarks/straggler.py counts false alarms of a real job). The ``quick``
    rule needs no confirmation: its margin (30 % of the step, every step late) and its span
    (``quick_span_s``) are what a burst does not reach. Nor do ``stopped`` and ``throttled``
    by default (``confirmations``: consecutive exchanges that must agree): their evidence
    spans 2 late steps of the window, stays in it for the next exchanges (so more of them
    delay the name, 0.25 s each, without filtering), and no neighbour's load makes it."""
    window: int = 10
    min_steps: int = 9
    min_lag_s: float = 0.002
    min_lag_fraction: float = 0.20  # the margin a 1.2x compute gate used to give
    min_compute_ratio: float = 0.0  # 0: busy time explains a late arrival, it does not gate
    confirmations: int = 1  # Monitor: exchanges in a row that must agree (stopped, throttled)
    confirm_s: float = 2.0  # ... and for ``steady``, spanning at least this long
    # quick: late in each of the last quick_steps steps by quick_lag_fraction x the step,
    # spanning at least quick_span_s; fewer steps
    # where they would take more than quick_within_s, never under quick_min_steps. One slow
    # step, or a neighbour's burst that stalls a short-stepped job a few steps, is not that
    quick_steps: int = 5
    quick_min_steps: int = 3
    quick_within_s: float = 2.0
    quick_lag_fraction: float = 0.3
    quick_span_s: float = 0.6
    # quick on its own evidence: late so in each of the last quick_min_steps steps, asleep
    # outside the collectives or stopped in each for quick_held_share of it more than its
    # peers' median (its own clock, not a neighbour's load), spanning quick_held_span_s
    quick_held_share: float = 0.25
    quick_held_span_s: float = 0.3
    # stopped / throttled: late and held (stopped: its own clock saw the gap; throttled: its
    # cgroup's quota held it) in min_held_steps steps of the window, and held at least
    # min_held_share of the wall time since the first of them (its episode, at least
    # quick_held_span_s long) more than its peers' median over the same steps (no neighbour's
    # load stops a process or throttles its cgroup; one long stall is one step: two late steps
    # are a cycle; with three, 6 of 12 stop cycles at steps of 0.1 s were named past their 5th
    # step, benchmarks/README.md)
    min_held_steps: int = 2
    min_held_share: float = 0.15

    def __post_init__(self) -> None:
        if not 1 <= self.min_steps <= self.window:
            raise ValueError(f"need 1 <= min_steps <= window, got {self.min_steps}, "
                             f"{self.window}")
        if self.min_compute_ratio < 0 or self.min_lag_s < 0 or self.min_lag_fraction < 0:
            raise ValueError("min_compute_ratio, min_lag_s and min_lag_fraction must be >= 0")
        if not 2 <= self.quick_min_steps <= self.quick_steps:
            raise ValueError(f"need 2 <= quick_min_steps <= quick_steps, got "
                             f"{self.quick_min_steps}, {self.quick_steps}")


@dataclass(frozen=True)
class Straggler:
    rank: int
    host: Optional[str]
    lag_s: float  # median arrival lag behind its peers' median over the flagged steps
    compute_ratio: float  # median busy time / peers' median busy time over the flagged steps
    flagged: int  # steps it was late in ...
    window: int  # ... of this many
    last_step: int
    # its median shares of the step by reason over the flagged steps, and its peers' medians
    shares: tuple[tuple["Reason", float], ...] = ()
    peers: tuple[tuple["Reason", float], ...] = ()
    channel: Optional[str] = None  # where it was blocked most (the Monitor's sampler)
    rule: str = "steady"  # "quick", "steady", "stopped" or "throttled": which rule named it
    throttled: float = 0.0  # share of the window its cgroup's CPU quota held it

    @property
    def reason(self) -> Optional["Reason"]:
        """The share that grew most over its peers' (at least 10 % of the step); None when
        none did (a lag no clock of this rank explains)."""
        own, peers = dict(self.shares), dict(self.peers)
        excess = {reason: own.get(reason, 0.0) - peers.get(reason, 0.0) for reason in own}
        best = max(excess, key=lambda r: excess[r], default=None)
        return best if best is not None and excess[best] >= 0.10 else None

    def explanation(self) -> str:
        own, peers = dict(self.shares), dict(self.peers)
        reason = self.reason

        def pct(value: float) -> str:
            return f"{value * 100:.0f}%"

        if reason is Reason.COMPUTE:
            return f"{self.compute_ratio:.2f}x the median compute time"
        if reason is None:  # a late input, or a pause its own clocks did not see
            return (f"{self.compute_ratio:.2f}x the median compute time, no share of its step "
                    f"above its peers'")
        versus = f"its peers {pct(peers.get(reason, 0.0))}"
        if reason is Reason.STARVED:
            why = (f"its cgroup's CPU quota throttled it {pct(self.throttled)} of the window"
                   if self.throttled >= 0.10 else
                   "runnable but not running: a CPU quota, preemption or an oversubscribed host")
            return f"starved of CPU {pct(own[reason])} of its step ({why}), {versus}"
        if reason is Reason.BLOCKED:
            return (f"blocked outside the collectives {pct(own[reason])} of its step "
                    f"({channel_meaning(self.channel)}), {versus}")
        return (f"stopped {pct(own[reason])} of its step (state T: SIGSTOP, a debugger or a "
                f"sampling profiler), {versus}")

    def message(self) -> str:
        where = f" on {self.host}" if self.host else ""
        return (f"rank {self.rank}{where} arrives {self.lag_s * 1e3:.0f} ms after the median, "
                f"{self.explanation()}, {self.flagged} of the last {self.window} steps")

    def as_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "host": self.host, "lag_ms": round(self.lag_s * 1e3, 1),
                "compute_ratio": round(self.compute_ratio, 3),
                "reason": self.reason.value if self.reason else None, "channel": self.channel,
                "flagged": self.flagged, "window": self.window, "last_step": self.last_step,
                "rule": self.rule, "throttled": round(self.throttled, 3),
                "message": self.message()}


def median_without(ordered: Sequence[float], value: float) -> float:
    """The median of ``ordered`` (sorted, containing ``value``) with one ``value`` removed: the
    peers' median of one rank in O(log n), so a leader of 1,000 ranks stays cheap."""
    n = len(ordered) - 1
    if n <= 0:
        return value
    skip = bisect.bisect_left(ordered, value)

    def at(k: int) -> float:
        return ordered[k] if k < skip else ordered[k + 1]

    if n % 2:
        return at(n // 2)
    return (at(n // 2 - 1) + at(n // 2)) / 2


def late_ranks(samples: Mapping[int, StepSample], thresholds: Thresholds) -> dict[int, tuple[
        float, float, dict["Reason", float], dict["Reason", float]]]:
    """One step: {rank: (lag_s, compute_ratio, its shares, its peers' median shares)} of the
    ranks late by the margins."""
    if len(samples) < 2:
        return {}
    waits = sorted(s.wait_s for s in samples.values())
    busies = sorted(s.busy_s for s in samples.values())
    step_s = statistics.median(s.wall_s for s in samples.values())
    margin = max(thresholds.min_lag_s, thresholds.min_lag_fraction * step_s)
    shares = {rank: s.shares() for rank, s in samples.items()}
    by_reason = {reason: sorted(part[reason] for part in shares.values()) for reason in Reason}
    late = {}
    for rank, sample in samples.items():
        lag = median_without(waits, sample.wait_s) - sample.wait_s
        if lag < margin:
            continue
        peers_busy = median_without(busies, sample.busy_s)
        ratio = sample.busy_s / peers_busy if peers_busy > 0 else (
            float("inf") if sample.busy_s > 0 else 1.0)
        if ratio >= thresholds.min_compute_ratio:
            peers = {reason: median_without(by_reason[reason], shares[rank][reason])
                     for reason in Reason}
            late[rank] = (lag, ratio, shares[rank], peers)
    return late


# the held rules and the StepSample field each reads
HELD_PARTS = {"stopped": "stopped_s", "throttled": "throttled_s"}


def identify_stragglers(history: Mapping[int, Iterable[StepSample]],
                        hosts: Optional[Mapping[int, Optional[str]]] = None,
                        thresholds: Thresholds = Thresholds(),
                        channels: Optional[Mapping[int, Optional[str]]] = None
                        ) -> list[Straggler]:
    """The ranks named by one of the rules (see the module docstring and ``Thresholds``), over
    the steps every rank in ``history`` reported (a rank that stopped reporting is ``ddpcheck
    hang``'s business). ``channels``: where each rank was blocked most recently, for the
    message."""
    hosts = hosts or {}
    channels = channels or {}
    by_step: dict[int, dict[int, StepSample]] = {}
    for rank, samples in history.items():
        for sample in samples:
            by_step.setdefault(sample.step, {})[rank] = sample
    everyone = len(history)
    steps = sorted(step for step, ranks in by_step.items() if len(ranks) == everyone >= 2)
    steps = steps[-thresholds.window:]
    if not steps:
        return []
    late_at = {step: late_ranks(by_step[step], thresholds) for step in steps}
    step_s = {step: statistics.median(s.wall_s for s in by_step[step].values()) for step in steps}
    held = HeldShares(steps, by_step)
    named = []
    for rank in sorted({rank for late in late_at.values() for rank in late}):
        seen = [late_at[step][rank] for step in steps if rank in late_at[step]]
        flagged, window, rule = len(seen), len(steps), None
        throttled = held.share(rank, 0, "throttled_s")
        quick = _quick_run(rank, steps, late_at, step_s, thresholds)
        if quick:
            seen = [late_at[step][rank] for step in steps[-quick:]]
            flagged, window, rule = len(seen), quick, "quick"
        elif len(steps) >= thresholds.min_steps and flagged >= thresholds.min_steps:
            rule = "steady"
        elif len(steps) >= thresholds.min_steps:
            rule, first = _held_rule(rank, steps, late_at, by_step, step_s, held, thresholds)
            if rule is not None:  # told over the episode it was judged on
                seen = [late_at[step][rank] for step in steps[first:] if rank in late_at[step]]
                flagged, window = len(seen), len(steps) - first
                throttled = held.share(rank, first, "throttled_s")
        if rule is None:
            continue
        shares = tuple((r, statistics.median(s[2][r] for s in seen)) for r in Reason)
        peers = tuple((r, statistics.median(s[3][r] for s in seen)) for r in Reason)
        named.append(Straggler(rank, hosts.get(rank), statistics.median(s[0] for s in seen),
                               statistics.median(s[1] for s in seen), flagged, window,
                               steps[-1], shares, peers, channels.get(rank), rule, throttled))
    return named


class HeldShares:
    """Every rank's share of its wall time over the last steps of the window that it was
    stopped or throttled, computed once per first step and part and kept sorted, so the held
    rules set a rank's share against its peers' median over the same steps (median_without:
    1,000 ranks stay cheap)."""

    def __init__(self, steps: Sequence[int], by_step: Mapping[int, Mapping[int, StepSample]]
                 ) -> None:
        self.steps, self.by_step = steps, by_step
        self._shares: dict[tuple[int, str], dict[int, float]] = {}
        self._sorted: dict[tuple[int, str], list[float]] = {}

    def _of(self, first: int, part: str) -> dict[int, float]:
        key = (first, part)
        if key not in self._shares:
            span = self.steps[first:]
            self._shares[key] = {rank: _held_share(rank, span, self.by_step, part)
                                 for rank in self.by_step[span[-1]]}
            self._sorted[key] = sorted(self._shares[key].values())
        return self._shares[key]

    def share(self, rank: int, first: int, part: str) -> float:
        """``rank``'s share over ``steps[first:]`` (``part``: "stopped_s" or "throttled_s")."""
        return self._of(first, part)[rank]

    def excess(self, rank: int, first: int, part: str) -> float:
        """Its share over ``steps[first:]`` minus its peers' median over the same steps."""
        own = self._of(first, part)[rank]
        return own - median_without(self._sorted[(first, part)], own)


def _held_share(rank: int, steps: Sequence[int], by_step: Mapping[int, Mapping[int, StepSample]],
                part: str) -> float:
    """The share of ``rank``'s wall time over ``steps`` it was held (``part``: "stopped_s" or
    "throttled_s")."""
    wall = sum(by_step[step][rank].wall_s for step in steps)
    return sum(getattr(by_step[step][rank], part) for step in steps) / wall if wall > 0 else 0.0


def _held_rule(rank: int, steps: Sequence[int], late_at: Mapping[int, Mapping[int, Any]],
               by_step: Mapping[int, Mapping[int, StepSample]], step_s: Mapping[int, float],
               held: HeldShares, thresholds: Thresholds) -> tuple[Optional[str], int]:
    """("stopped" or "throttled", the index of the episode's first step in ``steps``) when
    ``rank`` was late while held so in ``min_held_steps`` steps of the window (a duty cycle,
    not one stall), for ``min_held_share`` of the wall time since the first of them more than
    its peers' median over the same steps. The episode reaches back at least
    ``quick_held_span_s``: a few short steps are not a share. Else the whole window's share is
    asked the same (held before its first late step too). Else (None, 0).
    Judging the episode, not the whole window, keeps the healthy steps before the onset from
    diluting the share: a rank stopped 40 % of each step is named at its second late step."""
    for rule, part in HELD_PARTS.items():
        late_held = [i for i, step in enumerate(steps)
                     if rank in late_at[step] and getattr(by_step[step][rank], part) > 0]
        if len(late_held) < thresholds.min_held_steps:
            continue
        first = late_held[0]
        while first > 0 and sum(step_s[s] for s in steps[first:]) < thresholds.quick_held_span_s:
            first -= 1
        for start in dict.fromkeys((first, 0)):  # the episode, else the whole window
            if held.excess(rank, start, part) >= thresholds.min_held_share:
                return rule, start
    return None, 0


def _quick_run(rank: int, steps: Sequence[int], late_at: Mapping[int, Mapping[int, Any]],
               step_s: Mapping[int, float], thresholds: Thresholds) -> int:
    """How many of the last steps make ``rank`` a quick straggler (0: they do not): it is late
    by ``quick_lag_fraction`` x the step in each, and they span ``quick_span_s``. How many are
    needed: ``quick_steps``, fewer for long steps (what fits in ``quick_within_s``), and
    ``quick_min_steps`` spanning ``quick_held_span_s`` when its own clock saw it held in each
    (``_held_late``)."""
    def late(run: Sequence[int]) -> bool:
        return all(rank in late_at[step] and late_at[step][rank][0] >=
                   thresholds.quick_lag_fraction * step_s[step] for step in run)

    held = steps[-thresholds.quick_min_steps:]
    if (len(held) == thresholds.quick_min_steps and late(held)
            and all(_held_late(late_at[step][rank], thresholds) for step in held)
            and sum(step_s[step] for step in held) >= thresholds.quick_held_span_s):
        return len(held)
    recent = statistics.median(step_s[step] for step in steps[-thresholds.quick_steps:])
    fit = math.ceil(thresholds.quick_within_s / recent) if recent > 0 else thresholds.quick_steps
    needed = max(thresholds.quick_min_steps, min(thresholds.quick_steps, fit))
    run = steps[-needed:]
    if len(run) < needed or not late(run):
        return 0
    return needed if sum(step_s[step] for step in run) >= thresholds.quick_span_s else 0


def _held_late(seen: tuple[float, float, Mapping["Reason", float], Mapping["Reason", float]],
               thresholds: Thresholds) -> bool:
    """A late step (``late_ranks``' entry) in which the rank was asleep outside the collectives
    or stopped ``quick_held_share`` of its step more than its peers' median."""
    _, _, own, peers = seen
    held = (Reason.BLOCKED, Reason.STOPPED)
    return sum(own[r] - peers[r] for r in held) >= thresholds.quick_held_share


def history_from_rows(rows: Mapping[int, Iterable[Sequence[Any]]]) -> dict[int, list[StepSample]]:
    """{rank: [StepSample]} from the compact rows heartbeats and the store carry."""
    out: dict[int, list[StepSample]] = {}
    for rank, items in rows.items():
        samples = [s for s in (StepSample.from_list(row) for row in items or []) if s]
        if samples:
            out[int(rank)] = samples
    return out


# -- the preflight compute check ---------------------------------------------------------------

@dataclass(frozen=True)
class SlowDevice:
    rank: Optional[int]
    host: Optional[str]
    device: str  # "cpu" or the GPU's model name
    where: str  # "GPU 3 on node17 (bus 0000:3b:00.0)" / "rank 4 on h2 (cpu)"
    metric: str  # "bf16 TFLOP/s", "fp32 GFLOP/s", "memory GB/s"
    value: float
    median: float
    peers: int

    @property
    def ratio(self) -> float:
        return self.value / self.median if self.median else 0.0

    def message(self) -> str:
        peers = (f"{self.peers} {self.device}s" if self.where.startswith("GPU") else
                 f"{self.peers} ranks on {self.device}")
        return (f"{self.where}: {self.ratio:.2f}x the median {self.metric} of {peers} "
                f"({_fmt(self.value)} vs {_fmt(self.median)})")


COMPUTE_SLOW_FRACTION = 0.7  # below 0.7x the median of its peers (same device model): slow
COMPUTE_MIN_PEERS = 3  # a median of fewer ranks means little


def slow_devices(results: Sequence[Mapping[str, Any]], fraction: float = COMPUTE_SLOW_FRACTION,
                 min_peers: int = COMPUTE_MIN_PEERS) -> list[SlowDevice]:
    """Ranks whose compute-check values fall below ``fraction`` of the median of the ranks with
    the same device model. ``results``: dicts with ``rank``, ``host``, ``device_model``,
    ``where`` and ``metrics`` ({metric name: value, higher is better}). A group smaller than
    ``min_peers`` has no meaningful median and is not judged."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for result in results:
        groups.setdefault(str(result.get("device_model") or "?"), []).append(result)
    slow = []
    for model, members in sorted(groups.items()):
        if len(members) < min_peers:
            continue
        names = sorted({name for m in members for name in (m.get("metrics") or {})})
        for name in names:
            values = [(m, float(m["metrics"][name])) for m in members
                      if isinstance((m.get("metrics") or {}).get(name), (int, float))]
            if len(values) < min_peers:
                continue
            median = statistics.median(v for _, v in values)
            for member, value in values:
                if median > 0 and value < fraction * median:
                    slow.append(SlowDevice(member.get("rank"), member.get("host"), model,
                                           str(member.get("where")), name, value, median,
                                           len(values)))
    return slow


def _fmt(value: float) -> str:
    return f"{value:.3g}"


# -- from outside the job, without the Monitor -------------------------------------------------

@dataclass(frozen=True)
class BusyStraggler:
    """A rank busy (on a CPU, queued or throttled) much more of a window than its peers: they
    wait for it. What ``ddpcheck hang`` can see of a job that has no Monitor."""
    rank: int
    host: Optional[str]
    busy: float  # fraction of the window its main thread was busy
    peers: float  # its peers' median fraction

    @property
    def ratio(self) -> float:
        return self.busy / self.peers if self.peers > 0 else float("inf")

    def message(self) -> str:
        where = f" on {self.host}" if self.host else ""
        return (f"rank {self.rank}{where} busy {self.busy * 100:.0f}% of the window (running, "
                f"queued or throttled), {self.ratio:.2f}x the median of its peers "
                f"({self.peers * 100:.0f}%): the others wait for it")


def busy_stragglers(busy: Mapping[int, float], hosts: Optional[Mapping[int, Optional[str]]] = None,
                    min_ratio: float = 1.5, min_busy: float = 0.6) -> list[BusyStraggler]:
    """Ranks whose main thread was busy at least ``min_busy`` of the window and ``min_ratio`` x
    its peers' median (at least three ranks: with two, who waits for whom is a coin toss)."""
    if len(busy) < 3:
        return []
    hosts = hosts or {}
    ordered = sorted(busy.values())
    found = []
    for rank, value in sorted(busy.items()):
        peers = median_without(ordered, value)
        if value >= min_busy and value >= min_ratio * peers:
            found.append(BusyStraggler(rank, hosts.get(rank), value, peers))
    return found


# -- from outside the job: how each main thread spent the window ---------------------------------

class Reason(str, enum.Enum):
    """Why a straggler arrives late."""
    COMPUTE = "compute"  # on a CPU longer than its peers
    STARVED = "starved"  # runnable but not running: a CPU quota, preemption, oversubscription
    BLOCKED = "blocked"  # asleep outside any collective: I/O, data loading, a sleep, page faults
    STOPPED = "stopped"  # state T: SIGSTOP, a debugger, a sampling profiler


# A main thread asleep on a futex waits for another thread: gloo's collectives (and locks, the
# GIL): the time a rank spends waiting for its peers. Any other sleep is its own business.
WAITING_CHANNELS = ("futex",)
# a rank whose threads queued for a CPU half the window longer than its peers' is held back by
# a quota on it (runnable, so not stuck), whatever its main thread's state
OWN_STARVED_THROUGHOUT = 0.5
# A main thread that waits in a collective for a peer that never comes gets no CPU at all
# (measured with gloo: 0 ns in 3 s for every waiter of a rank spinning or asleep; two py-spy
# dumps add 0.1 ms), while a peer of a slow rank wakes each step and runs its own part of it
# (measured: 37-48 ms in 3 s beside a rank held to 3 % of a CPU, about 5 ms a step), mostly
# between the polls, which may then never see it running.
WOKE_ONCPU_S = 0.002
# What a wait channel says, for the message: (prefix of the kernel function, what it is).
CHANNEL_MEANINGS = (("hrtimer_nanosleep", "a sleep"), ("do_nanosleep", "a sleep"),
                    ("io_schedule", "I/O"), ("folio_wait", "I/O"), ("wait_on_page", "I/O"),
                    ("blk", "I/O"), ("nfs", "NFS I/O"), ("rpc_wait", "NFS I/O"),
                    ("pipe_read", "reading a pipe"), ("anon_pipe_read", "reading a pipe"),
                    ("do_sys_poll", "polling (a data loader, a socket)"),
                    ("do_select", "polling (a data loader, a socket)"),
                    ("do_epoll_wait", "polling (a data loader, a socket)"),
                    ("sk_wait_data", "reading a socket"), ("wait_woken", "reading a socket"),
                    ("handle_mm_fault", "page faults"), ("do_page_fault", "page faults"))


@dataclass(frozen=True)
class WindowAccount:
    """One rank's main thread over ``ddpcheck hang``'s window: its schedstat deltas (seconds on
    a CPU, seconds runnable but not running) and its state read every few milliseconds
    (``states``: {"R": n, "T": n, "S:futex_do_wait": n, ...}); ``threads_runq_s``: the run-queue
    seconds of all the process's threads (schedstat, summed), which a CPU quota on the process
    makes longer than the window (measured: 5.2 s in 3 s at 3 % of a CPU, its peers 0.2 s);
    ``own_starved``: the share of its futex waits spent waiting for its own threads starved of
    CPU rather than for the others (``window_stragglers`` sets it against its peers);
    ``throttled_s``: the seconds its cgroup (or an ancestor) was throttled by a CPU quota."""
    window_s: float
    oncpu_s: float
    runq_s: float
    states: tuple[tuple[str, int], ...]
    threads_runq_s: float = 0.0
    own_starved: float = 0.0
    throttled_s: float = 0.0

    @property
    def polls(self) -> int:
        return sum(n for _, n in self.states)

    def share(self, kind: str) -> float:
        """The share of polls spent ``kind``: "waiting" (for another thread: the peers),
        "stopped", "blocked" (any other sleep), "running"."""
        return sum(n for state, n in self.states if state_kind(state) == kind) / max(1,
                                                                                   self.polls)

    @property
    def holding(self) -> float:
        """The share of the window not spent waiting for others: what the others wait for."""
        return 1.0 - self.share("waiting") * (1.0 - self.own_starved)

    def parts(self) -> dict[Reason, float]:
        """The window's shares by reason; running split by schedstat into compute and starved,
        and starved too the waits for its own starved threads."""
        running = self.share("running")
        busy = self.oncpu_s + self.runq_s
        starved = running * self.runq_s / busy if busy > 0 else 0.0
        own = self.share("waiting") * self.own_starved
        return {Reason.COMPUTE: running - starved, Reason.STARVED: starved + own,
                Reason.BLOCKED: self.share("blocked"), Reason.STOPPED: self.share("stopped")}

    def channel(self) -> Optional[str]:
        """The wait channel it was blocked in most, outside the collectives."""
        blocked = [(n, state.split(":", 1)[1]) for state, n in self.states
                   if state_kind(state) == "blocked" and ":" in state]
        return max(blocked)[1] if blocked else None

    def seen_running_and_not(self, times: int) -> bool:
        """Seen running and not running, ``times`` polls each at least."""
        running = sum(n for state, n in self.states if state_kind(state) == "running")
        return running >= times and self.polls - running >= times

    @property
    def cycled(self) -> bool:
        """Seen running and not running, twice each, or asleep in two places twice each and
        on a CPU in between (``WOKE_ONCPU_S``: a loop that runs for a millisecond a step, as a
        GPU job's host thread or a padded step does, is rarely seen running): a thread going
        round a loop, not one stuck in one place."""
        asleep = [n for state, n in self.states if state[:1] in "SD" and n >= 2]
        return self.seen_running_and_not(2) or (len(asleep) >= 2
                                                 and self.oncpu_s >= WOKE_ONCPU_S)

    @property
    def moved(self) -> bool:
        """Seen running and not running, once each at least."""
        return self.seen_running_and_not(1)

    @property
    def woke(self) -> bool:
        """Ran ``WOKE_ONCPU_S`` on a CPU at least, whether or not a poll saw it running: a peer
        of a slow rank woken by each of its collectives, or the slow rank itself asleep most of
        each step (the waiters of a hung collective get no CPU at all)."""
        return self.oncpu_s >= WOKE_ONCPU_S

    @property
    def ran_throughout(self) -> bool:
        """Seen running (on a CPU, queued or throttled) at every poll."""
        return self.polls > 0 and self.share("running") == 1.0


def job_progressed(accounts: Sequence[WindowAccount]) -> bool:
    """Did a job move during the window, by its main threads' states and schedstat? One thread
    at least went round its loop (``cycled``) and every other was seen both running and not
    (``moved``: a peer of a slow rank waits most of the window and runs only briefly each step),
    or ran between the polls (``woke``: a waiter of a hung collective gets no CPU), ran
    throughout (computing, or starved of CPU: always runnable), or had its own threads starved
    (a quota on its process: its main thread waits for them): a peer's loop completes
    collectives only if every rank takes part, so a rank that held it up still progressed. A
    rank asleep in one place, or ranks all spinning or all waiting in one place, did not."""
    if not accounts:
        return False
    accounts = with_own_starvation(accounts)
    return any(a.cycled for a in accounts) and all(
        a.moved or a.woke or a.ran_throughout or a.own_starved >= OWN_STARVED_THROUGHOUT
        for a in accounts)


def with_own_starvation(accounts: Sequence[WindowAccount]) -> list[WindowAccount]:
    """Each account with ``own_starved`` set: the share of the window its threads queued for a
    CPU longer than its peers' (median; on a busy host every rank's threads queue, which says
    nothing of who is late)."""
    queued = sorted(a.threads_runq_s for a in accounts)
    return [replace(a, own_starved=min(1.0, max(0.0, (
        a.threads_runq_s - median_without(queued, a.threads_runq_s)) / a.window_s)))
        for a in accounts]


def state_kind(state: str) -> str:
    letter, _, channel = state.partition(":")
    if letter in ("T", "t"):
        return "stopped"
    if letter == "R":
        return "running"
    if letter in ("S", "D") and channel and not channel.startswith(WAITING_CHANNELS):
        return "blocked"
    return "waiting"  # a futex (a collective), or a sleep whose channel is unknown


def channel_meaning(channel: Optional[str]) -> str:
    for prefix, meaning in CHANNEL_MEANINGS:
        if channel and channel.startswith(prefix):
            return f"in {channel}: {meaning}"
    return f"in {channel}" if channel else "asleep"


@dataclass(frozen=True)
class WindowStraggler:
    """A rank the others waited for over the window, and why."""
    rank: int
    host: Optional[str]
    reason: Reason
    share: float  # of the window, spent for that reason
    holding: float  # of the window, not waiting for the others
    peers: float  # the peers' median of holding
    channel: Optional[str] = None  # blocked: the wait channel
    throttled: float = 0.0  # of the window, its cgroup throttled by a CPU quota

    def explanation(self) -> str:
        pct = f"{self.share * 100:.0f}% of the window"
        if self.reason is Reason.STOPPED:
            return f"stopped {pct} (state T: SIGSTOP, a debugger or a sampling profiler)"
        if self.reason is Reason.STARVED:
            why = (f"its cgroup's CPU quota throttled it {self.throttled * 100:.0f}% of the "
                   f"window" if self.throttled >= 0.10 else "runnable but not running: a CPU "
                   "quota, preemption or an oversubscribed host")
            return f"starved of CPU {pct} ({why})"
        if self.reason is Reason.BLOCKED:
            return (f"blocked outside the collectives {pct} ({channel_meaning(self.channel)})")
        return f"computing {pct} (on a CPU longer than its peers)"

    def message(self) -> str:
        where = f" on {self.host}" if self.host else ""
        return (f"rank {self.rank}{where} {self.explanation()}: it held the others up "
                f"{self.holding * 100:.0f}% of the window, its peers {self.peers * 100:.0f}% "
                f"(median)")


def window_stragglers(accounts: Mapping[int, WindowAccount],
                      hosts: Optional[Mapping[int, Optional[str]]] = None,
                      min_excess: float = 0.3, min_ratio: float = 1.5,
                      min_polls: int = 20) -> list[WindowStraggler]:
    """The ranks that spent at least ``min_excess`` of the window more than their peers'
    median not waiting for the others, and whose peers' median wait is ``min_ratio`` x theirs
    at least (at least two ranks, each polled ``min_polls`` times), with the reason that grew
    most over the peers' (their medians, part by part). The ratio is of waits, not of the time
    held: time every rank spends outside the collectives alike (a data loader, a padded step)
    raises everyone's held share and would hide the rank the others wait for. A rank
    throttled by a quota on its whole process still waits on a futex part of the time, for its
    own throttled threads: those waits count as held up, not waiting, in the share of the
    window its threads queued for a CPU longer than its peers' (median; on a busy host every
    rank's threads queue, which says nothing of who is late)."""
    usable = {rank: a for rank, a in accounts.items() if a.polls >= min_polls}
    if len(usable) < 2 or len(usable) != len(accounts):
        return []
    usable = dict(zip(usable, with_own_starvation(list(usable.values()))))
    hosts = hosts or {}
    holding = sorted(a.holding for a in usable.values())
    parts = {rank: a.parts() for rank, a in usable.items()}
    found = []
    for rank, account in sorted(usable.items()):
        peers = median_without(holding, account.holding)
        if account.holding < peers + min_excess or (1 - peers) < min_ratio * (1 - account.holding):
            continue
        excess = {}
        for reason in Reason:
            ordered = sorted(p[reason] for p in parts.values())
            excess[reason] = parts[rank][reason] - median_without(ordered, parts[rank][reason])
        reason = max(Reason, key=lambda r: excess[r])
        found.append(WindowStraggler(rank, hosts.get(rank), reason, parts[rank][reason],
                                     account.holding, peers,
                                     account.channel() if reason is Reason.BLOCKED else None,
                                     min(1.0, account.throttled_s / account.window_s)))
    return found
