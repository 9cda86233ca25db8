"""Transport, SSH sessions: the only place that does I/O with hosts (with ``local``, ``client``,
``jump``, ``channels``, ``multiplex`` and ``fanout`` beside it; the names of ``local``,
``client`` and ``fanout`` stay importable from here). Runs on the launcher.

``LocalSession`` runs a command with ``/bin/sh -c`` on this machine (the embedded default);
``SSHSession`` runs it over paramiko with a pty, so closing the channel hangs up the remote
command (the agent then kills torchrun and every rank). ``SSHSession.start`` starts it and
``channels`` waits on it (``run``: one command in the calling thread; ``multiplex.run_many``:
many hosts' commands waited on by one thread). ``fan_out`` runs bounded per-host work (connect
and stage 0): every host gets a result or an exception, and no failure stops the others.

Every wait has a deadline: paramiko's pty and exec requests wait for the server's reply without
one, so a watchdog closes the channel when the deadline passes (or ``cancel`` is set) first;
then the channel's own waits are in ``channels``.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Optional, Union

from ..model.errors import HostError
from ..model.outcomes import CommandResult
from ..model.spec import HostSpec, SSHSpec
from .channels import Running, wait_one
from .client import open_client
from .jump import JumpPool
from .local import POLL_S, LocalSession

class SSHSession:
    """One authenticated paramiko connection to a host; commands run on a pty."""

    def __init__(self, client, name: str = "?") -> None:  # client: paramiko.SSHClient
        self.client = client
        self.name = name
        self._channels: list = []
        self._lock = threading.Lock()
        self._own_jumps: Optional["JumpPool"] = None

    @classmethod
    def connect(cls, host: HostSpec, ssh: SSHSpec,
                jumps: Optional["JumpPool"] = None) -> "SSHSession":
        """Connect and authenticate, through ``host.jumps`` when it has any. Pass one
        ``JumpPool`` for a whole run so hosts behind a jump host share one connection to it;
        without one, this session gets a pool of its own (closed with it)."""
        if not host.jumps:
            return cls(open_client(host, ssh), host.name)
        own = jumps is None
        pool = jumps if jumps is not None else JumpPool(ssh)
        try:
            session = cls(pool.connect_through(host, ssh), host.name)
        except BaseException:
            if own:
                pool.close()
            raise
        if own:
            session._own_jumps = pool
        return session

    def start(self, command: str, deadline: float, cancel: threading.Event,
              stop: Optional[threading.Event] = None,
              on_line: Optional[Callable[[str], None]] = None
              ) -> Union[Running, CommandResult]:
        """Open a channel and start ``command`` on a pty: the ``Running`` command to wait on
        (``channels.Poller``), or already its result when it did not start (lost, or given up
        at the deadline or on cancel). Raises HostError when the server refuses it."""
        started = time.monotonic()
        transport = self.client.get_transport()
        if transport is None or not transport.is_active():
            return CommandResult(None, "", duration_s=0.0, lost=True)
        import paramiko

        try:
            channel = transport.open_session(timeout=max(min(deadline - started, 30.0), 1.0))
        except (paramiko.SSHException, OSError, EOFError) as exc:
            if not transport.is_active():
                return CommandResult(None, "", duration_s=time.monotonic() - started, lost=True)
            raise HostError(self.name, "run", f"cannot open a session: {exc}") from None
        with self._lock:
            self._channels.append(channel)
        running = Running(channel, deadline, cancel, stop, started, self._forget, on_line)
        try:
            why = _start_on_pty(channel, command, deadline, cancel, self.name)
        except BaseException:
            running.close()
            raise
        if why is None:
            return running
        running.close()
        return running.result(why)

    def run(self, command: str, deadline: float, cancel: threading.Event,
            stop: Optional[threading.Event] = None) -> CommandResult:
        """One command, waited on by this thread (many at once: ``multiplex.run_many``)."""
        running = self.start(command, deadline, cancel, stop)
        return running if isinstance(running, CommandResult) else wait_one(running)

    def _forget(self, channel) -> None:
        with self._lock:
            if channel in self._channels:
                self._channels.remove(channel)

    def close(self) -> None:
        with self._lock:
            channels = list(self._channels)
        for channel in channels:
            channel.close()
        self.client.close()
        if self._own_jumps is not None:
            self._own_jumps.close()


def _start_on_pty(channel, command: str, deadline: float, cancel: threading.Event,
                  name: str) -> Optional[str]:
    """Request a pty and exec ``command``; None once started, else why it was given up.

    A pty: when we close the channel, sshd hangs up the remote command (SIGHUP). paramiko
    waits for the server's answer to each request with no timeout, so a watchdog closes the
    channel (which wakes the wait) when the deadline passes or ``cancel`` is set first."""
    import paramiko

    answered = threading.Event()
    gave_up: list[str] = []

    def watchdog() -> None:
        while not answered.wait(POLL_S):
            reason = "cancel" if cancel.is_set() else (
                "deadline" if time.monotonic() >= deadline else None)
            if reason:
                gave_up.append(reason)
                channel.close()
                return

    guard = threading.Thread(target=watchdog, daemon=True)
    guard.start()
    try:
        channel.get_pty(term="dumb", width=500)
        channel.exec_command(command)
    except (paramiko.SSHException, OSError, EOFError) as exc:
        answered.set()
        guard.join()
        if gave_up:
            return gave_up[0]
        transport = channel.get_transport()
        if transport is not None and transport.is_active():
            raise HostError(name, "run",
                            f"the server refused to run the command: {exc}") from None
        return "lost"
    answered.set()
    guard.join()
    return gave_up[0] if gave_up else None


Session = Union[LocalSession, SSHSession]
