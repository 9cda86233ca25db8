"""The GPU suite's steps, run by ``gpu/run-suite.sh`` on a machine with one NVIDIA GPU.

Each step runs under what is left of one deadline and ends as passed, FAILED (why) or NOT RUN
(why); the page written to ``--out`` (docs/gpu.md) says the machine, the driver, CUDA, NCCL and
torch versions, each step's outcome and its numbers. ``--dry-run`` (CI, no GPU) checks that every
step is wired: the commands and options exist, the gpu tests are collected, and without a GPU
every one of them skips saying why (a gpu test that passes without a GPU fails the dry run).
Standard library only; ddpcheck and pytest are run as subprocesses.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
# The gpu tests a step reports on (tests/test_gpu_suite.py).
DUPLICATE_TEST = "test_two_ranks_on_one_gpu_are_duplicate_device"
RAS_TEST = "test_nccl_ras_answers_for_a_live_job"
DCGM_TEST = "test_dcgm_diag_level_1"
XID_TEST = "test_node_reads_the_kernel_log_and_maps_xids_to_gpus"
# What the steps call: (command, options it must have).
WIRING = [(["node"], ["--json", "--dcgm", "--since", "-v"]),
          (["preflight"], ["--json", "--timeout"]),
          (["bandwidth"], ["--json", "--ops", "--minbytes", "--maxbytes"]),
          (["hang"], ["--json"])]


@dataclass
class Step:
    name: str
    outcome: str = "NOT RUN"
    detail: str = ""
    numbers: dict[str, Any] = field(default_factory=dict)


class Clock:
    def __init__(self, deadline_s: float) -> None:
        self.end = time.monotonic() + deadline_s

    def left(self, at_most: float) -> float:
        return max(1.0, min(at_most, self.end - time.monotonic()))


def run(argv: list[str], timeout: float, cwd: Path = REPO) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=cwd,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        return subprocess.CompletedProcess(argv, 124, exc.stdout or "", f"timed out after "
                                                                        f"{timeout:.0f}s")


def ddpcheck(*args: str, timeout: float) -> subprocess.CompletedProcess:
    return run([PY, "-m", "ddpcheck", *args], timeout)


def junit_outcomes(path: Path) -> dict[str, tuple[str, str]]:
    """pytest's --junitxml -> {test name: (passed|failed|skipped, message)}."""
    outcomes: dict[str, tuple[str, str]] = {}
    try:
        root = ElementTree.parse(path).getroot()
    except (OSError, ElementTree.ParseError):
        return outcomes
    for case in root.iter("testcase"):
        name = case.get("name", "?")
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error"):
                outcome, message = "failed", (child.get("message") or "")[:300]
            elif child.tag == "skipped":
                outcome, message = "skipped", (child.get("message") or "")[:300]
        outcomes[name] = (outcome, message)
    return outcomes


def from_test(step: Step, outcomes: dict[str, tuple[str, str]], test: str) -> Step:
    outcome, message = outcomes.get(test, ("missing", "not collected"))
    step.outcome = {"passed": "passed", "failed": "FAILED", "skipped": "NOT RUN"}.get(
        outcome, "NOT RUN")
    step.detail = message if outcome != "passed" else f"`{test}`"
    return step


def load(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def versions() -> dict[str, Any]:
    code = ("import json, torch; from ddpcheck.remote import nvml; f = nvml.read_gpus("
            "clock_window_s=0); g = (f.get('gpus') or [{}])[0]; print(json.dumps({"
            "'gpu': g.get('name'), 'gpus': len(f.get('gpus') or []), 'driver': f.get('driver'),"
            " 'cuda_driver': f.get('cuda_driver'), 'torch': torch.__version__, "
            "'cuda': torch.version.cuda, 'nccl': '.'.join(map(str, torch.cuda.nccl.version())) "
            "if torch.cuda.is_available() else None}))")
    done = run([PY, "-c", code], 120)
    try:
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"error": (done.stderr.strip().splitlines() or ["?"])[-1]}


def verdict_of(report: dict[str, Any], done: subprocess.CompletedProcess) -> tuple[str, str]:
    errors = [f"{f['check']}: {f['message'][:160]}" for f in report.get("findings", [])
              if f.get("severity") == "error"]
    if done.returncode == 0:
        return "passed", f"verdict {report.get('verdict')}"
    return "FAILED", (f"exit {done.returncode}; " + "; ".join(errors[:3]) if errors else
                      f"exit {done.returncode}: {(done.stderr or done.stdout)[-300:]}")


def run_suite(out_dir: Path, clock: Clock) -> tuple[dict[str, Any], list[Step]]:
    info = versions()
    steps: list[Step] = []
    junit = out_dir / "gpu-tests.xml"
    tests = Step("pytest -m gpu")
    done = run([PY, "-m", "pytest", "-m", "gpu", "-q", "-rs", "-p", "no:cacheprovider",
                f"--junitxml={junit}", "tests"], clock.left(300))
    outcomes = junit_outcomes(junit)
    counts = {k: sum(1 for o, _ in outcomes.values() if o == k)
              for k in ("passed", "failed", "skipped")}
    tests.outcome = "passed" if done.returncode == 0 and counts["passed"] else "FAILED"
    tests.detail = ", ".join(f"{v} {k}" for k, v in counts.items())
    tests.numbers = {"failed tests": [n for n, (o, _) in outcomes.items() if o == "failed"]}
    steps.append(tests)

    node = Step("ddpcheck node")
    done = ddpcheck("node", "-v", "--json", str(out_dir / "node.json"), timeout=clock.left(90))
    report = load(out_dir / "node.json")
    node.outcome, node.detail = verdict_of(report, done)
    facts = next(iter((report.get("stage0") or {}).values()), {})
    gpu = ((facts.get("nvml") or {}).get("gpus") or [{}])[0]
    node.numbers = {k: gpu.get(k) for k in ("name", "temperature_c", "recovery_action",
                                            "clock_event_samples", "row_remap_banks", "pcie")}
    node.numbers["findings"] = [f"{f['severity']} {f['check']}: {f['message'][:140]}"
                                for f in report.get("findings", [])]
    steps.append(node)

    preflight = Step("ddpcheck preflight, 1 rank on NCCL")
    done = ddpcheck("preflight", "--json", str(out_dir / "preflight.json"), "--timeout", "150",
                    timeout=clock.left(170))
    report = load(out_dir / "preflight.json")
    preflight.outcome, preflight.detail = verdict_of(report, done)
    if report.get("backend") != "nccl" and preflight.outcome == "passed":
        preflight.outcome, preflight.detail = "FAILED", f"backend {report.get('backend')}"
    preflight.numbers = {"backend": report.get("backend"), "world_size": report.get("world_size"),
                         "collectives": report.get("collectives")}
    steps.append(preflight)
    compute = Step("compute check")
    found = [f for f in report.get("findings", []) if "compute" in str(f.get("check"))]
    measured = [r.get("compute") for r in report.get("ranks", []) if r.get("compute")]
    if measured or found:
        compute.outcome = "FAILED" if any(f["severity"] == "error" for f in found) else "passed"
        compute.numbers = {"ranks": measured, "findings": found}
    else:
        compute.detail = "this version's preflight has no compute check"
    steps.append(compute)
    numerics = Step("numerics check (bf16/fp16/fp32/TF32, exact all_reduce)")
    checked = [r["numerics"] for r in report.get("ranks", []) if r.get("numerics")]
    wrong = [f for f in report.get("findings", []) if f.get("check") == "numerics"]
    if checked:
        numerics.outcome = "FAILED" if wrong else "passed"
        numerics.numbers = {"ranks": [{k: n.get(k) for k in ("where", "group", "seconds",
                                                             "products", "all_reduce")}
                                      for n in checked], "findings": wrong}
    else:
        numerics.detail = "this version's preflight has no numerics check"
    steps.append(numerics)

    steps.append(from_test(Step("preflight, 2 ranks on the one GPU -> duplicate_device"),
                           outcomes, DUPLICATE_TEST))

    sweep = Step("ddpcheck bandwidth on NCCL")
    done = ddpcheck("bandwidth", "--ops", "all_reduce,all_gather", "--minbytes", "1M",
                    "--maxbytes", "256M", "--json", str(out_dir / "bandwidth.json"),
                    timeout=clock.left(150))
    report = load(out_dir / "bandwidth.json")
    sweep.outcome, sweep.detail = verdict_of(report, done)
    sweep.numbers = {"bandwidth": report.get("bandwidth") or report.get("sweep")}
    steps.append(sweep)

    xid = from_test(Step("Xid read (kernel log)"), outcomes, XID_TEST)
    log = facts.get("kernel_log") or {}
    xid.numbers = {"source": log.get("source"), "error": log.get("error"),
                   "events": [f"{e.get('kind')} {e.get('xid')} x{e.get('count')} on "
                              f"{e.get('bus_id')}" for e in log.get("events") or []]}
    steps.append(xid)
    steps.append(from_test(Step("DCGM diag -r 1"), outcomes, DCGM_TEST))
    steps.append(from_test(Step("NCCL RAS query against a live NCCL job"), outcomes, RAS_TEST))
    return info, steps


def without_gpu_problems(outcomes: dict[str, tuple[str, str]]) -> list[str]:
    """On a machine without a GPU every gpu test must skip and say why; the suite's own tests
    must be there."""
    problems = [f"gpu test {test} is not collected"
                for test in (DUPLICATE_TEST, RAS_TEST, DCGM_TEST, XID_TEST) if test not in outcomes]
    passed = [n for n, (o, _) in outcomes.items() if o == "passed"]
    if passed:
        problems.append(f"gpu tests passed without a GPU (vacuous): {', '.join(passed)}")
    failed = [n for n, (o, _) in outcomes.items() if o == "failed"]
    if failed:
        problems.append(f"gpu tests failed without a GPU instead of skipping: {', '.join(failed)}")
    silent = [n for n, (o, m) in outcomes.items() if o == "skipped" and not m.strip()]
    if silent:
        problems.append(f"gpu tests skipped without saying why: {', '.join(silent)}")
    return problems


def dry_run(out_dir: Path, clock: Clock) -> tuple[dict[str, Any], list[Step], list[str]]:
    """Wiring only: options exist, gpu tests collected and, without a GPU, all skipped."""
    problems: list[str] = []
    for command, options in WIRING:
        done = ddpcheck(*command, "--help", timeout=clock.left(60))
        missing = [o for o in options if o not in done.stdout]
        if done.returncode != 0 or missing:
            problems.append(f"ddpcheck {' '.join(command)}: exit {done.returncode}, missing "
                            f"options {missing}")
    junit = out_dir / "gpu-tests.xml"
    done = run([PY, "-m", "pytest", "-m", "gpu", "-q", "-rs", "-p", "no:cacheprovider",
                f"--junitxml={junit}", "tests"], clock.left(300))
    outcomes = junit_outcomes(junit)
    if not outcomes:
        problems.append(f"pytest -m gpu collected nothing: {(done.stderr or done.stdout)[-300:]}")
    problems += without_gpu_problems(outcomes)
    steps = [Step(name, "NOT RUN", "dry run: no GPU") for name in (
        "pytest -m gpu", "ddpcheck node", "ddpcheck preflight, 1 rank on NCCL", "compute check",
        "numerics check (bf16/fp16/fp32/TF32, exact all_reduce)",
        "preflight, 2 ranks on the one GPU -> duplicate_device", "ddpcheck bandwidth on NCCL",
        "Xid read (kernel log)", "DCGM diag -r 1", "NCCL RAS query against a live NCCL job")]
    counts = {k: sum(1 for o, _ in outcomes.values() if o == k)
              for k in ("passed", "failed", "skipped")}
    steps[0].detail = (f"dry run: {len(outcomes)} gpu tests collected: "
                       + ", ".join(f"{v} {k}" for k, v in counts.items()))
    print(f"# gpu tests: {len(outcomes)} collected, {counts['passed']} passed, "
          f"{counts['failed']} failed, {counts['skipped']} skipped", file=sys.stderr)
    return {"dry_run": True}, steps, problems


def render(info: dict[str, Any], steps: list[Step], took_s: float, dry: bool) -> str:
    lines = ["# The GPU suite: what it saw", ""]
    if dry:
        lines += ["**Dry run** (no GPU): the steps are wired; nothing below ran on a GPU.", ""]
    else:
        lines += [f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by "
                  f"`gpu/run-suite.sh` in {took_s:.0f} s.", ""]
        lines += ["| | |", "|---|---|"]
        for key in ("gpu", "gpus", "driver", "cuda_driver", "torch", "cuda", "nccl", "error"):
            if info.get(key) is not None:
                lines.append(f"| {key} | {info[key]} |")
        lines.append("")
    lines += ["| step | outcome | detail |", "|---|---|---|"]
    for step in steps:
        lines.append(f"| {step.name} | {step.outcome} | {step.detail.replace('|', '/')} |")
    lines.append("")
    for step in steps:
        if step.numbers:
            lines += [f"## {step.name}", "", "```json",
                      json.dumps(step.numbers, indent=1, default=str)[:4000], "```", ""]
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=str(REPO / "docs" / "gpu.md"))
    parser.add_argument("--deadline", type=float, default=450.0)
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    began = time.monotonic()
    clock = Clock(args.deadline)
    with tempfile.TemporaryDirectory(prefix="ddpcheck-gpu-suite-") as folder:
        if args.dry_run:
            info, steps, problems = dry_run(Path(folder), clock)
        else:
            info, steps = run_suite(Path(folder), clock)
            problems = [f"{s.name}: {s.detail}" for s in steps if s.outcome == "FAILED"]
    page = render(info, steps, time.monotonic() - began, args.dry_run)
    if args.out in ("-", "/dev/stdout"):
        sys.stdout.write(page)
    else:
        Path(args.out).write_text(page)
    for problem in problems:
        print(f"ddpcheck gpu suite: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
