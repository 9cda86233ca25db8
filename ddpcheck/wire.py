"""The host <-> launcher protocol: one marked line per record, ``@@DDPCHECK <kind> <json>``.

Runs everywhere (launcher, every host, every rank, the user's job): standard library only.
Hosts and ranks write records with ``emit`` among whatever else they print (a pty may add
``\\r``, a launcher may prefix lines); the launcher finds them with ``find``.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Mapping, Optional, TextIO

MARK = "@@DDPCHECK"
# The agent's ``stopped`` reason when the launcher's stop line came (another host failed).
STOPPED_BY_LAUNCHER = "asked to stop by the launcher"


def encode(kind: str, payload: Mapping[str, Any]) -> str:
    """One record as its line (without the newline)."""
    return f"{MARK} {kind} {json.dumps(payload, sort_keys=True)}"


def emit(kind: str, payload: Mapping[str, Any], stream: Optional[TextIO] = None) -> None:
    """Write one record and flush it: a host killed a moment later still reported."""
    out = stream if stream is not None else sys.stdout
    out.write(encode(kind, payload) + "\n")
    out.flush()


def find(line: str) -> Optional[tuple[str, str]]:
    """(kind, JSON text) of the record in ``line``, wherever it starts; None for other lines."""
    at = line.find(MARK + " ")
    if at < 0:
        return None
    kind, _, payload = line[at + len(MARK) + 1:].partition(" ")
    return kind, payload
