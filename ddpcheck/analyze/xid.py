"""Xid / SXid events (``remote.kernlog``) -> ``gpu_health`` findings: what each means, what to do.

Pure: the host's facts in, findings out; used by stage 0 (``health.host_findings``) for every
host and by ``ddpcheck node``. Each event names its GPU (the PCI bus id matched against the NVML
inventory: index and UUID), its number, how many times it was logged, and the meaning and action
from ``XIDS`` (NVIDIA's Xid catalog, r570 era). Severity by number: an error drains the node,
a warning is most often the application's own fault or a recorded, not yet harmful, event.
A kernel log the user may not read is said plainly as a warning: Xids were not checked.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from ..model.checks import Check
from ..model.facts import Gpu, HostFacts, XidEvent
from ..model.records import Finding, Severity


@dataclass(frozen=True)
class Xid:
    meaning: str
    action: str
    severity: Severity


_APP = "most often the application's own fault; if it follows this GPU across jobs, run DCGM " \
       "diagnostics (--dcgm 2)"
_RESET = "reset the GPU (nvidia-smi -r) or reboot the node before the next job"
_SERVICE = "drain the node: the GPU needs service (RMA) if it recurs after a reset"

XIDS: Mapping[int, Xid] = {
    8: Xid("GPU stopped processing (driver or hardware timeout)", _RESET, Severity.ERROR),
    13: Xid("graphics engine exception (illegal instruction or out-of-range access)", _APP,
            Severity.WARNING),
    31: Xid("GPU memory page fault (illegal address)", _APP, Severity.WARNING),
    32: Xid("invalid or corrupted push buffer stream (PCIe or driver)",
            "check the PCIe link and the driver; " + _RESET, Severity.WARNING),
    38: Xid("driver firmware error", _RESET, Severity.ERROR),
    43: Xid("GPU stopped processing a channel (the application was stopped)", _APP,
            Severity.WARNING),
    45: Xid("preemptive cleanup after an earlier error or a killed process",
            "look at the Xid before it", Severity.WARNING),
    48: Xid("double-bit (uncorrectable) ECC error", _RESET + "; " + _SERVICE, Severity.ERROR),
    56: Xid("display engine error", "update the driver; " + _RESET, Severity.WARNING),
    57: Xid("error programming video memory interface", _SERVICE, Severity.ERROR),
    61: Xid("internal micro-controller breakpoint", _RESET, Severity.WARNING),
    62: Xid("internal micro-controller halt", _RESET + "; " + _SERVICE, Severity.ERROR),
    63: Xid("ECC page retirement or row remapping recorded",
            "reset the GPU at the next chance so the remap takes effect", Severity.WARNING),
    64: Xid("ECC page retirement or row remapping FAILED", _SERVICE, Severity.ERROR),
    68: Xid("video decoder (NVDEC) exception", _APP, Severity.WARNING),
    69: Xid("graphics engine class error", _APP, Severity.WARNING),
    74: Xid("NVLink error",
            "check nvidia-smi nvlink -e and the other GPU of the link; " + _RESET + "; "
            "recurring: reseat or replace", Severity.ERROR),
    79: Xid("GPU has fallen off the bus",
            "drain the node and power-cycle it; check PCIe, power and cooling", Severity.ERROR),
    92: Xid("high single-bit ECC error rate",
            "watch it; run DCGM diagnostics (--dcgm 2)", Severity.WARNING),
    94: Xid("contained ECC error (the affected application was stopped)",
            "reset the GPU when it is idle so the row remap takes effect", Severity.WARNING),
    95: Xid("uncontained ECC error (every application on the GPU is affected)", _RESET,
            Severity.ERROR),
    109: Xid("context switch timeout", _APP, Severity.WARNING),
    110: Xid("security fault", _RESET, Severity.ERROR),
    119: Xid("GSP RPC timeout (the GPU's system processor stopped answering)",
             _RESET + "; update the driver if it recurs", Severity.ERROR),
    120: Xid("GSP error", _RESET + "; update the driver if it recurs", Severity.ERROR),
    121: Xid("C2C link corrected error", "watch it; recurring: service", Severity.WARNING),
    140: Xid("unrecovered ECC error", _RESET + "; " + _SERVICE, Severity.ERROR),
    143: Xid("GPU initialization failure", _SERVICE, Severity.ERROR),
    144: Xid("NVLink SAW error", _RESET, Severity.ERROR),
    145: Xid("NVLink RLW error", _RESET, Severity.ERROR),
    149: Xid("NVLink netir error", _RESET, Severity.ERROR),
    154: Xid("the driver changed the GPU's recovery action",
             "do what the recovery action says (ddpcheck node -v shows it)", Severity.ERROR),
}
SXID_ACTION = "NVSwitch error: for a fatal one reset the fabric (reboot the node); " \
              "non-fatal ones recurring: check the link's cable and both ends"


def describe(kind: str, number: int, message: str = "") -> Xid:
    if kind == "SXid":
        fatal = "non-fatal" not in message.lower() and "fatal" in message.lower()
        return Xid("NVSwitch " + ("fatal" if fatal else "non-fatal") + " error", SXID_ACTION,
                   Severity.ERROR if fatal else Severity.WARNING)
    return XIDS.get(number, Xid("an Xid this version of ddpcheck does not know",
                                "look it up in NVIDIA's Xid catalog", Severity.WARNING))


def xid_findings(host: str, facts: HostFacts) -> list[Finding]:
    log = facts.kernel_log
    if log is None:
        return []
    if log.error:
        return [Finding(Severity.WARNING, Check.GPU_HEALTH, f"{host}: {log.error}", host=host)]
    gpus = _gpus_by_bus(facts)
    findings: list[Finding] = []
    for event in log.events:
        kind, number = event.kind, event.xid
        info = describe(kind, number, event.message)
        where = _where(event, gpus)
        count = event.count
        times = f"{count} times, last {_clock(event.last)}" if count > 1 else \
            f"at {_clock(event.last)}"
        process = f", pid {event.pid}" if event.pid else ""
        if event.process:
            process += f" ({event.process})"
        findings.append(Finding(
            info.severity, Check.GPU_HEALTH,
            f"{host}: {kind} {number} on {where} ({times}{process}): {info.meaning}; "
            f"{info.action}. Kernel log: {event.message.strip()[:160]}",
            host=host))
    if log.dropped:
        findings.append(Finding(Severity.WARNING, Check.GPU_HEALTH,
                                f"{host}: {log.dropped} more Xid event(s) of other kinds "
                                f"were not listed", host=host))
    return findings


def _gpus_by_bus(facts: HostFacts) -> dict[str, Gpu]:
    gpus = facts.nvml.gpus if facts.nvml is not None else ()
    return {g.bus_id.lower(): g for g in gpus if g.bus_id}


def _where(event: XidEvent, gpus: Mapping[str, Gpu]) -> str:
    bus = event.bus_id if event.bus_id is not None else "?"
    if event.kind == "SXid":
        switch = event.nvswitch
        return f"NVSwitch {switch if switch is not None else '?'} ({bus})"
    gpu = gpus.get(bus.lower())
    if gpu is None:
        return f"the GPU at {bus} (not in NVML's inventory)"
    uuid = gpu.uuid
    return f"GPU {gpu.index} ({bus}" + (f", {uuid})" if uuid and uuid != "n/a" else ")")


def _clock(when: Optional[Any]) -> str:
    if not isinstance(when, (int, float)):
        return "?"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when))
