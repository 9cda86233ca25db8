"""Writes hosts.yaml files for the namespace cluster (used by tests and benchmarks)."""

from __future__ import annotations

import pathlib
import sys
from typing import Any, Mapping, Optional, Sequence

import yaml


def cluster_hosts_yaml(cluster: Any, path: pathlib.Path, hosts: Optional[Sequence[Any]] = None,
                       slots: int = 2, port: int = 29500,
                       known_hosts: Optional[pathlib.Path] = None,
                       host_overrides: Mapping[str, Mapping[str, Any]] = {},
                       extra: Mapping[str, Any] = {}) -> pathlib.Path:
    """A hosts.yaml for ``hosts`` of the cluster (all by default): root over the cluster key,
    this interpreter, gloo on eth0, one workdir per host under the file's folder."""
    chosen = list(hosts if hosts is not None else cluster.hosts)
    entries = []
    for host in chosen:
        entry = {"name": host.name, "address": host.address, "slots": slots,
                 "workdir": str(path.parent / f"work-{host.name}")}
        entry.update(host_overrides.get(host.name, {}))
        entries.append(entry)
    document = {
        "defaults": {"user": "root", "identity_file": str(cluster.identity_file),
                     "python": sys.executable, "env": {"GLOO_SOCKET_IFNAME": "eth0"}},
        "ssh": {"known_hosts": str(known_hosts or cluster.known_hosts), "connect_timeout": 5},
        "rendezvous": {"port": port},
        "backend": "gloo",
        "hosts": entries,
        **extra,
    }
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path
