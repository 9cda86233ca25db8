"""The ``ddpcheck.Monitor`` heartbeat file: where it lives, what it holds, how it is read.

Written by the Monitor inside the job (``injob.monitor``), read back by the Monitor's own
watchdog and straggler exchange (the ranks of one host, when there is no TCPStore) and by the
host scan of ``ddpcheck hang`` (``remote.hangscan``), whose records the launcher analyses
(``analyze.hang``). One owner for the format, so the writer and the three readers cannot drift.

    $DDPCHECK_HEARTBEAT_DIR/<job>/rank-<rank>.json     (default /dev/shm/ddpcheck-heartbeat-<uid>)

A heartbeat is one JSON object (``FIELDS``); ``history`` holds the last steps as rows
[step, time, busy_s, wait_s, starved_s, blocked_s] (``core.straggler.StepSample``) and
``stragglers`` the Monitor's current verdict (``core.straggler.Straggler.as_dict``), so that
``ddpcheck hang`` says what the Monitor says. With ``numerics_every=N`` the heartbeat of the rank
that judges the canary (rank 0; every rank without a store) carries ``numerics``: one entry per
device and dtype its canary named (``injob.numerics.NumericsCanary.named``: rank, host, where,
dtype, why, the rounds it was wrong of those compared, the first and last such step).
Standard library only.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from typing import Any, Mapping, Optional

VERSION = 1
DIR_VARIABLE = "DDPCHECK_HEARTBEAT_DIR"
PREFIX = "ddpcheck-heartbeat-"
SHM_DIR = "/dev/shm"
MAX_BYTES = 1 << 16  # a heartbeat is a few kB; a bigger file is not one
FILE_PATTERN = re.compile(r"rank-(\d+)\.json")
# The fields of a heartbeat, in the order written.
FIELDS = ("v", "job", "rank", "local_rank", "world_size", "host", "pid", "started", "step",
          "time", "seq", "seq_now", "beat")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def job_key(env: Mapping[str, str]) -> str:
    """One key per torchrun job: its run id and master address (torchrun's default run id is
    "none", so the master address is what tells two jobs apart)."""
    return (f"{env.get('TORCHELASTIC_RUN_ID') or '-'}@{env.get('MASTER_ADDR') or '?'}:"
            f"{env.get('MASTER_PORT') or '?'}")


def job_dirname(key: str) -> str:
    return _UNSAFE.sub("_", key).strip("._") or "job"


def default_root(uid: Optional[int] = None) -> str:
    """/dev/shm (tmpfs: a rename there costs microseconds; on ext4 it may flush data and cost a
    millisecond) when it exists, else the temp dir; one folder per user."""
    uid = os.getuid() if uid is None else uid
    shm_dir = SHM_DIR  # read at each call: tests point it at a folder of their own
    base = shm_dir if os.path.isdir(shm_dir) and os.access(shm_dir, os.W_OK) else \
        tempfile.gettempdir()
    return os.path.join(base, f"{PREFIX}{uid}")


def root(env: Mapping[str, str], uid: Optional[int] = None) -> str:
    return env.get(DIR_VARIABLE) or default_root(uid)


def path(root_dir: str, key: str, rank: int) -> str:
    return os.path.join(root_dir, job_dirname(key), f"rank-{rank}.json")


def rank_of_filename(name: str) -> Optional[int]:
    """The rank of a heartbeat's file name (``rank-3.json``), None for any other file."""
    match = FILE_PATTERN.fullmatch(name)
    return int(match.group(1)) if match else None


def encode(record: Mapping[str, Any], history_json: Optional[str] = None,
           stragglers_json: Optional[str] = None, numerics_json: Optional[str] = None) -> bytes:
    """A heartbeat's bytes: ``record`` (the ``FIELDS``) plus the history and verdicts, passed
    already serialized (the Monitor's thread and the canary's judge prepare them, so the
    training step never pays)."""
    text = json.dumps({name: record.get(name) for name in FIELDS}, separators=(",", ":"))
    if history_json is not None:
        text = f'{text[:-1]},"history":{history_json}}}'
    if stragglers_json is not None:
        text = f'{text[:-1]},"stragglers":{stragglers_json}}}'
    if numerics_json is not None:
        text = f'{text[:-1]},"numerics":{numerics_json}}}'
    return text.encode()


def decode(data: bytes) -> Optional[dict[str, Any]]:
    """A heartbeat from its bytes; None when they are not a JSON object."""
    try:
        value = json.loads(data)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def read_job_folder(folder: str) -> dict[int, dict[str, Any]]:
    """{rank: heartbeat} of one job's folder (the ranks of this host: the Monitor's fallback
    when there is no TCPStore). Files being replaced or unreadable are skipped."""
    beats: dict[int, dict[str, Any]] = {}
    for name in os.listdir(folder):
        rank = rank_of_filename(name)
        if rank is None:
            continue
        try:
            with open(os.path.join(folder, name), "rb") as handle:
                beat = decode(handle.read(MAX_BYTES + 1))
        except OSError:
            continue
        if beat is not None:
            beats[rank] = beat
    return beats


def history(beat: Mapping[str, Any]) -> list[Any]:
    """The step rows of a heartbeat ([] when it has none)."""
    rows = beat.get("history")
    return rows if isinstance(rows, list) else []


def verdict(beat: Mapping[str, Any]) -> Optional[list[dict[str, Any]]]:
    """The Monitor's current stragglers in a heartbeat; None when it carries no verdict (a
    Monitor with stragglers off, or one that has not judged yet)."""
    named = beat.get("stragglers")
    if not isinstance(named, list):
        return None
    return [entry for entry in named if isinstance(entry, dict)]


def numerics(beat: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The devices the Monitor's numerics canary named in a heartbeat ([] when none was, or the
    canary is off)."""
    named = beat.get("numerics")
    if not isinstance(named, list):
        return []
    return [entry for entry in named if isinstance(entry, dict)]
