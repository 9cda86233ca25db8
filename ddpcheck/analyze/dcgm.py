"""DCGM diagnostics (``remote.dcgm``) -> ``gpu_health`` findings, one per failed test and GPU.

Pure; used by stage 0 (``preflight --dcgm N``) and ``ddpcheck node --dcgm N``. A test that
failed is an error naming the test, the GPU and DCGM's own words; a warning stays a warning;
passed, skipped and not-run tests say nothing. No dcgmi on the host is said once, as a warning,
since the user asked for the diagnostics.
"""

from __future__ import annotations

from ..model.checks import Check
from ..model.facts import HostFacts
from ..model.records import Finding, Severity


def dcgm_findings(host: str, facts: HostFacts) -> list[Finding]:
    diag = facts.dcgm
    if diag is None:
        return []
    level = diag.level

    def finding(severity: Severity, message: str) -> Finding:
        return Finding(severity, Check.GPU_HEALTH, f"{host}: DCGM diag -r {level}: {message}",
                       host=host)

    if not diag.available:
        return [finding(Severity.WARNING, f"not run: {diag.reason}")]
    if diag.error:
        return [finding(Severity.WARNING, f"no result: {diag.error}")]
    findings = []
    if diag.runtime_error:
        findings.append(finding(Severity.ERROR, f"runtime error: {diag.runtime_error}"))
    for test in diag.tests:
        status = test.status
        if status not in ("fail", "warn"):
            continue
        gpu = test.gpu
        where = f" on GPU {gpu}" if gpu is not None else ""
        words = "; ".join(test.messages) or "no detail given"
        findings.append(finding(Severity.ERROR if status == "fail" else Severity.WARNING,
                                f"test {test.name!r} {'FAILED' if status == 'fail' else 'warned'}"
                                f"{where}: {words}"))
    return findings
