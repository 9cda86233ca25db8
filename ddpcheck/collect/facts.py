"""Collect: a host's stage-0 record (the agent's ``facts`` JSON) -> ``model.facts.HostFacts``.

Pure and tolerant: the one place the record's dict is read. A missing field, or one of the
wrong type, becomes None or empty, never an exception, so that a host with an older or broken
agent is judged on what it did say. Used by the engine's stage-0 recording and by
``ddpcheck node`` (the same record, collected in-process).
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Optional, Sequence

from ..model.facts import (ClockSamples, Dcgm, DcgmTest, Ecc, Gpu, HostFacts, IbPort, InfiniBand,
                           Interface, KernelLog, Memory, NvLink, Nvml, Pcie, RemappedRows,
                           RetiredPages, Route, Shm, Ulimits, Workdir, XidEvent)


def read_facts(raw: Optional[Mapping[str, Any]]) -> HostFacts:
    """The typed record of ``raw`` (None or not a mapping: the empty record)."""
    if not isinstance(raw, Mapping):
        return HostFacts()
    import_s = raw.get("import_s")
    addresses = raw.get("addresses")
    return HostFacts(
        raw=raw,
        hostname=_text(raw.get("hostname")),
        python=_text(raw.get("python")),
        executable=_text(raw.get("executable")),
        torch=_text(raw.get("torch")),
        torch_error=_said(raw.get("torch_error")),
        torch_inspected="torch" in raw,
        import_s=import_s if _number(import_s) is not None else None,
        gpus=_count(raw.get("gpus")),
        torch_gpus=_number(raw.get("gpus")) if "torch" in raw else None,
        cuda=bool(raw.get("cuda")),
        cuda_error=_said(raw.get("cuda_error")),
        addresses=(None if "addresses" not in raw else _texts(addresses)),
        env=_env(raw.get("env")),
        interfaces=_interfaces(raw.get("interfaces")),
        route=_route(raw.get("route")),
        shm=_shm(raw.get("shm")),
        shm_missing="shm" in raw and raw.get("shm") is None,
        workdir=_workdir(raw.get("workdir")),
        workdir_error=_said(raw.get("workdir_error")),
        workdir_write_error=_said(raw.get("workdir_write_error")),
        memory=_memory(raw.get("memory")),
        ulimit=_ulimits(raw.get("ulimit")),
        rdma_devices=_texts(raw.get("rdma_devices")),
        nvml=_nvml(raw.get("nvml")),
        kernel_log=_kernel_log(raw.get("kernel_log")),
        dcgm=_dcgm(raw.get("dcgm")),
        infiniband=_infiniband(raw.get("infiniband")),
        time_end=_number(raw.get("time_end")),
        duration_s=_number(raw.get("duration_s")),
        launcher_clock=_window(raw.get("launcher_clock")),
    )


def torch_import_s(record: Optional[Mapping[str, Any]]) -> Optional[float]:
    """The seconds of torchrun's ``import torch`` (``remote.torchrun``'s ``torch_import``
    record); None when it did not say."""
    return _number(record.get("import_s")) if isinstance(record, Mapping) else None


# -- sections -------------------------------------------------------------------------------

def _env(value: Any) -> Optional[Mapping[str, str]]:
    if not isinstance(value, Mapping):
        return None
    return {str(k): str(v) for k, v in value.items()}


def _interfaces(value: Any) -> Optional[Mapping[str, Interface]]:
    if not isinstance(value, Mapping):
        return None
    return {str(name): _interface(entry) for name, entry in value.items()}


def _interface(entry: Any) -> Interface:
    if not isinstance(entry, Mapping):
        return Interface(addresses=None)
    return Interface(addresses=_texts(entry.get("addresses")), up=_flag(entry.get("up")),
                     running=_flag(entry.get("running")))


def _route(value: Any) -> Optional[Route]:
    if not isinstance(value, Mapping):
        return None
    return Route(master=value.get("master"), address=value.get("address"),
                 interface=_said(value.get("interface")), source=value.get("source"),
                 error=_said(value.get("error")))


def _shm(value: Any) -> Optional[Shm]:
    if not isinstance(value, Mapping):
        return None
    return Shm(total=_number(value.get("total")), free=_number(value.get("free")))


def _workdir(value: Any) -> Optional[Workdir]:
    if not isinstance(value, Mapping):
        return None
    return Workdir(path=value.get("path"), free=_number(value.get("free")),
                   writable=_flag(value.get("writable")),
                   inodes_free=_number(value.get("inodes_free")))


def _memory(value: Any) -> Optional[Memory]:
    if not isinstance(value, Mapping):
        return None
    return Memory(total=_number(value.get("total")), available=_number(value.get("available")))


def _ulimits(value: Any) -> Optional[Ulimits]:
    if not isinstance(value, Mapping):
        return None
    return Ulimits(nofile=_limit(value.get("nofile")), memlock=_limit(value.get("memlock")))


def _nvml(value: Any) -> Optional[Nvml]:
    if not isinstance(value, Mapping):
        return None
    listed = value.get("gpus") if isinstance(value.get("gpus"), list) else []
    return Nvml(available=bool(value.get("available")), error=_said(value.get("error")),
                reason=_text(value.get("reason")), device_nodes=_texts(value.get("device_nodes")),
                gpus=tuple(_gpu(g) for g in listed if isinstance(g, Mapping)),
                listed=len(listed))


def _gpu(gpu: Mapping[str, Any]) -> Gpu:
    ecc, rows, pages = (gpu.get(k) for k in ("ecc_uncorrected", "remapped_rows",
                                             "retired_pages"))
    banks, samples, pcie = (gpu.get(k) for k in ("row_remap_banks", "clock_event_samples",
                                                 "pcie"))
    reasons, processes, errors = (gpu.get(k) for k in ("clock_event_reasons", "processes",
                                                       "errors"))
    return Gpu(
        index=gpu.get("index"),
        bus_id=_said(gpu.get("bus_id")),
        uuid=_said(gpu.get("uuid")),
        lost=_said(gpu.get("lost")),
        ecc_uncorrected=(Ecc(_number(ecc.get("volatile")), _number(ecc.get("aggregate")))
                         if isinstance(ecc, Mapping) else None),
        remapped_rows=(RemappedRows(bool(rows.get("failed")), bool(rows.get("pending")))
                       if isinstance(rows, Mapping) else None),
        retired_pages=(RetiredPages(pages.get("pending") is True,
                                    _number(pages.get("double_bit")))
                       if isinstance(pages, Mapping) else None),
        banks_without_spare_rows=_number(banks.get("none")) if isinstance(banks, Mapping)
        else None,
        recovery_action=(gpu.get("recovery_action")
                         if isinstance(gpu.get("recovery_action"), str) else None),
        clock_event_reasons=(tuple(str(r) for r in reasons) if isinstance(reasons, list)
                             else None),
        clock_event_samples=_samples(samples),
        temperature_c=_number(gpu.get("temperature_c")),
        slowdown_temperature_c=_number(gpu.get("slowdown_temperature_c")),
        pcie=(Pcie(*(_number(pcie.get(k)) for k in ("width", "max_width", "gen", "max_gen")))
              if isinstance(pcie, Mapping) else None),
        nvlink=_nvlink(gpu.get("nvlink")),
        processes=(tuple(p.get("pid") for p in processes if isinstance(p, Mapping))
                   if isinstance(processes, list) else ()),
        memory_used_mib=_number(gpu.get("memory_used_mib")),
        errors=dict(errors) if isinstance(errors, Mapping) else {},
    )


def _samples(value: Any) -> Optional[ClockSamples]:
    if not isinstance(value, Mapping) or not isinstance(value.get("counts"), Mapping):
        return None
    counts = {str(r): n for r, n in value["counts"].items() if _number(n) is not None}
    return ClockSamples(samples=_count(value.get("samples")), counts=counts,
                        window_s=value.get("window_s"))


def _nvlink(value: Any) -> Optional[NvLink]:
    if not isinstance(value, Mapping):
        return None
    errors = value.get("errors") if isinstance(value.get("errors"), Mapping) else {}
    return NvLink(up=_items(value.get("up")), down=_items(value.get("down")),
                  errors={str(link): {str(k): v for k, v in counters.items()
                                      if isinstance(v, int) and not isinstance(v, bool)}
                          for link, counters in errors.items()
                          if isinstance(counters, Mapping) and _int(link) is not None})


def _kernel_log(value: Any) -> Optional[KernelLog]:
    if not isinstance(value, Mapping):
        return None
    events = value.get("events") if isinstance(value.get("events"), list) else []
    return KernelLog(error=_said(value.get("error")),
                     events=tuple(_xid_event(e) for e in events if isinstance(e, Mapping)),
                     dropped=value.get("dropped") or None)


def _xid_event(event: Mapping[str, Any]) -> XidEvent:
    xid = _int(event.get("xid"))
    return XidEvent(kind=str(event.get("kind", "Xid")), xid=-1 if xid is None else xid,
                    message=str(event.get("message", "")),
                    bus_id=_text(event.get("bus_id")), nvswitch=event.get("nvswitch"),
                    count=_int(event.get("count")) or 1, last=_number(event.get("last")),
                    pid=event.get("pid") or None, process=_said(event.get("process")))


def _dcgm(value: Any) -> Optional[Dcgm]:
    if not isinstance(value, Mapping):
        return None
    tests = value.get("tests") if isinstance(value.get("tests"), list) else []
    return Dcgm(level=value.get("level"), available=bool(value.get("available", True)),
                reason=_text(value.get("reason")), error=_said(value.get("error")),
                runtime_error=_said(value.get("runtime_error")),
                tests=tuple(DcgmTest(name=t.get("name"),
                                     status=str(t.get("status", "")).lower(), gpu=t.get("gpu"),
                                     messages=_texts(t.get("messages")))
                            for t in tests if isinstance(t, Mapping)))


def _infiniband(value: Any) -> Optional[InfiniBand]:
    if not isinstance(value, Mapping):
        return None
    devices = value.get("devices") if isinstance(value.get("devices"), Mapping) else {}
    return InfiniBand(error=_said(value.get("error")),
                      devices={str(hca): _ports(info) for hca, info in devices.items()})


def _ports(info: Any) -> Mapping[str, IbPort]:
    ports = info.get("ports") if isinstance(info, Mapping) else None
    if not isinstance(ports, Mapping):
        return {}
    return {str(port): _port(state) for port, state in ports.items()
            if isinstance(state, Mapping)}


def _port(state: Mapping[str, Any]) -> IbPort:
    counters = state.get("counters") if isinstance(state.get("counters"), Mapping) else {}
    return IbPort(state=_text(state.get("state")), phys_state=_text(state.get("phys_state")),
                  rate=state.get("rate"), rate_gbps=_number(state.get("rate_gbps")),
                  link_layer=_text(state.get("link_layer")),
                  counters={str(k): v for k, v in counters.items()
                            if isinstance(v, int) and not isinstance(v, bool)})


# -- values ---------------------------------------------------------------------------------

def _number(value: Any) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _int(value: Any) -> Optional[int]:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"-?[0-9]+", value.strip()):
        return int(value)
    return None


def _count(value: Any) -> int:
    """A count as the host wrote it (a number or its text); 0 when it is neither."""
    number = _number(value)
    return int(number) if number is not None else (_int(value) or 0)


def _text(value: Any) -> Optional[str]:
    return None if value is None else str(value)


def _said(value: Any) -> Optional[str]:
    """A message as the host wrote it; None when it said nothing (absent, null, empty)."""
    return str(value) if value else None


def _texts(value: Any) -> tuple[str, ...]:
    return tuple(str(v) for v in value) if isinstance(value, (list, tuple)) else ()


def _items(value: Any) -> tuple[Any, ...]:
    return tuple(value) if isinstance(value, (list, tuple)) else ()


def _flag(value: Any) -> Optional[bool]:
    return value if isinstance(value, bool) else None


def _limit(value: Any) -> Optional[tuple[int, int]]:
    if isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value):
        return int(value[0]), int(value[1])
    return None


def _window(value: Any) -> Optional[tuple[float, float]]:
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(
            _number(v) is not None for v in value):
        return float(value[0]), float(value[1])
    return None
