"""A host's stage-0 facts as typed, frozen records (built by ``collect.facts.read_facts``).

Data only, standard library only: the engine records them on ``HostRecord.facts``, ``analyze``'s
health rules read their attributes, ``report`` renders them. What the host did not say, or said
in a shape that could not be read, is None or empty here: the rules stay silent on it.
``HostFacts.raw`` keeps the record as it came, for the outputs that echo it verbatim (the JSON
report's ``stage0``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Union

Number = Union[int, float]


@dataclass(frozen=True)
class Interface:
    """A network interface. ``addresses`` None: the host's entry could not be read (the rules
    treat it as usable, as they cannot tell)."""

    addresses: Optional[tuple[str, ...]] = ()
    up: Optional[bool] = None
    running: Optional[bool] = None


@dataclass(frozen=True)
class Route:
    """The route to the rendezvous master, as ``ip route get`` gave it."""

    master: Optional[Any] = None
    address: Optional[Any] = None
    interface: Optional[str] = None
    source: Optional[Any] = None
    error: Optional[str] = None


@dataclass(frozen=True)
class Shm:
    total: Optional[float] = None
    free: Optional[float] = None


@dataclass(frozen=True)
class Workdir:
    path: Optional[Any] = None
    free: Optional[float] = None
    writable: Optional[bool] = None
    inodes_free: Optional[float] = None


@dataclass(frozen=True)
class Memory:
    total: Optional[float] = None
    available: Optional[float] = None


@dataclass(frozen=True)
class Ulimits:
    """(soft, hard); -1 is unlimited."""

    nofile: Optional[tuple[int, int]] = None
    memlock: Optional[tuple[int, int]] = None


@dataclass(frozen=True)
class Ecc:
    volatile: Optional[float] = None
    aggregate: Optional[float] = None


@dataclass(frozen=True)
class RemappedRows:
    failed: bool = False
    pending: bool = False


@dataclass(frozen=True)
class RetiredPages:
    pending: bool = False  # True only when NVML said True
    double_bit: Optional[float] = None


@dataclass(frozen=True)
class ClockSamples:
    """Clock event reasons sampled over a window: how many samples held each reason."""

    samples: int = 0
    counts: Mapping[str, Number] = field(default_factory=dict)
    window_s: Optional[Any] = None


@dataclass(frozen=True)
class Pcie:
    width: Optional[float] = None
    max_width: Optional[float] = None
    gen: Optional[float] = None
    max_gen: Optional[float] = None


@dataclass(frozen=True)
class NvLink:
    up: tuple[Any, ...] = ()
    down: tuple[Any, ...] = ()
    errors: Mapping[str, Mapping[str, int]] = field(default_factory=dict)  # link -> counters


@dataclass(frozen=True)
class Gpu:
    """One GPU as NVML read it (``remote.nvml``); "n/a" values stay as NVML's text."""

    index: Optional[Any] = None
    bus_id: Optional[str] = None
    uuid: Optional[str] = None
    lost: Optional[str] = None  # why NVML says it fell off the bus
    ecc_uncorrected: Optional[Ecc] = None
    remapped_rows: Optional[RemappedRows] = None
    retired_pages: Optional[RetiredPages] = None
    banks_without_spare_rows: Optional[float] = None
    recovery_action: Optional[str] = None
    clock_event_reasons: Optional[tuple[str, ...]] = None
    clock_event_samples: Optional[ClockSamples] = None
    temperature_c: Optional[float] = None
    slowdown_temperature_c: Optional[float] = None
    pcie: Optional[Pcie] = None
    nvlink: Optional[NvLink] = None
    processes: tuple[Optional[Any], ...] = ()  # the pids of other processes using it
    memory_used_mib: Optional[float] = None
    errors: Mapping[str, Any] = field(default_factory=dict)  # counter -> why NVML could not read it


@dataclass(frozen=True)
class Nvml:
    available: bool = False
    error: Optional[str] = None
    reason: Optional[str] = None
    device_nodes: tuple[str, ...] = ()
    gpus: tuple[Gpu, ...] = ()
    listed: int = 0  # GPUs NVML listed (the entries of ``gpus`` that could not be read count)


@dataclass(frozen=True)
class XidEvent:
    """Xid / SXid lines of the kernel log, folded by GPU and number (``remote.kernlog``)."""

    kind: str = "Xid"
    xid: int = -1
    message: str = ""
    bus_id: Optional[str] = None
    nvswitch: Optional[Any] = None
    count: int = 1
    last: Optional[float] = None
    pid: Optional[Any] = None
    process: Optional[str] = None


@dataclass(frozen=True)
class KernelLog:
    error: Optional[str] = None
    events: tuple[XidEvent, ...] = ()
    dropped: Optional[Any] = None  # events of other kinds not listed


@dataclass(frozen=True)
class DcgmTest:
    name: Optional[Any] = None
    status: str = ""  # lower case: pass | fail | warn | skip | ...
    gpu: Optional[Any] = None
    messages: tuple[str, ...] = ()


@dataclass(frozen=True)
class Dcgm:
    level: Optional[Any] = None
    available: bool = True
    reason: Optional[str] = None
    error: Optional[str] = None
    runtime_error: Optional[str] = None
    tests: tuple[DcgmTest, ...] = ()


@dataclass(frozen=True)
class IbPort:
    state: Optional[str] = None
    phys_state: Optional[str] = None
    rate: Optional[Any] = None  # as the kernel writes it ("100 Gb/sec (4X EDR)")
    rate_gbps: Optional[float] = None
    link_layer: Optional[str] = None
    counters: Mapping[str, int] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        return self.state == "ACTIVE" and self.phys_state in (None, "LinkUp")


@dataclass(frozen=True)
class InfiniBand:
    error: Optional[str] = None
    devices: Mapping[str, Mapping[str, IbPort]] = field(default_factory=dict)  # by HCA, then port


@dataclass(frozen=True)
class HostFacts:
    """A host's stage-0 record, read once at the edge. A section the host did not send is None
    (its rules do not run); ``shm_missing``: the host said /dev/shm does not exist."""

    raw: Mapping[str, Any] = field(default_factory=dict)
    hostname: Optional[str] = None
    python: Optional[str] = None
    executable: Optional[str] = None
    torch: Optional[str] = None  # its version; None or "" when it could not be read
    torch_error: Optional[str] = None
    torch_inspected: bool = False  # stage 0 looked at torch (its "torch" key is there)
    import_s: Optional[Number] = None  # None: torchrun imports it (or it failed)
    gpus: int = 0  # the GPUs torch sees
    torch_gpus: Optional[float] = None  # the same, None when torch was not inspected
    cuda: bool = False
    cuda_error: Optional[str] = None
    addresses: Optional[tuple[str, ...]] = None  # the hostname's addresses; None: not looked up
    env: Optional[Mapping[str, str]] = None
    interfaces: Optional[Mapping[str, Interface]] = None
    route: Optional[Route] = None
    shm: Optional[Shm] = None
    shm_missing: bool = False
    workdir: Optional[Workdir] = None
    workdir_error: Optional[str] = None
    workdir_write_error: Optional[str] = None
    memory: Optional[Memory] = None
    ulimit: Optional[Ulimits] = None
    rdma_devices: tuple[str, ...] = ()
    nvml: Optional[Nvml] = None
    kernel_log: Optional[KernelLog] = None
    dcgm: Optional[Dcgm] = None
    infiniband: Optional[InfiniBand] = None
    time_end: Optional[float] = None  # the host's wall clock when stage 0 ended
    duration_s: Optional[float] = None
    launcher_clock: Optional[tuple[float, float]] = None  # the launcher's clock around stage 0

    def __bool__(self) -> bool:
        """A host that sent no facts has an empty record."""
        return bool(self.raw)
