"""InfiniBand / RoCE port facts (``remote.ibports``) -> ``infiniband`` findings.

Pure: one host's facts in, findings out; used by stage 0 for every host and by ``ddpcheck node``.
Rules: a port not ACTIVE / LinkUp; an active port below the rate of its peers (the other active
ports of the host with the same link layer: a half-width or downtrained link); non-zero error
counters, named with their values; every HCA that ``NCCL_IB_HCA`` names must exist and have an
active port (NCCL's syntax: ``[^][=]hca[:port],...``; ``^`` excludes, ``=`` matches exactly,
otherwise the name is a prefix). A port NCCL is told to use that is down is an error: NCCL falls
back to sockets or fails its init; any other port problem is a warning.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional

from ..model.checks import Check
from ..model.facts import HostFacts, IbPort
from ..model.records import Finding, Severity

CHECK = Check.INFINIBAND


@dataclass(frozen=True)
class HcaSpec:
    name: str
    port: Optional[str]
    exact: bool


def parse_ib_hca(value: str) -> tuple[bool, list[HcaSpec]]:
    """NCCL_IB_HCA -> (exclude, entries). "^=mlx5_0:1,mlx5_1" -> (True, [...])."""
    text = value.strip()
    exclude = text.startswith("^")
    if exclude:
        text = text[1:]
    exact = text.startswith("=")
    if exact:
        text = text[1:]
    specs = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        name, _, port = item.partition(":")
        specs.append(HcaSpec(name, port or None, exact))
    return exclude, specs


def matching(spec: HcaSpec, devices: Mapping[str, Mapping[str, IbPort]]) -> list[str]:
    return sorted(d for d in devices if (d == spec.name if spec.exact
                                          else d.startswith(spec.name)))


def ib_findings(host: str, facts: HostFacts) -> list[Finding]:
    ib = facts.infiniband
    if ib is None:
        return []
    findings: list[Finding] = []

    def add(severity: Severity, message: str) -> None:
        findings.append(Finding(severity, CHECK, f"{host}: {message}", host=host))

    if ib.error:
        add(Severity.WARNING, f"cannot read the InfiniBand ports: {ib.error}")
    devices = ib.devices
    wanted = _wanted_ports((facts.env or {}).get("NCCL_IB_HCA", ""), devices, add)

    peers: dict[str, float] = {}
    for hca, ports in devices.items():
        for port, state in ports.items():
            if state.active and state.rate_gbps is not None:
                layer = state.link_layer or "?"
                peers[layer] = max(peers.get(layer, 0.0), state.rate_gbps)
    for hca, ports in sorted(devices.items()):
        for port, state in ports.items():
            name = f"{hca} port {port}"
            if not state.active:
                severity = Severity.ERROR if (hca, port) in wanted else Severity.WARNING
                why = " (NCCL_IB_HCA names it)" if severity is Severity.ERROR else ""
                add(severity, f"{name} is {state.state or '?'} / "
                              f"{state.phys_state or '?'}, not ACTIVE / LinkUp{why}: "
                              f"check the cable, the switch port and the subnet manager")
                continue
            rate = state.rate_gbps
            best = peers.get(state.link_layer or "?")
            if rate is not None and best and rate < best:
                add(Severity.WARNING, f"{name} runs at {state.rate}, below the "
                                      f"{best:g} Gb/sec of its peers: a downtrained link or "
                                      f"a bad cable")
            bad = {k: v for k, v in sorted(state.counters.items()) if v > 0}
            if bad:
                text = ", ".join(f"{k}={v}" for k, v in bad.items())
                add(Severity.WARNING, f"{name} error counters are not zero: {text} (since the "
                                      f"last reset; rising ones point at the cable or optics)")
    return findings


def _wanted_ports(value: str, devices: Mapping[str, Mapping[str, IbPort]],
                  add) -> set[tuple[str, str]]:
    """The (hca, port) pairs NCCL_IB_HCA tells NCCL to use; missing HCAs are errors here."""
    if not value.strip():
        return set()
    exclude, specs = parse_ib_hca(value)
    if exclude:
        return set()
    wanted: set[tuple[str, str]] = set()
    for spec in specs:
        names = matching(spec, devices)
        label = f"{'=' if spec.exact else ''}{spec.name}" + (f":{spec.port}" if spec.port else "")
        if not names:
            have = ", ".join(sorted(devices)) or "none"
            add(Severity.ERROR, f"NCCL_IB_HCA names {label} but the host has no such HCA "
                                f"(it has: {have}); NCCL falls back to sockets or fails")
            continue
        for hca in names:
            ports = devices[hca]
            if spec.port is not None:
                if spec.port not in ports:
                    add(Severity.ERROR, f"NCCL_IB_HCA names {hca}:{spec.port} but {hca} has "
                                        f"no port {spec.port} (ports: "
                                        f"{', '.join(ports) or 'none'})")
                    continue
                wanted.add((hca, spec.port))
            else:
                active = [p for p, s in ports.items() if s.active]
                if not active:
                    add(Severity.ERROR, f"NCCL_IB_HCA names {label} but {hca} has no "
                                        f"active port")
                wanted.update((hca, p) for p in ports if ports[p].active)
    return wanted
