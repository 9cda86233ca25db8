"""``--prom FILE``: node_exporter's textfile format, checked by Prometheus' own parsers
(prometheus_client's text parser and ``promtool check metrics``) on rendered reports and on
files written by real runs (preflight on this machine, node)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from prometheus_client.parser import text_string_to_metric_families

from test_report import failed_report, healthy_report

from ddpcheck.report.prometheus import render_prom
from ddpcheck.model.report import Report

PROMTOOL = shutil.which("promtool")


def samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def promtool_check(text: str) -> None:
    if PROMTOOL is None:
        if os.environ.get("CI") == "true":
            pytest.fail("promtool (Debian package prometheus) is missing under CI")
        pytest.skip("promtool is not installed")
    done = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def check_ok(found, command: str, check: str, host: str) -> float:
    return found[("ddpcheck_check_ok", (("check", check), ("command", command), ("host", host)))]


@pytest.mark.parametrize("make", [failed_report, healthy_report])
def test_rendered_reports_parse_and_pass_promtool(make) -> None:
    report: Report = make()
    text = render_prom(report, now=1_700_000_000.5)
    promtool_check(text)
    found = samples(text)
    command = report.command
    assert found[("ddpcheck_run_timestamp_seconds", (("command", command),))] == 1_700_000_000.5
    assert found[("ddpcheck_run_ok", (("command", command),))] == (
        1 if report.verdict.value == "ok" else 0)
    for host in report.hosts:
        if host.reachable:
            assert check_ok(found, command, "ssh", host.name) == 1
        else:
            assert check_ok(found, command, host.error_check or "ssh", host.name) == 0
    for finding in report.findings:
        if finding.severity.value == "error" and finding.host:
            assert check_ok(found, command, finding.check, finding.host) == 0


def test_label_values_are_escaped() -> None:
    from dataclasses import replace

    from ddpcheck.model.records import Finding, Severity

    report = healthy_report()
    odd = 'h"1\\x\nnew'
    report = replace(report, findings=(Finding(Severity.ERROR, "world", "bad", host=odd),))
    text = render_prom(report, now=1.0)
    promtool_check(text)
    assert check_ok(samples(text), report.command, "world", "cluster") == 0


def test_bandwidth_rows_pairs_and_average_are_gauges() -> None:
    from dataclasses import replace

    from ddpcheck.core.busbw import Collective, CollectiveRow

    rows = tuple(CollectiveRow(op, 1 << 18, 3, 1e-3, 0).to_dict()
                 for op in (Collective.ALL_REDUCE, Collective.ALL_GATHER))
    pairs = ({"hosts": ["a", "b"], "busbw_gbs": 11.5}, {"hosts": ["a", "c"], "busbw_gbs": None})
    report = replace(healthy_report(), command="bandwidth", collectives=rows, pairs=pairs,
                     extra={"bandwidth": {"avg_busbw_gbs": 0.5}})
    text = render_prom(report, now=2.0)
    promtool_check(text)
    found = samples(text)
    assert found[("ddpcheck_busbw_gbytes_per_second", (("bytes", "1048576"),
                                                       ("command", "bandwidth"),
                                                       ("op", "all_reduce")))] == pytest.approx(
        1.048576 * 4 / 3, rel=1e-3)
    assert found[("ddpcheck_busbw_avg_gbytes_per_second", (("command", "bandwidth"),))] == 0.5
    assert found[("ddpcheck_pair_busbw_gbytes_per_second", (
        ("command", "bandwidth"), ("host_a", "a"), ("host_b", "b")))] == 11.5
    assert len([k for k in found if k[0] == "ddpcheck_pair_busbw_gbytes_per_second"]) == 1


def ddpcheck(*args: str, cwd=None, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ddpcheck", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd)


def test_preflight_writes_the_prom_file_atomically(tmp_path) -> None:
    """A real preflight on this machine (two CPU ranks): the file replaces the old one whole
    (a new inode, no temporary file left), with check, run and busbw samples."""
    textfile_dir = tmp_path / "textfile"
    textfile_dir.mkdir()
    target = textfile_dir / "ddpcheck.prom"
    target.write_text("# an older run\n")
    old_inode = target.stat().st_ino
    done = ddpcheck("preflight", "--prom", str(target), cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert os.listdir(textfile_dir) == ["ddpcheck.prom"]
    assert target.stat().st_ino != old_inode
    text = target.read_text()
    promtool_check(text)
    found = samples(text)
    assert check_ok(found, "preflight", "ssh", "localhost") == 1
    assert check_ok(found, "preflight", "all_reduce", "localhost") == 1
    assert found[("ddpcheck_run_ok", (("command", "preflight"),))] == 1
    busbw = [key for key in found if key[0] == "ddpcheck_busbw_gbytes_per_second"]
    assert busbw and all(found[key] > 0 for key in busbw)


def test_node_writes_the_prom_file(tmp_path) -> None:
    target = tmp_path / "node.prom"
    done = ddpcheck("node", "--no-torch", "--prom", str(target), cwd=tmp_path)
    assert done.returncode in (0, 1), done.stdout + done.stderr
    text = target.read_text()
    promtool_check(text)
    found = samples(text)
    assert found[("ddpcheck_run_exit_code", (("command", "node"),))] == done.returncode
    assert any(key[0] == "ddpcheck_check_ok" for key in found)
