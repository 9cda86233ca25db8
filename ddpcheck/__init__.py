"""ddpcheck: a health checker for multi-node PyTorch (torchrun) clusters.

Kept light on purpose: ``python -m ddpcheck.probe`` runs on every rank and must import only the
standard library and torch, so nothing heavy is imported here; the in-job API is loaded on first
use (``ddpcheck.check_consistency``, ``ddpcheck.ConsistencyError``).
"""

__version__ = "0.1.0"

_LAZY = {"check_consistency": "consistency", "ConsistencyError": "consistency"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'ddpcheck' has no attribute {name!r}")
