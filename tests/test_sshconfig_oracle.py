"""ssh_config resolution against OpenSSH itself: generated configs resolved by ddpcheck and by
``ssh -G -F FILE HOST`` (IdentityFile tokens by ``ssh -v``, which prints the files it tries)."""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Optional

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ddpcheck.config.sshconfig import (LocalFacts, SSHConfig, identity_paths, parse_proxy_jump,
                                       read_ssh_config)
from ddpcheck.model.errors import ConfigError

SSH = shutil.which("ssh")
needs_ssh = pytest.mark.skipif(SSH is None and os.environ.get("CI") != "true",
                               reason="openssh-client is not installed")

QUERIES = ["node1", "Node1", "node[1-2]", "gpu7", "bastion", "10.1.2.3", "n1.ib"]
PATTERNS = ["node1", "Node1", "node*", "NODE*", "node[1-2]", "n?de1", "*", "gpu*", "!node1",
            "!gpu*", "bastion", "*.ib", "10.1.2.*", "?"]
MATCH_HOST = ["node1", "NODE1", "node*", "!node1", "gpu*,bastion", "real-*", "*.example",
              "!gpu7,*", "10.1.2.3"]
VALUES = {
    "HostName": ["real-%h", "Real.Example", "10.9.8.7", "%h.ib", "%%h", '"quoted host"'],
    "User": ["alice", "bob # admin", '"carol"', "dave#x", "e\\'ve"],
    "Port": ["2222", "ssh", "22 # comment", "2200", "http"],
    "IdentityFile": ["~/.ssh/id_%h", "/k/%n_%p", "/k/%r@%h", '"/k/with space"', "/k/a # c"],
    "ProxyJump": ["bastion", "alice@jump:2200", "a,b", "none", "u@[10.0.0.1]:22", "j1,j2,j3"],
    "ProxyCommand": ["nc %h %p", "none", "ssh -W %h:%p bastion", "nc %h %p # c"],
}
KEYWORD_FORMS = ["{k} {v}", "{k}={v}", "  {k}   {v}", "{k} = {v}", "{lk} {v}", "\t{K} {v}"]


def _directive(draw) -> str:
    key = draw(st.sampled_from(sorted(VALUES)))
    value = draw(st.sampled_from(VALUES[key]))
    form = draw(st.sampled_from(KEYWORD_FORMS))
    return "  " + form.format(k=key, v=value, lk=key.lower(), K=key.upper()).lstrip()


@st.composite
def ssh_configs(draw) -> str:
    lines: list[str] = []
    for _ in range(draw(st.integers(1, 5))):
        kind = draw(st.sampled_from(["host", "match", "plain", "comment"]))
        if kind == "host":
            patterns = draw(st.lists(st.sampled_from(PATTERNS), min_size=1, max_size=3))
            lines.append("Host " + " ".join(patterns) + draw(st.sampled_from(["", " # c"])))
        elif kind == "match":
            lines.append("Match " + draw(_match_criteria()))
        elif kind == "comment":
            lines.append(draw(st.sampled_from(["# a comment", "", "   ", "  # indented"])))
        for _ in range(draw(st.integers(0, 4))):
            lines.append(_directive(draw))
    return "\n".join(lines) + "\n"


@st.composite
def _match_criteria(draw) -> str:
    if draw(st.integers(0, 6)) == 0:
        return draw(st.sampled_from(["all", "!all"]))
    parts = []
    for _ in range(draw(st.integers(1, 3))):
        attr = draw(st.sampled_from(["host", "originalhost", "user", "exec", "Host",
                                     "!host", "host="]))
        if attr == "exec":
            parts.append(draw(st.sampled_from(['exec true', 'exec false',
                                               'exec "test %h = node1"',
                                               'exec "test %n = Node1"'])))
        elif attr == "user":
            parts.append("user " + draw(st.sampled_from(["alice", "root", "!alice,*", "b*"])))
        elif attr == "host=":
            parts.append("host=" + draw(st.sampled_from(MATCH_HOST)))
        else:
            parts.append(f"{attr} " + draw(st.sampled_from(MATCH_HOST)))
    return " ".join(parts)


def ssh_g(path: str, host: str) -> Optional[dict]:
    """``ssh -G``'s answer for the keys ddpcheck uses; None when ssh refuses the config."""
    done = subprocess.run([SSH, "-G", "-F", path, host], capture_output=True, text=True,
                          timeout=30, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        return None
    out: dict = {"identityfile": []}
    for line in done.stdout.splitlines():
        key, _, value = line.partition(" ")
        if key == "identityfile":
            out["identityfile"].append(value)
        elif key in ("hostname", "user", "port", "proxycommand", "proxyjump"):
            out[key] = value
    return out


def ddpcheck_view(config: SSHConfig, host: str, local: LocalFacts) -> Optional[dict]:
    try:
        found = config.resolve(host, local)
    except ConfigError:
        return None
    return {"hostname": found.hostname, "user": found.user, "port": str(found.port),
            "identityfile": list(found.identity_files), "proxycommand": found.proxy_command,
            "proxyjump": found.proxy_jump}


DEFAULT_KEYS = {"~/.ssh/id_rsa", "~/.ssh/id_ecdsa", "~/.ssh/id_ecdsa_sk", "~/.ssh/id_ed25519",
                "~/.ssh/id_ed25519_sk", "~/.ssh/id_xmss", "~/.ssh/id_dsa"}


def assert_agrees(text: str, path: str, host: str) -> None:
    local = LocalFacts.here()
    config = SSHConfig([(path, True)])
    ours = ddpcheck_view(config, host, local)
    theirs = ssh_g(path, host)
    context = f"host {host!r}, config:\n{text}"
    if theirs is None:
        assert ours is None, f"ssh refuses, ddpcheck accepts: {context}"
        return
    assert ours is not None, f"ssh accepts, ddpcheck refuses: {context}"
    for key in ("hostname", "user", "port", "proxycommand"):
        assert ours[key] == theirs.get(key), f"{key}: {context}"
    if ours["identityfile"]:
        assert ours["identityfile"] == theirs["identityfile"], context
    else:
        assert set(theirs["identityfile"]) <= DEFAULT_KEYS, context
    expected_jump = theirs.get("proxyjump")
    if expected_jump is None or expected_jump == "none":
        assert ours["proxyjump"] is None, context
    else:
        assert ours["proxyjump"] is not None, context
        assert parse_proxy_jump(ours["proxyjump"]) == parse_proxy_jump(expected_jump), context


@needs_ssh
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=ssh_configs())
def test_generated_configs_resolve_as_ssh_G(text: str, tmp_path_factory) -> None:
    path = str(tmp_path_factory.mktemp("sshcfg") / "config")
    with open(path, "w") as handle:
        handle.write(text)
    for host in QUERIES:
        assert_agrees(text, path, host)


@pytest.mark.parametrize("text,host", [
    ("Host node1\n  User alice # admin\n  Port 2222 # ssh\n", "node1"),
    ("Host node[1-2]\n  User literal\nHost node1\n  User class\n", "node1"),
    ("Host node[1-2]\n  User literal\n", "node[1-2]"),
    ("Match host NODE1\n  User upper\n", "node1"),
    ("Match host node1\n  User lower\n", "Node1"),
    ("Host Node1\n  User case\n", "node1"),
    ("Host n1\n  Port ssh\n", "n1"),
    ("Host n1\n  ProxyCommand none\nHost *\n  ProxyJump bastion\n", "n1"),
    ("Host n1\n  ProxyJump none\n  ProxyCommand nc %h %p\n", "n1"),
    ("Host *\n  HostName %h.ib\nMatch host *.ib\n  User ib\n", "gpu7"),
    ("Host gpu*\n  HostName Real-%h\n  IdentityFile ~/k/%h\n", "GPU7"),
    ("Match host x all\n  User y\n", "x"),
    ("Match all host x\n  User y\n", "x"),
    ("User a b\n", "x"),
    ("Port 0\n", "x"),
    ("HostName %p\n", "x"),
    ("Match final\n  User fin\nHost *\n  HostName A.B\n", "x"),
    ("Match canonical\n  User can\n", "x"),
])
@needs_ssh
def test_issue_cases_resolve_as_ssh_G(text: str, host: str, tmp_path) -> None:
    path = tmp_path / "config"
    path.write_text(text)
    assert_agrees(text, str(path), host)


def _ssh_v_identities(path: str, host: str) -> list[str]:
    """The identity files ssh tries, tokens expanded, from ``ssh -v`` (no connection: the
    ProxyCommand ``true`` ends it after the keys are loaded)."""
    done = subprocess.run([SSH, "-v", "-F", path, "-o", "ProxyCommand=true", "-o",
                           "BatchMode=yes", host], capture_output=True, text=True, timeout=30,
                          stdin=subprocess.DEVNULL)
    files = []
    for line in done.stderr.splitlines():
        if line.startswith("debug1: identity file "):
            name = line[len("debug1: identity file "):].rsplit(" type ", 1)[0]
            if not (files and name == files[-1] + "-cert"):
                files.append(name)
    return files


TOKENS = ["%h", "%p", "%n", "%r", "%u", "%l", "%L", "%d", "%%", "%i", "%k", "${HOME}", "~/"]


@needs_ssh
@settings(max_examples=40, deadline=None)
@given(tokens=st.lists(st.sampled_from(TOKENS), min_size=1, max_size=4),
       hostname=st.sampled_from([None, "Real-%h", "10.0.0.1", "x.Example"]),
       port=st.sampled_from([None, "2222", "ssh"]),
       user=st.sampled_from([None, "alice"]),
       host=st.sampled_from(["node1", "Node1", "gpu7"]))
def test_identity_file_tokens_as_ssh_expands_them(tokens, hostname, port, user, host,
                                                  tmp_path_factory) -> None:
    """%h is the host after HostName (lower-cased), %n the name typed, %p after Port..."""
    identity = "".join(tokens)
    if not identity.startswith(("/", "~")):
        identity = "/keys/" + identity
    lines = ["Host *"]
    lines += [f"  HostName {hostname}"] if hostname else []
    lines += [f"  Port {port}"] if port else []
    lines += [f"  User {user}"] if user else []
    lines += [f"  IdentityFile {identity}", "  IdentityFile /keys/second_%h"]
    text = "\n".join(lines) + "\n"
    path = str(tmp_path_factory.mktemp("tok") / "config")
    with open(path, "w") as handle:
        handle.write(text)
    local = LocalFacts.here()
    found = SSHConfig([(path, True)]).resolve(host, local)
    assert identity_paths(found, local) == _ssh_v_identities(path, host), text


@needs_ssh
def test_include_globs_and_relative_paths_as_ssh(tmp_path, monkeypatch) -> None:
    """Include: globs (sorted), a path relative to ~/.ssh for a user's config, an Include
    inside a Host block that does not match (its Host lines never match), first value wins."""
    home = tmp_path / "home"
    (home / ".ssh" / "conf.d").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    (home / ".ssh" / "conf.d" / "10-a.conf").write_text("Host node*\n  User from-a\n")
    (home / ".ssh" / "conf.d" / "20-b.conf").write_text("Host *\n  User from-b\n  Port 2201\n")
    (home / ".ssh" / "other.conf").write_text("Host gpu*\n  HostName %h.other\n")
    (home / ".ssh" / "skipped.conf").write_text("Host *\n  Port 2999\n")
    main = home / ".ssh" / "config"
    main.write_text("Host nomatch\n  Include skipped.conf\nHost *\n"
                    "Include conf.d/*.conf other.conf ~/.ssh/none-*.conf\n"
                    "Host bastion\n  Port 2022\n")
    for host in ("node1", "gpu7", "bastion", "login"):
        assert_agrees(main.read_text(), str(main), host)
    config, _ = read_ssh_config(str(main))
    assert config.resolve("node1", LocalFacts.here()).user == "from-a"
    assert config.resolve("gpu7", LocalFacts.here()).hostname == "gpu7.other"
