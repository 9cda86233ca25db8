"""Transport, SSH sessions: the only place that does I/O with hosts (with ``local``, ``client``,
``jump`` and ``fanout`` beside it; this module keeps their names importable from here).

``LocalSession`` runs a command with ``/bin/sh -c`` on this machine (the embedded default);
``SSHSession`` runs it over paramiko with a pty, so closing the channel hangs up the remote
command (the agent then kills torchrun and every rank). ``fan_out`` is the one concurrency point:
every host gets a result or an exception, and no failure stops the others.

Every wait has a deadline: paramiko's ``recv_exit_status()`` ignores timeouts, so output and exit
status are polled until the deadline or until ``cancel`` is set (Ctrl-C, ``--timeout``); its
pty and exec requests wait for the server's reply without one, so a watchdog closes the channel
when the deadline passes first; reading what is left after the exit status (the fetch) has its
own short deadline, so a server that keeps sending cannot hold a run open.
"""

from __future__ import annotations

import select
import threading
import time
from typing import Optional, Union

from ..model.errors import HostError
from ..model.outcomes import CommandResult
from ..model.spec import HostSpec, SSHSpec
from .client import (SYSTEM_KNOWN_HOSTS, USER_KNOWN_HOSTS, open_client,  # noqa: F401
                     ssh_target, ssh_user)
from .fanout import Outcome, fan_out  # noqa: F401 - importable from here
from .jump import JumpPool
from .local import (FETCH_DEADLINE_S, KILL_GRACE_S, POLL_S, STOP_LINE,  # noqa: F401
                    LocalSession, OutputBuffer, _wait_until)

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

    def run(self, command: str, deadline: float, cancel: threading.Event,
            stop: Optional[threading.Event] = None) -> CommandResult:
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
        chunks = OutputBuffer()
        stopped: Optional[str] = None
        code: Optional[int] = None
        try:
            stopped = _start_on_pty(channel, command, deadline, cancel, self.name)
            asked = False
            while stopped is None:
                if stop is not None and stop.is_set() and not asked:
                    asked = True
                    try:
                        channel.sendall(STOP_LINE)
                    except (OSError, EOFError, paramiko.SSHException):
                        pass
                if cancel.is_set():
                    stopped = "cancel"
                elif time.monotonic() >= deadline:
                    stopped = "deadline"
                elif channel.recv_ready():
                    chunks.append(channel.recv(65536))
                elif channel.status_event.is_set() and channel.exit_status != -1:
                    # the exit status came (a close sets the event too, leaving -1)
                    stopped = _fetch_rest(channel, chunks, min(deadline, time.monotonic()
                                                               + FETCH_DEADLINE_S), cancel)
                    if stopped is None:
                        code = channel.exit_status
                    break
                elif channel.closed or not transport.is_active():
                    while channel.recv_ready():
                        chunks.append(channel.recv(65536))
                    # a dead connection closes its channels just before it marks itself
                    # inactive: give it a moment before deciding which of the two happened
                    _wait_until(lambda: not transport.is_active(),
                                time.monotonic() + 0.5, cancel)
                    if not transport.is_active():
                        stopped = "lost"  # the connection dropped mid-command
                    else:
                        code = -1  # closed without an exit status (e.g. killed by a signal)
                    break
                else:
                    select.select([channel], [], [], POLL_S)
        finally:
            channel.close()
            with self._lock:
                self._channels.remove(channel)
        return CommandResult(code, chunks.text(),
                             timed_out=stopped == "deadline", cancelled=stopped == "cancel",
                             duration_s=time.monotonic() - started, lost=stopped == "lost")

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


def _fetch_rest(channel, chunks: "OutputBuffer", deadline: float,
                cancel: threading.Event) -> Optional[str]:
    """The output still buffered or in flight once the exit status came, until EOF; a server
    that keeps sending is cut off at ``deadline``."""
    while not (channel.eof_received and not channel.recv_ready()):
        if cancel.is_set():
            return "cancel"
        if time.monotonic() >= deadline:
            return None  # the exit status is in; what did not come in time is dropped
        if channel.recv_ready():
            chunks.append(channel.recv(65536))
        elif channel.closed:
            break
        else:
            select.select([channel], [], [], POLL_S)
    return None


Session = Union[LocalSession, SSHSession]
