"""``python -m ddpcheck``: the same as the ``ddpcheck`` command."""

from .cli import entry_point

entry_point()
