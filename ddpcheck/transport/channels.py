"""Transport, commands running on SSH channels: one thread waits on all of them at once. Runs on
the launcher; does I/O only.

A command started on its channel is a ``Running``; a ``Poller`` waits on every running channel's
file descriptor together (epoll or poll: no 1,024 limit as with select) and steps each one that
has output, and every one at each ``POLL_S`` tick (an exit status wakes no descriptor). Each
command ends exactly as one command alone ends: at its own deadline, on ``cancel``, once its exit
status came and the output after it was read (cut at ``FETCH_DEADLINE_S``: a server that keeps
sending cannot hold a run open), or when its channel closed, told apart from a lost connection
(a dead connection closes its channels just before it marks itself inactive: ``LOST_GRACE_S``).
``stop`` sends ``STOP_LINE`` once (the agent reads it and stops torchrun).
"""

from __future__ import annotations

import selectors
import threading
import time
from typing import Callable, Hashable, Optional, Union

from ..core.agentargs import STOP_LINE
from ..model.outcomes import CommandResult
from .local import POLL_S, OutputBuffer

FETCH_DEADLINE_S = 5.0  # reading the output left after the exit status
LOST_GRACE_S = 0.5  # a closed channel: is its connection going down too?
READS_PER_STEP = 16  # 16 x 64 KiB from one channel before the others get their turn

RUNNING, FETCH, CLOSING = "running", "fetch", "closing"


class Running:
    """One command started on its channel, until it ends (``step`` returns its result)."""

    def __init__(self, channel, deadline: float, cancel: threading.Event,
                 stop: Optional[threading.Event], started: float,
                 forget: Callable[[object], None] = lambda channel: None,
                 on_line: Optional[Callable[[str], None]] = None) -> None:
        self.channel = channel
        self.transport = channel.get_transport()
        self.deadline = deadline
        self.cancel = cancel
        self.stop = stop
        self.started = started
        self.forget = forget  # the session's registry of open channels
        self.chunks = OutputBuffer(on_line=on_line)
        self.asked = False
        self.phase = RUNNING
        self.until = deadline  # when the current phase gives up

    def step(self, now: float) -> Optional[CommandResult]:
        """Read what came and move on; the result once the command ended (the channel is then
        still to be closed: ``close``)."""
        channel = self.channel
        if self.phase == RUNNING:
            self._ask_to_stop()
            if self.cancel.is_set():
                return self.result("cancel")
            if now >= self.deadline:
                return self.result("deadline")
            if self._read():
                return None  # the exit status is looked at once what came before it is read
            if channel.status_event.is_set() and channel.exit_status != -1:
                # the exit status came (a close sets the event too, leaving -1)
                self.phase, self.until = FETCH, min(self.deadline, now + FETCH_DEADLINE_S)
            elif channel.closed or not self.transport.is_active():
                while channel.recv_ready():
                    self.chunks.append(channel.recv(65536))
                self.phase, self.until = CLOSING, now + LOST_GRACE_S
            else:
                return None
        if self.phase == FETCH:
            if self.cancel.is_set():
                return self.result("cancel")
            if now >= self.until:
                return self.result(None, channel.exit_status)  # the rest is dropped
            if self._read() or not (channel.eof_received or channel.closed):
                return None
            return self.result(None, channel.exit_status)  # EOF, and all of it read
        if not self.transport.is_active():
            return self.result("lost")  # the connection dropped mid-command
        if now >= self.until or self.cancel.is_set():
            return self.result(None, -1)  # closed without an exit status (killed by a signal)
        return None

    def quiet(self) -> bool:
        """Its descriptor stays readable with nothing to read (EOF or closed): wait for it
        with the tick only."""
        channel = self.channel
        return (channel.eof_received or channel.closed) and not channel.recv_ready()

    def result(self, why: Optional[str], code: Optional[int] = None) -> CommandResult:
        return CommandResult(code, self.chunks.text(), timed_out=why == "deadline",
                             cancelled=why == "cancel", lost=why == "lost",
                             duration_s=time.monotonic() - self.started)

    def close(self) -> None:
        """Close the channel (sshd hangs up the command on its pty) and forget it."""
        self.channel.close()
        self.forget(self.channel)

    def _read(self) -> bool:
        """Read what is buffered (a bounded amount); True when more is waiting."""
        for _ in range(READS_PER_STEP):
            if not self.channel.recv_ready():
                return False
            self.chunks.append(self.channel.recv(65536))
        return self.channel.recv_ready()

    def _ask_to_stop(self) -> None:
        if self.stop is not None and self.stop.is_set() and not self.asked:
            self.asked = True
            try:
                self.channel.sendall(STOP_LINE)
            except Exception:  # noqa: BLE001 - OSError, EOFError, SSHException: it ends anyway
                pass


Ended = list[tuple[Hashable, Union[CommandResult, Exception]]]


class Poller:
    """Running commands by key, waited on together by the calling thread."""

    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        self.running: dict[Hashable, Running] = {}
        self.swept = time.monotonic()

    def add(self, key: Hashable, running: Running) -> None:
        self.running[key] = running
        try:
            self.selector.register(running.channel.fileno(), selectors.EVENT_READ, key)
        except (OSError, ValueError):
            pass  # (closed already) the tick steps it

    def wait(self) -> Ended:
        """Wait for output until the next tick; step the commands that have some (all of them
        at the tick). The commands that ended, with their result (or the error stepping raised),
        their channels closed."""
        wait = max(self.swept + POLL_S - time.monotonic(), 0)
        if self.selector.get_map():
            keys = [key.data for key, _ in self.selector.select(wait)]
        else:
            time.sleep(wait)
            keys = []
        now = time.monotonic()
        if now >= self.swept + POLL_S:
            keys, self.swept = list(self.running), now
        ended: Ended = []
        for key in keys:
            running = self.running[key]
            try:
                result: Union[CommandResult, Exception, None] = running.step(now)
            except Exception as exc:  # noqa: BLE001 - that command's error, not the others'
                result = exc
            if result is not None:
                self._drop(key)
                ended.append((key, result))
            elif running.quiet():
                self._unregister(running)
        return ended

    def _unregister(self, running: Running) -> None:
        try:
            self.selector.unregister(running.channel.fileno())
        except (KeyError, OSError, ValueError):
            pass

    def _drop(self, key: Hashable) -> None:
        running = self.running.pop(key)
        self._unregister(running)  # before the channel closes its descriptor
        running.close()

    def close(self) -> None:
        """Close every channel still running (the commands are hung up) and the selector."""
        for key in list(self.running):
            self._drop(key)
        self.selector.close()


def wait_one(running: Running) -> CommandResult:
    """One command, waited on alone (a ``Poller`` of one)."""
    poller = Poller()
    poller.add(0, running)
    try:
        while True:
            for _, result in poller.wait():
                if isinstance(result, Exception):
                    raise result
                return result
    finally:
        poller.close()
