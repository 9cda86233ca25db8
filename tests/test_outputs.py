"""Unit tests for the machine outputs (ddpcheck.report.machine) and the table's formats and colours."""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from goldenfile import check_golden
from test_report import failed_report, healthy_report

from ddpcheck.commands.common import use_color
from ddpcheck.report.machine import CSV_COLUMNS, render_csv, render_junit
from ddpcheck.report.table import footer_line, render_table

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def suites(xml_text: str) -> dict[str, ET.Element]:
    root = ET.fromstring(xml_text.split("\n", 1)[1])  # past the XML declaration
    assert root.tag == "testsuites"
    return {suite.get("name"): suite for suite in root.findall("testsuite")}


def outcome(case: ET.Element) -> str:
    for tag in ("failure", "error", "skipped"):
        if case.find(tag) is not None:
            return tag
    return "passed"


def test_junit_golden_and_outcomes() -> None:
    text = render_junit(failed_report())
    check_golden("report_failed.junit.xml", text)
    by_suite = suites(text)
    assert list(by_suite) == ["ddpcheck.ssh", "ddpcheck.python", "ddpcheck.torch_import",
                              "ddpcheck.hostname", "ddpcheck.rendezvous",
                              "ddpcheck.world_size", "ddpcheck.all_reduce",
                              "ddpcheck.barrier", "ddpcheck.timeout"]
    ssh = {c.get("name"): outcome(c) for c in by_suite["ddpcheck.ssh"]}
    assert ssh == {"h1": "passed", "h2": "error", "h3": "passed"}  # a testcase per host
    rendezvous = {c.get("name"): outcome(c) for c in by_suite["ddpcheck.rendezvous"]}
    assert rendezvous == {"h1 rank 0": "failure", "h1 rank 1": "passed", "h2": "error",
                          "h3": "skipped"}  # a testcase per rank where ranks reported
    world = {c.get("name"): outcome(c) for c in by_suite["ddpcheck.world_size"]}
    assert world["h3"] == "failure"
    hostname = {c.get("name"): outcome(c) for c in by_suite["ddpcheck.hostname"]}
    assert hostname["cluster"] == "passed"  # a warning does not fail CI; it is in system-out
    timeout = {c.get("name"): outcome(c) for c in by_suite["ddpcheck.timeout"]}
    assert timeout["h1 rank 1"] == "failure" and timeout["h1 rank 0"] == "passed"
    root = ET.fromstring(text.split("\n", 1)[1])
    assert root.get("skipped") is None  # not in Jenkins' junit-10 schema
    for key in ("tests", "failures", "errors", "skipped"):
        if key != "skipped":
            assert int(root.get(key)) == sum(int(s.get(key)) for s in by_suite.values())
        for suite in by_suite.values():
            count = sum(1 for c in suite if key == "tests" or outcome(c) == key.rstrip("s")
                        or (key == "failures" and outcome(c) == "failure")
                        or (key == "errors" and outcome(c) == "error"))
            assert int(suite.get(key)) == count, (suite.get("name"), key)


def test_junit_of_a_healthy_run_has_no_failures() -> None:
    root = ET.fromstring(render_junit(healthy_report()).split("\n", 1)[1])
    assert (root.get("failures"), root.get("errors")) == ("0", "0")
    assert all(suite.get("skipped") == "0" for suite in root)
    assert int(root.get("tests")) > 0


def test_csv_a_row_per_rank_or_host() -> None:
    text = render_csv(failed_report())
    check_golden("report_failed.csv", text)
    rows = list(csv.DictReader(io.StringIO(text)))
    assert list(rows[0]) == list(CSV_COLUMNS)
    assert [(r["host"], r["rank"], r["status"]) for r in rows] == [
        ("h1", "0", "error"), ("h1", "1", "timeout"), ("h2", "", "unreachable"),
        ("h3", "", "not_run")]
    assert rows[2]["error"].endswith("Connection refused") and rows[2]["reachable"] == "false"


@pytest.mark.parametrize("tablefmt, marker", [("github", "| host "), ("psql", "+------"),
                                              ("tsv", "\trank  \tlocal")])
def test_table_format(tablefmt: str, marker: str) -> None:
    text = render_table(healthy_report(), tablefmt=tablefmt)
    assert marker in text and text.rstrip().endswith("in 4.2s")


def test_colours_only_change_escapes() -> None:
    plain = render_table(failed_report())
    coloured = render_table(failed_report(), color=True)
    assert "\x1b[" not in plain and "\x1b[31m" in coloured and "\x1b[33m" in coloured
    assert ANSI.sub("", coloured) == plain  # columns stay aligned
    assert footer_line(healthy_report(), color=True).startswith("# Verdict: \x1b[32mOK")


class Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


@pytest.mark.parametrize("choice, tty, env, expected", [
    ("auto", True, {}, True),
    ("auto", False, {}, False),
    ("auto", True, {"NO_COLOR": "1"}, False),
    ("auto", True, {"TERM": "dumb"}, False),
    ("always", False, {"NO_COLOR": "1"}, True),
    ("never", True, {}, False),
])
def test_use_color(monkeypatch, choice, tty, env, expected) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert use_color(choice, Stream(tty)) is expected


JUNIT_XSD = Path(__file__).parent / "fixtures" / "junit-10.xsd"


@pytest.mark.parametrize("report", [failed_report, healthy_report])
def test_junit_is_valid_against_jenkins_junit_10_schema(report, tmp_path) -> None:
    """Validated by libxml2's xmllint (the schema validator Jenkins' format is checked with)."""
    xmllint = shutil.which("xmllint")
    if xmllint is None:
        if os.environ.get("CI") == "true":
            pytest.fail("xmllint (libxml2-utils) is missing under CI")
        pytest.skip("xmllint (libxml2-utils) is not installed")
    path = tmp_path / "junit.xml"
    path.write_text(render_junit(report()))
    done = subprocess.run([xmllint, "--noout", "--schema", str(JUNIT_XSD), str(path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "validates" in done.stderr


def test_the_checks_a_passing_preflight_ran_each_get_a_suite_and_a_check_ok_series() -> None:
    """The consistency checks of the sections the ranks' fingerprints carry, the compute check
    and the numerics check ran and passed: each has its suite of passing rank cases, and its
    ``check_ok`` series; a run whose records show no compute or seed left them out."""
    from dataclasses import replace

    from ddpcheck.report.prometheus import render_prom

    base = healthy_report()
    ranks = tuple(replace(r, fingerprint={"versions": {}, "settings": {}, "env": {}, "ddp": {}},
                          compute={"metrics": {"fp32_gflops": 40.0}}, numerics={"where": "cpu"})
                  for r in base.ranks)
    report = replace(base, ranks=ranks)
    found = suites(render_junit(report))
    for check in ("versions", "dtype", "env_drift", "params", "step", "straggler", "numerics"):
        cases = found[f"ddpcheck.{check}"].findall("testcase")
        assert len(cases) == 4 and {outcome(c) for c in cases} == {"passed"}, check
        assert f'check="{check}",host="h1"}} 1' in render_prom(report, now=0.0), check
    assert "ddpcheck.seed" not in found  # no rank reported RNG states: not seeded
    assert "ddpcheck.straggler" not in suites(render_junit(base))


def test_node_reports_no_ssh_check() -> None:
    from dataclasses import replace

    from ddpcheck.report.prometheus import render_prom

    node = replace(healthy_report(), command="node")
    assert 'check="ssh"' not in render_prom(node, now=0.0)
    assert "ddpcheck.ssh" not in suites(render_junit(node))
