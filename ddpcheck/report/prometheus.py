"""A report in Prometheus' text exposition format, for node_exporter's textfile collector
(``--prom FILE``; runs where ddpcheck runs, pure: the caller writes the file atomically).

Every sample carries ``command`` (preflight, node, bandwidth), so the files of several
commands in one textfile directory never collide:

* ``ddpcheck_check_ok{command,check,host}`` 1 when the check passed on the host (``host`` is
  ``cluster`` for findings about no host in particular), 0 when it failed or the host could
  not be reached; checks that could not run on an unreachable host have no sample;
* ``ddpcheck_finding_info{command,check,host,rank,message}`` 1 for every error finding: what
  went wrong and what to do, word for word as in the report (``rank`` empty when it names
  none), so an alert can say it;
* ``ddpcheck_run_ok{command}``, ``ddpcheck_run_exit_code{command}``,
  ``ddpcheck_run_duration_seconds{command}``, ``ddpcheck_run_timestamp_seconds{command}``
  (Unix time the report was written: alert on staleness with ``time() - ...``);
* ``ddpcheck_busbw_gbytes_per_second{command,op,bytes}`` per sweep row,
  ``ddpcheck_busbw_avg_gbytes_per_second{command}``, and for ``--pairwise``
  ``ddpcheck_pair_busbw_gbytes_per_second{command,host_a,host_b}``.

Label values are ``label_value`` (``machine.carryable``: valid UTF-8, no control characters,
cut when very long), then escaped as the format requires; two values that come out alike are one series
(for ``check_ok`` the failed one), as a scraper refuses a series twice.
"""

from __future__ import annotations

import math
from typing import Iterable, Optional

from ..model.records import Severity, Verdict
from .machine import CLUSTER_CASE, _checks, carryable
from ..model.report import Report

PREFIX = "ddpcheck"


def label_value(text: str) -> str:
    """What a label can hold of ``text``: ``carryable``, and line ends as "\\n": the format
    has no escape for a carriage return, and a reader that opens the file with universal
    newlines (Python's default) would end the line there."""
    return carryable(text).replace("\r\n", "\n").replace("\r", "\n")


def escape_label(value: str) -> str:
    r"""A label value as the text format writes it: ``label_value``, then ``\``, ``\n`` and
    ``"`` escaped (the only escapes the format has)."""
    return label_value(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _sample(name: str, labels: dict[str, str], value: float) -> str:
    inside = ",".join(f'{key}="{escape_label(str(text))}"' for key, text in labels.items())
    if math.isnan(value):
        number = "NaN"
    elif float(value).is_integer():
        number = str(int(value))
    else:
        number = repr(float(value))
    return f"{name}{{{inside}}} {number}"


def _family(name: str, help_text: str, samples: Iterable[str]) -> list[str]:
    """The family's lines; a series that comes twice (labels alike as label values) is
    written once, the first time."""
    series: dict[str, str] = {}
    for sample in samples:
        series.setdefault(sample.rsplit(" ", 1)[0], sample)
    samples = list(series.values())
    if not samples:
        return []
    return [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", *samples]


def check_states(report: Report) -> list[tuple[str, str, int]]:
    """(check, host, 1 ok / 0 failed) for every check with a result on a host; names that
    are alike as label values are one entry, failed when any of them failed."""
    states: dict[tuple[str, str], int] = {}
    hosts = {h.name: h for h in report.hosts}

    def record(check: str, host: str, ok: int) -> None:
        key = (label_value(check), label_value(host))
        states[key] = min(ok, states.get(key, ok))

    for check in _checks(report):
        for host in report.hosts:
            if not host.reachable:
                if check == host.trouble_check:
                    record(check, host.name, 0)
                continue
            record(check, host.name, 1)
    for finding in report.findings:
        if finding.severity is not Severity.ERROR:
            continue
        record(finding.check, finding.host if finding.host in hosts else CLUSTER_CASE, 0)
    return [(check, host, ok) for (check, host), ok in states.items()]


def render_prom(report: Report, now: Optional[float] = None) -> str:
    """The textfile (ends in a newline, as the format requires)."""
    import time

    command = {"command": report.command}
    lines: list[str] = []
    lines += _family(f"{PREFIX}_check_ok", "1 when the check passed on the host, 0 when it "
                     "failed (ddpcheck)",
                     (_sample(f"{PREFIX}_check_ok", {**command, "check": check, "host": host},
                              ok) for check, host, ok in check_states(report)))
    lines += _family(f"{PREFIX}_finding_info", "1 for every error finding: what went wrong "
                     "and what to do (ddpcheck)", _finding_samples(report, command))
    lines += _family(f"{PREFIX}_run_ok", "1 when the whole run passed (verdict ok)",
                     [_sample(f"{PREFIX}_run_ok", command,
                              1 if report.verdict is Verdict.OK else 0)])
    lines += _family(f"{PREFIX}_run_exit_code", "the exit code of the run",
                     [_sample(f"{PREFIX}_run_exit_code", command, report.exit_code)])
    lines += _family(f"{PREFIX}_run_duration_seconds", "how long the run took",
                     [_sample(f"{PREFIX}_run_duration_seconds", command,
                              round(report.duration_s, 3))])
    lines += _family(f"{PREFIX}_run_timestamp_seconds", "Unix time the run's report was written",
                     [_sample(f"{PREFIX}_run_timestamp_seconds", command,
                              round(time.time() if now is None else now, 3))])
    lines += _busbw(report, command)
    return "\n".join(lines) + "\n"


def _finding_samples(report: Report, command: dict[str, str]) -> list[str]:
    hosts = {h.name for h in report.hosts}
    return [_sample(f"{PREFIX}_finding_info", {
        **command, "check": f.check, "host": f.host if f.host in hosts else CLUSTER_CASE,
        "rank": "" if f.rank is None else str(f.rank), "message": f.message}, 1)
        for f in report.findings if f.severity is Severity.ERROR]


def _busbw(report: Report, command: dict[str, str]) -> list[str]:
    rows = list({(str(row["op"]), str(row["bytes"])): row for row in report.collectives
                 if isinstance(row, dict) and isinstance(row.get("busbw_gbs"), (int, float))
                 and "op" in row and "bytes" in row}.values())  # one sample per op and size
    name = f"{PREFIX}_busbw_gbytes_per_second"
    lines = _family(name, "bus bandwidth of a measured collective (nccl-tests busbw, GB/s)",
                    (_sample(name, {**command, "op": str(row["op"]), "bytes": str(row["bytes"])},
                             row["busbw_gbs"]) for row in rows))
    average = report.extra.get("bandwidth", {}).get("avg_busbw_gbs") \
        if isinstance(report.extra.get("bandwidth"), dict) else None
    if isinstance(average, (int, float)):
        name = f"{PREFIX}_busbw_avg_gbytes_per_second"
        lines += _family(name, "mean busbw over every row (nccl-tests' Avg bus bandwidth)",
                         [_sample(name, command, average)])
    name = f"{PREFIX}_pair_busbw_gbytes_per_second"
    pairs = [p for p in report.pairs if isinstance(p, dict)
             and isinstance(p.get("busbw_gbs"), (int, float)) and len(p.get("hosts", ())) == 2]
    lines += _family(name, "busbw of a host pair's 2-rank job (bandwidth --pairwise)",
                     (_sample(name, {**command, "host_a": p["hosts"][0], "host_b": p["hosts"][1]},
                              p["busbw_gbs"]) for p in pairs))
    return lines
