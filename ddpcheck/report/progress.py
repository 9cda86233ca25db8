"""Progress on stderr that stays readable at 1,000 hosts (launcher side).

A line per host as its state changes for a few hosts (up to ``PER_HOST_MAX``) or with ``-v``;
past that, a summary line at most every ``SUMMARY_EVERY_S`` seconds counting hosts per state
(``1000 hosts: 640 checked, 357 connecting, 3 unreachable``), the first few failures on lines of
their own (``FAILURES_SHOWN``), and a last summary when the run says something or ends. The
tally is O(1) per host event; nothing is kept per line printed.

Long stages are never silent: on a terminal a live line at the bottom (``launch: 2 of 3 hosts
done, 41.3s``) is redrawn every ``LIVE_EVERY_S`` and kept below the lines above it; where stderr
is not a terminal (a CI log, a file) a plain line says the same after ``QUIET_FOR_S`` seconds
without any other line. With -q (no stream) nothing is written.
"""

from __future__ import annotations

import re
import sys
import threading
import time
from collections import Counter
from typing import Callable, Optional, TextIO

PER_HOST_MAX = 16
SUMMARY_EVERY_S = 5.0
FAILURES_SHOWN = 5
LIVE_EVERY_S = 0.5  # the live line's redraw on a terminal
QUIET_FOR_S = 10.0  # without a terminal: a plain progress line after this long without a line
_CLEAR_LINE = "\r\033[K"
# Host lines that start a stage's work on a host; any other line means the host is through it.
_STARTING = ("checking", "connecting", "launched", "command:", "stage 0 ", "scanning")
# States that are failures: shown on their own line (the first FAILURES_SHOWN of them).
_FAILED = re.compile(r"^(unreachable|failed|timed out|not reached)")


def stage_line(stage: str, done: int, total: int, elapsed_s: float) -> str:
    """What the run is doing: ``launch: 2 of 3 hosts done, 41.3s``."""
    return f"{stage}: {done} of {total} host{'s' if total != 1 else ''} done, {elapsed_s:.1f}s"


def state_of(text: str) -> str:
    """The state a host line names, without its details: ``"checked: hostname h1"`` ->
    ``"checked"``, ``"done in 3.1s"`` -> ``"done"``, ``"failed stage 0: torch"`` ->
    ``"failed stage 0"``."""
    head = text.split(":", 1)[0]
    return re.sub(r" in [0-9.]+s$", "", head).strip() or text


class Progress:
    """What the run says as it goes, on ``stream`` (None: quiet, for -q)."""

    def __init__(self, stream: Optional[TextIO] = sys.stderr, verbose: bool = False,
                 hosts: int = 0, clock: Callable[[], float] = time.monotonic,
                 live: Optional[bool] = None) -> None:
        self.stream = stream
        self.clock = clock
        self.started = clock()
        self.lock = threading.Lock()
        # live: redraw one line on a terminal (None: when ``stream`` is one)
        isatty = getattr(stream, "isatty", None)
        self.live = bool(isatty and isatty()) if live is None else live
        self.current: Optional[str] = None  # the stage running, and the hosts through it
        self.through: set[str] = set()
        self.last_line = self.started
        self.drawn = False
        self.ticker: Optional[threading.Thread] = None
        self.stopped = threading.Event()
        self.per_host = verbose or hosts <= PER_HOST_MAX
        self.hosts = hosts
        self.states: dict[str, str] = {}
        self.counts: Counter = Counter()
        self.failures = 0
        self.last_summary = self.started
        self.dirty = False

    def expect(self, hosts: int, verbose: bool = False) -> None:
        """The run's size, once known: a line per host up to PER_HOST_MAX hosts or with -v."""
        with self.lock:
            self.hosts = hosts
            self.per_host = verbose or hosts <= PER_HOST_MAX

    def stage(self, name: str) -> None:
        """A stage begins on every host (stage0, rendezvous, launch, scan): the live line (or,
        off a terminal, the quiet-time line) follows it until the run ends."""
        if self.stream is None:
            return
        with self.lock:
            self.current = name
            self.through = set()
            if self.ticker is None:
                self.ticker = threading.Thread(target=self._tick, name="ddpcheck-progress",
                                               daemon=True)
                self.ticker.start()
            if self.live:
                self._draw()

    def host(self, name: str, state: str) -> None:
        if self.current is not None and not state.startswith(_STARTING):
            with self.lock:
                self.through.add(name)
        if self.per_host:
            self.say(f"{name}: {state}")
            return
        with self.lock:
            new = state_of(state)
            old = self.states.get(name)
            if old is not None:
                self.counts[old] -= 1
            self.states[name] = new
            self.counts[new] += 1
            self.dirty = True
            if _FAILED.match(new):
                self.failures += 1
                if self.failures <= FAILURES_SHOWN:
                    self._write(f"{name}: {state}")
                elif self.failures == FAILURES_SHOWN + 1:
                    self._write("more failures are counted below, each in the report")
            if self.clock() - self.last_summary >= SUMMARY_EVERY_S:
                self._summary()

    def say(self, text: str) -> None:
        with self.lock:
            if self.dirty:
                self._summary()
            self._write(text)

    def finish(self) -> None:
        """The last summary (when anything changed since the one before); the live line and
        its thread end."""
        self.stopped.set()
        ticker = self.ticker
        if ticker is not None and ticker is not threading.current_thread():
            ticker.join(timeout=2 * LIVE_EVERY_S + 1)
        with self.lock:
            self.current = None
            self._erase()
            if self.dirty:
                self._summary()

    def _tick(self) -> None:
        """Every LIVE_EVERY_S: the live line redrawn, or a plain line after a quiet while."""
        while not self.stopped.wait(LIVE_EVERY_S):
            with self.lock:
                if self.current is None:
                    continue
                if self.live:
                    self._draw()
                elif self.clock() - self.last_line >= QUIET_FOR_S:
                    self._write(self._stage_text())

    def _stage_text(self) -> str:
        total = self.hosts or len(self.states) or len(self.through)
        return stage_line(str(self.current), min(len(self.through), total), total,
                          self.clock() - self.started)

    def _draw(self) -> None:
        if self.stream is None:
            return
        self.stream.write(f"{_CLEAR_LINE}ddpcheck {self._stage_text()}")
        self.stream.flush()
        self.drawn = True

    def _erase(self) -> None:
        if self.drawn and self.stream is not None:
            self.stream.write(_CLEAR_LINE)
            self.stream.flush()
            self.drawn = False

    def summary_line(self) -> str:
        total = self.hosts or len(self.states)
        parts = [f"{count} {state}" for state, count in self.counts.most_common() if count]
        unseen = total - len(self.states)
        if unseen > 0:
            parts.append(f"{unseen} waiting")
        return f"{total} hosts: " + ", ".join(parts)

    def _summary(self) -> None:
        self._write(self.summary_line())
        self.last_summary = self.clock()
        self.dirty = False

    def _write(self, text: str) -> None:
        if self.stream is None:
            return
        self._erase()
        self.stream.write(f"ddpcheck [{self.clock() - self.started:6.1f}s] {text}\n")
        self.last_line = self.clock()
        if self.live and self.current is not None:
            self._draw()
        else:
            self.stream.flush()
