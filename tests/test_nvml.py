"""ddpcheck.remote.nvml against a fake of the NVML calls it makes, and health's GPU rules on the result."""

from __future__ import annotations

import json

import pytest

from fakenvml import (DRIVER_NOT_LOADED, FUNCTIONS, GPU_IS_LOST, LIB_RM_VERSION_MISMATCH,
                      LIBRARY_NOT_FOUND, NO_PERMISSION, NOT_SUPPORTED, UNKNOWN, FakeGpu,
                      FakeNvml)

from ddpcheck.collect.facts import read_facts
from ddpcheck.analyze import health
from ddpcheck.remote import nvml
from ddpcheck.model.records import Severity

NA = nvml.NA


@pytest.fixture(autouse=True)
def short_clock_window(monkeypatch):
    """Clock event reasons are sampled over a window; a short one keeps the tests fast."""
    monkeypatch.setattr(nvml, "CLOCK_WINDOW_S", 0.02)


def gpu_findings(facts):
    return health.gpu_health_findings("n1", read_facts({"nvml": facts}),
                                      health.Stage0Context())


def two_linked_gpus(**overrides):
    """Two H100s joined by 2 NVLinks."""
    first = FakeGpu(uuid="GPU-aaaa", bus_id="00000000:1B:00.0", nvlinks=[1, 1],
                    nvlink_remote={0: "00000000:2C:00.0", 1: "00000000:2C:00.0"})
    second = FakeGpu(uuid="GPU-bbbb", bus_id="00000000:2C:00.0", nvlinks=[1, 1],
                     nvlink_remote={0: "00000000:1B:00.0", 1: "00000000:1B:00.0"})
    for key, value in overrides.items():
        setattr(first, key, value)
    return [first, second]


def test_fake_names_exist_in_real_pynvml():
    pynvml = pytest.importorskip("pynvml")
    missing = [name for name in FUNCTIONS if not hasattr(pynvml, name)]
    assert missing == []
    # ddpcheck reads the code from .value, as pynvml's error subclasses carry it
    error = pynvml.NVMLError_NotSupported()
    assert isinstance(error, pynvml.NVMLError) and error.value == nvml.ERROR_NOT_SUPPORTED
    assert pynvml.NVMLError(nvml.ERROR_GPU_IS_LOST).value == 15


def test_healthy_inventory_and_topology():
    fake = FakeNvml(two_linked_gpus())
    facts = nvml.read_gpus(fake)
    assert facts["available"] and facts["driver"] == "550.54.15"
    assert facts["cuda_driver"] == "12.4"
    first, second = facts["gpus"]
    assert first["bus_id"] == "0000:1b:00.0" and second["bus_id"] == "0000:2c:00.0"
    assert first["uuid"] == "GPU-aaaa" and first["name"] == "NVIDIA H100 80GB HBM3"
    assert first["memory_total_mib"] == 80 * 1024 and first["memory_used_mib"] == 512
    assert first["ecc_uncorrected"] == {"volatile": 0, "aggregate": 0}
    assert first["remapped_rows"] == {"correctable": 0, "uncorrectable": 0, "pending": False,
                                      "failed": False}
    assert first["retired_pages"] == {"double_bit": 0, "single_bit": 0, "pending": False}
    assert first["clock_event_reasons"] == ["gpu_idle"]
    assert first["pcie"] == {"gen": 5, "max_gen": 5, "width": 16, "max_width": 16}
    assert first["nvlink"]["up"] == [0, 1] and first["nvlink"]["down"] == []
    assert facts["topology"] == [["X", "NV2"], ["NV2", "X"]]
    assert "errors" not in first
    assert fake.shutdowns == 1
    json.dumps(facts)  # travels as one JSON line
    assert gpu_findings(facts) == []


def test_pcie_topology_levels_without_nvlink():
    gpus = [FakeGpu(bus_id=f"00000000:{b}:00.0") for b in ("1B", "2C", "9A")]
    facts = nvml.read_gpus(FakeNvml(gpus, topology={(0, 1): 10, (0, 2): 50, (1, 2): 50}))
    assert facts["topology"] == [["X", "PIX", "SYS"], ["PIX", "X", "SYS"], ["SYS", "SYS", "X"]]
    assert all(g["nvlink"] == NA for g in facts["gpus"])


@pytest.mark.parametrize("code", [NOT_SUPPORTED, NO_PERMISSION])
def test_unsupported_reads_are_na_never_a_failure(code):
    calls = ["nvmlDeviceGetTotalEccErrors", "nvmlDeviceGetRemappedRows",
             "nvmlDeviceGetRetiredPages", "nvmlDeviceGetCurrentClocksEventReasons",
             "nvmlDeviceGetCurrentClocksThrottleReasons", "nvmlDeviceGetTemperatureThreshold",
             "nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetCurrPcieLinkGeneration",
             "nvmlDeviceGetMaxPcieLinkGeneration", "nvmlDeviceGetCurrPcieLinkWidth",
             "nvmlDeviceGetMaxPcieLinkWidth", "nvmlDeviceGetNvLinkState"]
    consumer = FakeGpu(name="NVIDIA GeForce RTX 4090", fail={c: code for c in calls})
    facts = nvml.read_gpus(FakeNvml([consumer]))
    gpu = facts["gpus"][0]
    assert gpu["ecc_uncorrected"] == {"volatile": NA, "aggregate": NA}
    assert gpu["remapped_rows"] == NA and gpu["retired_pages"] == NA
    assert gpu["clock_event_reasons"] == NA and gpu["processes"] == NA
    assert gpu["slowdown_temperature_c"] == NA and gpu["temperature_c"] == 35
    assert set(gpu["pcie"].values()) == {NA} and gpu["nvlink"] == NA
    assert "errors" not in gpu
    assert gpu_findings(facts) == []


def test_every_call_unsupported_still_gives_an_entry():
    facts = nvml.read_gpus(FakeNvml([FakeGpu(fail={"*": NOT_SUPPORTED})]))
    gpu = facts["gpus"][0]
    assert gpu["name"] == NA and gpu["bus_id"] == NA and gpu["memory_total_mib"] == NA
    assert gpu_findings(facts) == []


def test_unhealthy_counters_are_named_with_gpu_and_value():
    sick = FakeGpu(bus_id="00000000:3D:00.0", ecc_volatile=2, ecc_aggregate=7,
                   remapped_rows=(0, 1, 1, 0), retired_double=[0x1000], retired_pending=1,
                   clock_events=0x40 | 0x20, temperature=92, slowdown_temperature=90,
                   pcie=(3, 5, 8, 16), nvlinks=[1, 0, 1], processes=[(4242, 2 << 30)])
    facts = nvml.read_gpus(FakeNvml([FakeGpu(), sick]))
    findings = gpu_findings(facts)
    assert all(f.check == "gpu_health" and f.host == "n1" for f in findings)
    assert all("GPU 1 (0000:3d:00.0)" in f.message for f in findings)
    by_severity = {s: [f.message for f in findings if f.severity is s] for s in Severity}
    errors = " | ".join(by_severity[Severity.ERROR])
    assert "2 uncorrected ECC error(s) since the last driver load" in errors
    assert "row remap is pending" in errors
    assert "page retirement is pending" in errors
    warnings = " | ".join(by_severity[Severity.WARNING])
    assert "clocks held down at 92 C over" in warnings
    assert "hw_thermal_slowdown (5/5 samples), sw_thermal_slowdown (5/5 samples)" in warnings
    assert "temperature 92 C (slowdown at 90 C)" in warnings
    assert "PCIe link x8, below its x16" in warnings
    assert "PCIe gen 3 while busy, below its gen 5" in warnings
    assert "NVLink link(s) 1 down (2 up)" in warnings
    assert "1 page(s) retired for double-bit ECC errors" in warnings
    assert "in use by 1 other process(es) (pid 4242)" in warnings


def test_idle_gpu_lowering_its_pcie_gen_is_not_a_problem():
    idle = FakeGpu(pcie=(1, 5, 16, 16), clock_events=0x1)
    assert gpu_findings(nvml.read_gpus(FakeNvml([idle]))) == []


def test_lifetime_ecc_only_and_failed_remap():
    old = FakeGpu(ecc_aggregate=3, remapped_rows=(2, 0, 0, 1))
    findings = gpu_findings(nvml.read_gpus(FakeNvml([old])))
    assert [(f.severity, f.message.split(": ", 2)[-1]) for f in findings] == [
        (Severity.WARNING, "3 uncorrected ECC error(s) over its lifetime"),
        (Severity.ERROR, "row remapping failed: the GPU needs service")]


def test_lost_gpu_is_an_error_and_the_others_are_still_read():
    lost = FakeGpu(bus_id="00000000:2C:00.0", fail={"nvmlDeviceGetMemoryInfo": GPU_IS_LOST})
    facts = nvml.read_gpus(FakeNvml([FakeGpu(), lost, FakeGpu(bus_id="00000000:9A:00.0")]))
    assert facts["gpus"][1]["lost"] == "GPU is lost"
    assert facts["gpus"][2]["bus_id"] == "0000:9a:00.0" and "lost" not in facts["gpus"][2]
    assert "topology" not in facts  # no pairwise reads through a lost GPU
    findings = gpu_findings(facts)
    assert len(findings) == 1 and findings[0].severity is Severity.ERROR
    assert "GPU 1 (0000:2c:00.0): has fallen off the bus" in findings[0].message


def test_other_nvml_errors_are_kept_beside_the_value():
    flaky = FakeGpu(fail={"nvmlDeviceGetTemperature": UNKNOWN})
    facts = nvml.read_gpus(FakeNvml([flaky]))
    assert facts["gpus"][0]["temperature_c"] == NA
    assert facts["gpus"][0]["errors"] == {"temperature": "Unknown Error"}
    findings = gpu_findings(facts)
    assert [f.severity for f in findings] == [Severity.WARNING]
    assert "NVML could not read temperature: Unknown Error" in findings[0].message


@pytest.mark.parametrize("code", [LIBRARY_NOT_FOUND, DRIVER_NOT_LOADED])
def test_no_library_or_driver_means_no_gpus(code):
    facts = nvml.read_gpus(FakeNvml([FakeGpu()], init_error=code))
    assert facts["available"] is False and facts["gpus"] == [] and "error" not in facts
    assert facts["reason"].startswith("NVML: ")
    assert gpu_findings({**facts, "device_nodes": []}) == []


def test_driver_library_mismatch_is_an_error():
    facts = nvml.read_gpus(FakeNvml([FakeGpu()], init_error=LIB_RM_VERSION_MISMATCH))
    assert facts["available"] is False and "version mismatch" in facts["error"]
    findings = gpu_findings(facts)
    assert [f.severity for f in findings] == [Severity.ERROR]
    assert "NVML cannot read the GPUs" in findings[0].message


def test_device_nodes_without_nvml_are_a_warning():
    facts = {"available": False, "gpus": [], "device_nodes": ["nvidia0", "nvidia1"],
             "reason": "pynvml (nvidia-ml-py) not importable: No module named 'pynvml'"}
    findings = gpu_findings(facts)
    assert [f.severity for f in findings] == [Severity.WARNING]
    assert "nvidia0, nvidia1" in findings[0].message and "pynvml" in findings[0].message


def test_bindings_before_the_clock_event_rename_fall_back():
    fake = FakeNvml([FakeGpu(clock_events=0x80)],
                    without=("nvmlDeviceGetCurrentClocksEventReasons",))
    gpu = nvml.read_gpus(fake)["gpus"][0]
    assert gpu["clock_event_reasons"] == ["hw_power_brake_slowdown"]


def test_real_pynvml_without_a_driver_reads_as_no_gpus():
    pytest.importorskip("pynvml")
    facts = nvml.read_gpus()
    if facts["available"]:
        pytest.skip("this machine has a working NVML")
    assert facts["gpus"] == [] and "error" not in facts, facts


def test_clock_event_names_and_bus_ids():
    assert nvml.clock_event_names(0) == []
    assert nvml.clock_event_names(0x8 | 0x2000) == ["hw_slowdown", "0x2000"]
    assert nvml.normalize_bus_id("00000000:1B:00.0") == "0000:1b:00.0"
    assert nvml.normalize_bus_id("0001:c3:00.0") == "0001:c3:00.0"
    assert nvml.normalize_bus_id("") == NA


# -- deeper NVML: NVLink error counters, recovery action, row remap banks, sampled clocks --

def test_nvlink_error_counters_are_named_per_link():
    gpus = two_linked_gpus(nvlink_errors={1: {0: 12, 2: 3}})
    facts = nvml.read_gpus(FakeNvml(gpus))
    first = facts["gpus"][0]
    assert first["nvlink"]["errors"]["1"] == {"replay": 12, "recovery": 0, "crc_flit": 3,
                                              "crc_data": 0, "ecc_data": 0}
    messages = [f.message for f in gpu_findings(facts)]
    assert any("link 1: replay=12, crc_flit=3" in m and "GPU 0" in m for m in messages)
    assert not any("GPU 1" in m for m in messages)  # its counters are all zero


def test_recovery_action_on_new_drivers_and_na_on_old_ones():
    gpus = [FakeGpu(recovery_action=2), FakeGpu(bus_id="00000000:2C:00.0", recovery_action=0),
            FakeGpu(bus_id="00000000:3D:00.0")]
    facts = nvml.read_gpus(FakeNvml(gpus, driver="570.86.15"))
    assert [g["recovery_action"] for g in facts["gpus"]] == ["node_reboot", "none", NA]
    errors = [f.message for f in gpu_findings(facts) if f.severity is Severity.ERROR]
    assert len(errors) == 1 and "GPU 0" in errors[0] and "'node_reboot'" in errors[0]


def test_row_remap_banks_without_spare_rows_are_a_warning():
    facts = nvml.read_gpus(FakeNvml([FakeGpu(row_histogram=(600, 10, 2, 1, 3))]))
    assert facts["gpus"][0]["row_remap_banks"] == {"max": 600, "high": 10, "partial": 2,
                                                    "low": 1, "none": 3}
    warnings = [f.message for f in gpu_findings(facts) if f.severity is Severity.WARNING]
    assert any("3 memory bank(s) have no spare rows left" in m for m in warnings)
    healthy = nvml.read_gpus(FakeNvml([FakeGpu(row_histogram=(640, 0, 0, 0, 0))]))
    assert gpu_findings(healthy) == []


def test_clock_events_are_sampled_and_a_moment_is_not_a_state():
    brief = FakeGpu(clock_event_sequence=[0x1, 0x40, 0x1, 0x1, 0x1, 0x1])  # 1 of 5
    held = FakeGpu(bus_id="00000000:2C:00.0",
                   clock_event_sequence=[0x1, 0x8, 0x8, 0x8, 0x1, 0x1])  # 3 of 5
    facts = nvml.read_gpus(FakeNvml([brief, held]))
    first, second = facts["gpus"]
    assert first["clock_event_samples"]["samples"] == 5
    assert first["clock_event_samples"]["counts"]["hw_thermal_slowdown"] == 1
    assert second["clock_event_samples"]["counts"]["hw_slowdown"] == 3
    warnings = [f.message for f in gpu_findings(facts)]
    assert warnings and all("GPU 1" in m for m in warnings)
    assert "hw_slowdown (3/5 samples)" in warnings[0]
