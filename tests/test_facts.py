"""collect.facts: a host's stage-0 record read once into model.facts.HostFacts.

The healthy record is the real agent's, collected on this machine; the partial and garbled ones
are what an old, broken or hostile agent could send: they must read, never raise, and the
health rules must run on what they give."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from ddpcheck.analyze import health
from ddpcheck.collect.facts import read_facts, torch_import_s
from ddpcheck.collect.hostoutput import parse_output
from ddpcheck.model.facts import HostFacts, IbPort, Interface
from ddpcheck.remote.agent import collect_facts

PACKAGE = Path(__file__).resolve().parents[1] / "ddpcheck"
FIXTURES = Path(__file__).resolve().parent / "fixtures"

FULL = {
    "hostname": "n1", "addresses": ["10.0.0.2"], "python": "3.11.7",
    "executable": "/usr/bin/python3", "torch": "2.13.0", "import_s": 1.5, "gpus": 2,
    "cuda": "12.4", "env": {"NCCL_IB_HCA": "mlx5_0", "X": 3},
    "interfaces": {"eth0": {"addresses": ["10.0.0.2"], "up": True, "running": True}},
    "route": {"master": "n0", "address": "10.0.0.1", "interface": "eth0",
              "source": "10.0.0.2"},
    "shm": {"path": "/dev/shm", "total": 1 << 34, "free": 1 << 33},
    "workdir": {"path": "/scratch", "free": 5 << 30, "writable": True, "inodes_free": 7},
    "memory": {"total": 64 << 30, "available": 60 << 30},
    "ulimit": {"nofile": [65536, 65536], "memlock": [-1, -1]}, "rdma_devices": ["mlx5_0"],
    "nvml": {"available": True, "driver": "550.54.15", "gpus": [
        {"index": 0, "bus_id": "0000:17:00.0", "uuid": "GPU-a", "temperature_c": 40,
         "slowdown_temperature_c": 90, "ecc_uncorrected": {"volatile": 0, "aggregate": 1},
         "remapped_rows": {"pending": False, "failed": False},
         "retired_pages": {"pending": False, "double_bit": 0},
         "row_remap_banks": {"none": 0}, "recovery_action": "none",
         "clock_event_reasons": ["gpu_idle"], "pcie": {"gen": 4, "max_gen": 4, "width": 16,
                                                       "max_width": 16},
         "nvlink": {"up": [0, 1], "down": [], "errors": {"0": {"crc": 0}}},
         "processes": [{"pid": 77}], "memory_used_mib": 500, "errors": {}},
        {"index": 1, "bus_id": "0000:18:00.0", "lost": "GPU is lost"}]},
    "kernel_log": {"events": [{"kind": "Xid", "xid": 79, "bus_id": "0000:18:00.0",
                               "message": "NVRM: Xid 79", "count": 2, "last": 1000.0,
                               "pid": 9, "process": "python"}], "dropped": 3},
    "dcgm": {"level": 1, "available": True, "tests": [
        {"name": "memory", "status": "FAIL", "gpu": 1, "messages": ["bad"]}]},
    "infiniband": {"devices": {"mlx5_0": {"ports": {"1": {
        "state": "ACTIVE", "phys_state": "LinkUp", "rate": "100 Gb/sec (4X EDR)",
        "rate_gbps": 100, "link_layer": "InfiniBand", "counters": {"symbol_error": 2}}}}}},
    "time_end": 1000.5, "duration_s": 2.0, "launcher_clock": [999.0, 1001.0],
}


def test_the_real_agents_record_on_this_machine_reads_into_its_typed_fields() -> None:
    raw = json.loads(json.dumps(collect_facts(20.0, None, torch_mode=None, workdir=".")))
    facts = read_facts(raw)
    assert facts.raw is raw and facts
    assert (facts.hostname, facts.python, facts.executable) == (
        raw["hostname"], raw["python"], raw["executable"])
    assert facts.addresses == tuple(raw["addresses"])
    assert facts.env == {k: str(v) for k, v in raw["env"].items()}
    assert set(facts.interfaces) == set(raw["interfaces"])
    assert facts.memory.total == raw["memory"]["total"]
    assert facts.workdir.free == raw["workdir"]["free"] and facts.workdir.writable is True
    assert facts.shm.total == raw["shm"]["total"] and not facts.shm_missing
    assert facts.ulimit.nofile == tuple(raw["ulimit"]["nofile"])
    assert facts.nvml is not None and facts.nvml.available == bool(raw["nvml"]["available"])
    assert facts.kernel_log is not None and facts.infiniband is not None
    assert facts.time_end == raw["time_end"] and facts.duration_s == raw["duration_s"]
    assert facts.torch_inspected is False and facts.torch_gpus is None  # torch not looked at


def test_a_full_record_reads_every_section() -> None:
    facts = read_facts(FULL)
    assert facts.torch == "2.13.0" and facts.import_s == 1.5 and facts.gpus == 2
    assert facts.torch_gpus == 2.0 and facts.cuda is True
    assert facts.env == {"NCCL_IB_HCA": "mlx5_0", "X": "3"}
    assert facts.interfaces == {"eth0": Interface(("10.0.0.2",), True, True)}
    assert facts.route.interface == "eth0" and facts.route.error is None
    assert facts.ulimit.memlock == (-1, -1) and facts.rdma_devices == ("mlx5_0",)
    assert facts.launcher_clock == (999.0, 1001.0)
    first, lost = facts.nvml.gpus
    assert facts.nvml.listed == 2 and lost.lost == "GPU is lost"
    assert first.ecc_uncorrected.aggregate == 1.0 and first.retired_pages.pending is False
    assert first.clock_event_reasons == ("gpu_idle",) and first.pcie.max_width == 16.0
    assert first.nvlink.up == (0, 1) and first.nvlink.errors == {"0": {"crc": 0}}
    assert first.processes == (77,) and first.memory_used_mib == 500.0
    (event,) = facts.kernel_log.events
    assert (event.xid, event.count, event.last, event.pid) == (79, 2, 1000.0, 9)
    assert facts.kernel_log.dropped == 3
    (test,) = facts.dcgm.tests
    assert (test.status, test.gpu, test.messages) == ("fail", 1, ("bad",))
    port = facts.infiniband.devices["mlx5_0"]["1"]
    assert port == IbPort("ACTIVE", "LinkUp", "100 Gb/sec (4X EDR)", 100.0, "InfiniBand",
                          {"symbol_error": 2}) and port.active
    checks = {f.check for f in health.host_findings("n1", facts)}
    assert {"gpu_health", "infiniband"} <= checks  # the lost GPU, its Xid, DCGM, the counters


def test_a_partial_record_leaves_what_it_did_not_say_empty() -> None:
    facts = read_facts({"hostname": "h3", "gpus": 0})
    assert facts.hostname == "h3" and facts.gpus == 0
    assert facts.env is None and facts.interfaces is None and facts.nvml is None
    assert facts.addresses is None and facts.route is None and facts.dcgm is None
    assert facts.torch_gpus is None  # no "torch": torch was not inspected
    assert read_facts({"shm": None}).shm_missing is True
    silent = read_facts({"torch_error": "", "workdir_error": 0, "nvml": {"error": None}})
    assert (silent.torch_error, silent.workdir_error, silent.nvml.error) == (None, None, None)
    assert read_facts(None) == HostFacts() and not read_facts(None)
    assert health.host_findings("h3", facts) == []


GARBAGE_VALUES = (None, "x", 3, -1.5, True, [], [None, 1, "a"], {"a": None}, {"gpus": "many"})


@pytest.mark.parametrize("value", GARBAGE_VALUES, ids=repr)
def test_garbled_fields_never_raise_in_the_parser_or_the_rules(value) -> None:
    keys = set(FULL) | {"torch_error", "cuda_error", "workdir_error", "workdir_write_error"}
    every_key = {k: value for k in keys}
    one_level_down = {k: ({kk: value for kk in v} if isinstance(v, dict) else v)
                      for k, v in FULL.items()}
    gpus_garbled = {**FULL, "nvml": {"available": True, "gpus": [
        {k: value for k in FULL["nvml"]["gpus"][0]}, value]}}
    for raw in (every_key, one_level_down, gpus_garbled):
        facts = read_facts(raw)
        health.host_findings("n1", facts, health.Stage0Context(
            clock_window=facts.launcher_clock, slots=2, backend="nccl", expected_gpus=1))


def test_the_facts_line_of_a_garbled_stream_reads() -> None:
    parsed = parse_output((FIXTURES / "garbage.txt").read_text(errors="replace"))
    assert read_facts(parsed.facts).hostname == "h1"


def test_torchruns_import_seconds_are_read_tolerantly() -> None:
    assert torch_import_s({"import_s": 45}) == 45.0
    assert torch_import_s({"import_s": "slow"}) is None and torch_import_s(None) is None


def test_analyze_reads_typed_facts_never_the_dict() -> None:
    """The line this module holds: no rule in analyze takes a facts mapping, reads the record
    as sent (``.raw``) or calls ``.get`` on anything named facts."""
    offences = []
    for path in sorted((PACKAGE / "analyze").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            where = f"{path.name}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.arg) and node.arg == "facts" and node.annotation is not None:
                if ast.unparse(node.annotation) != "HostFacts":
                    offences.append(f"{where}: facts: {ast.unparse(node.annotation)}")
            if isinstance(node, ast.Attribute) and node.attr == "raw":
                offences.append(f"{where}: .raw")
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "get"):
                receiver = ast.unparse(node.func.value)
                if receiver == "facts" or receiver.endswith(".facts"):
                    offences.append(f"{where}: {receiver}.get(...)")
    assert offences == []
