"""Transport, this machine: ``LocalSession`` runs a command with ``/bin/sh -c`` (the embedded
default, and srun steps), in its own session, killed as a group on the way out. Runs on the
launcher; does I/O only (no finding is decided here).
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import threading
import time
from typing import Callable, Optional

from ..core.agentargs import STOP_LINE
from ..model.outcomes import CommandResult

KILL_GRACE_S = 8.0  # the agent's own cleanup takes up to ~5 s
POLL_S = 0.05


class LocalSession:
    """This machine: the command in its own session, killed as a group on the way out."""

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen[bytes]] = []
        self._lock = threading.Lock()

    def run(self, command: str, deadline: float, cancel: threading.Event,
            stop: Optional[threading.Event] = None,
            on_line: Optional[Callable[[str], None]] = None) -> CommandResult:
        started = time.monotonic()
        proc = subprocess.Popen(["/bin/sh", "-c", command], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT,
                                stdin=subprocess.PIPE if stop is not None else subprocess.DEVNULL,
                                start_new_session=True)
        with self._lock:
            self._procs.append(proc)
        chunks = OutputBuffer(on_line=on_line)

        def read() -> None:
            for chunk in iter(lambda: proc.stdout.read1(65536) if proc.stdout else b"", b""):
                chunks.append(chunk)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        asked = False

        def done() -> bool:
            nonlocal asked
            if stop is not None and stop.is_set() and not asked and proc.stdin is not None:
                asked = True
                try:
                    proc.stdin.write(STOP_LINE)
                    proc.stdin.flush()
                except (OSError, ValueError):
                    pass
            return proc.poll() is not None

        stopped = _wait_until(done, deadline, cancel)
        if proc.stdin is not None:
            try:
                proc.stdin.close()
            except OSError:
                pass
        if stopped:
            _stop_group(proc)
        proc.wait()
        reader.join(2.0)
        with self._lock:
            self._procs.remove(proc)
        return CommandResult(None if stopped else proc.returncode, chunks.text(),
                             timed_out=stopped == "deadline", cancelled=stopped == "cancel",
                             duration_s=time.monotonic() - started)

    def close(self) -> None:
        with self._lock:
            procs = list(self._procs)
        for proc in procs:
            _stop_group(proc)


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the command itself (the agent then stops torchrun and still reports), then,
    after a grace, SIGKILL its whole process group: nothing it started stays."""
    try:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=KILL_GRACE_S)
    except (ProcessLookupError, PermissionError):
        pass
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=2.0)
    except subprocess.TimeoutExpired:
        pass


def _wait_until(done: Callable[[], bool], deadline: float,
                cancel: threading.Event) -> Optional[str]:
    """None when ``done()`` came true; "deadline" or "cancel" otherwise."""
    while not done():
        if cancel.is_set():
            return "cancel"
        if time.monotonic() >= deadline:
            return "deadline"
        time.sleep(POLL_S)
    return None


class OutputBuffer:
    """A command's output, bounded: past ``limit`` bytes the middle is dropped (the head and
    the tail are kept; records come last), so a runaway command cannot fill our memory."""

    def __init__(self, limit: int = 64 << 20,
                 on_line: Optional[Callable[[str], None]] = None) -> None:
        self.limit = limit
        self.on_line = on_line  # each complete line as it comes (a sweep's rows, streamed)
        self.partial = b""
        self.head: list[bytes] = []
        self.head_size = 0
        self.tail: collections.deque[bytes] = collections.deque()
        self.tail_size = 0
        self.dropped = 0

    def append(self, chunk: bytes) -> None:
        if self.on_line is not None:
            self._lines(chunk)
        if self.head_size < self.limit // 2:
            self.head.append(chunk)
            self.head_size += len(chunk)
            return
        self.tail.append(chunk)
        self.tail_size += len(chunk)
        while self.tail_size > self.limit // 2 and len(self.tail) > 1:
            gone = self.tail.popleft()
            self.tail_size -= len(gone)
            self.dropped += len(gone)

    def _lines(self, chunk: bytes) -> None:
        *lines, self.partial = (self.partial + chunk).split(b"\n")
        if len(self.partial) > 1 << 20:  # a line that never ends is not one to stream
            self.partial = b""
        for line in lines:
            try:
                self.on_line(line.decode("utf-8", "replace").rstrip("\r"))
            except Exception:  # noqa: BLE001 - a listener's bug must not lose the output
                pass

    def text(self) -> str:
        gap = [f"\n[ddpcheck: {self.dropped} bytes of output dropped]\n".encode()] \
            if self.dropped else []
        return b"".join(self.head + gap + list(self.tail)).decode("utf-8", "replace")
