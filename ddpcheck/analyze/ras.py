"""NCCL RAS's answer (``remote.ncclras``) -> its view of the job and ``hang`` findings.

Pure: the text RAS sent (``VERBOSE STATUS``, the format of NCCL 2.24 to 2.29: src/ras/
client_support.cc and the RAS page of NCCL's user guide) in, plain data and findings out; used
by ``ddpcheck hang`` beside stacks, heartbeats and the Flight Recorder. What it reads:

* the communicators table (group, comms, nodes, ranks, status, errors);
* Errors: ``INCOMPLETE`` (job processes that did not answer: unresponsive), ``DEAD`` (declared
  dead after 60 s unreachable), ``#G-C (hash) INCOMPLETE`` (ranks missing from a communicator),
  ``#G-C (hash) ERROR`` (init / asynchronous errors);
* Warnings: ``TIMEOUT`` and ``#G-C (hash) MISMATCH`` (ranks at different collective operation
  counts: the ones behind are the ones the others wait for, once repeated queries agree).
"""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping, Optional

from ..model.checks import Check
from ..model.records import Finding, Severity

_PROCESS = re.compile(r"Process (?P<pid>\d+) on node (?P<node>\S+) managing GPUs? (?P<gpu>.+)$")
_RANK = re.compile(r"Rank (?P<rank>\d+)(?: has launched up to operation (?P<op>\d+)"
                   r"| has not launched any operations(?P<none>)"
                   r"| has status (?P<status>\S+)| reported (?P<error>.+?))?"
                   r" -- (?:GPU (?P<gpu>\S+) managed by process (?P<pid>\d+) on node "
                   r"(?P<node>\S+)|\[process information not found\])")
_GROUP_OPS = re.compile(r"(?P<count>\d+) ranks have launched up to operation (?P<op>\d+)")
_GROUP_NONE = re.compile(r"(?P<count>\d+) ranks have not launched any operations")
_COMM = re.compile(r"^#(?P<group>\d+)-(?P<comm>\d+) \((?P<hash>[0-9a-fA-F]+)\) (?P<kind>[A-Z]+)")
_MISSING_LIST = re.compile(r"The missing ranks?: (?P<ranks>[\d, ]+)")
_OPS_KIND = re.compile(r"different (?:(?P<coll>\w+) )?operation counts")
_TABLE_ROW = re.compile(r"^\s*(\d+)\s+(\d+)\s+(\d+)\s+(\S+)\s+(\d+)\s+(\d+)\s+(\S+)\s+(\S+)\s*$")
_VERSION = re.compile(r"NCCL version (\S+)")

RankNamer = Callable[[str, int], Optional[int]]  # (node, pid) -> the job's global rank


def parse(text: str) -> dict[str, Any]:
    """RAS text -> {"nccl", "communicators": [...], "unresponsive": [...], "dead": [...],
    "missing": [...], "errors": [...], "mismatches": [{"id", "hash", "collective", "groups":
    [{"operation", "count", "ranks"}]}], "timeouts": n}."""
    view: dict[str, Any] = {"nccl": None, "communicators": [], "unresponsive": [], "dead": [],
                            "missing": [], "errors": [], "mismatches": [], "timeouts": 0}
    version = _VERSION.search(text)
    if version:
        view["nccl"] = version.group(1)
    section = ""
    block: Optional[str] = None
    comm: Optional[dict[str, Any]] = None
    lines = text.splitlines()
    for index, line in enumerate(lines):
        underline = lines[index + 1] if index + 1 < len(lines) else ""
        if line.strip() in ("Errors", "Warnings") and set(underline.strip()) == {"="}:
            section, block, comm = line.strip(), None, None
            continue
        if not line.strip() or set(line.strip()) == {"="}:
            continue
        row = _TABLE_ROW.match(line)
        if row and not section:
            view["communicators"].append({
                "group": int(row.group(1)), "comms": int(row.group(2)),
                "nodes": int(row.group(3)), "ranks_per_node": row.group(4),
                "ranks_per_comm": int(row.group(5)), "ranks": int(row.group(6)),
                "status": row.group(7), "errors": row.group(8)})
            continue
        if not section:
            continue
        if not line.startswith(" "):  # a block's title
            head = _COMM.match(line)
            comm = ({"id": f"#{head.group('group')}-{head.group('comm')}",
                     "hash": head.group("hash")} if head else None)
            block = head.group("kind") if head else line.strip()
            continue
        body = line.strip()
        if block in ("INCOMPLETE", "DEAD") and comm is None:
            match = _PROCESS.search(body)
            if match:
                view["unresponsive" if block == "INCOMPLETE" else "dead"].append(
                    {"pid": int(match.group("pid")), "node": match.group("node"),
                     "gpu": match.group("gpu").strip()})
        elif block == "TIMEOUT":
            count = re.search(r"Encountered (\d+) communication timeout", body)
            if count:
                view["timeouts"] = int(count.group(1))
        elif comm is not None and block == "INCOMPLETE":
            listed = _MISSING_LIST.search(body)
            if listed:
                for rank in re.findall(r"\d+", listed.group("ranks")):
                    view["missing"].append({**comm, "rank": int(rank)})
            rank = _RANK.search(body)
            if rank:
                view["missing"].append({**comm, **_rank(rank)})
        elif comm is not None and block == "ERROR":
            rank = _RANK.search(body)
            if rank:
                view["errors"].append({**comm, **_rank(rank), "error": rank.group("error")})
            else:
                many = re.match(r"(\d+) ranks reported (.+)$", body)
                if many:
                    view["errors"].append({**comm, "rank": None,
                                           "error": f"{many.group(2)} ({many.group(1)} ranks)"})
        elif comm is not None and block == "MISMATCH":
            kind = _OPS_KIND.search(body)
            if kind or "different status" in body:
                current = {**comm, "collective": (kind.group("coll") or "collective")
                           if kind else "status", "groups": []}
                view["mismatches"].append(current)
                continue
            if not view["mismatches"] or view["mismatches"][-1]["id"] != comm["id"]:
                continue
            current = view["mismatches"][-1]
            ops, none = _GROUP_OPS.search(body), _GROUP_NONE.search(body)
            if ops or none:
                current["groups"].append({"operation": int(ops.group("op")) if ops else 0,
                                          "count": int((ops or none).group("count")),
                                          "ranks": []})
                continue
            rank = _RANK.search(body)
            if rank is None or current["collective"] == "status":
                continue
            entry = _rank(rank)
            if rank.group("op") or rank.group("none") is not None:  # a group of one
                current["groups"].append({"operation": int(rank.group("op") or 0),
                                          "count": 1, "ranks": [entry]})
            elif current["groups"]:
                current["groups"][-1]["ranks"].append(entry)
    return view


def _rank(match: re.Match[str]) -> dict[str, Any]:
    return {"rank": int(match.group("rank")),
            "pid": int(match.group("pid")) if match.group("pid") else None,
            "node": match.group("node"), "gpu": match.group("gpu")}


def findings(view: Mapping[str, Any], rank_of: Optional[RankNamer] = None) -> list[Finding]:
    """``hang`` findings from RAS's view: dead or unresponsive processes and missing ranks are
    errors (the collective cannot finish without them), ranks behind the others a warning."""
    name = rank_of or (lambda node, pid: None)
    out: list[Finding] = []
    seen: set[tuple[Any, Any]] = set()
    for key, what in (("dead", "is considered dead by NCCL RAS (unreachable for 60 s or more)"),
                      ("unresponsive", "did not answer NCCL RAS (stopped, hung or gone)")):
        for process in view.get(key) or []:
            rank = name(str(process.get("node")), int(process.get("pid") or 0))
            seen.add((process.get("node"), process.get("pid")))
            out.append(Finding(Severity.ERROR, Check.HANG,
                               f"NCCL RAS: process {process.get('pid')} on node "
                               f"{process.get('node')} (GPU {process.get('gpu')}"
                               f"{_rank_text(rank)}) {what}", rank=rank))
    for missing in view.get("missing") or []:
        if (missing.get("node"), missing.get("pid")) in seen:
            continue
        where = (f" (process {missing['pid']} on node {missing['node']})"
                 if missing.get("pid") else "")
        out.append(Finding(Severity.ERROR, Check.HANG,
                           f"NCCL RAS: communicator {missing['id']} ({missing['hash']}) is "
                           f"missing rank {missing['rank']}{where}: it gave RAS no data",
                           rank=_global(missing, name)))
    for error in view.get("errors") or []:
        rank = error.get("rank")
        who = f"rank {rank}" if rank is not None else "some ranks"
        out.append(Finding(Severity.ERROR, Check.HANG,
                           f"NCCL RAS: communicator {error['id']} ({error['hash']}): {who} "
                           f"reported {error.get('error')}", rank=_global(error, name)))
    for mismatch in view.get("mismatches") or []:
        groups = [g for g in mismatch.get("groups") or [] if isinstance(g, Mapping)]
        if len(groups) < 2:
            continue
        top = max(g["operation"] for g in groups)
        for group in groups:
            if group["operation"] >= top:
                continue
            ranks = [r["rank"] for r in group.get("ranks") or []]
            who = (f"rank(s) {', '.join(map(str, ranks))}" if ranks
                   else f"{group['count']} rank(s)")
            rank = _global(group["ranks"][0], name) if len(ranks) == 1 else None
            out.append(Finding(Severity.WARNING, Check.HANG,
                               f"NCCL RAS: communicator {mismatch['id']} ({mismatch['hash']}): "
                               f"{who} launched {mismatch['collective']} operations only up to "
                               f"{group['operation']}, others up to {top}: the collective "
                               f"waits for them if a second query shows the same",
                               rank=rank))
    return out


def _global(entry: Mapping[str, Any], name: RankNamer) -> Optional[int]:
    if entry.get("node") and entry.get("pid"):
        return name(str(entry["node"]), int(entry["pid"]))
    return None


def _rank_text(rank: Optional[int]) -> str:
    return f", rank {rank}" if rank is not None else ""
