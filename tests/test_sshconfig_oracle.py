"""ssh_config resolution against OpenSSH itself: generated configs resolved by ddpcheck and by
``ssh -G -F FILE HOST`` (IdentityFile tokens by ``ssh -v``, which prints the files it tries)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ddpcheck.config.sshconfig import (LocalFacts, SSHConfig, identity_paths, parse_proxy_jump,
                                       proxy_command_line, read_ssh_config)
from ddpcheck.model.errors import ConfigError

SSH = shutil.which("ssh")
needs_ssh = pytest.mark.skipif(SSH is None and os.environ.get("CI") != "true",
                               reason="openssh-client is not installed")

QUERIES = ["node1", "Node1", "node[1-2]", "gpu7", "bastion", "10.1.2.3", "n1.ib"]
PATTERNS = ["node1", "Node1", "node*", "NODE*", "node[1-2]", "n?de1", "*", "gpu*", "!node1",
            "!gpu*", "bastion", "*.ib", "10.1.2.*", "?", "real-*", "real.example", "10.9.8.7"]
MATCH_HOST = ["node1", "NODE1", "node*", "!node1", "gpu*,bastion", "real-*", "*.example",
              "!gpu7,*", "10.1.2.3"]
VALUES = {
    "HostName": ["real-%h", "Real.Example", "10.9.8.7", "%h.ib", "%%h", '"quoted host"'],
    "User": ["alice", "bob # admin", '"carol"', "dave#x", "e\\'ve"],
    "Port": ["2222", "ssh", "22 # comment", "2200", "http"],
    "IdentityFile": ["~/.ssh/id_%h", "/k/%n_%p", "/k/%r@%h", '"/k/with space"', "/k/a # c"],
    "ProxyJump": ["bastion", "alice@jump:2200", "a,b", "none", "u@[10.0.0.1]:22", "j1,j2,j3",
                  "alice@corp.example@bastion", "a@b@c:2222,d", "ssh://u@gw:2200"],
    "ProxyCommand": ["nc %h %p", "none", "ssh -W %h:%p bastion", "nc %h %p # c", "nc %k %p"],
    # Without CanonicalDomains nothing is looked up: these need no name resolution.
    "CanonicalizeHostname": ["yes", "no", "always", "true", "maybe"],
    "HostKeyAlias": ["Alias1", "%h", "k-%n"],
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
                                     "!host", "host=", "final", "!final", "canonical"]))
        if attr in ("final", "!final", "canonical"):
            parts.append(attr)
        elif attr == "exec":
            parts.append(draw(st.sampled_from(['exec true', 'exec false',
                                               'exec "test %h = node1"',
                                               'exec "test %n = Node1"',
                                               'exec "test %k = node1"'])))
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
        elif key in ("hostname", "user", "port", "proxycommand", "proxyjump", "hostkeyalias"):
            out[key] = value
    return out


def ddpcheck_view(config: SSHConfig, host: str, local: LocalFacts) -> Optional[dict]:
    try:
        found = config.resolve(host, local)
    except ConfigError:
        return None
    return {"hostname": found.hostname, "user": found.user, "port": str(found.port),
            "identityfile": list(found.identity_files), "proxycommand": found.proxy_command,
            "proxyjump": found.proxy_jump, "hostkeyalias": found.host_key_alias}


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
    for key in ("hostname", "user", "port", "proxycommand", "hostkeyalias"):
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
    # a negated "Match final" also asks for the second pass, where Host matches the lowered name
    ("Host node1\n  HostKeyAlias Alias1\nMatch !final\n", "Node1"),
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
    # The second pass matches Host against the final name (the issue's example).
    ("Host x\n  HostName real\nHost real\n  User bob\nMatch final\n", "x"),
    ("Host x\n  HostName Real.%h\nHost real.x\n  User r\n  Port 2200\nMatch final\n", "x"),
    ("Host x\n  HostName real\n  CanonicalizeHostname yes\nHost real\n  User canon\n", "x"),
    ("Host x\n  CanonicalizeHostname yes\nHost X\n  User up\nHost x\n  User low\n", "X"),
    ("CanonicalizeHostname yes\nProxyJump gw\nHost x\n  User y\n", "x"),
    ("CanonicalizeHostname always\nProxyCommand nc %h %p\nHost x\n  User y\n", "x"),
    ("Host x\n  HostName %%h\nMatch final\n", "x"),
    ("Host *\n  HostName 10.1\nHost 10.0.0.1\n  User numeric\nMatch final\n", "x"),
    ("Host *\n  HostName 123\n", "x"),
    ("CanonicalizeHostname maybe\n", "x"),
    ("CanonicalizeMaxDots two\n", "x"),
    ("CanonicalDomains a..b\n", "x"),
    ("CanonicalDomains none example.org\n", "x"),
    ("CanonicalizePermittedCNAMEs nocolon\n", "x"),
    ("CanonicalizeFallbackLocal perhaps\n", "x"),
    # A ProxyJump user may hold an "@": the last one splits.
    ("Host x\n  ProxyJump alice@corp.example@bastion:2222,u@b2\n", "x"),
    ("Host x\n  ProxyJump ssh://alice@corp@bastion\n", "x"),
    # %k is HostKeyAlias (lower-cased) when there is one.
    ("Host x\n  HostKeyAlias MyAlias\n  ProxyCommand nc %k %p\n", "x"),
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
       alias=st.sampled_from([None, "MyAlias"]),
       host=st.sampled_from(["node1", "Node1", "gpu7"]))
def test_identity_file_tokens_as_ssh_expands_them(tokens, hostname, port, user, alias, host,
                                                  tmp_path_factory) -> None:
    """%h is the host after HostName (lower-cased), %n the name typed, %p after Port, %k the
    HostKeyAlias (lower-cased) or the name typed..."""
    identity = "".join(tokens)
    if not identity.startswith(("/", "~")):
        identity = "/keys/" + identity
    lines = ["Host *"]
    lines += [f"  HostName {hostname}"] if hostname else []
    lines += [f"  Port {port}"] if port else []
    lines += [f"  User {user}"] if user else []
    lines += [f"  HostKeyAlias {alias}"] if alias else []
    lines += [f"  IdentityFile {identity}", "  IdentityFile /keys/second_%h"]
    text = "\n".join(lines) + "\n"
    path = str(tmp_path_factory.mktemp("tok") / "config")
    with open(path, "w") as handle:
        handle.write(text)
    local = LocalFacts.here()
    found = SSHConfig([(path, True)]).resolve(host, local)
    assert identity_paths(found, local) == _ssh_v_identities(path, host), text


def _ssh_v_proxy_command(path: str, host: str) -> str:
    """The ProxyCommand ssh runs, tokens expanded (``ssh -v``; the command fails at once)."""
    done = subprocess.run([SSH, "-v", "-F", path, "-o", "BatchMode=yes", host],
                          capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    prefix = "debug1: Executing proxy command: exec "
    return next(line[len(prefix):] for line in done.stderr.splitlines()
                if line.startswith(prefix))


@needs_ssh
@pytest.mark.parametrize("alias", [None, "MyAlias", "gw.Example"])
@pytest.mark.parametrize("host", ["node1", "Node1"])
def test_proxy_command_k_is_the_host_key_alias(alias, host, tmp_path) -> None:
    """ProxyCommand %k: HostKeyAlias lower-cased, else the name typed (sshconnect.c)."""
    path = tmp_path / "config"
    path.write_text("Host *\n  HostName Real-%h\n  ProxyCommand false %k %h %p %n %r\n"
                    + (f"  HostKeyAlias {alias}\n" if alias else ""))
    found = SSHConfig([(str(path), True)]).resolve(host, LocalFacts.here())
    assert proxy_command_line(found) == _ssh_v_proxy_command(str(path), host)


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


@needs_ssh
def test_include_of_a_directory_and_bad_permissions_as_ssh(tmp_path, monkeypatch) -> None:
    """An Include naming a directory (or a glob that matches one) reads nothing, no error, as
    ssh does; an included file writable by others is refused by both."""
    home = tmp_path / "home"
    (home / ".ssh" / "conf.d" / "sub").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    (home / ".ssh" / "conf.d" / "10-a.conf").write_text("Host node*\n  User from-a\n")
    main = home / ".ssh" / "config"
    main.write_text("Include conf.d\nInclude conf.d/*\nHost *\n  Port 2201\n")
    for host in ("node1", "gpu7"):
        assert_agrees(main.read_text(), str(main), host)
    assert read_ssh_config(str(main))[0].resolve("node1", LocalFacts.here()).user == "from-a"
    loose = home / ".ssh" / "conf.d" / "10-a.conf"
    loose.chmod(0o666)
    assert_agrees(main.read_text(), str(main), "node1")
    with pytest.raises(ConfigError, match="Bad owner or permissions"):
        read_ssh_config(str(main))[0].resolve("node1", LocalFacts.here())


# ---------------------------------------------------------------- canonicalisation, real lookups

# Names as glibc's files backend finds them for ssh: ssh asks for "name.domain." (anchored),
# which that backend matches only when the line has the trailing dot too. The first name of a
# line is its canonical name (the CNAME ssh may follow).
CANONICAL_HOSTS = """\
10.7.0.5 real.corp.example. alias.corp.example. real.corp.example
10.7.0.6 node2.corp.example. node2.lab.example. node2
10.7.0.7 solo
10.7.0.8 web.lab.example. www.lab.example.
10.7.0.9 deep.a.corp.example.
127.0.0.1 localhost
"""
CANONICAL_QUERIES = ["alias", "node2", "Node2", "real", "solo", "nope", "www", "deep.a",
                     "real.corp.example.", "10.7.0.5"]
UNSHARE = shutil.which("unshare")


def in_private_names(tmp: Path, argv: list[str]) -> subprocess.CompletedProcess:
    """``argv`` in a private mount namespace whose /etc/hosts is CANONICAL_HOSTS and whose
    nsswitch.conf says ``hosts: files``: every name lookup is answered from that file, none
    leaves this machine."""
    hosts, nss = tmp / "hosts", tmp / "nsswitch.conf"
    hosts.write_text(CANONICAL_HOSTS)
    nss.write_text("hosts: files\n")
    script = ('mount --bind "$1" /etc/hosts && mount --bind "$2" /etc/nsswitch.conf '
              '&& shift 2 && exec "$@"')
    return subprocess.run([UNSHARE, "-m", "--propagation", "private", "sh", "-c", script, "sh",
                           str(hosts), str(nss), *argv], capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL, cwd=Path(__file__).parent.parent)


def needs_private_names(tmp: Path) -> None:
    if SSH is None or UNSHARE is None or os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("canonicalisation tests need root, unshare and openssh-client")
        pytest.skip("needs root, unshare (util-linux) and openssh-client")


_SSH_G_EACH = 'cfg="$1"; shift; for h in "$@"; do echo "@@@ $h"; ssh -G -F "$cfg" "$h"; ' \
              'echo "@@@ rc $?"; done'
_DDPCHECK_EACH = """
import json, sys
from ddpcheck.config.sshconfig import LocalFacts, SSHConfig
from ddpcheck.model.errors import ConfigError
config, out = SSHConfig([(sys.argv[1], True)]), {}
for host in sys.argv[2:]:
    try:
        found = config.resolve(host, LocalFacts.here())
    except ConfigError:
        out[host] = None
        continue
    out[host] = {"hostname": found.hostname, "user": found.user, "port": str(found.port),
                 "identityfile": list(found.identity_files)}
print(json.dumps(out))
"""


def _ssh_g_each(tmp: Path, config: str, hosts: list[str]) -> dict:
    """``ssh -G``'s hostname, user, port and identity files per host (None: ssh refused)."""
    done = in_private_names(tmp, ["sh", "-c", _SSH_G_EACH, "sh", config, *hosts])
    assert done.returncode == 0, done.stderr
    out: dict = {}
    for block in done.stdout.split("@@@ ")[1:]:
        head, _, body = block.partition("\n")
        if head.startswith("rc "):
            if head != "rc 0":
                out[host] = None
            continue
        host, out[head] = head, {"identityfile": []}
        for line in body.splitlines():
            key, _, value = line.partition(" ")
            if key == "identityfile":
                out[host]["identityfile"].append(value)
            elif key in ("hostname", "user", "port"):
                out[host][key] = value
    return out


@st.composite
def canonical_configs(draw) -> str:
    lines = ["Host *"]
    lines.append("  CanonicalizeHostname "
                 + draw(st.sampled_from(["yes", "yes", "always", "no"])))
    domains = draw(st.lists(st.sampled_from(["corp.example", "lab.example", "Corp.Example.",
                                             "none"]), min_size=0, max_size=3, unique=True))
    if domains:
        lines.append("  CanonicalDomains " + " ".join(domains))
    if draw(st.booleans()):
        lines.append(f"  CanonicalizeMaxDots {draw(st.integers(0, 2))}")
    if draw(st.booleans()):
        lines.append("  CanonicalizeFallbackLocal " + draw(st.sampled_from(["yes", "no"])))
    if draw(st.booleans()):
        lines.append("  CanonicalizePermittedCNAMEs " + draw(st.sampled_from(
            ["*:*.corp.example", "*.corp.example:real.*", "*:*", "none",
             "*.lab.example:*.lab.example,*.corp.example"])))
    if draw(st.integers(0, 4)) == 0:
        lines.append("  ProxyJump gw")
    blocks = [
        "Host real.corp.example\n  User realuser",
        "Host *.lab.example\n  Port 2222",
        "Host node2.*\n  User n2",
        "Host solo\n  User solo",
        "Host alias\n  User typed",
        "Match canonical host *.corp.example\n  IdentityFile /k/%h",
        "Match final originalhost Node2\n  Port 2200",
        "Host deep.a.corp.example\n  User deep",
    ]
    chosen = draw(st.lists(st.sampled_from(blocks), min_size=1, max_size=5, unique=True))
    if draw(st.booleans()):  # the options after the blocks: they still apply (first pass)
        return "\n".join(chosen + lines) + "\n"
    return "\n".join(lines + chosen) + "\n"


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=canonical_configs())
def test_canonicalisation_resolves_as_ssh_G(text: str, tmp_path_factory) -> None:
    """CanonicalizeHostname with CanonicalDomains, CanonicalizeMaxDots,
    CanonicalizeFallbackLocal and CanonicalizePermittedCNAMEs: the name ssh canonicalises to,
    and the second pass's Host and Match blocks on it, compared with ``ssh -G``, both
    resolving names from the same hosts file in a private mount namespace."""
    tmp = tmp_path_factory.mktemp("canon")
    needs_private_names(tmp)
    config = tmp / "config"
    config.write_text(text)
    theirs = _ssh_g_each(tmp, str(config), CANONICAL_QUERIES)
    done = in_private_names(tmp, [sys.executable, "-c", _DDPCHECK_EACH, str(config),
                                  *CANONICAL_QUERIES])
    assert done.returncode == 0, done.stderr
    ours = json.loads(done.stdout)
    for host in CANONICAL_QUERIES:
        context = f"host {host!r}, config:\n{text}"
        if theirs[host] is None:
            assert ours[host] is None, f"ssh refuses, ddpcheck accepts: {context}"
            continue
        assert ours[host] is not None, f"ssh accepts, ddpcheck refuses: {context}"
        for key in ("hostname", "user", "port"):
            assert ours[host][key] == theirs[host][key], f"{key}: {context}"
        if ours[host]["identityfile"]:
            assert ours[host]["identityfile"] == theirs[host]["identityfile"], context
