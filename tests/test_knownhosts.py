"""known_hosts parsed once and looked up per host: OpenSSH's ``ssh-keygen -F`` is the oracle
over generated files (plain, multi-name, ``[addr]:port``, hashed ``|1|`` lines, markers,
comments); the parse happens once per file however many connections; @revoked is refused."""

from __future__ import annotations

import random
import shutil
import subprocess
from pathlib import Path

import pytest

from sshserver import FakeSSHServer, exit_with, new_key

from ddpcheck.model.errors import HostError
from ddpcheck.model.spec import HostSpec, SSHSpec
from ddpcheck.transport import knownhosts
from ddpcheck.transport.ssh import SSHSession

pytestmark = pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="needs ssh-keygen")


@pytest.fixture(scope="module")
def keys():
    return [new_key() for _ in range(5)]


def generated_file(keys, rng: random.Random, hosts: int = 200) -> tuple[str, list[str]]:
    """known_hosts text and the names worth looking up (some present, some not)."""
    lines, names = ["# generated", ""], []
    for index in range(hosts):
        key = rng.choice(keys)
        name = rng.choice([f"node{index:03d}", f"[10.0.{index // 250}.{index % 250}]:2222",
                           f"10.1.0.{index % 250}"])
        alias = f"alias{index}" if rng.random() < 0.3 else None
        names += [name] + ([alias] if alias else [])
        lines.append(f"{name}{',' + alias if alias else ''} {key.get_name()} {key.get_base64()}")
        if rng.random() < 0.1:  # a second key for the same host (a rotation): both listed
            other = rng.choice(keys)
            lines.append(f"{name} {other.get_name()} {other.get_base64()}")
        if rng.random() < 0.05:
            lines.append(f"@cert-authority *.example.com {key.get_name()} {key.get_base64()}")
        if rng.random() < 0.05:
            lines.append(f"@revoked {name} {key.get_name()} {key.get_base64()}")
    names += ["absent", "[node001]:22", "node"]
    return "\n".join(lines) + "\n", names


def oracle(path: Path, name: str) -> list[tuple[str, str]]:
    """What OpenSSH finds for ``name``: the (type, key) of each matching plain line."""
    out = subprocess.run(["ssh-keygen", "-F", name, "-f", str(path)], capture_output=True,
                         text=True).stdout
    found = []
    for line in out.splitlines():
        fields = line.split()
        if not fields or line.startswith("#") or fields[0].startswith("@"):
            continue
        found.append((fields[1], fields[2]))
    return found


@pytest.mark.parametrize("hashed", [False, True])
def test_lookup_agrees_with_ssh_keygen(keys, tmp_path, hashed):
    rng = random.Random(14 + hashed)
    text, names = generated_file(keys, rng)
    path = tmp_path / "known_hosts"
    path.write_text(text)
    if hashed:  # OpenSSH hashes every name itself (and keeps markers)
        subprocess.run(["ssh-keygen", "-H", "-f", str(path)], check=True, capture_output=True)
        assert "|1|" in path.read_text()
    table = knownhosts.parse(path.read_text(), str(path))
    for name in rng.sample(names, 60):
        assert table.lookup(name) == oracle(path, name), name


def test_markers_and_bad_lines(keys, tmp_path):
    key = keys[0]
    text = (f"@revoked node1 {key.get_name()} {key.get_base64()}\n"
            f"@cert-authority *.x {key.get_name()} {key.get_base64()}\n"
            f"node1 {key.get_name()} {key.get_base64()}\n"
            f"short-line\n")
    table = knownhosts.parse(text, "kh")
    assert table.revoked == {(key.get_name(), key.get_base64())}
    assert table.lookup("node1") == [(key.get_name(), key.get_base64())]
    assert table.lookup("*.x") == []
    with pytest.raises(knownhosts.KnownHostsError, match=r"kh line 2: the key of 'node2'"):
        knownhosts.parse(f"node1 {key.get_name()} {key.get_base64()}\nnode2 ssh-rsa AA%%\n",
                         "kh")


def test_parsed_once_per_file_and_again_only_when_it_changes(keys, tmp_path, monkeypatch):
    path = tmp_path / "known_hosts"
    text, _ = generated_file(keys, random.Random(3), hosts=50)
    path.write_text(text)
    calls = []
    real = knownhosts.parse
    monkeypatch.setattr(knownhosts, "parse", lambda *a: calls.append(1) or real(*a))
    first = knownhosts.load(str(path))
    assert all(knownhosts.load(str(path)) is first for _ in range(100))
    assert len(calls) == 1
    knownhosts.remember(str(path), "new", "ssh-x", "AAAA")  # our own append: no re-parse
    with path.open("a") as handle:
        handle.write("new ssh-x AAAA\n")
    knownhosts.remember(str(path), "new", "ssh-x", "AAAA")
    assert knownhosts.load(str(path)) is first and len(calls) == 1
    path.write_text(text + f"other {keys[1].get_name()} {keys[1].get_base64()}\n")
    again = knownhosts.load(str(path))
    assert len(calls) == 2 and again.lookup("other")
    assert knownhosts.load(str(tmp_path / "missing")) is None


def test_connections_share_one_parse_and_revoked_keys_are_refused(keys, tmp_path, monkeypatch):
    host_key, client_key = keys[0], keys[1]
    key_file = tmp_path / "id"
    client_key.write_private_key_file(str(key_file))
    server = FakeSSHServer(host_key, client_key, exit_with(0)).start()
    try:
        known = tmp_path / "known_hosts"
        filler = "".join(f"node{i:04d} {keys[2].get_name()} {keys[2].get_base64()}\n"
                         for i in range(2000))
        known.write_text(filler + server.known_hosts_line() + "\n")
        calls = []
        real = knownhosts.parse
        monkeypatch.setattr(knownhosts, "parse", lambda *a: calls.append(1) or real(*a))
        host = HostSpec(name="fake", address="127.0.0.1", port=server.port, user="tester",
                        identity_file=str(key_file))
        ssh = SSHSpec(known_hosts=str(known), connect_timeout=5)
        for _ in range(4):
            SSHSession.connect(host, ssh).close()
        assert len(calls) == 1
        with known.open("a") as handle:
            handle.write(f"@revoked [127.0.0.1]:{server.port} {host_key.get_name()} "
                         f"{host_key.get_base64()}\n")
        with pytest.raises(HostError, match="marked @revoked in"):
            SSHSession.connect(host, ssh)
    finally:
        server.stop()
