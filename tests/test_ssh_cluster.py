"""SSH transport against the namespace cluster's real sshd: host key policies and a cut link."""

from __future__ import annotations

import threading
import time

import pytest

from ddpcheck.model.errors import HostError
from ddpcheck.model.spec import HostKeyPolicy, HostSpec, SSHSpec
from ddpcheck.transport.ssh import SSHSession

pytestmark = pytest.mark.cluster


def host_spec(cluster, host) -> HostSpec:
    return HostSpec(name=host.name, address=host.address, user="root",
                    identity_file=str(cluster.identity_file))


def test_runs_command_and_returns_exit_code_and_output(ns_cluster):
    host = ns_cluster.hosts[0]
    session = SSHSession.connect(host_spec(ns_cluster, host),
                                 SSHSpec(known_hosts=str(ns_cluster.known_hosts)))
    try:
        result = session.run("hostname; exit 7", time.monotonic() + 10, threading.Event())
    finally:
        session.close()
    assert result.exit_code == 7 and result.output.strip() == host.name


def test_command_past_its_deadline_is_stopped_and_hung_up(ns_cluster):
    host = ns_cluster.hosts[0]
    session = SSHSession.connect(host_spec(ns_cluster, host),
                                 SSHSpec(known_hosts=str(ns_cluster.known_hosts)))
    began = time.monotonic()
    try:
        result = session.run("sleep 300", time.monotonic() + 1.5, threading.Event())
    finally:
        session.close()
    assert result.timed_out and result.exit_code is None
    assert time.monotonic() - began < 5
    deadline = time.monotonic() + 10
    while any(b"sleep 300" in open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ")
              for pid in ns_cluster.pids_in(host) if _exists(pid)):
        assert time.monotonic() < deadline, "the remote command outlived its closed channel"
        time.sleep(0.2)


def _exists(pid: int) -> bool:
    try:
        open(f"/proc/{pid}/cmdline", "rb").close()
        return True
    except OSError:
        return False


def test_accept_new_records_an_unknown_key_once(ns_cluster, tmp_path):
    host = ns_cluster.hosts[2]
    known = tmp_path / "known_hosts"
    known.write_text("")
    spec = host_spec(ns_cluster, host)
    with pytest.raises(HostError, match="not in"):
        SSHSession.connect(spec, SSHSpec(known_hosts=str(known)))
    SSHSession.connect(spec, SSHSpec(known_hosts=str(known),
                                     host_key_policy=HostKeyPolicy.ACCEPT_NEW)).close()
    lines = known.read_text().splitlines()
    assert lines == [f"{host.address} {host.host_key_pub}"]
    # Now known: the default policy accepts it.
    SSHSession.connect(spec, SSHSpec(known_hosts=str(known))).close()


def test_changed_host_key_is_refused_even_with_accept_new(ns_cluster, tmp_path):
    host = ns_cluster.hosts[3]
    known = tmp_path / "known_hosts"
    known.write_text(f"{host.address} {host.host_key_pub}\n")
    ns_cluster.regenerate_host_key(host)
    try:
        for policy in HostKeyPolicy:
            with pytest.raises(HostError) as caught:
                SSHSession.connect(host_spec(ns_cluster, host),
                                   SSHSpec(known_hosts=str(known), host_key_policy=policy))
            assert "HOST KEY CHANGED" in caught.value.message
            assert "ssh-keygen" in caught.value.message and "SHA256:" in caught.value.message
        assert known.read_text() == f"{host.address} {host.host_key_pub}\n"
    finally:
        ns_cluster.write_known_hosts()


def test_cut_link_fails_within_the_connect_timeout(ns_cluster):
    host = ns_cluster.hosts[3]
    ns_cluster.set_link(host, up=False)
    began = time.monotonic()
    try:
        with pytest.raises(HostError, match="timed out|cannot connect"):
            SSHSession.connect(host_spec(ns_cluster, host),
                               SSHSpec(known_hosts=str(ns_cluster.known_hosts),
                                       connect_timeout=2))
    finally:
        ns_cluster.set_link(host, up=True)
    assert time.monotonic() - began < 6
