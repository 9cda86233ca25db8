"""DCGM diagnostics on this host: ``dcgmi diag -r LEVEL -j`` with a deadline, as plain data.

Runs inside the agent (``preflight --dcgm N``) and in ``ddpcheck node --dcgm N``; ``analyze.dcgm``
folds each failed test into a ``gpu_health`` finding. No ``dcgmi`` on PATH is plain data, said
once. The JSON formats read (``parse_diag``):

* DCGM 4.x (the DCGM repository's testing/python3/dcgm_diag_schema.json): ``{"DCGM Diagnostic":
  {"test_categories": [{"category", "tests": [{"name", "results": [{"entity_group",
  "entity_id", "status", "warnings": [{"warning", "error_id", ...}], "info"}],
  "test_summary": {"status"}}]}], "runtime_error"?}, "metadata": {"version"}}``
* DCGM 3.x: ``{"DCGM GPU Diagnostic": {"test_categories": [{"category", "tests": [{"name",
  "results": [{"gpu_ids" | "gpu_id", "status", "warnings": [...]}]}]}]}}``

A test's status is Pass, Fail, Warn, Skip or Not Run. Imports only the standard library.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from typing import Any, Optional

from ..core.agentargs import DCGM_DEADLINE_S

MAX_MESSAGE = 400


def start(level: int) -> Any:
    """Starts ``dcgmi diag -r LEVEL -j`` (so it runs while the other facts are read):
    the Popen, or a facts dict saying why not."""
    dcgmi = shutil.which("dcgmi")
    if dcgmi is None:
        return {"level": level, "available": False, "reason": "dcgmi not found on PATH"}
    try:
        return subprocess.Popen([dcgmi, "diag", "-r", str(level), "-j"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                                start_new_session=True)
    except OSError as exc:
        return {"level": level, "available": False, "reason": f"dcgmi: {exc}"}


def finish(child: Any, level: int, deadline_s: float) -> dict[str, Any]:
    if isinstance(child, dict):
        return child
    try:
        stdout, stderr = child.communicate(timeout=max(deadline_s, 1.0))
    except subprocess.TimeoutExpired:
        try:
            os.killpg(child.pid, signal.SIGKILL)
        except OSError:
            pass
        child.communicate()
        return {"level": level, "available": True,
                "error": f"dcgmi diag -r {level} did not finish within {deadline_s:.0f}s"}
    facts: dict[str, Any] = {"level": level, "available": True, "exit": child.returncode}
    parsed = parse_diag(stdout)
    if parsed is None:
        text = (stderr.strip() or stdout.strip() or f"exit {child.returncode}").splitlines()
        facts["error"] = f"dcgmi diag -r {level}: {text[-1][:MAX_MESSAGE] if text else '?'}"
        return facts
    facts.update(parsed)
    return facts


def run(level: int, deadline_s: Optional[float] = None) -> dict[str, Any]:
    return finish(start(level), level, deadline_s or DCGM_DEADLINE_S.get(level, 600.0))


def parse_diag(text: str) -> Optional[dict[str, Any]]:
    """dcgmi's JSON -> {"version", "tests": [{"category", "name", "gpu", "status",
    "messages"}], "runtime_error"?}; None when it is not dcgmi diag JSON."""
    start_at = text.find("{")
    if start_at < 0:
        return None
    try:
        document = json.loads(text[start_at:text.rfind("}") + 1])
    except ValueError:
        return None
    if not isinstance(document, dict):
        return None
    body = document.get("DCGM Diagnostic", document.get("DCGM GPU Diagnostic"))
    if not isinstance(body, dict):
        return None
    metadata = document.get("metadata") if isinstance(document.get("metadata"), dict) else {}
    parsed: dict[str, Any] = {"version": metadata.get("version") or document.get("version"),
                              "tests": []}
    if body.get("runtime_error"):
        parsed["runtime_error"] = str(body["runtime_error"])[:MAX_MESSAGE]
    for category in body.get("test_categories") or []:
        if not isinstance(category, dict):
            continue
        for test in category.get("tests") or []:
            if not isinstance(test, dict):
                continue
            for result in test.get("results") or []:
                if isinstance(result, dict):
                    parsed["tests"].append(_result(category, test, result))
    return parsed


def _result(category: dict[str, Any], test: dict[str, Any],
            result: dict[str, Any]) -> dict[str, Any]:
    gpu: Any = None
    if result.get("entity_group", "GPU") == "GPU" and "entity_id" in result:
        gpu = result["entity_id"]
    for key in ("gpu_id", "gpu_ids"):
        if key in result:
            gpu = result[key]
    if isinstance(gpu, str) and gpu.strip().isdigit():
        gpu = int(gpu)
    messages = []
    for warning in result.get("warnings") or []:
        if isinstance(warning, dict):
            text = str(warning.get("warning", "")).strip()
            if warning.get("error_id") is not None:
                text += f" (DCGM error {warning['error_id']})"
        else:
            text = str(warning).strip()
        if text:
            messages.append(text[:MAX_MESSAGE])
    return {"category": category.get("category"), "name": test.get("name"), "gpu": gpu,
            "entity_group": result.get("entity_group"),
            "status": str(result.get("status", "")).strip(), "messages": messages}
