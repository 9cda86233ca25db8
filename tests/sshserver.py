"""An SSH server inside the test process, for fast transport fault tests.

Like paramiko's own test suite: a ``paramiko.ServerInterface`` listening on ``127.0.0.1:0``,
a thread per connection, exec requests answered by a *behaviour* (a function given the command
and the channel). ``run_locally`` really runs the command with ``/bin/sh -c`` on this machine
(killing it when the client hangs up, as sshd's SIGHUP does), so a preflight can go through
this server end to end; the other behaviours are the faults: a fixed exit code, a command
that never ends, output larger than the SSH window, a connection dropped mid-stream, output
that keeps coming after the exit status. Connection-level faults are options of the server:
a delayed banner, rejected authentication, a pty request that is never answered.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import paramiko

Behaviour = Callable[[str, paramiko.Channel, "FakeSSHServer"], None]


@dataclass
class Observed:
    """What the server saw, for the tests' assertions."""

    commands: list[str] = field(default_factory=list)
    hangups: list[str] = field(default_factory=list)  # commands the client closed while running
    connections: int = 0
    auth_attempts: list[str] = field(default_factory=list)  # key fingerprints offered


class _Interface(paramiko.ServerInterface):
    def __init__(self, server: "FakeSSHServer") -> None:
        self.server = server

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        self.server.observed.auth_attempts.append(key.fingerprint)
        if self.server.reject_auth or key != self.server.client_key:
            return paramiko.AUTH_FAILED
        return paramiko.AUTH_SUCCESSFUL

    def check_channel_request(self, kind: str, chanid: int) -> int:
        if kind == "session":
            return paramiko.OPEN_SUCCEEDED
        return paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_pty_request(self, channel, term, width, height, pixelwidth,
                                  pixelheight, modes) -> bool:
        if self.server.pty_never_answered:
            # Blocks this connection's transport thread: the client never gets a reply.
            self.server.stopping.wait()
        return True

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        text = command.decode("utf-8", "replace")
        self.server.observed.commands.append(text)
        threading.Thread(target=self.server.serve_command, args=(text, channel),
                         daemon=True).start()
        return True


class FakeSSHServer:
    """One SSH server on 127.0.0.1:<free port>; ``behaviour`` answers every exec request."""

    def __init__(self, host_key: paramiko.PKey, client_key: paramiko.PKey,
                 behaviour: Behaviour, *, banner_delay_s: float = 0.0,
                 reject_auth: bool = False, pty_never_answered: bool = False) -> None:
        self.host_key = host_key
        self.client_key = client_key
        self.behaviour = behaviour
        self.banner_delay_s = banner_delay_s
        self.reject_auth = reject_auth
        self.pty_never_answered = pty_never_answered
        self.observed = Observed()
        self.stopping = threading.Event()
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.address, self.port = self.listener.getsockname()
        self.transports: list[paramiko.Transport] = []
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        self.acceptor = threading.Thread(target=self._accept_loop, daemon=True)

    def start(self) -> "FakeSSHServer":
        self.acceptor.start()
        return self

    def known_hosts_line(self) -> str:
        return f"[{self.address}]:{self.port} {self.host_key.get_name()} " \
               f"{self.host_key.get_base64()}"

    def _accept_loop(self) -> None:
        while not self.stopping.is_set():
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                self.sockets.append(sock)
                self.observed.connections += 1
            threading.Thread(target=self._serve_connection, args=(sock,), daemon=True).start()

    def _serve_connection(self, sock: socket.socket) -> None:
        if self.banner_delay_s and self.stopping.wait(self.banner_delay_s):
            return
        transport = paramiko.Transport(sock)
        with self.lock:
            self.transports.append(transport)
        transport.add_server_key(self.host_key)
        try:
            transport.start_server(server=_Interface(self))
        except (paramiko.SSHException, EOFError, OSError):
            return
        channels = []  # held: paramiko closes a channel that is garbage-collected
        while transport.is_active() and not self.stopping.is_set():
            channel = transport.accept(0.2)  # served from its exec request
            if channel is not None:
                channels.append(channel)

    def serve_command(self, command: str, channel: paramiko.Channel) -> None:
        # As sshd: the reply to the exec request goes out (from the transport thread, right
        # after check_channel_exec_request returns) before the command says anything.
        time.sleep(0.05)
        try:
            self.behaviour(command, channel, self)
        except (OSError, EOFError, paramiko.SSHException):
            pass  # the client went away; nothing to answer
        finally:
            try:
                channel.close()
            except (OSError, EOFError, paramiko.SSHException):
                pass

    def drop_connections(self) -> None:
        """Cut every connection at the TCP level, as a crashed host or a pulled cable would."""
        with self.lock:
            sockets = list(self.sockets)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def stop(self) -> None:
        self.stopping.set()
        self.listener.close()
        with self.lock:
            transports = list(self.transports)
        for transport in transports:
            transport.close()
        self.drop_connections()


def free_port() -> int:
    """A port nothing listens on (bound, then closed): connecting to it is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- behaviours -------------------------------------------------------------------------------


def run_locally(command: str, channel: paramiko.Channel, server: FakeSSHServer) -> None:
    """Run the command on this machine, stream its output, send its exit status; when the
    client closes the channel first, SIGHUP its process group (as sshd does through the pty)."""
    proc = subprocess.Popen(["/bin/sh", "-c", command], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), False)
    while True:
        data = proc.stdout.read(65536)
        if data:
            channel.sendall(data)
            continue
        if channel.closed or not channel.get_transport().is_active():
            server.observed.hangups.append(command)
            _signal_group(proc, signal.SIGHUP)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait()
            return
        if data is not None and proc.poll() is not None:  # b"": EOF and the process is gone
            break
        time.sleep(0.02)
    channel.send_exit_status(proc.wait())


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def exit_with(code: int, output: bytes = b"") -> Behaviour:
    def behaviour(command: str, channel: paramiko.Channel, server: FakeSSHServer) -> None:
        if output:
            channel.sendall(output)
        channel.send_exit_status(code)
    return behaviour


def hang(command: str, channel: paramiko.Channel, server: FakeSSHServer) -> None:
    """Never exits; notes when the client hangs up."""
    while not server.stopping.is_set():
        if channel.closed or not channel.get_transport().is_active():
            server.observed.hangups.append(command)
            return
        time.sleep(0.02)


def flood(total: int, then_exit: int = 0) -> Behaviour:
    """``total`` bytes of numbered lines (far more than the SSH window), then the exit code."""
    def behaviour(command: str, channel: paramiko.Channel, server: FakeSSHServer) -> None:
        channel.sendall(numbered_lines(total))
        channel.send_exit_status(then_exit)
    return behaviour


def numbered_lines(total: int) -> bytes:
    """Deterministic text of exactly ``total`` bytes: "000000001 ....\\n" lines."""
    line_len = 64
    lines = [b"%09d " % i + b"x" * (line_len - 11) + b"\n"
             for i in range(total // line_len + 1)]
    return b"".join(lines)[:total]


def drop_mid_stream(first: bytes) -> Behaviour:
    """Sends ``first``, then cuts the TCP connection without an exit status."""
    def behaviour(command: str, channel: paramiko.Channel, server: FakeSSHServer) -> None:
        channel.sendall(first)
        time.sleep(0.3)  # let it reach the client before the cut
        server.drop_connections()
    return behaviour


def exit_then_keep_sending(command: str, channel: paramiko.Channel,
                           server: FakeSSHServer) -> None:
    """A broken server: the exit status, then output that never ends and no EOF."""
    channel.sendall(b"before exit\n")
    channel.send_exit_status(0)
    while not server.stopping.is_set() and not channel.closed:
        try:
            channel.sendall(b"still talking\n" * 64)
        except (OSError, EOFError, paramiko.SSHException):
            return
        time.sleep(0.01)


def by_command(default: Behaviour, **when_contains: Behaviour) -> Behaviour:
    """Dispatch on a word of the command (``facts=hang`` makes stage 0 hang)."""
    def behaviour(command: str, channel: paramiko.Channel, server: FakeSSHServer) -> None:
        for word, chosen in when_contains.items():
            if word in command:
                return chosen(command, channel, server)
        return default(command, channel, server)
    return behaviour


def new_key() -> paramiko.PKey:
    return paramiko.ECDSAKey.generate(bits=256)


__all__ = ["FakeSSHServer", "Observed", "by_command", "drop_mid_stream", "exit_then_keep_sending",
           "exit_with", "flood", "free_port", "hang", "new_key", "numbered_lines", "run_locally"]
