"""Unit tests for ddpcheck.config.sshconfig: ProxyJump syntax, and ssh_config applied to a ClusterSpec
with hosts.yaml values > ssh_config > defaults. ssh_config text is parsed by paramiko's
real parser."""

from __future__ import annotations

import os
import textwrap

import pytest

from ddpcheck.config.hostsyaml import parse_hosts_yaml
from ddpcheck.model.errors import ConfigError
from ddpcheck.config.sshconfig import (JumpHop, LocalFacts, SSHConfig, apply_ssh_config,
                                       parse_proxy_jump, read_ssh_config)

SSH_CONFIG = textwrap.dedent("""\
    Host bastion
      HostName bastion.example.org
      User jumper
      Port 2022
      IdentityFile /keys/jump
    Host gpu01
      HostName 10.1.0.1
      User gpuadmin
      Port 2201
    Host gpu*
      ProxyJump bastion
      IdentityFile /nonexistent/first
      IdentityFile KEYDIR/second
    Host deep
      ProxyJump alice@outer:2200,bastion
    Host outer
      ProxyJump gate
    Host loop
      ProxyJump loop
    """)
KEYDIR = "/tmp/ddpcheck-test-keys-that-exist"


def lookup_of(text: str) -> SSHConfig:
    return SSHConfig([("ssh_config", True)], reader=lambda path: text.replace("KEYDIR", KEYDIR))


def applied(hosts_yaml: str, ssh_config: str = SSH_CONFIG, warn=None):
    spec = parse_hosts_yaml(textwrap.dedent(hosts_yaml), "hosts.yaml")
    return apply_ssh_config(spec, lookup_of(ssh_config), "ssh_config", "localuser", warn=warn)


@pytest.fixture(autouse=True)
def _keys():
    os.makedirs(KEYDIR, exist_ok=True)
    open(os.path.join(KEYDIR, "second"), "a").close()


@pytest.mark.parametrize("text, hops", [
    ("bastion", (JumpHop("bastion"),)),
    ("alice@bastion:2222", (JumpHop("bastion", "alice", 2222),)),
    ("a,b@c:23", (JumpHop("a"), JumpHop("c", "b", 23))),
    ("ssh://bob@gw.example.org:2200", (JumpHop("gw.example.org", "bob", 2200),)),
    ("[fe80::1]:22", (JumpHop("fe80::1", None, 22),)),
    ("none", ()),
    ("NONE", ()),
])
def test_parse_proxy_jump(text: str, hops) -> None:
    assert parse_proxy_jump(text) == hops


@pytest.mark.parametrize("text, words", [
    ("", "empty"),
    ("a,,b", r"hop '' is not \[user@\]host"),
    ("a b", "is not"),
    ("host:port", "is not"),
    ("-oProxyCommand=x", "is not"),
    ("h:70000", "not 1..65535"),
])
def test_parse_proxy_jump_rejects(text: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        parse_proxy_jump(text)


def test_ssh_config_fills_what_hosts_yaml_left_out() -> None:
    spec = applied("""\
        hosts:
          - gpu01
          - {name: gpu02, user: explicit, port: 22}
          - {name: gpu03, address: 10.9.9.3, identity_file: /keys/mine, proxy_jump: none}
          - plain
        """)
    gpu01, gpu02, gpu03, plain = spec.hosts
    # ssh_config: HostName, User, Port, the first IdentityFile that exists (as ssh skips the
    # missing ones), jump
    assert (gpu01.address, gpu01.user, gpu01.port) == ("10.1.0.1", "gpuadmin", 2201)
    assert gpu01.identity_file == os.path.join(KEYDIR, "second")
    assert gpu01.proxy_jump == "bastion"
    [jump] = gpu01.jumps
    assert (jump.name, jump.address, jump.user, jump.port, jump.identity_file) == (
        "bastion", "bastion.example.org", "jumper", 2022, None)  # /keys/jump: no such file
    # hosts.yaml wins, key by key
    assert (gpu02.address, gpu02.user, gpu02.port) == ("gpu02", "explicit", 22)
    assert gpu02.jumps == gpu01.jumps
    assert (gpu03.address, gpu03.identity_file, gpu03.jumps) == ("10.9.9.3", "/keys/mine", ())
    # neither: the defaults ($USER, 22, the name)
    assert (plain.address, plain.user, plain.port, plain.jumps) == ("plain", "localuser", 22, ())


def test_defaults_of_hosts_yaml_count_as_explicit() -> None:
    spec = applied("""\
        defaults: {user: team, port: 22}
        hosts: [gpu01]
        """)
    assert (spec.hosts[0].user, spec.hosts[0].port, spec.hosts[0].address) == (
        "team", 22, "10.1.0.1")


def test_jump_chain_follows_openssh() -> None:
    """-J alice@outer:2200,bastion: outer with its own ssh_config (its ProxyJump gate too),
    then bastion reached through it (``ssh -J outer bastion``: bastion's own ProxyJump does not
    apply, so a chain whose later hop has a ProxyJump of its own is not a loop)."""
    [deep] = applied("hosts: [deep]\n").hosts
    assert [(j.name, j.user, j.port) for j in deep.jumps] == [
        ("gate", "localuser", 22), ("outer", "alice", 2200), ("bastion", "jumper", 2022)]
    assert all(j.jumps == () for j in deep.jumps)
    config = "Host t\n  ProxyJump a,b\nHost b\n  ProxyJump t\n"
    [target] = applied("hosts: [t]\n", config).hosts
    assert [j.name for j in target.jumps] == ["a", "b"]


def test_loops_and_bad_values_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="jumphost loop via loop"):
        applied("hosts: [loop]\n")
    with pytest.raises(ConfigError, match=r"^ssh_config:2: port: Bad port 'eighty'"):
        applied("hosts: [x]\n", "Host badport\n  Port eighty\n")
    cycle = "Host a\n  ProxyJump b\nHost b\n  ProxyJump a\n"
    with pytest.raises(ConfigError, match="hops deep: a loop"):
        applied("hosts: [c]\n", "Host c\n  ProxyJump a\n" + cycle)


def test_hosts_yaml_proxy_jump_is_checked_when_parsed() -> None:
    with pytest.raises(ConfigError, match=r"^hosts.yaml:1: hosts\[0\].proxy_jump: ProxyJump hop"):
        parse_hosts_yaml("hosts: [{name: a, proxy_jump: 'x y'}]\n", "hosts.yaml")


def test_local_spec_is_left_alone() -> None:
    from ddpcheck.config.hostsyaml import local_cluster_spec

    spec = local_cluster_spec("python3")
    assert apply_ssh_config(spec, lookup_of(SSH_CONFIG), "x", "u") is spec


def test_read_ssh_config(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    local = LocalFacts.here("me")
    config, source = read_ssh_config(None)  # no ~/.ssh/config: the system one only
    assert os.path.join(str(tmp_path), ".ssh", "config") not in source
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh" / "config").write_text("Host x\n  User y\n")
    config, source = read_ssh_config(None)
    assert config.resolve("x", local).user == "y"
    assert source.startswith(os.path.join(str(tmp_path), ".ssh", "config"))
    assert read_ssh_config("none")[0].resolve("x", local).user == "me"
    with pytest.raises(ConfigError, match="missing: no such ssh_config file"):
        read_ssh_config(str(tmp_path / "missing"))
    bad = tmp_path / "bad"
    bad.write_text("Host x\n  Match\n")
    with pytest.raises(ConfigError, match=f"^{bad}:2: no argument after keyword"):
        read_ssh_config(str(bad))


def test_proxy_command_tokens_and_unfollowed_keywords_are_said() -> None:
    config = ("Host n*\n  ProxyCommand ssh -W %h:%p gw # via gw\n  HostName %h.ib\n"
              "  BindAddress 10.0.0.9\n")
    said: list[str] = []
    [node] = applied("hosts: [n1, n2]\n", config, warn=said.append).hosts[:1]
    assert node.proxy_command == "ssh -W n1.ib:22 gw # via gw" and node.jumps == ()
    assert len(said) == 1 and "BindAddress 10.0.0.9 is not followed" in said[0]
    assert "(n1, n2)" in said[0]
    with pytest.raises(ConfigError, match="Match localnetwork is not supported"):
        applied("hosts: [n1]\n", "Match localnetwork 10.0.0.0/8\n  User x\n")


def test_dry_run_shows_the_proxy_command(tmp_path) -> None:
    import subprocess
    import sys

    config = tmp_path / "ssh_config"
    config.write_text("Host gpu*\n  HostName %h.cluster\n  User alice # admin\n"
                      "  ProxyCommand ssh -W %h:%p gateway\n")
    for command in (["preflight"], ["bandwidth", "-e", "1M"]):
        done = subprocess.run([sys.executable, "-m", "ddpcheck", *command, *(
            ["-w"] if command[0] == "preflight" else ["--nodelist"]), "gpu1,gpu2",
            "--ssh-config", str(config), "--dry-run"], capture_output=True, text=True,
            timeout=60)
        assert done.returncode == 0, done.stderr
        assert ("via ssh alice@gpu1.cluster:22 through ProxyCommand "
                "'ssh -W gpu1.cluster:22 gateway'") in done.stdout, done.stdout
