"""Collect, hang scan: the text a host's ``ddpcheck.remote.hangscan`` printed -> its scan.

Pure, on the launcher.
"""

from __future__ import annotations

import json
from typing import Any, Optional

from ..wire import find as find_record

SCAN_KIND = "hangscan"


def parse_scan_output(text: str) -> tuple[Optional[dict[str, Any]], list[str]]:
    """(the host's scan, the other lines). Tolerant of a pty's \\r and prefixes."""
    scan: Optional[dict[str, Any]] = None
    stray: list[str] = []
    for raw in text.splitlines():
        line = raw.replace("\r", "")
        record = find_record(line)
        if record is None or record[0] != SCAN_KIND:
            if line.strip():
                stray.append(line)
            continue
        try:
            value = json.loads(record[1])
        except ValueError:
            stray.append(line[:300])
            continue
        if isinstance(value, dict):
            scan = value
    return scan, stray
