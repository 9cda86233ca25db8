"""ssh_config: fill in what hosts.yaml left out, as OpenSSH would (between config and plan).

hosts.yaml / inventory -> ClusterSpec -> **apply_ssh_config** -> plan -> transport. For every
host the ssh_config is looked up by the host's name (as ``ssh NAME`` would) and these keys are
honoured: ``HostName`` (the address), ``User``, ``Port``, ``IdentityFile`` (the first one that
exists) and ``ProxyJump`` (resolved here into the chain of jump hosts, each with its own
ssh_config entry). Precedence, per key: a value hosts.yaml (or the ``--config`` defaults) sets
explicitly > ssh_config > the built-in default (the name, $USER, 22, ssh-agent and default keys,
no jump). paramiko only parses the file; ``transport`` does the connecting.

``read_ssh_config`` reads the file; ``parse_proxy_jump`` is pure, and so is
``apply_ssh_config`` but for looking which IdentityFile exists (as ssh does).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping, Optional

from ..model.errors import ConfigError
from ..model.spec import ClusterSpec, HostSpec

USER_SSH_CONFIG = "~/.ssh/config"
NO_SSH_CONFIG = "none"
MAX_JUMP_DEPTH = 8  # ProxyJump chains longer than this are a loop in practice

# What a lookup returns: paramiko.SSHConfig.lookup's dict (lower-case keys).
SSHConfigLookup = Callable[[str], Mapping[str, Any]]

_HOP = re.compile(r"^(?:(?P<user>[^@\s/]+)@)?(?P<host>\[[0-9A-Fa-f:.%\w]+\]|[^@:\s/\[\]]+)"
                  r"(?::(?P<port>[0-9]+))?$")


@dataclass(frozen=True)
class JumpHop:
    """One hop of a ProxyJump list: ``[user@]host[:port]`` (or ``ssh://[user@]host[:port]``)."""

    host: str
    user: Optional[str] = None
    port: Optional[int] = None


def parse_proxy_jump(text: str) -> tuple[JumpHop, ...]:
    """``"alice@bastion:2222,inner"`` -> two hops; ``"none"`` -> no hop (OpenSSH's off switch).

    Raises ``ValueError`` naming the bad hop."""
    text = text.strip()
    if text.lower() == NO_SSH_CONFIG:
        return ()
    if not text:
        raise ValueError("ProxyJump is empty")
    hops = []
    for raw in text.split(","):
        hop = raw.strip()
        if hop.startswith("ssh://"):
            hop = hop[len("ssh://"):].rstrip("/")
        match = _HOP.match(hop)
        if not hop or match is None or match.group("host").startswith("-"):
            raise ValueError(f"ProxyJump hop {raw.strip()!r} is not [user@]host[:port]")
        port = match.group("port")
        if port is not None and not 1 <= int(port) <= 65535:
            raise ValueError(f"ProxyJump hop {raw.strip()!r}: port {port} is not 1..65535")
        host = match.group("host")
        if host.startswith("["):
            host = host[1:-1]
        hops.append(JumpHop(host=host, user=match.group("user"),
                            port=int(port) if port is not None else None))
    return tuple(hops)


def read_ssh_config(path: Optional[str]) -> tuple[SSHConfigLookup, str]:
    """(lookup, the file read). ``None``: ~/.ssh/config when it exists (else nothing);
    ``"none"``: nothing; a file named explicitly must exist. A file paramiko cannot parse is a
    ``ConfigError`` naming it."""
    if path == NO_SSH_CONFIG:
        return _empty_lookup, ""
    explicit = path is not None
    chosen = os.path.expanduser(path if explicit else USER_SSH_CONFIG)
    if not os.path.exists(chosen):
        if explicit:
            raise ConfigError("no such ssh_config file", source=chosen)
        return _empty_lookup, ""
    import paramiko

    try:
        config = paramiko.SSHConfig.from_path(chosen)
    except OSError as exc:
        raise ConfigError(f"cannot read ssh_config: {exc.strerror or exc}",
                          source=chosen) from None
    except Exception as exc:  # noqa: BLE001 - paramiko raises several types for bad lines
        raise ConfigError(f"cannot parse ssh_config: {exc}", source=chosen) from None

    def lookup(name: str) -> Mapping[str, Any]:
        try:
            return config.lookup(name)
        except Exception as exc:  # noqa: BLE001 - e.g. a Match exec paramiko cannot run
            raise ConfigError(f"ssh_config lookup of {name!r} failed: {exc}",
                              source=chosen) from None

    return lookup, chosen


def _empty_lookup(name: str) -> Mapping[str, Any]:
    return {}


def apply_ssh_config(spec: ClusterSpec, lookup: SSHConfigLookup, source: str,
                     local_user: str) -> ClusterSpec:
    """Every host with what ssh_config says about it filled in (see the module docstring);
    ``local_user`` is the last resort for User. Local specs (no SSH) are returned unchanged."""
    if spec.local:
        return spec
    hosts = tuple(resolve_host(host, lookup, source, local_user) for host in spec.hosts)
    return replace(spec, hosts=hosts)


def resolve_host(host: HostSpec, lookup: SSHConfigLookup, source: str, local_user: str,
                 depth: int = 0) -> HostSpec:
    found = lookup(host.name)
    given = host.given
    where = f"Host {host.name}"
    address = host.address if "address" in given else str(found.get("hostname") or host.address)
    user = host.user if "user" in given else (found.get("user") or host.user or local_user)
    port = host.port
    if "port" not in given and found.get("port") is not None:
        port = _config_port(found["port"], source, where)
    identity_file = host.identity_file
    if "identity_file" not in given and found.get("identityfile"):
        identity_file = _first_identity(found["identityfile"])
    proxy_jump = host.proxy_jump if "proxy_jump" in given else found.get("proxyjump")
    resolved = replace(host, address=address, user=str(user), port=port,
                       identity_file=identity_file, proxy_jump=proxy_jump, jumps=())
    if not proxy_jump:
        return resolved
    try:
        hops = parse_proxy_jump(str(proxy_jump))
    except ValueError as exc:
        raise ConfigError(str(exc), source=source if "proxy_jump" not in given else "",
                          key=f"{where}: ProxyJump") from None
    return replace(resolved, jumps=_jump_chain(host.name, hops, lookup, source, local_user,
                                               depth))


def _jump_chain(target: str, hops: tuple[JumpHop, ...], lookup: SSHConfigLookup, source: str,
                local_user: str, depth: int) -> tuple[HostSpec, ...]:
    """The hosts to connect through, in order. As OpenSSH does ``-J a,b``: ``a`` with its own
    ssh_config (its own ProxyJump too), then ``b`` reached through ``a``."""
    if depth >= MAX_JUMP_DEPTH:
        raise ConfigError(f"ProxyJump of {target!r} goes {MAX_JUMP_DEPTH} hops deep: a loop?",
                          source=source)
    chain: list[HostSpec] = []
    for index, hop in enumerate(hops):
        if hop.host == target:
            raise ConfigError(f"host {target!r} names itself as its ProxyJump", source=source)
        given = frozenset(({"user"} if hop.user else set()) | ({"port"} if hop.port else set()))
        spec = HostSpec(name=hop.host, address=hop.host, user=hop.user,
                        port=hop.port or 22, given=given)
        resolved = resolve_host(spec, lookup, source, local_user, depth + 1)
        if index == 0:
            chain.extend(resolved.jumps)
        chain.append(replace(resolved, jumps=(), proxy_jump=None))
    return tuple(chain)


def _config_port(value: Any, source: str, where: str) -> int:
    text = str(value).strip()
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ConfigError(f"Port must be 1..65535, got {text!r}", source=source,
                          key=f"{where}: Port")
    return int(text)


def _first_identity(files: Any) -> str:
    """OpenSSH tries every IdentityFile; we take the first that exists (else the first)."""
    paths = [os.path.expanduser(str(f)) for f in (files if isinstance(files, list) else [files])]
    for path in paths:
        if os.path.exists(path):
            return path
    return paths[0]
