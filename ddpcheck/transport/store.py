"""The in-job transport's wire: a key-value store at the master address, TCPStore's model
(set, get, add, check, wait), standard library only, with a deadline on every call and its
traffic counted. Runs on every node of the job (``preflight --in-job``).

Node 0 hosts the store on the master port, as torchrun's own rendezvous hosts its TCPStore
there; every other node connects to it. Why not torch's TCPStore itself: a node must be able to
join before torch is imported, and even when its torch is broken (stage 0 then says why, on
node 0's report, instead of the node never joining); and importing torch in every node's
ddpcheck costs seconds of CPU on the gang's critical path, before the ranks import it again.
The server is one thread (``selectors``), so thousands of nodes cost sockets, not threads.

The wire: each message is a 4-byte big-endian length and a JSON object; a request
``{"op", "key" | "keys", "value", "amount", "timeout"}``, an answer ``{"value"}``, ``{"values"}``,
``{"found"}`` or ``{"error"}``. ``wait`` is answered when every key is set, or with
``{"found": false}`` at its timeout. ``Traffic`` counts what this node's connections sent and
received (every byte on the wire) and its round trips, for the benchmark's projection.
"""

from __future__ import annotations

import json
import selectors
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from ..model.errors import DdpcheckError

WAIT_SLICE_S = 0.5  # a blocking wait is cut in slices: a cancel is seen between them
CONNECT_RETRY_S = 0.2  # a refused connection (node 0 not listening yet) is retried this often
MAX_MESSAGE = 64 << 20  # a stage-0 or launch output is far smaller
_LENGTH = struct.Struct(">I")


class StoreError(DdpcheckError):
    """A store call that failed or ran past its deadline; the message says which."""


@dataclass
class Traffic:
    """What one node's store calls moved: bytes out, bytes in, round trips."""

    sent: int = 0
    received: int = 0
    round_trips: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def count(self, sent: int, received: int = 0, trips: int = 1) -> None:
        with self.lock:
            self.sent += sent
            self.received += received
            self.round_trips += trips

    def as_dict(self) -> dict[str, int]:
        return {"sent_bytes": self.sent, "received_bytes": self.received,
                "round_trips": self.round_trips}


def _frame(message: dict) -> bytes:
    data = json.dumps(message, separators=(",", ":")).encode()
    return _LENGTH.pack(len(data)) + data


# -- the server (node 0) ------------------------------------------------------------------------

class _Peer:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.inbox = bytearray()
        self.outbox = bytearray()


def answer_of(data: dict[str, Any], request: dict) -> tuple[Optional[dict], bool]:
    """One request against the store's data: (the answer, or None for a wait that must wait;
    whether a key was set, which may release waits)."""
    op = request.get("op")
    if op in ("set", "beat"):  # beat: a heartbeat, which also says whether ``watch`` is set
        data[request["key"]] = request["value"]
        return ({"ok": True} if op == "set" else {"found": request["watch"] in data}), True
    if op == "add":
        data[request["key"]] = int(data.get(request["key"], 0)) + int(request["amount"])
        return {"value": data[request["key"]]}, True
    if op == "get":
        keys = request["keys"]
        if request.get("missing_ok"):
            return {"values": [data.get(k) for k in keys]}, False
        missing = [k for k in keys if k not in data]
        return ({"error": f"not set: {missing}"} if missing else
                {"values": [data[k] for k in keys]}), False
    if op == "check":
        return {"found": all(k in data for k in request["keys"])}, False
    if op == "wait":
        return ({"found": True} if all(k in data for k in request["keys"]) else None), False
    return {"error": f"unknown op {op!r}"}, False


class StoreServer:
    """The store, served by one thread until ``close``."""

    def __init__(self, port: int) -> None:
        family = socket.AF_INET6 if socket.has_dualstack_ipv6() else socket.AF_INET
        try:
            self.listener = socket.create_server(("", port), family=family, backlog=4096,
                                                 reuse_port=False,
                                                 dualstack_ipv6=family == socket.AF_INET6)
        except OSError as exc:
            raise StoreError(f"cannot host the job's store on port {port}: {exc}") from None
        self.port = port
        self.listener.setblocking(False)
        self.data: dict[str, Any] = {}
        self.waiters: list[tuple[_Peer, list[str], float]] = []
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.listener, selectors.EVENT_READ, None)
        self.wake_r, self.wake_w = socket.socketpair()
        self.selector.register(self.wake_r, selectors.EVENT_READ, "wake")
        self.closing = False
        self.thread = threading.Thread(target=self.serve, name="ddpcheck-store", daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while not self.closing:
            timeout = min([w[2] for w in self.waiters] + [time.monotonic() + 1.0]) \
                - time.monotonic()
            for key, events in self.selector.select(max(timeout, 0)):
                if key.data is None:
                    self.accept()
                elif key.data == "wake":
                    self.wake_r.recv(64)
                else:
                    self.service(key.data, events)
            self.expire()
        for key in list(self.selector.get_map().values()):
            key.fileobj.close()
        self.selector.close()

    def accept(self) -> None:
        try:
            sock, _ = self.listener.accept()
        except OSError:
            return
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.selector.register(sock, selectors.EVENT_READ, _Peer(sock))

    def service(self, peer: _Peer, events: int) -> None:
        try:
            if events & selectors.EVENT_READ:
                chunk = peer.sock.recv(1 << 20)
                if not chunk:
                    return self.drop(peer)
                peer.inbox += chunk
                while len(peer.inbox) >= 4:
                    size = _LENGTH.unpack_from(peer.inbox)[0]
                    if size > MAX_MESSAGE:
                        return self.drop(peer)
                    if len(peer.inbox) < 4 + size:
                        break
                    request = json.loads(bytes(peer.inbox[4:4 + size]))
                    del peer.inbox[:4 + size]
                    self.handle(peer, request)
            if events & selectors.EVENT_WRITE or peer.outbox:
                self.flush(peer)
        except (OSError, ValueError):
            self.drop(peer)

    def handle(self, peer: _Peer, request: dict) -> None:
        answer, changed = answer_of(self.data, request)
        if answer is None:  # a wait on keys not all set: answered by ``release``/``expire``
            self.waiters.append((peer, request["keys"],
                                 time.monotonic() + float(request["timeout"])))
            return
        self.answer(peer, answer)
        if changed:
            self.release()

    def release(self) -> None:
        """Answer the waits whose keys are all set now."""
        still = []
        for peer, keys, deadline in self.waiters:
            if all(k in self.data for k in keys):
                self.answer(peer, {"found": True})
            else:
                still.append((peer, keys, deadline))
        self.waiters = still

    def expire(self) -> None:
        now = time.monotonic()
        if any(deadline <= now for _, _, deadline in self.waiters):
            for peer, _, _ in [w for w in self.waiters if w[2] <= now]:
                self.answer(peer, {"found": False})
            self.waiters = [w for w in self.waiters if w[2] > now]

    def answer(self, peer: _Peer, message: dict) -> None:
        peer.outbox += _frame(message)
        self.flush(peer)

    def flush(self, peer: _Peer) -> None:
        try:
            sent = peer.sock.send(peer.outbox) if peer.outbox else 0
        except BlockingIOError:
            sent = 0
        except OSError:
            return self.drop(peer)
        del peer.outbox[:sent]
        try:
            self.selector.modify(peer.sock, selectors.EVENT_READ | (
                selectors.EVENT_WRITE if peer.outbox else 0), peer)
        except (KeyError, ValueError):
            pass

    def drop(self, peer: _Peer) -> None:
        self.waiters = [w for w in self.waiters if w[0] is not peer]
        try:
            self.selector.unregister(peer.sock)
        except (KeyError, ValueError):
            pass
        peer.sock.close()

    def close(self) -> None:
        self.closing = True
        try:
            self.wake_w.send(b"x")
        except OSError:
            pass
        self.thread.join(5)
        self.wake_w.close()


# -- a connection (every node) ------------------------------------------------------------------

class JobStore:
    """One connection to the job's store (one per thread that blocks on it: ``connection``)."""

    def __init__(self, sock: socket.socket, address: str, port: int, traffic: Traffic,
                 server: Optional[StoreServer] = None) -> None:
        self.sock = sock
        self.address = address
        self.port = port
        self.traffic = traffic
        self.server = server
        self.lock = threading.Lock()

    @classmethod
    def serve(cls, port: int, timeout_s: float, traffic: Optional[Traffic] = None
              ) -> "JobStore":
        """Host the store on ``port`` (node 0, every address) and connect to it."""
        server = StoreServer(port)
        store = cls.connect("127.0.0.1", port, timeout_s, traffic)
        store.server = server
        return store

    @classmethod
    def connect(cls, address: str, port: int, timeout_s: float,
                traffic: Optional[Traffic] = None) -> "JobStore":
        """Connect to node 0's store within ``timeout_s`` (a refused connection, node 0 not
        listening yet, is retried; a dropped one waits out the deadline)."""
        started = time.monotonic()
        deadline = started + max(timeout_s, 0.1)
        why = "no attempt"
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise StoreError(f"cannot reach the master's store at {address}:{port} within "
                                 f"{time.monotonic() - started:.0f}s: {why}")
            try:
                sock = socket.create_connection((address, port), timeout=min(left, 5.0))
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                break
            except socket.gaierror as exc:
                why = f"cannot resolve {address}: {exc.strerror or exc}"
            except (socket.timeout, TimeoutError):
                why = "connection timed out (dropped on the way: a firewall?)"
                continue
            except OSError as exc:
                why = exc.strerror or str(exc)
            time.sleep(min(CONNECT_RETRY_S, max(deadline - time.monotonic(), 0)))
        return cls(sock, address, port, traffic or Traffic())

    def connection(self, timeout_s: float) -> "JobStore":
        """Another connection to the same store, for another thread (same counters)."""
        return JobStore.connect(self.address, self.port, timeout_s, self.traffic)

    def close(self) -> None:
        try:
            self.sock.close()
        finally:
            if self.server is not None:
                self.server.close()

    # -- calls, each bounded --------------------------------------------------------------------
    def set(self, key: str, value: str | bytes) -> None:
        text = value.decode() if isinstance(value, bytes) else value
        self._call({"op": "set", "key": key, "value": text}, 30.0)

    def beat(self, key: str, value: str, watch: str) -> bool:
        """Set ``key`` and say whether ``watch`` is set, in one round trip (a heartbeat that
        also hears ``stop``)."""
        return bool(self._call({"op": "beat", "key": key, "value": value, "watch": watch},
                               30.0)["found"])

    def add(self, key: str, amount: int) -> int:
        return int(self._call({"op": "add", "key": key, "amount": amount}, 30.0)["value"])

    def check(self, keys: Sequence[str]) -> bool:
        """Whether every key is set, without waiting."""
        return bool(self._call({"op": "check", "keys": list(keys)}, 30.0)["found"])

    def get(self, key: str) -> bytes:
        """A key known to be set (``check`` or ``wait`` said so)."""
        return self.multi_get([key])[0]

    def multi_get(self, keys: Sequence[str]) -> list[bytes]:
        """Keys known to be set, in one round trip."""
        if not keys:
            return []
        values = self._call({"op": "get", "keys": list(keys)}, 30.0)["values"]
        return [str(v).encode() for v in values]

    def values(self, keys: Sequence[str]) -> list[Optional[bytes]]:
        """Keys that may be unset (None), in one round trip: node 0's look at every
        heartbeat at once."""
        if not keys:
            return []
        values = self._call({"op": "get", "keys": list(keys), "missing_ok": True},
                            30.0)["values"]
        return [None if v is None else str(v).encode() for v in values]

    def wait(self, keys: Sequence[str], deadline: float,
             cancel: Optional[threading.Event] = None) -> bool:
        """Until every key is set (True), ``deadline`` (monotonic) passes or ``cancel`` is set
        (False). Waits in slices so that a cancel is seen between them."""
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or (cancel is not None and cancel.is_set()):
                return False
            piece = min(WAIT_SLICE_S, left)
            if self._call({"op": "wait", "keys": list(keys), "timeout": piece},
                          piece + 30.0)["found"]:
                return True

    def _call(self, request: dict, limit_s: float) -> dict:
        data = _frame(request)
        with self.lock:
            try:
                self.sock.settimeout(limit_s)
                self.sock.sendall(data)
                head = self._read(4)
                body = self._read(_LENGTH.unpack(head)[0])
            except (socket.timeout, TimeoutError):
                raise StoreError(f"{request['op']} at {self.address}:{self.port}: no answer "
                                 f"within {limit_s:g}s") from None
            except OSError as exc:
                raise StoreError(f"{request['op']} at {self.address}:{self.port}: "
                                 f"{exc.strerror or exc}") from None
        self.traffic.count(len(data), len(head) + len(body))
        answer = json.loads(body)
        if "error" in answer:
            raise StoreError(f"{request['op']} at {self.address}:{self.port}: "
                             f"{answer['error']}")
        return answer

    def _read(self, size: int) -> bytes:
        chunks = bytearray()
        while len(chunks) < size:
            chunk = self.sock.recv(size - len(chunks))
            if not chunk:
                raise OSError("the store closed the connection (node 0 is gone)")
            chunks += chunk
        return bytes(chunks)
