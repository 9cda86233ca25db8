"""Transport, ProxyJump: one shared connection per jump host for a whole run (``JumpPool``).
Runs on the launcher; does I/O only.
"""

from __future__ import annotations

import threading
from typing import Optional, Sequence

from ..model.errors import HostError
from ..model.spec import HostSpec, SSHSpec, ssh_user
from .client import open_client

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
