"""ssh_config ProxyCommand, end to end: resolved from a real ssh_config, run as ssh runs it
(``$SHELL -c "exec …"``), the SSH session carried over its stdin/stdout to an in-process SSH
server; a proxy that never speaks or dies at once is a HostError within the connect timeout."""

from __future__ import annotations

import os
import sys
import threading
import time

import pytest

from ddpcheck.config.hostsyaml import parse_hosts_yaml
from ddpcheck.config.sshconfig import apply_ssh_config, read_ssh_config
from ddpcheck.model.errors import HostError
from ddpcheck.model.spec import SSHSpec
from ddpcheck.transport.ssh import SSHSession

from sshserver import FakeSSHServer, exit_with, free_port, new_key

RELAY = os.path.join(os.path.dirname(__file__), "proxyrelay.py")


@pytest.fixture
def server():
    host_key, client_key = new_key(), new_key()
    fake = FakeSSHServer(host_key, client_key, exit_with(0, b"through the proxy\n")).start()
    yield fake, client_key
    fake.stop()


def _host(tmp_path, proxy_command: str, client_key):
    """A host whose address:port has nothing listening; only its ProxyCommand reaches the
    server."""
    key_file = tmp_path / "id_ecdsa"
    client_key.write_private_key_file(str(key_file))
    port = free_port()
    config = tmp_path / "ssh_config"
    config.write_text(f"Host gpu*\n  HostName 127.0.0.1\n  Port {port}\n  User tester\n"
                      f"  IdentityFile {key_file}\n  ProxyCommand {proxy_command}\n")
    spec = parse_hosts_yaml("hosts: [gpu1]\n", "hosts.yaml")
    lookup, source = read_ssh_config(str(config))
    [host] = apply_ssh_config(spec, lookup, source, "tester").hosts
    return host, port


def _ssh(tmp_path, host_key, port: int, timeout: float = 3.0) -> SSHSpec:
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{port} {host_key.get_name()} {host_key.get_base64()}\n")
    return SSHSpec(known_hosts=str(known), connect_timeout=timeout)


def test_session_goes_through_the_proxy_command(server, tmp_path):
    fake, client_key = server
    host, port = _host(tmp_path, f"{sys.executable} {RELAY} 127.0.0.1 {fake.port} # %h:%p",
                       client_key)
    assert host.proxy_command.endswith(f"# 127.0.0.1:{port}")  # tokens expanded as ssh does
    session = SSHSession.connect(host, _ssh(tmp_path, fake.host_key, port))
    try:
        result = session.run("hostname", time.monotonic() + 10, threading.Event())
    finally:
        session.close()
    assert result.exit_code == 0 and "through the proxy" in result.output
    assert fake.observed.commands == ["hostname"]


@pytest.mark.parametrize("command, words", [
    ("sleep 60", "banner"),
    ("exit 3", ""),
])
def test_a_silent_or_dead_proxy_is_a_host_error_within_the_timeout(server, tmp_path, command,
                                                                    words):
    fake, client_key = server
    host, port = _host(tmp_path, command, client_key)
    began = time.monotonic()
    with pytest.raises(HostError) as caught:
        SSHSession.connect(host, _ssh(tmp_path, fake.host_key, port, timeout=1.5))
    assert time.monotonic() - began < 15
    assert caught.value.host == "gpu1" and words in caught.value.message
    assert "ProxyCommand" in caught.value.message
