"""The architecture holds: imports point down, no cycles, the command line stays light.

Every module's AST is walked, imports inside functions included (a lazy import is still an
edge). The allowed edges are listed here, package by package; a new edge is a design decision
to make here, with its reason, not by accident.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ddpcheck"

# The layers, top to bottom; a package may import itself, the packages listed for it, and the
# bottom layer, nothing else of ddpcheck:
#
#   cli -> commands -> engine -> {plan, transport, collect, analyze, report} -> config
#   bottom layer, standard library only, which every package may import: core (the formulas
#   and formats every layer shares), model (data, check names), wire (the @@DDPCHECK lines).
#
# remote (the programs on hosts and ranks) and injob (inside the user's job) stand on the bottom
# layer beside the launcher's packages. The launcher names the programs it runs by module path
# in its command lines (strings, not imports); the few imports of them it still makes are listed
# below, each with its reason.
ALLOWED: dict[str, set[str]] = {
    "cli": {"commands", "__version__"},  # cli only dispatches
    # commands: options + which workload and launcher; they build inputs of the layers below
    # (LaunchOptions, SweepSettings) and render with report, so they reach under the engine.
    # ``ddpcheck node`` is stage 0 on this machine: it runs remote.agent.collect_facts in-process
    # and reads the record with the parser stage 0's output goes through (collect.facts).
    "commands": {"engine", "plan", "config", "analyze", "report", "remote", "collect"},
    # engine: and host lists in the grammar users write (config.hostlist) in its progress lines
    "engine": {"plan", "transport", "collect", "analyze", "report", "config"},
    "plan": {"config"},
    "transport": set(),  # I/O with hosts only: it needs nothing but the bottom layer
    "collect": set(),
    # analyze uses collect's parsers to read outcomes, host lists in the grammar users write
    # (config.hostlist)
    "analyze": {"collect", "config"},
    # report renders analyze's results (bandwidth summaries, hang frames): a sibling edge
    # downward in the data flow (analyze -> report, never back); and host lists in the grammar
    # users write them (config.hostlist), a layer below
    "report": {"analyze", "config"},
    "config": set(),
    # remote runs on hosts and ranks, injob inside the user's job: stdlib, torch and the bottom
    # layer (the straggler rule and the heartbeat format are in core, so the host scan and the
    # Monitor do not import each other); injob.consistency takes the same RNG and parameter
    # fingerprints as the probe (remote.fingerprint): one way, from the job to rank-side code.
    "remote": set(),
    "injob": {"remote"},
    "core": set(),
    "model": set(),
    "wire": set(),
    "probe": {"remote"},  # ddpcheck.probe: the public entry point, = remote.probe
    "__main__": {"cli"},
    "__init__": {"injob"},  # lazy: ddpcheck.Monitor, ddpcheck.check_consistency
}
BOTTOM = {"core", "model", "wire"}
# Within the bottom layer: model and wire import nothing of ddpcheck; core imports model only
# (drift's differences carry a Severity and become Findings).
BOTTOM_ALLOWED: dict[str, set[str]] = {"core": {"model"}, "model": set(), "wire": set()}


def package_of(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return parts[0]


def module_name(path: Path) -> str:
    parts = ("ddpcheck",) + path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path) -> list[tuple[str, int]]:
    """Every ddpcheck module ``path`` imports (absolute names), with the line."""
    tree = ast.parse(path.read_text(), str(path))
    here = module_name(path).split(".")
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here if is_package else here[:-1]
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if node.module is None or node.level and not node.module:
                found += [(f"{target}.{alias.name}", node.lineno) for alias in node.names]
            else:
                found.append((target, node.lineno))
    return [(name, line) for name, line in found if name.split(".")[0] == "ddpcheck"]


def top(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_package_is_listed() -> None:
    assert {package_of(p) for p in MODULES} <= set(ALLOWED) | {"__init__"}


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down(path: Path) -> None:
    own = package_of(path)
    allowed = ALLOWED[own] | {own} | BOTTOM_ALLOWED.get(own, BOTTOM)
    wrong = [f"line {line}: {name}" for name, line in imported(path)
             if top(name) not in allowed and name != "ddpcheck"]
    assert not wrong, f"{path.relative_to(PACKAGE)} ({own}) may not import: {wrong}"


def package_edges() -> set[tuple[str, str]]:
    """(importer, imported) for every import between two packages of ddpcheck."""
    return {(package_of(p), top(name)) for p in MODULES for name, _ in imported(p)
            if name != "ddpcheck" and top(name) != package_of(p)}


# Pairs of packages allowed to import each other: none.
TWO_WAY: set[frozenset[str]] = set()


def test_no_two_packages_import_each_other() -> None:
    edges = package_edges()
    both = {frozenset(edge) for edge in edges if edge[::-1] in edges}
    assert both <= TWO_WAY, f"packages that import each other: {sorted(map(sorted, both))}"
    stale = TWO_WAY - both
    assert not stale, f"no longer two-way, drop from TWO_WAY: {sorted(map(sorted, stale))}"


def test_every_allowed_edge_is_used() -> None:
    """The table says what is, not what once was: an edge nothing uses is dropped from it.
    (``__init__`` loads injob by name, through importlib: no import statement to see.)"""
    edges = package_edges()
    unused = [f"{own} -> {other}" for own, others in ALLOWED.items() if own != "__init__"
              for other in others if (own, other) not in edges]
    assert not unused, f"allowed but never imported: {unused}"


def absolute_imports(path: Path) -> list[str]:
    """The top-level name of every absolute import in ``path`` (``torch`` for ``torch.cuda``)."""
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names.append(node.module or "")
    return [name.split(".")[0] for name in names]


# Beside the standard library, what runs on hosts and ranks may use: torch and numpy (a rank's
# RNG), psutil (ddpcheck's dependency: host facts and the hang scan read processes without
# torch, which the job may hold), pynvml (optional, guarded: the GPU counters and driver).
REMOTE_THIRD_PARTY = {"torch", "numpy", "psutil", "pynvml"}
# check_consistency's error message is a table: tabulate is ddpcheck's own dependency, so it is
# installed wherever the job can import ddpcheck, and is loaded only when ranks disagree.
THIRD_PARTY_ALLOWED = {"injob/consistency.py": {"tabulate"}}


def test_remote_and_injob_import_only_stdlib_torch_and_their_own() -> None:
    """What runs on hosts, ranks and in the user's job: no third-party package but torch."""
    stdlib = set(sys.stdlib_module_names)
    for path in MODULES:
        if package_of(path) not in ("remote", "injob"):
            continue
        extra = THIRD_PARTY_ALLOWED.get(str(path.relative_to(PACKAGE)), set())
        for root in absolute_imports(path):
            assert root in stdlib | extra | REMOTE_THIRD_PARTY | {"ddpcheck", "__future__"}, \
                f"{path.relative_to(PACKAGE)} imports {root}"


def test_the_bottom_layer_imports_only_the_standard_library() -> None:
    """core, model and wire are imported by every layer, on hosts and in jobs too: no torch,
    no third-party package at all."""
    stdlib = set(sys.stdlib_module_names)
    for path in MODULES:
        if package_of(path) not in BOTTOM:
            continue
        for root in absolute_imports(path):
            assert root in stdlib | {"__future__"}, f"{path.relative_to(PACKAGE)} imports {root}"


def test_no_cycles_between_modules() -> None:
    graph: dict[str, set[str]] = {}
    names = {module_name(p) for p in MODULES}
    for path in MODULES:
        edges = set()
        for name, _ in imported(path):
            # "from ddpcheck.x import y": y may be a module or a name in x
            edges.add(name if name in names else name.rsplit(".", 1)[0])
        graph[module_name(path)] = {e for e in edges if e in names} - {module_name(path)}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt.startswith(node + ".") or node == "ddpcheck":
                continue  # a package importing its own submodule
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)


def loaded_modules(*argv: str) -> set[str]:
    code = ("import sys\nfrom ddpcheck.cli import main\n"
            f"try:\n    code = main({list(argv)!r})\nexcept SystemExit as exc:\n    code = exc.code\n"
            "print('\\n'.join(sorted(m for m in sys.modules if m.startswith('ddpcheck'))))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert "Traceback" not in done.stderr, done.stderr
    return set(done.stdout.split())


def test_node_no_torch_loads_neither_transport_nor_engine(tmp_path) -> None:
    loaded = loaded_modules("node", "--no-torch", "--json", str(tmp_path / "node.json"))
    assert "ddpcheck.commands.node" in loaded and "ddpcheck.remote.agent" in loaded
    assert (tmp_path / "node.json").exists()
    assert not [m for m in loaded if m.startswith(("ddpcheck.transport", "ddpcheck.engine"))]
    assert "paramiko" not in loaded


def test_building_the_parser_loads_neither_transport_nor_engine() -> None:
    loaded = loaded_modules("--version")
    assert "ddpcheck.commands.bandwidth" in loaded
    assert not [m for m in loaded if m.startswith(("ddpcheck.transport", "ddpcheck.engine"))]


def test_every_class_is_under_150_lines() -> None:
    long = [f"{p.relative_to(PACKAGE)}:{n.name} ({n.end_lineno - n.lineno + 1} lines)"
            for p in MODULES for n in ast.walk(ast.parse(p.read_text()))
            if isinstance(n, ast.ClassDef) and n.end_lineno - n.lineno + 1 >= 150]
    assert not long


def test_the_io_layers_decide_no_finding() -> None:
    """engine, transport and commands do I/O; findings are made by the rules in analyze (and
    the rank's own checks on the host), never there."""
    makers = [f"{p.relative_to(PACKAGE)}:{n.lineno}" for p in MODULES
              if package_of(p) in ("engine", "transport", "commands", "cli")
              for n in ast.walk(ast.parse(p.read_text()))
              if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "Finding"]
    assert not makers
