"""DCGM diagnostics: ``dcgmi diag -r N -j`` output in DCGM 4.x's format (the DCGM repository's
testing/python3/dcgm_diag_schema.json; fixtures say 4.2.3) and DCGM 3.x's ("DCGM GPU
Diagnostic", gpu_ids; 3.3.9), folded into gpu_health findings. The live run is in the GPU suite
(test_gpu_suite, marked gpu)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ddpcheck.collect.facts import read_facts
from ddpcheck.analyze import dcgm as rules
from ddpcheck.model.records import Severity
from ddpcheck.remote import dcgm

FIXTURES = Path(__file__).parent / "fixtures" / "dcgm"


def findings(facts):
    return rules.dcgm_findings("n1", read_facts({"dcgm": facts}))


def test_dcgm4_failed_and_warned_tests_are_named_per_gpu():
    parsed = dcgm.parse_diag((FIXTURES / "dcgm4_r2_fail.json").read_text())
    assert parsed["version"] == "4.2.3"
    assert len(parsed["tests"]) == 8
    failed = [t for t in parsed["tests"] if t["status"] == "Fail"]
    assert failed == [{"category": "Hardware", "name": "memory", "gpu": 1, "entity_group": "GPU",
                       "status": "Fail", "messages": [
                           "A DBE occurred on GPU 1 during the memory test. (DCGM error 86)"]}]
    found = findings({"level": 2, "available": True, **parsed})
    assert [(f.severity, f.check) for f in found] == [(Severity.ERROR, "gpu_health"),
                                                      (Severity.WARNING, "gpu_health")]
    assert "DCGM diag -r 2: test 'memory' FAILED on GPU 1: A DBE occurred" in found[0].message
    assert "test 'pcie' warned on GPU 0" in found[1].message


def test_dcgm4_pass_is_silent():
    parsed = dcgm.parse_diag((FIXTURES / "dcgm4_r1_pass.json").read_text())
    assert findings({"level": 1, "available": True, **parsed}) == []


def test_dcgm3_format():
    parsed = dcgm.parse_diag((FIXTURES / "dcgm3_r1_fail.json").read_text())
    assert parsed["version"] == "3.3.9"
    (finding,) = findings({"level": 1, "available": True, **parsed})
    assert "test 'Persistence Mode' FAILED on GPU 0: Persistence mode for GPU 0" in finding.message


def test_not_json_and_absent_dcgmi_are_said_once():
    assert dcgm.parse_diag((FIXTURES / "dcgm_no_hostengine.txt").read_text()) is None
    assert dcgm.parse_diag("{\"something\": 1}") is None
    (absent,) = findings({"level": 1, "available": False, "reason": "dcgmi not found on PATH"})
    assert absent.severity is Severity.WARNING and "not run: dcgmi not found" in absent.message


def fake_dcgmi(folder: Path, body: str) -> None:
    """A dcgmi on PATH for the subprocess edge (deadline, exit codes): a shell script."""
    script = folder / "dcgmi"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(script.stat().st_mode | stat.S_IEXEC)


def test_run_parses_the_output_and_keeps_the_deadline(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    fake_dcgmi(tmp_path, f"cat {FIXTURES / 'dcgm4_r2_fail.json'}; exit 226\n")
    result = dcgm.run(2)
    assert result["exit"] == 226 and result["version"] == "4.2.3"
    fake_dcgmi(tmp_path, f"cat {FIXTURES / 'dcgm_no_hostengine.txt'} >&2; exit 255\n")
    assert "Unable to connect to host engine" in dcgm.run(1)["error"]
    fake_dcgmi(tmp_path, "sleep 30\n")
    slow = dcgm.run(1, deadline_s=1)
    assert "did not finish within 1s" in slow["error"]


def test_no_dcgmi(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert dcgm.run(1) == {"level": 1, "available": False, "reason": "dcgmi not found on PATH"}


def test_node_and_preflight_fold_dcgm_into_gpu_health(tmp_path):
    """``--dcgm`` end to end, with a dcgmi on PATH answering DCGM 4's JSON (a failed memory
    test on GPU 1): ddpcheck node and preflight's stage 0 both name it and fail."""
    import json
    import subprocess
    import sys

    fake_dcgmi(tmp_path, f"cat {FIXTURES / 'dcgm4_r2_fail.json'}; exit 226\n")
    env = {**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"}
    for command in (["node", "--no-torch"], ["preflight", "--skip", "consistency"]):
        report_path = tmp_path / f"{command[0]}.json"
        done = subprocess.run([sys.executable, "-m", "ddpcheck", *command, "--dcgm", "2",
                               "--json", str(report_path)], capture_output=True, text=True,
                              timeout=400, cwd=tmp_path, env=env)
        report = json.loads(report_path.read_text())
        failed = [f for f in report["findings"] if "DCGM diag -r 2" in f["message"]
                  and f["severity"] == "error"]
        assert len(failed) == 1, done.stdout + done.stderr
        assert failed[0]["check"] == "gpu_health"
        assert "test 'memory' FAILED on GPU 1" in failed[0]["message"]
        assert done.returncode == 1
