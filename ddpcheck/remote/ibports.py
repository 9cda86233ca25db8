"""InfiniBand / RoCE ports of this host from sysfs, as plain data.

Runs on each host inside the agent (stage 0) and in ``ddpcheck node``; ``analyze.infiniband``
judges the result (ports down, below their peers' rate, error counters, ``NCCL_IB_HCA``). Reads
``<root>/<hca>/ports/<port>/{state,phys_state,rate,link_layer}`` and the error counters under
``counters/``; the root (``/sys/class/infiniband``) is a parameter so tests read fixture trees.
No HCA (no such directory) is plain data, not an error. Imports only the standard library.
"""

from __future__ import annotations

import os
import re
from typing import Any, Optional

SYSFS_ROOT = "/sys/class/infiniband"

# The port error counters (IB spec PortCounters, as the kernel names them under counters/).
ERROR_COUNTERS = (
    "link_downed", "link_error_recovery", "symbol_error", "port_rcv_errors",
    "port_rcv_remote_physical_errors", "port_rcv_switch_relay_errors", "port_xmit_discards",
    "port_xmit_constraint_errors", "port_rcv_constraint_errors", "local_link_integrity_errors",
    "excessive_buffer_overrun_errors", "VL15_dropped",
)
_RATE = re.compile(r"^\s*(?P<gbps>[\d.]+)\s*Gb/sec")
_STATE = re.compile(r"^\s*(?P<code>\d+)\s*:\s*(?P<name>\S+)")


def read_ports(root: str = SYSFS_ROOT) -> dict[str, Any]:
    """{"root", "devices": {hca: {"ports": {port: {...}}}}}; never raises."""
    facts: dict[str, Any] = {"root": root, "devices": {}}
    try:
        names = sorted(os.listdir(root))
    except FileNotFoundError:
        return facts
    except OSError as exc:
        facts["error"] = f"{root}: {exc.strerror or exc}"
        return facts
    for hca in names:
        ports_dir = os.path.join(root, hca, "ports")
        try:
            port_names = sorted(os.listdir(ports_dir), key=lambda p: (len(p), p))
        except OSError:
            continue
        ports = {}
        for port in port_names:
            ports[port] = read_port(os.path.join(ports_dir, port))
        facts["devices"][hca] = {"ports": ports}
    return facts


def read_port(path: str) -> dict[str, Any]:
    state = _state(_read(os.path.join(path, "state")))
    phys = _state(_read(os.path.join(path, "phys_state")))
    rate_text = _read(os.path.join(path, "rate"))
    rate = _RATE.match(rate_text or "")
    counters: dict[str, int] = {}
    for name in ERROR_COUNTERS:
        value = _read(os.path.join(path, "counters", name))
        if value is not None and value.strip().isdigit():
            counters[name] = int(value.strip())
    return {
        "state": state[1] if state else None, "state_code": state[0] if state else None,
        "phys_state": phys[1] if phys else None,
        "rate": rate_text.strip() if rate_text else None,
        "rate_gbps": float(rate.group("gbps")) if rate else None,
        "link_layer": (_read(os.path.join(path, "link_layer")) or "").strip() or None,
        "counters": counters,
    }


def _state(text: Optional[str]) -> Optional[tuple[int, str]]:
    match = _STATE.match(text or "")
    return (int(match.group("code")), match.group("name")) if match else None


def _read(path: str) -> Optional[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read(4096)
    except OSError:
        return None
