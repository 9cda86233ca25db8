"""Open files for a run of many hosts, checked before the first connection (launcher side).

Each SSH connection holds a socket for as long as its host's remote work runs (a preflight
keeps one per host until the ranks end: closing it hangs up the host's agent, by design), and
its running command a pipe (two descriptors: paramiko's ``Channel.fileno``, which one thread
waits on for every host with epoll, so descriptors past 1,024 are fine), and
each connection in its handshake briefly holds a few more (the identity and known_hosts files,
the agent socket). ``open_files_needed`` is that budget; ``ensure_open_files`` raises the soft
``ulimit -n`` up to the hard one when the budget asks for it, and otherwise stops the run before
anything starts with a message that says what to do (instead of ``Too many open files`` on host
700 of 1,000).
"""

from __future__ import annotations

import resource
from typing import Callable, Optional

from ..model.errors import DdpcheckError

PER_HOST = 3  # the connection's socket, and the pipe its running channel is waited on by
PER_HANDSHAKE = 4  # socket, key file, known_hosts, agent socket while a connection is made
RESERVE = 64  # the launcher's own files: stdio, report files, Python's imports, pipes


def open_files_needed(hosts: int, fanout: int) -> int:
    return RESERVE + PER_HOST * hosts + PER_HANDSHAKE * min(fanout, hosts)


def ensure_open_files(hosts: int, fanout: int,
                      getrlimit: Callable = resource.getrlimit,
                      setrlimit: Callable = resource.setrlimit) -> Optional[str]:
    """Raise the soft limit when needed and allowed; a note of what was done (or None).
    Raises DdpcheckError when even the hard limit is too low."""
    needed = open_files_needed(hosts, fanout)
    soft, hard = getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return None
    if hard == resource.RLIM_INFINITY or hard >= needed:
        setrlimit(resource.RLIMIT_NOFILE, (needed if hard == resource.RLIM_INFINITY
                                           else max(needed, min(hard, needed * 2)), hard))
        return f"raised the open-file limit (ulimit -n) from {soft} to what {hosts} hosts need"
    raise DdpcheckError(
        f"{hosts} hosts need about {needed} open files (a connection and a pipe per host while its "
        f"work runs, plus {fanout} handshakes at once), but ulimit -n allows {soft} (hard limit "
        f"{hard}): raise the hard limit (limits.conf nofile, or systemd LimitNOFILE) and run "
        f"'ulimit -n {needed}', or check fewer hosts at once")
