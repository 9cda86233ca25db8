"""known_hosts read once per run: one linear parse per file, shared by every connection.

Runs on the launcher. paramiko's ``SSHClient.load_system_host_keys`` parses the whole file for
every client, and its ``HostKeys.load`` is itself quadratic in the file's length (each line is
checked against all earlier ones): with a cluster-wide ``/etc/ssh/ssh_known_hosts`` of 1,024
lines, 1,000 connections spent minutes there. Here a file is parsed once into a dict (name ->
keys) and re-read only when it changes (its inode, size or mtime); each connection gets just
its own host's keys (``fill``).

Matching is paramiko's: a host is looked up by its exact name (``[address]:port`` off port 22)
or a hashed ``|1|salt|hash`` name; patterns (``*``, ``?``, ``!``) are not expanded, as in
paramiko. Markers: ``@revoked`` keys are refused (``revoked``; paramiko skips those lines, so
a revoked key was not refused before), ``@cert-authority`` lines are skipped as paramiko does
(it has no host certificates). A line whose key is not base64 is an error naming the file and
line (paramiko fails the whole file the same way); a key type paramiko cannot load is skipped.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
import threading
from dataclasses import dataclass, field
from typing import Optional

_lock = threading.Lock()
_cache: dict[str, "KnownHosts"] = {}


class KnownHostsError(ValueError):
    """A known_hosts line that cannot be read (the message names the file and line)."""


@dataclass
class KnownHosts:
    """One parsed known_hosts file."""

    path: str
    signature: tuple = ()
    plain: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # name -> keys
    hashed: list[tuple[bytes, bytes, str, str]] = field(default_factory=list)
    revoked: set[tuple[str, str]] = field(default_factory=set)  # (key type, base64)
    lines: int = 0

    def lookup(self, name: str) -> list[tuple[str, str]]:
        """The (key type, base64 key) pairs recorded for ``name``, in file order (plain names
        first, then hashed ones: one HMAC per hashed line, as OpenSSH does per connection)."""
        found = list(self.plain.get(name, ()))
        if self.hashed:
            encoded = name.encode()
            for salt, digest, keytype, key in self.hashed:
                if hmac.compare_digest(hmac.digest(salt, encoded, "sha1"), digest):
                    found.append((keytype, key))
        return found

    def add(self, name: str, keytype: str, key: str) -> None:
        """Record a key appended to the file by this process (accept-new), and take the file's
        new state as parsed, so the append does not cost a re-parse."""
        self.plain.setdefault(name, []).append((keytype, key))
        try:
            self.signature = _signature(self.path)
        except OSError:
            pass


def _signature(path: str) -> tuple:
    stat = os.stat(path)
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns)


def load(path: str) -> Optional[KnownHosts]:
    """The parsed file at ``path`` (None when there is none), parsed again only when it
    changed since. Raises OSError when it cannot be read, KnownHostsError for a bad line."""
    try:
        signature = _signature(path)
    except FileNotFoundError:
        return None
    with _lock:
        cached = _cache.get(path)
        if cached is not None and cached.signature == signature:
            return cached
        with open(path, "rb") as handle:
            data = handle.read()
        parsed = parse(data.decode("utf-8", "replace"), path)
        parsed.signature = signature
        _cache[path] = parsed
        return parsed


def remember(path: str, name: str, keytype: str, key: str) -> None:
    """A key this process appended to ``path``: add it to the parsed copy (if any)."""
    with _lock:
        cached = _cache.get(path)
        if cached is not None:
            cached.add(name, keytype, key)


def parse(text: str, path: str = "known_hosts") -> KnownHosts:
    """One pass over the file's lines into a dict; linear in its length."""
    table = KnownHosts(path)
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        marker = ""
        if fields[0].startswith("@"):
            marker, fields = fields[0], fields[1:]
        if len(fields) < 3:
            continue  # paramiko skips a line with too few fields, so do we
        names, keytype, key = fields[0], fields[1], fields[2]
        try:
            base64.b64decode(key.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError):
            raise KnownHostsError(f"{path} line {number}: the key of {names!r} is not "
                                  f"base64") from None
        table.lines += 1
        if marker == "@revoked":
            table.revoked.add((keytype, key))
            continue
        if marker:
            continue  # @cert-authority (or an unknown marker): skipped, as paramiko does
        for name in names.split(","):
            if name.startswith("|1|"):
                parts = name[3:].split("|")
                try:
                    salt, digest = (base64.b64decode(p, validate=True) for p in parts)
                except (ValueError, binascii.Error):
                    continue  # a malformed hashed name matches nothing (paramiko: the same)
                table.hashed.append((salt, digest, keytype, key))
            elif name:
                table.plain.setdefault(name, []).append((keytype, key))
    return table


def fill(host_keys, tables: list[Optional[KnownHosts]], name: str) -> None:
    """Add ``name``'s keys from ``tables`` (in order: the system file first) to a paramiko
    ``HostKeys``; the first key of each type wins, as with paramiko's own lookup."""
    import paramiko

    seen: set[str] = set()
    for table in tables:
        if table is None:
            continue
        for keytype, key in table.lookup(name):
            if keytype in seen:
                continue
            try:
                pkey = paramiko.PKey.from_type_string(keytype, base64.b64decode(key))
            except Exception:  # noqa: BLE001 - paramiko's UnknownKeyType is a bare Exception
                continue  # a key type paramiko cannot load: skipped, as paramiko does
            seen.add(keytype)
            host_keys.add(name, keytype, pkey)


def is_revoked(tables: list[Optional[KnownHosts]], keytype: str, key: str) -> Optional[str]:
    """The file that marks this key @revoked, or None."""
    for table in tables:
        if table is not None and (keytype, key) in table.revoked:
            return table.path
    return None
