"""Collect: raw text that came back from a host -> facts, rank records, the agent's outcome.

Pure. Records travel as marked lines ("@@DDPCHECK <kind> <json>") mixed with whatever else
torchrun and the ranks print; lines may carry torchrun's "[default0]:" prefix or a pty's "\r".
Anything unreadable is kept as stray text for error messages, never a crash.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Optional

from .plan import MARK
from .records import RankRecord, RankStatus


@dataclass(frozen=True)
class HostOutput:
    facts: Optional[dict[str, Any]] = None
    ranks: tuple[dict[str, Any], ...] = ()
    agent: Optional[dict[str, Any]] = None
    stray: tuple[str, ...] = ()  # lines that were not records (torchrun logs, tracebacks)
    garbled: int = 0  # marked lines whose JSON could not be read
    listen: Optional[dict[str, Any]] = None  # the rendezvous check's listener, on the master
    reach: Optional[dict[str, Any]] = None  # this host's connection to the master's port


def parse_output(text: str) -> HostOutput:
    facts: Optional[dict[str, Any]] = None
    agent: Optional[dict[str, Any]] = None
    checks: dict[str, dict[str, Any]] = {}
    ranks: list[dict[str, Any]] = []
    stray: list[str] = []
    garbled = 0
    for raw in text.splitlines():
        line = raw.replace("\r", "")
        at = line.find(MARK + " ")
        if at < 0:
            if line.strip():
                stray.append(line)
            continue
        kind, _, payload = line[at + len(MARK) + 1:].partition(" ")
        try:
            value = json.loads(payload)
        except ValueError:
            garbled += 1
            continue
        if not isinstance(value, dict):
            garbled += 1
        elif kind == "facts":
            facts = value
        elif kind == "agent":
            agent = value
        elif kind == "rank":
            ranks.append(value)
        elif kind in ("listen", "reach"):
            checks[kind] = value
        elif kind == "listening":
            pass  # the listener is up; its outcome comes as "listen"
        else:
            garbled += 1
    return HostOutput(facts, tuple(ranks), agent, tuple(stray), garbled,
                      checks.get("listen"), checks.get("reach"))


def tail(lines: tuple[str, ...] | list[str], count: int = 12) -> str:
    return "\n".join(lines[-count:])


def rank_record(raw: dict[str, Any], host: str) -> RankRecord:
    """A RankRecord from a probe's JSON, tolerant of missing or mistyped fields."""
    try:
        status = RankStatus(raw.get("status", "error"))
    except ValueError:
        status = RankStatus.ERROR
    versions = raw.get("versions") if isinstance(raw.get("versions"), dict) else {}
    collectives = raw.get("collectives") if isinstance(raw.get("collectives"), list) else []
    return RankRecord(
        rank=_opt_int(raw.get("rank")),
        host=str(raw.get("host") or host),
        local_rank=_opt_int(raw.get("local_rank")),
        node_rank=_opt_int(raw.get("node_rank")),
        hostname=_opt_str(raw.get("hostname")),
        pid=_opt_int(raw.get("pid")),
        world_size=_opt_int(raw.get("world_size")),
        device=str(raw.get("device") or "cpu"),
        gpu_uuid=_opt_str(raw.get("gpu_uuid")),
        gpu_bus_id=_opt_str(raw.get("gpu_bus_id")),
        gpu_name=_opt_str(raw.get("gpu_name")),
        visible_gpus=_opt_int(raw.get("visible_gpus")) or 0,
        status=status,
        stage=str(raw.get("stage") or ""),
        error=_opt_str(raw.get("error")),
        failed_at=_opt_float(raw.get("failed_at")),
        barrier_us=_opt_float(raw.get("barrier_us")),
        allreduce_small_us=_opt_float(raw.get("allreduce_small_us")),
        all_reduce_wrong=_opt_int(raw.get("all_reduce_wrong")),
        versions={str(k): _opt_str(v) for k, v in versions.items()},
        collectives=tuple(c for c in collectives if isinstance(c, dict)),
        fingerprint=raw["fingerprint"] if isinstance(raw.get("fingerprint"), dict) else {},
    )


def _opt_int(value: Any) -> Optional[int]:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"-?[0-9]+", value.strip()):
        return int(value)
    return None


def _opt_float(value: Any) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _opt_str(value: Any) -> Optional[str]:
    return None if value is None else str(value)
