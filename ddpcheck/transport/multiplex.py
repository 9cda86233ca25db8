"""Transport, many hosts' commands at once without a thread per host. Runs on the launcher.

``run_many`` starts every SSH job on its channel, ``workers`` at once (a pty and an exec request
each wait for the server's reply), and the calling thread alone then waits on all the running
channels (``channels.Poller``): at 1,000 hosts the launcher holds the pool, not 1,000 threads
(paramiko's own thread per connection stays). Local jobs (this machine alone, one or two
commands) run each in a thread of its own, as ``LocalSession.run`` needs. Every job gets its
result or its error, and ``ended`` hears of each as soon as its command ends.
"""

from __future__ import annotations

import concurrent.futures
import queue
import threading
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

from ..model.outcomes import CommandResult
from .channels import POLL_S, Poller, Running
from .fanout import Outcome
from .local import LocalSession
from .ssh import SSHSession


@dataclass(frozen=True)
class Job:
    """One command on one session, with its deadline (and the event that asks it to stop)."""

    session: Union[LocalSession, SSHSession, None]  # None: the host has no session (an error)
    command: str
    deadline: float
    stop: Optional[threading.Event] = None
    on_line: Optional[Callable[[str], None]] = None  # each output line as it comes


Ended = Callable[[int, CommandResult], None]
Got = Union[Running, CommandResult, Exception]


def run_many(jobs: Sequence[Job], workers: int, cancel: threading.Event,
             ended: Optional[Ended] = None) -> list[Outcome[Job, CommandResult]]:
    """Run every job; its result or its error, in order. ``ended(index, result)`` runs in the
    calling thread as soon as that job's command ended (what it raises is that job's error).

    On KeyboardInterrupt the cancel event is set, every running command is hung up, and the
    interrupt is raised again."""
    events: queue.SimpleQueue[tuple[int, Got]] = queue.SimpleQueue()

    def start(index: int) -> None:
        job = jobs[index]
        try:
            if job.session is None:
                raise LookupError("the host has no connection")
            begin = job.session.start if isinstance(job.session, SSHSession) else job.session.run
            events.put((index, begin(job.command, job.deadline, cancel, job.stop, job.on_line)))
        except Exception as exc:  # noqa: BLE001 - that host's error, not the others'
            events.put((index, exc))

    remote = [i for i, job in enumerate(jobs) if isinstance(job.session, SSHSession)]
    local = [i for i, job in enumerate(jobs) if not isinstance(job.session, SSHSession)]
    pools = [_pool(remote, workers, start), _pool(local, len(local), start)]
    outcomes: dict[int, Outcome[Job, CommandResult]] = {}

    def finish(index: int, got: Union[CommandResult, Exception]) -> None:
        if isinstance(got, CommandResult) and ended is not None:
            try:
                ended(index, got)
            except Exception as exc:  # noqa: BLE001 - recorded as that job's error
                got = exc
        outcomes[index] = (Outcome(jobs[index], error=got) if isinstance(got, Exception)
                           else Outcome(jobs[index], result=got))

    poller = Poller()
    try:
        while len(outcomes) < len(jobs):
            for index, got in _drained(events, wait=not poller.running):
                if isinstance(got, Running):
                    poller.add(index, got)
                else:
                    finish(index, got)
            for index, got in poller.wait() if poller.running else ():
                finish(index, got)
    except KeyboardInterrupt:
        cancel.set()
        raise
    finally:
        for pool in pools:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        for _, got in _drained(events, wait=False):  # started after an interrupt
            if isinstance(got, Running):
                got.close()
        poller.close()
    return [outcomes[i] for i in range(len(jobs))]


def _pool(indices: list[int], workers: int, start: Callable[[int], None]
          ) -> Optional[concurrent.futures.ThreadPoolExecutor]:
    """``workers`` threads running ``start`` on every index; each thread ends when no start
    is left (the pool is shut down at once, its queue still runs)."""
    if not indices:
        return None
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(workers, len(indices))))
    for index in indices:
        pool.submit(start, index)
    pool.shutdown(wait=False)
    return pool


def _drained(events: queue.SimpleQueue, wait: bool) -> list:
    """What the start threads handed over (waiting up to a tick for the first when asked)."""
    got = []
    try:
        got.append(events.get(timeout=POLL_S) if wait else events.get_nowait())
        while True:
            got.append(events.get_nowait())
    except queue.Empty:
        return got
