"""The namespace cluster itself: ssh by address, host keys, link cuts, shaping, teardown."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

paramiko = pytest.importorskip("paramiko")

try:
    from nscluster import (MAX_BRIDGE_PORTS, NamespaceCluster, bridge_layout, candidate_networks,
                           cleanup_stale, cluster_available, network_prefix)
except ImportError:  # tests/ imported as a package
    from tests.nscluster import (MAX_BRIDGE_PORTS, NamespaceCluster, bridge_layout,
                                 candidate_networks, cleanup_stale, cluster_available,
                                 network_prefix)

pytestmark = pytest.mark.cluster


def _require_cluster() -> None:
    ok, reason = cluster_available()
    if not ok:
        if os.environ.get("CI") == "true":
            pytest.fail(f"namespace cluster unavailable under CI: {reason}")
        pytest.skip(f"namespace cluster unavailable: {reason}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    _require_cluster()
    c = NamespaceCluster(3, tmp_path_factory.mktemp("nscluster3"))
    try:
        c.start()
        yield c
    finally:
        c.stop()


def _connect(cluster, host, known_hosts=None, key_filename=None, timeout=5.0):
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.load_host_keys(str(known_hosts or cluster.known_hosts))
    try:
        client.connect(host.address, port=22, username="root",
                       key_filename=str(key_filename or cluster.identity_file),
                       timeout=timeout, banner_timeout=timeout, auth_timeout=timeout,
                       allow_agent=False, look_for_keys=False)
    except BaseException:
        client.close()
        raise
    return client


def _exec(client, command: str, timeout: float = 30.0) -> tuple[int, str, str]:
    _, stdout, stderr = client.exec_command(command, timeout=timeout)
    out = stdout.read().decode()
    err = stderr.read().decode()
    return stdout.channel.recv_exit_status(), out, err


def test_hosts_are_distinct(cluster):
    assert [h.name for h in cluster.hosts] == ["h1", "h2", "h3"]
    assert len({h.address for h in cluster.hosts}) == 3
    assert len({h.host_key_pub for h in cluster.hosts}) == 3
    assert all(h.host_key_pub.startswith("ssh-ed25519 AAAA") for h in cluster.hosts)
    assert all(h.netns.startswith(cluster.ns_prefix) and h.iface == "eth0" for h in cluster.hosts)
    keys = paramiko.HostKeys(str(cluster.known_hosts))
    for h in cluster.hosts:
        for alias in (h.address, h.name):
            entry = keys.lookup(alias)
            assert entry is not None and "ssh-ed25519" in entry, alias
            assert entry["ssh-ed25519"].get_base64() == h.host_key_pub.split()[1]


def test_paramiko_hostname_and_interpreter(cluster):
    for h in cluster.hosts:
        client = _connect(cluster, h)
        try:
            rc, out, err = _exec(client, "hostname")
            assert (rc, out.strip()) == (0, h.name), err
            # the venv's interpreter by absolute path, seeing the host's name and network
            code = ("import socket; print(socket.gethostname()); "
                    "print(socket.gethostbyname(socket.gethostname()))")
            rc, out, err = _exec(client, f"{sys.executable} -c '{code}'")
            assert rc == 0, err
            assert out.split() == [h.name, h.address]
            # PATH comes from SetEnv in sshd_config: our PATH's entries are all there
            rc, out, _ = _exec(client, "echo $PATH")
            ours = [p for p in os.environ.get("PATH", "").split(":") if p]
            assert set(ours) <= set(out.strip().split(":"))
        finally:
            client.close()


def test_run_in_and_pids_in(cluster):
    h = cluster.hosts[1]
    cp = cluster.run_in(h, ["hostname"], capture_output=True, text=True, check=True)
    assert cp.stdout.strip() == h.name
    cp = cluster.run_in(h, ["ip", "-o", "-4", "addr", "show", "dev", "eth0"], capture_output=True, text=True,
                        check=True)
    assert f"{h.address}/24" in cp.stdout
    listener = cluster.sshd_pid(h)
    assert listener is not None and listener not in cluster.pids_in(h)

    client = _connect(cluster, h)
    try:
        rc, out, err = _exec(client, "setsid sleep 321 </dev/null >/dev/null 2>&1 & echo $!")
        assert rc == 0, err
        pid = int(out.strip())
    finally:
        client.close()
    try:
        assert pid in cluster.pids_in(h)
        assert pid not in cluster.pids_in(cluster.hosts[0])
        deadline = time.monotonic() + 10  # setsid execs sleep in the same pid, a moment later
        while True:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")[:2]
            if argv == [b"sleep", b"321"] or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert argv == [b"sleep", b"321"]
    finally:
        os.kill(pid, 9)


def test_hosts_reach_each_other_by_name(cluster):
    a, b = cluster.hosts[0], cluster.hosts[2]
    code = (f"import socket; s = socket.create_connection(('{b.name}', 22), timeout=5); "
            "print(s.getpeername()[0], s.recv(4).decode())")
    cp = cluster.run_in(a, [sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.split() == [b.address, "SSH-"]


def test_unknown_host_key_is_rejected(cluster, tmp_path):
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    with pytest.raises(paramiko.SSHException):
        _connect(cluster, cluster.hosts[0], known_hosts=empty)


def test_unauthorized_client_key_is_rejected(cluster, tmp_path):
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    with pytest.raises(paramiko.AuthenticationException):
        _connect(cluster, cluster.hosts[0], key_filename=other)


def test_changed_host_key_is_rejected(cluster):
    old = cluster.hosts[2]
    cluster.regenerate_host_key(old)
    try:
        new = cluster.hosts[2]
        assert new.host_key_pub != old.host_key_pub
        with pytest.raises(paramiko.BadHostKeyException):
            _connect(cluster, new)
    finally:
        cluster.write_known_hosts()
    client = _connect(cluster, cluster.hosts[2])
    try:
        assert _exec(client, "hostname")[1].strip() == "h3"
    finally:
        client.close()


def test_link_down_times_out_and_up_restores(cluster):
    h = cluster.hosts[0]
    cluster.set_link(h, False)
    try:
        t0 = time.monotonic()
        with pytest.raises((socket.timeout, OSError, paramiko.SSHException)):
            _connect(cluster, h, timeout=1.5)
        assert time.monotonic() - t0 < 5.0
        # the other hosts are unaffected
        _connect(cluster, cluster.hosts[1]).close()
    finally:
        cluster.set_link(h, True)
    client = _connect(cluster, h)
    try:
        assert _exec(client, "hostname")[1].strip() == h.name
    finally:
        client.close()


def test_stop_and_start_sshd(cluster):
    h = cluster.hosts[1]
    cluster.stop_sshd(h)
    try:
        assert cluster.sshd_pid(h) is None
        with pytest.raises((paramiko.ssh_exception.NoValidConnectionsError, OSError)):
            _connect(cluster, h, timeout=2)
    finally:
        cluster.start_sshd(h)
    _connect(cluster, h).close()


_SINK = r"""
import socket, sys
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((sys.argv[1], int(sys.argv[2]))); srv.listen(4); print("ready", flush=True)
for _ in range(int(sys.argv[3])):
    conn, _ = srv.accept(); n = 0
    while True:
        b = conn.recv(1 << 16)
        if not b: break
        n += len(b)
    conn.sendall(str(n).encode()); conn.close()
"""


def _timed_send(address: str, port: int, nbytes: int) -> float:
    t0 = time.monotonic()
    with socket.create_connection((address, port), timeout=20) as s:
        s.sendall(b"x" * nbytes)
        s.shutdown(socket.SHUT_WR)
        assert int(s.recv(64)) == nbytes
    return time.monotonic() - t0


def test_shape_limits_rate(cluster):
    h = cluster.hosts[2]
    sink = cluster.popen_in(h, [sys.executable, "-c", _SINK, h.address, "5001", "2"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert sink.stdout.readline().strip() == "ready"
        cluster.shape(h, 8.0)  # 1 MB at 8 Mbit/s: about 1 s
        try:
            qd = subprocess.run(["tc", "qdisc", "show", "dev", cluster.veth(h)], capture_output=True,
                                text=True).stdout
            assert "tbf" in qd
            qd_in = cluster.run_in(h, ["tc", "qdisc", "show", "dev", "eth0"], capture_output=True,
                                   text=True).stdout
            assert "tbf" in qd_in
            shaped = _timed_send(h.address, 5001, 1_000_000)
        finally:
            cluster.shape(h, None)
        assert "tbf" not in subprocess.run(["tc", "qdisc", "show", "dev", cluster.veth(h)],
                                           capture_output=True, text=True).stdout
        free = _timed_send(h.address, 5001, 1_000_000)
        assert 0.6 < shaped < 15, shaped
        assert free < shaped / 2, (free, shaped)
        sink.wait(timeout=10)
    finally:
        if sink.poll() is None:
            sink.kill()
            sink.wait()


def test_stop_removes_everything(tmp_path):
    _require_cluster()
    c = NamespaceCluster(2, tmp_path / "c2")
    c.start()
    try:
        h = c.hosts[0]
        client = _connect(c, h)
        try:
            rc, out, _ = _exec(client, "setsid sleep 322 </dev/null >/dev/null 2>&1 & echo $!")
            stray = int(out.strip())
        finally:
            client.close()
        assert stray in c.pids_in(h)
        listeners = [c.sshd_pid(x) for x in c.hosts]
        c.shape(c.hosts[1], 50)
    finally:
        c.stop()
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert c.ns_prefix not in listed
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    assert c.bridge not in links and c.veth(0) not in links and c.veth(1) not in links
    for pid in [stray] + listeners:
        assert not os.path.exists(f"/proc/{pid}") or _is_zombie(pid), pid
    assert not any(c.uts_file(x).exists() for x in c.hosts)
    c.stop()  # twice is fine


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _dead_pid() -> int:
    pid = 4_000_000
    while os.path.exists(f"/proc/{pid}"):
        pid -= 1
    return pid


def test_stale_leftovers_are_cleaned():
    _require_cluster()
    dead = _dead_pid()
    ns, br = f"ddpc{dead}x0h1", f"dcb{dead}x0"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    subprocess.run(["ip", "link", "add", br, "type", "bridge"], check=True)
    try:
        removed = cleanup_stale()
        assert f"netns {ns}" in removed and f"link {br}" in removed
        assert ns not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert not os.path.exists(f"/sys/class/net/{br}")
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "link", "del", br], capture_output=True)


def test_address_plan_past_one_slash_24():
    assert [network_prefix(n) for n in (1, 253, 254, 509, 510, 1000, 1021, 1023, 4093)] == \
        [24, 24, 23, 23, 22, 22, 22, 21, 20]
    assert [str(n) for n in candidate_networks(22)[:2]] == ["10.213.4.0/22", "10.213.8.0/22"]
    assert len(candidate_networks(24)) == 250  # 10.213.1-250.0/24, as before
    for prefix in (20, 21, 22, 23):
        nets = candidate_networks(prefix)
        assert all(1 <= int(str(n.network_address).split(".")[2]) and
                   int(str(n.broadcast_address).split(".")[2]) <= 250 for n in nets)
        assert not any(a.overlaps(b) for a, b in zip(nets, nets[1:]))


def test_bridge_layout_keeps_every_bridge_within_its_ports():
    assert bridge_layout(1023) == [1023]  # a bridge's 1,023 ports, no trunk needed
    assert bridge_layout(1024) == [1022, 2]  # one port of each for the trunk between them
    assert bridge_layout(4, ports=3) == [2, 2]
    for hosts, ports in ((3000, MAX_BRIDGE_PORTS), (30, 7), (5, 4)):
        layout = bridge_layout(hosts, ports)
        trunks = len(layout) - 1
        assert sum(layout) == hosts
        assert layout[0] + trunks <= ports and all(n + 1 <= ports for n in layout[1:])
    with pytest.raises(ValueError):
        bridge_layout(3, ports=2)


def test_hosts_on_two_bridges_are_one_network(tmp_path):
    """Bridges of 3 ports (as a 1,023-port bridge is past 1,023 hosts): 4 hosts on two bridges,
    reached from the root namespace and from each other across the trunk; stop removes both."""
    _require_cluster()
    c = NamespaceCluster(4, tmp_path / "c4", bridge_ports=3)
    c.start()
    try:
        assert c.layout == [2, 2] and len(c.bridges) == 2
        assert [c.bridge_of(h) for h in c.hosts] == [c.bridges[0]] * 2 + [c.bridges[1]] * 2
        for bridge, members in zip(c.bridges, ([c.hosts[0], c.hosts[1]],
                                               [c.hosts[2], c.hosts[3]])):
            ports = os.listdir(f"/sys/class/net/{bridge}/brif")
            assert len(ports) == 3 and {c.veth(h) for h in members} <= set(ports)
        for h in c.hosts:  # from the root namespace, through the first bridge's address
            client = _connect(c, h)
            try:
                assert _exec(client, "hostname")[1].strip() == h.name
            finally:
                client.close()
        a, b = c.hosts[0], c.hosts[3]  # across the trunk, by name
        code = (f"import socket; s = socket.create_connection(('{b.name}', 22), timeout=5); "
                "print(s.getpeername()[0], s.recv(4).decode())")
        cp = c.run_in(a, [sys.executable, "-c", code], capture_output=True, text=True,
                      timeout=30)
        assert cp.returncode == 0, cp.stderr
        assert cp.stdout.split() == [b.address, "SSH-"]
    finally:
        c.stop()
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True,
                           check=True).stdout
    assert not any(name in links for name in c.bridges + [c._trunk_names(1)[0]])
