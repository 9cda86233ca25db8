"""Transport: the only place that does I/O with hosts.

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

import collections
import concurrent.futures
import fcntl
import getpass
import logging
import os
import select
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Callable, Generic, Optional, Protocol, Sequence, TypeVar, Union

from ..model.errors import HostError
from ..model.spec import HostKeyPolicy, HostSpec, SSHSpec
from . import knownhosts

SYSTEM_KNOWN_HOSTS = "/etc/ssh/ssh_known_hosts"
USER_KNOWN_HOSTS = "~/.ssh/known_hosts"
KILL_GRACE_S = 8.0  # the agent's own cleanup takes up to ~5 s
POLL_S = 0.05
FETCH_DEADLINE_S = 5.0  # reading the output left after the exit status
STOP_LINE = b"stop\n"  # written to a command's stdin when ``stop`` is set (the agent reads it)


@dataclass(frozen=True)
class CommandResult:
    exit_code: Optional[int]  # None when the command was stopped (deadline, cancel, lost)
    output: str
    timed_out: bool = False
    cancelled: bool = False
    duration_s: float = 0.0
    lost: bool = False  # the connection dropped before the command's exit status came

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


class HostSession(Protocol):
    def run(self, command: str, deadline: float, cancel: threading.Event,
            stop: Optional[threading.Event] = None) -> CommandResult:
        """Run ``command``; stop it at ``deadline`` (time.monotonic()) or when ``cancel`` is set
        (hanging it up). When ``stop`` is set, ask it to stop by itself (``STOP_LINE`` on its
        stdin: the agent then stops torchrun and still reports) and keep reading."""

    def close(self) -> None:
        """End the session and anything still running in it."""


class LocalSession:
    """This machine: the command in its own session, killed as a group on the way out."""

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen[bytes]] = []
        self._lock = threading.Lock()

    def run(self, command: str, deadline: float, cancel: threading.Event,
            stop: Optional[threading.Event] = None) -> CommandResult:
        started = time.monotonic()
        proc = subprocess.Popen(["/bin/sh", "-c", command], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT,
                                stdin=subprocess.PIPE if stop is not None else subprocess.DEVNULL,
                                start_new_session=True)
        with self._lock:
            self._procs.append(proc)
        chunks = OutputBuffer()

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

    def __init__(self, limit: int = 64 << 20) -> None:
        self.limit = limit
        self.head: list[bytes] = []
        self.head_size = 0
        self.tail: collections.deque[bytes] = collections.deque()
        self.tail_size = 0
        self.dropped = 0

    def append(self, chunk: bytes) -> None:
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

    def text(self) -> str:
        gap = [f"\n[ddpcheck: {self.dropped} bytes of output dropped]\n".encode()] \
            if self.dropped else []
        return b"".join(self.head + gap + list(self.tail)).decode("utf-8", "replace")


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
                knownhosts.remember(known_hosts_path, hostname, key.get_name(),
                                    key.get_base64())
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


def open_client(host: HostSpec, ssh: SSHSpec, sock=None, via: str = ""):
    """An authenticated ``paramiko.SSHClient`` to ``host`` (over ``sock`` when given: a
    direct-tcpip channel through a jump host). Host keys are checked the same way for jump
    hosts and targets. Every failure is a ``HostError`` for ``host`` (stage ``ssh``); ``via``
    prefixes its message (e.g. "jump host bastion: ")."""
    import paramiko

    _quiet_paramiko()
    client = paramiko.SSHClient()
    known_hosts = os.path.expanduser(ssh.known_hosts or USER_KNOWN_HOSTS)

    def fail(message: str) -> HostError:
        client.close()
        return HostError(host.name, "ssh", via + message)

    # Parsed once per run and shared (paramiko's own loader re-reads the file per client);
    # this client gets only its host's keys.
    tables = []
    for path in (SYSTEM_KNOWN_HOSTS, known_hosts):
        try:
            tables.append(knownhosts.load(path))
        except (OSError, knownhosts.KnownHostsError) as exc:
            raise fail(f"cannot read known_hosts {path}: {exc}") from None
    knownhosts.fill(client.get_host_keys(), tables, _known_hosts_name(host))
    if ssh.host_key_policy is HostKeyPolicy.ACCEPT_NEW:
        client.set_missing_host_key_policy(_accept_new_policy(known_hosts))
    else:
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
    timeout = ssh.connect_timeout
    where = f"{host.address}:{host.port}"
    try:
        identity = _load_identity(host)
    except HostError as exc:
        raise fail(exc.message) from None
    try:
        client.connect(host.address, port=host.port, username=ssh_user(host),
                       pkey=identity, timeout=timeout,
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
        elif "protocol banner" in message or message == "No existing session":
            # (paramiko reports a banner timeout one way or the other, by timing)
            message = (f"no SSH banner from {where} within {timeout:g}s, or the connection "
                       f"closed during the handshake (not an SSH server, or one too busy to "
                       f"answer)")
        elif "negotiation" in message.lower() or "timeout" in message.lower():
            message = f"SSH handshake with {where} did not finish within {timeout:g}s"
        raise fail(message) from None
    except (socket.timeout, TimeoutError):
        raise fail(f"connect to {where} timed out after {timeout:g}s") from None
    except (OSError, EOFError) as exc:
        raise fail(f"cannot connect to {where}: {_socket_reason(exc)}") from None
    key = client.get_transport().get_remote_server_key()
    revoked_in = knownhosts.is_revoked(tables, key.get_name(), key.get_base64())
    if revoked_in:
        raise fail(f"the host key of {host.address} ({key.fingerprint}) is marked @revoked in "
                   f"{revoked_in}; refusing to connect")
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


def _quiet_paramiko() -> None:
    """paramiko logs its transport thread's errors; with no handler configured Python would
    print them (tracebacks included) on stderr. Every failure reaches the user as a HostError
    with the host named, so its log has a handler that drops it unless the user sets one."""
    logger = logging.getLogger("paramiko")
    if not logger.handlers:
        logger.addHandler(logging.NullHandler())


def _load_identity(host: HostSpec):  # -> Optional[paramiko.PKey]
    """The host's identity_file as a key. Loaded here rather than by paramiko's connect, which
    tries every key type and reports the last type's parse error instead of a refused key;
    and so that a bad file is named by its path, never by its contents."""
    if host.identity_file is None:
        return None
    import paramiko

    path = host.identity_file
    encrypted = HostError(host.name, "ssh", (
        f"identity file {path} is encrypted and ddpcheck asks for no passphrase: load the key "
        f"into ssh-agent (ssh-add {path})"))
    try:
        return paramiko.PKey.from_path(path)
    except paramiko.PasswordRequiredException:
        raise encrypted from None
    except TypeError as exc:  # cryptography's way of saying so for PEM keys
        if "encrypted" in str(exc):
            raise encrypted from None
        raise HostError(host.name, "ssh", f"identity file {path} is not a private key "
                                          f"ddpcheck can read") from None
    except FileNotFoundError:
        raise HostError(host.name, "ssh", f"identity file {path} does not exist") from None
    except OSError as exc:
        raise HostError(host.name, "ssh", f"cannot read identity file {path}: "
                                          f"{exc.strerror or type(exc).__name__}") from None
    except Exception:  # noqa: BLE001 - paramiko raises several types for a bad key file
        # The parser's message may quote the file: say only what is wrong with it.
        raise HostError(host.name, "ssh", (
            f"identity file {path} is not a private key ddpcheck can read (OpenSSH or PEM "
            f"RSA, ECDSA or Ed25519)")) from None


def _socket_reason(exc: BaseException) -> str:
    """"Connection refused", "No route to host"...: the reason under paramiko's wrapper
    (NoValidConnectionsError keeps one socket error per address tried)."""
    inner = getattr(exc, "errors", None)
    if isinstance(inner, dict) and inner:
        return "; ".join(sorted({_socket_reason(e) for e in inner.values()}))
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


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
