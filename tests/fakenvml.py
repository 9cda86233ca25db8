"""A small fake of the NVML calls ddpcheck.remote.nvml makes, for unit tests without a GPU.

It mirrors pynvml's surface for those calls only: the same function names and argument order,
errors raised as ``NVMLError(code)`` carrying ``.value`` (pynvml maps the code to a subclass such
as ``NVMLError_NotSupported``, which ddpcheck never relies on). ``test_nvml`` checks that every
name here exists in the real pynvml, so the fake cannot drift from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Optional

NOT_SUPPORTED = 3
NO_PERMISSION = 4
DRIVER_NOT_LOADED = 9
LIBRARY_NOT_FOUND = 12
GPU_IS_LOST = 15
LIB_RM_VERSION_MISMATCH = 18
UNKNOWN = 999
INVALID_ARGUMENT = 2

_TEXT = {NOT_SUPPORTED: "Not Supported", NO_PERMISSION: "Insufficient Permissions",
         DRIVER_NOT_LOADED: "Driver Not Loaded", LIBRARY_NOT_FOUND: "NVML Shared Library Not Found",
         GPU_IS_LOST: "GPU is lost", LIB_RM_VERSION_MISMATCH:
         "RM has detected an NVML/RM version mismatch.", UNKNOWN: "Unknown Error",
         INVALID_ARGUMENT: "Invalid Argument"}


class NVMLError(Exception):
    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        return _TEXT.get(self.value, f"NVML Error with code {self.value}")


@dataclass
class FakeGpu:
    """One GPU. ``fail`` maps an NVML function name to the error code it raises."""

    name: str = "NVIDIA H100 80GB HBM3"
    uuid: str = "GPU-00000000-0000-0000-0000-000000000000"
    bus_id: str = "00000000:1B:00.0"
    memory_total: int = 80 * 1024 ** 3
    memory_used: int = 512 * 1024 ** 2
    processes: list[tuple[int, Optional[int]]] = field(default_factory=list)
    ecc_volatile: int = 0
    ecc_aggregate: int = 0
    remapped_rows: tuple[int, int, int, int] = (0, 0, 0, 0)
    retired_double: list[int] = field(default_factory=list)
    retired_single: list[int] = field(default_factory=list)
    retired_pending: int = 0
    clock_events: int = 0x1  # idle
    temperature: int = 35
    slowdown_temperature: int = 87
    pcie: tuple[int, int, int, int] = (5, 5, 16, 16)  # gen, max gen, width, max width
    nvlinks: list[int] = field(default_factory=list)  # state per link (1 up, 0 down)
    nvlink_remote: dict[int, str] = field(default_factory=dict)  # link -> remote bus id
    fail: dict[str, int] = field(default_factory=dict)
    nvlink_errors: dict[int, dict[int, int]] = field(default_factory=dict)  # link -> counter
    row_histogram: Optional[tuple[int, int, int, int, int]] = None  # max high partial low none
    recovery_action: Optional[int] = None  # None: a driver before 570 (field not supported)
    clock_event_sequence: list[int] = field(default_factory=list)  # masks, one per read


class FakeNvml:
    """Module-like: ``nvml.read_gpus(lib=FakeNvml([...]))``."""

    NVMLError = NVMLError
    NVML_NVLINK_MAX_LINKS = 18

    def __init__(self, gpus: list[FakeGpu], driver: str = "550.54.15", cuda: int = 12040,
                 init_error: Optional[int] = None, topology: Optional[dict] = None,
                 without: tuple[str, ...] = ()) -> None:
        self.gpus = gpus
        self.driver = driver
        self.cuda = cuda
        self.init_error = init_error
        self.topology = topology or {}
        self.initialized = False
        self.shutdowns = 0
        for name in without:  # bindings that predate a call
            setattr(self, name, None)

    def __getattribute__(self, name: str) -> Any:
        value = object.__getattribute__(self, name)
        if value is None and name.startswith("nvml"):
            raise AttributeError(name)
        return value

    # -- system -------------------------------------------------------------------------
    def nvmlInit(self) -> None:
        if self.init_error is not None:
            raise NVMLError(self.init_error)
        self.initialized = True

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlSystemGetDriverVersion(self) -> str:
        return self.driver

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        return self.cuda

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeGpu:
        return self.gpus[index]

    # -- per GPU ----------------------------------------------------------------------------
    def _check(self, gpu: FakeGpu, function: str) -> None:
        if "*" in gpu.fail:
            raise NVMLError(gpu.fail["*"])
        if function in gpu.fail:
            raise NVMLError(gpu.fail[function])

    def nvmlDeviceGetName(self, gpu: FakeGpu) -> str:
        self._check(gpu, "nvmlDeviceGetName")
        return gpu.name

    def nvmlDeviceGetUUID(self, gpu: FakeGpu) -> str:
        self._check(gpu, "nvmlDeviceGetUUID")
        return gpu.uuid

    def nvmlDeviceGetPciInfo(self, gpu: FakeGpu) -> Any:
        self._check(gpu, "nvmlDeviceGetPciInfo")
        return SimpleNamespace(busId=gpu.bus_id.encode())

    def nvmlDeviceGetMemoryInfo(self, gpu: FakeGpu) -> Any:
        self._check(gpu, "nvmlDeviceGetMemoryInfo")
        return SimpleNamespace(total=gpu.memory_total, used=gpu.memory_used,
                               free=gpu.memory_total - gpu.memory_used)

    def nvmlDeviceGetComputeRunningProcesses(self, gpu: FakeGpu) -> list[Any]:
        self._check(gpu, "nvmlDeviceGetComputeRunningProcesses")
        return [SimpleNamespace(pid=pid, usedGpuMemory=used) for pid, used in gpu.processes]

    def nvmlDeviceGetTotalEccErrors(self, gpu: FakeGpu, error_type: int, counter: int) -> int:
        self._check(gpu, "nvmlDeviceGetTotalEccErrors")
        assert error_type == 1  # uncorrected
        return gpu.ecc_volatile if counter == 0 else gpu.ecc_aggregate

    def nvmlDeviceGetRemappedRows(self, gpu: FakeGpu) -> tuple[int, int, int, int]:
        self._check(gpu, "nvmlDeviceGetRemappedRows")
        return gpu.remapped_rows

    def nvmlDeviceGetRetiredPages(self, gpu: FakeGpu, cause: int) -> list[int]:
        self._check(gpu, "nvmlDeviceGetRetiredPages")
        return list(gpu.retired_double if cause == 1 else gpu.retired_single)

    def nvmlDeviceGetRetiredPagesPendingStatus(self, gpu: FakeGpu) -> int:
        self._check(gpu, "nvmlDeviceGetRetiredPagesPendingStatus")
        return gpu.retired_pending

    def nvmlDeviceGetCurrentClocksEventReasons(self, gpu: FakeGpu) -> int:
        self._check(gpu, "nvmlDeviceGetCurrentClocksEventReasons")
        if gpu.clock_event_sequence:
            return gpu.clock_event_sequence.pop(0)
        return gpu.clock_events

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, gpu: FakeGpu) -> int:
        self._check(gpu, "nvmlDeviceGetCurrentClocksThrottleReasons")
        return gpu.clock_events

    def nvmlDeviceGetTemperature(self, gpu: FakeGpu, sensor: int) -> int:
        self._check(gpu, "nvmlDeviceGetTemperature")
        assert sensor == 0
        return gpu.temperature

    def nvmlDeviceGetTemperatureThreshold(self, gpu: FakeGpu, threshold: int) -> int:
        self._check(gpu, "nvmlDeviceGetTemperatureThreshold")
        assert threshold == 1  # slowdown
        return gpu.slowdown_temperature

    def nvmlDeviceGetCurrPcieLinkGeneration(self, gpu: FakeGpu) -> int:
        self._check(gpu, "nvmlDeviceGetCurrPcieLinkGeneration")
        return gpu.pcie[0]

    def nvmlDeviceGetMaxPcieLinkGeneration(self, gpu: FakeGpu) -> int:
        self._check(gpu, "nvmlDeviceGetMaxPcieLinkGeneration")
        return gpu.pcie[1]

    def nvmlDeviceGetCurrPcieLinkWidth(self, gpu: FakeGpu) -> int:
        self._check(gpu, "nvmlDeviceGetCurrPcieLinkWidth")
        return gpu.pcie[2]

    def nvmlDeviceGetMaxPcieLinkWidth(self, gpu: FakeGpu) -> int:
        self._check(gpu, "nvmlDeviceGetMaxPcieLinkWidth")
        return gpu.pcie[3]

    def nvmlDeviceGetNvLinkState(self, gpu: FakeGpu, link: int) -> int:
        self._check(gpu, "nvmlDeviceGetNvLinkState")
        if link >= len(gpu.nvlinks):
            raise NVMLError(INVALID_ARGUMENT if gpu.nvlinks else NOT_SUPPORTED)
        return gpu.nvlinks[link]

    def nvmlDeviceGetNvLinkRemotePciInfo(self, gpu: FakeGpu, link: int) -> Any:
        self._check(gpu, "nvmlDeviceGetNvLinkRemotePciInfo")
        return SimpleNamespace(busId=gpu.nvlink_remote.get(link, "00000000:FF:00.0").encode())

    def nvmlDeviceGetNvLinkErrorCounter(self, gpu: FakeGpu, link: int, counter: int) -> int:
        self._check(gpu, "nvmlDeviceGetNvLinkErrorCounter")
        return gpu.nvlink_errors.get(link, {}).get(counter, 0)

    def nvmlDeviceGetRowRemapperHistogram(self, gpu: FakeGpu) -> Any:
        self._check(gpu, "nvmlDeviceGetRowRemapperHistogram")
        if gpu.row_histogram is None:
            raise NVMLError(NOT_SUPPORTED)
        return SimpleNamespace(**dict(zip(("max", "high", "partial", "low", "none"),
                                          gpu.row_histogram)))

    def nvmlDeviceGetFieldValues(self, gpu: FakeGpu, field_ids: list[int]) -> list[Any]:
        self._check(gpu, "nvmlDeviceGetFieldValues")
        values = []
        for field_id in field_ids:
            known = field_id == 230 and gpu.recovery_action is not None
            values.append(SimpleNamespace(
                fieldId=field_id, nvmlReturn=0 if known else NOT_SUPPORTED,
                value=SimpleNamespace(uiVal=gpu.recovery_action if known else 0)))
        return values

    def nvmlDeviceGetTopologyCommonAncestor(self, first: FakeGpu, second: FakeGpu) -> int:
        key = tuple(sorted((self.gpus.index(first), self.gpus.index(second))))
        return self.topology.get(key, 50)


FUNCTIONS = sorted(name for name in vars(FakeNvml) if name.startswith("nvml"))
