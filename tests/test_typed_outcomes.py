"""Outcomes stay typed: what a failure or a finding *is* (a deadline victim, cut short by an
interruption, a step that gave nothing, a verdict from stacks alone) is told by its flags,
never by its text; every check name is a ``Check``; no rule in analyze, engine or report reads
meaning out of a message.
"""

from __future__ import annotations

import ast
from dataclasses import replace
from pathlib import Path

from ddpcheck.analyze.outcomes import (CONSEQUENCE_NOTE, NOT_REACHED, launch_error_failure,
                                       not_reached_failure, pair_result, rendezvous_failure,
                                       stage0_failure, with_interruption)
from ddpcheck.analyze.verdict import host_findings, mark_single_root_cause, order_findings, verdict
from ddpcheck.engine.state import RunState
from ddpcheck.model.checks import Check
from ddpcheck.collect.facts import read_facts
from ddpcheck.collect.hostoutput import parse_output
from ddpcheck.core.busbw import Collective
from ddpcheck.model.outcomes import CommandResult, Failure, GroupResult, Stage
from ddpcheck.model.records import Finding, HostRecord, Severity, Verdict
from ddpcheck.model.spec import ClusterSpec, HostSpec

PACKAGE = Path(__file__).resolve().parents[1] / "ddpcheck"


def victim(name: str, message: str = "") -> HostRecord:
    failure = not_reached_failure(60.0, "not connected")
    if message:
        failure = replace(failure, message=message)
    return HostRecord(name, "10.0.0.1", stage=Stage.CONNECT, failure=failure)


def test_a_deadline_victim_is_told_by_its_flag_even_when_its_message_is_reworded() -> None:
    hosts = [victim("n1", "ran out of time before we got here"),
             HostRecord("bad", "10.0.0.2", stage=Stage.CONNECT,
                        failure=Failure(Check.SSH, "connect to 10.0.0.2:22 timed out"))]
    findings = mark_single_root_cause(order_findings(host_findings(hosts)))
    assert [f.host for f in findings if f.root_cause] == ["bad"]
    reworded = next(f for f in findings if f.host == "n1")
    assert reworded.not_reached and not reworded.root_cause
    assert verdict(findings, hosts) is Verdict.UNREACHABLE


def test_a_message_that_reads_like_a_deadline_victim_is_not_one() -> None:
    """The words alone decide nothing: an unflagged failure is a cause like any other."""
    host = HostRecord("n1", "10.0.0.1", stage=Stage.CONNECT,
                      failure=Failure(Check.SSH, f"{NOT_REACHED}: but really refused"))
    findings = mark_single_root_cause(host_findings([host]))
    assert findings[0].root_cause and not findings[0].not_reached


def test_the_flags_are_left_out_of_equality_and_of_the_json_fields() -> None:
    plain = Finding(Severity.ERROR, Check.TIMEOUT, "x", host="h1")
    flagged = replace(plain, not_reached=True, interrupted=True, no_result=True, tentative=True)
    assert plain == flagged and hash(plain) == hash(flagged)


def test_a_host_keeps_its_first_typed_failure_with_the_stage_it_failed_at() -> None:
    state = RunState(ClusterSpec(hosts=(HostSpec("h1", "10.0.0.1"),), source="test"), 60.0)
    first = Failure(Check.PYTHON, "interpreter 'python9' not found")
    state.fail("h1", first, stage=Stage.STAGE0, reachable=True)
    state.fail("h1", Failure(Check.TIMEOUT, "later"), stage=Stage.LAUNCH)
    host = state.hosts["h1"]
    assert host.failure == replace(first, stage=Stage.STAGE0)
    assert host.stage is Stage.LAUNCH  # the host went on; its cause stays the first failure
    assert (host.error, host.error_check, host.trouble_check) == (
        first.message, Check.PYTHON, Check.PYTHON)
    assert HostRecord("h2", "10.0.0.2").trouble_check is Check.SSH  # never reached: ssh


def test_interrupted_outcomes_are_flagged_and_marked_as_consequences_by_the_flag() -> None:
    cancelled = CommandResult(exit_code=None, output="", cancelled=True)
    failure = stage0_failure(HostSpec("h1", "10.0.0.1"), cancelled, read_facts({}), [])
    assert failure is not None and failure.interrupted
    cut = Finding(Severity.ERROR, Check.SSH, "h1: launch: lost", host="h1", interrupted=True)
    worded = Finding(Severity.ERROR, Check.SSH, "h2: the word interrupted, unflagged",
                     host="h2")
    marked = with_interruption([cut, worded], "SIGINT", "launch")
    assert marked[1].message.endswith(CONSEQUENCE_NOTE)
    assert not marked[2].message.endswith(CONSEQUENCE_NOTE)


def test_a_rendezvous_step_that_gave_nothing_is_flagged_no_result() -> None:
    silent = rendezvous_failure("reach", CommandResult(exit_code=None, output="",
                                                       timed_out=True), "h1 10.0.0.1:29500")
    assert silent is not None and silent.no_result and silent.check is Check.RENDEZVOUS
    refused = rendezvous_failure("reach", CommandResult(
        exit_code=0, output='@@DDPCHECK reach {"ok": false, "error": "refused", '
                            '"elapsed_s": 5.0}\n'), "h1 10.0.0.1:29500")
    assert refused is None or not refused.no_result


# -- the code, read as text: no decision made from a message ---------------------------

TEXT_ATTRIBUTES = {"message", "error"}  # a finding's or a host's words


def _is_words(node: ast.AST) -> bool:
    return ((isinstance(node, ast.Attribute) and node.attr in TEXT_ATTRIBUTES)
            or (isinstance(node, ast.Name) and node.id == "message"))


def text_decisions(path: Path) -> list[int]:
    """Lines of ``path`` that test a message's words: ``"x" in f.message``, ``.startswith``
    or ``.endswith`` on a message or an error."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Compare) and any(isinstance(op, (ast.In, ast.NotIn))
                                                 for op in node.ops):
            if any(_is_words(c) for c in node.comparators):
                lines.append(node.lineno)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr in ("startswith", "endswith") and _is_words(node.func.value)):
            lines.append(node.lineno)
    return lines


def test_no_rule_in_analyze_engine_or_report_reads_a_message() -> None:
    found = {str(path.relative_to(PACKAGE)): text_decisions(path)
             for package in ("analyze", "engine", "report")
             for path in sorted((PACKAGE / package).glob("*.py"))}
    assert {path: lines for path, lines in found.items() if lines} == {}


def test_the_text_test_finds_what_it_looks_for() -> None:
    """The scan above would catch the rules it forbids (so it cannot pass by reading nothing)."""
    sample = PACKAGE.parent / "tests" / "_sample_rules.py"
    sample.write_text('def rule(f, message):\n    return "gave no result" in f.message or '
                      'message.startswith("x") or f.error.endswith("y")\n')
    try:
        assert text_decisions(sample) == [2, 2, 2]
    finally:
        sample.unlink()


def test_every_check_a_finding_or_failure_is_built_with_is_a_check_member() -> None:
    """No plain string where a check goes: Finding(severity, check, ...), Failure(check, ...),
    a ``check=`` keyword, or an assignment to ``check``."""
    plain = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            places: list[ast.AST] = []
            if isinstance(node, ast.Call):
                name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
                position = {"Finding": 1, "_finding": 1, "Failure": 0}.get(name or "")
                if position is not None and len(node.args) > position:
                    places.append(node.args[position])
                places += [k.value for k in node.keywords if k.arg == "check"]
            elif isinstance(node, ast.Assign) and any(
                    isinstance(t, ast.Name) and t.id == "check" for t in node.targets):
                places.append(node.value)
            plain += [f"{path.relative_to(PACKAGE)}:{part.lineno}"
                      for place in places for part in plain_strings(place)]
    assert plain == []


def plain_strings(expr: ast.AST) -> list[ast.Constant]:
    """The plain strings an expression can give as a check: itself, either side of
    ``a if c else b`` or ``a or b``, a lookup's default (``TABLE.get(key, default)``)."""
    if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
        return [expr]
    if isinstance(expr, ast.IfExp):
        return plain_strings(expr.body) + plain_strings(expr.orelse)
    if isinstance(expr, ast.BoolOp):
        return [part for value in expr.values for part in plain_strings(value)]
    if (isinstance(expr, ast.Call) and isinstance(expr.func, ast.Attribute)
            and expr.func.attr == "get" and len(expr.args) == 2):
        return plain_strings(expr.args[1])
    return []


def test_a_group_result_gives_each_member_its_result_or_exception() -> None:
    ok = CommandResult(0, "fine")
    refused = ConnectionRefusedError("refused")
    group = GroupResult({"h1": ok, "h2": refused})
    assert group.succeeded == {"h1": ok} and group.failed == {"h2": refused}
    assert launch_error_failure(refused) == Failure(Check.RENDEZVOUS, "launch: refused")


def test_a_pair_job_that_raised_is_worded_by_analyze_as_no_result() -> None:
    pair = pair_result(("a", "b"), 1, [("a", None, LookupError("the host has no connection")),
                                       ("b", None, None)], 0.0, Collective.ALL_REDUCE)
    assert pair.error == "a: no result; b: no result" and pair.check is Check.RENDEZVOUS


def test_stage0_top_level_facts_are_read_once_into_a_typed_record() -> None:
    parsed = parse_output('noise\n@@DDPCHECK facts {"hostname": "h1", "python": "3.11.7", '
                          '"torch": "2.13.0", "import_s": 1.5, "gpus": "2", "env": {}}\n')
    facts = read_facts(parsed.facts)
    assert (facts.hostname, facts.python, facts.torch, facts.import_s, facts.gpus) == (
        "h1", "3.11.7", "2.13.0", 1.5, 2)
    assert facts.raw["env"] == {} and facts.env == {}  # the record as sent stays beside it
    garbage = read_facts({"gpus": "many", "import_s": "soon", "hostname": None})
    assert (garbage.gpus, garbage.import_s, garbage.hostname) == (0, None, None)
