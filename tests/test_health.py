"""Unit tests for ddpcheck.analyze.health: stage-0 facts -> findings (no SSH, no torch, no GPU)."""

from __future__ import annotations

import pytest

from ddpcheck.collect.facts import read_facts
from ddpcheck.analyze import health
from ddpcheck.analyze.health import Stage0Context, socket_ifname_problems
from ddpcheck.model.records import Severity

GIB = 1024 ** 3
MIB = 1024 ** 2

# A host like a namespace host: lo, eth0 with an address, a down ib0 and an address-less docker0.
INTERFACES = {
    "lo": {"addresses": ["127.0.0.1", "::1"], "up": True, "running": True},
    "eth0": {"addresses": ["10.0.0.2", "fe80::1"], "up": True, "running": True},
    "ib0": {"addresses": ["192.168.7.2"], "up": False, "running": False},
    "docker0": {"addresses": ["fe80::42"], "up": True, "running": False},
}


def problems(variable, value, multi_host=True):
    interfaces = read_facts({"interfaces": INTERFACES}).interfaces
    return [(s.value, text) for s, text in socket_ifname_problems(variable, value, interfaces,
                                                                   multi_host)]


def healthy_facts(**changes):
    facts = {
        "hostname": "n1", "addresses": ["10.0.0.2"], "python": "3.11.7",
        "executable": "/usr/bin/python3", "torch": "2.13.0", "import_s": 1.5, "gpus": 0,
        "cuda": None, "env": {"GLOO_SOCKET_IFNAME": "eth0"}, "interfaces": INTERFACES,
        "route": {"master": "n0", "address": "10.0.0.1", "source": "10.0.0.2",
                  "interface": "eth0"},
        "shm": {"path": "/dev/shm", "total": 16 * GIB, "free": 16 * GIB},
        "workdir": {"path": "/scratch", "total": 100 * GIB, "free": 50 * GIB, "writable": True,
                    "inodes_free": 1000},
        "memory": {"total": 64 * GIB, "available": 60 * GIB},
        "ulimit": {"nofile": [65536, 65536], "memlock": [-1, -1]}, "rdma_devices": [],
        "nvml": {"available": False, "gpus": [], "device_nodes": [], "reason": "NVML: absent"},
        "time_end": 1000.5, "duration_s": 2.0,
    }
    facts.update(changes)
    return facts


def findings_of(facts, context=Stage0Context()):
    return [(f.severity.value, f.check, f.message) for f in
            health.host_findings("n1", read_facts(facts), context)]


def test_healthy_host_has_no_findings():
    assert findings_of(healthy_facts()) == []


# -- *_SOCKET_IFNAME ------------------------------------------------------------------------

def test_gloo_names_a_missing_interface():
    assert problems("GLOO_SOCKET_IFNAME", "eth9") == [
        ("error", "no interface 'eth9' on this host (it has: docker0, eth0, ib0, lo)")]


def test_gloo_list_is_exact_names_each_checked():
    assert problems("GLOO_SOCKET_IFNAME", "eth0") == []
    assert problems("GLOO_SOCKET_IFNAME", "eth0,eth1") == [
        ("error", "no interface 'eth1' on this host (it has: docker0, eth0, ib0, lo)")]
    assert problems("GLOO_SOCKET_IFNAME", "eth")[0][1].startswith("no interface 'eth'")


def test_gloo_rejects_nccl_syntax():
    (severity, text), = problems("GLOO_SOCKET_IFNAME", "^lo")
    assert severity == "error" and "gloo takes exact interface names; '^lo' is NCCL syntax" in text


def test_gloo_interface_down_or_without_address():
    assert problems("GLOO_SOCKET_IFNAME", "ib0") == [("error", "interface 'ib0' is down")]
    assert problems("GLOO_SOCKET_IFNAME", "docker0") == [
        ("error", "interface 'docker0' has no IP address")]


def test_loopback_only_is_fatal_across_hosts_only():
    assert problems("GLOO_SOCKET_IFNAME", "lo", multi_host=False) == []
    (severity, text), = problems("GLOO_SOCKET_IFNAME", "lo")
    assert severity == "error" and "only loopback (lo)" in text
    (severity, text), = problems("NCCL_SOCKET_IFNAME", "=lo")
    assert severity == "error" and "selects only loopback (lo)" in text


def test_tp_takes_one_exact_name():
    assert problems("TP_SOCKET_IFNAME", "eth0") == []
    assert problems("TP_SOCKET_IFNAME", "eth0,lo")[0][1].startswith("no interface 'eth0,lo'")


@pytest.mark.parametrize("value", ["eth", "eth0", "=eth0", "^lo,docker", "^=lo,ib0,docker0",
                                   "eth0:5000", "e,ib"])
def test_nccl_prefixes_exclusions_and_exact_names_that_work(value):
    assert [p for p in problems("NCCL_SOCKET_IFNAME", value) if p[0] == "error"] == []


def test_nccl_exact_name_that_is_only_a_prefix_selects_nothing():
    (severity, text), = problems("NCCL_SOCKET_IFNAME", "=eth")
    assert severity == "error" and "selects no usable interface: it matches none" in text
    # a typo beside a good prefix is only a warning: NCCL uses what matches
    assert problems("NCCL_SOCKET_IFNAME", "eth,ens") == [
        ("warning", "'ens' matches no interface on this host (it has: docker0, eth0, ib0, lo)")]


def test_nccl_selecting_only_down_interfaces():
    (severity, text), = problems("NCCL_SOCKET_IFNAME", "ib")
    assert severity == "error"
    assert "the matching interfaces (ib0) are down or have no address" in text
    assert "no socket interface found" in text


def test_nccl_excluding_everything_usable():
    (severity, text), = problems("NCCL_SOCKET_IFNAME", "^eth,lo")
    assert severity == "error" and "down or have no address" in text


def test_env_findings_name_the_variable_and_value():
    facts = healthy_facts(env={"GLOO_SOCKET_IFNAME": "eth9", "NCCL_SOCKET_IFNAME": "eth"})
    assert findings_of(facts) == [
        ("error", "env", "n1: GLOO_SOCKET_IFNAME=eth9: no interface 'eth9' on this host "
                         "(it has: docker0, eth0, ib0, lo)")]


def test_deprecated_variables_and_contradictions():
    facts = healthy_facts(env={"NCCL_BLOCKING_WAIT": "1", "NCCL_ASYNC_ERROR_HANDLING": "1",
                               "TORCH_NCCL_ASYNC_ERROR_HANDLING": "3"})
    found = findings_of(facts)
    assert ("warning", "env", "n1: NCCL_BLOCKING_WAIT is deprecated: use TORCH_NCCL_BLOCKING_WAIT "
                              "(torch still reads it, with a warning)") in found
    assert ("warning", "env", "n1: NCCL_ASYNC_ERROR_HANDLING=1 and "
                              "TORCH_NCCL_ASYNC_ERROR_HANDLING=3 are both set and differ: torch "
                              "uses TORCH_NCCL_ASYNC_ERROR_HANDLING; remove "
                              "NCCL_ASYNC_ERROR_HANDLING") in found
    assert len(found) == 2
    assert set(health.DEPRECATED_ENV.values()) >= {"TORCH_NCCL_DESYNC_DEBUG",
                                                   "TORCH_NCCL_ENABLE_TIMING"}


# -- route, hostname, python, torch -----------------------------------------------------------

def test_no_route_to_the_master_blocks_launch():
    facts = healthy_facts(route={"master": "n0", "address": "10.9.9.9",
                                 "error": "no route to 10.9.9.9: Network is unreachable"})
    found = health.host_findings("n1", read_facts(facts))
    assert [(f.check, f.severity) for f in found] == [("rendezvous", Severity.ERROR)]
    assert health.blocks_launch(found[0])
    assert "cannot reach the master n0: no route to 10.9.9.9" in found[0].message


def test_gloo_interface_off_the_route_to_the_master():
    facts = healthy_facts(route={"master": "n0", "address": "192.168.7.1",
                                 "source": "192.168.7.2", "interface": "ib0"})
    assert findings_of(facts) == [
        ("warning", "env", "n1: GLOO_SOCKET_IFNAME=eth0 but the route to the master "
                           "192.168.7.1 leaves through ib0")]


def test_hostname_rules():
    assert findings_of(healthy_facts(addresses=[]))[0][:2] == ("warning", "hostname")
    loopback = healthy_facts(addresses=["127.0.1.1"])
    assert findings_of(loopback) == []  # across hosts analyze.hostname_findings has it
    found = findings_of(loopback, Stage0Context(check_hostname_loopback=True))
    assert found[0][:2] == ("warning", "hostname") and "only to loopback" in found[0][2]


def test_torch_import_failure_blocks_and_slow_import_warns():
    found = health.host_findings("n1", read_facts(healthy_facts(
        torch_error="ImportError: libcudart.so.12")))
    assert [(f.check, f.severity) for f in found] == [("torch_import", Severity.ERROR)]
    assert health.blocks_launch(found[0]) and "libcudart.so.12" in found[0].message
    assert findings_of(healthy_facts(import_s=45.0)) == [
        ("warning", "torch_import", "n1: import torch took 45.0s (every rank pays it: a slow or "
                                    "overloaded filesystem?)")]


def test_old_python():
    found = findings_of(healthy_facts(python="3.8.10"))
    assert found == [("error", "python", "n1: python 3.8.10 at /usr/bin/python3 is older than "
                                         "3.9")]


# -- resources ------------------------------------------------------------------------------

@pytest.mark.parametrize("change, severity, text", [
    ({"shm": {"total": 64 * MIB, "free": 64 * MIB}}, "error", "/dev/shm is 64.0 MiB"),
    ({"shm": {"total": 2 * GIB, "free": 10 * MIB}}, "error", "/dev/shm has 10.0 MiB free"),
    ({"shm": {"total": 512 * MIB, "free": 512 * MIB}}, "warning", "/dev/shm is only 512.0 MiB"),
    ({"shm": None}, "error", "/dev/shm is missing"),
    ({"workdir": {"path": "/scratch", "free": 200 * MIB, "writable": True}}, "error",
     "workdir /scratch has 200.0 MiB free"),
    ({"workdir": {"path": "/scratch", "free": 3 * GIB, "writable": True}}, "warning",
     "workdir /scratch has only 3.0 GiB free"),
    ({"workdir": {"path": "/ro", "free": 50 * GIB, "writable": False}}, "error",
     "workdir /ro is not writable"),
    ({"memory": {"total": 64 * GIB, "available": 512 * MIB}}, "warning",
     "only 512.0 MiB of 64.0 GiB memory available"),
    ({"ulimit": {"nofile": [1024, 4096], "memlock": [-1, -1]}}, "warning",
     "ulimit -n is 1024 (hard 4096)"),
    ({"rdma_devices": ["mlx5_0"], "ulimit": {"nofile": [65536, 65536],
                                             "memlock": [64 * 1024, 64 * 1024]}}, "warning",
     "ulimit -l is 64.0 KiB, not unlimited, on a host with RDMA devices (mlx5_0)"),
])
def test_resource_limits(change, severity, text):
    found = findings_of(healthy_facts(**change))
    assert len(found) == 1, found
    assert found[0][0] == severity and found[0][1] == "resources" and text in found[0][2]
    assert not health.blocks_launch(health.host_findings(
        "n1", read_facts(healthy_facts(**change)))[0])


def test_low_memlock_without_rdma_is_fine():
    assert findings_of(healthy_facts(ulimit={"nofile": [65536, 65536],
                                             "memlock": [8 * MIB, 8 * MIB]})) == []


# -- GPU count -----------------------------------------------------------------------------

def nvml_with(count):
    return {"available": True, "gpus": [{"index": i} for i in range(count)]}


def test_expected_gpu_count():
    facts = healthy_facts(nvml=nvml_with(7), gpus=7, cuda="12.4")
    found = findings_of(facts, Stage0Context(expected_gpus=8))
    assert found == [("error", "gpu_count", "n1: 7 GPU(s) found (NVML), 8 expected")]
    assert findings_of(facts, Stage0Context(expected_gpus=7)) == []


def test_torch_without_cuda_on_a_gpu_host():
    facts = healthy_facts(nvml=nvml_with(2), gpus=0, torch="2.13.0+cpu", cuda=None)
    assert findings_of(facts) == [
        ("warning", "gpu_count", "n1: NVML sees 2 GPU(s) but torch sees none: torch 2.13.0+cpu "
                                 "is built without CUDA")]
    hidden = dict(facts, env={"CUDA_VISIBLE_DEVICES": ""})
    assert findings_of(hidden) == []


def test_more_nccl_ranks_than_gpus_blocks_launch():
    facts = healthy_facts(nvml=nvml_with(2), gpus=2, cuda="12.4")
    found = health.host_findings("n1", read_facts(facts), Stage0Context(backend="nccl", slots=4))
    assert [(f.check, f.message) for f in found] == [
        ("gpu_count", "n1: 4 rank(s) planned with nccl but torch sees 2 GPU(s)")]
    assert health.blocks_launch(found[0])
    assert health.host_findings("n1", read_facts(facts),
                                Stage0Context(backend="gloo", slots=4)) == []


def test_cluster_gpu_counts():
    assert health.cluster_gpu_findings({"a": 8, "b": 8}) == []
    assert health.cluster_gpu_findings({"a": 0, "b": 0}) == []
    (finding,) = health.cluster_gpu_findings({"a": 8, "b": 7, "c": 8})
    assert finding.host == "b" and finding.message == "b has 7 GPU(s) where other hosts have 8"


# -- clock ---------------------------------------------------------------------------------

def test_clock_skew_bound():
    # the host started after `sent` and answered before `received`: 1000.0 .. 1003.0, and it
    # read its clock 2.5 s after starting, so the launcher's clock then read 1002.5 .. 1003.0
    assert health.clock_skew_s(1002.7, 2.5, 1000.0, 1003.0) == 0.0
    assert health.clock_skew_s(1002.0, 2.5, 1000.0, 1003.0) == pytest.approx(-0.5)
    assert health.clock_skew_s(1063.0, 2.5, 1000.0, 1003.0) == pytest.approx(60.0)


def test_clock_findings():
    context = Stage0Context(clock_window=(1000.0, 1003.0))
    assert findings_of(healthy_facts(time_end=1002.6, duration_s=2.0), context) == []
    found = findings_of(healthy_facts(time_end=940.0, duration_s=2.0), context)
    assert found == [("warning", "clock_skew", "n1: its clock is at least 62.0s behind the "
                                              "launcher's (logs and timestamps disagree across "
                                              "hosts; run NTP/chrony)")]
    assert findings_of(healthy_facts(time_end=940.0)) == []  # no window: not judged


def test_missing_or_garbled_facts_never_raise():
    for facts in ({}, {"env": "x", "interfaces": [], "shm": "?", "nvml": {"gpus": [1, None]},
                       "ulimit": {"nofile": "many"}, "route": None, "workdir": 3}):
        health.host_findings("n1", read_facts(facts),
                             Stage0Context(clock_window=(0.0, 1.0), slots=2, backend="nccl",
                                           expected_gpus=1))
