"""Progress on stderr (``report.progress``): a line per host for a few hosts or with -v,
summary lines past that. Runs on the launcher."""

from __future__ import annotations

from ..report.progress import Progress

__all__ = ["Progress"]
