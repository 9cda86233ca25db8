"""Tests of ddpcheck.config.hostsyaml: hosts.yaml -> ClusterSpec, and errors naming file:line: key."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ddpcheck.config.hostsyaml import load_hosts_file, local_cluster_spec, parse_hosts_yaml
from ddpcheck.model.errors import ConfigError
from ddpcheck.model.spec import (DEFAULT_CONNECT_TIMEOUT, DEFAULT_FANOUT, DEFAULT_PYTHON,
                           DEFAULT_RENDEZVOUS_PORT, DEFAULT_SSH_PORT, DEFAULT_WORKDIR, Backend,
                           ClusterSpec, HostKeyPolicy)

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def parse(text: str) -> ClusterSpec:
    return parse_hosts_yaml(textwrap.dedent(text), "hosts.yaml")


def error(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse(text)
    assert info.value.source == "hosts.yaml"
    return info.value


def assert_error(text: str, line: int | None, key: str | None, words: str) -> ConfigError:
    exc = error(text)
    assert (exc.line, exc.key) == (line, key), str(exc)
    assert words in exc.message, str(exc)
    return exc


# ----------------------------------------------------------------------------- example files


def test_example_file_parses() -> None:
    spec = load_hosts_file(CONFIGS / "hosts.example.yaml")
    assert [h.name for h in spec.hosts] == ["node01", "node02", "node03", "node04", "node05"]
    assert spec.source == str(CONFIGS / "hosts.example.yaml")
    assert spec.local is False
    assert spec.master == "node01" and spec.master_host.name == "node01"
    assert spec.rendezvous_port == 29500
    assert spec.backend is Backend.AUTO
    assert spec.ssh.known_hosts == os.path.expanduser("~/.ssh/known_hosts")
    assert spec.ssh.host_key_policy is HostKeyPolicy.REJECT
    assert spec.ssh.connect_timeout == 10.0 and spec.ssh.fanout == 32
    node01, node05 = spec.hosts[0], spec.hosts[4]
    assert node01.address == "node01" and node01.user == "alice" and node01.port == 22
    assert node01.identity_file == os.path.expanduser("~/.ssh/id_ed25519")
    assert node01.python == "/opt/venv/bin/python"
    assert node01.workdir == "/tmp/ddpcheck-{uid}"  # the per-user default
    assert node01.slots is None
    assert node01.env == {"NCCL_SOCKET_IFNAME": "ens5", "GLOO_SOCKET_IFNAME": "ens5"}
    assert node05.address == "10.0.0.5" and node05.slots == 4
    assert node05.env == {"NCCL_SOCKET_IFNAME": "ens5", "GLOO_SOCKET_IFNAME": "ens5",
                          "NCCL_IB_HCA": "mlx5_1"}
    lines = (CONFIGS / "hosts.example.yaml").read_text().splitlines()
    assert "node[01-04]" in lines[node01.line - 1]
    assert all(h.line == node01.line for h in spec.hosts[:4])
    assert "name: node05" in lines[node05.line - 1]


def test_interface_example_verbatim_parses() -> None:
    spec = parse("""\
        defaults:                      # apply to every host; a host's own keys override them
          user: alice                  # ssh user (default: ssh_config User, then $USER)
          port: 22
          identity_file: ~/.ssh/id_ed25519
          python: /opt/venv/bin/python # interpreter with torch + ddpcheck on the host
          env: {NCCL_SOCKET_IFNAME: ens5, GLOO_SOCKET_IFNAME: ens5}   # exported for every rank
          workdir: /tmp/ddpcheck       # where runs keep their files on the host
        ssh:
          known_hosts: ~/.ssh/known_hosts   # host keys are checked against it
          host_key_policy: reject           # reject (default) | accept-new
          connect_timeout: 10
          fanout: 32                        # hosts contacted at once
        rendezvous:
          master: node01               # host whose address ranks rendezvous at
          port: 29500
        backend: auto                  # auto (nccl with GPUs, else gloo) | nccl | gloo
        hosts:
          - node[01-04]                # hostlist ranges, pdsh/SLURM style
          - {name: node05, address: 10.0.0.5, slots: 4, env: {NCCL_IB_HCA: mlx5_1}}
        """)
    assert len(spec.hosts) == 5
    assert [h.line for h in spec.hosts] == [18, 18, 18, 18, 19]


def test_local_file_parses() -> None:
    spec = load_hosts_file(str(CONFIGS / "local.yaml"))
    assert len(spec.hosts) == 1
    host = spec.hosts[0]
    assert (host.name, host.address, host.slots) == ("localhost", "127.0.0.1", 2)
    assert spec.backend is Backend.GLOO
    assert spec.local is False


def test_local_cluster_spec() -> None:
    spec = local_cluster_spec("/usr/bin/python3.11")
    assert spec.local is True
    assert spec.source == "<embedded: this machine>"
    assert len(spec.hosts) == 1
    host = spec.hosts[0]
    assert (host.name, host.address, host.python, host.slots) == (
        "localhost", "127.0.0.1", "/usr/bin/python3.11", None)
    assert spec.master_host is host
    assert spec.backend is Backend.AUTO


# ----------------------------------------------------------------------------- values


def test_minimal_file_gets_every_default() -> None:
    spec = parse("hosts: [h1]\n")
    assert spec.source == "hosts.yaml" and spec.local is False
    host = spec.hosts[0]
    assert (host.name, host.address, host.user, host.port, host.identity_file) == (
        "h1", "h1", None, DEFAULT_SSH_PORT, None)
    assert (host.python, host.env, host.workdir, host.slots, host.line) == (
        DEFAULT_PYTHON, {}, DEFAULT_WORKDIR, None, 1)
    assert spec.ssh.known_hosts is None
    assert spec.ssh.host_key_policy is HostKeyPolicy.REJECT
    assert spec.ssh.connect_timeout == DEFAULT_CONNECT_TIMEOUT
    assert spec.ssh.fanout == DEFAULT_FANOUT
    assert spec.master == "" and spec.master_host.name == "h1"
    assert spec.rendezvous_port == DEFAULT_RENDEZVOUS_PORT
    assert spec.backend is Backend.AUTO


def test_defaults_apply_and_host_keys_override() -> None:
    spec = parse("""\
        defaults:
          user: alice
          port: 2222
          python: /opt/py/bin/python
          workdir: /scratch/ddp
          slots: 8
          identity_file: ~/.ssh/key
        hosts:
          - a
          - name: b
            user: bob
            port: 22
            python: python3.12
            workdir: /tmp/b
            slots: 2
            identity_file: /keys/b
        """)
    a, b = spec.hosts
    assert (a.user, a.port, a.python, a.workdir, a.slots) == (
        "alice", 2222, "/opt/py/bin/python", "/scratch/ddp", 8)
    assert a.identity_file == os.path.expanduser("~/.ssh/key")
    assert (b.user, b.port, b.python, b.workdir, b.slots, b.identity_file) == (
        "bob", 22, "python3.12", "/tmp/b", 2, "/keys/b")
    assert (a.line, b.line) == (9, 10)


def test_env_merges_per_variable() -> None:
    spec = parse("""\
        defaults:
          env: {A: "1", B: two}
        hosts:
          - a
          - {name: b, env: {B: three, C: 4}}
          - {name: c, env: {}}
        """)
    a, b, c = spec.hosts
    assert a.env == {"A": "1", "B": "two"}
    assert b.env == {"A": "1", "B": "three", "C": "4"}
    assert c.env == {"A": "1", "B": "two"}


def test_env_values_are_exported_as_written() -> None:
    spec = parse("""\
        hosts:
          - name: a
            env:
              INT: 1
              FLOAT: 1.0
              HEX: 0x10
              BOOL: true
              NO: no
              EMPTY:
              QUOTED: ""
              SPACE: "a b"
              _under_1: x
        """)
    assert spec.hosts[0].env == {"INT": "1", "FLOAT": "1.0", "HEX": "0x10", "BOOL": "true",
                                 "NO": "no", "EMPTY": "", "QUOTED": "", "SPACE": "a b",
                                 "_under_1": "x"}


def test_env_is_not_shared_between_hosts() -> None:
    spec = parse("defaults: {env: {A: x}}\nhosts: ['n[1-2]']\n")
    assert spec.hosts[0].env is not spec.hosts[1].env


def test_hostlist_entries_expand_in_order() -> None:
    spec = parse("""\
        hosts:
          - n[1-2],login
          - name: gpu[08-10]
            slots: 4
        """)
    assert [h.name for h in spec.hosts] == ["n1", "n2", "login", "gpu08", "gpu09", "gpu10"]
    assert [h.line for h in spec.hosts] == [2, 2, 2, 3, 3, 3]
    assert [h.slots for h in spec.hosts] == [None, None, None, 4, 4, 4]
    assert [h.address for h in spec.hosts][3:] == ["gpu08", "gpu09", "gpu10"]


def test_ssh_section() -> None:
    spec = parse("""\
        ssh:
          known_hosts: ~/kh
          host_key_policy: accept-new
          connect_timeout: 2.5
          fanout: 1
        hosts: [a]
        """)
    assert spec.ssh.known_hosts == os.path.expanduser("~/kh")
    assert spec.ssh.host_key_policy is HostKeyPolicy.ACCEPT_NEW
    assert spec.ssh.connect_timeout == 2.5
    assert spec.ssh.fanout == 1


def test_rendezvous_and_backend() -> None:
    spec = parse("rendezvous: {master: b, port: 1234}\nbackend: nccl\nhosts: [a, b]\n")
    assert spec.master == "b" and spec.master_host.name == "b"
    assert spec.rendezvous_port == 1234
    assert spec.backend is Backend.NCCL
    assert parse("backend: GLOO\nhosts: [a]\n").backend is Backend.GLOO


def test_empty_sections_are_allowed() -> None:
    spec = parse("defaults:\nssh:\nrendezvous:\nhosts: [a]\n")
    assert spec.hosts[0].name == "a"


def test_yaml_anchors_and_merge_keys() -> None:
    spec = parse("""\
        defaults: &base
          user: alice
          env: {A: "1"}
        hosts:
          - {<<: *base, name: a, user: root}
          - name: b
            <<: [{slots: 2}, {slots: 3, port: 2200}]
        """)
    a, b = spec.hosts
    assert (a.user, a.env) == ("root", {"A": "1"})
    assert (b.slots, b.port, b.user) == (2, 2200, "alice")


def test_integer_forms() -> None:
    assert parse("defaults: {port: 0x16}\nhosts: [a]\n").hosts[0].port == 22
    assert parse("defaults: {slots: +3}\nhosts: [a]\n").hosts[0].slots == 3


# ----------------------------------------------------------------------------- errors


def test_error_string_names_file_line_and_key() -> None:
    exc = error("""\
        hosts:
          - a
          - {name: b, slots: 0}
        """)
    assert str(exc) == "hosts.yaml:3: hosts[1].slots: must be an integer >= 1, got 0"


@pytest.mark.parametrize("text, line, key, words", [
    # top level
    ("hostz: [a]\n", 1, "hostz", "did you mean 'hosts'"),
    ("hosts: [a]\nversion: 1\n", 2, "version", "unknown key"),
    ("hosts: [a]\nhosts: [b]\n", 2, "hosts", "duplicate key (first at line 1)"),
    ("- a\n- b\n", 1, None, "top level must be a mapping"),
    ("just text\n", 1, None, "top level must be a mapping"),
    ("", 1, "hosts", "empty"),
    ("# nothing here\n", 1, "hosts", "empty"),
    ("backend: gloo\n", 1, "hosts", "required"),
    ("hosts:\n", 1, "hosts", "non-empty list"),
    ("hosts: []\n", 1, "hosts", "got an empty list"),
    ("hosts: a\n", 1, "hosts", "non-empty list"),
    ("hosts: {a: 1}\n", 1, "hosts", "non-empty list"),
    ("? [a]\n: 1\nhosts: [a]\n", 1, None, "keys must be plain strings"),
    # sections that must be mappings
    ("defaults: [a]\nhosts: [a]\n", 1, "defaults", "must be a mapping, got a list"),
    ("ssh: 3\nhosts: [a]\n", 1, "ssh", "must be a mapping, got 3"),
    ("rendezvous: x\nhosts: [a]\n", 1, "rendezvous", "must be a mapping, got 'x'"),
    # defaults
    ("defaults:\n  usr: a\nhosts: [a]\n", 2, "defaults.usr", "did you mean 'user'"),
    ("defaults:\n  name: a\nhosts: [a]\n", 2, "defaults.name", "unknown key"),
    ("defaults:\n  address: a\nhosts: [a]\n", 2, "defaults.address", "unknown key"),
    ("defaults:\n  user: 1000\nhosts: [a]\n", 2, "defaults.user", "quote it"),
    ("defaults:\n  user: no\nhosts: [a]\n", 2, "defaults.user", "got no (quote it"),
    ("defaults:\n  user: ''\nhosts: [a]\n", 2, "defaults.user", "non-empty"),
    ("defaults:\n  user: -oX\nhosts: [a]\n", 2, "defaults.user", "not a user name"),
    ("defaults:\n  user: a@b\nhosts: [a]\n", 2, "defaults.user", "not a user name"),
    ("defaults:\n  port: 0\nhosts: [a]\n", 2, "defaults.port", "from 1 to 65535, got 0"),
    ("defaults:\n  port: 65536\nhosts: [a]\n", 2, "defaults.port", "got 65536"),
    ("defaults:\n  port: true\nhosts: [a]\n", 2, "defaults.port", "got true"),
    ("defaults:\n  port: '22'\nhosts: [a]\n", 2, "defaults.port", "got '22'"),
    ("defaults:\n  port: 22.0\nhosts: [a]\n", 2, "defaults.port", "got 22.0"),
    ("defaults:\n  port:\nhosts: [a]\n", 2, "defaults.port", "got nothing (null)"),
    ("defaults:\n  port: !!int x\nhosts: [a]\n", 2, "defaults.port", "cannot read 'x' as !!int"),
    ("defaults:\n  python: ''\nhosts: [a]\n", 2, "defaults.python", "non-empty"),
    ("defaults:\n  python: [a]\nhosts: [a]\n", 2, "defaults.python", "got a list"),
    ("defaults:\n  identity_file: 3\nhosts: [a]\n", 2, "defaults.identity_file", "string"),
    ("defaults:\n  workdir: tmp/x\nhosts: [a]\n", 2, "defaults.workdir", "absolute"),
    ("defaults:\n  workdir: ~/x\nhosts: [a]\n", 2, "defaults.workdir", "absolute"),
    ("defaults:\n  slots: 0\nhosts: [a]\n", 2, "defaults.slots", ">= 1, got 0"),
    ("defaults:\n  slots: false\nhosts: [a]\n", 2, "defaults.slots", "got false"),
    ("defaults:\n  env: [A]\nhosts: [a]\n", 2, "defaults.env", "must be a mapping"),
    ("defaults:\n  env:\n    1BAD: x\nhosts: [a]\n", 3, "defaults.env.1BAD", "variable name"),
    ("defaults:\n  env:\n    A-B: x\nhosts: [a]\n", 3, "defaults.env.A-B", "variable name"),
    ("defaults:\n  env:\n    A: [x]\nhosts: [a]\n", 3, "defaults.env.A", "single value"),
    ("defaults:\n  env:\n    A: x\n    A: y\nhosts: [a]\n", 4, "defaults.env.A", "duplicate"),
    # ssh
    ("ssh:\n  known_host: x\nhosts: [a]\n", 2, "ssh.known_host", "did you mean 'known_hosts'"),
    ("ssh:\n  known_hosts: 1\nhosts: [a]\n", 2, "ssh.known_hosts", "string"),
    ("ssh:\n  host_key_policy: accept\nhosts: [a]\n", 2, "ssh.host_key_policy",
     "did you mean 'accept-new'"),
    ("ssh:\n  host_key_policy: yes\nhosts: [a]\n", 2, "ssh.host_key_policy", "one of"),
    ("ssh:\n  connect_timeout: 0\nhosts: [a]\n", 2, "ssh.connect_timeout", "> 0, got 0"),
    ("ssh:\n  connect_timeout: -1.5\nhosts: [a]\n", 2, "ssh.connect_timeout", "got -1.5"),
    ("ssh:\n  connect_timeout: .inf\nhosts: [a]\n", 2, "ssh.connect_timeout", "got .inf"),
    ("ssh:\n  connect_timeout: .nan\nhosts: [a]\n", 2, "ssh.connect_timeout", "got .nan"),
    ("ssh:\n  connect_timeout: ten\nhosts: [a]\n", 2, "ssh.connect_timeout", "got 'ten'"),
    ("ssh:\n  connect_timeout: true\nhosts: [a]\n", 2, "ssh.connect_timeout", "got true"),
    ("ssh:\n  fanout: 0\nhosts: [a]\n", 2, "ssh.fanout", ">= 1, got 0"),
    ("ssh:\n  fanout: 1.5\nhosts: [a]\n", 2, "ssh.fanout", "got 1.5"),
    # rendezvous and backend
    ("rendezvous:\n  master: c\nhosts: [a, b]\n", 2, "rendezvous.master",
     "'c' is not one of the hosts"),
    ("rendezvous:\n  master: nod01\nhosts: ['node[01-02]']\n", 2, "rendezvous.master",
     "did you mean 'node01'"),
    ("rendezvous:\n  master: 10.0.0.5\nhosts: [{name: a, address: 10.0.0.5}]\n", 2,
     "rendezvous.master", "not one of the hosts"),
    ("rendezvous:\n  master: ''\nhosts: [a]\n", 2, "rendezvous.master", "non-empty"),
    ("rendezvous:\n  port: 70000\nhosts: [a]\n", 2, "rendezvous.port", "from 1 to 65535"),
    ("rendezvous:\n  port: yes\nhosts: [a]\n", 2, "rendezvous.port", "got yes"),
    ("rendezvous:\n  master_port: 1\nhosts: [a]\n", 2, "rendezvous.master_port", "unknown key"),
    ("hosts: [a]\nbackend: ncl\n", 2, "backend", "did you mean 'nccl'"),
    ("hosts: [a]\nbackend: mpi\n", 2, "backend", "auto | nccl | gloo"),
    ("hosts: [a]\nbackend: 1\n", 2, "backend", "one of"),
    # host entries
    ("hosts:\n  - a\n  - n[3-1]\n", 3, "hosts[1]", "goes down"),
    ("hosts:\n  - a\n  - n[1-2\n", 3, "hosts[1]", "unclosed"),
    ("hosts:\n  - 'n[]'\n", 2, "hosts[0]", "empty range"),
    ("hosts:\n  - 'a b'\n", 2, "hosts[0]", "invalid character"),
    ("hosts:\n  - ''\n", 2, "hosts[0]", "empty hostlist"),
    ("hosts:\n  - a\n  -\n", 3, "hosts[1]", "got nothing (null)"),
    ("hosts:\n  - 7\n", 2, "hosts[0]", "got 7"),
    ("hosts:\n  - [a, b]\n", 2, "hosts[0]", "got a list"),
    ("hosts:\n  - a\n  - {slots: 2}\n", 3, "hosts[1].name", "required"),
    ("hosts:\n  - name: 12\n", 2, "hosts[0].name", "quote it"),
    ("hosts:\n  - slots: 2\n    name: n[a-b]\n", 3, "hosts[0].name", "not a number"),
    ("hosts:\n  - name: a\n    adress: x\n", 3, "hosts[0].adress", "did you mean 'address'"),
    ("hosts:\n  - name: a\n    slots: 0\n", 3, "hosts[0].slots", ">= 1, got 0"),
    ("hosts:\n  - name: a\n    slots: two\n", 3, "hosts[0].slots", "got 'two'"),
    ("hosts:\n  - name: a\n    port: true\n", 3, "hosts[0].port", "got true"),
    ("hosts:\n  - name: a\n    workdir: rel\n", 3, "hosts[0].workdir", "absolute"),
    ("hosts:\n  - name: a\n    env: {9X: 1}\n", 3, "hosts[0].env.9X", "variable name"),
    ("hosts:\n  - name: a\n    address: ''\n", 3, "hosts[0].address", "non-empty"),
    ("hosts:\n  - name: a\n    address: -oProxyCommand=x\n", 3, "hosts[0].address",
     "not a host address"),
    ("hosts:\n  - name: a\n    address: [x]\n", 3, "hosts[0].address", "got a list"),
    ("hosts:\n  - name: n[1-2]\n    address: 10.0.0.1\n", 3, "hosts[0].address",
     "expands to 2 hosts"),
    ("hosts:\n  - name: a,b\n    address: 10.0.0.1\n", 3, "hosts[0].address",
     "exactly one host"),
    ("hosts:\n  - name: a\n    slots: 1\n    slots: 2\n", 4, "hosts[0].slots", "duplicate key"),
    # duplicate hosts: the line of the second one
    ("hosts:\n  - a\n  - b\n  - a\n", 4, "hosts[2]", "duplicate host 'a' (first at line 2)"),
    ("hosts:\n  - n[1-3]\n  - {name: n2}\n", 3, "hosts[1]", "duplicate host 'n2'"),
    ("hosts:\n  - n[1-2],n1\n", 2, "hosts[0]", "duplicate host 'n1' (first at line 2)"),
    # merges
    ("defaults: &d\n  <<: *d\nhosts: [a]\n", 1, "defaults", "refers to itself"),
    ("defaults:\n  <<: 3\nhosts: [a]\n", 2, "defaults", "merge (<<) needs a mapping"),
])
def test_errors(text: str, line: int, key: str | None, words: str) -> None:
    assert_error(text, line, key, words)


@pytest.mark.parametrize("text, line, words", [
    ("hosts: [a\n", 2, "flow sequence"),
    ("hosts:\n  - a\n - b\n", 3, "invalid YAML"),
    ("hosts:\n  - a\n\tslots: 2\n", 3, "invalid YAML"),
    ("hosts: [a]\n---\nhosts: [b]\n", 2, "single document"),
    ("hosts: [*x]\n", 1, "alias"),
    ("hosts: [a]\nssh: {fanout: 2\n", 3, "invalid YAML"),
    ("hosts: [a]\nbackend: '\x01'\n", 2, "special characters"),
    ("defaults:\n  user: alice\n  user2: \"unterminated\n", 4, "invalid YAML"),
])
def test_yaml_syntax_errors_carry_the_line(text: str, line: int, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_hosts_yaml(text, "hosts.yaml")
    assert info.value.line == line, str(info.value)
    assert info.value.key is None
    assert words in info.value.message, str(info.value)
    assert str(info.value).startswith(f"hosts.yaml:{line}: invalid YAML: ")


def test_missing_file_names_it(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_hosts_file(path)
    assert info.value.source == str(path)
    assert str(path) in str(info.value)
    assert "no such file" in str(info.value)


def test_directory_is_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_hosts_file(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"hosts: [h\xe9]\n")
    with pytest.raises(ConfigError) as info:
        load_hosts_file(path)
    assert "UTF-8" in str(info.value) and str(path) in str(info.value)


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "hosts.yaml"
    path.write_text("hosts:\n  - a\n  - {name: b, slots: 0}\n")
    with pytest.raises(ConfigError) as info:
        load_hosts_file(path)
    assert str(info.value) == f"{path}:3: hosts[1].slots: must be an integer >= 1, got 0"


def test_file_is_read_and_parsed(tmp_path: Path) -> None:
    path = tmp_path / "hosts.yaml"
    path.write_text("hosts: ['h[1-3]']\n")
    spec = load_hosts_file(path)
    assert [h.name for h in spec.hosts] == ["h1", "h2", "h3"]
    assert spec.source == str(path)


# ----------------------------------------------------------------------------- property


_TOKENS = ["hosts:", "defaults:", "ssh:", "rendezvous:", "backend:", "name:", "slots:",
           "port:", "env:", "address:", "master:", "fanout:", " ", "  ", "\n", "\n  ", "\n  - ",
           "- ", "[", "]", "{", "}", ",", ":", "'", '"', "&a ", "*a", "<<: ", "!!int ", "~",
           "#", "|", "0", "1", "22", "-1", "n[1-3]", "n[3-1]", "a", "b", "true", ".inf", "\t"]
_yamlish = st.lists(st.sampled_from(_TOKENS), max_size=40).map("".join)


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(max_size=200), _yamlish))
def test_any_text_gives_a_spec_or_a_config_error(text: str) -> None:
    try:
        spec = parse_hosts_yaml(text, "fuzz.yaml")
    except ConfigError as exc:
        assert exc.source == "fuzz.yaml"
        assert exc.line is None or exc.line >= 1
        return
    assert isinstance(spec, ClusterSpec) and spec.hosts


# -- property: hostile values end as a ConfigError or as correctly quoted commands -------------

import shlex  # noqa: E402

import yaml  # noqa: E402

from ddpcheck.plan.cmdlines import EXEC_AS_GIVEN, plan_launch, stage0_argv, stage0_command  # noqa: E402

_ANY_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)
_HOSTILE = st.sampled_from(["$(touch pwned)", "`id`", "a;b", "x' y", "-rf", "a=b", "\n",
                            "$HOME", "&& true", "|", "#", "~", "\0", "/opt/p=1/python", " "])
# Strings that mean harm: pieces of shell syntax mixed with any text.
_HARMFUL = st.lists(st.one_of(_HOSTILE, _ANY_TEXT), min_size=1, max_size=4).map("".join)
_ENV = st.dictionaries(st.from_regex(r"[A-Z_][A-Z0-9_]{0,8}", fullmatch=True),
                       st.one_of(_HARMFUL, _HARMFUL, st.integers(), st.booleans(), st.none()),
                       max_size=3)
_FIELDS = {"python": _HARMFUL, "workdir": _HARMFUL.map(lambda t: "/" + t), "env": _ENV,
           "identity_file": _HARMFUL, "user": _HARMFUL, "address": _HARMFUL}
# A well-formed skeleton (so that most documents reach the planner) carrying those strings
# wherever hosts.yaml takes a free-form value.
_DOCUMENT = st.fixed_dictionaries({
    "defaults": st.fixed_dictionaries({}, optional={k: v for k, v in _FIELDS.items()
                                                    if k != "address"}),
    "hosts": st.lists(st.sampled_from(["n1", "n[2-3]", "gpu-07", "node.example.org"]),
                      min_size=1, max_size=4, unique=True).flatmap(
        lambda names: st.tuples(*[st.fixed_dictionaries({"name": st.just(n)},
                                                        optional=_FIELDS)
                                  for n in names]).map(list)),
})


@settings(max_examples=150, deadline=None)
@given(_DOCUMENT)
def test_hostile_documents_give_a_config_error_or_exactly_quoted_commands(document) -> None:
    """hosts.yaml with values meant to break out of a shell (or a YAML parser): either a
    ConfigError naming the file, or a spec whose every command splits back to exactly the
    words intended, each value one word."""
    text = yaml.safe_dump(document, allow_unicode=True)
    try:
        spec = parse_hosts_yaml(text, "fuzz.yaml")
    except ConfigError as exc:
        assert exc.source == "fuzz.yaml" and exc.message
        return
    slots = {h.name: h.slots or 1 for h in spec.hosts}
    launches = plan_launch(spec, slots, Backend.GLOO, run_id="r1")
    for host, launch in zip(spec.hosts, launches):
        env = [f"{k}={v}" for k, v in {"PYTHONUNBUFFERED": "1", "PYTHONSAFEPATH": "1",
                                        **host.env, "DDPCHECK_WORKDIR": host.workdir}.items()]
        argv = stage0_argv(host, 30.0)
        program = [*EXEC_AS_GIVEN, *argv] if "=" in host.python else argv
        assert shlex.split(stage0_command(host, 30.0)) == [
            "cd", "/", "&&", "exec", "env", *env, *program]
        words = shlex.split(launch.command)
        assert words[:5 + len(env)] == ["cd", "/", "&&", "exec", "env", *env]
        assert words[words.index("--host") + 1] == host.name
        assert host.python in words and "\0" not in launch.command


def test_nul_in_a_value_is_a_config_error() -> None:
    assert_error('hosts:\n  - name: a\n    env: {X: "a\\0b"}\n', 3, "hosts[0].env.X", "NUL")
    assert_error('defaults:\n  python: "py\\0thon"\nhosts: [a]\n', 2, "defaults.python", "NUL")
