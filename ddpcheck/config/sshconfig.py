"""ssh_config: fill in what hosts.yaml left out, exactly as OpenSSH's ``ssh NAME`` would
(between config and plan; runs on the machine ddpcheck is started on).

hosts.yaml / inventory -> ClusterSpec -> **apply_ssh_config** -> plan -> transport. For every
host the ssh_config is read the way OpenSSH's readconf.c reads it, for the host's name as
``ssh NAME`` would: ``Host`` (``*``/``?`` wildcards, ``!`` negation, brackets literal) and
``Match`` (``all``, ``host``, ``originalhost``, ``user``, ``localuser``, ``exec``,
``canonical``, ``final``; host matching case-insensitive), ``Include`` (globs; relative paths
under ~/.ssh for the user's config, /etc/ssh for the system's; a directory reads nothing; a file
another user owns or others may write is refused), quoting, ``=``, trailing ``# comments``, and
the first value wins. Then, as ssh.c does, the name becomes final: ``HostName`` (``%h``)
expanded, lower-cased unless an address, an address in its numeric form, and with
``CanonicalizeHostname yes`` (``always``: through a proxy too) the first ``CanonicalDomains``
suffix that resolves (names with more than ``CanonicalizeMaxDots`` dots are left alone; none
resolves: the name as is, or an error with ``CanonicalizeFallbackLocal no``), a CNAME followed
where ``CanonicalizePermittedCNAMEs`` allows. With ``Match final`` or canonicalisation the files
are read a second time, ``Host`` matching the final name, values set in the first pass kept.
Used: ``HostName``, ``User``, ``Port`` (a number or a service name), ``IdentityFile`` (``~``,
``${VAR}`` and the tokens ``%C %d %h %i %j %k %L %l %n %p %r %u %%``; files that do not exist
are skipped, as ssh does), ``ProxyJump`` (``[user@]host[:port]``, the user ending at the last
``@``; resolved here into the chain of jump hosts, each with its own config),
``ProxyCommand`` (tokens ``%h %k %n %p %r %%``; run by ``transport``) and ``HostKeyAlias``
(``%k``). Keywords that change where ssh connects and that ddpcheck does not follow
(``BindAddress``, ``BindInterface``, ``AddressFamily``) are warned about; a ``Match``
criterion ddpcheck cannot evaluate is a ``ConfigError`` naming the file and line.

Precedence, per key: a value hosts.yaml (or the ``--config`` defaults) sets explicitly (as
``ssh -o``) > ssh_config > the built-in default (the name, the local user, 22, ssh-agent and
default keys, no proxy). Without ``--ssh-config`` the user's ~/.ssh/config and then
/etc/ssh/ssh_config are read, as ssh does; ``-F FILE`` semantics otherwise.

Parsing, matching and token expansion are pure; I/O is reading the files (once each),
``Match exec`` (run in the user's shell, as ssh does), name lookups for canonicalisation (the
system resolver, as ssh; ``SSHConfig(lookup=...)``) and looking which IdentityFile exists.
"""

from __future__ import annotations

import glob
import hashlib
import os
import pwd
import re
import socket
import subprocess
import sys
from dataclasses import dataclass, field, replace
from typing import Callable, Mapping, Optional

from ..model.errors import ConfigError
from ..model.spec import ClusterSpec, HostSpec

USER_SSH_CONFIG = "~/.ssh/config"
SYSTEM_SSH_CONFIG = "/etc/ssh/ssh_config"
SYSTEM_SSH_DIR = "/etc/ssh"
USER_SSH_DIR = "~/.ssh"
NO_SSH_CONFIG = "none"
MAX_JUMP_DEPTH = 8  # ProxyJump chains longer than this are a loop in practice
MAX_INCLUDE_DEPTH = 16  # readconf.c READCONF_MAX_DEPTH
MATCH_EXEC_TIMEOUT_S = 30.0
DEFAULT_PORT = 22

_WS = " \t\r\n"
# A hop's host[:port], after its user: a bracketed address or a name without "@", ":", "/",
# blanks or brackets.
_HOP_HOST = re.compile(r"^(?P<host>\[[0-9A-Fa-f:.%\w]+\]|[^@:\s/\[\]]+)(?::(?P<port>[0-9]+))?$")
# Keywords that change where ssh connects, which ddpcheck does not follow: (keyword, values
# that are harmless).
_UNFOLLOWED = {"bindaddress": (), "bindinterface": (),
               "addressfamily": ("any",)}
_SPELLED = {"bindaddress": "BindAddress",
            "bindinterface": "BindInterface", "addressfamily": "AddressFamily"}
_MATCH_INLINE = re.compile(r"^(host|originalhost|user|localuser|localnetwork|version|tagged|"
                           r"command|exec)=")
_UNSUPPORTED_MATCH = ("localnetwork", "tagged", "command", "sessiontype", "version")


@dataclass(frozen=True)
class JumpHop:
    """One hop of a ProxyJump list: ``[user@]host[:port]`` (or ``ssh://[user@]host[:port]``)."""

    host: str
    user: Optional[str] = None
    port: Optional[int] = None


def parse_proxy_jump(text: str) -> tuple[JumpHop, ...]:
    """``"alice@bastion:2222,inner"`` -> two hops; ``"none"`` -> no hop (OpenSSH's off switch).

    Raises ``ValueError`` naming the bad hop."""
    text = text.strip()
    if text.lower() == NO_SSH_CONFIG:
        return ()
    if not text:
        raise ValueError("ProxyJump is empty")
    hops = []
    for raw in text.split(","):
        hops.append(_parse_hop(raw.strip()))
    return tuple(hops)


def _parse_hop(hop: str) -> JumpHop:
    """misc.c parse_user_host_port: the user is all before the *last* ``@`` (a user may hold
    one: ``alice@corp.example@bastion``); in an ``ssh://`` URI (parse_uri) all before the
    first, without ``;parameters``."""
    bad = f"ProxyJump hop {hop!r} is not [user@]host[:port]"
    if hop.startswith("ssh://"):
        user, at, rest = hop[len("ssh://"):].rstrip("/").partition("@")
        user = user.split(";", 1)[0]
        if not at:
            user, rest = "", user
    else:
        user, at, rest = hop.rpartition("@")
    if (at and not user) or re.search(r"\s", user):
        raise ValueError(bad)
    match = _HOP_HOST.match(rest)
    if not rest or match is None or match.group("host").startswith("-"):
        raise ValueError(bad)
    port = match.group("port")
    if port is not None and not 1 <= int(port) <= 65535:
        raise ValueError(f"ProxyJump hop {hop!r}: port {port} is not 1..65535")
    host = match.group("host")
    if host.startswith("["):
        host = host[1:-1]
    return JumpHop(host=host, user=user or None, port=int(port) if port is not None else None)


# ---------------------------------------------------------------- lines, as readconf.c splits


@dataclass(frozen=True)
class ConfigLine:
    """One directive: lower-case keyword, its arguments (quotes and escapes removed, stopped at
    an unquoted ``#``), the raw text after the keyword (ProxyCommand keeps it whole)."""

    source: str
    number: int
    keyword: str
    args: tuple[str, ...]
    rest: str


def _strdelim(text: str) -> tuple[Optional[str], str]:
    """OpenSSH's strdelim: the first word (a ``"quoted"`` one, or up to whitespace or one
    ``=``) and the rest with the separator skipped. (None, ...) for an unclosed quote."""
    match = re.search(r'[ \t\r\n"=]', text)
    if match is None:
        return text, ""
    index = match.start()
    if text[index] == '"':
        text = text[:index] + text[index + 1:]
        close = text.find('"', index)
        if close < 0:
            return None, ""
        return text[:close], text[close + 1:].lstrip(_WS)
    equals = text[index] == "="
    word, rest = text[:index], text[index + 1:].lstrip(_WS)
    if rest.startswith("=") and not equals:
        rest = rest[1:].lstrip(_WS)
    return word, rest


def split_args(text: str) -> Optional[list[str]]:
    """OpenSSH's argv_split(…, terminate_on_comment=1): words split at blanks, ``"``/``'``
    quotes, backslash escapes, an unquoted ``#`` starting a word ends the line. None for an
    unclosed quote."""
    args: list[str] = []
    i, n = 0, len(text)
    while i < n:
        if text[i] in " \t":
            i += 1
            continue
        if text[i] == "#":
            break
        quote = ""
        word: list[str] = []
        while i < n:
            char = text[i]
            if char == "\\" and i + 1 < n and (text[i + 1] in "'\"\\"
                                               or (not quote and text[i + 1] == " ")):
                i += 1
                word.append(text[i])
            elif not quote and char in " \t":
                break
            elif not quote and char in "\"'":
                quote = char
            elif quote and char == quote:
                quote = ""
            else:
                word.append(char)
            i += 1
        if i >= n and quote:
            return None
        args.append("".join(word))
    return args


def parse_config_text(text: str, source: str) -> list[ConfigLine]:
    """Every directive of one ssh_config file, in order. Lines ssh skips are skipped; an
    unclosed quote or a keyword without a value is a ``ConfigError`` naming the line."""
    lines: list[ConfigLine] = []
    for number, raw in enumerate(text.split("\n"), 1):
        line = raw.rstrip(_WS + "\f")
        if not line:
            continue
        keyword, rest = _strdelim(line)
        if keyword == "":
            keyword, rest = _strdelim(rest)
        if keyword is None:
            raise ConfigError("unclosed quote", source=source, line=number)
        if not keyword or keyword.startswith("#"):
            continue
        keyword = keyword.lower()
        rest = rest.lstrip(_WS)
        if not rest:
            raise ConfigError(f'no argument after keyword "{keyword}"', source=source,
                              line=number)
        args = split_args(rest)
        if args is None:
            raise ConfigError("invalid quotes", source=source, line=number)
        lines.append(ConfigLine(source, number, keyword, tuple(args), rest))
    return lines


# ---------------------------------------------------------------- patterns and tokens


def match_pattern(text: str, pattern: str) -> bool:
    """OpenSSH's match_pattern: ``*`` and ``?`` only (brackets are literal), case as given."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, text, re.DOTALL) is not None


def match_pattern_list(text: str, patterns: str, lower: bool = False) -> int:
    """OpenSSH's match_pattern_list: 1 a positive match, -1 a negated one, 0 none."""
    got = 0
    for sub in patterns.split(","):
        negated = sub.startswith("!")
        sub = sub[1:] if negated else sub
        if lower:
            sub = sub.lower()
        if match_pattern(text, sub):
            if negated:
                return -1
            got = 1
    return got


def match_hostname(host: str, patterns: str) -> bool:
    return match_pattern_list(host.lower(), patterns, lower=True) == 1


def percent_expand(text: str, tokens: Mapping[str, str], what: str) -> str:
    """``%x`` -> ``tokens['x']``, ``%%`` -> ``%``; any other ``%`` is a ``ValueError`` (ssh
    refuses the same)."""
    out: list[str] = []
    i = 0
    while i < len(text):
        if text[i] != "%":
            out.append(text[i])
            i += 1
            continue
        if i + 1 >= len(text):
            raise ValueError(f"{what}: a '%' at the end of {text!r}")
        key = text[i + 1]
        if key == "%":
            out.append("%")
        elif key in tokens:
            out.append(tokens[key])
        else:
            raise ValueError(f"{what}: unknown token %{key} in {text!r}")
        i += 2
    return "".join(out)


def dollar_expand(text: str, env: Mapping[str, str], what: str) -> str:
    """``${NAME}`` -> the environment variable (ssh's dollar_expand); unset is an error."""
    def one(match: "re.Match[str]") -> str:
        name = match.group(1)
        if name not in env:
            raise ValueError(f"{what}: environment variable ${{{name}}} has no value")
        return env[name]

    if "${" in text and re.search(r"\$\{[A-Za-z0-9_]*$|\$\{[^}]*[^A-Za-z0-9_}]", text):
        raise ValueError(f"{what}: bad ${{...}} in {text!r}")
    return re.sub(r"\$\{([A-Za-z0-9_]+)\}", one, text)


def tilde_expand(path: str, home: str) -> str:
    """ssh's tilde_expand: ``~`` and ``~/x`` from the user's home, ``~user/x`` from theirs."""
    if not path.startswith("~"):
        return path
    rest = path[1:]
    if not rest or rest.startswith("/"):
        base, tail = home, rest.lstrip("/")
    else:
        user, _, tail = rest.partition("/")
        try:
            base = pwd.getpwnam(user).pw_dir
        except KeyError:
            raise ValueError(f"no such user {user!r} in {path!r}") from None
        tail = tail.lstrip("/")
    return base.rstrip("/") + "/" + tail


def is_address(host: str) -> bool:
    try:
        socket.getaddrinfo(host, None, flags=socket.AI_NUMERICHOST)
    except (socket.gaierror, UnicodeError, ValueError):
        return False
    return True


def port_number(text: str) -> int:
    """ssh's a2port: 1..65535 or a TCP service name (``ssh`` -> 22); ValueError otherwise."""
    if text.isdigit():
        value = int(text)
        if 1 <= value <= 65535:
            return value
        raise ValueError(f"Bad port {text!r} (1..65535)")
    try:
        return socket.getservbyname(text, "tcp")
    except OSError:
        raise ValueError(f"Bad port {text!r}: not a number nor a TCP service name") from None


# ---------------------------------------------------------------- the local side


@dataclass(frozen=True)
class LocalFacts:
    """What tokens and Match need from this machine."""

    user: str
    home: str
    uid: int
    hostname: str
    env: Mapping[str, str]
    shell: str = "/bin/sh"

    @classmethod
    def here(cls, user: Optional[str] = None) -> "LocalFacts":
        entry = pwd.getpwuid(os.getuid())
        return cls(user=user or entry.pw_name, home=entry.pw_dir, uid=os.getuid(),
                   hostname=socket.gethostname(), env=dict(os.environ),
                   shell=os.environ.get("SHELL") or "/bin/sh")


def run_match_exec(command: str, local: LocalFacts) -> bool:
    """``Match exec``: the command in the user's shell; exit status 0 matches (as ssh)."""
    try:
        done = subprocess.run([local.shell, "-c", command], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              timeout=MATCH_EXEC_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise ValueError(f"Match exec {command!r} ran past {MATCH_EXEC_TIMEOUT_S:g}s") from None
    except OSError as exc:
        raise ValueError(f"Match exec {command!r} cannot run: {exc}") from None
    return done.returncode == 0


# ---------------------------------------------------------------- resolution


@dataclass(frozen=True)
class Preset:
    """Values given before the files are read (``ssh -o`` / ``-l`` / ``-p`` / ``-J``): they
    win, as the command line does for ssh."""

    hostname: Optional[str] = None
    user: Optional[str] = None
    port: Optional[int] = None
    proxy_jump: Optional[str] = None
    proxy_command: Optional[str] = None


@dataclass(frozen=True)
class Resolved:
    """What ``ssh -G`` would say about one host (the keys ddpcheck uses)."""

    host_arg: str
    hostname: str  # %h expanded, lower-cased unless an address
    user: str
    port: int
    identity_files: tuple[str, ...]  # as written (tokens not expanded), in order
    proxy_jump: Optional[str]  # None: none
    proxy_command: Optional[str]  # as written; None: none
    notes: tuple[str, ...] = ()
    host_key_alias: Optional[str] = None  # lower-cased, as ssh uses it


@dataclass
class _Options:
    hostname: Optional[str] = None
    user: Optional[str] = None
    port: Optional[int] = None
    identity_files: list[str] = field(default_factory=list)
    proxy_jump: Optional[str] = None
    proxy_command: Optional[str] = None
    host_key_alias: Optional[str] = None
    canonicalize: Optional[str] = None  # "no", "yes", "always"
    canonical_domains: Optional[tuple[str, ...]] = None
    max_dots: Optional[int] = None
    fallback_local: Optional[bool] = None
    permitted_cnames: Optional[tuple[tuple[str, str], ...]] = None  # (sources, targets)
    notes: list[str] = field(default_factory=list)


@dataclass
class _Pass:
    host_arg: str  # the name as typed: Match originalhost, %n
    host: str  # what Host lines match: the name as typed, then (final pass) the final name
    local: LocalFacts
    final: bool
    want_final: bool = False


Reader = Callable[[str], str]
# A name -> its canonical name ("" when the resolver gives none), None when it does not
# resolve: getaddrinfo with AI_CANONNAME, as ssh.c resolve_host.
NameLookup = Callable[[str], Optional[str]]


def lookup_name(name: str) -> Optional[str]:
    try:
        found = socket.getaddrinfo(name, DEFAULT_PORT, type=socket.SOCK_STREAM,
                                   flags=socket.AI_CANONNAME)
    except (socket.gaierror, UnicodeError, ValueError, OSError):
        return None
    return found[0][3] if found else None


def _read_file(path: str) -> str:
    with open(path, encoding="utf-8", errors="surrogateescape") as handle:
        return handle.read()


class SSHConfig:
    """The ssh_config files ssh reads, each ``(path, is_user_config)``; each file is parsed
    once. ``resolve`` gives one host's options."""

    def __init__(self, files: list[tuple[str, bool]], reader: Reader = _read_file,
                 lookup: NameLookup = lookup_name) -> None:
        self.files = list(files)
        self._reader = reader
        self._lookup = lookup
        self._parsed: dict[str, list[ConfigLine]] = {}

    @property
    def source(self) -> str:
        return ", ".join(path for path, _ in self.files)

    def lines(self, path: str) -> list[ConfigLine]:
        if path not in self._parsed:
            try:
                text = self._reader(path)
            except OSError as exc:
                raise ConfigError(f"cannot read ssh_config: {exc.strerror or exc}",
                                  source=path) from None
            self._parsed[path] = parse_config_text(text, path)
        return self._parsed[path]

    def resolve(self, host_arg: str, local: LocalFacts,
                preset: Preset = Preset()) -> Resolved:
        options = _Options(hostname=preset.hostname, user=preset.user, port=preset.port)
        if preset.proxy_command is not None:
            options.proxy_command = preset.proxy_command
        if preset.proxy_jump is not None:
            _set_jump(options, preset.proxy_jump, active=True)
        state = _Pass(host_arg, host_arg, local, final=False)
        self._pass(options, state)
        try:
            hostname = _expanded_hostname(options, host_arg)
            hostname = _canonical(hostname, options, self._lookup)
        except ValueError as exc:
            raise ConfigError(str(exc), source=self.source, key=f"Host {host_arg}") from None
        # ssh.c: canonicalisation (yes or always) reads the files again, as "Match final"
        # does; Host lines then match the final name, values already set stay.
        if state.want_final or (options.canonicalize or "no") != "no":
            options.hostname = hostname
            self._pass(options, _Pass(host_arg, hostname, local, final=True))
        proxy_command = options.proxy_command
        if proxy_command is not None and proxy_command.lower() == NO_SSH_CONFIG:
            proxy_command = None
        jump = options.proxy_jump
        if jump is not None and jump.lower() == NO_SSH_CONFIG:
            jump = None
        user, port = options.user or local.user, options.port or DEFAULT_PORT
        if jump is not None:
            last = parse_proxy_jump(jump)[-1]
            if (last.host, last.port or DEFAULT_PORT, last.user or user) == (hostname, port, user):
                raise ConfigError(f"jumphost loop via {last.host} (ProxyJump of {host_arg!r} "
                                  f"is the host itself)", source=self.source)
        alias = options.host_key_alias.lower() if options.host_key_alias is not None else None
        return Resolved(host_arg=host_arg, hostname=hostname, user=user, port=port,
                        identity_files=tuple(options.identity_files), proxy_jump=jump,
                        proxy_command=proxy_command, notes=tuple(options.notes),
                        host_key_alias=alias)

    def _pass(self, options: _Options, state: _Pass) -> None:
        for path, user_config in self.files:
            active = [True]
            self._file(path, user_config, options, state, active, never=False, depth=0)

    def _file(self, path: str, user_config: bool, options: _Options, state: _Pass,
              active: list, never: bool, depth: int) -> None:
        if depth > MAX_INCLUDE_DEPTH:
            raise ConfigError(f"Include nests more than {MAX_INCLUDE_DEPTH} deep", source=path)
        for line in self.lines(path):
            try:
                self._line(line, user_config, options, state, active, never, depth)
            except ValueError as exc:
                raise ConfigError(str(exc), source=line.source, line=line.number,
                                  key=line.keyword) from None

    def _line(self, line: ConfigLine, user_config: bool, options: _Options, state: _Pass,
              active: list, never: bool, depth: int) -> None:
        key, args = line.keyword, line.args
        if key == "host":
            active[0] = (not never) and _host_matches(state.host, args)
        elif key == "match":
            result = _match(args, options, state)
            active[0] = result and not never
        elif key == "include":
            self._include(line, user_config, options, state, active, depth)
        elif key == "hostname":
            value = _one(args, line)
            if active[0] and options.hostname is None:
                options.hostname = value
        elif key == "user":
            value = _one(args, line)
            if active[0] and options.user is None:
                options.user = value
        elif key == "port":
            value = port_number(_one(args, line))
            if active[0] and options.port is None:
                options.port = value
        elif key == "identityfile":
            value = _one(args, line)
            if active[0] and value not in options.identity_files:
                options.identity_files.append(value)
        elif key == "proxycommand":
            if active[0] and options.proxy_command is None:
                options.proxy_command = line.rest.lstrip(_WS + "=")
        elif key == "proxyjump":
            _set_jump(options, line.rest.lstrip(_WS + "="), active[0])
        elif key == "hostkeyalias":
            value = _one(args, line)
            if active[0] and options.host_key_alias is None:
                options.host_key_alias = value
        elif key in _CANONICAL_KEYS:
            _canonical_option(options, key, args, line, active[0])
        elif key in _UNFOLLOWED and active[0]:
            value = args[0] if args else ""
            note = (f"{line.source} line {line.number}: {_SPELLED[key]} {value} is not "
                    f"followed by ddpcheck (it connects without it)")
            if value.lower() not in _UNFOLLOWED[key] and note not in options.notes:
                options.notes.append(note)

    def _include(self, line: ConfigLine, user_config: bool, options: _Options, state: _Pass,
                 active: list, depth: int) -> None:
        for arg in line.args:
            if arg.startswith("~") and not user_config:
                raise ValueError(f"bad include path {arg} (~ only in a user's config)")
            if not os.path.isabs(arg) and not arg.startswith("~"):
                arg = f"{USER_SSH_DIR if user_config else SYSTEM_SSH_DIR}/{arg}"
            pattern = os.path.expanduser(arg)
            was_active = active[0]
            for path in sorted(glob.glob(pattern)):
                _check_include(path)
                if os.path.isdir(path):
                    continue  # ssh opens it and reads no line from it: nothing, no error
                self._file(path, user_config, options, state, active, never=not was_active,
                           depth=depth + 1)
                active[0] = was_active


def _one(args: tuple[str, ...], line: ConfigLine) -> str:
    if not args or not args[0]:
        raise ValueError(f"{line.keyword}: missing argument")
    if len(args) > 1:
        raise ValueError(f"{line.keyword}: extra arguments at end of line ({' '.join(args[1:])})")
    return args[0]


def _set_jump(options: _Options, text: str, active: bool) -> None:
    """readconf.c parse_jump: ``none`` only claims the slot; a jump host also turns
    ProxyCommand off; neither when ProxyCommand or ProxyJump already has a value."""
    text = text.split("#", 1)[0].strip(_WS)
    if text.lower() == NO_SSH_CONFIG:
        if active and options.proxy_jump is None:
            options.proxy_jump = NO_SSH_CONFIG
        return
    parse_proxy_jump(text)  # ValueError names the bad hop
    if active and options.proxy_command is None and options.proxy_jump is None:
        options.proxy_jump = text
        options.proxy_command = NO_SSH_CONFIG


def _host_matches(host_arg: str, patterns: tuple[str, ...]) -> bool:
    matched = False
    for pattern in patterns:
        if not pattern:
            raise ValueError("Host: empty pattern")
        negated = pattern.startswith("!")
        if match_pattern(host_arg, pattern[1:] if negated else pattern):
            if negated:
                return False
            matched = True
    return matched


def _match_host(options: _Options, state: _Pass) -> str:
    if state.final:
        return options.hostname or state.host_arg
    if options.hostname is not None:
        return percent_expand(options.hostname, {"h": state.host_arg}, "HostName")
    return state.host_arg


def _match(args: tuple[str, ...], options: _Options, state: _Pass) -> bool:
    """readconf.c match_cfg_line for the criteria ddpcheck can evaluate."""
    host = _match_host(options, state)
    result = True
    items = list(args)
    attributes = 0
    i = 0
    if not items:
        raise ValueError("Match: no criteria")
    while i < len(items):
        attrib = items[i]
        i += 1
        negate = attrib.startswith("!")
        name = (attrib[1:] if negate else attrib).lower()
        if name == "all":
            if attributes > 1 or i < len(items):
                raise ValueError(f"Match: '{attrib}' cannot be combined with other criteria")
            return (not negate) if result else False
        attributes += 1
        if name in ("canonical", "final"):
            # readconf.c of OpenSSH 9.2 (what ssh -G answers here) asks for the final pass on
            # "Match final" whether or not it is negated: "Match !final" re-reads too.
            if name == "final":
                state.want_final = True
            if state.final == negate:
                result = False
            continue
        if name.split("=", 1)[0] in _UNSUPPORTED_MATCH:
            raise ValueError(f"Match {name} is not supported by ddpcheck (it cannot tell "
                             f"which hosts that block applies to); resolve it in hosts.yaml")
        inline = _MATCH_INLINE.match(name)
        if inline is not None:  # "host=pattern" (one word), as ssh also takes
            arg = (attrib[1:] if negate else attrib)[inline.end():]
            name = inline.group(1)
        elif i >= len(items):
            raise ValueError(f"Match: missing argument for '{attrib}'")
        else:
            arg = items[i]
            i += 1
        if not arg or arg.startswith("#"):
            raise ValueError(f"Match: missing criteria for '{attrib}'")
        if name == "host":
            hit = match_hostname(host, arg)
        elif name == "originalhost":
            hit = match_hostname(state.host_arg, arg)
        elif name == "user":
            hit = match_pattern_list(options.user or state.local.user, arg) == 1
        elif name == "localuser":
            hit = match_pattern_list(state.local.user, arg) == 1
        elif name == "exec":
            command = percent_expand(arg, _exec_tokens(host, options, state), "Match exec")
            if not result:
                continue  # ssh skips the command once an earlier criterion failed
            hit = run_match_exec(command, state.local)
        else:
            raise ValueError(f"Match: unsupported attribute {name!r}")
        if hit == negate:
            result = False
    return result


def _exec_tokens(host: str, options: _Options, state: _Pass) -> dict[str, str]:
    local = state.local
    port = str(options.port or DEFAULT_PORT)
    user = options.user or local.user
    return {"C": _connection_hash(local.hostname, host, port, user, ""),
            "L": local.hostname.split(".")[0], "d": local.home, "h": host,
            "i": str(local.uid), "k": options.host_key_alias or host, "l": local.hostname,
            "n": state.host_arg, "p": port, "r": user, "u": local.user}


def _expanded_hostname(options: _Options, host_arg: str) -> str:
    """ssh.c after the first pass: HostName with %h expanded, lower-cased unless an
    address."""
    host = host_arg
    if options.hostname is not None:
        host = percent_expand(options.hostname, {"h": host_arg}, "HostName")
    return host if _is_addr(host) else host.lower()


def _is_addr_fast(name: str) -> bool:
    """ssh.c is_addr_fast: a name with "%" or ":", or only digits and dots."""
    return "%" in name or ":" in name or name.strip("0123456789.") == ""


def _is_addr(name: str) -> bool:
    return _is_addr_fast(name) or is_address(name)


def _numeric_address(name: str) -> Optional[str]:
    """ssh.c resolve_addr: a numeric address in getnameinfo's form (``10.1`` ->
    ``10.0.0.1``), None when ``name`` is not exactly one."""
    try:
        found = socket.getaddrinfo(name, DEFAULT_PORT, type=socket.SOCK_STREAM,
                                   flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV)
        if len(found) != 1:
            return None
        return socket.getnameinfo(found[0][4], socket.NI_NUMERICHOST)[0]
    except (socket.gaierror, UnicodeError, ValueError, OSError):
        return None


def _canonical(host: str, options: _Options, lookup: NameLookup) -> str:
    """ssh.c between the passes: an address in its numeric form; with
    CanonicalizeHostname, the name with the first CanonicalDomains suffix that resolves
    (resolve_canonicalize); then CanonicalizePermittedCNAMEs. ValueError where ssh exits
    ("Could not resolve host")."""
    mode = options.canonicalize or "no"
    direct = _direct(options)
    host, found = _canonicalize(host, options, mode, direct, lookup)
    if not found and _has_permitted_cnames(options) and (direct or mode == "always"):
        cname = lookup(host)
        if cname is None:
            if direct:
                raise ValueError(f"Could not resolve hostname {host} "
                                 f"(CanonicalizePermittedCNAMEs resolves it)")
        else:
            host = _follow_cname(host, _valid_cname(cname), options, mode, direct)
    return host


def _direct(options: _Options) -> bool:
    """ssh.c: no ProxyCommand and no ProxyJump (even ``ProxyJump none`` counts as one)."""
    command = options.proxy_command
    return (command is None or command.lower() == NO_SSH_CONFIG) and options.proxy_jump is None


def _canonicalize(host: str, options: _Options, mode: str, direct: bool,
                  lookup: NameLookup) -> tuple[str, bool]:
    """ssh.c resolve_canonicalize: (the name, whether it resolved). ValueError where ssh
    exits (not found and CanonicalizeFallbackLocal no)."""
    address = _numeric_address(host) if (mode != "no" or _is_addr(host)) else None
    if address is not None:
        return (host if host.lower() == address.lower() else address), True
    if _is_addr_fast(host) or mode == "no" or (not direct and mode != "always"):
        return host, False
    if host.endswith("."):
        candidates = [host]
    elif host.count(".") > (options.max_dots if options.max_dots is not None else 1):
        return host, False
    else:
        candidates = []
        for domain in options.canonical_domains or ():
            if domain == NO_SSH_CONFIG:
                break
            candidates.append(f"{host}.{domain}.")
    for candidate in candidates:
        cname = lookup(candidate)
        if cname is not None:
            return _follow_cname(candidate[:-1], _valid_cname(cname), options, mode,
                                 direct), True
    if options.fallback_local is False:
        raise ValueError(f'Could not resolve host "{host}" (CanonicalizeFallbackLocal no)')
    return host, False


def _valid_cname(name: str) -> str:
    """ssh.c resolve_host keeps a canonical name only when valid_domain takes it ("" not)."""
    return name.removesuffix(".") if _valid_domain(name) else ""


def _valid_domain(name: str) -> bool:
    """misc.c valid_domain: a letter or digit, then letters, digits, ".", "-", "_", never
    two dots in a row (a trailing dot is allowed, and dropped by the callers)."""
    return bool(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name)) and ".." not in name


def _has_permitted_cnames(options: _Options) -> bool:
    """readconf.c config_has_permitted_cnames: a lone ``none`` is none."""
    rules = options.permitted_cnames or ()
    return bool(rules) and not (len(rules) == 1 and rules[0][0].lower() == NO_SSH_CONFIG
                                and rules[0][1] == "")


def _follow_cname(name: str, cname: str, options: _Options, mode: str, direct: bool) -> str:
    """ssh.c check_follow_cname: the canonical name replaces ``name`` when a
    CanonicalizePermittedCNAMEs rule allows it."""
    if not cname or not _has_permitted_cnames(options) or name == cname:
        return name
    if mode == "no" or (not direct and mode != "always"):
        return name
    for sources, targets in options.permitted_cnames or ():
        if match_pattern_list(name, sources, lower=True) == 1 \
                and match_pattern_list(cname, targets, lower=True) == 1:
            return cname
    return name


_CANONICAL_KEYS = ("canonicalizehostname", "canonicaldomains", "canonicalizemaxdots",
                   "canonicalizefallbacklocal", "canonicalizepermittedcnames")
_MULTISTATE = {"true": "yes", "yes": "yes", "false": "no", "no": "no", "always": "always"}
_FLAG = {"true": True, "yes": True, "false": False, "no": False}


def _canonical_option(options: _Options, key: str, args: tuple[str, ...], line: ConfigLine,
                      active: bool) -> None:
    """readconf.c for the Canonicalize* keywords: checked whether or not the block applies,
    set when it applies and nothing set it before (lists: the whole line, once)."""
    if key in ("canonicaldomains", "canonicalizepermittedcnames"):
        if not args:
            raise ValueError(f"{line.keyword}: missing argument")
        if any(arg.lower() == NO_SSH_CONFIG for arg in args) and \
                (len(args) > 1 or args[0].lower() != NO_SSH_CONFIG):
            raise ValueError(f'keyword {line.keyword} "none" argument must appear alone.')
        if key == "canonicaldomains":
            for arg in args:
                if not _valid_domain(arg):
                    raise ValueError(f'domain name "{arg}" is not valid')
            domains = tuple(arg.removesuffix(".").lower() for arg in args)
            if active and options.canonical_domains is None:
                options.canonical_domains = domains
            return
        rules = []
        for arg in args:
            if arg.lower() == NO_SSH_CONFIG:
                rules.append((arg, ""))
            elif arg == "*":
                rules.append(("*", "*"))
            else:
                sources, colon, targets = arg.lower().partition(":")
                if not colon or not targets:
                    raise ValueError(f'Invalid permitted CNAME "{arg}"')
                rules.append((sources, targets))
        if active and options.permitted_cnames is None:
            options.permitted_cnames = tuple(rules)
        return
    value = _one(args, line)
    if key == "canonicalizehostname":
        if value.lower() not in _MULTISTATE:
            raise ValueError(f'unsupported option "{value}".')
        if active and options.canonicalize is None:
            options.canonicalize = _MULTISTATE[value.lower()]
    elif key == "canonicalizefallbacklocal":
        if value.lower() not in _FLAG:
            raise ValueError(f'unsupported option "{value}".')
        if active and options.fallback_local is None:
            options.fallback_local = _FLAG[value.lower()]
    else:
        if not value.isdigit():
            raise ValueError(f"integer value {value!r} is invalid")
        if active and options.max_dots is None:
            options.max_dots = int(value)


def _check_include(path: str) -> None:
    """readconf.c: an included file (or directory) owned by another user, or writable by
    group or others, is refused ("Bad owner or permissions")."""
    try:
        info = os.stat(path)
    except OSError:
        return
    if (info.st_uid not in (0, os.getuid())) or info.st_mode & 0o022:
        raise ValueError(f"Bad owner or permissions on {path}")


def _connection_hash(local: str, host: str, port: str, user: str, jump: str) -> str:
    return hashlib.sha1((local + host + port + user + jump).encode()).hexdigest()


def client_tokens(resolved: Resolved, local: LocalFacts) -> dict[str, str]:
    """ssh's DEFAULT_CLIENT_PERCENT_EXPAND_ARGS for one resolved host."""
    port = str(resolved.port)
    jump = ""
    if resolved.proxy_jump:
        jump = parse_proxy_jump(resolved.proxy_jump)[-1].host
    return {"C": _connection_hash(local.hostname, resolved.hostname, port, resolved.user, jump),
            "L": local.hostname.split(".")[0], "i": str(local.uid),
            "k": resolved.host_key_alias or resolved.host_arg,
            "l": local.hostname, "n": resolved.host_arg, "p": port, "d": local.home,
            "h": resolved.hostname, "u": local.user, "j": jump, "r": resolved.user}


def identity_paths(resolved: Resolved, local: LocalFacts) -> list[str]:
    """The IdentityFile paths as ssh opens them: ``~`` first, then ``${VAR}`` and tokens."""
    tokens = client_tokens(resolved, local)
    paths = []
    for raw in resolved.identity_files:
        path = tilde_expand(raw, local.home)
        path = percent_expand(dollar_expand(path, local.env, "IdentityFile"), tokens,
                              "IdentityFile")
        paths.append(path)
    return paths


def proxy_command_line(resolved: Resolved) -> Optional[str]:
    """The ProxyCommand as ssh runs it (tokens of sshconnect.c expanded), or None."""
    if resolved.proxy_command is None:
        return None
    return percent_expand(resolved.proxy_command,
                          {"h": resolved.hostname,
                           "k": resolved.host_key_alias or resolved.host_arg,
                           "n": resolved.host_arg, "p": str(resolved.port),
                           "r": resolved.user}, "ProxyCommand")


# ---------------------------------------------------------------- ddpcheck's side


def read_ssh_config(path: Optional[str]) -> tuple[SSHConfig, str]:
    """(config, the files read). ``None``: ~/.ssh/config and /etc/ssh/ssh_config, those that
    exist (as ssh); ``"none"``: nothing; a file named explicitly must exist (as ``ssh -F``).
    A line ssh would refuse is a ``ConfigError`` naming file and line (when a host is
    resolved)."""
    if path == NO_SSH_CONFIG:
        return SSHConfig([]), ""
    if path is not None:
        chosen = os.path.expanduser(path)
        if not os.path.isfile(chosen):
            raise ConfigError("no such ssh_config file", source=chosen)
        config = SSHConfig([(chosen, True)])
    else:
        files = [(os.path.expanduser(USER_SSH_CONFIG), True), (SYSTEM_SSH_CONFIG, False)]
        config = SSHConfig([(f, user) for f, user in files if os.path.isfile(f)])
    for file, _ in config.files:
        config.lines(file)  # parse errors now, not at the first host
    return config, config.source


def apply_ssh_config(spec: ClusterSpec, config: SSHConfig, source: str,
                     local_user: str, local: Optional[LocalFacts] = None,
                     warn: Optional[Callable[[str], None]] = None) -> ClusterSpec:
    """Every host with what ssh_config says about it filled in (see the module docstring);
    ``local_user`` is the last resort for User. Local specs (no SSH) are returned unchanged.
    Each keyword ddpcheck does not follow is passed to ``warn`` once (default: stderr)."""
    if spec.local:
        return spec
    local = replace(local or LocalFacts.here(local_user), user=local_user)
    notes: dict[str, list[str]] = {}
    hosts = tuple(resolve_host(host, config, local, notes=notes) for host in spec.hosts)
    for note, names in notes.items():
        message = f"ddpcheck: warning: {note} ({_short_names(names)})"
        if warn is None:
            print(message, file=sys.stderr)
        else:
            warn(message)
    return replace(spec, hosts=hosts)


def _short_names(names: list[str]) -> str:
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def resolve_host(host: HostSpec, config: SSHConfig, local: LocalFacts,
                 depth: int = 0, jump_preset: Optional[str] = None,
                 notes: Optional[dict[str, list[str]]] = None) -> HostSpec:
    """One host as ssh would reach it. ``jump_preset``: the ``-J`` ssh gives this host when it
    is a later hop of a chain (its own ProxyJump / ProxyCommand do not apply then)."""
    given = host.given
    preset = Preset(hostname=host.address if "address" in given else None,
                    user=host.user if "user" in given else None,
                    port=host.port if "port" in given else None,
                    proxy_jump=host.proxy_jump if "proxy_jump" in given else jump_preset)
    try:
        found = config.resolve(host.name, local, preset)
    except ValueError as exc:  # a bad preset ProxyJump
        raise ConfigError(str(exc), key=f"{host.name}: proxy_jump") from None
    where = f"Host {host.name}"
    for note in found.notes:
        if notes is not None:
            notes.setdefault(note, []).append(host.name)
    try:
        identity_file = host.identity_file
        if "identity_file" not in given:
            identity_file = _first_existing(identity_paths(found, local))
        proxy_command = proxy_command_line(found)
    except ValueError as exc:
        raise ConfigError(str(exc), source=config.source, key=where) from None
    resolved = replace(host, address=found.hostname, user=found.user, port=found.port,
                       identity_file=identity_file, proxy_jump=found.proxy_jump,
                       proxy_command=proxy_command, jumps=())
    if not found.proxy_jump or jump_preset is not None:
        return resolved
    hops = parse_proxy_jump(found.proxy_jump)
    return replace(resolved, jumps=_jump_chain(host.name, hops, config, local, depth, notes))


def _jump_chain(target: str, hops: tuple[JumpHop, ...], config: SSHConfig, local: LocalFacts,
                depth: int, notes: Optional[dict[str, list[str]]]) -> tuple[HostSpec, ...]:
    """The hosts to connect through, in order. As OpenSSH does ``-J a,b``: ``a`` with its own
    ssh_config (its own ProxyJump too), then ``b`` reached through ``a`` (``ssh -J a b``: b's
    own ProxyJump does not apply)."""
    if depth >= MAX_JUMP_DEPTH:
        raise ConfigError(f"ProxyJump of {target!r} goes {MAX_JUMP_DEPTH} hops deep: a loop?",
                          source=config.source)
    chain: list[HostSpec] = []
    for index, hop in enumerate(hops):
        given = frozenset(({"user"} if hop.user else set()) | ({"port"} if hop.port else set()))
        spec = HostSpec(name=hop.host, address=hop.host, user=hop.user,
                        port=hop.port or DEFAULT_PORT, given=given)
        if index == 0:
            resolved = resolve_host(spec, config, local, depth + 1, notes=notes)
            chain.extend(resolved.jumps)
        else:
            before = ",".join(_hop_text(h) for h in hops[:index])
            resolved = resolve_host(spec, config, local, depth + 1, jump_preset=before,
                                    notes=notes)
        chain.append(replace(resolved, jumps=(), proxy_jump=None))
    return tuple(chain)


def _hop_text(hop: JumpHop) -> str:
    host = f"[{hop.host}]" if ":" in hop.host else hop.host
    return (f"{hop.user}@" if hop.user else "") + host + (f":{hop.port}" if hop.port else "")


def _first_existing(paths: list[str]) -> Optional[str]:
    """ssh tries every IdentityFile and skips those that do not exist; ddpcheck loads the
    first that exists (None: ssh-agent and the default keys)."""
    for path in paths:
        if os.path.exists(path):
            return path
    return None
