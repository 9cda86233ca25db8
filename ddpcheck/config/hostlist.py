"""Hostlist expressions, pdsh/SLURM style: ``node[01-04,07],login1`` <-> a list of host names.

``config`` expands the host entries of hosts.yaml with ``expand_hostlist``; ``compress_hostlist``
is its best-effort inverse, for short display in progress lines and the report, where
``hostlist_text`` keeps it to a width whatever the number of hosts (a finding at 1,000 hosts
names them in one bounded line).
"""

from __future__ import annotations

import itertools
import re
from typing import Iterable, Sequence, Union

# One expression may not expand to more hosts than this (a typo like node[1-1000000] fails fast).
MAX_HOSTS = 100_000
# Digits in one range bound; keeps int() cheap and catches garbage early.
MAX_DIGITS = 18

# A host list shown in a line is cut after this many characters, with a count of the rest.
HOSTLIST_WIDTH = 96

# Characters allowed in the literal parts of a name: DNS names, IPv4/IPv6 literals, ssh aliases.
_NAME_CHARS = re.compile(r"[A-Za-z0-9._:%-]")
_DIGITS = re.compile(r"[0-9]+")
_LAST_NUMBER = re.compile(r"^(.*?)([0-9]+)([^0-9]*)$", re.DOTALL)

# A parsed name: literal text and bracket groups (each a list of the strings it stands for).
_Segment = Union[str, "list[str]"]


def expand_hostlist(expr: str) -> list[str]:
    """``"n1,node[08-10]"`` -> ``["n1", "node08", "node09", "node10"]``.

    Top-level commas separate names; each ``[...]`` group holds comma-separated numbers and
    ``lo-hi`` ranges, zero-padded to the width of ``lo``; several groups give their cartesian
    product, in order. Raises ``ValueError`` naming the problem for anything malformed.
    """
    if not isinstance(expr, str):
        raise ValueError(f"a hostlist must be a string, got {type(expr).__name__}")
    if not expr.strip():
        raise ValueError("empty hostlist")
    names: list[str] = []
    for item in _split_top_level(expr):
        segments = _parse_item(item)
        _check_size(segments, item, already=len(names))
        names.extend(_expand_segments(segments))
    for name in names:
        if name.startswith("-"):
            raise ValueError(f"host name {name!r} may not start with '-'")
    return names


def compress_hostlist(names: Iterable[str]) -> str:
    """Best-effort inverse of ``expand_hostlist``: ``["n1", "n2", "n3", "n5"]`` -> ``"n[1-3,5]"``.

    Names ending in a number are grouped by the text before it (SLURM, which reads the lists
    handed to ``srun --nodelist``, allows no text after a bracket: ``gpu1-ib`` stays as it is),
    groups keep the order in which they first appear, numbers within a group are sorted and
    duplicates dropped. The result expands back to the same set of names (SLURM's
    ``scontrol show hostnames`` agrees). Raises ``ValueError`` for a name that
    ``expand_hostlist`` could not have produced (empty, brackets, commas, whitespace, other odd
    characters, leading '-').
    """
    groups: dict[tuple[str, str], list[str]] = {}
    plain: dict[str, None] = {}
    order: list[Union[tuple[str, str], str]] = []
    for name in names:
        _check_compressible(name)
        match = _LAST_NUMBER.match(name)
        if match is None:
            if name not in plain:
                plain[name] = None
                order.append(name)
            continue
        prefix, number, suffix = match.groups()
        if suffix:  # SLURM takes no text after a bracket: "gpu[1-2]-ib" is invalid there
            if name not in plain:
                plain[name] = None
                order.append(name)
            continue
        key = (prefix, suffix)
        if key not in groups:
            groups[key] = []
            order.append(key)
        groups[key].append(number)
    parts = []
    for entry in order:
        if isinstance(entry, str):
            parts.append(entry)
        else:
            prefix, suffix = entry
            parts.append(_format_group(prefix, groups[entry], suffix))
    return ",".join(parts)


def hostlist_text(names: Sequence[str], width: int = HOSTLIST_WIDTH) -> str:
    """``node[001-096,098-512]``; past ``width`` characters cut at a name and the rest counted:
    ``node[001,003,...] ... (+312 hosts)``. Names a host list cannot hold are joined by commas."""
    try:
        text = compress_hostlist(names)
    except ValueError:
        text = ",".join(names)
    if len(text) <= width:
        return text
    cut = text.rfind(",", 0, width)
    shown = text[:cut] if cut > 0 else text[:width]
    if shown.count("[") > shown.count("]"):
        shown += "]"
    try:
        hidden = len(names) - len(expand_hostlist(shown))
    except ValueError:
        hidden = 0
    return f"{shown} ... (+{hidden} hosts)" if hidden > 0 else f"{shown} ..."


def hosts_text(names: Sequence[str], few: int = 8) -> str:
    """A few hosts by name (``h2, h3``), more as a host list (``hostlist_text``)."""
    return ", ".join(names) if len(names) <= few else hostlist_text(names)


def _split_top_level(expr: str) -> list[str]:
    """Split at commas outside brackets; check that brackets balance and do not nest."""
    items: list[str] = []
    depth = 0
    start = 0
    for index, char in enumerate(expr):
        if char == "[":
            if depth:
                raise ValueError(f"nested '[' at position {index + 1} in {expr!r}")
            depth = 1
        elif char == "]":
            if not depth:
                raise ValueError(f"unbalanced ']' at position {index + 1} in {expr!r}")
            depth = 0
        elif char == "," and not depth:
            items.append(expr[start:index])
            start = index + 1
    if depth:
        raise ValueError(f"unclosed '[' in {expr!r}")
    items.append(expr[start:])
    stripped = [item.strip() for item in items]
    if any(not item for item in stripped):
        raise ValueError(f"empty host name in {expr!r}")
    return stripped


def _parse_item(item: str) -> list[_Segment]:
    """``"a[1-2]-b[3]"`` -> ``["a", ["1", "2"], "-b", ["3"]]`` (brackets already balanced)."""
    segments: list[_Segment] = []
    for index, piece in enumerate(re.split(r"[\[\]]", item)):
        if index % 2:
            segments.append(_expand_group(piece, item))
        elif piece:
            _check_literal(piece, item)
            segments.append(piece)
    return segments


def _check_literal(text: str, item: str) -> None:
    for char in text:
        if not _NAME_CHARS.fullmatch(char):
            raise ValueError(f"invalid character {char!r} in host name {item!r}")


def _expand_group(body: str, item: str) -> list[str]:
    """The inside of one ``[...]``: ``"01-03,07"`` -> ``["01", "02", "03", "07"]``."""
    if not body:
        raise ValueError(f"empty range '[]' in {item!r}")
    values: list[str] = []
    total = 0
    for part in body.split(","):
        if not part:
            raise ValueError(f"empty element in '[{body}]' in {item!r}")
        lo, dash, hi = part.partition("-")
        _check_number(lo, part, item)
        if not dash:
            values.append(lo)
            total += 1
            continue
        _check_number(hi, part, item)
        low, high = int(lo), int(hi)
        if low > high:
            raise ValueError(f"range {part!r} in {item!r} goes down ({low} > {high})")
        total += high - low + 1
        if total > MAX_HOSTS:
            raise ValueError(f"{item!r} expands to more than {MAX_HOSTS} hosts")
        width = len(lo)
        values.extend(f"{number:0{width}d}" for number in range(low, high + 1))
    return values


def _check_number(text: str, part: str, item: str) -> None:
    if not text:
        raise ValueError(f"range element {part!r} in {item!r}: a bound is missing")
    if not _DIGITS.fullmatch(text):
        raise ValueError(f"range element {part!r} in {item!r}: {text!r} is not a number")
    if len(text) > MAX_DIGITS:
        raise ValueError(f"range element in {item!r}: number too long "
                         f"({len(text)} digits, at most {MAX_DIGITS})")


def _check_size(segments: list[_Segment], item: str, already: int) -> None:
    count = 1
    for segment in segments:
        if isinstance(segment, list):
            count *= len(segment)
            if count + already > MAX_HOSTS:
                raise ValueError(f"{item!r} expands to more than {MAX_HOSTS} hosts")


def _expand_segments(segments: list[_Segment]) -> list[str]:
    choices = [[segment] if isinstance(segment, str) else segment for segment in segments]
    return ["".join(parts) for parts in itertools.product(*choices)]


def _check_compressible(name: str) -> None:
    """Only names ``expand_hostlist`` could have produced; anything else has no hostlist form."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"cannot write {name!r} in a hostlist: host names are non-empty strings")
    if name.startswith("-"):
        raise ValueError(f"host name {name!r} may not start with '-'")
    _check_literal(name, name)


def _format_group(prefix: str, numbers: list[str], suffix: str) -> str:
    """``("n", ["3", "1", "2", "7"], "")`` -> ``"n[1-3,7]"``; one number stays plain."""
    unique = sorted(set(numbers), key=lambda text: (int(text), len(text)))
    runs: list[tuple[str, str]] = []  # (first, last) as written
    for text in unique:
        if runs:
            first, last = runs[-1]
            if int(text) == int(last) + 1 and f"{int(text):0{len(first)}d}" == text:
                runs[-1] = (first, text)
                continue
        runs.append((text, text))
    if len(runs) == 1 and runs[0][0] == runs[0][1]:
        return f"{prefix}{runs[0][0]}{suffix}"
    body = ",".join(first if first == last else f"{first}-{last}" for first, last in runs)
    return f"{prefix}[{body}]{suffix}"
