"""InfiniBand / RoCE ports from sysfs trees laid out as the kernel does
(/sys/class/infiniband/<hca>/ports/<n>/{state,phys_state,rate,link_layer,counters/*}), read by
``remote.ibports`` and judged by ``analyze.infiniband``; end to end through ``ddpcheck node``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ddpcheck.collect.facts import read_facts
from ddpcheck.analyze import infiniband
from ddpcheck.model.records import Severity
from ddpcheck.remote import ibports

HDR = "200 Gb/sec (4X HDR)"
HALF = "100 Gb/sec (2X HDR)"


def port(root: Path, hca: str, number: int, state: str = "4: ACTIVE",
         phys: str = "5: LinkUp", rate: str = HDR, layer: str = "InfiniBand",
         **counters: int) -> None:
    """One port as the kernel's sysfs shows it; every error counter present, zero unless
    given."""
    path = root / hca / "ports" / str(number)
    (path / "counters").mkdir(parents=True)
    (path / "state").write_text(state + "\n")
    (path / "phys_state").write_text(phys + "\n")
    (path / "rate").write_text(rate + "\n")
    (path / "link_layer").write_text(layer + "\n")
    for name in ibports.ERROR_COUNTERS:
        (path / "counters" / name).write_text(f"{counters.get(name, 0)}\n")
    (path / "counters" / "port_xmit_data").write_text("123456789\n")  # traffic, not an error


def healthy(root: Path) -> Path:
    for i in range(4):
        port(root, f"mlx5_{i}", 1)
    return root


def findings(root: Path, nccl_ib_hca: str = ""):
    facts = {"infiniband": ibports.read_ports(str(root)),
             "env": {"NCCL_IB_HCA": nccl_ib_hca} if nccl_ib_hca else {}}
    return infiniband.ib_findings("n1", read_facts(facts))


def test_healthy_hcas_are_read_and_silent(tmp_path):
    root = healthy(tmp_path)
    facts = ibports.read_ports(str(root))
    assert sorted(facts["devices"]) == ["mlx5_0", "mlx5_1", "mlx5_2", "mlx5_3"]
    first = facts["devices"]["mlx5_0"]["ports"]["1"]
    assert (first["state"], first["state_code"], first["phys_state"]) == ("ACTIVE", 4, "LinkUp")
    assert (first["rate_gbps"], first["link_layer"]) == (200.0, "InfiniBand")
    assert first["counters"]["link_downed"] == 0 and "port_xmit_data" not in first["counters"]
    assert findings(root) == []
    assert findings(root, "mlx5_0,mlx5_1:1") == []
    assert findings(root, "mlx5") == []  # a prefix, as NCCL matches it


def test_no_hca_is_plain_data(tmp_path):
    assert ibports.read_ports(str(tmp_path / "absent")) == {"root": str(tmp_path / "absent"),
                                                           "devices": {}}
    assert findings(tmp_path / "absent") == []


def test_a_port_down_is_named(tmp_path):
    root = healthy(tmp_path)
    port(root, "mlx5_4", 1, state="1: DOWN", phys="3: Disabled")
    (finding,) = findings(root)
    assert finding.check == "infiniband" and finding.severity is Severity.WARNING
    assert "mlx5_4 port 1 is DOWN / Disabled, not ACTIVE / LinkUp" in finding.message
    # the same port named by NCCL_IB_HCA is an error: NCCL was told to use it
    errors = [f for f in findings(root, "=mlx5_4:1") if f.severity is Severity.ERROR]
    assert len(errors) == 1 and "(NCCL_IB_HCA names it)" in errors[0].message


def test_a_port_at_half_rate_is_named(tmp_path):
    root = healthy(tmp_path)
    port(root, "mlx5_5", 1, rate=HALF)
    port(root, "mlx5_6", 1, rate="25 Gb/sec (1X EDR)", layer="Ethernet")  # RoCE: own peers
    (finding,) = findings(root)
    assert finding.severity is Severity.WARNING
    assert "mlx5_5 port 1 runs at 100 Gb/sec (2X HDR), below the 200 Gb/sec of its peers" \
        in finding.message


def test_non_zero_error_counters_are_named_with_values(tmp_path):
    root = healthy(tmp_path)
    port(root, "mlx5_7", 1, link_downed=3, symbol_error=1200, port_rcv_errors=17)
    (finding,) = findings(root)
    assert finding.severity is Severity.WARNING
    assert "mlx5_7 port 1 error counters are not zero: link_downed=3, port_rcv_errors=17, " \
           "symbol_error=1200" in finding.message


def test_nccl_ib_hca_devices_must_exist_and_be_active(tmp_path):
    root = healthy(tmp_path)
    port(root, "mlx5_8", 1, state="1: DOWN", phys="2: Polling")
    messages = {f.message: f.severity for f in findings(root, "mlx5_0,mlx5_9,mlx5_1:2")}
    errors = [m for m, s in messages.items() if s is Severity.ERROR]
    assert any("NCCL_IB_HCA names mlx5_9 but the host has no such HCA" in m for m in errors)
    assert any("NCCL_IB_HCA names mlx5_1:2 but mlx5_1 has no port 2" in m for m in errors)
    assert not any(m.startswith("n1: mlx5_0 ") or "names mlx5_0" in m for m in messages)
    exact = {f.message: f.severity for f in findings(root, "=mlx5_8")}
    assert any("NCCL_IB_HCA names =mlx5_8 but mlx5_8 has no active port" in m
               for m, s in exact.items() if s is Severity.ERROR)
    # "=" matches whole names: "=mlx5" names no HCA, where the prefix "mlx5" names them all
    assert any("names =mlx5 but the host has no such HCA" in f.message
               for f in findings(root, "=mlx5"))
    # an exclude list names what NCCL must not use: nothing is required to exist
    assert all(f.severity is Severity.WARNING for f in findings(root, "^mlx5_9,mlx5_8"))


def test_parse_ib_hca_syntax():
    assert infiniband.parse_ib_hca("^=mlx5_0:1,mlx5_1") == (True, [
        infiniband.HcaSpec("mlx5_0", "1", True), infiniband.HcaSpec("mlx5_1", None, True)])
    assert infiniband.parse_ib_hca(" mlx5 ") == (False, [infiniband.HcaSpec("mlx5", None,
                                                                             False)])


def test_ddpcheck_node_reads_the_tree(tmp_path):
    root = healthy(tmp_path / "sys")
    port(root, "mlx5_4", 1, state="1: DOWN", phys="3: Disabled")
    report_path = tmp_path / "node.json"
    done = subprocess.run(
        [sys.executable, "-m", "ddpcheck", "node", "--no-torch", "-v", "--ib-sysfs", str(root),
         "--json", str(report_path)], capture_output=True, text=True, timeout=120,
        cwd=tmp_path, env={**os.environ, "NCCL_IB_HCA": "mlx5_0,mlx5_4"})
    report = json.loads(report_path.read_text())
    ours = sorted(f["message"] for f in report["findings"] if f["check"] == "infiniband"
                  and f["severity"] == "error")
    assert len(ours) == 1, done.stdout
    assert "NCCL_IB_HCA names mlx5_4 but mlx5_4 has no active port" in ours[0]
    assert done.returncode == 1
    assert "# infiniband: mlx5_0/1 ACTIVE InfiniBand 200 Gb/sec (4X HDR)" in done.stdout
