"""Private places on shared machines: may this directory be used, and files opened without
following links another user planted.

Runs everywhere: on the launcher (report files, known_hosts), in the host agent (workdir, run
directory), in ranks and the in-job ``Monitor`` (heartbeat folder), in ``ddpcheck hang``'s host
scan (reading heartbeats and Flight Recorder dumps). Standard library only.

The rule is OpenSSH's StrictModes: a directory we run from or write into must be ours (owned by
the user running ddpcheck) and writable by nobody else (no group or other write bit), and every
directory above it must be owned by root or by us and not writable by others, except a sticky
one such as ``/tmp`` (there, others cannot rename or remove what is ours). A symbolic link on
the way counts only when root or we own it. ``place_problem`` is that rule as a pure function
of ``lstat`` results; the functions below it do the I/O.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from dataclasses import dataclass
from typing import Optional, Sequence

UID_TOKEN = "{uid}"  # in a workdir: the numeric user id on the host
_OTHERS_WRITE = stat.S_IWGRP | stat.S_IWOTH

ADVICE = ("another user could put code or links there that would run or write as you; remove "
          "it, or choose another place owned by you and writable only by you (ddpcheck follows "
          "OpenSSH StrictModes)")


class UnsafePlace(PermissionError):
    """A directory or file another user controls: refused, with the reason as its message."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EPERM, message)

    def __str__(self) -> str:
        return str(self.strerror)


@dataclass(frozen=True)
class Entry:
    """What ``lstat`` says of one path (the link itself, never its target)."""

    path: str
    uid: int
    mode: int  # st_mode: type and permission bits
    owner: str = ""  # the owner's name, when known (for messages)

    @property
    def who(self) -> str:
        return f"{self.owner} (uid {self.uid})" if self.owner else f"uid {self.uid}"

    def describe(self) -> str:
        return f"owned by {self.who}, mode {stat.S_IMODE(self.mode):04o}"


def expand_workdir(template: str, uid: int) -> str:
    """The workdir on a host: ``{uid}`` replaced by the user's numeric id there."""
    return template.replace(UID_TOKEN, str(uid))


# -- the rule (pure) ---------------------------------------------------------------------------

def ancestor_problem(entry: Entry, uid: int) -> Optional[str]:
    """Why a directory (or link) above the place lets another user replace what is below it."""
    if entry.uid not in (0, uid):
        return f"{entry.path} is {entry.describe()}"
    if stat.S_ISLNK(entry.mode):
        return None  # root's or ours: nobody else can point it elsewhere
    if not stat.S_ISDIR(entry.mode):
        return f"{entry.path} is not a directory"
    if entry.mode & _OTHERS_WRITE and not entry.mode & stat.S_ISVTX:
        return f"{entry.path} is {entry.describe()}: writable by others and not sticky"
    return None


def place_problem(target: Entry, ancestors: Sequence[Entry], uid: int,
                  what: str = "directory") -> Optional[str]:
    """None: ``target`` (a directory) may be used by ``uid``; else why it is refused.

    ``target`` must be a real directory (not a link), owned by ``uid``, without group or other
    write; every entry of ``ancestors`` must pass ``ancestor_problem``."""
    if stat.S_ISLNK(target.mode):
        return (f"{what} {target.path} is a symbolic link ({target.describe()}): refused; "
                f"{ADVICE}")
    if not stat.S_ISDIR(target.mode):
        return f"{what} {target.path} is not a directory ({target.describe()})"
    if target.uid != uid:
        return (f"{what} {target.path} is {target.describe()}, not by you (uid {uid}): "
                f"refused; {ADVICE}")
    if target.mode & _OTHERS_WRITE:
        return (f"{what} {target.path} is {target.describe()}: writable by group or others, "
                f"refused; {ADVICE}")
    for entry in ancestors:
        problem = ancestor_problem(entry, uid)
        if problem:
            return f"{what} {target.path} is not private: {problem}; {ADVICE}"
    return None


def link_problem(link: Entry, uid: int) -> Optional[str]:
    """A symbolic link at a path we write to is followed only when root or we made it."""
    if stat.S_ISLNK(link.mode) and link.uid not in (0, uid):
        return (f"{link.path} is a symbolic link {link.describe()}, planted by another user: "
                f"refused, nothing was written through it")
    return None


# -- lstat and the walk up (I/O) ---------------------------------------------------------------

def _owner_name(uid: int) -> str:
    try:
        import pwd

        return pwd.getpwuid(uid).pw_name
    except (ImportError, KeyError):
        return ""


def lstat_entry(path: str) -> Entry:
    info = os.lstat(path)
    return Entry(path, info.st_uid, info.st_mode, _owner_name(info.st_uid))


def ancestors_of(path: str) -> list[str]:
    """Every directory above ``path`` as given and above its real location, top first."""
    found: list[str] = []
    for full in (os.path.abspath(path), os.path.realpath(path)):
        parent = os.path.dirname(full)
        chain = []
        while True:
            chain.append(parent)
            up = os.path.dirname(parent)
            if up == parent:
                break
            parent = up
        found += [p for p in reversed(chain) if p not in found]
    return found


def check_place(path: str, uid: Optional[int] = None, what: str = "directory") -> Optional[str]:
    """``place_problem`` for the directory at ``path`` as the file system has it now."""
    uid = os.geteuid() if uid is None else uid
    try:
        given = lstat_entry(path)
        ancestors = [lstat_entry(p) for p in ancestors_of(path)]
        target = given
        if stat.S_ISLNK(given.mode):  # judged as a link above, then where it points
            if given.uid not in (0, uid):
                return place_problem(given, ancestors, uid, what)
            ancestors.append(given)
            target = lstat_entry(os.path.realpath(path))
    except OSError as exc:
        return f"cannot inspect {what} {path}: {exc.strerror or exc}"
    return place_problem(target, ancestors, uid, what)


def make_private_dir(path: str, what: str = "directory") -> str:
    """Create ``path`` (0700, parents as the umask gives) unless it exists, then check it.

    Raises UnsafePlace when it is not private (``place_problem``), OSError when it cannot be
    made. Returns its real path (a link root or we made there is followed)."""
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        os.makedirs(parent, exist_ok=True)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass  # judged below: made by us earlier, or by someone else
    problem = check_place(path, what=what)
    if problem:
        raise UnsafePlace(problem)
    return os.path.realpath(path)


def enter_private_dir(path: str, what: str = "workdir") -> str:
    """``make_private_dir``, then make it the current directory through a descriptor opened
    without following links, so what was checked is where we are."""
    path = make_private_dir(path, what)
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags)
    try:
        info = os.fstat(fd)
        if info.st_uid != os.geteuid() or info.st_mode & _OTHERS_WRITE:
            raise UnsafePlace(f"{what} {path} changed while it was checked")
        os.fchdir(fd)
    finally:
        os.close(fd)
    return path


def private_run_dir(parent: str, prefix: str) -> str:
    """A new directory with an unpredictable name in ``parent`` (``mkdtemp``: 0700, O_EXCL)."""
    return tempfile.mkdtemp(prefix=prefix + "-", dir=parent)


# -- files (I/O) -------------------------------------------------------------------------------

def read_owned_file(path: str, owners: Sequence[int], limit: int) -> Optional[bytes]:
    """The bytes of a regular file owned by one of ``owners``, opened without following a
    link and without blocking (a FIFO planted in its place cannot hang us); None otherwise or
    when it is larger than ``limit``."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid not in owners or info.st_size > limit:
            return None
        chunks, left = [], limit + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
        return data if len(data) <= limit else None
    except OSError:
        return None
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def output_target(path: str) -> str:
    """Where a file written at ``path`` really goes: ``path`` itself, or the target of a link
    root or we made there. Raises UnsafePlace for a link another user planted."""
    try:
        link = lstat_entry(path)
    except FileNotFoundError:
        return path
    problem = link_problem(link, os.geteuid())
    if problem:
        raise UnsafePlace(problem)
    return os.path.realpath(path) if stat.S_ISLNK(link.mode) else path


def write_atomically(path: str, data: bytes) -> str:
    """Write ``data`` to ``path`` so that a reader never sees half of it and nothing is
    written through a link another user planted: a new temporary file (O_EXCL, unpredictable
    name) in the target's directory, then a rename over the target (which replaces a link,
    never writes through it). Mode as the umask gives. Returns the path written."""
    target = output_target(path)
    folder = os.path.dirname(os.path.abspath(target))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", suffix=".tmp",
                               dir=folder)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            os.fchmod(handle.fileno(), 0o666 & ~_umask())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return target


def open_append(path: str, mode: int = 0o600) -> int:
    """A descriptor to append to ``path`` (created ``mode`` when missing), refusing a link
    another user planted there (``output_target``) and never following one made meanwhile."""
    target = output_target(path)
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
    return os.open(target, flags, mode)

