"""Transport: the only place that does I/O with hosts.

``LocalSession`` runs a command with ``/bin/sh -c`` on this machine (the embedded default);
``SSHSession`` runs it over paramiko with a pty, so closing the channel hangs up the remote
command (the agent then kills torchrun and every rank). ``fan_out`` is the one concurrency point:
every host gets a result or an exception, and no failure stops the others.

Every wait has a deadline: paramiko's ``recv_exit_status()`` ignores timeouts, so output and exit
status are polled until the deadline or until ``cancel`` is set (Ctrl-C, ``--timeout``).
"""

from __future__ import annotations

import concurrent.futures
import fcntl
import getpass
import os
import select
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Callable, Generic, Optional, Protocol, Sequence, TypeVar, Union

from .errors import HostError
from .spec import HostKeyPolicy, HostSpec, SSHSpec

SYSTEM_KNOWN_HOSTS = "/etc/ssh/ssh_known_hosts"
USER_KNOWN_HOSTS = "~/.ssh/known_hosts"
KILL_GRACE_S = 8.0  # the agent's own cleanup takes up to ~5 s
POLL_S = 0.05


@dataclass(frozen=True)
class CommandResult:
    exit_code: Optional[int]  # None when the command was stopped (deadline or cancel)
    output: str
    timed_out: bool = False
    cancelled: bool = False
    duration_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


class HostSession(Protocol):
    def run(self, command: str, deadline: float, cancel: threading.Event) -> CommandResult:
        """Run ``command``; stop it at ``deadline`` (time.monotonic()) or when ``cancel`` is set."""

    def close(self) -> None:
        """End the session and anything still running in it."""


class LocalSession:
    """This machine: the command in its own session, killed as a group on the way out."""

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen[bytes]] = []
        self._lock = threading.Lock()

    def run(self, command: str, deadline: float, cancel: threading.Event) -> CommandResult:
        started = time.monotonic()
        proc = subprocess.Popen(["/bin/sh", "-c", command], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        with self._lock:
            self._procs.append(proc)
        chunks: list[bytes] = []
        reader = threading.Thread(target=lambda: chunks.extend(iter(
            lambda: proc.stdout.read1(65536) if proc.stdout else b"", b"")), daemon=True)
        reader.start()
        stopped = _wait_until(lambda: proc.poll() is not None, deadline, cancel)
        if stopped:
            _stop_group(proc)
        proc.wait()
        reader.join(2.0)
        with self._lock:
            self._procs.remove(proc)
        return CommandResult(None if stopped else proc.returncode,
                             b"".join(chunks).decode("utf-8", "replace"),
                             timed_out=stopped == "deadline", cancelled=stopped == "cancel",
                             duration_s=time.monotonic() - started)

    def close(self) -> None:
        with self._lock:
            procs = list(self._procs)
        for proc in procs:
            _stop_group(proc)


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the command's process group (the agent cleans up), SIGKILL it after a grace."""
    for sig, grace in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, 2.0)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


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


# -- SSH ------------------------------------------------------------------------------------

_known_hosts_lock = threading.Lock()


def _accept_new_policy(known_hosts_path: str):  # -> paramiko.MissingHostKeyPolicy
    import paramiko

    class AcceptNewPolicy(paramiko.MissingHostKeyPolicy):
        """Like OpenSSH's accept-new: record an unknown key; a changed key never gets here
        (paramiko raises BadHostKeyException for it before consulting the policy)."""

        def missing_host_key(self, client, hostname, key) -> None:
            with _known_hosts_lock:
                os.makedirs(os.path.dirname(known_hosts_path) or ".", exist_ok=True)
                with open(known_hosts_path, "a", encoding="ascii") as handle:
                    fcntl.flock(handle, fcntl.LOCK_EX)
                    handle.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")
                    fcntl.flock(handle, fcntl.LOCK_UN)
            client.get_host_keys().add(hostname, key.get_name(), key)

    return AcceptNewPolicy()


def ssh_user(host: HostSpec) -> str:
    """hosts.yaml user, else ~/.ssh/config User for the host, else the local user."""
    if host.user:
        return host.user
    try:
        import paramiko

        path = os.path.expanduser("~/.ssh/config")
        if os.path.exists(path):
            found = paramiko.SSHConfig.from_path(path).lookup(host.name).get("user")
            if found:
                return str(found)
    except Exception:  # noqa: BLE001 - a broken ssh_config must not hide the default
        pass
    return os.environ.get("USER") or getpass.getuser()


def ssh_target(host: HostSpec) -> str:
    return f"{ssh_user(host)}@{host.address}:{host.port}"


class SSHSession:
    """One authenticated paramiko connection to a host; commands run on a pty."""

    def __init__(self, client) -> None:  # client: paramiko.SSHClient
        self.client = client
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
            return cls(open_client(host, ssh))
        own = jumps is None
        pool = jumps if jumps is not None else JumpPool(ssh)
        try:
            session = cls(pool.connect_through(host, ssh))
        except BaseException:
            if own:
                pool.close()
            raise
        if own:
            session._own_jumps = pool
        return session

    def run(self, command: str, deadline: float, cancel: threading.Event) -> CommandResult:
        started = time.monotonic()
        transport = self.client.get_transport()
        if transport is None or not transport.is_active():
            raise HostError("?", "run", "connection closed")
        channel = transport.open_session(timeout=max(deadline - started, 1.0))
        with self._lock:
            self._channels.append(channel)
        chunks: list[bytes] = []
        try:
            # A pty: when we close the channel, sshd hangs up the remote command (SIGHUP).
            channel.get_pty(term="dumb", width=500)
            channel.exec_command(command)
            stopped = None
            while True:
                if channel.recv_ready():
                    chunks.append(channel.recv(65536))
                    continue
                if channel.exit_status_ready():
                    while channel.recv_ready():
                        chunks.append(channel.recv(65536))
                    break
                if cancel.is_set():
                    stopped = "cancel"
                    break
                if time.monotonic() >= deadline:
                    stopped = "deadline"
                    break
                if channel.closed or not transport.is_active():
                    break
                select.select([channel], [], [], POLL_S)
            code = None if stopped or not channel.exit_status_ready() else channel.exit_status
        finally:
            channel.close()
            with self._lock:
                self._channels.remove(channel)
        return CommandResult(code, b"".join(chunks).decode("utf-8", "replace"),
                             timed_out=stopped == "deadline", cancelled=stopped == "cancel",
                             duration_s=time.monotonic() - started)

    def close(self) -> None:
        with self._lock:
            channels = list(self._channels)
        for channel in channels:
            channel.close()
        self.client.close()
        if self._own_jumps is not None:
            self._own_jumps.close()


def open_client(host: HostSpec, ssh: SSHSpec, sock=None, via: str = ""):
    """An authenticated ``paramiko.SSHClient`` to ``host`` (over ``sock`` when given: a
    direct-tcpip channel through a jump host). Host keys are checked the same way for jump
    hosts and targets. Every failure is a ``HostError`` for ``host`` (stage ``ssh``); ``via``
    prefixes its message (e.g. "jump host bastion: ")."""
    import paramiko

    client = paramiko.SSHClient()
    known_hosts = os.path.expanduser(ssh.known_hosts or USER_KNOWN_HOSTS)

    def fail(message: str) -> HostError:
        client.close()
        return HostError(host.name, "ssh", via + message)

    for path in (SYSTEM_KNOWN_HOSTS, known_hosts):
        if os.path.exists(path):
            try:
                # load_system_host_keys: paramiko never rewrites these files itself.
                client.load_system_host_keys(path)
            except (OSError, paramiko.SSHException) as exc:
                raise fail(f"cannot read known_hosts {path}: {exc}") from None
    if ssh.host_key_policy is HostKeyPolicy.ACCEPT_NEW:
        client.set_missing_host_key_policy(_accept_new_policy(known_hosts))
    else:
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
    timeout = ssh.connect_timeout
    try:
        client.connect(host.address, port=host.port, username=ssh_user(host),
                       key_filename=host.identity_file, timeout=timeout,
                       banner_timeout=timeout, auth_timeout=timeout,
                       channel_timeout=timeout, allow_agent=True,
                       look_for_keys=host.identity_file is None, sock=sock)
    except paramiko.BadHostKeyException as exc:
        raise fail(
            f"HOST KEY CHANGED for {host.address}: expected {exc.expected_key.fingerprint}, "
            f"got {exc.key.fingerprint}; refusing to connect. If the change is legitimate, "
            f"run: ssh-keygen -f {known_hosts} -R {_known_hosts_name(host)}") from None
    except paramiko.AuthenticationException as exc:
        raise fail(f"authentication failed as {ssh_user(host)}: {exc}") from None
    except paramiko.SSHException as exc:
        message = str(exc)
        if "not found in known_hosts" in message:
            message = (f"host key for {_known_hosts_name(host)} is not in {known_hosts} "
                       f"(or {SYSTEM_KNOWN_HOSTS}); add it with ssh-keyscan after checking "
                       f"it, or set ssh.host_key_policy: accept-new")
        raise fail(message) from None
    except (socket.timeout, TimeoutError):
        raise fail(f"connect to {host.address}:{host.port} timed out after "
                   f"{timeout:g}s") from None
    except OSError as exc:
        raise fail(f"cannot connect to {host.address}:{host.port}: "
                   f"{exc.strerror or exc}") from None
    return client


class _Jump:
    """One jump host's shared connection, and the cap on handshakes through it."""

    def __init__(self, limit: int) -> None:
        self.ready = threading.Lock()  # held while connecting: one attempt at a time
        self.client = None
        self.error: Optional[HostError] = None  # a failed attempt is not retried in this pool
        self.handshakes = threading.BoundedSemaphore(limit)
        self.in_flight = 0
        self.max_in_flight = 0  # the most handshakes seen in flight at once through it
        self.count_lock = threading.Lock()


class JumpPool:
    """ProxyJump for a whole run: one authenticated connection per jump host, shared by every
    host behind it, each target reached over a ``direct-tcpip`` channel of that connection.
    At most ``ssh.jump_handshakes`` ssh handshakes are in flight through one jump host (a
    thousand hosts behind one bastion would otherwise hit it, and its sshd's MaxStartups, at
    once). A jump host that cannot be reached fails every host behind it with its reason,
    once, instead of being retried per host."""

    def __init__(self, ssh: Optional[SSHSpec] = None) -> None:
        self.limit = (ssh or SSHSpec()).jump_handshakes
        self._lock = threading.Lock()
        self._jumps: dict[tuple, _Jump] = {}
        self.connections_made = 0

    @staticmethod
    def _key(chain: Sequence[HostSpec]) -> tuple:
        return tuple((ssh_user(h), h.address, h.port, h.identity_file) for h in chain)

    def jump(self, chain: Sequence[HostSpec]) -> _Jump:
        """The entry of the last host of ``chain`` (reached through the ones before it)."""
        with self._lock:
            return self._jumps.setdefault(self._key(chain), _Jump(self.limit))

    def connect_through(self, host: HostSpec, ssh: SSHSpec):
        """An authenticated client to ``host`` over its jump chain."""
        chain = list(host.jumps)
        last = self._transport(chain, ssh, host)
        return self._handshake(chain, last, host, ssh, f"via jump host {chain[-1].name}: ")

    def _transport(self, chain: list[HostSpec], ssh: SSHSpec, target: HostSpec):
        """The live connection to the last jump host of ``chain``, made once."""
        entry = self.jump(chain)
        with entry.ready:
            if entry.client is not None:
                transport = entry.client.get_transport()
                if transport is not None and transport.is_active():
                    return entry.client
            if entry.error is not None:
                raise HostError(target.name, "ssh", entry.error.message)
            hop = chain[-1]
            try:
                if len(chain) == 1:
                    client = open_client(hop, ssh, via=f"jump host {hop.name}: ")
                else:
                    before = self._transport(chain[:-1], ssh, target)
                    client = self._handshake(chain[:-1], before, hop, ssh,
                                             f"jump host {hop.name} via {chain[-2].name}: ")
            except HostError as exc:
                entry.error = exc
                raise HostError(target.name, "ssh", exc.message) from None
            with self._lock:
                self.connections_made += 1
            entry.client = client
            return client

    def _handshake(self, chain: Sequence[HostSpec], through, host: HostSpec, ssh: SSHSpec,
                   via: str):
        """Open a direct-tcpip channel to ``host`` through ``through`` and run the ssh
        handshake and authentication over it, within the jump host's cap."""
        import paramiko

        entry = self.jump(chain)
        with entry.handshakes:
            with entry.count_lock:
                entry.in_flight += 1
                entry.max_in_flight = max(entry.max_in_flight, entry.in_flight)
            try:
                transport = through.get_transport()
                if transport is None or not transport.is_active():
                    raise HostError(host.name, "ssh", f"{via}connection to the jump host "
                                                      f"closed")
                try:
                    channel = transport.open_channel(
                        "direct-tcpip", (host.address, host.port), ("127.0.0.1", 0),
                        timeout=ssh.connect_timeout)
                except paramiko.ChannelException as exc:
                    raise HostError(host.name, "ssh", (
                        f"{via}cannot reach {host.address}:{host.port} from it: "
                        f"{exc.text or exc}")) from None
                except (paramiko.SSHException, OSError, EOFError) as exc:
                    raise HostError(host.name, "ssh", (
                        f"{via}opening a channel to {host.address}:{host.port} failed: "
                        f"{exc or 'timed out'}")) from None
                try:
                    return open_client(host, ssh, sock=channel, via=via)
                except BaseException:
                    channel.close()
                    raise
            finally:
                with entry.count_lock:
                    entry.in_flight -= 1

    def close(self) -> None:
        """Close every jump connection (the counters stay, for the curious)."""
        with self._lock:
            entries = list(self._jumps.values())
        for entry in reversed(entries):  # the innermost hop first
            with entry.ready:
                if entry.client is not None:
                    entry.client.close()
                    entry.client = None


def _known_hosts_name(host: HostSpec) -> str:
    return host.address if host.port == 22 else f"[{host.address}]:{host.port}"


# -- fan-out ----------------------------------------------------------------------------------

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Outcome(Generic[T, R]):
    item: T
    result: Optional[R] = None
    error: Optional[BaseException] = None


def fan_out(items: Sequence[T], work: Callable[[T], R], workers: int,
            cancel: threading.Event) -> list[Outcome[T, R]]:
    """Run ``work`` on every item, ``workers`` at once; each item gets a result or its error.

    On KeyboardInterrupt the cancel event is set (so running work stops and cleans up), the
    workers are waited for, and the interrupt is raised again.
    """
    if not items:
        return []
    outcomes: dict[int, Outcome[T, R]] = {}
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(workers, len(items))))
    futures = {pool.submit(work, item): index for index, item in enumerate(items)}
    try:
        pending = set(futures)
        while pending:
            done, pending = concurrent.futures.wait(pending, timeout=0.2)
            for future in done:
                index = futures[future]
                error = future.exception()
                outcomes[index] = (Outcome(items[index], error=error) if error is not None
                                   else Outcome(items[index], result=future.result()))
    except KeyboardInterrupt:
        cancel.set()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return [outcomes[i] for i in range(len(items))]


Session = Union[LocalSession, SSHSession]
