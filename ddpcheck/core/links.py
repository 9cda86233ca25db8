"""A slow host or link of a running job, from its ranks' TCP connections (pure).

Runs on the launcher, in ``ddpcheck hang``'s analysis (``analyze/hang.py``), on what the scan
read twice per rank (``remote/tcpinfo.py``), and in the job, on the Monitor's leader
(``injob/links.py``), on what every rank published: per connection, the bytes the peer
acknowledged and the time the connection was busy sending, less the time the receiver's window
held it. A slow NIC or link makes no rank late (every rank waits inside the same collective),
so the arrival rules say nothing; the connections do: those through the slow host carry a
fraction of what the job's other links carry while busy.

Each rank's connection is one directed edge between hosts (its local address is its own host;
the peer's address is the host some rank's connection starts from). Per directed host pair the
bytes and busy seconds of its connections that carried ``CONNECTION_BYTES`` add up (a
connection to the job's store carries little and waits long); a pair is judged when it moved
``MIN_BYTES``, and is slow only if it was busy ``MIN_BUSY_SHARE`` of the window (the job waits
on it) and neither of its hosts has a rank the arrival rules named (a rank starved of CPU
reads slowly, and its incoming link waits for it). A host is slow when every judged pair
through it runs ``SLOW_RATIO`` times slower than the median of the judged pairs that do not
touch it (the hosts' pairs compare with the rest, as the bandwidth sweep's localization does,
so a job of three hosts, two of whose three links run through the slow one, still names it); a
pair alone ``LINK_RATIO`` times slower, whose hosts each have a pair that is not slow, is a slow
link (as the bandwidth sweep names one).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Optional, Sequence

MIN_BYTES = 1 << 20  # a pair is judged when it carried at least this much in the window,
CONNECTION_BYTES = 64 << 10  # counting its connections that carried this much (not the store's)
# A slow pair was busy sending half the window at least: the job waits on it (a link that tc
# shaped to 20 Mbit/s was busy 92-95 %). A receiver starved of CPU slows its incoming pair too,
# but measured under a 3 % quota that pair was busy 9-13 % of the window.
MIN_BUSY_SHARE = 0.5
SLOW_RATIO = 4.0  # slow: this many times slower than the median of the job's other pairs
# A link alone is named at twice that: a healthy pair of a host whose CPUs are overloaded (the
# kernel's network work waits for them too) was measured 4.1x slower than the median, busy 74 %.
LINK_RATIO = 8.0
ELSEWHERE_RATIO = 2.0  # a slow link's hosts each carry another pair this much faster
# The kernel counts busy time in jiffies (1-10 ms), and a fast pair's sends each end within one:
# its busy time may read 0. Rates take at least this as the busy time.
BUSY_FLOOR_S = 0.01
# The rule a verdict entry names (the Monitor's and ``hang``'s): a slow host, or one link.
HOST_RULE = "network"
LINK_RULE = "link"
LINK_RULES = (HOST_RULE, LINK_RULE)


@dataclass(frozen=True)
class Connection:
    """One rank's TCP connection over the window: what it sent and how long that took."""

    rank: int
    host: str
    local: str  # "ip:port" at this end
    peer: str
    sent: int  # bytes acknowledged by the peer during the window
    received: int
    busy_s: float  # seconds sending with data in flight, the receiver's window not holding it


@dataclass(frozen=True)
class PairRate:
    source: str
    target: str
    sent: int
    busy_s: float

    @property
    def rate(self) -> float:  # bytes per busy second (a lower bound when ``floored``)
        return self.sent / max(self.busy_s, BUSY_FLOOR_S)

    @property
    def floored(self) -> bool:
        return self.busy_s < BUSY_FLOOR_S


@dataclass(frozen=True)
class SlowLink:
    """A slow host (``target`` None: every judged pair through ``source`` is slow) or link."""

    host: str
    target: Optional[str]
    pairs: tuple[PairRate, ...]
    others_rate: float  # the median rate of the judged pairs that do not touch it
    others_floored: bool  # ... a lower bound: their busy time was under a kernel tick
    busy_share: float  # the largest share of the window one of its pairs was busy
    ranks: tuple[int, ...]  # the ranks on ``host`` whose connections carry its pairs

    @property
    def rule(self) -> str:
        return LINK_RULE if self.target else HOST_RULE

    def message(self) -> str:
        ranks = ", ".join(str(r) for r in self.ranks)
        rate = mbytes(sum(p.sent for p in self.pairs)
                      / max(sum(p.busy_s for p in self.pairs), BUSY_FLOOR_S))
        each = ", ".join(f"{p.source}->{p.target} {mbytes(p.rate)}" for p in self.pairs)
        where = (f"the link {self.host}->{self.target} carries" if self.target else
                 f"{self.host}'s network is slow: its links carry")
        return (f"rank {ranks} on {self.host}: {where} {rate} while busy ({each}), the job's "
                f"other links {'at least ' if self.others_floored else ''}"
                f"{mbytes(self.others_rate)}; every rank waits for "
                f"{'it' if self.target else 'them'} in the collectives (busy "
                f"{self.busy_share:.0%} of the window)")


def mbytes(rate: float) -> str:
    return f"{rate / 1e6:.3g} MB/s"


def _ip(address: str) -> str:
    return address.rsplit(":", 1)[0]


def host_of_addresses(connections: Iterable[Connection]) -> dict[str, str]:
    """IP -> host, from the local ends of the ranks' connections; an address seen on two hosts
    (loopback, a NAT) is left out."""
    hosts: dict[str, set[str]] = {}
    for c in connections:
        hosts.setdefault(_ip(c.local), set()).add(c.host)
    return {ip: next(iter(names)) for ip, names in hosts.items() if len(names) == 1}


def pair_rates(connections: Sequence[Connection]) -> list[PairRate]:
    """The judged directed host pairs (other hosts of the job only), sending side."""
    where = host_of_addresses(connections)
    sums: dict[tuple[str, str], list[float]] = {}
    for c in connections:
        target = where.get(_ip(c.peer))
        if target is None or target == c.host or c.sent < CONNECTION_BYTES:
            continue
        total = sums.setdefault((c.host, target), [0.0, 0.0])
        total[0] += c.sent
        total[1] += c.busy_s
    return [PairRate(a, b, int(sent), busy) for (a, b), (sent, busy) in sorted(sums.items())
            if sent >= MIN_BYTES]


def _slow(pairs: Sequence[PairRate], others: Sequence[PairRate], span_s: float,
          ratio: float = SLOW_RATIO) -> Optional[PairRate]:
    """The others' median pair when every pair of ``pairs`` is ``ratio`` below its rate and
    was busy MIN_BUSY_SHARE of the window."""
    if not pairs or not others:
        return None
    median = sorted(others, key=lambda p: p.rate)[(len(others) - 1) // 2]
    return median if all(p.rate * ratio <= median.rate
                         and p.busy_s >= MIN_BUSY_SHARE * span_s for p in pairs) else None


def slow_links(connections: Sequence[Connection], span_s: float,
               explained: Iterable[str] = ()) -> list[SlowLink]:
    """The job's slow hosts, then its slow links through no slow host. The pairs through an
    ``explained`` host (one whose rank arrives late, for its own reasons: starved, blocked,
    stopped) are left out: its links carry little because it does."""
    late = set(explained)
    pairs = [p for p in pair_rates(connections) if not {p.source, p.target} & late]
    hosts = sorted({p.source for p in pairs} | {p.target for p in pairs})
    found: list[SlowLink] = []
    for host in hosts:
        through = [p for p in pairs if host in (p.source, p.target)]
        median = _slow(through, [p for p in pairs if host not in (p.source, p.target)], span_s)
        if median is not None:
            found.append(_named(host, None, through, median, span_s, connections))
    slow_hosts = {s.host for s in found}
    for pair in pairs:
        if {pair.source, pair.target} & slow_hosts:
            continue
        median = _slow([pair], [p for p in pairs if p is not pair], span_s, LINK_RATIO)
        if median is not None and all(_fast_elsewhere(host, pair, pairs)
                                      for host in (pair.source, pair.target)):
            found.append(_named(pair.source, pair.target, [pair], median, span_s, connections))
    return found


def _fast_elsewhere(host: str, pair: PairRate, pairs: Sequence[PairRate]) -> bool:
    """``host`` carries another judged pair ``ELSEWHERE_RATIO`` times faster than ``pair``:
    the link, not the host, is slow (a host slowing down shows one slow pair busy enough to
    judge before the other, which runs as slowly)."""
    return any(p is not pair and host in (p.source, p.target)
               and p.rate >= ELSEWHERE_RATIO * pair.rate for p in pairs)


def _named(host: str, target: Optional[str], pairs: Sequence[PairRate], median: PairRate,
           span_s: float, connections: Sequence[Connection]) -> SlowLink:
    where = host_of_addresses(connections)
    ends = {p.target if p.source == host else p.source for p in pairs}
    ranks = sorted({c.rank for c in connections if c.host == host
                    and where.get(_ip(c.peer)) in ends
                    and max(c.sent, c.received) >= CONNECTION_BYTES})
    return SlowLink(host, target, tuple(pairs), median.rate, median.floored,
                    max(p.busy_s for p in pairs) / span_s, tuple(ranks))


def connections_between(rank: int, host: str, first: Sequence[Sequence], last: Sequence[Sequence]
                        ) -> list[Connection]:
    """The rank's connections present at both samples, as deltas; each sample's entries are
    ``[local, peer, bytes_acked, bytes_received, net_busy_us]`` (malformed ones are skipped)."""
    def keyed(entries: Sequence[Sequence]) -> Mapping[tuple[str, str], Sequence]:
        return {(str(e[0]), str(e[1])): e for e in entries
                if isinstance(e, (list, tuple)) and len(e) == 5
                and all(isinstance(v, int) and not isinstance(v, bool) for v in e[2:])}
    before, after = keyed(first), keyed(last)
    return [Connection(rank, host, local, peer, max(0, b[2] - a[2]), max(0, b[3] - a[3]),
                       max(0, b[4] - a[4]) / 1e6)
            for (local, peer), b in after.items() if (a := before.get((local, peer)))]


def ranks_sending_to_peers(connections: Sequence[Connection]) -> set[int]:
    """The ranks that sent bytes during the window to another rank of the job (the peer's end
    is some rank's local end; the job's store, a launcher's process, is no rank). The ranks of
    a collective that never completes send nothing: each waits for a peer that does not send."""
    ends = {c.local for c in connections}
    return {c.rank for c in connections if c.sent > 0 and c.peer in ends and c.peer != c.local}
