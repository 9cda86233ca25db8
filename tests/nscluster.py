"""A real multi-host cluster on one machine, built from Linux network namespaces.

Every host is a network namespace (``lo`` up, ``eth0`` = one end of a veth pair whose other end
is a port of a bridge in the root namespace) plus a persistent UTS namespace carrying its own
hostname (``h1``, ``h2``...), and runs its own ``sshd`` (openssh-server) inside both, so that a
process started through ssh sees the host's network and ``hostname``.  The bridge has
``10.213.<octet>.254/24`` in the root namespace, so a launcher there reaches every host
directly, and the hosts reach each other over the bridge.  Hosts have no default route: they can
reach only each other and the root namespace's bridge address.

Up to 253 hosts share one /24 (host i at ``10.213.<octet>.i``); more get the smallest larger
block of 10.213.0.0/16 that holds them (host i at the block's address + i, the bridge at its
last address but one: ``10.213.7.254`` for ``10.213.4.0/22``).  A Linux bridge takes at most
1,023 ports, so past that (or past ``bridge_ports``, which a test lowers to cover this) the
hosts are spread over several bridges, one L2 network: every further bridge is joined to the
first by a veth pair (a trunk), and the bridge address sits on the first.  At that size two
kernel limits shared by every namespace are raised for the cluster's life and set back by
``stop()``: the neighbour table (``net.ipv4.neigh.default.gc_thresh3``, 1,024 entries) and the
per-CPU receive backlog (``net.core.netdev_max_backlog``, 1,000 packets, which a broadcast on a
bridge of more ports overflows: ``_raise_kernel_limits``).  Hosts of a cluster past 253 get no
IPv6 link-local address (``addrgenmode none``), which keeps their links quiet.

Standard library only; the work is done by ``ip``, ``tc``, ``iptables``, ``unshare``,
``nsenter``, ``ssh-keygen`` and ``/usr/sbin/sshd``.  Needs root.

Naming (unique per instance, so two runs or a stale run never collide; ``<tag>`` is
``<pid>x<k>`` with ``k`` a per-process instance counter):

* netns ``ddpc<tag>h<i>``, UTS namespace file ``/run/ddpc-uts/ddpc<tag>h<i>``;
* bridge ``dcb<tag>`` (further bridges ``dcb<tag>b<k>``, joined by the veth pair
  ``dct<tag>p<k>`` / ``dct<tag>q<k>``), bridge-side veth of host i ``dcv<tag>h<i>`` (all <= 15
  chars);
* ``/etc/netns/ddpc<tag>h<i>/hosts``: ``ip netns exec`` bind-mounts it over ``/etc/hosts`` for
  the host's sshd and everything under it (and for ``run_in``), so every host resolves every
  host's name (h1..hN) to its bridge address.  The real ``/etc/hosts`` is never touched.
* cgroups: ``ip netns exec`` mounts a fresh sysfs on ``/sys``, which hides ``/sys/fs/cgroup``;
  a host's processes get this machine's CPU cgroup hierarchies mounted back there (a tmpfs, the
  v1 hierarchies with the ``cpu`` controller, the cgroup2 tree), as a container runtime mounts
  cgroupfs in a container, so that a rank reads its own CPU quota's accounting.

``start()`` first removes, best effort, leftovers of dead runs (netns, UTS files, /etc/netns
dirs, bridges, veths, iptables rules) whose creating pid no longer exists.

PATH in ssh sessions: each sshd_config has ``SetEnv PATH=<the PATH of the process that built
the cluster>`` (and ``HOME=/root`` comes from the passwd entry), so a command run over ssh finds
the same programs as the test process.  The login shell (bash) may still prepend entries from
root's ``~/.bashrc`` (Debian's bash reads it for ssh sessions); to be independent of that, run
interpreters by absolute path (``sys.executable``), as the tests do.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import dataclasses
import fcntl
import functools
import ipaddress
import itertools
import os
import pathlib
import re
import shlex
import shutil
import signal
import socket
import subprocess
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Iterable, Optional, Union

__all__ = ["NsHost", "NamespaceCluster", "ClusterError", "cluster_available", "cleanup_stale"]

NETNS_PREFIX = "ddpc"  # netns / UTS file / /etc/netns dir names: ddpc<pid>x<k>h<i>
BRIDGE_PREFIX = "dcb"  # bridge: dcb<pid>x<k>
VETH_PREFIX = "dcv"  # bridge-side veth: dcv<pid>x<k>h<i>
UTS_DIR = pathlib.Path("/run/ddpc-uts")
ETC_NETNS = pathlib.Path("/etc/netns")
SUBNET_PREFIX = "10.213"
IFNAMSIZ = 15
SSHD_CANDIDATES = ("/usr/sbin/sshd", "/usr/bin/sshd", "/sbin/sshd")
IPT_COMMENT_PREFIX = "ddpc-cluster-"
# BR_MAX_PORTS is 1,024 in the kernel and port number 0 is never used
MAX_BRIDGE_PORTS = 1023
MAX_HOSTS = 4093  # a /20: 4,096 addresses less the network, broadcast and bridge addresses
BUILD_WORKERS = 8  # hosts built at once: the work is waiting on ip, unshare and ssh-keygen
SYSCTL = pathlib.Path("/proc/sys/net")

_NETNS_RE = re.compile(r"^ddpc(\d+)x(\d+)h\d+$")
_PROBE_NETNS_RE = re.compile(r"^ddpc(\d+)xprobe$")
_IFACE_RE = re.compile(r"^dc[bvt](\d+)x\d+([hbpq]\d+)?$")
_IPT_RE = re.compile(r"ddpc-cluster-(\d+)x\d+")

_instance_counter = itertools.count()
_alloc_lock = threading.Lock()
_live_clusters: "weakref.WeakSet[NamespaceCluster]" = weakref.WeakSet()


class ClusterError(RuntimeError):
    """Building, changing or tearing down the namespace cluster failed."""


@dataclass(frozen=True)
class NsHost:
    name: str  # its hostname inside its UTS namespace, e.g. "h1"
    address: str  # its IPv4 address on the bridge, e.g. "10.213.7.1"
    netns: str  # netns name
    iface: str  # its interface name inside the netns ("eth0")
    host_key_pub: str  # "ssh-ed25519 AAAA..." public host key line (no comment)


HostRef = Union[NsHost, str, int]


# --------------------------------------------------------------------------------------------
# small helpers


def _run(argv: list[str], check: bool = True, timeout: float = 30, **kw) -> subprocess.CompletedProcess:
    """Run a helper command, capturing output; raise ClusterError with its stderr on failure."""
    try:
        cp = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                            stdin=subprocess.DEVNULL, **kw)
    except FileNotFoundError as e:
        raise ClusterError(f"command not found: {argv[0]} ({e})") from e
    except subprocess.TimeoutExpired as e:
        raise ClusterError(f"command timed out after {timeout}s: {' '.join(argv)}") from e
    if check and cp.returncode != 0:
        msg = (cp.stderr or cp.stdout or "").strip()
        raise ClusterError(f"command failed (exit {cp.returncode}): {' '.join(argv)}: {msg}")
    return cp


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@functools.lru_cache(maxsize=1)
def _cgroup_remount() -> list[str]:
    """``sh -c SCRIPT sh`` that mounts this machine's CPU cgroup hierarchies back under
    /sys/fs/cgroup and then execs its arguments (so the pid stays the program's); [] when there
    are none. Mount failures are ignored: the program then sees no cgroups, as before."""
    with open("/proc/self/mountinfo", encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    steps = []
    for line in lines:
        fields = line.split()
        if "-" not in fields:
            continue
        dash = fields.index("-")
        point, fstype = fields[4], fields[dash + 1]
        options = [o for o in fields[dash + 3].split(",") if o not in ("rw", "ro")]
        if fields[3] != "/" or not point.startswith("/sys/fs/cgroup"):
            continue
        if point == "/sys/fs/cgroup" and fstype == "tmpfs":
            steps.insert(0, "mount -t tmpfs -o mode=755 cgroup /sys/fs/cgroup")
        elif (fstype == "cgroup" and "cpu" in options) or fstype == "cgroup2":
            opts = ",".join(options) or "defaults"
            steps.append(f"mkdir -p {shlex.quote(point)} && "
                         f"mount -t {fstype} -o {shlex.quote(opts)} cgroup {shlex.quote(point)}")
    if not steps:
        return []
    script = "; ".join(f"{{ {step}; }} 2>/dev/null" for step in steps) + '; exec "$@"'
    return ["sh", "-c", script, "sh"]


def _find_sshd() -> Optional[str]:
    for cand in SSHD_CANDIDATES:
        if os.access(cand, os.X_OK):
            return cand
    return shutil.which("sshd")


def _netns_list() -> list[str]:
    cp = _run(["ip", "netns", "list"], check=False)
    # lines look like "name" or "name (id: 3)"
    return [line.split()[0] for line in cp.stdout.splitlines() if line.strip()]


def _netns_pids(ns: str) -> list[int]:
    cp = _run(["ip", "netns", "pids", ns], check=False)
    return [int(x) for x in cp.stdout.split() if x.isdigit()]


def _link_names() -> list[str]:
    cp = _run(["ip", "-o", "link", "show"], check=False)
    names = []
    for line in cp.stdout.splitlines():
        parts = line.split(":", 2)
        if len(parts) >= 2:
            names.append(parts[1].strip().split("@")[0])
    return names


def _link_exists(name: str) -> bool:
    return os.path.exists(f"/sys/class/net/{name}")


def _is_mountpoint(path: pathlib.Path) -> bool:
    target = str(path)
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 4 and fields[4].replace("\\040", " ") == target:
                    return True
    except OSError:
        pass
    return False


def _umount(path: pathlib.Path) -> None:
    # umount until nothing is mounted there (a path can be stacked); lazily, never fails loudly
    for _ in range(4):
        if not _is_mountpoint(path):
            break
        _run(["umount", "-l", str(path)], check=False)


def _kill_pids(pids: Iterable[int], sig: int = signal.SIGKILL) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _pids_in_namespaces(namespaces: list[str]) -> list[int]:
    """Pids of the processes in any of the given netns, from one pass over /proc (``ip netns
    pids`` makes that pass once per namespace, too slow at 1,000 hosts)."""
    inodes = set()
    for ns in namespaces:
        with contextlib.suppress(OSError):
            st = os.stat(f"/run/netns/{ns}")
            inodes.add((st.st_dev, st.st_ino))
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                st = os.stat(f"/proc/{entry}/ns/net")
                if (st.st_dev, st.st_ino) in inodes:
                    pids.append(int(entry))
    return pids


def _kill_netns_processes(namespaces: list[str], deadline_s: float = 10.0) -> list[int]:
    """SIGKILL everything in the given netns until none is left; returns survivors (if any)."""
    end = time.monotonic() + deadline_s
    left: list[int] = []
    while True:
        left = [p for p in _pids_in_namespaces(namespaces) if p != os.getpid()]
        if not left or time.monotonic() > end:
            return left
        _kill_pids(left)
        time.sleep(0.05)


def _ensure_shared_dir(path: pathlib.Path) -> None:
    """Make ``path`` a shared mount point (as iproute2 does for /run/netns), so that unmounting a
    namespace file here also propagates into the mount namespaces that ``ip netns exec`` creates
    (they are made slaves of /), and so does not keep namespaces alive there."""
    path.mkdir(parents=True, exist_ok=True)
    if not _is_mountpoint(path):
        _run(["mount", "--bind", str(path), str(path)], check=False)
    _run(["mount", "--make-shared", str(path)], check=False)


@contextlib.contextmanager
def _global_lock():
    """Serialise subnet allocation across threads and processes."""
    UTS_DIR.mkdir(parents=True, exist_ok=True)
    with _alloc_lock:
        fd = os.open(str(UTS_DIR / ".lock"), os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def _used_ipv4_networks() -> list[ipaddress.IPv4Network]:
    nets: list[ipaddress.IPv4Network] = []
    cp = _run(["ip", "-4", "-o", "addr", "show"], check=False)
    for m in re.finditer(r"\binet (\d+\.\d+\.\d+\.\d+/\d+)", cp.stdout):
        with contextlib.suppress(ValueError):
            nets.append(ipaddress.ip_interface(m.group(1)).network)
    cp = _run(["ip", "-4", "route", "show", "table", "all"], check=False)
    for line in cp.stdout.splitlines():
        tok = line.split()
        if not tok:
            continue
        dst = tok[1] if tok[0] in ("local", "broadcast", "unicast", "multicast") and len(tok) > 1 else tok[0]
        if dst == "default":
            continue
        with contextlib.suppress(ValueError):
            nets.append(ipaddress.ip_network(dst, strict=False))
    return nets


def _iptables_forward_rules() -> list[str]:
    if not shutil.which("iptables"):
        return []
    cp = _run(["iptables", "-w", "5", "-S", "FORWARD"], check=False)
    return cp.stdout.splitlines() if cp.returncode == 0 else []


def _br_netfilter_active() -> bool:
    try:
        return pathlib.Path("/proc/sys/net/bridge/bridge-nf-call-iptables").read_text().strip() == "1"
    except OSError:
        return False


def network_prefix(n_hosts: int) -> int:
    """The prefix length of the cluster's network: a /24 up to 253 hosts, else the smallest
    block that holds the hosts, the network and broadcast addresses and the bridge's."""
    prefix = 24
    while (1 << (32 - prefix)) - 3 < n_hosts:
        prefix -= 1
    return prefix


def candidate_networks(prefix: int) -> list[ipaddress.IPv4Network]:
    """Every block of that size in 10.213.1.0-10.213.250.255 (the range a /24 was always
    picked from), in order."""
    span = max(1, 1 << (24 - prefix))  # /24 blocks per network
    first = span if span > 1 else 1
    return [ipaddress.ip_network(f"{SUBNET_PREFIX}.{o}.0/{prefix}")
            for o in range(first, 251 - span + 1, span)]


def bridge_layout(n_hosts: int, ports: int = MAX_BRIDGE_PORTS) -> list[int]:
    """Hosts per bridge, for bridges of at most ``ports`` ports: the first bridge also holds a
    trunk port to each further bridge, each further one a trunk port back."""
    if ports < 3 and n_hosts > ports:
        raise ValueError(f"bridges of {ports} port(s) cannot be joined into {n_hosts} hosts")
    bridges = 1
    while bridges * ports - 2 * (bridges - 1) < n_hosts:
        bridges += 1
    if bridges - 1 >= ports:
        raise ValueError(f"{n_hosts} hosts need {bridges} bridges: more trunks than the first "
                         f"bridge's {ports} ports")
    layout, left = [], n_hosts
    for index in range(bridges):
        take = min(left, ports - (bridges - 1 if index == 0 else 1 if bridges > 1 else 0))
        layout.append(take)
        left -= take
    return layout


def cleanup_stale() -> list[str]:
    """Best effort: remove namespaces, UTS files, /etc/netns dirs, bridges, veths and iptables
    rules left by clusters whose creating process is dead.  Returns what was removed."""
    removed: list[str] = []
    me = os.getpid()

    def dead(pid_s: str) -> bool:
        pid = int(pid_s)
        return pid != me and not _pid_alive(pid)

    stale_ns = []
    for ns in _netns_list():
        m = _NETNS_RE.match(ns) or _PROBE_NETNS_RE.match(ns)
        if m and dead(m.group(1)):
            stale_ns.append(ns)
    if stale_ns:
        _kill_netns_processes(stale_ns, deadline_s=5.0)
        for ns in stale_ns:
            _run(["ip", "netns", "del", ns], check=False)
            removed.append(f"netns {ns}")
    if UTS_DIR.is_dir():
        for f in UTS_DIR.iterdir():
            m = _NETNS_RE.match(f.name)
            if m and dead(m.group(1)):
                _umount(f)
                with contextlib.suppress(OSError):
                    f.unlink()
                removed.append(f"uts {f}")
    if ETC_NETNS.is_dir():
        for d in ETC_NETNS.iterdir():
            m = _NETNS_RE.match(d.name)
            if m and dead(m.group(1)):
                shutil.rmtree(d, ignore_errors=True)
                removed.append(f"etc {d}")
    for name in _link_names():
        m = _IFACE_RE.match(name)
        if m and dead(m.group(1)) and _link_exists(name):
            _run(["ip", "link", "del", name], check=False)
            removed.append(f"link {name}")
    for rule in _iptables_forward_rules():
        m = _IPT_RE.search(rule)
        if m and rule.startswith("-A ") and dead(m.group(1)):
            _run(["iptables", "-w", "5", "-D"] + _split_rule(rule[3:]), check=False)
            removed.append(f"iptables {rule}")
    return removed


def _split_rule(rule: str) -> list[str]:
    return shlex.split(rule)


@functools.lru_cache(maxsize=1)
def cluster_available() -> tuple[bool, str]:
    """(True, "ok") when a NamespaceCluster can be built here, else (False, reason)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return False, "namespace cluster needs root (euid 0)"
    missing = [t for t in ("ip", "unshare", "nsenter", "ssh-keygen", "mount", "umount") if not shutil.which(t)]
    if _find_sshd() is None:
        missing.append("sshd (openssh-server)")
    if missing:
        return False, "missing tools: " + ", ".join(missing)
    probe = f"{NETNS_PREFIX}{os.getpid()}xprobe"
    try:
        cp = _run(["ip", "netns", "add", probe], check=False, timeout=10)
        if cp.returncode != 0:
            return False, f"cannot create a network namespace: {cp.stderr.strip()}"
        cp = _run(["ip", "netns", "exec", probe, "unshare", "--uts", "hostname", "ddpcprobe"], check=False, timeout=10)
        if cp.returncode != 0:
            return False, f"cannot create a UTS namespace inside a netns: {cp.stderr.strip()}"
    except ClusterError as e:
        return False, str(e)
    finally:
        with contextlib.suppress(Exception):
            _run(["ip", "netns", "del", probe], check=False, timeout=10)
    return True, "ok"


@atexit.register
def _stop_all_at_exit() -> None:  # safety net for an interpreter that exits without stop()
    for c in list(_live_clusters):
        if c.pid != os.getpid():  # a forked child exiting normally must not tear down our cluster
            continue
        with contextlib.suppress(Exception):
            c.stop()


# --------------------------------------------------------------------------------------------


class NamespaceCluster:
    """``n_hosts`` namespace hosts h1..hN, each with its own sshd (none with ``sshd=False``:
    the in-job tests, where nothing may reach a host by ssh); see the module docstring.

    Use ``start()`` / ``stop()`` (or ``with NamespaceCluster(...) as c:``).  After ``start()``:
    ``hosts``, ``identity_file`` (client key authorized for root everywhere), ``known_hosts``
    (every host by address and by name), ``ssh_config`` (``ssh -F`` file with a ``Host hN``
    entry per host), ``bridge``, ``gateway`` (the bridge address in the root namespace),
    ``subnet``.
    """

    def __init__(self, n_hosts: int, basedir: pathlib.Path, subnet_octet: int | None = None,
                 bridge_ports: int = MAX_BRIDGE_PORTS, sshd: bool = True):
        if not 1 <= n_hosts <= MAX_HOSTS:
            raise ValueError(f"n_hosts must be in 1..{MAX_HOSTS}, got {n_hosts}")
        if subnet_octet is not None and not 0 <= subnet_octet <= 255:
            raise ValueError(f"subnet_octet must be in 0..255, got {subnet_octet}")
        if not 1 <= bridge_ports <= MAX_BRIDGE_PORTS:
            raise ValueError(f"bridge_ports must be in 1..{MAX_BRIDGE_PORTS}, got {bridge_ports}")
        self.n_hosts = n_hosts
        self.sshd = sshd  # False: hosts with no sshd (in-job tests: nothing reaches them by ssh)
        self.prefix = network_prefix(n_hosts)
        self.layout = bridge_layout(n_hosts, bridge_ports)  # hosts per bridge
        self.basedir = pathlib.Path(basedir).absolute()
        self._requested_octet = subnet_octet
        self.pid = os.getpid()
        self.tag = f"{self.pid}x{next(_instance_counter)}"
        self.ns_prefix = f"{NETNS_PREFIX}{self.tag}h"  # every netns of this instance starts so
        self.bridge = f"{BRIDGE_PREFIX}{self.tag}"  # the first bridge: it has the address
        self.bridges = [self.bridge] + [f"{BRIDGE_PREFIX}{self.tag}b{k}"
                                        for k in range(1, len(self.layout))]
        for i in range(1, n_hosts + 1):
            for name in (self.bridges[-1], self._veth_name(i), self._trunk_names(
                    len(self.layout) - 1)[0]):
                if len(name) > IFNAMSIZ:
                    raise ClusterError(f"interface name {name!r} longer than {IFNAMSIZ} chars "
                                       f"(too many hosts or instances for pid {self.pid})")
        self.identity_file = self.basedir / "id_ed25519"
        self.known_hosts = self.basedir / "known_hosts"
        self.ssh_config = self.basedir / "ssh_config"
        self.authorized_keys = self.basedir / "authorized_keys"
        self.octet: Optional[int] = None
        self.subnet: Optional[str] = None
        self.gateway: Optional[str] = None
        self.hosts: list[NsHost] = []
        self._sshd: dict[str, subprocess.Popen] = {}
        self._ipt_rules: list[list[str]] = []
        self._created_ns: list[str] = []
        self._sysctl_restore: dict[str, tuple[str, str]] = {}  # sysctl -> (ours, before)
        self._started = False
        self._lock = threading.RLock()
        self._sshd_bin = _find_sshd() or "/usr/sbin/sshd"
        self.session_path = os.environ.get("PATH") or "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

    # ---- naming -------------------------------------------------------------------------------

    def _netns_name(self, i: int) -> str:
        return f"{self.ns_prefix}{i}"

    def _veth_name(self, i: int) -> str:
        return f"{VETH_PREFIX}{self.tag}h{i}"

    def _trunk_names(self, k: int) -> tuple[str, str]:
        """The veth pair joining bridge k to the first: its end there, its end on bridge k."""
        return f"dct{self.tag}p{k}", f"dct{self.tag}q{k}"

    def bridge_of(self, host: HostRef) -> str:
        """The bridge the host's veth is a port of."""
        index = self._index(host)
        for bridge, count in zip(self.bridges, self.layout):
            if index < count:
                return bridge
            index -= count
        raise IndexError(host)

    def _uts_file(self, ns: str) -> pathlib.Path:
        return UTS_DIR / ns

    def _hostdir(self, name: str) -> pathlib.Path:
        return self.basedir / "hosts" / name

    def _index(self, host: HostRef) -> int:
        """0-based index of a host given as NsHost, name ("h2") or 0-based int."""
        if isinstance(host, int):
            if not 0 <= host < len(self.hosts):
                raise IndexError(host)
            return host
        name = host.name if isinstance(host, NsHost) else host
        for idx, h in enumerate(self.hosts):
            if h.name == name or h.address == name:
                return idx
        raise KeyError(f"no host {name!r} in this cluster")

    def host(self, ref: HostRef) -> NsHost:
        """The current NsHost for a name, address, index or (possibly outdated) NsHost."""
        return self.hosts[self._index(ref)]

    def veth(self, host: HostRef) -> str:
        """Name of the host's bridge-side veth in the root namespace."""
        return self._veth_name(self._index(host) + 1)

    def uts_file(self, host: HostRef) -> pathlib.Path:
        return self._uts_file(self.host(host).netns)

    # ---- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> "NamespaceCluster":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def started(self) -> bool:
        return self._started

    def start(self) -> None:
        with self._lock:
            if self._started:
                return
            ok, reason = cluster_available()
            if not ok:
                raise ClusterError(f"namespace cluster unavailable: {reason}")
            try:
                self._start()
            except BaseException as e:
                with contextlib.suppress(Exception):
                    self.stop()
                if isinstance(e, ClusterError):
                    raise ClusterError(f"starting {self.n_hosts}-host namespace cluster {self.tag} failed: {e}") from e
                raise
            self._started = True

    def _start(self) -> None:
        _live_clusters.add(self)
        cleanup_stale()
        self.basedir.mkdir(parents=True, exist_ok=True)
        (self.basedir / "hosts").mkdir(exist_ok=True)
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        _ensure_shared_dir(UTS_DIR)

        # keys first (in parallel): client identity + one host key per host
        names = [f"h{i}" for i in range(1, self.n_hosts + 1)]
        for name in names:
            self._hostdir(name).mkdir(parents=True, exist_ok=True)
        self._keygen_many([self.identity_file] + [self._hostdir(n) / "ssh_host_ed25519_key" for n in names],
                          ["ddpc-client"] + [f"ddpc-{n}" for n in names])
        client_pub = self.identity_file.with_name(self.identity_file.name + ".pub").read_text().strip()
        self.authorized_keys.write_text(client_pub + "\n")
        os.chmod(self.authorized_keys, 0o600)

        with _global_lock():
            network = self._pick_network()
            self.octet = int(str(network.network_address).split(".")[2])
            self.subnet = str(network)
            self.gateway = str(network.broadcast_address - 1)
            for bridge in self.bridges:
                _run(["ip", "link", "add", bridge, "type", "bridge", "forward_delay", "0",
                      "stp_state", "0"])
            _run(["ip", "addr", "add", f"{self.gateway}/{self.prefix}", "dev", self.bridge])
            for bridge in self.bridges:
                _run(["ip", "link", "set", bridge, "up"])
        for k in range(1, len(self.bridges)):
            near, far = self._trunk_names(k)
            _run(["ip", "link", "add", near, "type", "veth", "peer", "name", far])
            _run(["ip", "link", "set", near, "master", self.bridge, "up"])
            _run(["ip", "link", "set", far, "master", self.bridges[k], "up"])
        self._raise_kernel_limits()

        self.hosts = []
        for i, name in enumerate(names, start=1):
            key = self._read_pub(self._hostdir(name) / "ssh_host_ed25519_key.pub")
            self.hosts.append(NsHost(name=name, address=str(network.network_address + i),
                                     netns=self._netns_name(i), iface="eth0", host_key_pub=key))
        hosts_file = self._hosts_file_text()
        with concurrent.futures.ThreadPoolExecutor(BUILD_WORKERS) as pool:
            list(pool.map(lambda ih: self._build_host(ih[0], ih[1], hosts_file),
                          enumerate(self.hosts, start=1)))
        self._maybe_open_forwarding()
        self.write_known_hosts()
        self._write_ssh_config()

        if not self.sshd:
            return
        for h in self.hosts:
            self._write_sshd_config(h)
            self._launch_sshd(h)
        # every sshd starts on the same cores: 15 s, and more for a large cluster
        deadline = time.monotonic() + max(15.0, 0.2 * self.n_hosts)
        for h in self.hosts:
            self._wait_sshd(h, deadline)

    def _build_host(self, i: int, h: NsHost, hosts_file: str) -> None:
        ns, veth = h.netns, self._veth_name(i)
        etc = ETC_NETNS / ns
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "hosts").write_text(hosts_file)
        _run(["ip", "netns", "add", ns])
        self._created_ns.append(ns)
        _run(["ip", "-n", ns, "link", "set", "lo", "up"])
        _run(["ip", "link", "add", veth, "type", "veth", "peer", "name", h.iface, "netns", ns])
        if self.n_hosts > 253:
            # no IPv6 link-local address, so no duplicate-address, router and listener
            # multicast as every link comes up: on one L2 network each such frame is copied to
            # every port, a million copies at 1,000 hosts
            _run(["ip", "-n", ns, "link", "set", h.iface, "addrgenmode", "none"])
            _run(["ip", "link", "set", veth, "addrgenmode", "none"])
        _run(["ip", "-n", ns, "addr", "add", f"{h.address}/{self.prefix}", "dev", h.iface])
        _run(["ip", "-n", ns, "link", "set", h.iface, "up"])
        _run(["ip", "link", "set", veth, "master", self.bridge_of(i - 1)])
        _run(["ip", "link", "set", veth, "up"])
        uts = self._uts_file(ns)
        uts.touch()
        # a persistent UTS namespace (bind-mounted at `uts`) carrying the hostname
        _run(["unshare", f"--uts={uts}", "hostname", h.name])

    def _pick_network(self) -> ipaddress.IPv4Network:
        used = _used_ipv4_networks()

        def free(net: ipaddress.IPv4Network) -> bool:
            return not any(net.overlaps(u) for u in used if u.prefixlen > 0)

        if self._requested_octet is not None:
            try:
                net = ipaddress.ip_network(f"{SUBNET_PREFIX}.{self._requested_octet}.0/{self.prefix}")
            except ValueError:
                raise ClusterError(f"subnet_octet {self._requested_octet} does not start a "
                                   f"/{self.prefix} (needed for {self.n_hosts} hosts)") from None
            if not free(net):
                raise ClusterError(f"subnet {net} is already in use on this machine (pass another "
                                   "subnet_octet)")
            return net
        candidates = candidate_networks(self.prefix)
        start = (self.pid * 7 + int(self.tag.split("x")[1]) * 31) % len(candidates)
        for k in range(len(candidates)):
            net = candidates[(start + k) % len(candidates)]
            if free(net):
                return net
        raise ClusterError(f"no free /{self.prefix} subnet left in {SUBNET_PREFIX}.0.0/16")

    def _raise_kernel_limits(self) -> None:
        """Two kernel limits, shared by every namespace, that a large cluster passes; raised
        for its life only where too low (never for a small one), set back by stop() unless
        someone changed them since.

        * The neighbour table (``ipv4/neigh/default/gc_thresh3``, 1,024 entries): one entry per
          host in the root namespace and one or more in each host's; past it new connections
          fail ("neighbour table overflow").
        * The per-CPU receive backlog (``core/netdev_max_backlog``, 1,000 packets): a broadcast
          (an ARP request) is queued to every port of the bridge at once, newest port first, so
          on a bridge of more ports than that the hosts added first never see it and never
          answer: the root namespace's ARP for h1 stays INCOMPLETE."""
        need = {"ipv4/neigh/default/gc_thresh2": 4 * self.n_hosts,
                "ipv4/neigh/default/gc_thresh3": 8 * self.n_hosts,
                "core/netdev_max_backlog": 4 * self.n_hosts}
        for name, value in need.items():
            path = SYSCTL / name
            with contextlib.suppress(OSError, ValueError):
                before = path.read_text().strip()
                if int(before) < value:
                    path.write_text(str(value))
                    self._sysctl_restore[name] = (str(value), before)

    def _hosts_file_text(self) -> str:
        lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
        lines += [f"{h.address}\t{h.name}" for h in self.hosts]
        return "\n".join(lines) + "\n"

    def _maybe_open_forwarding(self) -> None:
        """With br_netfilter, bridged frames go through iptables FORWARD; if its policy is not
        ACCEPT (docker sets DROP), let traffic within our bridge through, and remember the rule."""
        if not _br_netfilter_active() or not shutil.which("iptables"):
            return
        rules = _iptables_forward_rules()
        if "-P FORWARD ACCEPT" in rules:
            return
        self._add_forward_accept()

    def _add_forward_accept(self) -> None:
        for bridge in self.bridges:  # a frame between bridges goes through both
            rule = ["FORWARD", "-i", bridge, "-o", bridge, "-j", "ACCEPT",
                    "-m", "comment", "--comment", f"{IPT_COMMENT_PREFIX}{self.tag}"]
            _run(["iptables", "-w", "5", "-I"] + rule)
            self._ipt_rules.append(rule)

    def _keygen_many(self, paths: list[pathlib.Path], comments: list[str]) -> None:
        for begin in range(0, len(paths), 64):  # a batch at a time: 1,000 at once is a fork storm
            self._keygen_batch(paths[begin:begin + 64], comments[begin:begin + 64])

    def _keygen_batch(self, paths: list[pathlib.Path], comments: list[str]) -> None:
        procs = []
        for p, c in zip(paths, comments):
            for f in (p, p.with_name(p.name + ".pub")):
                with contextlib.suppress(FileNotFoundError):
                    f.unlink()
            procs.append((p, subprocess.Popen(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", c, "-f", str(p)],
                                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                              stderr=subprocess.STDOUT, text=True)))
        errors = []
        for p, proc in procs:
            out, _ = proc.communicate(timeout=30)
            if proc.returncode != 0:
                errors.append(f"ssh-keygen {p}: {out.strip()}")
        if errors:
            raise ClusterError("; ".join(errors))

    @staticmethod
    def _read_pub(path: pathlib.Path) -> str:
        return " ".join(path.read_text().split()[:2])

    def write_known_hosts(self) -> None:
        """(Re)write ``known_hosts`` from the hosts' current keys: one line by address, one by name."""
        lines = []
        for h in self.hosts:
            lines.append(f"{h.address} {h.host_key_pub}")
            lines.append(f"{h.name} {h.host_key_pub}")
        self.known_hosts.write_text("\n".join(lines) + "\n")

    def _write_ssh_config(self) -> None:
        common = [
            "  User root",
            f'  IdentityFile "{self.identity_file}"',
            "  IdentitiesOnly yes",
            f'  UserKnownHostsFile "{self.known_hosts}"',
            "  GlobalKnownHostsFile /dev/null",
            "  StrictHostKeyChecking yes",
            "  BatchMode yes",
            "  ConnectTimeout 5",
            "  LogLevel ERROR",
        ]
        out = []
        for h in self.hosts:
            out += [f"Host {h.name} {h.address}", f"  HostName {h.address}"] + common
        self.ssh_config.write_text("\n".join(out) + "\n")

    def ssh_argv(self, host: HostRef, *command: str) -> list[str]:
        """``ssh`` argv (OpenSSH client) that runs ``command`` as root on ``host``."""
        h = self.host(host)
        return ["ssh", "-F", str(self.ssh_config), h.name, *command]

    def _write_sshd_config(self, h: NsHost) -> None:
        d = self._hostdir(h.name)
        path_value = self.session_path.replace('"', "")
        cfg = f"""\
# generated by tests/nscluster.py for {h.name} ({h.netns})
ListenAddress {h.address}
Port 22
AddressFamily inet
HostKey "{d / 'ssh_host_ed25519_key'}"
PidFile "{d / 'sshd.pid'}"
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
AuthorizedKeysFile "{self.authorized_keys}"
MaxStartups 100
MaxSessions 50
LoginGraceTime 30
UseDNS no
PrintMotd no
PrintLastLog no
PermitUserEnvironment no
X11Forwarding no
LogLevel INFO
SetEnv "PATH={path_value}"
Subsystem sftp internal-sftp
"""
        (d / "sshd_config").write_text(cfg)

    def _launch_sshd(self, h: NsHost) -> None:
        d = self._hostdir(h.name)
        with contextlib.suppress(FileNotFoundError):
            (d / "sshd.pid").unlink()
        log = open(d / "sshd.log", "ab")
        try:
            # ip netns exec: enters the netns, makes a private mount ns with /sys for the netns
            # and /etc/netns/<ns>/hosts over /etc/hosts; nsenter: the host's UTS namespace.
            # Both exec, so the Popen pid is the sshd listener's pid.
            proc = subprocess.Popen(
                ["ip", "netns", "exec", h.netns, *_cgroup_remount(), "nsenter",
                 f"--uts={self._uts_file(h.netns)}", "--",
                 self._sshd_bin, "-D", "-e", "-f", str(d / "sshd_config")],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            log.close()
        self._sshd[h.name] = proc

    def _wait_sshd(self, h: NsHost, deadline: float) -> None:
        proc = self._sshd[h.name]
        last = ""
        # while 1,000 sshd start on two cores an answer takes seconds: a try given up early
        # leaves a session behind for sshd to serve, and another one follows
        patience = 0.5 if self.n_hosts <= 253 else 5.0
        while True:
            if proc.poll() is not None:
                raise ClusterError(f"sshd of {h.name} ({h.netns}) exited with {proc.returncode}: "
                                   f"{self._log_tail(h)}")
            try:
                with socket.create_connection((h.address, 22), timeout=patience) as s:
                    s.settimeout(2 * patience)
                    banner = s.recv(64)
                    if banner.startswith(b"SSH-"):
                        return
                    last = f"unexpected banner {banner!r}"
            except OSError as e:
                last = str(e)
            if time.monotonic() > deadline:
                neighbour = _run(["ip", "neigh", "show", h.address], check=False).stdout.strip()
                raise ClusterError(f"sshd of {h.name} at {h.address}:22 not accepting connections "
                                   f"({last}; neighbour entry: {neighbour or 'none'}); log: "
                                   f"{self._log_tail(h)}")
            time.sleep(0.02)

    def _log_tail(self, h: NsHost, n: int = 1500) -> str:
        try:
            return (self._hostdir(h.name) / "sshd.log").read_text(errors="replace")[-n:].strip()
        except OSError:
            return "(no log)"

    def sshd_pid(self, host: HostRef) -> Optional[int]:
        """Pid of the host's sshd listener, or None when it is not running."""
        p = self._sshd.get(self.host(host).name)
        return p.pid if p is not None and p.poll() is None else None

    def stop(self) -> None:
        """Kill every process in the namespaces, remove namespaces, veths, bridge, iptables
        rules and generated /etc/netns entries.  Safe to call twice and after a partial start."""
        with self._lock:
            namespaces = sorted(set(self._created_ns) | {n for n in _netns_list() if n.startswith(self.ns_prefix)})
            for proc in self._sshd.values():
                if proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
            survivors = _kill_netns_processes(namespaces)
            for proc in self._sshd.values():
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)
            self._sshd.clear()
            for ns in namespaces:
                _run(["ip", "netns", "del", ns], check=False)
            for i in range(1, self.n_hosts + 1):
                ns = self._netns_name(i)
                uts = self._uts_file(ns)
                _umount(uts)
                with contextlib.suppress(OSError):
                    uts.unlink()
                shutil.rmtree(ETC_NETNS / ns, ignore_errors=True)
                veth = self._veth_name(i)
                if _link_exists(veth):
                    _run(["ip", "link", "del", veth], check=False)
            for k in range(1, len(self.bridges)):
                if _link_exists(self._trunk_names(k)[0]):
                    _run(["ip", "link", "del", self._trunk_names(k)[0]], check=False)
            for bridge in self.bridges:
                if _link_exists(bridge):
                    _run(["ip", "link", "del", bridge], check=False)
            with contextlib.suppress(OSError):
                ETC_NETNS.rmdir()  # only when empty
            for rule in self._ipt_rules:
                _run(["iptables", "-w", "5", "-D"] + rule, check=False)
            self._ipt_rules.clear()
            for name, (ours, before) in self._sysctl_restore.items():
                with contextlib.suppress(OSError):
                    if (SYSCTL / name).read_text().strip() == ours:
                        (SYSCTL / name).write_text(before)
            self._sysctl_restore.clear()
            self._created_ns.clear()
            self._started = False
            _live_clusters.discard(self)
            left = [n for n in _netns_list() if n.startswith(self.ns_prefix)]
            left += [n for n in self.bridges + [self._trunk_names(k)[0] for k in range(1, len(self.bridges))]
                     + [self._veth_name(i) for i in range(1, self.n_hosts + 1)] if _link_exists(n)]
            if left or survivors:
                raise ClusterError(f"stop() of cluster {self.tag} left behind: {left} processes {survivors}")

    # ---- running things -------------------------------------------------------------------------

    def _in_argv(self, host: HostRef, argv: list[str]) -> list[str]:
        h = self.host(host)
        return ["ip", "netns", "exec", h.netns, *_cgroup_remount(), "nsenter",
                f"--uts={self._uts_file(h.netns)}", "--", *argv]

    def run_in(self, host: HostRef, argv: list[str], **kw) -> subprocess.CompletedProcess:
        """``subprocess.run(argv, **kw)`` inside the host's netns and UTS namespace (and with its
        /etc/hosts), like a process started through its sshd (but without ssh's environment)."""
        return subprocess.run(self._in_argv(host, list(argv)), **kw)

    def popen_in(self, host: HostRef, argv: list[str], **kw) -> subprocess.Popen:
        """``subprocess.Popen`` counterpart of ``run_in``; ``stop()`` kills it if still running."""
        return subprocess.Popen(self._in_argv(host, list(argv)), **kw)

    def pids_in(self, host: HostRef) -> list[int]:
        """Pids of the processes in the host's netns, except its sshd listener."""
        h = self.host(host)
        exclude = set()
        proc = self._sshd.get(h.name)
        if proc is not None:
            exclude.add(proc.pid)
        with contextlib.suppress(OSError, ValueError):
            exclude.add(int((self._hostdir(h.name) / "sshd.pid").read_text().strip()))
        return [p for p in _netns_pids(h.netns) if p not in exclude]

    # ---- faults -------------------------------------------------------------------------------------

    def set_link(self, host: HostRef, up: bool) -> None:
        """Bring the host's bridge-side veth down (cuts the host off) or up again (and wait until
        both ends have carrier)."""
        h = self.host(host)
        veth = self.veth(h)
        _run(["ip", "link", "set", "dev", veth, "up" if up else "down"])
        if not up:
            return
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            outer = _run(["ip", "-o", "link", "show", "dev", veth], check=False).stdout
            inner = _run(["ip", "-n", h.netns, "-o", "link", "show", "dev", h.iface], check=False).stdout
            if "LOWER_UP" in outer and "LOWER_UP" in inner:
                return
            time.sleep(0.02)
        raise ClusterError(f"link of {h.name} did not come back up")

    def shape(self, host: HostRef, rate_mbit: float | None) -> None:
        """Limit the host's link to ``rate_mbit`` Mbit/s in each direction (tbf on the egress of
        both veth ends: the bridge side shapes traffic to the host, eth0 traffic from it);
        ``None`` removes the shaping."""
        h = self.host(host)
        veth = self.veth(h)
        if rate_mbit is None:
            _run(["tc", "qdisc", "del", "dev", veth, "root"], check=False)
            _run(["tc", "-n", h.netns, "qdisc", "del", "dev", h.iface, "root"], check=False)
            return
        if rate_mbit <= 0:
            raise ValueError(f"rate_mbit must be > 0 (or None), got {rate_mbit}")
        kbit = max(8, int(round(rate_mbit * 1000)))
        burst = max(kbit * 1000 // 8 // 100, 16 * 1024)  # 10 ms worth, at least 16 KiB
        spec = ["root", "tbf", "rate", f"{kbit}kbit", "burst", str(burst), "latency", "100ms"]
        _run(["tc", "qdisc", "replace", "dev", veth] + spec)
        _run(["tc", "-n", h.netns, "qdisc", "replace", "dev", h.iface] + spec)

    def stop_sshd(self, host: HostRef) -> None:
        """Stop the host's sshd listener (sessions already open keep running)."""
        h = self.host(host)
        proc = self._sshd.pop(h.name, None)
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def start_sshd(self, host: HostRef) -> None:
        """Start the host's sshd (no-op when running) and wait until it accepts connections."""
        h = self.host(host)
        proc = self._sshd.get(h.name)
        if proc is not None and proc.poll() is None:
            return
        self._write_sshd_config(h)
        self._launch_sshd(h)
        self._wait_sshd(h, time.monotonic() + 10.0)

    def regenerate_host_key(self, host: HostRef) -> None:
        """Give the host a new host key and restart its sshd.  ``hosts`` is updated with the new
        key, ``known_hosts`` is NOT (so clients now see a changed key; call
        ``write_known_hosts()`` to trust the new one)."""
        idx = self._index(host)
        h = self.hosts[idx]
        self.stop_sshd(h)
        key = self._hostdir(h.name) / "ssh_host_ed25519_key"
        self._keygen_many([key], [f"ddpc-{h.name}"])
        self.hosts[idx] = dataclasses.replace(h, host_key_pub=self._read_pub(key.with_name(key.name + ".pub")))
        self.start_sshd(self.hosts[idx])
