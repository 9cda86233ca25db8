"""Collect: raw text that came back from a host -> facts, rank records, the agent's outcome.

Pure. Records travel as marked lines ("@@DDPCHECK <kind> <json>") mixed with whatever else
torchrun and the ranks print; lines may carry torchrun's "[default0]:" prefix or a pty's "\r".
Anything unreadable is kept as stray text for error messages, never a crash.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Optional

from ..wire import find as find_record
from ..model.records import RankRecord, RankStatus


@dataclass(frozen=True)
class HostOutput:
    facts: Optional[dict[str, Any]] = None
    ranks: tuple[dict[str, Any], ...] = ()
    agent: Optional[dict[str, Any]] = None
    stray: tuple[str, ...] = ()  # lines that were not records (torchrun logs, tracebacks)
    garbled: int = 0  # marked lines whose JSON could not be read
    listen: Optional[dict[str, Any]] = None  # the rendezvous check's listener, on the master
    reach: Optional[dict[str, Any]] = None  # this host's connection to the master's port
    torch_import: Optional[dict[str, Any]] = None  # torchrun's import of torch (remote.torchrun)


def parse_output(text: str) -> HostOutput:
    facts: Optional[dict[str, Any]] = None
    agent: Optional[dict[str, Any]] = None
    checks: dict[str, dict[str, Any]] = {}
    ranks: list[dict[str, Any]] = []
    stray: list[str] = []
    garbled = 0
    for raw in text.splitlines():
        line = raw.replace("\r", "")
        record = find_record(line)
        if record is None:
            if line.strip():
                stray.append(line)
            continue
        kind, payload = record
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
        elif kind in ("listen", "reach", "torch_import"):
            checks[kind] = value
        elif kind == "listening":
            pass  # the listener is up; its outcome comes as "listen"
        elif kind == "row":
            pass  # a sweep's row as it was measured (streamed); the rank's record has them all
        else:
            garbled += 1
    return HostOutput(facts, tuple(ranks), agent, tuple(stray), garbled,
                      checks.get("listen"), checks.get("reach"), checks.get("torch_import"))


@dataclass(frozen=True)
class WorkerExit:
    """One failed worker from torchrun's failure summary (its ChildFailedError report)."""

    rank: int
    local_rank: int
    exit_code: int
    pid: Optional[int] = None
    signal: Optional[str] = None  # "SIGKILL" when the exit code is -9
    first: bool = False  # torchrun's "Root Cause (first observed failure)"


_FAILED_RANK = re.compile(r"^\s*rank\s*:\s*(\d+)\s*\(local_rank:\s*(\d+)\)")
_FAILED_EXIT = re.compile(r"^\s*exitcode\s*:\s*(-?\d+)(?:\s*\(pid:\s*(\d+)\))?")
_FAILED_SIGNAL = re.compile(r"\b(SIG[A-Z0-9]+)\b")


def torchrun_failures(lines: tuple[str, ...] | list[str]) -> tuple[WorkerExit, ...]:
    """The failed workers torchrun lists when it gives up::

        Root Cause (first observed failure):
        [0]:
          rank      : 3 (local_rank: 1)
          exitcode  : -9 (pid: 9938)  (SIGKILL)
          traceback : Signal 9 (SIGKILL) received by PID 9938
    """
    found: list[WorkerExit] = []
    current: Optional[dict[str, Any]] = None
    in_root_cause = False

    def flush() -> None:
        if current is not None and current.get("exit_code") is not None:
            found.append(WorkerExit(**current))

    for raw in lines:
        line = raw.replace("\r", "")
        if "Root Cause" in line and "first observed failure" in line:
            flush()
            current, in_root_cause = None, True
            continue
        if line.strip().startswith("Failures:"):
            flush()
            current, in_root_cause = None, False
            continue
        match = _FAILED_RANK.match(line)
        if match:
            flush()
            current = {"rank": int(match[1]), "local_rank": int(match[2]), "exit_code": None,
                       "first": in_root_cause}
            continue
        if current is None:
            continue
        match = _FAILED_EXIT.match(line)
        if match:
            current["exit_code"] = int(match[1])
            current["pid"] = int(match[2]) if match[2] else None
            signal_name = _FAILED_SIGNAL.search(line[match.end():])
            if signal_name:
                current["signal"] = signal_name[1]
        elif "traceback" in line and current.get("signal") is None:
            signal_name = _FAILED_SIGNAL.search(line)
            if signal_name:
                current["signal"] = signal_name[1]
        elif line.strip().startswith(("---", "===")):
            flush()
            current = None
    flush()
    # the root cause block repeats a rank of the failures list: one entry per rank
    by_rank: dict[int, WorkerExit] = {}
    for exit_ in found:
        known = by_rank.get(exit_.rank)
        by_rank[exit_.rank] = exit_ if known is None else WorkerExit(
            **{**known.__dict__, "first": known.first or exit_.first,
               "signal": known.signal or exit_.signal})
    return tuple(by_rank[rank] for rank in sorted(by_rank))


def unreported_ranks(host: str, planned: tuple[int, ...], reported: set[Optional[int]],
                     agent: dict[str, Any], failures: tuple[WorkerExit, ...]
                     ) -> list[RankRecord]:
    """Records for the ranks of ``host`` that left none of their own, from what the agent saw
    of their processes and what torchrun said of their exit; a rank nothing is known of is
    left out (``analyze`` names it as missing)."""
    workers = {w["rank"]: w for w in agent.get("workers") or []
               if isinstance(w, dict) and isinstance(w.get("rank"), int)}
    exits = {f.rank: f for f in failures}
    stopped_by = agent.get("stopped")
    records = []
    for rank in sorted(set(planned) | set(workers) | set(exits)):
        if rank in reported:
            continue
        worker, exit_ = workers.get(rank, {}), exits.get(rank)
        local_rank = worker.get("local_rank", exit_.local_rank if exit_ else (
            rank - planned[0] if planned else None))
        pid = worker.get("pid") or (exit_.pid if exit_ else None)
        if worker.get("state") == "T":
            status, stage = RankStatus.TIMEOUT, "stopped"
            error = (f"its process (pid {pid}) was stopped (state T: SIGSTOP, a debugger or "
                     f"job control) and never finished; the other ranks waited for it")
        elif worker.get("alive") and stopped_by:
            status, stage = RankStatus.TIMEOUT, "no record"
            error = (f"still running (pid {pid}, state {worker.get('state')}) when the agent "
                     f"stopped torchrun ({stopped_by}), and never reported")
        elif exit_ is not None and exit_.signal in ("SIGTERM", "SIGHUP") and not exit_.first:
            status, stage = RankStatus.MISSING, exit_.signal
            error = (f"stopped by torchrun ({exit_.signal}) after another rank of {host} "
                     f"failed")
        elif exit_ is not None:
            status, stage = RankStatus.ERROR, exit_.signal or f"exit {exit_.exit_code}"
            how = (f"killed by {exit_.signal}" if exit_.signal else
                   f"exited with code {exit_.exit_code}")
            error = f"died: {how} (pid {pid}) without a record of its own"
        else:
            continue
        records.append(RankRecord(rank=rank, host=host, local_rank=local_rank, pid=pid,
                                  status=status, stage=stage, error=error, reported=False))
    return records


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
        compute=raw["compute"] if isinstance(raw.get("compute"), dict) else {},
        numerics=raw["numerics"] if isinstance(raw.get("numerics"), dict) else {},
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


def _count(value: Any) -> int:
    """A count as the host wrote it (a number or its text); 0 when it is neither."""
    number = _opt_float(value)
    return int(number) if number is not None else (_opt_int(value) or 0)


def _opt_str(value: Any) -> Optional[str]:
    return None if value is None else str(value)
