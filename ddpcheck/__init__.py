"""ddpcheck: a health checker for multi-node PyTorch (torchrun) clusters.

Kept light on purpose: ``python -m ddpcheck.remote.probe`` runs on every rank and must import only the
standard library and torch, so nothing heavy is imported here; the in-job API is loaded on first
use (``ddpcheck.check_consistency``, ``ddpcheck.ConsistencyError``, ``ddpcheck.Monitor``).
"""

from typing import Any

__version__ = "0.1.0"

_LAZY = {"check_consistency": "ddpcheck.injob.consistency",
         "ConsistencyError": "ddpcheck.injob.consistency", "Monitor": "ddpcheck.injob.monitor"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ddpcheck' has no attribute {name!r}")
