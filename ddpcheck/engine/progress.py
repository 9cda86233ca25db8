"""Progress: a line per host on stderr as its state changes. Runs on the launcher."""

from __future__ import annotations

import sys
import threading
import time
from typing import Optional, TextIO


class Progress:
    """A line per host on stderr as its state changes, with seconds since start."""

    def __init__(self, stream: Optional[TextIO] = sys.stderr) -> None:
        self.stream = stream  # None: quiet (-q)
        self.started = time.monotonic()
        self.lock = threading.Lock()

    def host(self, name: str, state: str) -> None:
        self.say(f"{name}: {state}")

    def say(self, text: str) -> None:
        if self.stream is None:
            return
        with self.lock:
            self.stream.write(f"ddpcheck [{time.monotonic() - self.started:6.1f}s] {text}\n")
            self.stream.flush()
