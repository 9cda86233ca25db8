"""The newcomer docs keep up with the code: every check has a troubleshooting entry and a line in
the interface contract, and every check name a finding carries is a member of ``Check``."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from ddpcheck.collect.facts import read_facts
from ddpcheck.model.checks import Check


REPO = Path(__file__).resolve().parents[1]
TROUBLESHOOTING = REPO / "docs" / "troubleshooting.md"
INTERFACE = REPO / "docs" / "interface.md"  # the user-facing contract
# The check names of the interface contract (docs/interface.md).
INTERFACE_CHECKS = (
    "ssh python torch_import hostname rendezvous env env_drift versions gpu_count world_size "
    "duplicate_device gpu_health resources barrier all_reduce dtype seed params step "
    "bandwidth slow_link straggler hang timeout").split()
OWN_CHECKS = ("srun", "infiniband", "numerics")
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
    (skew,) = clock_findings("h1", read_facts({"time_end": 1010.0, "duration_s": 0.1}),
                             context)
    assert skew.check is Check.CLOCK_SKEW


def test_interface_check_list_is_covered() -> None:
    section = INTERFACE.read_text().split("### Check names", 1)[1].split("\n\n", 2)[1]
    names = set(re.findall(r"`([a-z_]+)`", section))
    assert names == set(INTERFACE_CHECKS)
    assert names <= documented()


def test_readme_links_the_troubleshooting_guide() -> None:
    assert "(docs/troubleshooting.md)" in (REPO / "README.md").read_text()


# -- the README a newcomer reads, and the pages it leads to ---------------------------------

README = REPO / "README.md"
CPU_TORCH = "pip install torch --index-url https://download.pytorch.org/whl/cpu"
COMMANDS = ("preflight", "bandwidth", "hang", "node")


def test_readme_fits_and_its_first_screen_has_what_a_newcomer_needs() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) < 200
    first = "\n".join(lines[:75])
    for needed in (CPU_TORCH, "pip install ddpcheck", "pip install -e .", "ddpcheck preflight  ",
                   "ddpcheck preflight hosts.yaml", "```yaml\n", "# Verdict: OK (exit 0)",
                   "(docs/troubleshooting.md)"):
        assert needed in first, needed
    codes = re.findall(r"^\| (\d+) \|", first, re.M)
    assert codes == ["0", "1", "2", "3", "130"]


def test_readme_says_the_install_once_and_never_a_bare_torch() -> None:
    """A bare or pinned torch from the default index is the CUDA build (GBs of nvidia-*)."""
    text = README.read_text()
    assert text.count(CPU_TORCH) == 1
    commands = [line.strip() for block in re.findall(r"```bash\n(.*?)```", text, re.S)
                for line in block.splitlines() if not line.strip().startswith("#")]
    installs = [c for c in commands if "pip install" in c and "torch" in c]
    assert installs == [CPU_TORCH]


def test_readme_hosts_yaml_is_a_whole_hosts_file(tmp_path) -> None:
    from ddpcheck.config.hostsyaml import load_hosts_file

    (block,) = re.findall(r"```yaml\n(.*?)```", README.read_text(), re.S)
    assert len(block.strip().splitlines()) == 3
    (tmp_path / "hosts.yaml").write_text(block)
    spec = load_hosts_file(tmp_path / "hosts.yaml")
    assert [h.name for h in spec.hosts] == ["node01", "node02", "node03", "node04"]
    assert {h.python for h in spec.hosts} == {"/opt/venv/bin/python"}


def test_readme_links_a_page_per_command_and_the_user_pages() -> None:
    text = README.read_text()
    pages = [f"docs/{c}.md" for c in COMMANDS] + [
        "docs/hosts.md", "docs/outputs.md", "docs/slurm.md", "docs/kubernetes.md",
        "docs/in-job.md", "docs/troubleshooting.md", "docs/architecture.md"]
    for page in pages:
        assert f"]({page})" in text, page
        assert (REPO / page).is_file(), page


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_relative_link_of_the_readme_and_docs_resolves() -> None:
    broken = []
    for page in [README, *sorted((REPO / "docs").glob("*.md"))]:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            where = (page.parent / path).resolve() if path else page
            if not where.exists():
                broken.append(f"{page.name}: {target}")
            elif anchor and where.suffix == ".md":
                headings = re.findall(r"^#+ (.+)$", re.sub(r"```.*?```", "", where.read_text(),
                                                           flags=re.S), re.M)
                if anchor not in {slug(h) for h in headings}:
                    broken.append(f"{page.name}: {target} (no such heading)")
    assert broken == []


def test_ci_runs_the_readme_test_command() -> None:
    command = ".venv/bin/python -m pytest"
    assert f"`{command}`" in README.read_text()
    assert command in (REPO / ".ci" / "run").read_text().splitlines()


def test_the_hosts_example_teaches_the_per_user_workdir() -> None:
    from ddpcheck.config.hostsyaml import load_hosts_file

    spec = load_hosts_file(REPO / "configs" / "hosts.example.yaml")
    assert all("{uid}" in h.workdir for h in spec.hosts)
    text = (REPO / "configs" / "hosts.example.yaml").read_text()
    assert not re.search(r"^\s*workdir: /tmp/ddpcheck\s", text, re.M)


def test_py_spy_is_a_dependency_of_the_default_install() -> None:
    tomllib = __import__("pytest").importorskip("tomllib")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert any(re.match(r"py-spy\b", d) for d in project["dependencies"])
