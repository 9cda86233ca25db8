"""The in-job transport's wire: torch's TCPStore at the master address, with a deadline on
every call and its traffic counted. Runs on every node of the job (``preflight --in-job``).

Node 0 hosts the store on the master port, as torchrun's own rendezvous does; every other node
connects to it. No call blocks past its deadline: a wait is made in slices (so SIGTERM and
Ctrl-C are seen between them) and a connection that cannot be made within its deadline is a
``StoreError`` naming the address. ``Traffic`` counts what this node sent and received (keys
and values, not the store's few header bytes) and its round trips, for the benchmark's
projection to thousands of nodes. torch is imported when a store is made, not before.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Optional, Sequence

WAIT_SLICE_S = 0.5  # a blocking wait is cut in slices: signals are handled between them


class StoreError(Exception):
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


def _tcpstore(address: str, port: int, master: bool, timeout_s: float) -> Any:
    return _store_class()(address, port, is_master=master, timeout=timedelta(seconds=timeout_s),
                          wait_for_workers=False)


def _store_class() -> Any:
    """torch's TCPStore, imported here, not at import (the parser stays light). Its C++
    warnings (a connection retried, a client's hostname not resolved) are our own errors'
    business: torch's C++ log level is read once, at its import, so it is raised for this
    process only, and the variable put back for the programs it starts."""
    import os

    before = os.environ.get("TORCH_CPP_LOG_LEVEL")
    if before is None:
        os.environ["TORCH_CPP_LOG_LEVEL"] = "FATAL"
    try:
        from torch.distributed import TCPStore
    finally:
        if before is None:
            os.environ.pop("TORCH_CPP_LOG_LEVEL", None)
    return TCPStore




class JobStore:
    """One connection to the job's store (one per thread that blocks on it: ``connection``)."""

    def __init__(self, store: Any, address: str, port: int, traffic: Traffic) -> None:
        self._store = store
        self.address = address
        self.port = port
        self.traffic = traffic

    @classmethod
    def serve(cls, port: int, timeout_s: float, traffic: Optional[Traffic] = None
              ) -> "JobStore":
        """Host the store on ``port`` (node 0), listening on every address."""
        try:
            store = _tcpstore("0.0.0.0", port, True, timeout_s)
        except Exception as exc:  # torch raises RuntimeError/DistNetworkError with the cause
            raise StoreError(f"cannot host the job's store on port {port}: "
                             f"{_first_line(exc)}") from None
        return cls(store, "0.0.0.0", port, traffic or Traffic())

    @classmethod
    def connect(cls, address: str, port: int, timeout_s: float,
                traffic: Optional[Traffic] = None) -> "JobStore":
        """Connect to node 0's store within ``timeout_s``."""
        started = time.monotonic()
        try:
            store = _tcpstore(address, port, False, max(timeout_s, 0.1))
        except Exception as exc:
            raise StoreError(f"cannot reach the master's store at {address}:{port} within "
                             f"{time.monotonic() - started:.0f}s: {_first_line(exc)}") from None
        counter = traffic or Traffic()
        counter.count(0, 0, 1)  # the connection's own handshake
        return cls(store, address, port, counter)

    def connection(self, timeout_s: float) -> "JobStore":
        """Another connection to the same store, for another thread (same counters)."""
        address = "127.0.0.1" if self.address == "0.0.0.0" else self.address
        return JobStore.connect(address, self.port, timeout_s, self.traffic)

    # -- calls, each bounded --------------------------------------------------------------------
    def set(self, key: str, value: str | bytes) -> None:
        data = value.encode() if isinstance(value, str) else value
        self._call(lambda: self._store.set(key, data), f"set {key}")
        self.traffic.count(len(key) + len(data))

    def add(self, key: str, amount: int) -> int:
        value = self._call(lambda: self._store.add(key, amount), f"add {key}")
        self.traffic.count(len(key) + 8, 8)
        return int(value)

    def check(self, keys: Sequence[str]) -> bool:
        """Whether every key is set, without waiting."""
        found = self._call(lambda: self._store.check(list(keys)), "check")
        self.traffic.count(sum(len(k) for k in keys), 1)
        return bool(found)

    def get(self, key: str) -> bytes:
        """A key known to be set (``check`` or ``wait`` said so)."""
        value = self._call(lambda: self._store.get(key), f"get {key}")
        self.traffic.count(len(key), len(value))
        return bytes(value)

    def multi_get(self, keys: Sequence[str]) -> list[bytes]:
        """Keys known to be set, in one round trip."""
        if not keys:
            return []
        values = self._call(lambda: self._store.multi_get(list(keys)), "multi_get")
        self.traffic.count(sum(len(k) for k in keys), sum(len(v) for v in values))
        return [bytes(v) for v in values]

    def wait(self, keys: Sequence[str], deadline: float,
             cancel: Optional[threading.Event] = None) -> bool:
        """Until every key is set (True), ``deadline`` (monotonic) passes or ``cancel`` is set
        (False). Waits in slices so that signals are handled between them."""
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or (cancel is not None and cancel.is_set()):
                return False
            piece = min(WAIT_SLICE_S, left)
            try:
                self._store.wait(list(keys), timedelta(seconds=piece))
                self.traffic.count(sum(len(k) for k in keys), 1)
                return True
            except Exception as exc:
                self.traffic.count(sum(len(k) for k in keys), 0)
                if not _is_timeout(exc):
                    raise StoreError(f"waiting for {', '.join(keys)} at {self.address}:"
                                     f"{self.port}: {_first_line(exc)}") from None

    def _call(self, call, what: str):
        try:
            return call()
        except Exception as exc:
            raise StoreError(f"{what} at {self.address}:{self.port}: {_first_line(exc)}") from None


def _is_timeout(exc: Exception) -> bool:
    text = str(exc).lower()
    return "timeout" in text or "timed out" in text or "wait timeout" in text


def _first_line(exc: Exception) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0][:300] if lines else type(exc).__name__
