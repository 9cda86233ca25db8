"""Stage-0 host facts: CPU, memory, workdir disk, /dev/shm, ulimits, interfaces, route, env.

Runs on each host inside the agent (``python -m ddpcheck.remote.agent facts``, in the host's workdir and
with the host's env from hosts.yaml, exactly as the ranks will get them) and in ``ddpcheck node``.
Returns plain JSON-ready data; ``health`` turns it into findings. psutil is used when present; a
host that has only torch gets the same facts from /proc, /sys, os.statvfs and resource.getrlimit.
Nothing here may raise: a fact that cannot be read is left out, with the reason under "errors".
"""

from __future__ import annotations

import fcntl
import os
import resource
import socket
import struct
import threading
from typing import Any, Callable, Optional

# The variables that shape a distributed run; only these are reported (never the whole env,
# which may hold secrets).
ENV_PREFIXES = ("NCCL_", "TORCH_", "GLOO_", "TP_", "CUDA_", "OMP_", "MASTER_", "PYTORCH_",
                "NVIDIA_", "UCX_", "FI_", "MKL_", "TORCHELASTIC_")
UNLIMITED = -1  # how an unlimited rlimit is written in the facts
_SIOCGIFADDR = 0x8915
_SIOCGIFFLAGS = 0x8913
_IFF_UP = 0x1
_IFF_RUNNING = 0x40


def collect(master: Optional[str] = None, workdir: str = ".",
            resolve_timeout_s: float = 2.0) -> dict[str, Any]:
    """Every host fact, each read on its own so that one failure leaves the others."""
    try:
        import psutil  # type: ignore
    except Exception:  # noqa: BLE001 - absent or broken: the stdlib readers below suffice
        psutil = None
    facts: dict[str, Any] = {"facts_source": "psutil" if psutil else "stdlib"}
    errors: dict[str, str] = {}
    readers: dict[str, Callable[[], Any]] = {
        "cpu": lambda: cpu_facts(psutil),
        "memory": lambda: memory_facts(psutil),
        "workdir": lambda: disk_facts(workdir, check_writable=True),
        "shm": lambda: disk_facts("/dev/shm") if os.path.isdir("/dev/shm") else None,
        "ulimit": ulimit_facts,
        "rdma_devices": rdma_devices,
        "interfaces": lambda: interface_facts(psutil),
        "env": lambda: selected_env(os.environ),
    }
    for key, read in readers.items():
        try:
            facts[key] = read()
        except Exception as exc:  # noqa: BLE001 - one unreadable fact never sinks the rest
            errors[key] = f"{type(exc).__name__}: {exc}"
    if master:
        try:
            facts["route"] = route_to(master, facts.get("interfaces") or {}, resolve_timeout_s)
        except Exception as exc:  # noqa: BLE001
            errors["route"] = f"{type(exc).__name__}: {exc}"
    if errors:
        facts["errors"] = errors
    return facts


# -- CPU, memory, disk, limits ------------------------------------------------------------

def cpu_facts(psutil: Any = None) -> dict[str, Any]:
    facts: dict[str, Any] = {"count": os.cpu_count()}
    if hasattr(os, "sched_getaffinity"):
        facts["usable"] = len(os.sched_getaffinity(0))
    try:
        facts["load1"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    if psutil is not None:
        facts["physical"] = psutil.cpu_count(logical=False)
    return facts


def memory_facts(psutil: Any = None) -> dict[str, int]:
    if psutil is not None:
        vm = psutil.virtual_memory()
        return {"total": int(vm.total), "available": int(vm.available)}
    return parse_meminfo(_read("/proc/meminfo"))


def parse_meminfo(text: str) -> dict[str, int]:
    """MemTotal and MemAvailable of /proc/meminfo, in bytes."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        fields = rest.split()
        if fields and fields[0].isdigit():
            values[name.strip()] = int(fields[0]) * (1024 if fields[1:2] == ["kB"] else 1)
    facts = {"total": values.get("MemTotal", 0)}
    available = values.get("MemAvailable")
    if available is None:  # kernels before 3.14
        available = sum(values.get(k, 0) for k in ("MemFree", "Buffers", "Cached"))
    facts["available"] = available
    return facts


def disk_facts(path: str, check_writable: bool = False) -> dict[str, Any]:
    stat = os.statvfs(path)
    facts: dict[str, Any] = {
        "path": os.path.abspath(path),
        "total": stat.f_blocks * stat.f_frsize,
        "free": stat.f_bavail * stat.f_frsize,  # what an unprivileged user can still write
    }
    if stat.f_files:
        facts["inodes_free"] = stat.f_favail
    if check_writable:
        facts["writable"] = os.access(path, os.W_OK)
    return facts


def ulimit_facts() -> dict[str, list[int]]:
    def limits(kind: int) -> list[int]:
        return [UNLIMITED if v == resource.RLIM_INFINITY else int(v)
                for v in resource.getrlimit(kind)]

    return {"nofile": limits(resource.RLIMIT_NOFILE), "memlock": limits(resource.RLIMIT_MEMLOCK)}


def rdma_devices() -> list[str]:
    """InfiniBand/RoCE devices (they need a large ``ulimit -l`` to register memory)."""
    try:
        return sorted(os.listdir("/sys/class/infiniband"))
    except OSError:
        return []


# -- interfaces and the route to the master -----------------------------------------------

def interface_facts(psutil: Any = None) -> dict[str, dict[str, Any]]:
    """name -> {"up", "running", "addresses"}: what gloo/NCCL can bind to on this host."""
    interfaces: dict[str, dict[str, Any]] = {}
    if psutil is not None:
        for name, addrs in psutil.net_if_addrs().items():
            interfaces[name] = {"addresses": sorted(
                a.address.split("%")[0] for a in addrs
                if a.family in (socket.AF_INET, socket.AF_INET6))}
    else:
        for _, name in socket.if_nameindex():
            interfaces[name] = {"addresses": _stdlib_addresses(name)}
    stats = psutil.net_if_stats() if psutil is not None else {}
    for name, facts in interfaces.items():
        own = stats.get(name)
        if own is not None:  # from the kernel's ioctl: right in any network namespace
            flags = getattr(own, "flags", None)  # psutil >= 5.9.3; its isup needs a carrier
            if flags:
                facts["up"] = "up" in flags.split(",")
                facts["running"] = "running" in flags.split(",")
            else:
                facts["up"] = facts["running"] = bool(own.isup)
        else:
            bits = _sys_flags(name) or 0
            facts["up"] = bool(bits & _IFF_UP)
            facts["running"] = bool(bits & _IFF_RUNNING)
    return interfaces


def _sys_flags(name: str) -> Optional[int]:
    """The interface's flags as ``ip link`` shows them (SIOCGIFFLAGS: the kernel adds
    IFF_RUNNING there from the carrier; sysfs's ``flags`` file never has it), else from sysfs
    with RUNNING taken from ``carrier``."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            answer = fcntl.ioctl(sock.fileno(), _SIOCGIFFLAGS,
                                 struct.pack("16sH14x", name.encode()[:15], 0))
            return struct.unpack_from("H", answer, 16)[0]
        except OSError:
            pass
    try:
        flags = int(_read(f"/sys/class/net/{name}/flags").strip(), 16)
    except (OSError, ValueError):
        return None
    try:
        carrier = _read(f"/sys/class/net/{name}/carrier").strip() == "1"
    except OSError:  # reading carrier of a down interface fails (EINVAL)
        carrier = False
    return flags | _IFF_RUNNING if carrier else flags & ~_IFF_RUNNING


def _stdlib_addresses(name: str) -> list[str]:
    addresses = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            packed = fcntl.ioctl(sock.fileno(), _SIOCGIFADDR,
                                 struct.pack("256s", name.encode()[:15]))
            addresses.append(socket.inet_ntoa(packed[20:24]))
        except OSError:
            pass
    try:
        for line in _read("/proc/net/if_inet6").splitlines():
            fields = line.split()
            if len(fields) == 6 and fields[5] == name:
                raw = bytes.fromhex(fields[0])
                addresses.append(socket.inet_ntop(socket.AF_INET6, raw))
    except OSError:
        pass
    return sorted(addresses)


def route_to(master: str, interfaces: dict[str, dict[str, Any]],
             resolve_timeout_s: float = 2.0) -> dict[str, Any]:
    """The source address and interface this host would use to reach ``master``.

    A connected UDP socket asks the kernel for the route without sending a packet."""
    route: dict[str, Any] = {"master": master}
    addresses = resolve(master, resolve_timeout_s)
    if not addresses:
        route["error"] = f"{master} does not resolve"
        return route
    target = addresses[0]
    route["address"] = target
    family = socket.AF_INET6 if ":" in target else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect((target, 9))
            source = sock.getsockname()[0]
        except OSError as exc:
            route["error"] = f"no route to {target}: {exc.strerror or exc}"
            return route
    route["source"] = source
    for name, facts in interfaces.items():
        if source in facts.get("addresses", ()):
            route["interface"] = name
            break
    return route


def resolve(name: str, timeout_s: float) -> list[str]:
    """Addresses ``name`` resolves to, in the resolver's order; a resolver that hangs gives []
    at the deadline instead of holding stage 0."""
    found: list[str] = []

    def lookup() -> None:
        try:
            infos = socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)
        except OSError:
            return
        # in the resolver's order: the first is what binding by hostname picks
        found.extend(dict.fromkeys(str(info[4][0]) for info in infos))

    worker = threading.Thread(target=lookup, daemon=True)
    worker.start()
    worker.join(timeout_s)
    return list(found)


def selected_env(environ: Any) -> dict[str, str]:
    return {name: value for name, value in sorted(environ.items())
            if name.startswith(ENV_PREFIXES)}


def _read(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as handle:
        return handle.read()
