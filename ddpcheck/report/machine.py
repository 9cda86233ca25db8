"""Outputs for machines: the report as CSV and as JUnit XML (report stage, pure).

report -> ``render_csv`` (a row per rank; a host without ranks gets one row) and
``render_junit`` (one testsuite per check, a testcase per host or per rank; a failed check is a
``<failure>``, a host that could not be reached is an ``<error>``, a check that could not run
is ``<skipped>``), for CI systems and spreadsheets. The table and JSON renderers are in
``report``.

Messages carry whatever a host printed; ``carryable`` makes any text fit these files (and the
Prometheus textfile): terminal escape sequences dropped, characters XML 1.0 cannot hold
(C0 controls but tab, LF and CR; U+FFFE, U+FFFF; lone surrogates, which are bytes that were
not UTF-8) written as visible ``\\xNN`` / ``\\uNNNN``, and very long text cut, so a renderer
never raises and its output always encodes as UTF-8.
"""

from __future__ import annotations

import csv
import io
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any, Optional

from ..analyze.verdict import summary_line
from ..model.records import Finding, HostRecord, RankRecord, Severity
from .grouping import ranks_by_host
from ..model.report import Report

CSV_COLUMNS = ("host", "address", "reachable", "hostname", "slots", "gpus", "rank",
               "local_rank", "pid", "device", "status", "stage", "barrier_us", "allreduce_us",
               "all_reduce_wrong", "error")

# Checks every preflight evaluates: per host, then per rank (and the rank checks its records
# show ran: ``_rank_checks_run``). Any other check a finding names gets a suite too (per rank
# when one of its findings names a rank, else per host).
PREFLIGHT_HOST_CHECKS = ("ssh", "python", "torch_import", "hostname")
PREFLIGHT_RANK_CHECKS = ("rendezvous", "world_size", "all_reduce", "barrier")
CLUSTER_CASE = "cluster"  # the testcase of findings about no host in particular
# Longest text one field carries: below Python's csv.field_size_limit (131072) and far below
# libxml2's 10 MB text limit, so readers need no "huge" option.
MAX_FIELD_CHARS = 65536
_CUT_NOTE_CHARS = 40  # room for " [... N more characters]"

# XML 1.0 section 2.2 Char: what a document can hold at all, not even as a character
# reference. The rest are C0 controls (NUL, ESC, form feed...), U+FFFE, U+FFFF and lone
# surrogates (undecodable bytes kept by surrogateescape, which UTF-8 cannot encode either).
_NOT_XML_CHAR = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
# Terminal escape sequences (colours, cursor moves, window titles): CSI, OSC ended by BEL or
# ST, and two-character escapes. They mean nothing in a file; a lone ESC is made visible.
_TERMINAL_ESCAPE = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b\n]*(?:\x07|\x1b\\)"
                              r"|[ -/]*[0-~])")


def carryable(text: str, limit: int = MAX_FIELD_CHARS) -> str:
    """``text`` as XML 1.0, CSV readers and UTF-8 can carry it (see the module docstring),
    at most ``limit`` characters; never raises. Text that needs nothing comes back unchanged,
    and so does what this returned (it is idempotent)."""
    if not (text.isascii() and text.isprintable()):  # the common case needs no scan
        text = _NOT_XML_CHAR.sub(_visible, _TERMINAL_ESCAPE.sub("", text))
    if len(text) > limit:
        keep = max(0, limit - _CUT_NOTE_CHARS)
        text = text[:keep] + f" [... {len(text) - keep} more characters]"
    return text


def _visible(match: "re.Match[str]") -> str:
    code = ord(match.group())
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8, kept by surrogateescape
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def render_csv(report: Report) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    by_host = ranks_by_host(report.ranks)
    for host in report.hosts:
        own = by_host.get(host.name, [])
        base = [host.name, host.address, _bool(host.reachable), host.hostname or "",
                _cell(host.slots), _cell(host.gpus)]
        if not own:
            status = "unreachable" if not host.reachable else ("failed" if host.error
                                                               else "not_run")
            _write_row(writer, base + ["", "", "", "", status, host.stage, "", "", "",
                                       _first_line(host.error)])
            continue
        for rank in own:
            _write_row(writer, base + [
                _cell(rank.rank), _cell(rank.local_rank), _cell(rank.pid), rank.device,
                rank.status.value, rank.stage, _cell(rank.barrier_us),
                _cell(rank.allreduce_small_us), _cell(rank.all_reduce_wrong),
                _first_line(rank.error)])
    return out.getvalue()


def _write_row(writer: Any, cells: list[str]) -> None:
    # csv quotes a cell with "\n" (the line terminator) but not one with a bare "\r", which
    # readers take as a line end: line ends become "\n".
    writer.writerow([carryable(str(cell)).replace("\r\n", "\n").replace("\r", "\n")
                     for cell in cells])


@dataclass(frozen=True)
class _Case:
    host: Optional[HostRecord]  # None: the cluster as a whole
    rank: Optional[RankRecord] = None

    @property
    def name(self) -> str:
        if self.host is None:
            return CLUSTER_CASE
        return self.host.name if self.rank is None else f"{self.host.name} rank {self.rank.rank}"


@dataclass(frozen=True)
class _Index:
    """The report looked up by host and by (check, host), built once: linear, not a scan of
    every rank and finding per testcase."""

    ranks: dict
    findings: dict  # (check, host or None) -> findings
    rank_checks: frozenset
    names: frozenset

    @classmethod
    def of(cls, report: Report) -> "_Index":
        findings: dict = {}
        for finding in report.findings:
            findings.setdefault((finding.check, finding.host), []).append(finding)
        return cls(ranks_by_host(report.ranks), findings,
                   frozenset(_rank_scoped_checks(report)),
                   frozenset(h.name for h in report.hosts))


def render_junit(report: Report) -> str:
    """JUnit XML (the common Jenkins/GitLab/pytest dialect, valid against Jenkins'
    junit-10.xsd): ``<testsuites>`` with a ``<testsuite name="ddpcheck.CHECK">`` per check."""
    index = _Index.of(report)
    rank_checks = index.rank_checks
    root = ET.Element("testsuites", name=f"ddpcheck {report.command}",
                      time=f"{report.duration_s:.3f}")
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for check in _checks(report):
        suite = ET.SubElement(root, "testsuite", name=f"ddpcheck.{check}")
        counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
        for case in _cases(report, check, check in rank_checks, index):
            outcome = _testcase(suite, report, check, case, index)
            counts["tests"] += 1
            if outcome:
                counts[outcome] += 1
        for key, value in counts.items():
            suite.set(key, str(value))
            totals[key] += value
        suite.set("time", "0")
    for key, value in totals.items():
        if key != "skipped":  # junit-10 (Jenkins) has no skipped on <testsuites>
            root.set(key, str(value))
    _carry_tree(root)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def _carry_tree(root: ET.Element) -> None:
    """Every attribute and text made ``carryable``: one place, so no field (host name, check,
    message, a host's output) can make the document malformed."""
    for element in root.iter():
        for key, value in element.attrib.items():
            element.set(key, carryable(value))
        if element.text:
            element.text = carryable(element.text)


def _checks(report: Report) -> list[str]:
    checks: list[str] = [] if report.command == "node" else ["ssh"]  # node runs on its host
    if report.command == "preflight":
        checks += [*PREFLIGHT_HOST_CHECKS[1:], *PREFLIGHT_RANK_CHECKS, *_rank_checks_run(report)]
    for finding in report.findings:
        if finding.check not in checks:
            checks.append(finding.check)
    for host in report.hosts:
        if host.error_check and host.error_check not in checks:
            checks.append(host.error_check)
    return checks


def _rank_checks_run(report: Report) -> list[str]:
    """Preflight's rank checks beyond the probe's, as the ranks' records show they ran (each
    --skip-able): the consistency checks of the sections their fingerprints carry, the compute
    check (a slow device is a ``straggler``) and the numerics check."""
    prints = [r.fingerprint for r in report.ranks if r.fingerprint]
    ran = ["versions", "dtype", "env_drift"] if prints else []
    ran += ["seed"] if any("rng" in p for p in prints) else []
    ran += ["params", "step"] if any("ddp" in p for p in prints) else []
    ran += ["straggler"] if any(r.compute for r in report.ranks) else []
    return ran + (["numerics"] if any(r.numerics for r in report.ranks) else [])


def _rank_scoped_checks(report: Report) -> set[str]:
    scoped = (set(PREFLIGHT_RANK_CHECKS) | set(_rank_checks_run(report))
              if report.command == "preflight" else set())
    scoped |= {f.check for f in report.findings if f.rank is not None}
    return scoped


def _cases(report: Report, check: str, per_rank: bool, index: _Index) -> list[_Case]:
    cases: list[_Case] = []
    for host in report.hosts:
        own = index.ranks.get(host.name, []) if per_rank else []
        cases += [_Case(host, rank) for rank in own] or [_Case(host)]
    if any(c == check and (h is None or h not in index.names) for c, h in index.findings):
        cases.append(_Case(None))
    return cases


def _testcase(suite: ET.Element, report: Report, check: str, case: _Case,
              index: _Index) -> Optional[str]:
    """Adds the testcase; returns "failures", "errors", "skipped" or None (passed)."""
    element = ET.SubElement(suite, "testcase", name=case.name,
                            classname=f"ddpcheck.{report.command}.{check}", time="0")
    host = case.host
    if host is not None and not host.reachable:
        error = ET.SubElement(element, "error", type=str(host.trouble_check),
                              message=_first_line(host.error) or "host not reached")
        error.text = host.error or "host not reached"
        return "errors"
    findings = _findings_for(index, check, case)
    errors = [f for f in findings if f.severity is Severity.ERROR]
    notes = [f for f in findings if f.severity is not Severity.ERROR]
    if notes:
        ET.SubElement(element, "system-out").text = "\n".join(
            f"[{f.severity.value}] {f.message}" for f in notes)
    if errors:
        failure = ET.SubElement(element, "failure", type=check,
                                message=_first_line(errors[0].message))
        failure.text = "\n".join(("ROOT CAUSE: " if f.root_cause else "") + f.message
                                 for f in errors)
        return "failures"
    if host is not None and case.rank is None and _not_run(index, check, host):
        ET.SubElement(element, "skipped", message=_not_run(index, check, host))
        return "skipped"
    return None


def _findings_for(index: _Index, check: str, case: _Case) -> list[Finding]:
    if case.host is None:
        return list(index.findings.get((check, None), ()))
    return [f for f in index.findings.get((check, case.host.name), ())
            if case.rank is None or f.rank is None or f.rank == case.rank.rank]


def _not_run(index: _Index, check: str, host: HostRecord) -> str:
    """Why a rank-level check has no result on this host ("" when it has one)."""
    if check not in index.rank_checks or index.ranks.get(host.name):
        return ""
    if host.stage in ("connect", "stage0"):
        return "not run: torchrun was not started"
    return "not run: no rank of this host reported back"


def _first_line(text: Optional[str]) -> str:
    """``summary_line``, also for text that is only blank lines (a host that printed just
    whitespace)."""
    return summary_line(text) if text and text.strip() else ""


def _bool(value: bool) -> str:
    return "true" if value else "false"


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)
