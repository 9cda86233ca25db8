"""Bus bandwidth arithmetic shared by the per-rank sweep and the launcher: sizes, counts, factors.

Core: pure and standard-library only, so ``ddpcheck.remote.sweep`` (which runs on every rank
with just torch) can import it. The conventions are those of nccl-tests, whose tables users
already read:

* ``size`` (the ``bytes`` of a row) is the per-rank buffer for all_reduce and broadcast, and the
  whole array (every rank's part together) for all_gather, reduce_scatter and all_to_all, each
  rank's part trimmed down to a multiple of 16 bytes (nccl-tests since late 2024: with a
  world size that is not a power of two the bytes are less than asked for);
* the table's ``count`` is nccl-tests' too: the elements each rank contributes for the split
  ops (the JSON's ``count`` stays the whole array);
* sizes are written as nccl-tests takes them: ``8``, ``64K``, ``1.5M``, ``0.5G`` (powers of
  1024, decimals allowed, the bytes rounded down);
* algbw = size / time;
* busbw = algbw x factor, with factor 2(n-1)/n for all_reduce, (n-1)/n for all_gather,
  reduce_scatter and all_to_all, and 1 for broadcast. busbw is what each rank's link carried per
  second, so it can be compared with the link's rate whatever the op and the rank count.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Any, Optional

ELEMENT_TYPE = "float"  # float32, as nccl-tests' default (-d float)
ELEMENT_SIZE = 4


class Collective(str, enum.Enum):
    ALL_REDUCE = "all_reduce"
    ALL_GATHER = "all_gather"
    REDUCE_SCATTER = "reduce_scatter"
    BROADCAST = "broadcast"
    ALL_TO_ALL = "all_to_all"


ALL_COLLECTIVES: tuple[Collective, ...] = tuple(Collective)

# Ops whose size is the whole array, split in equal parts between the ranks.
_SPLIT_OPS = frozenset({Collective.ALL_GATHER, Collective.REDUCE_SCATTER, Collective.ALL_TO_ALL})

_SIZE_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?|[0-9]+\.)\s*([KMGT]?)(i?B)?\s*$",
                      re.IGNORECASE)
# nccl-tests trims each rank's part of a split op to a multiple of this many bytes.
ALIGN_BYTES = 16
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def busbw_factor(op: Collective, world_size: int) -> float:
    """nccl-tests' bus bandwidth factor for ``op`` over ``world_size`` ranks."""
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    n = world_size
    if op is Collective.ALL_REDUCE:
        return 2.0 * (n - 1) / n
    if op is Collective.BROADCAST:
        return 1.0
    return (n - 1) / n


def parse_size(text: str) -> int:
    """Bytes from nccl-tests style text: ``8``, ``64K``, ``1.5M``, ``0.5G`` (powers of 1024;
    a fraction of a byte is dropped, as nccl-tests' parsesize does)."""
    match = _SIZE_RE.match(text)
    if not match:
        raise ValueError(f"not a size: {text!r} (examples: 8, 64K, 1.5M, 1G)")
    number, unit = match.group(1), _UNITS[match.group(2).upper()]
    if re.fullmatch(r"[0-9]+", number):
        return int(number) * unit
    return int(float(number) * unit)


def parse_ops(text: str) -> tuple[Collective, ...]:
    """``all`` or comma-separated op names, in the order given, without repeats."""
    if text.strip() == "all":
        return ALL_COLLECTIVES
    ops = []
    for name in text.split(","):
        try:
            ops.append(Collective(name.strip()))
        except ValueError:
            raise ValueError(f"unknown op {name.strip()!r}; choose from "
                             f"{', '.join(c.value for c in Collective)}, or all") from None
    return tuple(dict.fromkeys(ops))


def format_size(nbytes: int) -> str:
    """The shortest exact K/M/G spelling of ``nbytes`` (``33554432`` -> ``32M``)."""
    for unit in ("T", "G", "M", "K"):
        scale = _UNITS[unit]
        if nbytes >= scale and nbytes % scale == 0:
            return f"{nbytes // scale}{unit}"
    return str(nbytes)


def message_sizes(min_bytes: int, max_bytes: int, factor: int) -> list[int]:
    """min, min*f, min*f^2, ... up to max (max itself is included when the steps land on it)."""
    if min_bytes < 1 or max_bytes < min_bytes:
        raise ValueError(f"need 1 <= min size <= max size, got {min_bytes} and {max_bytes}")
    if factor < 2:
        if min_bytes != max_bytes:
            raise ValueError(f"the step factor must be >= 2 to go from {min_bytes} to "
                             f"{max_bytes}, got {factor}")
        return [min_bytes]
    sizes = []
    size = min_bytes
    while size <= max_bytes:
        sizes.append(size)
        size *= factor
    return sizes


def element_count(op: Collective, size_bytes: int, world_size: int) -> int:
    """Elements of the op's array for a requested size, as nccl-tests' GetCollByteCount: for
    the split ops each rank's part is ``size / world`` elements rounded down to a multiple of
    16 bytes, and the array is world parts; 0 when the size is too small for that."""
    count = size_bytes // ELEMENT_SIZE
    if op in _SPLIT_OPS:
        per_rank = count // world_size
        per_rank -= per_rank % (ALIGN_BYTES // ELEMENT_SIZE)
        count = per_rank * world_size
    return count


@dataclass(frozen=True)
class CollectiveRow:
    """One line of an op's table: one size, timed and checked."""

    op: Collective
    count: int  # elements of the array (see the module docstring for what "size" means)
    world_size: int
    time_s: float  # per iteration, the slowest rank's
    wrong: int  # elements that differed from the expected result, summed over ranks

    @property
    def nbytes(self) -> int:
        return self.count * ELEMENT_SIZE

    @property
    def table_count(self) -> int:
        """nccl-tests' ``count`` column: each rank's elements for the split ops."""
        return self.count // self.world_size if self.op in _SPLIT_OPS else self.count

    @property
    def algbw_gbs(self) -> float:
        return self.nbytes / self.time_s / 1e9 if self.time_s > 0 else 0.0

    @property
    def busbw_gbs(self) -> float:
        return self.algbw_gbs * busbw_factor(self.op, self.world_size)

    def to_dict(self) -> dict[str, Any]:
        """The JSON report's ``collectives`` entry (INTERFACE.md keys first)."""
        return {"op": self.op.value, "bytes": self.nbytes, "time_us": round(self.time_s * 1e6, 2),
                "algbw_gbs": round_gbs(self.algbw_gbs), "busbw_gbs": round_gbs(self.busbw_gbs),
                "wrong": self.wrong, "count": self.count, "type": ELEMENT_TYPE,
                "world_size": self.world_size}


def row_from_dict(raw: Any) -> Optional[CollectiveRow]:
    """A row back from its JSON form; None when it is not one (a garbled or foreign entry)."""
    if not isinstance(raw, dict):
        return None
    try:
        op = Collective(raw["op"])
        count, world, wrong = int(raw["count"]), int(raw["world_size"]), int(raw["wrong"])
        time_s = float(raw["time_us"]) / 1e6
    except (KeyError, TypeError, ValueError):
        return None
    if count < 0 or world < 1 or time_s < 0:
        return None
    return CollectiveRow(op, count, world, time_s, wrong)


def round_gbs(value: float) -> float:
    """Enough digits for a 100 Mbit/s link (0.0125 GB/s) as well as NVLink."""
    return float(f"{value:.4g}")
