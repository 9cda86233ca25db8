"""Config: hosts.yaml text -> a validated ``ClusterSpec`` (first stage of the flow).

hosts.yaml -> **config** -> plan -> transport -> collect -> analyze -> report. Parsing is pure
(``parse_hosts_yaml``); only ``load_hosts_file`` reads a file. The YAML is composed into nodes
(not loaded into Python objects) so that every ``ConfigError`` names the file, the 1-based line
and the dotted key, e.g. ``hosts.yaml:7: hosts[1].slots: must be an integer >= 1, got 0``.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping, NoReturn, Optional, Union

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from ..model.errors import ConfigError, ConfigErrors
from .hostlist import expand_hostlist
from .sshconfig import NO_SSH_CONFIG  # ssh.config: none -> do not read any ssh_config
from ..model.spec import (DEFAULT_CONNECT_TIMEOUT, DEFAULT_FANOUT, DEFAULT_JUMP_HANDSHAKES,
                   DEFAULT_PYTHON, DEFAULT_RENDEZVOUS_PORT, DEFAULT_SSH_PORT, DEFAULT_WORKDIR,
                   SSH_FIELDS, Backend, ClusterSpec, HostKeyPolicy, HostSpec, SSHSpec)

LOCAL_SOURCE = "<embedded: this machine>"

TOP_KEYS = ("defaults", "ssh", "rendezvous", "backend", "hosts")
DEFAULT_KEYS = ("user", "port", "identity_file", "python", "env", "workdir", "slots",
                "proxy_jump")
HOST_KEYS = ("name", "address") + DEFAULT_KEYS
SSH_KEYS = ("known_hosts", "host_key_policy", "connect_timeout", "fanout", "config",
            "jump_handshakes")
# --config FILE (defaults for --hostfile, --slurm, -w): everything but the hosts.
CONFIG_KEYS = ("defaults", "ssh", "rendezvous", "backend")
RENDEZVOUS_KEYS = ("master", "port")

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TAG = "tag:yaml.org,2002:"
_STR, _INT, _FLOAT, _BOOL, _NULL = (_TAG + t for t in ("str", "int", "float", "bool", "null"))
_MERGE = _TAG + "merge"


class _Invalid(Exception):
    """A validation error before the file name is known; ``parse_hosts_yaml`` adds it."""

    def __init__(self, message: str, line: Optional[int], key: Optional[str]) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.key = key


_BAD = object()  # what a bad value reads as: left out, its problem kept


class _Problems:
    """The problems of one file found so far: reading goes on past a bad key or host, so that
    one run names every problem in the file, not the first only."""

    def __init__(self) -> None:
        self.found: list[_Invalid] = []

    def attempt(self, read: Callable[[], Any], default: Any = None) -> Any:
        """``read()``, or ``default`` with its problem kept."""
        try:
            return read()
        except _Invalid as exc:
            self.found.append(exc)
            return default

    def raise_for(self, source: str) -> None:
        """One ``ConfigError`` for one problem; ``ConfigErrors`` (a line each, in line order)
        for several; nothing when none was found."""
        errors = [ConfigError(p.message, source=source, line=p.line, key=p.key)
                  for p in sorted(self.found, key=lambda p: p.line or 0)]
        if len(errors) == 1:
            raise errors[0]
        if errors:
            raise ConfigErrors(errors)


# ----------------------------------------------------------------------------- public API


def load_hosts_file(path: Union[str, "os.PathLike[str]"]) -> ClusterSpec:
    """Read and parse a hosts.yaml; an unreadable file is a ``ConfigError`` naming it."""
    source = os.fspath(path)
    return parse_hosts_yaml(_read_text(source, "a hosts.yaml file"), source)


def _read_text(source: str, what: str = "a file") -> str:
    """A text file's content; any problem is a ``ConfigError`` naming the file."""
    try:
        with open(source, encoding="utf-8") as handle:
            return handle.read()
    except FileNotFoundError:
        raise ConfigError("no such file", source=source) from None
    except IsADirectoryError:
        raise ConfigError(f"is a directory, not {what}", source=source) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text ({exc.reason} at byte {exc.start})",
                          source=source) from None
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror or exc}", source=source) from None


def parse_hosts_yaml(text: str, source: str) -> ClusterSpec:
    """hosts.yaml text -> ``ClusterSpec``; a problem is a ``ConfigError`` (file, line, key),
    several are ``ConfigErrors``: every one the file has, a line each."""
    problems = _Problems()
    spec = problems.attempt(lambda: _cluster(_compose(text), source, problems))
    problems.raise_for(source)
    return spec


@dataclass(frozen=True)
class ConfigDefaults:
    """What a ``--config FILE`` gives an inventory (--hostfile, --slurm, -w): a hosts.yaml
    without its hosts. ``host_fields`` are the validated keys of its ``defaults``."""

    host_fields: Mapping[str, Any]
    ssh: SSHSpec = SSHSpec()
    master: str = ""
    master_line: Optional[int] = None
    rendezvous_port: int = DEFAULT_RENDEZVOUS_PORT
    backend: Backend = Backend.AUTO
    source: str = ""


def load_config_defaults(path: Union[str, "os.PathLike[str]"]) -> ConfigDefaults:
    """Read and parse a ``--config`` file; an unreadable file is a ``ConfigError`` naming it."""
    source = os.fspath(path)
    return parse_config_defaults(_read_text(source), source)


def parse_config_defaults(text: str, source: str) -> ConfigDefaults:
    """``--config`` text -> ``ConfigDefaults``. A ``hosts`` key is an error: with an inventory
    option the hosts come from the inventory, and silently ignoring a list would mislead."""
    problems = _Problems()
    try:
        root = _compose(text)
        if root is None or (isinstance(root, ScalarNode) and root.tag == _NULL):
            return ConfigDefaults(host_fields={}, source=source)
        if not isinstance(root, MappingNode):
            _fail(root, None, f"the top level must be a mapping with keys "
                              f"{', '.join(CONFIG_KEYS)}; got {_describe(root)}")
        for key_node, _ in _pairs(root, "", problems=problems):
            if key_node.value == "hosts":
                problems.attempt(lambda: _fail(
                    key_node, "hosts", "a --config file gives only defaults, ssh, rendezvous "
                                       "and backend; the hosts come from --hostfile, --slurm "
                                       "or -w: remove 'hosts' (or pass this file as HOSTS "
                                       "instead)"))
        top = _mapping(root, "", CONFIG_KEYS + ("hosts",), problems)
        top.pop("hosts", None)
        fields, ssh, rendezvous, backend = _settings(top, problems)
    except _Invalid as exc:
        problems.found.append(exc)
    problems.raise_for(source)
    master_line = _line(rendezvous.master_node) if rendezvous.master_node is not None else None
    return ConfigDefaults(host_fields=fields, ssh=ssh, master=rendezvous.master,
                          master_line=master_line, rendezvous_port=rendezvous.port,
                          backend=backend, source=source)


def host_from_fields(name: str, fields: Mapping[str, Any], line: int,
                     address: Optional[str] = None) -> HostSpec:
    """A HostSpec from validated host keys (as ``ConfigDefaults.host_fields`` holds them)."""
    return _host(name, address, fields, line)


def local_cluster_spec(python: str,
                       rendezvous_port: int = DEFAULT_RENDEZVOUS_PORT) -> ClusterSpec:
    """The embedded default without a hosts.yaml: this machine only, no SSH."""
    host = HostSpec(name="localhost", address="127.0.0.1", python=python, slots=None)
    return ClusterSpec(hosts=(host,), source=LOCAL_SOURCE, local=True,
                       rendezvous_port=rendezvous_port)


# ----------------------------------------------------------------------------- YAML nodes


def _compose(text: str) -> Optional[Node]:
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        message = exc.problem or str(exc)
        if exc.context:
            context_line = f" (line {exc.context_mark.line + 1})" if exc.context_mark else ""
            message = f"{exc.context}{context_line}: {message}"
        raise _Invalid(f"invalid YAML: {message}", line, None) from None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1 if isinstance(text, str) else None
        raise _Invalid(f"invalid YAML: {exc.reason} (character {exc.character!r})",
                       line, None) from None
    except yaml.YAMLError as exc:
        raise _Invalid(f"invalid YAML: {exc}", None, None) from None
    except RecursionError:
        raise _Invalid("invalid YAML: nested too deeply", None, None) from None


def _line(node: Node) -> int:
    return node.start_mark.line + 1


def _fail(node: Node, key: Optional[str], message: str) -> NoReturn:
    raise _Invalid(message, _line(node), key or None)


def _describe(node: Node) -> str:
    """How a value reads in an error: ``0``, ``'four'``, ``a list``."""
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    if node.tag == _NULL:
        return "nothing (null)"
    if node.tag == _STR:
        return repr(node.value)
    if node.tag in (_INT, _FLOAT, _BOOL):
        return node.value
    if node.tag.startswith(_TAG):  # a value with an explicit core tag such as !!binary
        return f"{node.value!r} ({node.tag.replace(_TAG, '!!')})"
    return f"{node.value!r} ({node.tag})"


def _suggest(word: str, choices: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _pairs(node: MappingNode, key: str, seen: frozenset[int] = frozenset(),
           problems: Optional[_Problems] = None) -> list[tuple[ScalarNode, Node]]:
    """The mapping's (key, value) nodes, YAML merge keys (``<<: *anchor``) resolved.

    Explicit keys win over merged ones; a key written twice is an error (PyYAML allows it;
    kept in ``problems`` when given, the first one read on)."""
    if id(node) in seen:
        _fail(node, key, "a merge (<<) refers to itself")
    own: list[tuple[ScalarNode, Node]] = []
    merged: list[tuple[ScalarNode, Node]] = []
    written: dict[str, ScalarNode] = {}
    for key_node, value_node in node.value:
        if key_node.tag == _MERGE:
            merged.extend(_merged_pairs(value_node, key, seen | {id(node)}))
            continue
        if not isinstance(key_node, ScalarNode):
            _fail(key_node, key, f"keys must be plain strings, got {_describe(key_node)}")
        name = key_node.value
        if name in written:
            duplicate = _Invalid(f"duplicate key (first at line {_line(written[name])})",
                                 _line(key_node), _join(key, name))
            if problems is None:
                raise duplicate
            problems.found.append(duplicate)
            continue
        written[name] = key_node
        own.append((key_node, value_node))
    for key_node, value_node in merged:
        if key_node.value not in written:
            written[key_node.value] = key_node
            own.append((key_node, value_node))
    return own


def _merged_pairs(value: Node, key: str, seen: frozenset[int]) -> list[tuple[ScalarNode, Node]]:
    if isinstance(value, MappingNode):
        return _pairs(value, key, seen)
    if isinstance(value, SequenceNode) and all(isinstance(v, MappingNode) for v in value.value):
        pairs: list[tuple[ScalarNode, Node]] = []
        for source in value.value:  # earlier mappings win, so they come first
            pairs.extend(_pairs(source, key, seen))
        return pairs
    _fail(value, key, f"a merge (<<) needs a mapping or a list of mappings, got {_describe(value)}")


def _mapping(node: Node, key: str, allowed: tuple[str, ...], problems: _Problems,
             null_is_empty: bool = True) -> dict[str, tuple[ScalarNode, Node]]:
    """A mapping with only ``allowed`` keys -> {key: (key node, value node)}; an unknown or
    repeated key is kept in ``problems`` and left out."""
    if null_is_empty and isinstance(node, ScalarNode) and node.tag == _NULL:
        return {}
    if not isinstance(node, MappingNode):
        _fail(node, key, f"must be a mapping, got {_describe(node)}")
    result = {}
    for key_node, value_node in _pairs(node, key, problems=problems):
        name = key_node.value
        if name not in allowed:
            where = f"in {key}" if key else "at the top level"
            problems.attempt(lambda: _fail(key_node, _join(key, name),
                                           f"unknown key {where}{_suggest(name, allowed)} "
                                           f"(known: {', '.join(allowed)})"))
            continue
        result[name] = (key_node, value_node)
    return result


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


# ----------------------------------------------------------------------------- scalar values


def _construct(node: ScalarNode, key: str) -> Any:
    try:
        return yaml.constructor.SafeConstructor().construct_object(node)
    except Exception:  # noqa: BLE001 - e.g. '!!int abc' raises ValueError inside PyYAML
        tag = node.tag.replace(_TAG, "!!")
        _fail(node, key, f"cannot read {node.value!r} as {tag}")


def _string(node: Node, key: str, what: str = "a string") -> str:
    if not isinstance(node, ScalarNode) or node.tag != _STR:
        quote = isinstance(node, ScalarNode) and node.tag in (_INT, _FLOAT, _BOOL)
        hint = " (quote it to make it a string)" if quote else ""
        _fail(node, key, f"must be {what}, got {_describe(node)}{hint}")
    if "\0" in node.value:  # no command line can carry it
        _fail(node, key, "must not contain a NUL character (\\0)")
    return node.value


def _nonempty(node: Node, key: str) -> str:
    value = _string(node, key, "a non-empty string")
    if not value.strip():
        _fail(node, key, "must be a non-empty string, got an empty one")
    return value


def _integer(node: Node, key: str, low: int, high: Optional[int] = None) -> int:
    what = f"an integer from {low} to {high}" if high is not None else f"an integer >= {low}"
    if not isinstance(node, ScalarNode) or node.tag != _INT:
        _fail(node, key, f"must be {what}, got {_describe(node)}")
    value = _construct(node, key)
    if not isinstance(value, int) or isinstance(value, bool):
        _fail(node, key, f"must be {what}, got {_describe(node)}")
    if value < low or (high is not None and value > high):
        _fail(node, key, f"must be {what}, got {node.value}")
    return value


def _positive_number(node: Node, key: str) -> float:
    what = "a number > 0"
    if not isinstance(node, ScalarNode) or node.tag not in (_INT, _FLOAT):
        _fail(node, key, f"must be {what}, got {_describe(node)}")
    value = _construct(node, key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        _fail(node, key, f"must be {what}, got {_describe(node)}")
    if not math.isfinite(value) or value <= 0:
        _fail(node, key, f"must be {what}, got {node.value}")
    return float(value)


def _choice(node: Node, key: str, choices: tuple[str, ...]) -> str:
    what = " | ".join(choices)
    if not isinstance(node, ScalarNode) or node.tag != _STR:
        _fail(node, key, f"must be one of {what}, got {_describe(node)}")
    value = node.value.strip().lower()
    if value not in choices:
        _fail(node, key, f"must be one of {what}, got {node.value!r}{_suggest(value, choices)}")
    return value


def _port(node: Node, key: str) -> int:
    return _integer(node, key, 1, 65535)


def _path(node: Node, key: str) -> str:
    return os.path.expanduser(_nonempty(node, key))


def _workdir(node: Node, key: str) -> str:
    value = _nonempty(node, key)
    if not value.startswith("/"):
        _fail(node, key, f"must be an absolute path (it is used on every host), got {value!r}")
    return value


def _address(node: Node, key: str) -> str:
    value = _nonempty(node, key)
    if value.startswith("-") or any(char.isspace() for char in value):
        _fail(node, key, f"not a host address: {value!r}")
    return value


def _user(node: Node, key: str) -> str:
    value = _nonempty(node, key)
    if value.startswith("-") or "@" in value or any(char.isspace() for char in value):
        _fail(node, key, f"not a user name: {value!r}")
    return value


def _env(node: Node, key: str) -> dict[str, str]:
    """``{NAME: scalar}``; values are exported exactly as written (``1.0`` stays ``1.0``)."""
    env: dict[str, str] = {}
    if isinstance(node, ScalarNode) and node.tag == _NULL:
        return env
    if not isinstance(node, MappingNode):
        _fail(node, key, f"must be a mapping of variable names to values, got {_describe(node)}")
    for key_node, value_node in _pairs(node, key):
        name = key_node.value
        if not _ENV_NAME.fullmatch(name):
            _fail(key_node, _join(key, name),
                  "not an environment variable name (letters, digits, _; not starting with a "
                  "digit)")
        if not isinstance(value_node, ScalarNode):
            _fail(value_node, _join(key, name),
                  f"must be a single value, got {_describe(value_node)}")
        if "\0" in value_node.value:
            _fail(value_node, _join(key, name), "must not contain a NUL character (\\0)")
        env[name] = "" if value_node.tag == _NULL else value_node.value
    return env


# Readers of the keys a host (or defaults) may carry, to the HostSpec field they set.
_HOST_FIELDS: Mapping[str, Callable[[Node, str], Any]] = {
    "user": _user,
    "port": _port,
    "identity_file": _path,
    "python": _nonempty,
    "env": _env,
    "workdir": _workdir,
    "slots": lambda node, key: _integer(node, key, 1),
    "proxy_jump": lambda node, key: _proxy_jump(node, key),
}


def _proxy_jump(node: Node, key: str) -> str:
    """OpenSSH ProxyJump text, checked here so a typo fails before anything runs."""
    from .sshconfig import parse_proxy_jump

    value = _nonempty(node, key).strip()
    try:
        parse_proxy_jump(value)
    except ValueError as exc:
        _fail(node, key, str(exc))
    return value


# ----------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class _Rendezvous:
    master: str = ""
    master_node: Optional[Node] = None
    port: int = DEFAULT_RENDEZVOUS_PORT


def _settings(top: Mapping[str, Any], problems: _Problems
              ) -> tuple[dict[str, Any], SSHSpec, _Rendezvous, Backend]:
    """The sections hosts.yaml and ``--config`` share (defaults, ssh, rendezvous, backend),
    each read on past the problems of the others; an absent section is its default."""
    defaults = problems.attempt(lambda: _host_fields(top["defaults"][1], "defaults",
                                                     DEFAULT_KEYS, problems), {}) \
        if "defaults" in top else {}
    ssh = problems.attempt(lambda: _ssh(top["ssh"][1], problems), SSHSpec()) \
        if "ssh" in top else SSHSpec()
    rendezvous = problems.attempt(lambda: _rendezvous(top["rendezvous"][1], problems),
                                  _Rendezvous()) if "rendezvous" in top else _Rendezvous()
    backend = Backend(problems.attempt(lambda: _choice(
        top["backend"][1], "backend", tuple(b.value for b in Backend)), "auto")) \
        if "backend" in top else Backend.AUTO
    return defaults, ssh, rendezvous, backend


def _cluster(root: Optional[Node], source: str, problems: _Problems) -> ClusterSpec:
    """The whole file; each section, key and host read on past the problems of the others
    (kept in ``problems``), so that one run names them all."""
    if root is None or (isinstance(root, ScalarNode) and root.tag == _NULL):
        raise _Invalid("the file is empty; at least 'hosts' is required", 1, "hosts")
    if not isinstance(root, MappingNode):
        _fail(root, None, f"the top level must be a mapping with keys {', '.join(TOP_KEYS)}; "
                          f"got {_describe(root)}")
    top = _mapping(root, "", TOP_KEYS, problems)
    defaults, ssh, rendezvous, backend = _settings(top, problems)
    if "hosts" not in top:
        _fail(root, "hosts", "required: the list of hosts to check")
    before = len(problems.found)
    hosts = _hosts(top["hosts"][1], defaults, problems)
    names = tuple(host.name for host in hosts)
    # a bad host entry may be the master's: then "not one of the hosts" would mislead
    hosts_read = len(problems.found) == before
    if rendezvous.master_node is not None and rendezvous.master not in names and hosts_read:
        _fail(rendezvous.master_node, "rendezvous.master",
              f"{rendezvous.master!r} is not one of the hosts{_suggest(rendezvous.master, names)}")
    return ClusterSpec(hosts=hosts, ssh=ssh, master=rendezvous.master,
                       rendezvous_port=rendezvous.port, backend=backend, source=source)


def _host_fields(node: Node, key: str, allowed: tuple[str, ...],
                 problems: _Problems) -> dict[str, Any]:
    """The HostSpec fields a mapping sets (the others stay absent), validated."""
    return _fields_of(_mapping(node, key, allowed, problems), key, problems)


def _fields_of(keys: Mapping[str, tuple[ScalarNode, Node]], key: str,
               problems: _Problems) -> dict[str, Any]:
    """The HostSpec fields of a mapping's keys; a bad value is kept in ``problems``, left out."""
    fields = {}
    for name, (_, value_node) in keys.items():
        if name in _HOST_FIELDS:
            value = problems.attempt(lambda: _HOST_FIELDS[name](value_node, _join(key, name)),
                                     _BAD)
            if value is not _BAD:
                fields[name] = value
    return fields


def _ssh(node: Node, problems: _Problems) -> SSHSpec:
    keys = _mapping(node, "ssh", SSH_KEYS, problems)

    def read(name: str, reader: Callable[[Node, str], Any], default: Any) -> Any:
        return problems.attempt(lambda: reader(keys[name][1], f"ssh.{name}"), default) \
            if name in keys else default

    known_hosts = read("known_hosts", _path, None)
    policy = HostKeyPolicy(read("host_key_policy", lambda node, key: _choice(
        node, key, tuple(p.value for p in HostKeyPolicy)), HostKeyPolicy.REJECT.value))
    timeout = read("connect_timeout", _positive_number, DEFAULT_CONNECT_TIMEOUT)
    fanout = read("fanout", lambda node, key: _integer(node, key, 1), DEFAULT_FANOUT)
    config_file = read("config", lambda node, key: _nonempty(node, key).strip(), None)
    if config_file is not None:
        config_file = NO_SSH_CONFIG if config_file.lower() == NO_SSH_CONFIG \
            else os.path.expanduser(config_file)
    jump_handshakes = read("jump_handshakes", lambda node, key: _integer(node, key, 1),
                           DEFAULT_JUMP_HANDSHAKES)
    return SSHSpec(known_hosts=known_hosts, host_key_policy=policy, connect_timeout=timeout,
                   fanout=fanout, config_file=config_file, jump_handshakes=jump_handshakes)


def _rendezvous(node: Node, problems: _Problems) -> _Rendezvous:
    keys = _mapping(node, "rendezvous", RENDEZVOUS_KEYS, problems)
    port = problems.attempt(lambda: _port(keys["port"][1], "rendezvous.port"),
                            DEFAULT_RENDEZVOUS_PORT) if "port" in keys \
        else DEFAULT_RENDEZVOUS_PORT
    if "master" not in keys:
        return _Rendezvous(port=port)
    master_node = keys["master"][1]
    master = problems.attempt(lambda: _nonempty(master_node, "rendezvous.master").strip())
    if master is None:
        return _Rendezvous(port=port)
    return _Rendezvous(master, master_node, port)


def _hosts(node: Node, defaults: Mapping[str, Any],
           problems: _Problems) -> tuple[HostSpec, ...]:
    if not isinstance(node, SequenceNode) or not node.value:
        got = "an empty list" if isinstance(node, SequenceNode) else _describe(node)
        _fail(node, "hosts", f"must be a non-empty list of hosts, got {got}")
    hosts: list[HostSpec] = []
    first_line: dict[str, int] = {}
    for index, entry in enumerate(node.value):
        key = f"hosts[{index}]"
        for host in problems.attempt(lambda: _host_entry(entry, key, defaults, problems), []):
            if host.name in first_line:
                problems.attempt(lambda: _fail(entry, key, f"duplicate host {host.name!r} "
                                               f"(first at line {first_line[host.name]})"))
                continue
            first_line[host.name] = host.line
            hosts.append(host)
    return tuple(hosts)


def _host_entry(entry: Node, key: str, defaults: Mapping[str, Any],
                problems: _Problems) -> list[HostSpec]:
    """One item of ``hosts``: a hostlist string, or a mapping with ``name`` and host keys."""
    if isinstance(entry, ScalarNode) and entry.tag == _STR:
        return [_host(name, None, dict(defaults), _line(entry))
                for name in _expand(entry, key)]
    if not isinstance(entry, MappingNode):
        _fail(entry, key, "must be a host name (or hostlist like node[01-04]) or a mapping "
                          f"with 'name', got {_describe(entry)}")
    keys = _mapping(entry, key, HOST_KEYS, problems)
    own = _fields_of(keys, key, problems)  # read before the name, whose problem ends the entry
    if "name" not in keys:
        _fail(entry, f"{key}.name", "required: every host mapping needs a name")
    names = _expand(keys["name"][1], f"{key}.name")
    address = None
    if "address" in keys:
        address_node = keys["address"][1]
        address = problems.attempt(lambda: _address(address_node, f"{key}.address"))
        if len(names) != 1:
            _fail(address_node, f"{key}.address",
                  f"an address needs an entry with exactly one host; this name expands to "
                  f"{len(names)} hosts")
    fields = _merge_fields(defaults, own)
    return [_host(name, address, fields, _line(entry)) for name in names]


def _expand(node: Node, key: str) -> list[str]:
    text = _string(node, key, "a host name or hostlist")
    try:
        return expand_hostlist(text)
    except ValueError as exc:
        _fail(node, key, f"bad hostlist: {exc}")


def _merge_fields(defaults: Mapping[str, Any], own: Mapping[str, Any]) -> dict[str, Any]:
    """A host's keys override defaults, except ``env``, which merges per variable."""
    fields = {**defaults, **own}
    if "env" in defaults and "env" in own:
        fields["env"] = {**defaults["env"], **own["env"]}
    return fields


def _host(name: str, address: Optional[str], fields: Mapping[str, Any], line: int) -> HostSpec:
    return HostSpec(
        name=name,
        address=address or name,
        user=fields.get("user"),
        port=fields.get("port", DEFAULT_SSH_PORT),
        identity_file=fields.get("identity_file"),
        python=fields.get("python", DEFAULT_PYTHON),
        env=dict(fields.get("env", {})),
        workdir=fields.get("workdir", DEFAULT_WORKDIR),
        slots=fields.get("slots"),
        line=line,
        proxy_jump=fields.get("proxy_jump"),
        given=frozenset(k for k in SSH_FIELDS if k in fields) | (
            frozenset({"address"}) if address else frozenset()),
    )
