"""Progress on stderr that stays readable at 1,000 hosts (launcher side).

A line per host as its state changes for a few hosts (up to ``PER_HOST_MAX``) or with ``-v``;
past that, a summary line at most every ``SUMMARY_EVERY_S`` seconds counting hosts per state
(``1000 hosts: 640 checked, 357 connecting, 3 unreachable``), the first few failures on lines of
their own (``FAILURES_SHOWN``), and a last summary when the run says something or ends. The
tally is O(1) per host event; nothing is kept per line printed.
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
# States that are failures: shown on their own line (the first FAILURES_SHOWN of them).
_FAILED = re.compile(r"^(unreachable|failed|timed out|not reached)")


def state_of(text: str) -> str:
    """The state a host line names, without its details: ``"checked: hostname h1"`` ->
    ``"checked"``, ``"done in 3.1s"`` -> ``"done"``, ``"failed stage 0: torch"`` ->
    ``"failed stage 0"``."""
    head = text.split(":", 1)[0]
    return re.sub(r" in [0-9.]+s$", "", head).strip() or text


class Progress:
    """What the run says as it goes, on ``stream`` (None: quiet, for -q)."""

    def __init__(self, stream: Optional[TextIO] = sys.stderr, verbose: bool = False,
                 hosts: int = 0, clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream
        self.clock = clock
        self.started = clock()
        self.lock = threading.Lock()
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

    def host(self, name: str, state: str) -> None:
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
        """The last summary (when anything changed since the one before)."""
        with self.lock:
            if self.dirty:
                self._summary()

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
        self.stream.write(f"ddpcheck [{self.clock() - self.started:6.1f}s] {text}\n")
        self.stream.flush()
