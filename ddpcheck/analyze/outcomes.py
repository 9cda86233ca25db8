"""Analyze, stage outcomes: what a host's command gave back -> why that host failed, or nothing.

Pure, on the launcher. The engine runs the stages and records what these functions decide;
every rule about *why* a host or a pair failed lives here, once, for every launcher and
workload: stage 0, the rendezvous check, "no rank reported back (why)", a hang scan, a pair job.
"""

from __future__ import annotations

import re

from dataclasses import replace
from typing import Any, Mapping, Optional, Sequence, Union

from ..collect.hostoutput import HostOutput, parse_output, rank_record
from ..config.hostlist import hosts_text
from ..model.checks import Check
from ..model.errors import HostError, Terminated
from ..model.facts import HostFacts
from ..model.outcomes import CommandResult, Failure, LaunchEnd
from ..model.records import Finding, RankRecord, Severity
from ..model.spec import HostSpec
from ..core.busbw import Collective
from . import health
from .bandwidth import PairResult, rows_of
from .verdict import failure_findings


WARNING_LINE = re.compile(r"^\S.*:\d+: \w*Warning: ")  # Python's warnings module: file:line:


def summary_of(lines: Sequence[str]) -> str:
    """The most telling line of a host's stray output (the last error-looking one), leaving
    out Python's warnings (each its line and the source line after it: torch's NumPy
    UserWarning is no reason a rank failed)."""
    kept, skip = [], False
    for line in lines:
        if WARNING_LINE.match(line):
            skip = True
        elif not (skip and line.startswith(" ")):
            kept.append(line)
            skip = False
    for line in reversed(kept):
        if ("Error" in line or "error" in line) and "error_file:" not in line:
            return line.strip()[:300]
    return kept[-1].strip()[:300] if kept else (lines[-1].strip()[:300] if lines else
                                                "no output")


# How a host error starts that only says the run's --timeout ran out before the host was
# checked; what it means is the failure's ``not_reached`` flag, never this text.
NOT_REACHED = "not reached in time"


def not_reached_failure(timeout_s: float, what: str) -> Failure:
    """A host the run had no time left for: not a failure of the host (exit 3, never the root
    cause); ``what``: how far it got."""
    return Failure(Check.TIMEOUT, f"{NOT_REACHED}: {what} when --timeout ({timeout_s:g}s) ran "
                                  f"out; raise --timeout or ssh.fanout for this many hosts",
                   not_reached=True)


def connect_failure(error: HostError) -> Failure:
    """A host the launcher could not connect to (refused, auth, host key, unreachable)."""
    return Failure(Check.SSH, error.message)


def stage0_failure(host: HostSpec, result: CommandResult, facts: HostFacts,
                   stray: Sequence[str]) -> Optional[Failure]:
    """What kept stage 0 from giving this host's facts; None when they came."""
    if result.cancelled:
        return Failure(Check.TIMEOUT, "stage 0 interrupted", interrupted=True)
    if result.timed_out:
        return Failure(Check.TIMEOUT, "stage 0 did not finish before its deadline")
    if result.lost and not facts:
        return Failure(Check.SSH, "the connection was lost during stage 0")
    if result.exit_code == 127:
        return Failure(Check.PYTHON, f"interpreter {host.python!r} not found")
    if not facts:
        text = "\n".join(stray)
        workdir_line = next((line for line in stray if line.lstrip().startswith(
            ("mkdir:", "cd:", "sh:", "bash:")) and host.workdir in line), None)
        if workdir_line is not None:
            return Failure(Check.RESOURCES, f"cannot create or enter the workdir {host.workdir}: "
                                            f"{workdir_line.strip()[:300]}")
        if "No module named" in text and "ddpcheck" in text:
            return Failure(Check.PYTHON, f"ddpcheck is not importable by {host.python}")
        return Failure(Check.PYTHON, f"stage 0 exited {result.exit_code}: {summary_of(stray)}")
    if facts.workdir_error:  # refused (not private) or not creatable: model.safety
        return Failure(Check.RESOURCES, facts.workdir_error)
    if facts.workdir_write_error:  # the run directory could not be made there
        return Failure(Check.RESOURCES, facts.workdir_write_error)
    return None  # what the facts say is judged by the health rules


def blocking_failure(host: str, findings: list[Finding]
                     ) -> tuple[Optional[Failure], list[Finding]]:
    """The first health finding that makes the run pointless (torchrun will not start), as the
    host's failure, and the other findings."""
    blocking = next((f for f in findings if health.blocks_launch(f)), None)
    if blocking is None:
        return None, findings
    others = [f for f in findings if f is not blocking]
    return Failure(blocking.check, blocking.message.removeprefix(f"{host}: ")), others


def rendezvous_failure(kind: str, result: CommandResult, target: str) -> Optional[Failure]:
    """One host's part of the rendezvous check (``kind`` listen or reach); None when it passed."""
    parsed = parse_output(result.output)
    outcome = parsed.listen if kind == "listen" else parsed.reach
    if outcome is None:
        why = "no answer" if result.timed_out else summary_of(parsed.stray)
        return Failure(Check.RENDEZVOUS, f"rendezvous check: {kind} gave no result ({why})",
                       interrupted=result.cancelled, no_result=True)
    if not outcome.get("ok"):
        return Failure(Check.RENDEZVOUS,
                       f"{outcome.get('error')} on the master" if kind == "listen" else
                       f"cannot connect to master {target}: {outcome.get('error')} "
                       f"(tried {outcome.get('elapsed_s')}s)")
    return None


def no_rank_reason(result: CommandResult, agent: Mapping[str, Any]) -> str:
    """Why no rank of a host reported back: the one wording for every workload."""
    return ("interrupted" if result.cancelled else
            "no answer within the deadline" if result.timed_out else
            f"the agent stopped torchrun: {agent['stopped']}" if agent.get("stopped")
            else f"torchrun exited {agent.get('exit_code', result.exit_code)}")


def launch_failure(result: CommandResult, parsed: HostOutput,
                   ranks: Sequence[RankRecord]) -> Optional[Failure]:
    """What failed a host's launch as a whole (not a rank's own failure); None otherwise."""
    agent = parsed.agent or {}
    if agent.get("error"):  # the run directory could not be made: the workdir is unusable
        return Failure(Check.RESOURCES, f"launch: {agent['error']}")
    imported = parsed.torch_import or {}
    if imported.get("error") and not ranks:  # torchrun could not import torch: no rank started
        return Failure(Check.TORCH_IMPORT, f"launch: import torch failed: {imported['error']}")
    if result.lost and not ranks:
        return Failure(Check.SSH, "launch: the connection was lost before any rank reported")
    if not ranks:
        check = Check.TIMEOUT if result.timed_out or agent.get("stopped") else Check.RENDEZVOUS
        return Failure(check, f"launch: no rank reported back ({no_rank_reason(result, agent)}): "
                              f"{summary_of(parsed.stray)}", interrupted=result.cancelled)
    return None


def launch_error_failure(error: BaseException) -> Failure:
    """A host whose launch raised (its connection, or recording its result, failed): its
    ranks cannot have met the others."""
    return Failure(Check.RENDEZVOUS, f"launch: {error}")


def launch_end(failure: Optional[Failure], ranks: Sequence[RankRecord]) -> LaunchEnd:
    """What one host's launch means for the others: a host whose torchrun never started (torch
    would not import, no run directory) never joins the rendezvous, so the others can stop at
    once instead of waiting out torchrun's join timeout."""
    if failure is not None and not ranks and failure.check in (Check.TORCH_IMPORT,
                                                               Check.RESOURCES):
        return LaunchEnd.NEVER_JOINED
    if failure is not None or any(r.status.value != "ok" for r in ranks):
        return LaunchEnd.FAILED
    return LaunchEnd.OK


def scan_failure(host: HostSpec, result: CommandResult, stray: Sequence[str]) -> Failure:
    """Why a host's hang scan gave no result."""
    not_importable = "No module named" in "\n".join(stray)  # the host's own output
    why = ("interrupted" if result.cancelled else "no answer within the deadline"
           if result.timed_out else f"exit {result.exit_code}: {summary_of(stray)}")
    if not_importable:
        why = f"ddpcheck is not importable by {host.python}: {summary_of(stray)}"
    return Failure(Check.TIMEOUT if result.timed_out else Check.PYTHON, f"scan: {why}",
                   interrupted=result.cancelled and not not_importable)


def srun_silent_failure(result: CommandResult, detail: str) -> Failure:
    """A node whose srun task gave nothing at stage 0: unreachable through srun."""
    why = ("interrupted" if result.cancelled else
           "srun did not finish before the deadline" if result.timed_out else
           f"srun exited {result.exit_code}")
    return Failure(Check.SRUN, f"no output from this node ({why}): {detail}",
                   interrupted=result.cancelled)


def signal_name(interrupt: BaseException) -> str:
    """The signal a KeyboardInterrupt stands for: SIGTERM (``Terminated``) or SIGINT."""
    return "SIGTERM" if isinstance(interrupt, Terminated) else "SIGINT"


def interrupted_finding(signal: str, stage: str) -> Finding:
    """The root cause of an interrupted run: who stopped it, and at which stage."""
    who = ("interrupted by the user (SIGINT)" if signal == "SIGINT" else
           f"stopped by {signal} (a scheduler's time limit or kill)")
    return Finding(Severity.ERROR, Check.INTERRUPTED,
                   f"{who} at stage {stage}; what had not finished is reported as its "
                   f"consequence", root_cause=True)


# Findings that say only that something did not finish: after an interruption, its consequence.
_UNFINISHED_CHECKS = frozenset({Check.WORLD_SIZE, Check.TIMEOUT, Check.CRASH})
CONSEQUENCE_NOTE = " (a consequence of the interruption)"


def with_interruption(findings: Sequence[Finding], signal: str, stage: str) -> list[Finding]:
    """The findings of an interrupted run: the interruption first, as the root cause; what did
    not finish (ranks that never reported, steps cut short) marked as its consequence; no
    other root cause."""
    marked = [interrupted_finding(signal, stage)]
    for finding in findings:
        unfinished = finding.severity is Severity.ERROR and (
            finding.check in _UNFINISHED_CHECKS or finding.interrupted)
        marked.append(replace(finding, root_cause=False,
                              message=finding.message + (CONSEQUENCE_NOTE if unfinished
                                                         else "")))
    return marked


def not_launched_finding(names: Sequence[str]) -> Finding:
    joined = hosts_text(names)
    return Finding(Severity.INFO, Check.RENDEZVOUS,
                   f"torchrun was not started: {joined} failed before launch, and a world with a "
                   f"missing node can only hang")


def left_out_finding(names: Sequence[str], healthy: int) -> Finding:
    joined = hosts_text(names)
    return Finding(Severity.INFO, Check.SLOW_LINK,
                   f"pairs with {joined} were not measured ({joined} failed before launch); the "
                   f"other {healthy} hosts were paired")


def rows_source(ranks: Sequence[RankRecord]) -> tuple[dict[str, Any], ...]:
    """Every rank reports the same rows (slowest time, wrong summed): take rank 0's, else the
    rank that got furthest."""
    with_rows = [r for r in ranks if r.collectives]
    if not with_rows:
        return ()
    chosen = min(with_rows, key=lambda r: (r.rank != 0, -len(r.collectives)))
    return tuple(dict(c) for c in chosen.collectives)


def pair_result(hosts: tuple[str, str], number: int,
                results: Sequence[tuple[str, Optional[CommandResult],
                                        Union[str, BaseException, None]]],
                duration_s: float, op: Collective) -> PairResult:
    """One pair's outcome from the output of its two hosts."""
    ranks: list[RankRecord] = []
    problems: list[str] = []
    check = Check.RENDEZVOUS
    for host, result, error in results:
        if error is not None or result is None:  # a job that raised: nothing to read
            problems.append(f"{host}: {error if isinstance(error, str) else 'no result'}")
            continue
        parsed = parse_output(result.output)
        own = [rank_record(raw, host) for raw in parsed.ranks]
        ranks += own
        if not own:
            agent = parsed.agent or {}
            if result.timed_out or agent.get("stopped"):
                check = Check.TIMEOUT
            problems.append(f"{host}: no rank reported back ({no_rank_reason(result, agent)}): "
                            f"{summary_of(parsed.stray)}")
    rows = [r for r in rows_of(rows_source(ranks)) if r.op is op]
    row = max(rows, key=lambda r: r.nbytes) if rows else None
    failures = failure_findings(ranks)
    error = None
    if failures:
        first = failures[0]
        error, check = first.message, first.check
    elif problems:
        error = "; ".join(problems)
    elif row is None:
        error = "no bandwidth row came back"
        check = Check.BANDWIDTH
    return PairResult(hosts, number, row=row, error=error, check=check, duration_s=duration_s)
