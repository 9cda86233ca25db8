"""Inventories users already have -> the same ``ClusterSpec`` a hosts.yaml gives (config stage).

``--hostfile FILE`` (DeepSpeed / OpenMPI ``host slots=N``, MPICH ``host:N``), ``--slurm`` (the
allocation ddpcheck runs in: SLURM_JOB_NODELIST and tasks or GPUs per node) and ``-w EXPR``
(pdsh-style hostlist) only name hosts and their slots; everything else (user, python, env,
ssh, rendezvous, backend) comes from the hosts.yaml given with ``--config FILE``, as its
``defaults`` would apply to a host listed in its ``hosts``.

Parsing is pure; ``load_hostfile`` reads the file. Errors are ``ConfigError`` naming the file
(or the option / variable) and the line.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Mapping, NoReturn, Optional, Sequence, Union

from .hostsyaml import ConfigDefaults, _read_text, host_from_fields
from ..model.errors import ConfigError
from .hostlist import expand_hostlist
from .slurmenv import SlurmError, slurm_allocation
from ..model.spec import ClusterSpec

# OpenMPI hostfile keys: count and cpu are other names of slots; max_slots is a cap that,
# alone on a host's first line, also gives its slots (as OpenMPI 4 reads it).
SLOTS_KEYS = ("slots", "count", "cpu")
MAX_SLOTS_KEYS = ("max_slots", "max-slots")
IGNORED_HOSTFILE_KEYS = MAX_SLOTS_KEYS  # accepted; ddpcheck starts one torchrun per host
_MPICH = re.compile(r"^(?P<name>[^\s:]+|\[[^\]]*\]):(?P<slots>[^\s:]*)$")


@dataclass(frozen=True)
class InventoryEntry:
    """A host an inventory names: its name, its slots (None: GPU count, else 1), its line,
    the user a hostfile gave as ``user@host`` (None: ssh_config / defaults)."""

    name: str
    slots: Optional[int] = None
    line: int = 0
    user: Optional[str] = None


@dataclass
class _Seen:
    """A host while the hostfile is read (OpenMPI's node record)."""

    line: int
    user: Optional[str]
    slots: int = 0
    slots_given: bool = False
    max_slots: int = 0
    lines: int = 0


def parse_hostfile(text: str, source: str) -> list[InventoryEntry]:
    """An OpenMPI / DeepSpeed (``[user@]host [slots=N] [max_slots=M]``, ``slots = N`` too),
    MPICH (``host:N``) or plain (``host``) hostfile, read as OpenMPI reads it: a host listed
    again adds one slot per line (a bare host repeated N times has N slots), a second slot
    count for a host is an error, ``count``/``cpu`` are ``slots``. ``#`` starts a comment.
    A name may be a hostlist (``node[01-04] slots=8``), which pdsh users will try. A host
    named once without slots gets ``None`` (ddpcheck: one rank per GPU). Errors name the
    line."""
    seen: dict[str, _Seen] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        words = re.sub(r"\s*=\s*", "=", line).split()
        name, user, counts = _hostfile_host(words, source, number)
        for host in _expand(name, source, number):
            _add(seen, host, user, counts, source, number)
    if not seen:
        raise ConfigError("no hosts in the hostfile (only comments or blank lines)",
                          source=source)
    return [InventoryEntry(name, _final_slots(node), node.line, node.user)
            for name, node in seen.items()]


def _add(seen: dict, host: str, user: Optional[str], counts: list[tuple[str, int]],
         source: str, number: int) -> None:
    """One line's host, its keys applied in the order written (as OpenMPI does)."""
    node = seen.get(host)
    if node is None:
        node = seen[host] = _Seen(number, user)
    else:
        node.slots += 1  # listed again: one more slot, and its count is fixed now
        node.slots_given = True
        node.user = node.user or user
    node.lines += 1
    for key, value in counts:
        if key == "slots":
            if node.slots_given:
                _fail(source, number, f"{host!r} already has its slots (line {node.line}); "
                                      f"list a host once per slot or once with slots=N, "
                                      f"not both")
            node.slots += value
            node.slots_given = True
            if node.max_slots and node.max_slots < node.slots:
                node.max_slots = node.slots
        else:
            if value < node.slots:
                _fail(source, number, f"max_slots={value} is less than the {node.slots} "
                                      f"slots of {host!r}")
            node.max_slots = value
    if node.lines == 1 and not node.slots_given:
        node.slots = node.max_slots or 1


def _final_slots(node: _Seen) -> Optional[int]:
    if node.lines == 1 and not node.slots_given and not node.max_slots:
        return None
    return node.slots


def _hostfile_host(words: list[str], source: str, number: int
                   ) -> tuple[str, Optional[str], list[tuple[str, int]]]:
    """(host, user, [("slots" | "max_slots", N) in the order written])."""
    first = words[0]
    user = None
    if "@" in first:
        user, _, first = first.rpartition("@")
        if not user or not first:
            _fail(source, number, f"{words[0]!r} is not [user@]host")
    mpich = _MPICH.match(first)
    if mpich and not _looks_like_ipv6(first):
        if len(words) > 1:
            _fail(source, number, f"unexpected {words[1]!r} after {first!r} (MPICH form is "
                                  f"'host:N' alone on a line)")
        return mpich.group("name"), user, [("slots", _slots(mpich.group("slots"), source,
                                                            number, first))]
    counts: list[tuple[str, int]] = []
    for word in words[1:]:
        key, equals, value = word.partition("=")
        key = key.lower()
        if not equals:
            _fail(source, number, f"expected key=value after the host name, got {word!r} "
                                  f"(OpenMPI/DeepSpeed form is 'host slots=N')")
        if key in SLOTS_KEYS:
            if any(kind == "slots" for kind, _ in counts):
                _fail(source, number, "slots given twice")
            counts.append(("slots", _slots(value, source, number, word)))
        elif key in MAX_SLOTS_KEYS:
            counts.append(("max_slots", _slots(value, source, number, word)))
        else:
            _fail(source, number, f"unknown key {key!r} (known: "
                                  f"{', '.join(SLOTS_KEYS + MAX_SLOTS_KEYS)})")
    return first, user, counts


def _looks_like_ipv6(word: str) -> bool:
    return word.count(":") > 1


def _slots(text: str, source: str, number: int, word: str) -> int:
    if not text.isdigit() or int(text) < 1:
        _fail(source, number, f"slots must be an integer >= 1, got {text!r} in {word!r}")
    return int(text)


def _expand(name: str, source: str, number: int) -> list[str]:
    try:
        return expand_hostlist(name)
    except ValueError as exc:
        _fail(source, number, f"bad host name: {exc}")


def _fail(source: str, number: Optional[int], message: str) -> NoReturn:
    raise ConfigError(message, source=source, line=number)


def parse_host_expression(expressions: Union[str, Sequence[str]],
                          source: str = "-w") -> list[InventoryEntry]:
    """``-w "node[01-04],gpu7"`` (repeatable, as pdsh's): hosts without slots."""
    if isinstance(expressions, str):
        expressions = [expressions]
    entries = []
    for expr in expressions:
        try:
            names = expand_hostlist(expr)
        except ValueError as exc:
            raise ConfigError(f"bad hostlist {expr!r}: {exc}", source=source) from None
        entries.extend(InventoryEntry(name) for name in names)
    return entries


def slurm_entries(env: Mapping[str, str]) -> tuple[list[InventoryEntry], str]:
    """The allocation ddpcheck runs in, from SLURM's environment, and a source naming it."""
    try:
        allocation = slurm_allocation(env)
    except SlurmError as exc:
        raise ConfigError(exc.message, source="--slurm", key=exc.variable) from None
    entries = [InventoryEntry(node, slots) for node, slots in
               zip(allocation.nodes, allocation.slots)]
    return entries, allocation.describe()


def build_cluster(entries: Sequence[InventoryEntry], defaults: ConfigDefaults,
                  source: str) -> ClusterSpec:
    """The ClusterSpec a hosts.yaml with ``defaults``' sections and these hosts would give.
    A host's own slots win over ``defaults.slots``, as a host's keys do in hosts.yaml."""
    first_line: dict[str, int] = {}
    hosts = []
    for entry in entries:
        if entry.name in first_line:
            where = f" (first at line {first_line[entry.name]})" if first_line[entry.name] else ""
            raise ConfigError(f"duplicate host {entry.name!r}{where}; give each host once, with "
                              f"its total slots", source=source, line=entry.line or None)
        first_line[entry.name] = entry.line
        fields = dict(defaults.host_fields)
        if entry.slots is not None:
            fields["slots"] = entry.slots
        if entry.user is not None:
            fields["user"] = entry.user
        hosts.append(host_from_fields(entry.name, fields, entry.line))
    if not hosts:
        raise ConfigError("no hosts", source=source)
    names = [h.name for h in hosts]
    if defaults.master and defaults.master not in names:
        raise ConfigError(f"{defaults.master!r} is not one of the hosts of {source} "
                          f"({_short(names)})", source=defaults.source,
                          line=defaults.master_line, key="rendezvous.master")
    return ClusterSpec(hosts=tuple(hosts), ssh=defaults.ssh, master=defaults.master,
                       rendezvous_port=defaults.rendezvous_port, backend=defaults.backend,
                       source=source)


def _short(names: list[str]) -> str:
    shown = ", ".join(names[:6])
    return shown + (f", ... ({len(names)} hosts)" if len(names) > 6 else "")


def load_hostfile(path: Union[str, "os.PathLike[str]"], defaults: ConfigDefaults) -> ClusterSpec:
    source = os.fspath(path)
    return build_cluster(parse_hostfile(_read_text(source, "a hostfile"), source), defaults,
                         source)
