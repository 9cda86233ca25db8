"""Report files that carry any text a host printed: generated hostile messages and host names
(terminal escapes, NUL, form feed, U+FFFE/U+FFFF, lone surrogates from undecodable bytes,
very long lines) rendered as JUnit, CSV and Prometheus text, written the way ``--junit``,
``--csv``, ``--prom`` and ``--json`` write them, and read back by the users' own tools:
``xmllint`` against Jenkins' JUnit schema, ``junitparser``, Python's csv reader,
``promtool check metrics`` and prometheus_client's parser."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from test_prometheus import promtool_check, samples
from test_report import failed_report

from ddpcheck.model.checks import Check
from ddpcheck.model.outcomes import Failure
from ddpcheck.commands.common import write_report
from ddpcheck.model.records import Finding, HostRecord, Severity
from ddpcheck.report.machine import MAX_FIELD_CHARS, carryable, render_csv, render_junit
from ddpcheck.report.prometheus import label_value, render_prom
from ddpcheck.report.table import to_json
from ddpcheck.model.report import Report

JUNIT_XSD = Path(__file__).parent / "fixtures" / "junit-10.xsd"
HOSTILE = ["\x1b[31m", "\x1b[0m", "\x1b]0;title\x07", "\x1b", "\x00", "\x0c", "\x0b", "\x7f",
           "\ufffe", "\uffff", "\udcff", "\udc80", "\ud800", "\r\n", "\r", "\n", "\t", "]]>",
           "&amp;", "<x>", '"', "'", "\\", "\\n", "\x85", "\u2028", "\U0001f600", "é"]


@st.composite
def hostile_text(draw, min_size: int = 0) -> str:
    parts = draw(st.lists(st.one_of(st.sampled_from(HOSTILE),
                                    st.text(st.characters(blacklist_categories=()), max_size=4)),
                          min_size=min_size, max_size=12))
    text = "".join(parts)
    if draw(st.integers(0, 9)) == 0:  # a very long line, as a host's runaway output
        text += "x" * draw(st.integers(MAX_FIELD_CHARS - 10, 3 * MAX_FIELD_CHARS))
    return text


@st.composite
def hostile_reports(draw) -> Report:
    base = failed_report()
    odd_host = draw(hostile_text(min_size=1))
    hosts = base.hosts + (
        HostRecord(odd_host, "10.0.0.9", reachable=True, hostname=draw(hostile_text()),
                   stage="done"),
        HostRecord("h9" + draw(hostile_text()), "10.0.0.10", reachable=False, stage="connect",
                   failure=Failure(Check.SSH, draw(hostile_text()))),
    )
    findings = base.findings + tuple(
        Finding(draw(st.sampled_from(list(Severity))), draw(st.sampled_from(["python", "crash"])),
                draw(hostile_text()), host=draw(st.sampled_from([odd_host, "h1", None])))
        for _ in range(draw(st.integers(1, 3))))
    rows = tuple({"op": draw(hostile_text(min_size=1)), "bytes": str(1 << k), "busbw_gbs": 1.5}
                 for k in range(draw(st.integers(0, 2))))
    pairs = ({"hosts": [odd_host, draw(hostile_text(min_size=1))], "busbw_gbs": 2.0},)
    return replace(base, hosts=hosts, findings=findings, collectives=rows, pairs=pairs)


def _needs(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{tool} is missing under CI")
        pytest.skip(f"{tool} is not installed")
    return path


def _xml_read(text: str) -> str:
    """What any XML parser reads back from carried text: line ends normalised (XML 1.0
    section 2.11)."""
    return carryable(text).replace("\r\n", "\n").replace("\r", "\n")


def _written(tmp_path: Path, name: str, report: Report, render) -> Path:
    path = tmp_path / name
    write_report(str(path), report, render)
    path.read_bytes().decode("utf-8")  # strict: valid UTF-8 whatever the report held
    return path


SLOW = settings(max_examples=40, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])


@SLOW
@given(report=hostile_reports())
def test_junit_with_hostile_text_is_valid_and_reads_back(report, tmp_path) -> None:
    """xmllint validates the written file against junit-10.xsd; junitparser reads every
    testcase, and a failure's text is the message, made carryable."""
    junitparser = pytest.importorskip("junitparser")
    path = _written(tmp_path, "junit.xml", report, render_junit)
    done = subprocess.run([_needs("xmllint"), "--noout", "--schema", str(JUNIT_XSD), str(path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    parsed = junitparser.JUnitXml.fromfile(str(path))
    cases = [case for suite in parsed for case in suite]
    assert len(cases) == int(parsed.tests) > 0
    texts = {result.text for case in cases for result in case.result if result.text}
    long = any(len(f.message) > 1000 for f in report.findings)  # cut: only a prefix is there
    for finding in report.findings:
        if finding.severity is Severity.ERROR and finding.host == "h1" and not long \
                and finding.check in ("python", "crash"):
            assert any(_xml_read(finding.message) in text for text in texts)


@SLOW
@given(report=hostile_reports())
def test_csv_with_hostile_text_reads_back(report, tmp_path) -> None:
    """Python's csv reader (field limit 131072, refuses NUL) reads every row back."""
    path = _written(tmp_path, "report.csv", report, render_csv)
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    assert len(rows) >= 1 + len(report.hosts)
    assert all(len(row) == len(rows[0]) for row in rows)
    assert [row[0] for row in rows[1:]][:3] == ["h1", "h1", "h2"]


@SLOW
@given(report=hostile_reports())
def test_prom_with_hostile_text_passes_promtool_and_parses(report, tmp_path) -> None:
    """promtool and prometheus_client accept the file; no series comes twice; a failed check
    on a host with a hostile name is still 0."""
    path = _written(tmp_path, "ddpcheck.prom", report, lambda r: render_prom(r, now=1.0))
    text = path.read_bytes().decode("utf-8")  # as node_exporter reads it: no newline translation
    promtool_check(text)
    found = samples(text)
    series = [line.rsplit(" ", 1)[0] for line in text.split("\n")[:-1]
              if not line.startswith("#")]
    assert len(series) == len(set(series)) == len(found)
    odd = report.hosts[3].name
    for finding in report.findings:
        if finding.severity is Severity.ERROR and finding.host == odd:
            key = ("ddpcheck_check_ok", (("check", finding.check), ("command", "preflight"),
                                         ("host", label_value(odd))))
            assert found[key] == 0


@SLOW
@given(report=hostile_reports())
def test_json_with_hostile_text_is_written(report, tmp_path) -> None:
    path = _written(tmp_path, "report.json", report, to_json)
    assert json.loads(path.read_text(encoding="utf-8"))["hosts"][3]["name"] == \
        report.hosts[3].name


@pytest.mark.parametrize("text,expected", [
    ("plain text, unchanged", "plain text, unchanged"),
    ("\x1b[1;31mred\x1b[0m and \x1b]0;title\x07done", "red and done"),
    ("nul\x00 ff\x0c esc\x1b", "nul\\x00 ff\\x0c esc\\x1b"),
    ("bad byte \udcff, lone \ud800, \ufffe\uffff", "bad byte \\xff, lone \\ud800, \\ufffe\\uffff"),
    ("tab\tcr\rlf\n kept, \x85 \u2028 \U0001f600 too", "tab\tcr\rlf\n kept, \x85 \u2028 \U0001f600 too"),
])
def test_carryable(text: str, expected: str) -> None:
    assert carryable(text) == expected
    assert carryable(expected) == expected


def test_carryable_cuts_long_text_to_the_limit() -> None:
    long = "\x00" * MAX_FIELD_CHARS
    cut = carryable(long)
    assert len(cut) <= MAX_FIELD_CHARS and cut.endswith(" more characters]")
    assert carryable(cut) == cut
    assert carryable("y" * 100, limit=60) == "y" * 20 + " [... 80 more characters]"


def test_issue_example_junit_was_malformed(tmp_path) -> None:
    """The issue's report: a finding with a host's stray output (ANSI colour, NUL, form feed,
    U+FFFE, an undecodable byte) made xmllint fail and the write raise."""
    report = failed_report()
    message = "rank 0 said: \x1b[31mERROR\x1b[0m\x00\x0c\ufffe \udcff"
    report = replace(report, findings=report.findings + (
        Finding(Severity.ERROR, "python", message, host="h1"),))
    path = _written(tmp_path, "junit.xml", report, render_junit)
    done = subprocess.run([_needs("xmllint"), "--noout", str(path)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "rank 0 said: ERROR\\x00\\x0c\\ufffe \\xff" in path.read_text(encoding="utf-8")
    error = "bad byte \udcff, nul\x00"
    failed = replace(report.hosts[1], failure=Failure(Check.SSH, error))
    csv_text = render_csv(replace(report, hosts=(failed,)))
    assert "bad byte \\xff, nul\\x00" in csv_text and "\x00" not in csv_text
    assert list(csv.reader(io.StringIO(csv_text)))
