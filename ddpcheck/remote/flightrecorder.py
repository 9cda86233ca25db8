"""PyTorch Flight Recorder dumps -> the collective sequence ids of one rank, for its default
process group and for every other group in the dump (pure, stdlib only).

Used by the host scan of ``ddpcheck hang``. A dump is what ``ProcessGroupNCCL``'s watchdog writes
on a timeout to ``$TORCH_FR_DUMP_TEMP_FILE<rank>`` (older name ``$TORCH_NCCL_DEBUG_INFO_TEMP_FILE``,
default ``/tmp/nccl_trace_rank_<rank>``), or what a job writes itself from
``torch._C._distributed_c10d._dump_fr_trace()``: a pickled dict with ``version``, ``pg_config``,
``pg_status`` ({pg id: last enqueued/started/completed collective}) and ``entries`` (one per
collective: ``collective_seq_id``, ``profiling_name`` such as ``nccl:all_reduce``, ``state``).

The file is untrusted input: it is unpickled with no globals at all (a dump holds only dicts,
lists, tuples, strings, numbers and None), so a crafted file cannot run code, and every field is
read defensively: a dump of another version gives what can be read, never an exception.
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass
from typing import Any, Mapping, Optional

DEFAULT_PREFIX = "/tmp/nccl_trace_rank_"
PREFIX_VARIABLES = ("TORCH_FR_DUMP_TEMP_FILE", "TORCH_NCCL_DEBUG_INFO_TEMP_FILE")
MAX_DUMP_BYTES = 64 << 20


class _NoGlobalsUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing {module}.{name}: a dump holds only plain data")


@dataclass(frozen=True)
class FlightRecord:
    """What one rank's dump says about its default process group's collectives."""

    version: Optional[str]
    entries: int
    last_enqueued: Optional[int]  # collective sequence ids (pg_status, else from entries)
    last_started: Optional[int]
    last_completed: Optional[int]
    last_op: Optional[str]  # e.g. "all_reduce" (backend prefix dropped)
    last_op_seq: Optional[int]
    last_op_state: Optional[str]  # scheduled | started | completed
    last_op_pending: bool = False  # the last collective had not completed when dumped
    error: Optional[str] = None
    groups: tuple["GroupRecord", ...] = ()  # every process group in the dump, default first

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "entries": self.entries,
                "last_enqueued": self.last_enqueued, "last_started": self.last_started,
                "last_completed": self.last_completed, "last_op": self.last_op,
                "last_op_seq": self.last_op_seq, "last_op_state": self.last_op_state,
                "last_op_pending": self.last_op_pending, "error": self.error,
                "groups": [group.to_json() for group in self.groups]}


@dataclass(frozen=True)
class GroupRecord:
    """One process group as one rank's dump sees it (sequence ids count per group)."""

    pg_id: str
    desc: str  # default_pg, or what new_group was given ("undefined" when nothing)
    ranks: tuple[int, ...]  # global ranks, from pg_config when the dump has them (NCCL)
    last_enqueued: Optional[int]
    last_completed: Optional[int]
    last_op: Optional[str]
    last_op_seq: Optional[int]
    pending: bool  # the group's last collective had not completed when dumped

    def to_json(self) -> dict[str, Any]:
        return {"pg_id": self.pg_id, "desc": self.desc, "ranks": list(self.ranks),
                "last_enqueued": self.last_enqueued, "last_completed": self.last_completed,
                "last_op": self.last_op, "last_op_seq": self.last_op_seq,
                "pending": self.pending}


def dump_prefix(env: Mapping[str, str]) -> str:
    for name in PREFIX_VARIABLES:
        if env.get(name):
            return env[name]
    return DEFAULT_PREFIX


def unpickle_dump(data: bytes) -> Any:
    return _NoGlobalsUnpickler(io.BytesIO(data)).load()


def parse_dump(data: bytes) -> FlightRecord:
    """A FlightRecord from the bytes of a dump; ``error`` says why when it is unreadable."""
    try:
        dump = unpickle_dump(data)
    except Exception as exc:  # noqa: BLE001 - any malformed pickle is just unreadable
        return _unreadable(f"not a Flight Recorder dump: {type(exc).__name__}: {exc}")
    if not isinstance(dump, dict):
        return _unreadable(f"not a Flight Recorder dump: a {type(dump).__name__}")
    return summarize_dump(dump)


def summarize_dump(dump: Mapping[str, Any]) -> FlightRecord:
    entries = [e for e in _list(dump.get("entries")) if isinstance(e, dict)
               and not e.get("is_p2p")]
    default_pg = _default_pg_entries(entries)
    status = _default_pg_status(dump.get("pg_status"))
    by_state = {state: max((_int(e.get("collective_seq_id")) or 0 for e in default_pg
                            if e.get("state") == state), default=None)
                for state in ("scheduled", "started", "completed")}
    seqs = [_int(e.get("collective_seq_id")) for e in default_pg]
    enqueued = _status_seq(status, "last_enqueued_collective")
    if enqueued is None:
        enqueued = max((s for s in seqs if s is not None), default=None)
    started = _status_seq(status, "last_started_collective")
    if started is None:
        started = by_state["started"]
    completed = _status_seq(status, "last_completed_collective")
    if completed is None:
        completed = by_state["completed"]
    last = max(default_pg, key=lambda e: _int(e.get("collective_seq_id")) or -1, default=None)
    return FlightRecord(
        version=None if dump.get("version") is None else str(dump.get("version")),
        entries=len(entries), last_enqueued=enqueued, last_started=started,
        last_completed=completed,
        last_op=op_name(last.get("profiling_name")) if last else None,
        last_op_seq=_int(last.get("collective_seq_id")) if last else None,
        last_op_state=str(last.get("state")) if last and last.get("state") else None,
        last_op_pending=bool(last) and _pending(last, completed),
        groups=summarize_groups(dump, entries))


def summarize_groups(dump: Mapping[str, Any], entries: list[dict]) -> tuple[GroupRecord, ...]:
    """Every process group the dump knows (pg_status keys and the entries' pg ids)."""
    status = dump.get("pg_status") if isinstance(dump.get("pg_status"), dict) else {}
    ids: dict[str, None] = {}
    for key in status:
        if _int(key) is not None or (isinstance(key, str) and key.isdigit()):
            ids[str(key)] = None
    for entry in entries:
        if _int(entry.get("pg_id")) is not None:
            ids[str(entry["pg_id"])] = None
    config = dump.get("pg_config") if isinstance(dump.get("pg_config"), dict) else {}
    groups = []
    for pg_id in sorted(ids, key=int):
        own = [e for e in entries if str(e.get("pg_id")) == pg_id]
        pg_status = status.get(pg_id) if isinstance(status.get(pg_id), dict) else \
            status.get(int(pg_id)) if isinstance(status.get(int(pg_id)), dict) else {}
        enqueued = _status_seq(pg_status, "last_enqueued_collective")
        if enqueued is None:
            enqueued = max((s for s in (_int(e.get("collective_seq_id")) for e in own)
                            if s is not None), default=None)
        completed = _status_seq(pg_status, "last_completed_collective")
        if completed is None:
            completed = max((_int(e.get("collective_seq_id")) or 0 for e in own
                             if e.get("state") == "completed"), default=None)
        last = max(own, key=lambda e: _int(e.get("collective_seq_id")) or -1, default=None)
        name, desc = _group_name(last, pg_id)
        if last is not None and _int(last.get("collective_seq_id")) != enqueued:
            pending = enqueued is not None and (completed is None or enqueued > completed)
            op = None
        else:
            pending = bool(last) and _pending(last, completed)
            op = op_name(last.get("profiling_name")) if last else None
        groups.append(GroupRecord(
            pg_id=pg_id, desc=desc, ranks=_config_ranks(config.get(name)),
            last_enqueued=enqueued, last_completed=completed, last_op=op,
            last_op_seq=enqueued, pending=pending))
    return tuple(groups)


def _group_name(entry: Optional[Mapping[str, Any]], pg_id: str) -> tuple[str, str]:
    """(name, desc) from an entry's ``process_group`` ``(name, desc)``."""
    group = entry.get("process_group") if entry else None
    if isinstance(group, (list, tuple)) and len(group) == 2:
        return str(group[0]), str(group[1])
    return pg_id, "default_pg" if pg_id == "0" else ""


def _config_ranks(config: Any) -> tuple[int, ...]:
    """pg_config's ``ranks``: a list, or its text ``"[0, 1, 2]"`` (empty for gloo)."""
    ranks = config.get("ranks") if isinstance(config, dict) else None
    if isinstance(ranks, str):
        ranks = [part.strip() for part in ranks.strip("[] ").split(",") if part.strip()]
    if not isinstance(ranks, (list, tuple)):
        return ()
    out = []
    for rank in ranks:
        try:
            out.append(int(rank))
        except (TypeError, ValueError):
            return ()
    return tuple(out)


def op_name(profiling_name: Any) -> Optional[str]:
    """``nccl:all_reduce`` -> ``all_reduce``."""
    if not isinstance(profiling_name, str) or not profiling_name:
        return None
    return profiling_name.rsplit(":", 1)[-1]


def _pending(entry: Mapping[str, Any], completed: Optional[int]) -> bool:
    """Not completed: ``retired`` False where the dump has it (gloo marks every entry
    "scheduled"), else a state other than completed, else beyond the last completed seq."""
    if isinstance(entry.get("retired"), bool):
        return not entry["retired"]
    if entry.get("state") in ("scheduled", "started", "completed"):
        return entry.get("state") != "completed"
    seq = _int(entry.get("collective_seq_id"))
    return seq is not None and (completed is None or seq > completed)


def _default_pg_entries(entries: list[dict]) -> list[dict]:
    """Entries of the default process group (pg id 0), or all when ids are absent."""
    with_id = [e for e in entries if _int(e.get("pg_id")) is not None]
    if not with_id:
        return entries
    return [e for e in with_id if _int(e.get("pg_id")) == 0]


def _default_pg_status(status: Any) -> Mapping[str, Any]:
    if not isinstance(status, dict):
        return {}
    for key in ("0", 0):
        if isinstance(status.get(key), dict):
            return status[key]
    return {}


def _status_seq(status: Mapping[str, Any], key: str) -> Optional[int]:
    value = _int(status.get(key))
    return None if value is None or value < 0 else value  # -1: not tracked by this backend


def _unreadable(error: str) -> FlightRecord:
    return FlightRecord(None, 0, None, None, None, None, None, None, error=error[:300])


def _list(value: Any) -> list:
    return value if isinstance(value, (list, tuple)) else []


def _int(value: Any) -> Optional[int]:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value
