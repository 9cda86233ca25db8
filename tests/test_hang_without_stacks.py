"""``ddpcheck hang`` when it cannot read the ranks' stacks: the verdict is "cannot tell" (exit 3)
with the reason, never "no sign of a hang", unless heartbeats or Flight Recorder dumps decided.

The end-to-end test runs a real 2-rank torchrun job on gloo on this machine, rank 1 asleep in an
ordinary function outside any collective, and scans it from a Python environment that has
ddpcheck and torch but no py-spy (neither on PATH nor beside the interpreter), as after an
install that left py-spy out.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

from ddpcheck.analyze.hang import analyze_scans
from ddpcheck.analyze.verdict import verdict
from ddpcheck.model.checks import Check
from ddpcheck.model.records import EXIT_CODES
from ddpcheck.model.records import HostRecord, Severity, Verdict
from test_hanganalysis import IN_ALL_REDUCE, IN_LOAD_BATCH, beat, scan, worker
from torchrunjob import ThisMachine, start_job

HOSTS = [HostRecord("h1", "10.0.0.1", reachable=True), HostRecord("h2", "10.0.0.2",
                                                                   reachable=True)]


def exit_code(analysis) -> int:
    return EXIT_CODES[verdict(list(analysis.findings), HOSTS)]


def test_no_py_spy_and_nothing_else_is_cannot_tell_with_exit_3():
    scans = [scan("h1", [worker(0, world=2, stack=None)], py_spy=None),
             scan("h2", [worker(1, world=2, stack=None)], py_spy=None)]
    analysis = analyze_scans(scans)
    root = analysis.findings[0]
    assert (root.check, root.severity, root.root_cause) == (Check.STACKS, Severity.ERROR, True)
    assert "cannot tell whether it is hung" in root.message
    assert "rank 0 on h1: py-spy is not installed; rank 1 on h2: py-spy is not installed" \
        in root.message
    assert not any("no sign of a hang" in f.message for f in analysis.findings)
    assert not analysis.jobs[0].hung
    assert exit_code(analysis) == 3


def test_stacks_py_spy_could_not_read_are_cannot_tell_with_its_error():
    denied = "Permission denied (os error 13) (py-spy needs root, ...)"
    refused = worker(1, world=2, stack=None)
    for sample in refused["samples"]:
        sample["stack"] = {"error": denied}
    analysis = analyze_scans([scan("h1", [worker(0, world=2), refused])])
    root = analysis.findings[0]
    assert root.check == Check.STACKS and (root.host, root.rank) == ("h1", 1)
    assert f"rank 1 on h1: {denied}" in root.message
    assert exit_code(analysis) == 3


def test_heartbeats_decide_without_stacks():
    behind = [scan("h1", [worker(0, world=2, stack=None, beats=(beat(7, 15), beat(7, 15))),
                          worker(1, world=2, stack=None, beats=(beat(7, 14), beat(7, 14)))],
                   py_spy=None)]
    analysis = analyze_scans(behind)
    assert analysis.findings[0].check == Check.HANG and exit_code(analysis) == 1
    moving = {"beats": (beat(5, 10), beat(9, 18)), "stack": None}
    analysis = analyze_scans([scan("h1", [worker(0, world=2, **moving),
                                          worker(1, world=2, **moving)], py_spy=None)])
    assert "progressed during the window" in analysis.findings[0].message
    assert not [f for f in analysis.findings if f.severity is Severity.ERROR]
    assert exit_code(analysis) == 0


def test_a_flight_recorder_dump_decides_without_stacks():
    pending = {"last_op": "all_reduce", "last_op_pending": True, "last_enqueued": 41}
    done = {"last_op": "all_reduce", "last_op_pending": False, "last_enqueued": 40}
    analysis = analyze_scans([scan("h1", [worker(0, world=2, stack=None, flight_record=pending),
                                          worker(1, world=2, stack=None, flight_record=done)],
                                   py_spy=None)])
    assert not [f for f in analysis.findings if f.check == Check.STACKS
                and f.severity is Severity.ERROR]


def test_stacks_seen_keep_no_sign_of_a_hang():
    """Ranks whose stacks were read and show nothing wrong are still "no sign of a hang"."""
    analysis = analyze_scans([scan("h1", [worker(0, world=2, stack=IN_ALL_REDUCE),
                                          worker(1, world=2, stack=IN_LOAD_BATCH,
                                                 first_stack=IN_ALL_REDUCE)])])
    assert "no sign of a hang" in analysis.findings[-1].message
    assert exit_code(analysis) == 0


@pytest.fixture(scope="module")
def python_without_py_spy(tmp_path_factory) -> Path:
    """A virtualenv whose site-packages are this one's (torch, ddpcheck) but whose bin/ holds no
    py-spy."""
    where = tmp_path_factory.mktemp("no-py-spy") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True)
    python = where / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()"
                           "['purelib'])"], capture_output=True, text=True, check=True)
    ours = sysconfig.get_paths()["purelib"]
    Path(site.stdout.strip(), "ours.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
    assert not (where / "bin" / "py-spy").exists()
    return python


def test_a_blocked_rank_scanned_without_py_spy_is_cannot_tell(tmp_path, python_without_py_spy):
    port = 29500 + os.getpid() % 200
    job = start_job(None, [ThisMachine()], 2, port, tmp_path,
                    ["--block-rank", "1", "--block-step", "5"])
    try:
        job.wait_ready()
        time.sleep(1.0)  # step 4, then rank 1 sleeps in load_batch and rank 0 waits
        report_path = tmp_path / "hang.json"
        env = {k: v for k, v in os.environ.items() if k != "DDPCHECK_PY_SPY"}
        env["PATH"] = os.pathsep.join([str(python_without_py_spy.parent), "/usr/sbin",
                                       "/usr/bin", "/sbin", "/bin"])
        done = subprocess.run([str(python_without_py_spy), "-m", "ddpcheck", "hang", "--job",
                               f"127.0.0.1:{port}", "--window", "1.5", "--json",
                               str(report_path)], capture_output=True, text=True, env=env,
                              timeout=120)
    finally:
        job.stop()
    assert done.returncode == 3, done.stdout + done.stderr
    report = json.loads(report_path.read_text())
    assert report["exit_code"] == 3 and report["verdict"] == Verdict.UNREACHABLE.value
    root = report["findings"][0]
    assert root["root_cause"] and root["check"] == "stacks" and root["severity"] == "error"
    assert "cannot tell whether it is hung" in root["message"]
    assert "ranks 0-1 on localhost: py-spy is not installed" in root["message"]
    assert not any("no sign of a hang" in f["message"] for f in report["findings"])
    assert report["tools"]["localhost"]["py_spy"] is None
    assert "cannot tell" in done.stdout and "(exit 3)" in done.stdout
