"""In-job heartbeat and watchdog: ``ddpcheck.Monitor``, the job's side of ``ddpcheck hang``.

    monitor = ddpcheck.Monitor()              # or Monitor(watchdog_s=60) for stall warnings
    for step, batch in enumerate(loader):
        ...
        monitor.step(step)

``step()`` records the step; this rank's heartbeat, a small JSON file (step, time, collective
sequence number when a process group is up, host, pid), is written atomically (write, then
rename) to ``$DDPCHECK_HEARTBEAT_DIR/<job>/rank-<rank>.json`` (default
``/dev/shm/ddpcheck-heartbeat-<uid>``, the temp dir without /dev/shm; ``<job>`` is torchrun's run
id and master address, so two jobs never share files). The write is the background thread's,
within ``write_every_s`` of a new step (a write and rename take tens of microseconds on tmpfs and
up to milliseconds on a disk, where a rename over a file flushes it: at steps as long as
``write_every_s`` the training thread would pay that every step), so ``step()`` costs a few
microseconds however long or short the step; ``write_every_s=0`` writes in ``step()``, every
step. Every ``beat_s`` the thread also writes the *current* collective sequence number, so a rank
waiting in collective N+1 is told apart from one that never got past N. Only a stopped or dead
process can leave a step unwritten, and ``ddpcheck hang`` sees those by their process state.
``ddpcheck hang`` (its host scan) reads these files.

With ``watchdog_s``, the same thread also publishes (step, beat) of this rank to torchrun's
TCPStore every few seconds and, when this rank has made no step for ``watchdog_s`` seconds, reads
every rank's entry twice and logs a warning on every live rank naming the ranks that stopped
answering or are behind, long before NCCL's 10-minute timeout. Without a store (a job not started
by torchrun) it compares the heartbeat files of this host.

Stragglers (on by default, ``stragglers=False`` turns it off): ``step()`` also splits the time
since the previous step into this rank's busy time and its time waiting for the others, keeps
the last steps in the heartbeat (``history``, the format is ``ddpcheck.core.heartbeat``'s), and
the background thread exchanges them through the TCPStore (see ``ddpcheck.injob.stragglers``):
a rank consistently last to arrive is logged on every rank as a ``straggler`` warning, with its
reason, listed in ``monitor.stragglers`` and carried in the heartbeat (``stragglers``), so that
``ddpcheck hang`` says the same. ``straggler_thresholds`` (a
``ddpcheck.core.straggler.Thresholds``) sets the margins.

Numerics (``numerics_every=N``): every N steps a few-millisecond canary product on every rank,
compared through the TCPStore; a device that computes wrong is logged as a ``numerics`` warning
(``monitor.numerics``, see ``ddpcheck.injob.numerics``, which hooks it onto ``step()``) and
carried in the judging rank's heartbeat (``numerics``), so that ``ddpcheck hang`` reports it.

Torch-light: only the standard library is imported here; torch is touched only when the job has
already imported it (``import ddpcheck`` stays cheap, and the probe stays stdlib + torch).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import threading
import time
from typing import Any, Callable, Mapping, Optional

from ..core import heartbeat
from ..core.straggler import Thresholds
from ..model import safety
from .numerics import attach_canary
from .stragglers import StepClock, StragglerWatch

STORE_PREFIX = "ddpcheck/monitor/"

logger = logging.getLogger("ddpcheck.injob.monitor")


def _env_int(env: Mapping[str, str], name: str) -> Optional[int]:
    try:
        return int(env[name])
    except (KeyError, ValueError):
        return None


def make_heartbeat_dirs(root: str, job_dir: str, default: bool) -> None:
    """Create the heartbeat folders (0700) and refuse ones another user controls
    (``safety.place_problem``, raising ``safety.UnsafePlace``): in a shared /dev/shm or /tmp
    nobody else may plant our heartbeat folder (or a symlink in its place) or read it. The
    default per-user root must be private itself; a root the user named may be shared (a
    sticky /dev/shm, say) as long as the job's folder in it is ours."""
    if default:
        safety.make_private_dir(root, "heartbeat folder")
    else:
        os.makedirs(root, exist_ok=True)
    safety.make_private_dir(job_dir, "heartbeat folder")


# -- the monitor -------------------------------------------------------------------------------

class Monitor:
    """Per-rank heartbeat for ``ddpcheck hang`` and an optional stall watchdog.

    ``directory``: heartbeat root (default ``$DDPCHECK_HEARTBEAT_DIR`` or a per-user folder in
    the temp dir). ``watchdog_s``: warn when this rank has made no step for that many seconds
    (None: no warnings). ``beat_s``: how often the background thread refreshes the heartbeat.
    ``write_every_s``: a new step is written within this long, by the background thread (0:
    by ``step()``, every step).
    ``rank``/``world_size``: default to the environment torchrun sets (RANK, WORLD_SIZE), else
    the default process group's, else 0 and 1.
    """

    def __init__(self, directory: Optional[str] = None, watchdog_s: Optional[float] = None, *,
                 beat_s: float = 1.0, write_every_s: float = 0.1, rank: Optional[int] = None,
                 world_size: Optional[int] = None, numerics_every: Optional[int] = None,
                 env: Optional[Mapping[str, str]] = None, stragglers: bool = True,
                 straggler_thresholds: Optional[Thresholds] = None) -> None:
        env = dict(os.environ if env is None else env)
        if watchdog_s is not None and watchdog_s <= 0:
            raise ValueError(f"watchdog_s must be > 0, got {watchdog_s}")
        self.env = env
        self.rank = rank if rank is not None else _env_int(env, "RANK")
        self.world_size = world_size if world_size is not None else _env_int(env, "WORLD_SIZE")
        if self.rank is None or self.world_size is None:
            group_rank, group_size = _default_group_rank_size()
            self.rank = self.rank if self.rank is not None else group_rank
            self.world_size = self.world_size if self.world_size is not None else group_size
        self.local_rank = _env_int(env, "LOCAL_RANK")
        self.job = heartbeat.job_key(env)
        self.hostname = socket.gethostname()
        self.pid = os.getpid()
        self.root = directory or heartbeat.root(env)
        self.path = heartbeat.path(self.root, self.job, self.rank)
        make_heartbeat_dirs(self.root, os.path.dirname(self.path),
                            default=self.root == heartbeat.default_root())
        self.watchdog_s = watchdog_s
        self.write_every_s = max(0.0, write_every_s)
        self._written_at = 0.0  # time.monotonic() of the last write
        self._written_step: Optional[int] = None  # the step it wrote
        self.beat_s = max(0.05, beat_s if watchdog_s is None else min(beat_s, watchdog_s / 4))
        self.started = time.time()
        # (step, time, collective seq) of the last step(), one tuple: the thread reads it whole
        self._mark: Optional[tuple[int, float, Optional[int]]] = None
        self.warnings: list[str] = []  # every warning the watchdog logged (for the job itself)
        self._tmp = f"{self.path}.tmp{self.pid}"
        self._lock = threading.Lock()
        self._seq_fn: Optional[Callable[[], int]] = None
        self.clock: Optional[StepClock] = StepClock(os.environ) if stragglers else None
        self.straggler_thresholds = straggler_thresholds or Thresholds()
        self.stragglers: list[dict[str, Any]] = []  # the stragglers named now (as dicts)
        self._history_json = "[]"
        self.straggler_verdict: Optional[list[dict[str, Any]]] = None  # once judged: for hang
        self._stragglers_json: Optional[str] = None
        self._stop = threading.Event()
        self.numerics = attach_canary(self, numerics_every, _connect_store)
        self._write(time.time())
        self._thread = threading.Thread(target=_run, args=(self,), name="ddpcheck-monitor",
                                        daemon=True)
        self._thread.start()

    # -- the per-step path: kept to a few system calls -------------------------------------
    def step(self, step: int) -> None:
        now = time.time()
        first = self._mark is None
        self._mark = (step, now, self.collective_seq())
        if self.clock is not None:
            self.clock.sample(step, now)
        if first or not self.write_every_s:
            self._write(now)  # else the background thread writes it within write_every_s

    @property
    def last_step(self) -> Optional[int]:
        return None if self._mark is None else self._mark[0]

    def collective_seq(self) -> Optional[int]:
        """Collectives this rank has issued on the default group (None before one exists)."""
        if self._seq_fn is None:
            self._seq_fn = _default_group_seq_fn()
            if self._seq_fn is None:
                return None
        try:
            return self._seq_fn()
        except Exception:  # noqa: BLE001 - the group was destroyed; look again next time
            self._seq_fn = None
            return None

    def _write(self, beat: float, seq_now: Optional[int] = None,
               refresh_history: bool = False) -> None:
        """The heartbeat; the step history is serialized by the background thread
        (``refresh_history``) and spliced in as text, so ``step()`` never pays for it."""
        step, at, seq = self._mark or (None, None, None)  # step() may move on meanwhile
        record = {"v": heartbeat.VERSION, "job": self.job, "rank": self.rank,
                  "local_rank": self.local_rank, "world_size": self.world_size,
                  "host": self.hostname, "pid": self.pid, "started": self.started,
                  "step": step, "time": at, "seq": seq,
                  "seq_now": seq_now if seq_now is not None else seq, "beat": beat}
        if self.clock is not None and refresh_history:
            self._history_json = json.dumps(self.clock.recent(), separators=(",", ":"))
            if self.straggler_verdict is not None:
                self._stragglers_json = json.dumps(self.straggler_verdict, separators=(",", ":"))
        data = heartbeat.encode(record, self._history_json if self.clock is not None else None,
                                self._stragglers_json,
                                self.numerics.named_json if self.numerics is not None else None)
        self._written_at = time.monotonic()
        self._written_step = step
        with self._lock:
            fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
            os.replace(self._tmp, self.path)

    def close(self) -> None:
        """Stop the background thread and write the last step if it has not (the heartbeat
        file stays, for ``ddpcheck hang``)."""
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(5.0)
        if _step_pending(self) and not self._thread.is_alive():
            _write_quietly(self)

    def __enter__(self) -> "Monitor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# -- the background thread -------------------------------------------------------------------

def _run(monitor: Monitor) -> None:
    """The Monitor's thread: the beats, each new step's write, the watchdog, the stragglers."""
    watchdog = _Watchdog(monitor) if monitor.watchdog_s is not None else None
    stragglers = _straggler_watch(monitor)
    if watchdog is not None:
        try:
            watchdog.tick()  # connect and publish at once: a rank may stop any time
        except Exception as exc:  # noqa: BLE001 - the watchdog is advisory
            logger.debug("ddpcheck monitor watchdog: %s", exc)
    # wake for whichever is first, the beat, a new step's write or the straggler exchange's
    # next instant (the same wall-clock instants on every rank: a rank's late step reaches the
    # leader the moment it judges, not up to a period after)
    beat_at = time.monotonic() + monitor.beat_s
    while not monitor._stop.wait(min(_until(beat_at, stragglers), _write_in(monitor))):
        if time.monotonic() >= beat_at - EARLY_WAKE_S:
            beat_at = time.monotonic() + monitor.beat_s
            _beat(monitor, watchdog)
        elif not _write_in(monitor):  # a new step, due now: step() left it to this thread
            _write_quietly(monitor)
        if stragglers is not None:
            try:
                stragglers.tick()
            except Exception as exc:  # noqa: BLE001 - advisory too
                logger.debug("ddpcheck monitor stragglers: %s", exc)
    if monitor.clock is not None:
        monitor.clock.close()  # the files this thread kept open


def _write_quietly(monitor: Monitor, seq_now: Optional[int] = None,
                   refresh_history: bool = False) -> None:
    """The heartbeat, now; a full or vanished /tmp must never take the job down."""
    try:
        monitor._write(time.time(), seq_now, refresh_history)
    except OSError:
        pass


def _step_pending(monitor: Monitor) -> bool:
    """A step that ``step()`` left to the thread and the thread has not written yet."""
    return monitor.write_every_s > 0 and monitor._written_step != monitor.last_step


def _write_in(monitor: Monitor) -> float:
    """Seconds until the thread looks for a new step to write: until ``write_every_s`` after
    the last write, 0 when that has passed and a step waits, else ``write_every_s`` (a step
    made meanwhile is written within that); ``beat_s`` when ``step()`` writes every step."""
    if not monitor.write_every_s:
        return monitor.beat_s
    due = monitor._written_at + monitor.write_every_s - EARLY_WAKE_S - time.monotonic()
    if due > 0:
        return due
    return 0.0 if _step_pending(monitor) else monitor.write_every_s


def _straggler_watch(monitor: Monitor) -> Optional[StragglerWatch]:
    """The straggler exchange, over a TCPStore client of its own (else heartbeat files)."""
    if monitor.clock is None:
        return None
    return StragglerWatch(monitor, monitor.straggler_thresholds,
                          _connect_store(monitor.env, monitor.job))


EARLY_WAKE_S = 0.005  # a wait may end this much early: the beat is due all the same


def _until(beat_at: float, stragglers: Optional[StragglerWatch]) -> float:
    """Seconds to sleep until the next beat (``beat_at``, monotonic) or the straggler
    exchange's next instant (wall clock), whichever is first; never negative, and never past
    the beat whatever the wall clock does."""
    wait = beat_at - time.monotonic()
    if stragglers is not None:
        wait = min(wait, stragglers.next_at - time.time())
    return max(0.0, wait)


def _beat(monitor: Monitor, watchdog: Optional["_Watchdog"]) -> None:
    """One beat of the background thread: the heartbeat, then the watchdog."""
    _write_quietly(monitor, monitor.collective_seq(), refresh_history=True)
    if watchdog is not None:
        try:
            watchdog.tick()
        except Exception as exc:  # noqa: BLE001 - the watchdog is advisory
            logger.debug("ddpcheck monitor watchdog: %s", exc)


class _Watchdog:
    """Publishes this rank's progress and warns, once per stall, naming the lagging ranks."""

    def __init__(self, monitor: Monitor) -> None:
        self.monitor = monitor
        self.store: Any = None
        self.store_tried = False
        self.beat = 0
        self.last_published = -1e9
        self.seen_step: Optional[int] = None
        self.seen_step_at = time.monotonic()
        self.warned_for: Optional[int] = None  # the step a warning was logged at

    def tick(self) -> None:
        monitor = self.monitor
        now = time.monotonic()
        self.beat += 1
        if monitor.last_step != self.seen_step:
            self.seen_step, self.seen_step_at = monitor.last_step, now
            self.warned_for = None
        if now - self.last_published >= self._publish_every():
            self._publish()
            self.last_published = now
        stalled_s = now - self.seen_step_at
        if stalled_s >= (monitor.watchdog_s or 0) and self.warned_for != self.seen_step:
            self.warned_for = self.seen_step
            message = self._stall_message(stalled_s)
            monitor.warnings.append(message)
            logger.warning(message)

    def _publish_every(self) -> float:
        return max(self.monitor.beat_s, min(5.0, (self.monitor.watchdog_s or 4.0) / 4))

    def _entry(self) -> str:
        m = self.monitor
        return json.dumps({"step": m.last_step, "seq": m.collective_seq(), "beat": self.beat,
                           "host": m.hostname, "pid": m.pid}, separators=(",", ":"))

    def _connect(self) -> Any:
        if not self.store_tried:
            self.store_tried = True
            self.store = _connect_store(self.monitor.env, self.monitor.job)
        return self.store

    def _publish(self) -> None:
        store = self._connect()
        if store is not None:
            store.set(str(self.monitor.rank), self._entry())

    def _read_all(self) -> dict[int, dict[str, Any]]:
        """Every rank's latest entry: from the store, else this host's heartbeat files."""
        monitor = self.monitor
        store = self._connect()
        entries: dict[int, dict[str, Any]] = {}
        if store is not None:
            for rank in range(monitor.world_size or 1):
                key = str(rank)
                if rank == monitor.rank:
                    entries[rank] = json.loads(self._entry())
                elif store.check([key]):
                    entries[rank] = json.loads(store.get(key))
            return entries
        for rank, beat in heartbeat.read_job_folder(os.path.dirname(monitor.path)).items():
            entries[rank] = {"step": beat.get("step"), "seq": beat.get("seq_now"),
                             "beat": beat.get("beat"), "host": beat.get("host"),
                             "pid": beat.get("pid")}
        return entries

    def _stall_message(self, stalled_s: float) -> str:
        """Reads every rank twice, publishing in between, over more than a publish period of
        the others: a rank whose beat did not move meanwhile has stopped answering."""
        monitor = self.monitor
        first = self._read_all()
        until = time.monotonic() + self._publish_every() * 2 + monitor.beat_s
        while time.monotonic() < until and not monitor._stop.is_set():
            time.sleep(monitor.beat_s)
            self.beat += 1
            self._publish()
        second = self._read_all()
        return stall_message(monitor.rank or 0, monitor.hostname, monitor.last_step,
                             monitor.collective_seq(), stalled_s, monitor.world_size or 1,
                             first, second)


def stall_message(rank: int, hostname: str, step: Optional[int], seq: Optional[int],
                  stalled_s: float, world_size: int, first: Mapping[int, Mapping[str, Any]],
                  second: Mapping[int, Mapping[str, Any]]) -> str:
    """The watchdog's warning (pure): ranks whose beat did not move between two reads are not
    responding (stopped, dead, or holding the GIL); ranks at a lower step are behind."""
    silent = sorted(r for r in range(world_size) if r != rank and
                    (r not in second or first.get(r, {}).get("beat") == second[r].get("beat")))
    answering = {r: e for r, e in second.items() if r not in silent}
    behind = sorted(r for r in answering if _progress(answering[r]) < max(
        _progress(e) for e in answering.values()))
    where = f"step {step}" if step is not None else "no step yet"
    if seq is not None:
        where += f", collective seq {seq}"
    parts = []
    for r in silent:
        entry = second.get(r) or first.get(r)
        if entry is None:
            parts.append(f"rank {r} never reported (not started, stopped or dead)")
        else:
            last = (f"its last report at step {entry.get('step')}"
                    if entry.get("step") is not None else "its last report before its first step")
            parts.append(f"rank {r} on {entry.get('host')} (pid {entry.get('pid')}) not "
                         f"responding, {last}")
    for r in behind:
        entry = second[r]
        parts.append(f"rank {r} on {entry.get('host')} (pid {entry.get('pid')}) behind at step "
                     f"{entry.get('step')}, collective seq {entry.get('seq')}")
    lagging = "; ".join(parts) if parts else "no rank is behind (all wait: suspect a collective"\
                                             " or the network)"
    return (f"ddpcheck.Monitor [{hostname}:rank {rank}]: no progress for {stalled_s:.0f}s at "
            f"{where}; lagging: {lagging}")


def _progress(entry: Mapping[str, Any]) -> tuple[int, int]:
    """(step, collective seq): a rank that has not issued the collective the others wait in
    is behind even at the same step."""
    step, seq = entry.get("step"), entry.get("seq")
    return (step if isinstance(step, int) else -1, seq if isinstance(seq, int) else -1)


# -- torch, only when the job already imported it -------------------------------------------

def _dist() -> Any:
    dist = sys.modules.get("torch.distributed")
    if dist is None or not getattr(dist, "is_available", lambda: False)():
        return None
    return dist


def _default_group_rank_size() -> tuple[int, int]:
    dist = _dist()
    if dist is not None and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _default_group_seq_fn() -> Optional[Callable[[], int]]:
    dist = _dist()
    if dist is None or not dist.is_initialized():
        return None
    try:
        group = dist.distributed_c10d._get_default_group()
        return group._get_sequence_number_for_group
    except Exception:  # noqa: BLE001 - an older torch or a backend without sequence numbers
        return None


def _connect_store(env: Mapping[str, str], key: str) -> Any:
    """A TCPStore client of its own (never the process group's connection, which a collective
    may be holding), prefixed per job; None when the job has no store we can reach, or has not
    imported torch.distributed (then neither do we)."""
    dist = _dist()
    if dist is None:
        return None
    from datetime import timedelta

    address, port = env.get("MASTER_ADDR"), _env_int(env, "MASTER_PORT")
    try:
        if address and port:
            store = dist.TCPStore(address, port, is_master=False,
                                  timeout=timedelta(seconds=10), wait_for_workers=False)
        elif dist.is_initialized():
            store = dist.distributed_c10d._get_default_store()
        else:
            return None
        return dist.PrefixStore(f"{STORE_PREFIX}{key}/", store)
    except Exception as exc:  # noqa: BLE001 - no store: fall back to this host's files
        logger.debug("ddpcheck monitor: no store (%s); comparing this host's ranks only", exc)
        return None
