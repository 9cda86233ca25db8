"""In the job, on every rank: its TCP connections over the last few seconds, which the Monitor
publishes with its step rows; the leader (rank 0) localizes a slow host or link from every
rank's (``core.links``, the same rule and words as ``ddpcheck hang`` from outside).

Runs in the Monitor's background thread (``injob.stragglers.StragglerWatch``). A slow network
makes no rank late (every rank waits inside the same collective), so the step rows cannot name
it; the bytes each connection carried per second it was busy can. The connections are read
with ``getsockopt(TCP_INFO)`` (``remote.tcpinfo.own_links``) once a second, and compared over
the last ``LINK_WINDOW_S``.
"""

from __future__ import annotations

import statistics
from collections import deque
from typing import Any, Iterable, Mapping, Optional

from ..core.links import CONNECTION_BYTES, Connection, connections_between, slow_links
from ..remote.tcpinfo import own_links

LINK_WINDOW_S = 2.0  # each rank's connections are compared this far apart...
LINK_SAMPLE_S = 1.0  # ... sliding by this much: a slow link is named within about 2 s


class LinkSampler:
    """One rank's connections over its last window, as published: {"span": seconds, "links":
    [[local, peer, sent, received, busy_s], ...]} (those that carried ``CONNECTION_BYTES``)."""

    def __init__(self, window_s: float = LINK_WINDOW_S, every_s: float = LINK_SAMPLE_S) -> None:
        self.window_s = window_s
        self.every_s = every_s
        self.samples: deque[tuple[float, list[list]]] = deque()
        self.result: Optional[dict[str, Any]] = None

    def sample(self, now: float) -> Optional[dict[str, Any]]:
        if self.samples and now - self.samples[-1][0] < self.every_s:
            return self.result
        self.samples.append((now, own_links()))
        while len(self.samples) > 2 and now - self.samples[1][0] >= self.window_s:
            self.samples.popleft()  # the oldest that still spans the window stays first
        (then, before), (_, after) = self.samples[0], self.samples[-1]
        if now - then >= self.window_s:
            moved = connections_between(0, "", before, after)
            self.result = {"span": round(now - then, 3), "links": [
                [c.local, c.peer, c.sent, c.received, round(c.busy_s, 4)] for c in moved
                if max(c.sent, c.received) >= CONNECTION_BYTES]}
        return self.result


def link_verdict(entries: Mapping[int, Mapping[str, Any]],
                 explained: Iterable[str] = ()) -> list[dict[str, Any]]:
    """The leader's: a slow host (rule ``HOST_RULE``) or link (``LINK_RULE``) from the ranks'
    published connections, as verdict entries on the first of the ranks each names; the links
    of the ``explained`` hosts (a straggler there) are not judged."""
    connections, spans = [], []
    for rank, entry in entries.items():
        published = entry.get("links")
        if not isinstance(published, dict) or not isinstance(published.get("span"),
                                                               (int, float)):
            continue
        spans.append(float(published["span"]))
        for row in published.get("links") or []:
            if isinstance(row, list) and len(row) == 5:
                connections.append(Connection(rank, str(entry.get("host")), str(row[0]),
                                              str(row[1]), int(row[2]), int(row[3]),
                                              float(row[4])))
    if not connections:
        return []
    return [{"rank": found.ranks[0], "ranks": list(found.ranks), "host": found.host,
             "reason": found.rule, "rule": found.rule,  # a link, then its host: both logged
             "message": found.message()}
            for found in slow_links(connections, statistics.median(spans), explained)
            if found.ranks]
