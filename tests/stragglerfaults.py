"""Real faults that make one rank of a running job a straggler, for the straggler tests and
benchmark: a sleep outside any collective while a flag file exists (tests/stragglerjob.py's
``--flag-sleep``), and a SIGSTOP/SIGCONT duty cycle. Each is undone on leaving its context,
whatever happened (a CPU quota is tests/cpuquota.py's)."""

from __future__ import annotations

import contextlib
import os
import pathlib
import signal
import threading
import time
from typing import Iterator


@contextlib.contextmanager
def stop_cycle(pid: int, stopped_s: float = 0.06, running_s: float = 0.09) -> Iterator[None]:
    """SIGSTOP/SIGCONT ``pid`` over and over (stopped 40 % of the time by default), as a
    debugger or a sampling profiler does; the process is continued whatever happens."""
    done = threading.Event()

    def cycle() -> None:
        while not done.is_set():
            os.kill(pid, signal.SIGSTOP)
            time.sleep(stopped_s)
            os.kill(pid, signal.SIGCONT)
            done.wait(running_s)

    thread = threading.Thread(target=cycle, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        os.kill(pid, signal.SIGCONT)


@contextlib.contextmanager
def flag_file(path: pathlib.Path) -> Iterator[None]:
    """The flag file stragglerjob.py's ``--flag-sleep`` rank sleeps while it exists."""
    path.write_text("")
    try:
        yield
    finally:
        path.unlink()
