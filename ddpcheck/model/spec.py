"""The cluster description every later stage works from.

hosts.yaml (or the embedded local default) is parsed by ``config`` into a ``ClusterSpec``;
``plan`` turns it into commands, ``transport`` runs them. Plain frozen data, no I/O.
"""

from __future__ import annotations

import enum
import getpass
import os
from dataclasses import dataclass, field
from typing import Mapping, Optional


class HostKeyPolicy(str, enum.Enum):
    REJECT = "reject"
    ACCEPT_NEW = "accept-new"


class Backend(str, enum.Enum):
    AUTO = "auto"
    NCCL = "nccl"
    GLOO = "gloo"


DEFAULT_PYTHON = "python3"
DEFAULT_WORKDIR = "/tmp/ddpcheck-{uid}"  # per user: {uid} is the numeric id on the host
DEFAULT_SSH_PORT = 22
DEFAULT_RENDEZVOUS_PORT = 29500
DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_FANOUT = 64  # hosts connected at once: 1,000 hosts in ~16 waves
DEFAULT_JUMP_HANDSHAKES = 8
# HostSpec fields the user can set for ssh; ``HostSpec.given`` says which of them hosts.yaml (or
# the --config defaults) set, so that ~/.ssh/config fills in only the others.
SSH_FIELDS = ("address", "user", "port", "identity_file", "proxy_jump")


@dataclass(frozen=True)
class HostSpec:
    """One host of hosts.yaml after ranges are expanded and defaults merged."""

    name: str
    address: str  # what we connect to; the name when no address is given
    user: Optional[str] = None  # None: ssh_config User, then $USER
    port: int = DEFAULT_SSH_PORT
    identity_file: Optional[str] = None  # already ~-expanded
    python: str = DEFAULT_PYTHON
    env: Mapping[str, str] = field(default_factory=dict)
    workdir: str = DEFAULT_WORKDIR
    slots: Optional[int] = None  # None: GPU count, or 1 without GPUs
    line: int = 0  # line of hosts.yaml the entry came from (0: not from a file)
    proxy_jump: Optional[str] = None  # OpenSSH ProxyJump text: [user@]host[:port][,...] | none
    # The jump hosts to go through, in order, resolved from proxy_jump and ssh_config by
    # ``sshconfig.apply_ssh_config`` (empty: connect directly).
    jumps: tuple["HostSpec", ...] = ()
    # ssh_config ProxyCommand, tokens expanded (None: connect directly or through ``jumps``).
    proxy_command: Optional[str] = None
    given: frozenset[str] = frozenset()  # which of SSH_FIELDS the hosts file set


@dataclass(frozen=True)
class SSHSpec:
    known_hosts: Optional[str] = None  # already ~-expanded; None: ~/.ssh/known_hosts
    host_key_policy: HostKeyPolicy = HostKeyPolicy.REJECT
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    fanout: int = DEFAULT_FANOUT
    config_file: Optional[str] = None  # ssh_config to read; None: ~/.ssh/config when it exists
    jump_handshakes: int = DEFAULT_JUMP_HANDSHAKES  # ssh handshakes in flight via one jump host


@dataclass(frozen=True)
class ClusterSpec:
    hosts: tuple[HostSpec, ...]
    ssh: SSHSpec = SSHSpec()
    master: str = ""  # name of the host ranks rendezvous at; "" = the first host
    rendezvous_port: int = DEFAULT_RENDEZVOUS_PORT
    backend: Backend = Backend.AUTO
    source: str = "<embedded>"  # the file it came from
    local: bool = False  # True: this machine only, no SSH
    # True: preflight --in-job (every node runs ddpcheck itself): no SSH either, and a node
    # without a GPU gets the ranks this machine would (2 on gloo)
    in_job: bool = False

    @property
    def master_host(self) -> HostSpec:
        for host in self.hosts:
            if host.name == self.master:
                return host
        return self.hosts[0]


def ssh_user(host: HostSpec) -> str:
    """hosts.yaml or ssh_config user (applied when the spec was loaded), else the local user."""
    return host.user or os.environ.get("USER") or getpass.getuser()


def ssh_target(host: HostSpec) -> str:
    return f"{ssh_user(host)}@{host.address}:{host.port}"
