"""ddpcheck: a health checker for multi-node PyTorch (torchrun) clusters.

Kept light on purpose: ``python -m ddpcheck.probe`` runs on every rank and must import only the
standard library and torch, so nothing heavy is imported here.
"""

__version__ = "0.1.0"
