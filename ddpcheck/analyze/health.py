"""Health rules for stage 0: one host's facts (agent, hostfacts, nvml) -> Findings.

Pure: typed facts in (``model.facts.HostFacts``, read once by ``collect.facts``), findings out;
used by ``preflight`` for every host before torchrun and by ``ddpcheck node`` for this machine.
Checks: ``python``, ``torch_import``, ``hostname``, ``env`` (``*_SOCKET_IFNAME`` against the
host's real interfaces, deprecated variables), ``rendezvous`` (no route to the master),
``resources`` (/dev/shm, workdir disk, memory, ulimits), ``gpu_health`` (NVML counters),
``gpu_count`` and ``clock_skew``.

An error in a check of ``LAUNCH_BLOCKING_CHECKS`` keeps torchrun from starting: with a missing
interpreter, a broken torch, an interface that does not exist or no route to the master, the run
could only fail or hang until the rendezvous timeout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional

from ..model.checks import Check
from ..model.facts import Gpu, HostFacts, Interface
from ..model.records import Finding, Severity
from . import dcgm, infiniband, xid

NA = "n/a"
MIB = 1024 * 1024
GIB = 1024 * MIB

LAUNCH_BLOCKING_CHECKS = frozenset({"python", "torch_import", "env", "gpu_count", "rendezvous"})

# Thresholds (bytes unless named otherwise). Why each: see the rule that uses it.
SHM_ERROR_BYTES = 256 * MIB
SHM_FREE_ERROR_BYTES = 64 * MIB
SHM_WARN_BYTES = 1 * GIB
DISK_ERROR_BYTES = 1 * GIB
DISK_WARN_BYTES = 5 * GIB
MEMORY_WARN_BYTES = 1 * GIB
MEMORY_WARN_FRACTION = 0.05
NOFILE_WARN = 4096
TORCH_IMPORT_WARN_S = 20.0
TEMPERATURE_MARGIN_C = 5
TEMPERATURE_WARN_C = 85  # when the GPU does not report its slowdown threshold
CLOCK_SKEW_WARN_S = 1.0
MIN_PYTHON = (3, 9)

# Variables torch still reads under their old names, with the new names (torch's
# ProcessGroupNCCL.hpp lists both; it warns "... is deprecated; use ... instead").
DEPRECATED_ENV: Mapping[str, str] = {
    "NCCL_ASYNC_ERROR_HANDLING": "TORCH_NCCL_ASYNC_ERROR_HANDLING",
    "NCCL_BLOCKING_WAIT": "TORCH_NCCL_BLOCKING_WAIT",
    "NCCL_DESYNC_DEBUG": "TORCH_NCCL_DESYNC_DEBUG",
    "NCCL_ENABLE_TIMING": "TORCH_NCCL_ENABLE_TIMING",
    "NCCL_USE_TENSOR_REGISTER_ALLOCATOR_HOOK": "TORCH_NCCL_USE_TENSOR_REGISTER_ALLOCATOR_HOOK",
}

# Clock event reasons that mean the GPU runs slower than it should right now.
SLOWDOWN_REASONS = ("hw_slowdown", "hw_thermal_slowdown", "sw_thermal_slowdown",
                    "hw_power_brake_slowdown")


@dataclass(frozen=True)
class Stage0Context:
    """What the rules need beyond the host's own facts."""

    backend: str = "auto"  # resolved backend when known: nccl | gloo | auto
    slots: Optional[int] = None  # ranks planned on the host (hosts.yaml), None: one per GPU
    expected_gpus: Optional[int] = None  # `ddpcheck node --gpus N`
    multi_host: bool = True  # a loopback-only interface is fatal only across hosts
    clock_window: Optional[tuple[float, float]] = None  # launcher wall clock around stage 0
    check_hostname_loopback: bool = False  # node: no cross-host hostname rules run there


def host_findings(host: str, facts: HostFacts,
                  context: Stage0Context = Stage0Context()) -> list[Finding]:
    """Every stage-0 finding for one host, errors first in the order the rules run."""
    findings: list[Finding] = []
    for rule in (python_findings, torch_findings, hostname_findings, env_findings,
                 route_findings, resource_findings, gpu_health_findings, gpu_count_findings,
                 clock_findings):
        findings += rule(host, facts, context)
    findings += xid.xid_findings(host, facts)
    findings += dcgm.dcgm_findings(host, facts)
    findings += infiniband.ib_findings(host, facts)
    return findings


def blocks_launch(finding: Finding) -> bool:
    return finding.severity is Severity.ERROR and finding.check in LAUNCH_BLOCKING_CHECKS


def _finding(severity: Severity, check: str, host: str, message: str) -> Finding:
    return Finding(severity, check, f"{host}: {message}", host=host)


# -- python, torch, hostname ------------------------------------------------------------

def python_findings(host: str, facts: HostFacts, context: Stage0Context) -> list[Finding]:
    version = facts.python or ""
    parts = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
    if len(parts) == 2 and parts < MIN_PYTHON:
        return [_finding(Severity.ERROR, Check.PYTHON, host,
                         f"python {version} at {facts.executable} is older than "
                         f"{'.'.join(map(str, MIN_PYTHON))}")]
    return []


def torch_findings(host: str, facts: HostFacts, context: Stage0Context) -> list[Finding]:
    if facts.torch_error:
        return [_finding(Severity.ERROR, Check.TORCH_IMPORT, host,
                         f"import torch failed: {facts.torch_error}")]
    return slow_import_findings(host, facts.import_s)


def slow_import_findings(host: str, seconds: Optional[float]) -> list[Finding]:
    """A slow ``import torch`` (``import_s``): timed in stage 0, or by torchrun on the host
    (``remote.torchrun``) when stage 0 only inspected torch."""
    if seconds is not None and seconds > TORCH_IMPORT_WARN_S:
        return [_finding(Severity.WARNING, Check.TORCH_IMPORT, host,
                         f"import torch took {seconds:.1f}s (every rank pays it: a slow or "
                         f"overloaded filesystem?)")]
    return []


def hostname_findings(host: str, facts: HostFacts,
                      context: Stage0Context) -> list[Finding]:
    hostname = facts.hostname
    if not hostname or facts.addresses is None:
        return []
    addresses = list(facts.addresses)
    if not addresses:
        return [_finding(Severity.WARNING, Check.HOSTNAME, host,
                         f"its hostname {hostname!r} does not resolve on the host itself "
                         f"(/etc/hosts or DNS); c10d and gloo look it up")]
    if context.check_hostname_loopback and all(is_loopback(a) for a in addresses):
        return [_finding(Severity.WARNING, Check.HOSTNAME, host,
                         f"its hostname {hostname!r} resolves only to loopback "
                         f"({', '.join(addresses)}); gloo/NCCL ranks that bind by hostname "
                         f"will use lo and other hosts cannot reach them")]
    return []


# -- env: socket interfaces and deprecated variables ----------------------------------------

def env_findings(host: str, facts: HostFacts, context: Stage0Context) -> list[Finding]:
    env, interfaces = facts.env, facts.interfaces
    findings: list[Finding] = []
    if env is None:
        return findings
    if interfaces is not None:
        for variable in sorted(env):
            if not variable.endswith("_SOCKET_IFNAME"):
                continue
            for severity, problem in socket_ifname_problems(variable, str(env[variable]),
                                                            interfaces, context.multi_host):
                findings.append(_finding(severity, Check.ENV, host,
                                         f"{variable}={env[variable]}: {problem}"))
    for old, new in DEPRECATED_ENV.items():
        if old not in env:
            continue
        if new in env and env[new] != env[old]:
            message = (f"{old}={env[old]} and {new}={env[new]} are both set and differ: torch "
                       f"uses {new}; remove {old}")
        else:
            message = f"{old} is deprecated: use {new} (torch still reads it, with a warning)"
        findings.append(_finding(Severity.WARNING, Check.ENV, host, message))
    return findings


def socket_ifname_problems(variable: str, value: str, interfaces: Mapping[str, Interface],
                           multi_host: bool = True) -> list[tuple[Severity, str]]:
    """What is wrong with a ``*_SOCKET_IFNAME`` value on a host with ``interfaces``.

    GLOO_SOCKET_IFNAME: a comma-separated list of exact names, each of which must exist and
    have an address (gloo fails "Unable to find address for ..." otherwise). TP_SOCKET_IFNAME:
    one exact name. NCCL_SOCKET_IFNAME (and other NCCL-style ``*_SOCKET_IFNAME``): prefixes,
    ``^`` to exclude, ``=`` for exact names (``^=`` both); it must select at least one interface
    that is up and has an address."""
    have = ", ".join(sorted(interfaces)) or "none"
    if variable.startswith(("GLOO_", "TP_")):
        names = [value] if variable.startswith("TP_") else value.split(",")
        problems: list[tuple[Severity, str]] = []
        usable = []
        for name in names:
            if not name:
                problems.append((Severity.ERROR, "an empty interface name"))
            elif name[0] in "^=":
                problems.append((Severity.ERROR, f"{variable.split('_')[0].lower()} takes exact "
                                 f"interface names; {name!r} is NCCL syntax (this host has: "
                                 f"{have})"))
            elif name not in interfaces:
                problems.append((Severity.ERROR, f"no interface {name!r} on this host (it has: "
                                 f"{have})"))
            else:
                problem = _unusable(name, interfaces[name])
                if problem:
                    problems.append((Severity.ERROR, problem))
                else:
                    usable.append(name)
        if usable and multi_host and all(_loopback_interface(n, interfaces[n]) for n in usable):
            problems.append((Severity.ERROR, f"only loopback ({', '.join(usable)}): ranks on "
                             f"other hosts cannot reach this one"))
        return problems

    exclude = value.startswith("^")
    rest = value[1:] if exclude else value
    exact = rest.startswith("=")
    rest = rest[1:] if exact else rest
    patterns = [item.split(":")[0] for item in rest.split(",") if item.split(":")[0]]
    if not patterns:
        return [(Severity.ERROR, "names no interface")]

    def matches(name: str) -> bool:
        return any(name == p if exact else name.startswith(p) for p in patterns)

    problems = []
    selected = [n for n in sorted(interfaces) if matches(n) != exclude]
    usable = [n for n in selected if not _unusable(n, interfaces[n])]
    if usable and not exclude:  # NCCL uses what matches; a pattern that matches nothing is a typo
        for pattern in patterns:
            if not any(name == pattern if exact else name.startswith(pattern)
                       for name in interfaces):
                problems.append((Severity.WARNING, f"{pattern!r} matches no interface on this "
                                 f"host (it has: {have})"))
    if not usable:
        why = (f"the matching interfaces ({', '.join(selected)}) are down or have no address"
               if selected else "it matches none")
        problems.append((Severity.ERROR, f"selects no usable interface: {why} (this host has: "
                         f"{have}; NCCL fails with 'no socket interface found')"))
    elif multi_host and all(_loopback_interface(n, interfaces[n]) for n in usable):
        problems.append((Severity.ERROR, f"selects only loopback ({', '.join(usable)}): ranks "
                         f"on other hosts cannot reach this one"))
    return problems


def _unusable(name: str, interface: Interface) -> Optional[str]:
    if interface.addresses is None:  # an entry that could not be read: it cannot be judged
        return None
    addresses = [a for a in interface.addresses if not a.startswith("fe80:")]
    if not addresses:
        return f"interface {name!r} has no IP address"
    if interface.up is False:
        return f"interface {name!r} is down"
    if interface.running is False:
        return f"interface {name!r} has no carrier (not running)"
    return None


def _loopback_interface(name: str, interface: Interface) -> bool:
    addresses = interface.addresses or ()
    return name == "lo" or bool(addresses) and all(is_loopback(a) for a in addresses)


def is_loopback(address: str) -> bool:
    """127.0.0.0/8 or ::1 (Debian puts the hostname on 127.0.1.1)."""
    return address.startswith("127.") or address == "::1"


def route_findings(host: str, facts: HostFacts, context: Stage0Context) -> list[Finding]:
    route = facts.route
    if route is None:
        return []
    if route.error:
        return [_finding(Severity.ERROR, Check.RENDEZVOUS, host,
                         f"cannot reach the master {route.master}: {route.error}")]
    gloo = [n for n in (facts.env or {}).get("GLOO_SOCKET_IFNAME", "").split(",") if n]
    through = route.interface
    interfaces = facts.interfaces or {}
    if (gloo and through and through not in gloo and all(n in interfaces for n in gloo)
            and not is_loopback(str(route.source))):
        return [_finding(Severity.WARNING, Check.ENV, host,
                         f"GLOO_SOCKET_IFNAME={','.join(gloo)} but the route to the master "
                         f"{route.address} leaves through {through}")]
    return []


# -- resources ----------------------------------------------------------------------------

def resource_findings(host: str, facts: HostFacts,
                      context: Stage0Context) -> list[Finding]:
    findings: list[Finding] = []

    def add(severity: Severity, message: str) -> None:
        findings.append(_finding(severity, Check.RESOURCES, host, message))

    shm = facts.shm
    if facts.shm_missing:
        add(Severity.ERROR, "/dev/shm is missing (NCCL and DataLoader workers need it)")
    elif shm is not None:
        total, free = shm.total, shm.free
        if total is not None and total < SHM_ERROR_BYTES:
            add(Severity.ERROR, f"/dev/shm is {format_size(total)} (NCCL's shared-memory "
                                f"transport and DataLoader workers crash with bus errors; "
                                f"containers: --shm-size or --ipc=host)")
        elif free is not None and free < SHM_FREE_ERROR_BYTES:
            add(Severity.ERROR, f"/dev/shm has {format_size(free)} free of "
                                f"{format_size(total)}")
        elif total is not None and total < SHM_WARN_BYTES:
            add(Severity.WARNING, f"/dev/shm is only {format_size(total)}")
    workdir = facts.workdir
    if workdir is not None:
        free, path = workdir.free, workdir.path
        if workdir.writable is False:
            add(Severity.ERROR, f"workdir {path} is not writable")
        if free is not None and free < DISK_ERROR_BYTES:
            add(Severity.ERROR, f"workdir {path} has {format_size(free)} free (checkpoints and "
                                f"logs will fail)")
        elif free is not None and free < DISK_WARN_BYTES:
            add(Severity.WARNING, f"workdir {path} has only {format_size(free)} free")
        if workdir.inodes_free == 0:
            add(Severity.ERROR, f"workdir {path} has no free inodes")
    memory = facts.memory
    if memory is not None:
        total, available = memory.total, memory.available
        if total and available is not None and (
                available < MEMORY_WARN_BYTES or available < total * MEMORY_WARN_FRACTION):
            add(Severity.WARNING, f"only {format_size(available)} of {format_size(total)} "
                                  f"memory available")
    limits = facts.ulimit
    if limits is not None:
        nofile = limits.nofile
        if nofile is not None and 0 <= nofile[0] < NOFILE_WARN:
            add(Severity.WARNING, f"ulimit -n is {nofile[0]} (hard {_limit_text(nofile[1])}); "
                                  f"ranks with DataLoader workers and many peers run out of file "
                                  f"descriptors: raise it to at least {NOFILE_WARN}")
        memlock = limits.memlock
        if memlock is not None and memlock[0] >= 0 and facts.rdma_devices:
            add(Severity.WARNING, f"ulimit -l is {format_size(memlock[0])}, not unlimited, on a "
                                  f"host with RDMA devices ({', '.join(facts.rdma_devices)}): "
                                  f"NCCL cannot register its buffers")
    return findings


# -- GPUs -------------------------------------------------------------------------------

def gpu_health_findings(host: str, facts: HostFacts,
                        context: Stage0Context) -> list[Finding]:
    nvml = facts.nvml
    if nvml is None:
        return []
    findings: list[Finding] = []

    def add(severity: Severity, message: str) -> None:
        findings.append(_finding(severity, Check.GPU_HEALTH, host, message))

    if nvml.error:
        add(Severity.ERROR, f"NVML cannot read the GPUs: {nvml.error}")
    elif not nvml.available and nvml.device_nodes:
        add(Severity.WARNING, f"GPU device nodes ({', '.join(nvml.device_nodes)}) but no "
                              f"GPU health read: {nvml.reason}")
    for gpu in nvml.gpus:
        for severity, message in gpu_problems(gpu):
            add(severity, f"{gpu_label(gpu)}: {message}")
    return findings


def gpu_label(gpu: Gpu) -> str:
    bus = gpu.bus_id
    return f"GPU {gpu.index}" + (f" ({bus})" if bus and bus != NA else "")


def gpu_problems(gpu: Gpu) -> list[tuple[Severity, str]]:
    """One GPU's health counters -> (severity, message). n/a values are never a problem."""
    if gpu.lost:
        return [(Severity.ERROR, f"has fallen off the bus (NVML: {gpu.lost}); the node needs "
                                 f"a reset or service")]
    problems: list[tuple[Severity, str]] = []
    ecc = gpu.ecc_uncorrected
    if ecc is not None:
        if ecc.volatile:
            problems.append((Severity.ERROR, f"{ecc.volatile:.0f} uncorrected ECC error(s) "
                                             f"since the last driver load"))
        elif ecc.aggregate:
            problems.append((Severity.WARNING, f"{ecc.aggregate:.0f} uncorrected ECC error(s) "
                                               f"over its lifetime"))
    rows = gpu.remapped_rows
    if rows is not None:
        if rows.failed:
            problems.append((Severity.ERROR, "row remapping failed: the GPU needs service"))
        if rows.pending:
            problems.append((Severity.ERROR, "a row remap is pending: reset the GPU to apply it"))
    pages = gpu.retired_pages
    if pages is not None:
        if pages.pending:
            problems.append((Severity.ERROR, "a page retirement is pending: reset the GPU"))
        if pages.double_bit:
            problems.append((Severity.WARNING, f"{pages.double_bit:.0f} page(s) retired for "
                                               f"double-bit ECC errors"))
    if gpu.banks_without_spare_rows:
        problems.append((Severity.WARNING, f"{gpu.banks_without_spare_rows:.0f} memory bank(s) "
                                           f"have no spare rows left: the next uncorrectable "
                                           f"error there cannot be remapped (plan service)"))
    action = gpu.recovery_action
    if action is not None and action not in (NA, "none"):
        problems.append((Severity.ERROR, f"the driver asks for recovery action {action!r} "
                                         f"(NVML_FI_DEV_GET_GPU_RECOVERY_ACTION)"))
    reasons = gpu.clock_event_reasons
    temperature = gpu.temperature_c
    samples = gpu.clock_event_samples
    where = f" at {temperature:.0f} C" if temperature is not None else ""
    if samples is not None:
        # sampled over a window: only a reason that held in most samples is the GPU's state
        taken = samples.samples
        slow = [f"{r} ({n}/{taken} samples)" for r, n in sorted(samples.counts.items())
                if r in SLOWDOWN_REASONS and taken and n * 2 > taken]
        if slow:
            problems.append((Severity.WARNING, f"clocks held down{where} over "
                                               f"{samples.window_s}s: {', '.join(slow)}"))
    elif reasons is not None:
        slow = [r for r in reasons if r in SLOWDOWN_REASONS]
        if slow:
            problems.append((Severity.WARNING, f"clocks held down{where}: {', '.join(slow)}"))
    slowdown = gpu.slowdown_temperature_c
    if temperature is not None:
        limit = slowdown - TEMPERATURE_MARGIN_C if slowdown else TEMPERATURE_WARN_C
        if temperature >= limit:
            problems.append((Severity.WARNING, f"temperature {temperature:.0f} C (slowdown at "
                                               f"{_number_text(slowdown)} C)"))
    pcie = gpu.pcie
    if pcie is not None:
        width, max_width, gen, max_gen = pcie.width, pcie.max_width, pcie.gen, pcie.max_gen
        if width is not None and max_width and width < max_width:
            problems.append((Severity.WARNING, f"PCIe link x{width:.0f}, below its x"
                                               f"{max_width:.0f}: downtrained link or bad riser"))
        idle = reasons is not None and "gpu_idle" in reasons
        if gen is not None and max_gen and gen < max_gen and not idle:
            # an idle GPU lowers its PCIe generation to save power: only a busy one counts
            problems.append((Severity.WARNING, f"PCIe gen {gen:.0f} while busy, below its gen "
                                               f"{max_gen:.0f}"))
    links = gpu.nvlink
    if links is not None and links.down and links.up:
        down = ", ".join(str(link) for link in links.down)
        problems.append((Severity.WARNING, f"NVLink link(s) {down} down "
                                           f"({len(links.up)} up)"))
    if links is not None and links.errors:
        bad = []
        for link, counters in sorted(links.errors.items(), key=lambda kv: int(kv[0])):
            named = ", ".join(f"{k}={v}" for k, v in counters.items() if v > 0)
            if named:
                bad.append(f"link {link}: {named}")
        if bad:
            problems.append((Severity.WARNING, "NVLink error counters not zero (rising replay/"
                                               "recovery/CRC counts mean a bad link): "
                                               + "; ".join(bad)))
    if gpu.processes:
        pids = ", ".join(str(pid) for pid in gpu.processes[:5])
        problems.append((Severity.WARNING, f"in use by {len(gpu.processes)} other process(es) "
                                           f"(pid {pids}), {_number_text(gpu.memory_used_mib)} "
                                           f"MiB used"))
    for key, message in sorted(gpu.errors.items()):
        problems.append((Severity.WARNING, f"NVML could not read {key}: {message}"))
    return problems


def gpu_count_findings(host: str, facts: HostFacts,
                       context: Stage0Context) -> list[Finding]:
    findings: list[Finding] = []
    nvml = facts.nvml
    nvml_gpus = nvml.listed if nvml is not None and nvml.available else None
    torch_gpus = facts.torch_gpus
    # No NVML library and no torch answer: no GPU this host can use.
    seen = nvml_gpus if nvml_gpus is not None else torch_gpus if torch_gpus is not None else 0
    if context.expected_gpus is not None and seen != context.expected_gpus:
        source = ("NVML" if nvml_gpus is not None else "torch" if torch_gpus is not None
                  else "no NVML, no torch")
        findings.append(_finding(Severity.ERROR, Check.GPU_COUNT, host,
                                 f"{seen:.0f} GPU(s) found ({source}), {context.expected_gpus} "
                                 f"expected"))
    hidden = "CUDA_VISIBLE_DEVICES" in (facts.env or {})
    if nvml_gpus and torch_gpus == 0 and not hidden:
        why = facts.cuda_error or (f"torch {facts.torch} is built without CUDA"
                                   if not facts.cuda else "CUDA is not usable")
        findings.append(_finding(Severity.WARNING, Check.GPU_COUNT, host,
                                 f"NVML sees {nvml_gpus} GPU(s) but torch sees none: {why}"))
    if (context.backend == "nccl" and context.slots is not None and torch_gpus is not None
            and context.slots > torch_gpus):
        findings.append(_finding(Severity.ERROR, Check.GPU_COUNT, host,
                                 f"{context.slots} rank(s) planned with nccl but torch sees "
                                 f"{torch_gpus:.0f} GPU(s)"))
    return findings


def cluster_gpu_findings(gpus_by_host: Mapping[str, int]) -> list[Finding]:
    """Hosts with fewer GPUs than the others: world_size = nodes x GPUs goes wrong there."""
    counts = {h: n for h, n in gpus_by_host.items()}
    if len(counts) < 2 or len(set(counts.values())) < 2 or max(counts.values()) == 0:
        return []
    most = max(counts.values())
    fewer = sorted(h for h, n in counts.items() if n < most)
    return [Finding(Severity.WARNING, Check.GPU_COUNT,
                    f"{', '.join(f'{h} has {counts[h]}' for h in fewer)} GPU(s) where other "
                    f"hosts have {most}", host=fewer[0] if len(fewer) == 1 else None)]


# -- clock ------------------------------------------------------------------------------

def clock_skew_s(host_time: float, host_elapsed_s: float, sent: float,
                 received: float) -> float:
    """How far the host's clock is off the launcher's, at least (0.0 within the bound).

    The host read ``host_time`` ``host_elapsed_s`` after it started, and it started after the
    launcher's ``sent``; it answered before ``received``. So at that instant the launcher's
    clock read between ``sent + host_elapsed_s`` and ``received``; outside that window the
    distance to its nearer edge is skew that no network delay explains."""
    low, high = sent + max(host_elapsed_s, 0.0), received
    if low > high:  # the host's elapsed time already exceeds the round trip: rates differ
        low = high
    if host_time < low:
        return host_time - low
    if host_time > high:
        return host_time - high
    return 0.0


def clock_findings(host: str, facts: HostFacts, context: Stage0Context) -> list[Finding]:
    if context.clock_window is None:
        return []
    host_time, elapsed = facts.time_end, facts.duration_s
    if host_time is None or elapsed is None:
        return []
    sent, received = context.clock_window
    skew = clock_skew_s(host_time, elapsed, sent, received)
    if abs(skew) <= CLOCK_SKEW_WARN_S:
        return []
    direction = "ahead of" if skew > 0 else "behind"
    return [_finding(Severity.WARNING, Check.CLOCK_SKEW, host,
                     f"its clock is at least {abs(skew):.1f}s {direction} the launcher's "
                     f"(logs and timestamps disagree across hosts; run NTP/chrony)")]


# -- value conversions ---------------------------------------------------------------

def _number_text(number: Optional[float]) -> str:
    return NA if number is None else f"{number:.0f}"


def _limit_text(value: int) -> str:
    return "unlimited" if value < 0 else str(value)


def format_size(value: Optional[float]) -> str:
    if value is None:
        return NA
    for unit, scale in (("GiB", GIB), ("MiB", MIB), ("KiB", 1024)):
        if value >= scale:
            return f"{value / scale:.1f} {unit}"
    return f"{value:.0f} B"
