"""Option value parsers shared by the commands and the sweep (argparse ``type=``): a bad value
is a one-line usage error (exit 2), never a traceback. Core: standard library only (ranks import
it)."""

from __future__ import annotations

import argparse
import time
from typing import Callable, Optional

from .busbw import Collective, parse_ops, parse_size


def positive(text: str) -> float:
    """A number > 0 (seconds, rates)."""
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def non_negative(text: str) -> float:
    value = _number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def fraction(text: str) -> float:
    """A number strictly between 0 and 1."""
    value = _number(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def at_least(minimum: int, hint: str = "") -> Callable[[str], int]:
    """A whole number >= ``minimum``; ``hint`` says what the option is when the text is not one."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}"
                                             + (f" ({hint})" if hint else "")) from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {text}")
        return value
    return parse


def collectives(text: str) -> tuple[Collective, ...]:
    """``all_reduce,broadcast``: the collectives of a sweep."""
    try:
        return parse_ops(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def message_size(text: str) -> int:
    """A message size: ``8``, ``64K``, ``32M``."""
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str, now: Optional[float] = None) -> Optional[float]:
    """``--since``: "boot" (None: everything since boot), epoch seconds, a local time
    "YYYY-MM-DD[ T]HH:MM[:SS]", or an age "90s", "10m", "2h", "1d". ValueError otherwise."""
    value = text.strip()
    if value.lower() == "boot":
        return None
    now = time.time() if now is None else now
    if value[-1:].lower() in _UNITS and value[:-1].replace(".", "", 1).isdigit():
        return now - float(value[:-1]) * _UNITS[value[-1].lower()]
    try:
        return float(value)
    except ValueError:
        pass
    for layout in ("%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M",
                   "%Y-%m-%d %H:%M", "%Y-%m-%d"):
        try:
            return time.mktime(time.strptime(value, layout))
        except ValueError:
            continue
    raise ValueError(f"{text!r} is not a time: use boot, epoch seconds, 'YYYY-MM-DD HH:MM[:SS]' "
                     f"or an age like 10m, 2h, 1d")
