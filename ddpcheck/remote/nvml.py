"""Stage-0 GPU facts through NVML: inventory, health counters and topology, as plain data.

Runs on each host inside the agent and in ``ddpcheck node``; ``health`` turns the result into
``gpu_health`` / ``gpu_count`` findings. Uses ``pynvml`` (the nvidia-ml-py package) when present.

What a GPU or driver does not support reads as ``"n/a"``, never as a failure (a consumer GPU
has no ECC, a PCIe card may have no NVLink, a container may lack the permission). No NVML
library, no driver or no pynvml means "no GPUs", not a crash. Any other NVML error is kept
beside the value it was reading, and a GPU that has fallen off the bus is marked ``lost``.

Every function takes the NVML module as ``lib`` so the unit tests can pass a small fake.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Optional

NA = "n/a"

# NVML return codes (nvml.h; stable across driver versions).
ERROR_INVALID_ARGUMENT = 2
ERROR_NOT_SUPPORTED = 3
ERROR_NO_PERMISSION = 4
ERROR_DRIVER_NOT_LOADED = 9
ERROR_LIBRARY_NOT_FOUND = 12
ERROR_FUNCTION_NOT_FOUND = 13
ERROR_GPU_IS_LOST = 15
# Codes that mean "this GPU/driver cannot tell": the value is n/a.
NOT_AVAILABLE_CODES = frozenset({ERROR_NOT_SUPPORTED, ERROR_NO_PERMISSION,
                                 ERROR_FUNCTION_NOT_FOUND})
NO_GPU_CODES = frozenset({ERROR_DRIVER_NOT_LOADED, ERROR_LIBRARY_NOT_FOUND})

# nvml.h constants used below.
MEMORY_ERROR_TYPE_UNCORRECTED = 1
VOLATILE_ECC = 0
AGGREGATE_ECC = 1
PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT = 0
PAGE_RETIREMENT_CAUSE_DOUBLE_BIT = 1
TEMPERATURE_GPU = 0
TEMPERATURE_THRESHOLD_SHUTDOWN = 0
TEMPERATURE_THRESHOLD_SLOWDOWN = 1
FEATURE_ENABLED = 1
DEFAULT_NVLINK_MAX_LINKS = 18

# nvmlNvLinkErrorCounter_t: the data-link error counters of one NVLink.
NVLINK_ERROR_COUNTERS: dict[str, int] = {"replay": 0, "recovery": 1, "crc_flit": 2,
                                         "crc_data": 3, "ecc_data": 4}
# nvmlDeviceGetFieldValues: what the driver says to do with the GPU (drivers >= 570).
FI_DEV_GET_GPU_RECOVERY_ACTION = 230
RECOVERY_ACTIONS: dict[int, str] = {0: "none", 1: "gpu_reset", 2: "node_reboot",
                                    3: "drain_p2p", 4: "drain_and_reset",
                                    5: "recover_imex_domain", 6: "bus_reset",
                                    7: "system_reboot"}
NVML_SUCCESS = 0
# Clock event reasons are sampled this many times over this window, not read once: a reason
# seen in one sample is a moment, one seen in most is the GPU's state.
CLOCK_SAMPLES = 5
CLOCK_WINDOW_S = 1.0

# Clock event ("throttle") reason bits, nvml.h nvmlClocksEventReason*.
CLOCK_EVENT_REASONS: dict[int, str] = {
    0x1: "gpu_idle",
    0x2: "applications_clocks_setting",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal_slowdown",
    0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
}

# nvmlGpuTopologyLevel_t -> nvidia-smi topo -m legend.
TOPOLOGY_LEVELS: dict[int, str] = {0: "X", 10: "PIX", 20: "PXB", 30: "PHB", 40: "NODE",
                                   50: "SYS"}

MIB = 1024 * 1024


class GpuLost(Exception):
    """NVML said the GPU has fallen off the bus: stop reading it."""


def read_gpus(lib: Any = None, clock_window_s: Optional[float] = None) -> dict[str, Any]:
    """GPU facts of this host: ``{"available", "gpus": [...], "driver", "cuda_driver",
    "topology", "error"/"reason"}``. Never raises."""
    if lib is None:
        try:
            import pynvml as lib  # type: ignore
        except Exception as exc:  # noqa: BLE001 - absent or broken bindings: no NVML
            return {"available": False, "gpus": [], "device_nodes": nvidia_device_nodes(),
                    "reason": f"pynvml (nvidia-ml-py) not importable: {exc}"}
    try:
        lib.nvmlInit()
    except lib.NVMLError as exc:
        code = getattr(exc, "value", None)
        facts: dict[str, Any] = {"available": False, "gpus": [],
                                 "device_nodes": nvidia_device_nodes()}
        if code in NO_GPU_CODES:
            facts["reason"] = f"NVML: {_text(exc)}"
        else:
            facts["error"] = f"nvmlInit failed: {_text(exc)}"
        return facts
    except Exception as exc:  # noqa: BLE001 - a broken NVML must not sink stage 0
        return {"available": False, "gpus": [], "device_nodes": nvidia_device_nodes(),
                "error": f"nvmlInit failed: {type(exc).__name__}: {exc}"}
    try:
        return _read_initialized(lib, CLOCK_WINDOW_S if clock_window_s is None
                                 else clock_window_s)
    finally:
        try:
            lib.nvmlShutdown()
        except Exception:  # noqa: BLE001
            pass


def nvidia_device_nodes() -> list[str]:
    """/dev/nvidiaN present without a working NVML means a GPU nobody can check."""
    try:
        return sorted(n for n in os.listdir("/dev") if n.startswith("nvidia") and
                      n[len("nvidia"):].isdigit())
    except OSError:
        return []


class _Reader:
    """One NVML call at a time: unsupported -> n/a; other errors kept under ``errors``."""

    def __init__(self, lib: Any) -> None:
        self.lib = lib
        self.errors: dict[str, str] = {}

    def __call__(self, key: str, function: str, *args: Any, absent: Any = NA) -> Any:
        call: Optional[Callable[..., Any]] = getattr(self.lib, function, None)
        if call is None:  # bindings older than the call
            return absent
        try:
            return call(*args)
        except self.lib.NVMLError as exc:
            code = getattr(exc, "value", None)
            if code == ERROR_GPU_IS_LOST:
                raise GpuLost(_text(exc)) from None
            if code not in NOT_AVAILABLE_CODES:
                self.errors[key] = _text(exc)
            return absent


def _read_initialized(lib: Any, clock_window_s: float = CLOCK_WINDOW_S) -> dict[str, Any]:
    system = _Reader(lib)
    facts: dict[str, Any] = {"available": True, "gpus": []}
    facts["driver"] = _text(system("driver", "nvmlSystemGetDriverVersion"))
    cuda = system("cuda_driver", "nvmlSystemGetCudaDriverVersion")
    facts["cuda_driver"] = f"{cuda // 1000}.{cuda % 1000 // 10}" if isinstance(cuda, int) else NA
    count = system("count", "nvmlDeviceGetCount", absent=0)
    handles: list[Any] = []
    sampled: list[dict[str, Any]] = []  # the GPUs of ``handles``, in order
    for index in range(count if isinstance(count, int) else 0):
        reader = _Reader(lib)
        gpu: dict[str, Any] = {"index": index}
        try:
            handle = reader("handle", "nvmlDeviceGetHandleByIndex", index, absent=None)
            if handle is not None:
                _read_gpu(reader, handle, gpu)
                handles.append(handle)
                sampled.append(gpu)
        except GpuLost as exc:
            gpu["lost"] = str(exc)
        if reader.errors:
            gpu["errors"] = dict(reader.errors)
        facts["gpus"].append(gpu)
    if len(handles) == len(facts["gpus"]) and len(handles) > 1:
        facts["topology"] = _topology(system, handles, facts["gpus"])
    if handles and clock_window_s > 0:
        _sample_clock_events(lib, handles, sampled, clock_window_s)
    if system.errors:
        facts["errors"] = dict(system.errors)
    return facts


def _read_gpu(read: _Reader, handle: Any, gpu: dict[str, Any]) -> None:
    """Fills ``gpu`` as it reads, so a GPU lost halfway keeps what was read (its bus id)."""
    gpu["name"] = _text(read("name", "nvmlDeviceGetName", handle))
    gpu["uuid"] = _text(read("uuid", "nvmlDeviceGetUUID", handle))
    pci = read("pci", "nvmlDeviceGetPciInfo", handle, absent=None)
    gpu["bus_id"] = normalize_bus_id(_text(getattr(pci, "busId", NA))) if pci else NA

    memory = read("memory", "nvmlDeviceGetMemoryInfo", handle, absent=None)
    gpu["memory_total_mib"] = int(memory.total) // MIB if memory is not None else NA
    gpu["memory_used_mib"] = int(memory.used) // MIB if memory is not None else NA
    processes = read("processes", "nvmlDeviceGetComputeRunningProcesses", handle)
    if isinstance(processes, (list, tuple)):
        gpu["processes"] = [{"pid": int(p.pid), "used_mib": (
            int(p.usedGpuMemory) // MIB if isinstance(getattr(p, "usedGpuMemory", None), int)
            else NA)} for p in processes]
    else:
        gpu["processes"] = NA

    gpu["ecc_uncorrected"] = {
        "volatile": read("ecc_volatile", "nvmlDeviceGetTotalEccErrors", handle,
                         MEMORY_ERROR_TYPE_UNCORRECTED, VOLATILE_ECC),
        "aggregate": read("ecc_aggregate", "nvmlDeviceGetTotalEccErrors", handle,
                          MEMORY_ERROR_TYPE_UNCORRECTED, AGGREGATE_ECC),
    }
    rows = read("remapped_rows", "nvmlDeviceGetRemappedRows", handle, absent=None)
    gpu["remapped_rows"] = NA if rows is None else {
        "correctable": int(rows[0]), "uncorrectable": int(rows[1]),
        "pending": bool(rows[2]), "failed": bool(rows[3])}
    double = read("retired_pages", "nvmlDeviceGetRetiredPages", handle,
                  PAGE_RETIREMENT_CAUSE_DOUBLE_BIT, absent=None)
    if double is None:
        gpu["retired_pages"] = NA
    else:
        single = read("retired_pages_sbe", "nvmlDeviceGetRetiredPages", handle,
                      PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT, absent=None)
        pending = read("retired_pages_pending", "nvmlDeviceGetRetiredPagesPendingStatus",
                       handle)
        gpu["retired_pages"] = {"double_bit": len(double),
                                "single_bit": len(single) if single is not None else NA,
                                "pending": pending == FEATURE_ENABLED if pending != NA else NA}

    mask = read("clock_event_reasons", "nvmlDeviceGetCurrentClocksEventReasons", handle,
                absent=None)
    if mask is None:  # drivers/bindings before the rename
        mask = read("clock_event_reasons", "nvmlDeviceGetCurrentClocksThrottleReasons",
                    handle, absent=None)
    gpu["clock_event_reasons"] = NA if mask is None else clock_event_names(int(mask))

    gpu["temperature_c"] = read("temperature", "nvmlDeviceGetTemperature", handle,
                                TEMPERATURE_GPU)
    gpu["slowdown_temperature_c"] = read("slowdown_temperature",
                                         "nvmlDeviceGetTemperatureThreshold", handle,
                                         TEMPERATURE_THRESHOLD_SLOWDOWN)
    gpu["pcie"] = {
        "gen": read("pcie_gen", "nvmlDeviceGetCurrPcieLinkGeneration", handle),
        "max_gen": read("pcie_max_gen", "nvmlDeviceGetMaxPcieLinkGeneration", handle),
        "width": read("pcie_width", "nvmlDeviceGetCurrPcieLinkWidth", handle),
        "max_width": read("pcie_max_width", "nvmlDeviceGetMaxPcieLinkWidth", handle),
    }
    gpu["nvlink"] = _nvlinks(read, handle)
    histogram = read("row_remapper_histogram", "nvmlDeviceGetRowRemapperHistogram", handle,
                     absent=None)
    if histogram is not None:
        gpu["row_remap_banks"] = {key: int(getattr(histogram, key, 0))
                                  for key in ("max", "high", "partial", "low", "none")}
    gpu["recovery_action"] = _recovery_action(read, handle)


def _recovery_action(read: _Reader, handle: Any) -> Any:
    """The driver's recovery action for the GPU (NVML_FI_DEV_GET_GPU_RECOVERY_ACTION, drivers
    >= 570), or n/a on older drivers."""
    values = read("recovery_action", "nvmlDeviceGetFieldValues", handle,
                  [FI_DEV_GET_GPU_RECOVERY_ACTION], absent=None)
    try:
        value = values[0]
    except (TypeError, IndexError):
        return NA
    if getattr(value, "nvmlReturn", NVML_SUCCESS) != NVML_SUCCESS:
        return NA
    raw = getattr(getattr(value, "value", None), "uiVal", None)
    if not isinstance(raw, int):
        return NA
    return RECOVERY_ACTIONS.get(raw, str(raw))


def _sample_clock_events(lib: Any, handles: list[Any], gpus: list[dict[str, Any]],
                         window_s: float, samples: int = CLOCK_SAMPLES) -> None:
    """Reads every GPU's clock event reasons ``samples`` times over ``window_s``: each GPU
    (``gpus[i]`` is the GPU of ``handles[i]``) gets
    ``clock_event_samples`` {"samples", "window_s", "counts": {reason: samples seen}}."""
    function = (getattr(lib, "nvmlDeviceGetCurrentClocksEventReasons", None)
                or getattr(lib, "nvmlDeviceGetCurrentClocksThrottleReasons", None))
    if function is None:
        return
    counts: list[dict[str, int]] = [{} for _ in handles]
    taken = [0] * len(handles)
    started = time.monotonic()
    for sample in range(samples):
        for i, handle in enumerate(handles):
            try:
                mask = int(function(handle))
            except Exception:  # noqa: BLE001 - a sample that cannot be read is not counted
                continue
            taken[i] += 1
            for name in clock_event_names(mask):
                counts[i][name] = counts[i].get(name, 0) + 1
        if sample < samples - 1:
            time.sleep(window_s / max(samples - 1, 1))
    elapsed = round(time.monotonic() - started, 3)
    for i, gpu in enumerate(gpus):
        if taken[i]:
            gpu["clock_event_samples"] = {"samples": taken[i], "window_s": elapsed,
                                          "counts": counts[i]}


def _nvlinks(read: _Reader, handle: Any) -> Any:
    """{"up": [links], "down": [links], "remote_bus_ids": {link: bus id}}, or n/a without
    NVLink. A link the GPU does not have answers not-supported or invalid-argument."""
    links = getattr(read.lib, "NVML_NVLINK_MAX_LINKS", DEFAULT_NVLINK_MAX_LINKS)
    up, down, remote = [], [], {}
    for link in range(int(links)):
        try:
            state = read.lib.nvmlDeviceGetNvLinkState(handle, link)
        except AttributeError:
            return NA
        except read.lib.NVMLError as exc:
            code = getattr(exc, "value", None)
            if code == ERROR_GPU_IS_LOST:
                raise GpuLost(_text(exc)) from None
            continue  # not present (not supported / invalid argument) or unreadable
        if state == FEATURE_ENABLED:
            up.append(link)
            pci = read(f"nvlink{link}_remote", "nvmlDeviceGetNvLinkRemotePciInfo", handle, link,
                       absent=None)
            if pci is not None:
                remote[str(link)] = normalize_bus_id(_text(getattr(pci, "busId", "")))
        else:
            down.append(link)
    if not up and not down:
        return NA
    errors: dict[str, dict[str, int]] = {}
    for link in up:
        counters = {}
        for name, counter in NVLINK_ERROR_COUNTERS.items():
            value = read(f"nvlink{link}_{name}", "nvmlDeviceGetNvLinkErrorCounter", handle, link,
                         counter, absent=None)
            if isinstance(value, int):
                counters[name] = value
        if counters:
            errors[str(link)] = counters
    facts: dict[str, Any] = {"up": up, "down": down, "remote_bus_ids": remote}
    if errors:
        facts["errors"] = errors
    return facts


def _topology(read: _Reader, handles: list[Any], gpus: list[dict[str, Any]]) -> list[list[str]]:
    """A matrix like ``nvidia-smi topo -m``: NV<n> for n NVLinks between the pair, else the
    PCIe level (PIX, PXB, PHB, NODE, SYS)."""
    by_bus = {g.get("bus_id"): i for i, g in enumerate(gpus)}
    nvlinks = [[0] * len(gpus) for _ in gpus]
    for i, gpu in enumerate(gpus):
        links = gpu.get("nvlink")
        if isinstance(links, dict):
            for bus in links.get("remote_bus_ids", {}).values():
                if bus in by_bus:
                    nvlinks[i][by_bus[bus]] += 1
    matrix = []
    for i, first in enumerate(handles):
        row = []
        for j, second in enumerate(handles):
            if i == j:
                row.append("X")
            elif nvlinks[i][j]:
                row.append(f"NV{nvlinks[i][j]}")
            else:
                level = read(f"topology_{i}_{j}", "nvmlDeviceGetTopologyCommonAncestor",
                             first, second)
                row.append(TOPOLOGY_LEVELS.get(level, str(level)) if level != NA else NA)
        matrix.append(row)
    return matrix


def clock_event_names(mask: int) -> list[str]:
    names = [name for bit, name in CLOCK_EVENT_REASONS.items() if mask & bit]
    unknown = mask & ~sum(CLOCK_EVENT_REASONS)
    if unknown:
        names.append(f"0x{unknown:x}")
    return names


def normalize_bus_id(bus_id: str) -> str:
    """NVML's "00000000:1B:00.0" as torch and nvidia-smi -q show it: "0000:1b:00.0"."""
    text = bus_id.strip().lower()
    domain, sep, rest = text.partition(":")
    if not sep or not rest:
        return text or NA
    try:
        return f"{int(domain, 16):04x}:{rest}"
    except ValueError:
        return text


def _text(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, BaseException):
        return str(value) or type(value).__name__
    return value
