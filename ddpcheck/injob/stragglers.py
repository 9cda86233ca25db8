"""The Monitor's straggler watch: runs inside the user's training processes.

Per step (``StepClock.sample``, on the training thread, about a microsecond, GIL kept): the wall
time since the previous step boundary, split into *busy* (this thread on a CPU or wanting one:
running, in the run queue, throttled by a cgroup quota: its CPU time plus its recent run-queue
rate from ``/proc/self/task/TID/schedstat``, which the background thread reads each beat) and
*wait* (blocked: in a collective, waiting for the others).
On a GPU job with NCCL the training thread spins rather than blocks, so there *wait* is the
time the GPU spent in NCCL collectives (the process group's completion hook: a straggler's
collectives start last and are the shortest), and busy the rest.

The exchange (``StragglerWatch.tick``, on the Monitor's background thread, never on the
training path): every ``period_s``, at the same wall-clock instants on every rank (so their
recent windows overlap even when steps take milliseconds), each rank puts its last steps into
torchrun's TCPStore; the leader (rank 0) reads them all in one ``multi_get``, runs
``identify_stragglers``, keeps the ranks named by ``confirmations`` (3) verdicts in a row and
puts them back; every rank reads the verdict and logs each
newly named straggler once (``ddpcheck.Monitor [h1:rank 0]: straggler: rank 5 on h3 arrives
38 ms after the median, ...``). Without a store (a job not started by torchrun) the ranks of
this host compare their heartbeat files. At 1,000 ranks this is 2,000 small store requests and
one ``multi_get`` per period, which ``period_s`` scales up with the world size.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from collections import deque
from typing import Any, Callable, Optional

from ..core import heartbeat
from ..core.straggler import Thresholds, history_from_rows, identify_stragglers

HISTORY = 32  # steps each rank keeps and publishes: the window plus slack for publish jitter
VERDICT_KEY = "stragglers/verdict"
ROWS_KEY = "stragglers/rank/"

logger = logging.getLogger("ddpcheck.injob.monitor")


class StepClock:
    """The training thread's busy time per step, and the rows [step, time, busy, wait,
    starved] of its last steps.

    Per step (``sample``, on the training thread) only clocks that keep the GIL are read: the
    thread's CPU time (``time.thread_time``) and the wall clock. Any system call that releases
    the GIL would let the Monitor's thread in at that point of every step, and on a busy
    machine a thread descheduled while holding the GIL stalls the step. The time the thread
    spent *runnable but not running* (run queue, or throttled by a CPU quota: what a slowed
    rank shows) comes from ``/proc/self/task/TID/schedstat``, read by the background thread
    each beat (``refresh``) as a rate, and is added to each step in proportion to its length.
    """

    def __init__(self) -> None:
        self.rows: deque[list[Any]] = deque(maxlen=HISTORY)
        self.tid: Optional[int] = None  # the training thread (the one calling sample)
        self.runq_rate = 0.0  # seconds runnable-not-running per second, recently
        self._runq_last: Optional[tuple[float, float]] = None  # (monotonic, runq seconds)
        self._last: Optional[tuple[float, float]] = None  # (perf_counter, thread_time)
        self.collective_s: Optional[Callable[[], float]] = None  # NCCL: seconds in collectives
        self._last_collective = 0.0

    def refresh(self) -> None:
        """Background thread: the training thread's recent run-queue rate (0 where schedstat
        is unavailable: then a CPU quota goes unseen, CPU time still counts)."""
        if self.tid is None:
            return
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
        mark = time.perf_counter()
        cpu = time.thread_time()
        if self.tid is None:
            self.tid = threading.get_native_id()
        last, self._last = self._last, (mark, cpu)
        collective = self.collective_s() if self.collective_s is not None else None
        if collective is not None:
            spent, self._last_collective = collective - self._last_collective, collective
        if last is None:
            return
        wall = mark - last[0]
        starved = 0.0
        if collective is not None:  # NCCL: the thread spins; the GPU's collective time is wait
            wait = min(max(spent, 0.0), wall)
            busy_s = wall - wait
        else:
            starved = min(self.runq_rate * wall, wall)
            busy_s = min(max(cpu - last[1], 0.0) + starved, wall)
            wait = wall - busy_s
        self.rows.append([step, round(now, 6), round(busy_s, 6), round(wait, 6),
                          round(starved, 6)])

    def attach(self, collective_s: Callable[[], float]) -> None:
        self._last_collective = collective_s()
        self.collective_s = collective_s

    def recent(self) -> list[list[Any]]:
        return list(self.rows)

    def close(self) -> None:
        pass


def nccl_collective_clock() -> Optional[Callable[[], float]]:
    """On an NCCL default group: a running total of the GPU time its collectives took (from the
    process group's completion hook), else None. Only when the job already imported torch.
    NCCL takes one completion hook per group: when the job registered its own first, this
    returns None (and the busy/wait split falls back to schedstat, which on a GPU sees every
    rank busy: nobody is named)."""
    import sys

    dist = sys.modules.get("torch.distributed")
    torch = sys.modules.get("torch")
    if dist is None or torch is None or not dist.is_available() or not dist.is_initialized():
        return None
    try:
        if dist.get_backend() != "nccl":
            return None
        group = dist.distributed_c10d._get_default_group()
        total = [0.0]

        def completed(info: Any) -> None:
            duration = getattr(info, "active_duration", None)
            if duration is not None:
                total[0] += duration.total_seconds() if hasattr(duration, "total_seconds") \
                    else float(duration)

        group._register_on_completion_hook(completed)
        return lambda: total[0]
    except Exception as exc:  # noqa: BLE001 - an older torch: the schedstat clock is used
        logger.debug("ddpcheck monitor: no NCCL completion hook (%s)", exc)
        return None


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
        self.period_s = period_s or max(monitor.beat_s, world / 500.0)
        self.next_at = self._next_instant(time.time())
        self.named: dict[int, dict[str, Any]] = {}
        self.streak: dict[int, int] = {}  # leader: consecutive verdicts that named each rank
        self.hooked = False
        self.verdict_seen = False
        self.seen_keys: set[str] = set()

    def _next_instant(self, now: float) -> float:
        return (math.floor(now / self.period_s) + 1) * self.period_s

    def due(self) -> bool:
        return time.time() >= self.next_at

    def tick(self) -> None:
        """One period: publish, judge, log. Called on every beat; acts when due."""
        now = time.time()
        if now < self.next_at:
            return
        self.next_at = self._next_instant(now)
        monitor = self.monitor
        monitor.clock.refresh()
        if not self.hooked and _group_up():  # the group may come up after the Monitor: once
            self.hooked = True
            collective_s = nccl_collective_clock()
            if collective_s is not None:
                monitor.clock.attach(collective_s)
        rows = monitor.clock.recent()
        if self.store is not None:
            self.store.set(f"{ROWS_KEY}{monitor.rank}", json.dumps(
                {"host": monitor.hostname, "rows": rows}, separators=(",", ":")))
            if monitor.rank == 0:
                # the others' rows may be a period old: judging the steps all have covers it
                verdict = self._confirmed(self._judge(self._read_store()))
                self.store.set(VERDICT_KEY, json.dumps(verdict, separators=(",", ":")))
            elif self.verdict_seen or self.store.check([VERDICT_KEY]):
                self.verdict_seen = True  # from then on one round trip (a get would wait)
                verdict = json.loads(self.store.get(VERDICT_KEY))
            else:
                verdict = []
        else:
            verdict = self._confirmed(self._judge(self._read_files()))
        self._log(verdict)

    def _confirmed(self, verdict: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The stragglers of ``confirmations`` verdicts in a row: a rank starved for half a
        second by a neighbour is late in 10 short steps, but not for seconds on end."""
        ranks = {int(entry["rank"]) for entry in verdict}
        self.streak = {rank: self.streak.get(rank, 0) + 1 for rank in ranks}
        return [entry for entry in verdict
                if self.streak[int(entry["rank"])] >= self.thresholds.confirmations]

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

    def _judge(self, entries: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
        history = history_from_rows({rank: e.get("rows") for rank, e in entries.items()})
        # judge the steps every publishing rank has: a rank that stopped is hang's business
        latest = min((max(s.step for s in samples) for samples in history.values()),
                     default=None)
        if latest is None:
            return []
        history = {rank: [s for s in samples if s.step <= latest]
                   for rank, samples in history.items()}
        hosts = {rank: e.get("host") for rank, e in entries.items()}
        return [s.as_dict() for s in identify_stragglers(history, hosts, self.thresholds)]

    def _log(self, verdict: list[dict[str, Any]]) -> None:
        monitor = self.monitor
        current = {int(entry["rank"]): entry for entry in verdict}
        monitor.stragglers = list(current.values())
        monitor.straggler_verdict = monitor.stragglers  # the next heartbeat carries it
        for rank in list(self.named):
            if rank not in current:
                del self.named[rank]  # recovered: log again if it comes back
        for rank, entry in sorted(current.items()):
            if rank in self.named:
                continue
            self.named[rank] = entry
            message = (f"ddpcheck.Monitor [{monitor.hostname}:rank {monitor.rank}]: straggler: "
                       f"{entry['message']}")
            monitor.warnings.append(message)
            logger.warning(message)
