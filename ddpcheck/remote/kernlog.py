"""NVIDIA Xid / SXid events from this host's kernel log, as plain data.

Runs on each host inside the agent (stage 0) and in ``ddpcheck node``; ``analyze.xid`` gives each
event its meaning, action and severity. Reads ``/dev/kmsg`` (every record still in the kernel's
ring buffer, non-blocking, no child process); where that is denied (``kernel.dmesg_restrict=1``
lets only root or CAP_SYSLOG read it) it tries ``journalctl -k``, and where both are denied it
says so plainly instead of reporting a clean log.

The driver's formats (``NVRM`` messages of nvidia.ko, ``nvidia-nvswitchN`` of nvidia-nvswitch.ko):

    NVRM: Xid (PCI:0000:3b:00): 79, pid=1234, name=python, GPU has fallen off the bus.
    NVRM: Xid (PCI:0000:3b:00): 48, pid='<unknown>', name=<unknown>, An uncorrectable ...
    NVRM: Xid (PCI:0000:18:00): 13, Graphics SM Warp Exception on (GPC 0, TPC 1): ...
    nvidia-nvswitch3: SXid (PCI:0000:c6:00.0): 12028, Non-fatal, Link 32 egress ...

Only events since the driver was last loaded (its "NVRM: loading NVIDIA UNIX ..." line) count,
and of those only the ones since ``since`` when given. Events are counted per (kind, number,
bus id), not listed: a GPU that logs the same Xid ten
thousand times yields one entry with its count, first and last time and one sample message.
Imports only the standard library.
"""

from __future__ import annotations

import errno
import json
import os
import pwd
import re
import shutil
import subprocess
import time
from typing import Any, Iterable, Optional

KMSG = "/dev/kmsg"
DMESG_RESTRICT = "/proc/sys/kernel/dmesg_restrict"
JOURNALCTL_TIMEOUT_S = 10.0
MAX_EVENTS = 200  # distinct (kind, xid, bus) entries kept; the rest are counted in "dropped"
MAX_MESSAGE = 300

_EVENT = re.compile(
    r"(?:NVRM: (?P<kind>Xid)|nvidia-nvswitch(?P<switch>\d+): (?P<skind>SXid)) "
    r"\(PCI:(?P<bus>[0-9A-Fa-f]{1,8}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}(?:\.[0-7])?)\): "
    r"(?P<xid>\d{1,6}),\s*(?P<rest>.*)$")
# nvidia.ko's first line on every load (proprietary and open modules alike).
_DRIVER_LOAD = re.compile(r"NVRM: loading NVIDIA UNIX")
_PID = re.compile(r"^pid=(?P<pid>'?[^,]*'?),\s*(?:name=(?P<name>[^,]*),\s*)?")


def parse_event(message: str) -> Optional[dict[str, Any]]:
    """One kernel log message -> {"kind", "xid", "bus_id", "pid", "process", "message"}, or
    None when it is not an Xid/SXid line in the driver's format."""
    match = _EVENT.search(message)
    if match is None:
        return None
    rest = match.group("rest").strip()
    pid: Optional[int] = None
    process: Optional[str] = None
    head = _PID.match(rest)
    if head:
        text = head.group("pid").strip("'")
        pid = int(text) if text.isdigit() else None
        name = (head.group("name") or "").strip()
        process = name if name and name != "<unknown>" else None
        rest = rest[head.end():]
    event: dict[str, Any] = {
        "kind": "SXid" if match.group("skind") else "Xid",
        "xid": int(match.group("xid")),
        "bus_id": normalize_bus_id(match.group("bus")),
        "pid": pid, "process": process, "message": rest[:MAX_MESSAGE]}
    if match.group("switch") is not None:
        event["nvswitch"] = int(match.group("switch"))
    return event


def normalize_bus_id(bus: str) -> str:
    """"0000:3B:00" (the Xid form, no function) -> "0000:3b:00.0", as NVML facts spell it."""
    text = bus.lower()
    domain, _, rest = text.partition(":")
    if "." not in rest:
        rest += ".0"
    try:
        return f"{int(domain, 16):04x}:{rest}"
    except ValueError:
        return text


def parse_kmsg_record(record: str) -> Optional[tuple[int, str]]:
    """A /dev/kmsg record "prio,seq,usec,flags[,...];message\\n[ KEY=value...]" -> (usec since
    boot, message), or None for anything else."""
    header, sep, body = record.partition(";")
    if not sep:
        return None
    fields = header.split(",")
    if len(fields) < 3 or not fields[2].isdigit():
        return None
    return int(fields[2]), body.split("\n", 1)[0]


def count_events(stamped: Iterable[tuple[float, str]]) -> dict[str, Any]:
    """(wall time, message) pairs -> {"events": [...], "dropped": n, "driver_loaded"}: one
    entry per (kind, xid, bus id) with its count, first/last time and the latest message.
    Only events since the driver was last loaded count: a reload resets the GPUs, and what came
    before concerned the previous instance (NVML's counters keep what outlives it)."""
    table: dict[tuple[str, int, str], dict[str, Any]] = {}
    dropped = 0
    loaded: Optional[float] = None
    for when, message in stamped:
        if _DRIVER_LOAD.search(message):
            table.clear()
            dropped, loaded = 0, when
            continue
        event = parse_event(message)
        if event is None:
            continue
        key = (event["kind"], event["xid"], event["bus_id"])
        entry = table.get(key)
        if entry is None:
            if len(table) >= MAX_EVENTS:
                dropped += 1
                continue
            entry = table[key] = {**event, "count": 0, "first": when}
        entry["count"] += 1
        entry["last"] = when
        entry.update({k: event[k] for k in ("pid", "process", "message")})
    events = sorted(table.values(), key=lambda e: (e["first"], e["kind"], e["xid"]))
    return {"events": events, "dropped": dropped, "driver_loaded": loaded}


def read_kmsg(path: str = KMSG, since: Optional[float] = None) -> tuple[list[tuple[float, str]],
                                                                      Optional[OSError]]:
    """Every record in the kernel ring buffer whose message names an Xid, as (wall time,
    message). Returns the OSError when the file cannot be opened (EPERM under
    dmesg_restrict)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        return [], exc
    offset = time.time() - time.clock_gettime(time.CLOCK_MONOTONIC)  # wall = offset + mono
    found: list[tuple[float, str]] = []
    try:
        while True:
            try:
                data = os.read(fd, 16384)
            except BlockingIOError:
                break  # the end of the buffer
            except OSError as exc:
                if exc.errno == errno.EPIPE:
                    continue  # the record was overwritten while we read: skip it
                if exc.errno == errno.EINVAL:
                    continue
                return found, exc
            if not data:
                break
            record = data.decode("utf-8", "replace")
            if "Xid" not in record and "NVRM: loading" not in record:
                continue
            parsed = parse_kmsg_record(record)
            if parsed is None:
                continue
            when = offset + parsed[0] / 1e6
            if since is None or when >= since:
                found.append((round(when, 3), parsed[1]))
    finally:
        os.close(fd)
    return found, None


def read_journal(since: Optional[float] = None) -> tuple[list[tuple[float, str]], Optional[str]]:
    """The kernel messages of this boot through ``journalctl -k``: (events, why not)."""
    journalctl = shutil.which("journalctl")
    if journalctl is None:
        return [], "journalctl not found"
    # No --since: this boot's kernel log is never empty, so an empty answer means no access
    # (a user outside 'adm'/'systemd-journal' sees only their own entries) or no journald.
    argv = [journalctl, "-k", "-b", "--no-pager", "-o", "json"]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=JOURNALCTL_TIMEOUT_S,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return [], f"journalctl -k failed: {exc}"
    notes = done.stderr.strip()
    denied = ("insufficient permissions", "not seeing messages", "No journal files")
    if done.returncode != 0 or any(text in notes for text in denied):
        return [], f"journalctl -k: {notes.splitlines()[0] if notes else f'exit {done.returncode}'}"
    found: list[tuple[float, str]] = []
    entries = 0
    for line in done.stdout.splitlines():
        entries += 1
        if "Xid" not in line and "NVRM: loading" not in line:
            continue
        try:
            entry = json.loads(line)
            message = entry["MESSAGE"]
            when = int(entry["__REALTIME_TIMESTAMP"]) / 1e6
        except (ValueError, KeyError, TypeError):
            continue
        if isinstance(message, str) and (since is None or when >= since):
            found.append((round(when, 3), message))
    if entries == 0:
        return [], ("journalctl -k shows no kernel message of this boot (no access to the system "
                    "journal, or no journald)")
    return found, None


def read_xids(since: Optional[float] = None, path: str = KMSG) -> dict[str, Any]:
    """This host's Xid/SXid events: {"source", "since", "events", "dropped"}, or {"error",
    "denied": True} when no kernel log could be read, with the reason in plain words."""
    facts: dict[str, Any] = {"since": since}
    stamped, error = read_kmsg(path, since)
    if error is None:
        return {**facts, "source": path, **count_events(stamped)}
    journal, why_not = read_journal(since)
    if why_not is None:
        return {**facts, "source": "journalctl -k", **count_events(journal)}
    facts["denied"] = error.errno in (errno.EPERM, errno.EACCES)
    facts["error"] = unreadable_statement(path, error, why_not)
    return facts


def unreadable_statement(path: str, error: OSError, journal: str) -> str:
    try:
        user = pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        user = f"uid {os.geteuid()}"
    restrict = _read_text(DMESG_RESTRICT)
    why = f"{path}: {error.strerror or error}"
    if error.errno in (errno.EPERM, errno.EACCES) and restrict == "1":
        why += " (kernel.dmesg_restrict=1: only root or CAP_SYSLOG may read the kernel log)"
    return (f"cannot read the kernel log as user {user}: {why}; {journal}. Xid/SXid errors "
            f"were NOT checked: run as root (a SLURM prolog is), or add the user to the 'adm' "
            f"or 'systemd-journal' group for journalctl -k")


def _read_text(path: str) -> Optional[str]:
    try:
        with open(path, encoding="ascii") as handle:
            return handle.read().strip()
    except OSError:
        return None
