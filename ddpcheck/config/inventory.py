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

# OpenMPI hostfile keys besides slots; accepted and not used (ddpcheck starts one torchrun
# per host, so only the number of ranks on it matters).
IGNORED_HOSTFILE_KEYS = ("max_slots", "max-slots", "count", "cpu")
_MPICH = re.compile(r"^(?P<name>[^\s:]+|\[[^\]]*\]):(?P<slots>[^\s:]*)$")


@dataclass(frozen=True)
class InventoryEntry:
    """A host an inventory names: its name, its slots (None: GPU count, else 1), its line."""

    name: str
    slots: Optional[int] = None
    line: int = 0


def parse_hostfile(text: str, source: str) -> list[InventoryEntry]:
    """A DeepSpeed / OpenMPI (``host slots=N [max_slots=M]``), MPICH (``host:N``) or plain
    (``host``) hostfile; ``#`` starts a comment, blank lines are skipped. A name may be a
    hostlist (``node[01-04] slots=8``), which pdsh users will try."""
    entries: list[InventoryEntry] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        words = line.split()
        name, slots = _hostfile_host(words, source, number)
        for host in _expand(name, source, number):
            entries.append(InventoryEntry(host, slots, number))
    if not entries:
        raise ConfigError("no hosts in the hostfile (only comments or blank lines)",
                          source=source)
    return entries


def _hostfile_host(words: list[str], source: str, number: int) -> tuple[str, Optional[int]]:
    first = words[0]
    mpich = _MPICH.match(first)
    if mpich and not _looks_like_ipv6(first):
        if len(words) > 1:
            _fail(source, number, f"unexpected {words[1]!r} after {first!r} (MPICH form is "
                                  f"'host:N' alone on a line)")
        return mpich.group("name"), _slots(mpich.group("slots"), source, number, first)
    slots: Optional[int] = None
    for word in words[1:]:
        key, equals, value = word.partition("=")
        if not equals:
            _fail(source, number, f"expected key=value after the host name, got {word!r} "
                                  f"(DeepSpeed/OpenMPI form is 'host slots=N')")
        if key == "slots":
            if slots is not None:
                _fail(source, number, "slots given twice")
            slots = _slots(value, source, number, word)
        elif key not in IGNORED_HOSTFILE_KEYS:
            _fail(source, number, f"unknown key {key!r} (known: slots, "
                                  f"{', '.join(IGNORED_HOSTFILE_KEYS)})")
    return first, slots


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
