"""The newcomer docs keep up with the code: every check has a troubleshooting entry and a line in
the interface contract, and every check name a finding carries is a member of ``Check``."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from ddpcheck.model.checks import Check


REPO = Path(__file__).resolve().parents[1]
TROUBLESHOOTING = REPO / "docs" / "troubleshooting.md"
INTERFACE = REPO / "docs" / "interface.md"  # the user-facing contract
# The check names of the interface contract (docs/interface.md).
INTERFACE_CHECKS = (
    "ssh python torch_import hostname rendezvous env env_drift versions gpu_count world_size "
    "duplicate_device gpu_health resources barrier all_reduce dtype seed params step "
    "bandwidth slow_link straggler hang timeout").split()
OWN_CHECKS = ("srun", "infiniband")
# Calls that build a finding (or a host's failure), and where their check goes.
CHECK_ARGUMENT = {"Finding": 1, "_finding": 1, "Failure": 0, "compare": 1}


def documented() -> set[str]:
    return set(re.findall(r"^### `([a-z_]+)`$", TROUBLESHOOTING.read_text(), re.M))


def test_every_check_has_a_troubleshooting_entry() -> None:
    assert set(INTERFACE_CHECKS) | set(OWN_CHECKS) <= documented()


def test_every_member_of_check_has_a_troubleshooting_entry() -> None:
    assert {c.value for c in Check} - documented() == set()


def test_every_member_of_check_has_its_line_in_the_interface_contract() -> None:
    section = INTERFACE.read_text().split("### Check names", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"`([a-z_]+)`", section))
    assert {c.value for c in Check} - listed == set()


def emitted_check_names() -> list[tuple[str, int, str]]:
    """Every name written where a finding's check goes (a plain string or a ``Check`` member):
    a check argument of a call that builds a finding, a ``check=``/``error_check=`` keyword,
    or a value given to a variable named ``check``, as (file, line, name)."""
    found = []
    for path in sorted((REPO / "ddpcheck").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            places: list[ast.AST] = []
            if isinstance(node, ast.Call):
                func = node.func
                name = getattr(func, "id", None) or getattr(func, "attr", None)
                position = CHECK_ARGUMENT.get(name or "")
                if position is not None and len(node.args) > position:
                    places.append(node.args[position])
                places += [k.value for k in node.keywords if k.arg in ("check", "error_check")]
            elif isinstance(node, ast.Assign):
                if any(isinstance(t, ast.Name) and t.id == "check" for t in node.targets):
                    places.append(node.value)
            for place in places:
                for part in check_values(place):
                    if isinstance(part, ast.Constant):
                        name = str(part.value)
                    else:
                        name = Check[part.attr].value if part.attr in Check.__members__ \
                            else f"Check.{part.attr}"
                    found.append((str(path.relative_to(REPO)), part.lineno, name))
    return found


def check_values(expr: ast.AST) -> list[ast.AST]:
    """The names an expression can give as a check: plain strings and ``Check.X``, through
    ``a if c else b``, ``a or b`` and a lookup's default (``TABLE.get(key, default)``)."""
    if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
        return [expr]
    if (isinstance(expr, ast.Attribute) and isinstance(expr.value, ast.Name)
            and expr.value.id == "Check"):
        return [expr]
    if isinstance(expr, ast.IfExp):
        return check_values(expr.body) + check_values(expr.orelse)
    if isinstance(expr, ast.BoolOp):
        return [part for value in expr.values for part in check_values(value)]
    if (isinstance(expr, ast.Call) and isinstance(expr.func, ast.Attribute)
            and expr.func.attr == "get" and len(expr.args) == 2):
        return check_values(expr.args[1])
    return []


def test_every_emitted_check_name_is_a_member_of_check() -> None:
    names = emitted_check_names()
    assert len(names) > 80  # the scan reaches the places findings are built
    members = {c.value for c in Check}
    assert [n for n in names if n[2] not in members] == []


def test_the_crash_and_clock_skew_findings_carry_members() -> None:
    from ddpcheck.analyze.health import Stage0Context, clock_findings
    from ddpcheck.analyze.verdict import failure_findings
    from ddpcheck.model.records import RankRecord, RankStatus

    killed = RankRecord(rank=1, local_rank=1, host="h2", status=RankStatus.ERROR,
                        reported=False, error="torchrun: exit code -9 (SIGKILL)")
    (crash,) = failure_findings([killed])
    assert crash.check is Check.CRASH
    context = Stage0Context(clock_window=(1000.0, 1000.5))
    (skew,) = clock_findings("h1", {"time_end": 1010.0, "duration_s": 0.1}, context)
    assert skew.check is Check.CLOCK_SKEW


def test_interface_check_list_is_covered() -> None:
    section = INTERFACE.read_text().split("### Check names", 1)[1].split("\n\n", 2)[1]
    names = set(re.findall(r"`([a-z_]+)`", section))
    assert names == set(INTERFACE_CHECKS)
    assert names <= documented()


def test_readme_links_the_troubleshooting_guide() -> None:
    assert "(docs/troubleshooting.md)" in (REPO / "README.md").read_text()
