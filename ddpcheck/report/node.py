"""Report, node: ``ddpcheck node``'s text (the host's GPUs, interfaces, findings).

Pure, on the launcher (here: the node itself).
"""

from __future__ import annotations

import time
from typing import Any, Mapping, Sequence

from tabulate import tabulate

from ..analyze.health import format_size
from .table import findings_lines, footer_line
from ..model.report import Report


def render_node(report: Report, verbose: bool = False) -> str:
    host = report.hosts[0] if report.hosts else None
    # the record as the host sent it: this page shows fields no rule reads (names, topology)
    facts: Mapping[str, Any] = host.facts.raw if host else {}
    lines = header_lines(host.name if host else "?", facts)
    lines += kernel_log_lines(facts)
    if verbose:
        lines += interface_lines(facts)
        lines += infiniband_lines(facts)
    lines.append("#")
    nvml = facts.get("nvml") if isinstance(facts.get("nvml"), Mapping) else {}
    if nvml.get("gpus"):
        lines.append(gpu_table(nvml["gpus"], verbose))
        if verbose and nvml.get("topology"):
            lines.append("#")
            lines.append(topology_table(nvml["topology"]))
        lines.append("#")
    else:
        why = nvml.get("error") or nvml.get("reason") or "none found"
        lines.append(f"# GPUs: none ({why})")
    lines += findings_lines(report.findings)
    drained = report.extra.get("slurm_drain")
    if isinstance(drained, Mapping):
        lines.append(f"# SLURM: {'drained' if drained.get('drained') else 'NOT drained'} "
                     f"{drained.get('node')}: {drained.get('error') or drained.get('reason')}")
    lines.append(footer_line(report))
    return "\n".join(lines) + "\n"


def header_lines(name: str, facts: Mapping[str, Any]) -> list[str]:
    nvml = facts.get("nvml") if isinstance(facts.get("nvml"), Mapping) else {}
    torch = (f"torch {facts.get('torch')} (import {facts.get('import_s')}s)"
             if facts.get("torch") else
             f"torch: {facts.get('torch_error')}" if facts.get("torch_error") else "torch: skipped")
    driver = (f", driver {nvml.get('driver')} (CUDA {nvml.get('cuda_driver')})"
              if nvml.get("available") else "")
    lines = [f"# ddpcheck node: {name}, python {facts.get('python')}, {torch}{driver}"]
    cpu = facts.get("cpu") if isinstance(facts.get("cpu"), Mapping) else {}
    memory = facts.get("memory") if isinstance(facts.get("memory"), Mapping) else {}
    shm = facts.get("shm") if isinstance(facts.get("shm"), Mapping) else {}
    workdir = facts.get("workdir") if isinstance(facts.get("workdir"), Mapping) else {}
    limits = facts.get("ulimit") if isinstance(facts.get("ulimit"), Mapping) else {}
    size = format_size
    lines.append(
        f"# cpus {cpu.get('usable', cpu.get('count', '?'))} (load {cpu.get('load1', '?')}), "
        f"memory {size(memory.get('available'))} free of {size(memory.get('total'))}, "
        f"/dev/shm {size(shm.get('total'))}, workdir {workdir.get('path', '?')} "
        f"{size(workdir.get('free'))} free, ulimit -n {_limit(limits.get('nofile'))} "
        f"-l {_limit(limits.get('memlock'), scale=True)}")
    return lines


def kernel_log_lines(facts: Mapping[str, Any]) -> list[str]:
    log = facts.get("kernel_log")
    if not isinstance(log, Mapping):
        return []
    if log.get("error"):
        return ["# kernel log: NOT read (see the gpu_health warning)"]
    since, loaded = log.get("since"), log.get("driver_loaded")
    if isinstance(loaded, (int, float)) and not (isinstance(since, (int, float))
                                                   and since > loaded):
        since, what = loaded, "the nvidia driver's load at "
    else:
        what = ""
    when = what + (time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since))
                   if isinstance(since, (int, float)) else "boot")
    events = [e for e in log.get("events") or [] if isinstance(e, Mapping)]
    total = sum(int(e.get("count") or 1) for e in events)
    return [f"# kernel log ({log.get('source')}) since {when}: {total} Xid/SXid event(s)"
            + (f" of {len(events)} kind(s)" if events else "")]


def infiniband_lines(facts: Mapping[str, Any]) -> list[str]:
    ib = facts.get("infiniband")
    devices = ib.get("devices") if isinstance(ib, Mapping) else None
    if not isinstance(devices, Mapping) or not devices:
        return ["# infiniband: no HCA"]
    parts = []
    for hca, info in sorted(devices.items()):
        for port, state in sorted((info.get("ports") or {}).items()):
            parts.append(f"{hca}/{port} {state.get('state')} {state.get('link_layer') or ''} "
                         f"{state.get('rate') or '?'}".replace("  ", " "))
    return ["# infiniband: " + "; ".join(parts)]


def interface_lines(facts: Mapping[str, Any]) -> list[str]:
    interfaces = facts.get("interfaces")
    if not isinstance(interfaces, Mapping):
        return []
    parts = []
    for name, info in sorted(interfaces.items()):
        if isinstance(info, Mapping):
            state = "up" if info.get("up") else "down"
            addresses = ",".join(a for a in info.get("addresses", []) if ":" not in a) or "-"
            parts.append(f"{name} {addresses} ({state})")
    lines = ["# interfaces: " + "; ".join(parts)]
    route = facts.get("route")
    if isinstance(route, Mapping):
        through = f"{route.get('interface')} from {route.get('source')}"
        lines.append(f"# route to {route.get('master')}: {route.get('error') or through}")
    return lines


def gpu_table(gpus: Sequence[Mapping[str, Any]], verbose: bool = False) -> str:
    rows = []
    for gpu in gpus:
        if gpu.get("lost"):
            rows.append([gpu.get("index"), "LOST", "-", "-", "-", "-", "-", "-", "-", "-"])
            continue
        pcie = gpu.get("pcie") if isinstance(gpu.get("pcie"), Mapping) else {}
        ecc = gpu.get("ecc_uncorrected")
        rows_ = gpu.get("remapped_rows")
        links = gpu.get("nvlink")
        reasons = gpu.get("clock_event_reasons")
        rows.append([
            gpu.get("index"), gpu.get("name"), gpu.get("bus_id"), gpu.get("temperature_c"),
            f"{gpu.get('memory_used_mib')}/{gpu.get('memory_total_mib')}",
            ecc.get("volatile") if isinstance(ecc, Mapping) else ecc,
            ("pending" if rows_.get("pending") else "failed" if rows_.get("failed") else "ok")
            if isinstance(rows_, Mapping) else rows_,
            f"gen{pcie.get('gen')}/{pcie.get('max_gen')} x{pcie.get('width')}/"
            f"{pcie.get('max_width')}",
            f"{len(links.get('up', []))} up, {len(links.get('down', []))} down"
            if isinstance(links, Mapping) else links,
            ",".join(reasons) if isinstance(reasons, list) else reasons,
        ])
    headers = ["gpu", "name", "bus_id", "temp_C", "mem_MiB", "ecc_unc", "remap", "pcie",
               "nvlink", "clock_events"]
    if not verbose:
        headers, rows = headers[:-1], [row[:-1] for row in rows]
    return tabulate(rows, headers=headers, tablefmt="simple", disable_numparse=True,
                    missingval="-")


def topology_table(matrix: Sequence[Sequence[str]]) -> str:
    headers = [""] + [f"GPU{i}" for i in range(len(matrix))]
    rows = [[f"GPU{i}", *row] for i, row in enumerate(matrix)]
    return tabulate(rows, headers=headers, tablefmt="plain")


def _limit(value: Any, scale: bool = False) -> str:
    if isinstance(value, (list, tuple)) and value:
        soft = value[0]
        if isinstance(soft, int):
            if soft < 0:
                return "unlimited"
            return format_size(soft) if scale else str(soft)
    return "?"
