"""The Monitor's straggler watch: runs inside the user's training processes.

Per step (``StepClock.sample``, on the training thread, about a microsecond, GIL kept): the wall
time since the previous step boundary, split into *busy* (this thread on a CPU or wanting one:
running, in the run queue, throttled by a cgroup quota: its CPU time plus its recent run-queue
rate from ``/proc/self/task/TID/schedstat``, which the background thread reads each beat) and
*wait* (the rest: in a collective, waiting for the others). How long the process's cgroup (and
its ancestors) were throttled by a CPU quota (``cpu.stat``, ``QuotaClock``, a rate over the last
fifth of a second that the sampler below refreshes every tenth) is that share of a step
*starved* too, and the ``throttled`` rule trusts it sooner than a run-queue delay, which a
neighbour's load also makes.
A second thread (``ThreadSampler``, every 20 ms) reads the training thread's state and wait
channel: asleep outside a futex it is *blocked* outside the collectives (a data loader, I/O, a
sleep), and time the whole process lost (a gap in the sampler's own clock) it was *stopped*;
``sample`` takes both per step, so *wait* is the time in the collectives only.
On a GPU job with NCCL the training thread spins rather than blocks, so there *wait* is the
time the GPU spent in the NCCL collectives the step issued (the process group's completion
hook, credited by each collective's issue time: a straggler's collectives start last and are
the shortest), and busy the rest.

The exchange (``StragglerWatch.tick``, on the Monitor's background thread, never on the
training path): every ``period_s`` (``EXCHANGE_S``, a quarter second, so that a straggler's
late step is judged within a quarter second of it), at the same wall-clock instants on every
rank (the thread sleeps until the next one: their recent windows overlap even when steps take
milliseconds), each rank puts its last steps into torchrun's TCPStore; the leader (rank 0), a
fifth of a period later, reads them all in one ``multi_get``, runs ``identify_stragglers``,
keeps the ranks its ``quick``, ``stopped`` and ``throttled`` rules named at once (the last
two after ``confirmations`` verdicts in a row, if set above 1), those of the ``steady`` rule
once verdicts over ``confirm_s`` (2 s) did (and those already named while late in half the
window), and puts them back; every rank reads the verdict and logs each newly named straggler
once (``ddpcheck.Monitor [h1:rank 0]: straggler: rank 5 on h3 arrives 38 ms after the median,
...``). Without a store (a job not started by torchrun) the ranks of this host compare their
heartbeat files. At 1,000 ranks this is 2,000 small store requests and one ``multi_get`` per
period, which ``period_s`` scales up with the world size (a second at 500 ranks).
"""

from __future__ import annotations

import atexit
import bisect
import json
import logging
import math
import os
import threading
import time
from collections import deque
from dataclasses import replace
from typing import Any, Mapping, MutableMapping, Optional, Sequence

from ..core import heartbeat
from ..core.cgroupcpu import cpu_stat_paths, throttled_s
from ..core.links import HOST_RULE
from ..core.straggler import Thresholds, history_from_rows, identify_stragglers, state_kind
from .links import LinkSampler, link_verdict

HISTORY = 32  # steps each rank keeps and publishes: the window plus slack for publish jitter
SAMPLE_S = 0.02  # how often the sampler reads the training thread's state
QUOTA_EVERY_S = 0.1  # ... and at a poll this long after the last, the quota's rate
QUOTA_WINDOW_S = 0.2  # the rate's span: two CFS periods (a quota is spent per 100 ms period)
SETTLE_S = 0.5  # NCCL: a step is complete this long after it ended, whatever completed
EXCHANGE_S = 0.25  # how often the ranks exchange their steps (at most; more ranks: slower)
VERDICT_KEY = "stragglers/verdict"
ROWS_KEY = "stragglers/rank/"

logger = logging.getLogger("ddpcheck.injob.monitor")


class ThreadSampler:
    """Where the training thread waits, read every ``every_s`` by a thread of its own: its
    state and wait channel (``/proc/self/task/TID/stat`` and ``wchan``, kept open and re-read:
    about 6 us a read). Asleep on a futex it waits for the others (gloo's collectives); asleep
    anywhere else it is *blocked outside the collectives* (a data loader, I/O, a sleep). A
    stopped process stops this thread too: the time it lost, beyond what its own run queue
    or the training thread's explains (the training thread, runnable but throttled or queued,
    holds the GIL this thread waits for), is time the process was *stopped* (SIGSTOP, a
    debugger, a sampling profiler).
    The time since a poll after which this thread had queued for a CPU twice as long as it
    slept, the training thread waiting in a futex, counts as *starved*: a CPU quota on the
    process throttles gloo's threads too, and the training thread waits for them as it would
    for a peer.
    With a ``quota`` (``QuotaClock``) it also refreshes that clock every ``QUOTA_EVERY_S``,
    and owns it while it runs (``polls_quota``: its files are read and re-opened on this
    thread alone), so a quota's first steps take its rate within a tenth of a second (the
    background thread's beat is a quarter second apart).
    The training thread takes the counts of each step at its boundary (``step_shares``)."""

    def __init__(self, stop: threading.Event, every_s: float = SAMPLE_S,
                 quota: Optional["QuotaClock"] = None) -> None:
        self.stop = stop
        self.every_s = every_s
        self.quota = quota
        self.polls_quota = False  # set from start to the end of its thread
        self.tid: Optional[int] = None
        self._lock = threading.Lock()  # guards the channel counts only
        self.polls = 0  # since the last step boundary
        self.blocked = 0
        self.queued_s = 0.0  # seconds it waited in a futex while this thread queued for a CPU
        self.step_queued_s = 0.0  # ... in the last step
        self.stopped_s = 0.0
        self.train_queued_s = 0.0  # seconds the training thread queued for a CPU or was throttled
        self.ended = False  # set when its counts are no longer read (an NCCL clock took over)
        self._channels: dict[str, int] = {}
        self.thread = threading.Thread(target=self._run, name="ddpcheck-sampler", daemon=True)

    def start(self, tid: int) -> None:
        self.tid = tid
        self.polls_quota = self.quota is not None  # before the thread: no refresh overlaps
        self.thread.start()

    def step_shares(self) -> tuple[float, float, float]:
        """On the training thread at a step boundary: (share of the polls since the previous
        boundary it was blocked outside the collectives, seconds the process was stopped
        meanwhile, seconds it queued for a CPU meanwhile, to the last poll). Plain attribute
        reads and writes, no system call: a count lost to a race with the sampler costs one
        poll of accuracy."""
        polls, blocked, stopped = self.polls, self.blocked, self.stopped_s
        train_queued = self.train_queued_s
        self.step_queued_s, self.queued_s = self.queued_s, 0.0
        self.polls = self.blocked = 0
        self.stopped_s = self.train_queued_s = 0.0
        return (blocked / polls if polls else 0.0), stopped, train_queued

    def channel(self) -> Optional[str]:
        """The wait channel it was blocked in most since the last call."""
        with self._lock:
            channels, self._channels = self._channels, {}
        return max(channels, key=channels.__getitem__) if channels else None

    def _run(self) -> None:
        try:
            fds = [os.open(f"/proc/self/task/{self.tid}/{name}", os.O_RDONLY)
                   for name in ("stat", "wchan", "schedstat")]
            own = os.open(f"/proc/self/task/{threading.get_native_id()}/schedstat",
                          os.O_RDONLY)
        except OSError:
            self.polls_quota = False
            return  # no procfs: blocked and stopped time go unseen
        try:
            last, last_runq, last_train = time.monotonic(), _runq_s(own), _runq_s(fds[2])
            quota_at = last
            while not self.stop.wait(self.every_s) and not self.ended:
                if self.quota is not None and time.monotonic() - quota_at >= QUOTA_EVERY_S:
                    quota_at = time.monotonic()  # by the clock: under a quota polls run late
                    self.quota.refresh()
                now, runq, train = time.monotonic(), _runq_s(own), _runq_s(fds[2])
                queued, train_queued = runq - last_runq, train - last_train
                # the training thread runnable but not running (a quota, a busy host) holds
                # the GIL this thread waits for: lost time too, but not a stop
                lost = now - last - self.every_s - max(queued, train_queued)
                self.train_queued_s += train_queued
                since, last, last_runq, last_train = now - last, now, runq, train
                state = _thread_state(fds)
                if state is None:
                    return  # the training thread is gone
                if lost > self.every_s:  # frozen meanwhile, not merely queued
                    self.stopped_s += lost
                self.polls += 1
                kind = state_kind(state)
                if kind == "waiting" and queued >= 2 * self.every_s:  # not a busy host's 20 ms
                    self.queued_s += since  # waiting for its own threads, starved like this one
                if kind == "blocked":
                    self.blocked += 1
                    channel = state.split(":", 1)[1]
                    with self._lock:
                        self._channels[channel] = self._channels.get(channel, 0) + 1
        finally:
            self.polls_quota = False
            for fd in fds + [own]:
                os.close(fd)


def _runq_s(fd: int) -> float:
    try:
        return int(os.pread(fd, 128, 0).split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return 0.0


def _thread_state(fds: list[int]) -> Optional[str]:
    """"R", "S:futex_do_wait", ... of a thread from its open stat and wchan files."""
    try:
        state = os.pread(fds[0], 1024, 0).rsplit(b")", 1)[1].split()[0].decode()
        if state in ("S", "D"):
            channel = os.pread(fds[1], 128, 0).decode(errors="replace").strip()
            if channel and channel != "0":
                return f"{state}:{channel[:60]}"
        return state
    except (OSError, IndexError):
        return None


class QuotaClock:
    """How long this process's cgroups were throttled by a CPU quota, as a recent rate (seconds
    throttled per second, since the latest refresh at least ``window_s`` before the last; the
    previous one where none is that old): the largest over its own CPU cgroup and each
    ancestor. Each refresh re-reads ``/proc/self/cgroup`` (a process may be moved into a
    limited group while it runs) and finds the ``cpu.stat`` files again when it changed; the
    files stay open between refreshes (one ``pread`` each). Where there is no quota anywhere,
    or procfs and the cgroup files cannot be read, the rate is 0. One thread at a time
    refreshes it."""

    def __init__(self, window_s: float = QUOTA_WINDOW_S) -> None:
        self.window_s = window_s
        self.rate = 0.0
        self._cgroup_fd: Optional[int] = None
        self._cgroup = b""
        self._fds: list[int] = []
        self._samples: deque[tuple[float, list[Optional[float]]]] = deque()

    def refresh(self) -> None:
        try:
            if self._cgroup_fd is None:
                self._cgroup_fd = os.open("/proc/self/cgroup", os.O_RDONLY)
            cgroup = os.pread(self._cgroup_fd, 65536, 0)
            if cgroup != self._cgroup:
                with open("/proc/self/mountinfo", encoding="utf-8") as handle:
                    paths = cpu_stat_paths(cgroup.decode("utf-8", "replace"), handle.read())
                self._close_stats()
                self._fds = [fd for fd in map(_open_or_none, paths) if fd is not None]
                self._cgroup, self.rate = cgroup, 0.0
                self._samples.clear()
        except OSError:
            return
        now = time.monotonic()
        totals = [_throttled_of(fd) for fd in self._fds]
        samples = self._samples
        while len(samples) > 1 and now - samples[1][0] >= self.window_s:
            samples.popleft()  # the newest that still spans the window stays first
        samples.append((now, totals))
        if len(samples) < 2 or now <= samples[0][0]:
            return
        since, before = samples[0]
        rates = [(total - then) / (now - since) for total, then in zip(totals, before)
                 if total is not None and then is not None]
        self.rate = min(1.0, max(0.0, max(rates, default=0.0)))

    def _close_stats(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []

    def close(self) -> None:
        self._close_stats()
        if self._cgroup_fd is not None:
            os.close(self._cgroup_fd)
            self._cgroup_fd = None


def _open_or_none(path: str) -> Optional[int]:
    try:
        return os.open(path, os.O_RDONLY)
    except OSError:
        return None


def _throttled_of(fd: int) -> Optional[float]:
    try:
        return throttled_s(os.pread(fd, 4096, 0).decode("ascii", "replace"))
    except OSError:
        return None


class StepClock:
    """The training thread's busy time per step, and the rows [step, time, busy, wait,
    starved, blocked, stopped, throttled] of its last steps.

    Per step (``sample``, on the training thread) only clocks that keep the GIL are read: the
    thread's CPU time (``time.thread_time``) and the wall clock. Any system call that releases
    the GIL would let the Monitor's thread in at that point of every step, and on a busy
    machine a thread descheduled while holding the GIL stalls the step. The time the thread
    spent *runnable but not running* (run queue, or throttled by a CPU quota: what a slowed
    rank shows) comes from ``/proc/self/task/TID/schedstat``, read by the background thread
    each beat (``refresh``) as a rate, and is added to each step in proportion to its length,
    or as the sampler saw it grow over the step (every 20 ms) when that is more: a load or a
    quota newer than the rate; so is the time its cgroups were throttled (``QuotaClock``'s
    rate, refreshed by the sampler while it runs, else each beat).
    ``environ``: the process's environment, where NCCL is asked to time its collectives
    (``ask_nccl_timing``) for ``collectives``.
    """

    def __init__(self, environ: Optional[MutableMapping[str, str]] = None) -> None:
        if environ is not None:
            ask_nccl_timing(environ)
        self.rows: deque[list[Any]] = deque(maxlen=HISTORY)
        self.tid: Optional[int] = None  # the training thread (the one calling sample)
        self.runq_rate = 0.0  # seconds runnable-not-running per second, recently
        self.quota = QuotaClock()  # seconds its cgroups were throttled per second, recently
        self._runq_last: Optional[tuple[float, float]] = None  # (monotonic, runq seconds)
        self._last: Optional[tuple[float, float]] = None  # (monotonic, thread_time)
        self.collectives: Optional[CollectiveLog] = None  # NCCL: its collectives' GPU time
        # NCCL: each step's (start, end, row), its row's wait credited as its collectives
        # complete; the leftover collectives issued after the last step ended; and the latest
        # issue time of a completed collective (the steps that ended before it are complete)
        self._spans: deque[tuple[float, float, list[Any]]] = deque(maxlen=HISTORY)
        self._unplaced: list[tuple[float, float]] = []
        self._settled = -math.inf
        self.sampler: Optional[ThreadSampler] = None
        self.channel: Optional[str] = None  # where it was blocked most, recently

    def refresh(self) -> None:
        """Background thread: the training thread's recent run-queue rate (0 where schedstat
        is unavailable: then a CPU quota goes unseen, CPU time still counts). Not on NCCL,
        where the collectives' GPU time splits the step and none of these is read."""
        if self.tid is None or self.collectives is not None:
            return
        if self.sampler is not None:
            self.channel = self.sampler.channel() or self.channel
        if self.sampler is None or not self.sampler.polls_quota:
            self.quota.refresh()
        try:
            with open(f"/proc/self/task/{self.tid}/schedstat", encoding="ascii") as handle:
                runq = int(handle.read().split()[1]) / 1e9
        except (OSError, ValueError, IndexError):
            return
        now = time.monotonic()
        if self._runq_last is not None and now > self._runq_last[0]:
            self.runq_rate = min(1.0, max(0.0, (runq - self._runq_last[1]) /
                                          (now - self._runq_last[0])))
        self._runq_last = (now, runq)

    def sample(self, step: int, now: float) -> None:
        mark = time.monotonic()  # CLOCK_MONOTONIC: the clock NCCL's steady_clock reads too
        cpu = time.thread_time()
        if self.tid is None:
            self.tid = threading.get_native_id()
        last, self._last = self._last, (mark, cpu)
        if last is None:
            return
        wall = mark - last[0]
        if self.collectives is not None:  # NCCL: the thread spins; ``recent`` credits the wait
            row = [step, round(now, 6), round(wall, 6), 0.0, 0.0, 0.0, 0.0, 0.0]
            self._spans.append((last[0], mark, row))
            return
        blocked_share, stopped, queued = (self.sampler.step_shares() if self.sampler
                                          else (0.0, 0.0, 0.0))
        stopped = min(stopped, wall)
        # the recent rate (refreshed each beat), or what the sampler saw it queue this step
        # when more (a load or quota newer than the rate)
        starved = min(max(self.runq_rate * wall, queued), wall - stopped)
        busy_s = min(max(cpu - last[1], 0.0) + starved, wall - stopped)
        blocked = min(blocked_share * (wall - stopped), wall - stopped - busy_s)
        # waiting in a futex while its process queued for a CPU (a quota on the process
        # throttles gloo's threads too): waiting for its own threads, starved
        own = min(self.sampler.step_queued_s if self.sampler else 0.0,
                  wall - stopped - busy_s - blocked)
        starved, busy_s = starved + own, busy_s + own
        # its cgroup throttled meanwhile: held by its quota, not waiting for the others
        throttled = min(self.quota.rate * wall, wall - stopped)
        more = min(max(throttled - starved, 0.0), wall - stopped - busy_s - blocked)
        starved, busy_s = starved + more, busy_s + more
        wait = wall - stopped - busy_s - blocked  # in the collectives: for the others
        self.rows.append([step, round(now, 6), round(busy_s, 6), round(wait, 6),
                          round(starved, 6), round(blocked, 6), round(stopped, 6),
                          round(throttled, 6)])

    def attach(self, collectives: "CollectiveLog") -> None:
        """NCCL: from now on a step's wait is the GPU time of the collectives issued in it."""
        collectives.take()  # those issued before: their steps were timed without them
        self.collectives = collectives
        if self.sampler is not None:  # its thread's polls would go unread
            self.sampler.ended = True

    def recent(self) -> list[list[Any]]:
        """The last steps' rows (background thread). On NCCL, the collectives completed since
        the last call are credited to the steps that issued them, and only complete steps are
        given: those that ended before a completed collective was issued (one group's
        collectives complete in the order they were issued), or ``SETTLE_S`` ago (a step
        whose collectives ran on another group). The hook runs when NCCL's watchdog finds a
        collective done, up to a poll (100 ms) later: steps shorter than that would otherwise
        get the wait of a step before."""
        if self.collectives is None:
            return list(self.rows)
        done = self.collectives.take()
        if done:
            self._settled = max(self._settled, max(started for started, _ in done))
        spans = list(self._spans)
        added, unplaced = credit_collectives([(start, end) for start, end, _ in spans],
                                             self._unplaced + done)
        self._unplaced = unplaced[-HISTORY * 64:]  # a job that stopped calling step()
        for (start, end, row), seconds in zip(spans, added):
            if seconds:
                wall = end - start
                row[3] = round(min(row[3] + seconds, wall), 6)
                row[2] = round(wall - row[3], 6)
        settled = max(self._settled, time.monotonic() - SETTLE_S)
        return [row for _, end, row in spans if end <= settled]

    def close(self) -> None:
        self.quota.close()


NCCL_TIMING_ENV = "TORCH_NCCL_ENABLE_TIMING"


def ask_nccl_timing(environ: MutableMapping[str, str]) -> None:
    """Before the job creates its process group: ask ProcessGroupNCCL to time every collective
    with CUDA events (``TORCH_NCCL_ENABLE_TIMING=1``, read when a group is created), which its
    completion hook needs (``nccl_collective_log``). A value the job set stays; a group that is
    already up is left alone (its collectives are not timed, so it gets no hook)."""
    if not _group_up():
        environ.setdefault(NCCL_TIMING_ENV, "1")


def credit_collectives(spans: Sequence[tuple[float, float]],
                       collectives: Sequence[tuple[float, float]]
                       ) -> tuple[list[float], list[tuple[float, float]]]:
    """Pure: the seconds of ``collectives`` ((issued at, seconds) each) that fall to each of
    ``spans`` ((start, end) of consecutive steps, in order) by when each was issued; and the
    collectives issued after the last span ended (their step has not ended: kept for the next
    call). Those issued before the first span are dropped (their step left the history)."""
    added = [0.0] * len(spans)
    ends = [end for _, end in spans]
    later = []
    for started, seconds in collectives:
        if not spans or started >= ends[-1]:
            later.append((started, seconds))
        elif started >= spans[0][0]:
            added[bisect.bisect_right(ends, started)] += seconds
    return added, later


class CollectiveLog:
    """An NCCL process group's completed collectives, from its completion hook (NCCL's hook
    thread appends, the Monitor's thread takes): (issued at, on the monotonic clock; seconds
    the GPU spent in it) each. ``WorkInfo.time_started`` is the host's issue time
    (``_monotonic_of``), and ``active_duration`` the CUDA-event time from the collective's
    start to its end."""

    def __init__(self, keep: int = 4096) -> None:
        self.done: deque[tuple[float, float]] = deque(maxlen=keep)

    def completed(self, info: Any) -> None:
        try:
            started = _monotonic_of(info.time_started)
            self.done.append((started, _seconds(info.active_duration)))
        except (AttributeError, TypeError, ValueError, OverflowError):
            return  # never raise on NCCL's hook thread: a record lost is a step less judged

    def take(self) -> list[tuple[float, float]]:
        taken = []
        while self.done:
            taken.append(self.done.popleft())
        return taken


def _seconds(value: Any) -> float:
    return value.total_seconds() if hasattr(value, "total_seconds") else float(value)


def _monotonic_of(started: Any) -> float:
    """A collective's issue time on the monotonic clock. Recent torch (2.13 here) gives the
    steady_clock time point (a timedelta since its epoch: CLOCK_MONOTONIC); releases before
    late 2025 converted it to the system clock (a naive local datetime), taken back here."""
    if hasattr(started, "timestamp"):
        return time.monotonic() - (time.time() - started.timestamp())
    return _seconds(started)


def nccl_collective_log(warn: bool = True) -> Optional[CollectiveLog]:
    """On an NCCL default group: the log of its completed collectives (from the process
    group's completion hook), else None. Only when the job already imported torch.
    The hook needs every collective timed with CUDA events: ProcessGroupNCCL refuses it
    otherwise, and turning timing on (``_enable_collectives_timing``) while collectives are in
    flight is worse: the hook then reads an untimed one and the group aborts its communicators.
    So the hook is registered only on a group created with timing on (``ask_nccl_timing``,
    or the job's own ``TORCH_NCCL_ENABLE_TIMING``/``NCCL_ENABLE_TIMING``, any of the values
    NCCL takes for true, or desync debugging): ProcessGroupNCCL refuses it with a ValueError
    on any other, before it stores anything. NCCL takes one completion hook per
    group: when the job registered its own first, this returns None. Without the hook the
    busy/wait split falls back to schedstat, which on a GPU sees every rank busy: nobody is
    named (``warn``: say so in the log, once per job from one rank)."""
    import sys

    dist = sys.modules.get("torch.distributed")
    torch = sys.modules.get("torch")
    if dist is None or torch is None or not dist.is_available() or not dist.is_initialized():
        return None
    try:
        backend = str(dist.get_backend())
        if "nccl" not in backend and backend != "undefined":  # "cpu:gloo,cuda:nccl" counts
            return None
        group = dist.distributed_c10d._get_default_group()
        log = CollectiveLog()
        try:
            group._register_on_completion_hook(log.completed)
        except ValueError:  # ProcessGroupNCCL: the group's collectives are not timed
            if warn:
                logger.warning(
                    "ddpcheck monitor: the NCCL process group was created without %s=1, so its "
                    "collectives are not timed and stragglers cannot be told on the GPU: create "
                    "the Monitor before init_process_group, or set it", NCCL_TIMING_ENV)
            return None
        atexit.register(_drain_hooks, group)
        return log
    except Exception as exc:  # noqa: BLE001 - an older torch, a group without NCCL: schedstat
        logger.debug("ddpcheck monitor: no NCCL completion hook (%s)", exc)
        return None


def _drain_hooks(group: Any, timeout_s: float = 10.0) -> None:
    """At exit: let the group's completion hooks run before the interpreter goes (a Python hook
    called after it would crash the process; torch waits for them only in
    ``destroy_process_group``, which many jobs never call). A collective that never completes
    does not hold the exit longer than ``timeout_s``."""
    wait = getattr(group, "_wait_for_pending_works", None)
    if wait is None:
        return
    waiter = threading.Thread(target=wait, daemon=True)
    waiter.start()
    waiter.join(timeout_s)


def _group_up() -> bool:
    import sys

    dist = sys.modules.get("torch.distributed")
    try:
        return bool(dist is not None and dist.is_available() and dist.is_initialized())
    except Exception:  # noqa: BLE001 - advisory
        return False


class StragglerWatch:
    """The background half: publish, judge (leader), read the verdict, log new names."""

    def __init__(self, monitor: Any, thresholds: Thresholds, store: Any,
                 period_s: Optional[float] = None) -> None:
        self.monitor = monitor
        self.thresholds = thresholds
        self.store = store
        world = monitor.world_size or 1
        self.period_s = period_s or max(EXCHANGE_S, world / 500.0)
        # the leader reads a fifth of a period after the others publish (50 ms: a store
        # request takes about a millisecond; more ranks, a longer period): their rows of that
        # instant are in the store; a rank whose clock or store is later is judged on the rows
        # it put a period before
        self.offset_s = self.period_s / 5 if monitor.rank == 0 and store is not None else 0.0
        self.next_at = self._next_instant(time.time())
        self.named: dict[int, dict[str, Any]] = {}
        self.streak: dict[int, int] = {}  # leader: consecutive verdicts that named each rank
        self.named_ranks: set[int] = set()  # leader: the ranks its verdicts name now
        self.hooked = False
        self.verdict_seen = False
        self.seen_keys: set[str] = set()
        self.links = LinkSampler()

    def _next_instant(self, now: float) -> float:
        return (math.floor((now - self.offset_s) / self.period_s) + 1) * self.period_s + \
            self.offset_s

    def due(self) -> bool:
        return time.time() >= self.next_at

    def tick(self) -> None:
        """One period: publish, judge, log. Called on every beat; acts when due."""
        now = time.time()
        if now < self.next_at:
            return
        self.next_at = self._next_instant(now)
        monitor = self.monitor
        clock = monitor.clock
        if not self.hooked and _group_up():  # the group may come up after the Monitor: once
            self.hooked = True
            collectives = nccl_collective_log(warn=monitor.rank == 0)
            if collectives is not None:
                clock.attach(collectives)
        clock.refresh()
        if clock.sampler is None and clock.tid is not None and clock.collectives is None \
                and hasattr(monitor, "_stop"):
            clock.sampler = ThreadSampler(monitor._stop, quota=clock.quota)
            clock.sampler.start(clock.tid)
        rows = monitor.clock.recent()
        if self.store is not None:
            self.store.set(f"{ROWS_KEY}{monitor.rank}", json.dumps(
                {"host": monitor.hostname, "rows": rows, "channel": clock.channel,
                 "links": self.links.sample(now)},
                separators=(",", ":")))
            if monitor.rank == 0:
                # the others' rows may be a period old: judging the steps all have covers it
                verdict = self._confirmed(*self._judge(self._read_store()))
                self.store.set(VERDICT_KEY, json.dumps(verdict, separators=(",", ":")))
            elif self.verdict_seen or self.store.check([VERDICT_KEY]):
                self.verdict_seen = True  # from then on one round trip (a get would wait)
                verdict = json.loads(self.store.get(VERDICT_KEY))
            else:
                verdict = []
        else:
            verdict = self._confirmed(*self._judge(self._read_files()))
        self._log(verdict)

    def _confirmed(self, verdict: list[dict[str, Any]],
                   staying: Sequence[dict[str, Any]] = ()) -> list[dict[str, Any]]:
        """The stragglers of enough verdicts in a row: by the ``steady`` rule, verdicts
        spanning ``confirm_s`` (a rank starved for half a second by a neighbour is late in 10
        short steps, but not for seconds on end), and so a slow ``link`` alone (a neighbour's
        load on a host's CPUs slows its network work too); by ``stopped`` and ``throttled``,
        ``confirmations`` verdicts (one by default: no neighbour stops a process or throttles
        its cgroup); by ``quick`` and a slow host's ``network``, one (their evidence already
        spans several steps, or every link of the host, by a large margin). A rank already
        named stays named while it is late in half the window (``staying``), so that a
        straggler late in 8 steps of 10 now and then is not named and released by turns."""
        thresholds = self.thresholds
        # steady: agreeing for confirm_s, as long as a neighbour's burst could starve a rank
        steady = max(thresholds.confirmations, 1 + math.ceil(thresholds.confirm_s /
                                                             self.period_s))
        entries = {int(entry["rank"]): entry for entry in staying
                   if int(entry["rank"]) in self.named_ranks}
        entries.update({int(entry["rank"]): entry for entry in verdict})
        self.streak = {rank: self.streak.get(rank, 0) + 1 for rank in entries}
        needed = {"quick": 1, HOST_RULE: 1, "stopped": thresholds.confirmations,
                  "throttled": thresholds.confirmations}
        self.named_ranks = {rank for rank, entry in entries.items() if rank in self.named_ranks
                            or self.streak[rank] >= needed.get(entry.get("rule"), steady)}
        return [entry for rank, entry in sorted(entries.items()) if rank in self.named_ranks]

    def _read_store(self) -> dict[int, dict[str, Any]]:
        world = self.monitor.world_size or 1
        keys = [f"{ROWS_KEY}{rank}" for rank in range(world)]
        if len(self.seen_keys) < world:  # until every rank has published once
            self.seen_keys.update(k for k in keys if k not in self.seen_keys and
                                  self.store.check([k]))
            keys = [k for k in keys if k in self.seen_keys]
        if not keys:
            return {}
        values = self.store.multi_get(keys)
        return {int(key[len(ROWS_KEY):]): json.loads(value) for key, value in zip(keys, values)}

    def _read_files(self) -> dict[int, dict[str, Any]]:
        folder = os.path.dirname(self.monitor.path)
        return {rank: {"host": beat.get("host"), "rows": heartbeat.history(beat)}
                for rank, beat in heartbeat.read_job_folder(folder).items()}

    def _judge(self, entries: dict[int, dict[str, Any]]) -> tuple[list[dict[str, Any]],
                                                                   list[dict[str, Any]]]:
        """(the stragglers by the thresholds, the ranks late in at least half the window)."""
        history = history_from_rows({rank: e.get("rows") for rank, e in entries.items()})
        # judge the steps every publishing rank has: a rank that stopped is hang's business
        latest = min((max(s.step for s in samples) for samples in history.values()),
                     default=None)
        if latest is None:
            return [], []
        history = {rank: [s for s in samples if s.step <= latest]
                   for rank, samples in history.items()}
        hosts = {rank: e.get("host") for rank, e in entries.items()}
        channels = {rank: e.get("channel") for rank, e in entries.items()}
        half = replace(self.thresholds, min_steps=max(1, self.thresholds.window // 2))
        late = identify_stragglers(history, hosts, self.thresholds, channels)
        # a slow network: the rows cannot show it (a late rank's links wait for it: not judged)
        links = link_verdict(entries, {s.host for s in late if s.host})
        return ([s.as_dict() for s in late] + links,
                [s.as_dict() for s in identify_stragglers(history, hosts, half, channels)])

    def _log(self, verdict: list[dict[str, Any]]) -> None:
        monitor = self.monitor
        current = {int(entry["rank"]): entry for entry in verdict}
        monitor.stragglers = list(current.values())
        for rank in list(self.named):
            if rank not in current:
                del self.named[rank]  # recovered: log again if it comes back
        for rank, entry in sorted(current.items()):
            if rank in self.named and self.named[rank].get("reason") == entry.get("reason"):
                continue  # logged once per episode (and again when its reason changes)
            self.named[rank] = entry
            message = (f"ddpcheck.Monitor [{monitor.hostname}:rank {monitor.rank}]: straggler: "
                       f"{entry['message']}")
            monitor.warnings.append(message)
            logger.warning(message)
        # the next heartbeat carries the stragglers as they were logged: ddpcheck hang repeats
        # the Monitor's words, not a later exchange's numbers
        monitor.straggler_verdict = [self.named[rank] for rank in sorted(current)]
