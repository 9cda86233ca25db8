"""Ctrl-C and long stages as a user meets them, on real ``ddpcheck preflight`` processes: the
interruption is the root cause (SIGINT or SIGTERM, at the stage it hit), and a long stage shows
progress: a live line on a terminal (a real pty), plain lines in a log, nothing with -q."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time

import pytest

from hostsfile import cluster_hosts_yaml

# a set-up that takes its time (and seeds every rank alike, so the checks after it pass)
SLEEPY_SETUP = """\
import random, time
import numpy, torch

def setup():
    time.sleep({seconds})
    random.seed(0)
    numpy.random.seed(0)
    torch.manual_seed(0)
"""


def start(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ddpcheck", *args], text=True, **kwargs)


def interrupt_when(proc: subprocess.Popen, marker: str, times: int, signum: int):
    seen = []
    assert proc.stderr is not None
    for line in proc.stderr:
        seen.append(line)
        if sum(marker in s for s in seen) == times:
            break
    time.sleep(1.0)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=60)
    return out, "".join(seen) + err


def assert_interruption_is_the_root_cause(report: dict, signal_text: str, stage: str) -> None:
    assert report["verdict"] == "interrupted" and report["exit_code"] == 130
    first, *rest = report["findings"]
    assert first["root_cause"] and first["check"] == "interrupted", report["findings"]
    assert signal_text in first["message"] and f"at stage {stage}" in first["message"]
    assert not any(f["root_cause"] for f in rest), rest
    unfinished = [f for f in rest if f["check"] == "world_size"]
    assert unfinished and all(f["message"].endswith("(a consequence of the interruption)")
                              for f in unfinished)


def test_sigterm_during_a_local_launch_is_named_as_the_root_cause(tmp_path):
    setup = tmp_path / "sleepy.py"
    setup.write_text(SLEEPY_SETUP.format(seconds=60))
    report_path = tmp_path / "r.json"
    proc = start("preflight", "--json", str(report_path), "--setup", f"{setup}:setup",
                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = interrupt_when(proc, "launched torchrun", 1, signal.SIGTERM)
    assert proc.returncode == 130, err + out
    assert_interruption_is_the_root_cause(json.loads(report_path.read_text()), "SIGTERM",
                                          "launch")
    assert "ROOT CAUSE [error] interrupted: stopped by SIGTERM" in out
    assert "interrupted (SIGTERM) at stage launch" in err


@pytest.mark.cluster
def test_ctrl_c_on_three_hosts_blames_the_user_not_the_ranks(ns_cluster, tmp_path):
    setup = tmp_path / "sleepy.py"  # tmp_path is shared with the namespace hosts
    setup.write_text(SLEEPY_SETUP.format(seconds=60))
    hosts_yaml = cluster_hosts_yaml(ns_cluster, tmp_path / "hosts.yaml", ns_cluster.hosts[:3],
                                    port=29641)
    report_path = tmp_path / "report.json"
    proc = start("preflight", str(hosts_yaml), "--json", str(report_path), "--setup",
                 f"{setup}:setup", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = interrupt_when(proc, "launched torchrun", 3, signal.SIGINT)
    assert proc.returncode == 130, err + out
    report = json.loads(report_path.read_text())
    assert_interruption_is_the_root_cause(report, "interrupted by the user (SIGINT)", "launch")
    lines = [line for line in out.splitlines() if line.startswith("#  ")]
    assert lines[0].startswith("#  ROOT CAUSE [error] interrupted: interrupted by the user "
                               "(SIGINT) at stage launch"), out
    # the ranks that never reported: one line, the interruption's consequence
    assert lines[1:] == ["#  [error] world_size: h[1-3]: 0 of 2 planned rank(s) reported back; "
                         "nothing came from rank(s) 0-5 (a consequence of the interruption) "
                         "[6 ranks on 3 hosts]"], out


def read_pty(fd: int, proc: subprocess.Popen) -> bytes:
    got = b""
    while True:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # the child closed its end
                break
            if not chunk:
                break
            got += chunk
        elif proc.poll() is not None:
            break
    return got


def test_a_terminal_gets_a_live_line_with_stage_hosts_and_elapsed(tmp_path):
    setup = tmp_path / "sleepy.py"
    setup.write_text(SLEEPY_SETUP.format(seconds=4))
    parent, child = pty.openpty()
    proc = start("preflight", "--setup", f"{setup}:setup", stdout=subprocess.PIPE,
                 stderr=child)
    os.close(child)
    try:
        seen = read_pty(parent, proc).decode()
    finally:
        os.close(parent)
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, seen + out
    live = re.findall(r"\r\x1b\[Kddpcheck launch: (\d) of 1 host done, ([0-9.]+)s", seen)
    assert len(live) >= 4, seen  # redrawn while the ranks sleep in the set-up
    elapsed = [float(seconds) for _, seconds in live]
    assert elapsed == sorted(elapsed) and elapsed[-1] - elapsed[0] >= 2.0
    assert "localhost: done: 2 rank(s) ok" in seen
    assert seen.endswith("\r\x1b[K")  # the live line is gone when the run ends


def test_a_log_gets_plain_lines_during_a_long_stage_and_q_gets_nothing(tmp_path):
    setup = tmp_path / "sleepy.py"
    setup.write_text(SLEEPY_SETUP.format(seconds=13))
    log = start("preflight", "--setup", f"{setup}:setup", stdout=subprocess.PIPE,
                stderr=subprocess.PIPE)
    quiet = start("preflight", "-q", "--setup", f"{setup}:setup", stdout=subprocess.PIPE,
                  stderr=subprocess.PIPE)
    out, err = log.communicate(timeout=120)
    quiet_out, quiet_err = quiet.communicate(timeout=120)
    assert log.returncode == 0 and quiet.returncode == 0, err + quiet_err
    assert "\x1b" not in err and "\r" not in err
    assert re.search(r"^ddpcheck \[ *1\d\.\ds\] launch: 0 of 1 host done, 1\d\.\ds$", err,
                     re.MULTILINE), err
    assert quiet_err == "" and quiet_out.startswith("# Verdict: OK")


def interrupt_after_rows(proc: subprocess.Popen, rows: int) -> tuple[list[int], str, str]:
    """Read a running sweep's stderr until ``rows`` rows streamed, then Ctrl-C it: the sizes
    streamed, and the rest of its stdout and stderr."""
    assert proc.stderr is not None
    streamed: list[int] = []
    for line in proc.stderr:
        if re.search(r"\] all_reduce +\d+ +\d+ float", line):
            streamed.append(int(line.split()[4]))
            if len(streamed) == rows:
                break
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    return streamed, out, err


def test_bandwidth_rows_stream_as_measured_and_an_interrupted_sweep_keeps_them(tmp_path):
    """Sizes up to 512 MB on gloo take minutes: Ctrl-C once three rows came. They came on
    stderr while the sweep ran, and the report (table and JSON) has every row shown."""
    report_path = tmp_path / "bw.json"
    proc = start("bandwidth", "--ops", "all_reduce", "-b", "1K", "-e", "512M", "-n", "3",
                 "-w", "1", "--json", str(report_path), stdout=subprocess.PIPE,
                 stderr=subprocess.PIPE)
    streamed, out, err = interrupt_after_rows(proc, 3)
    assert proc.returncode == 130, err + out
    assert streamed[:3] == [1024, 2048, 4096]
    report = json.loads(report_path.read_text())
    sizes = [row["bytes"] for row in report["collectives"]]
    assert sizes[:3] == [1024, 2048, 4096] and len(sizes) < 20, sizes
    table = [int(line.split()[0]) for line in out.splitlines()
             if re.match(r" +\d+ +\d+ float", line)]
    assert table == sizes
    assert report["findings"][0]["check"] == "interrupted"


@pytest.mark.cluster
def test_rows_stream_over_ssh_and_ctrl_c_keeps_them(ns_cluster, tmp_path):
    """The same over sshd on two namespace hosts: each row reaches the launcher through the
    host's agent and its SSH channel as it is measured."""
    hosts_yaml = cluster_hosts_yaml(ns_cluster, tmp_path / "hosts.yaml", ns_cluster.hosts[:2],
                                    slots=1, port=29642)
    report_path = tmp_path / "bw.json"
    proc = start("bandwidth", str(hosts_yaml), "--ops", "all_reduce", "-b", "1K", "-e", "512M",
                 "-n", "3", "-w", "1", "--json", str(report_path), stdout=subprocess.PIPE,
                 stderr=subprocess.PIPE)
    streamed, out, err = interrupt_after_rows(proc, 2)
    assert proc.returncode == 130, err + out
    report = json.loads(report_path.read_text())
    sizes = [row["bytes"] for row in report["collectives"]]
    assert streamed == [1024, 2048] and sizes[:2] == streamed and len(sizes) < 20, sizes
    assert report["findings"][0]["check"] == "interrupted"


# -- the pure parts -----------------------------------------------------------------------------

def test_with_interruption_puts_it_first_and_marks_what_did_not_finish():
    from ddpcheck.analyze.outcomes import CONSEQUENCE_NOTE, with_interruption
    from ddpcheck.model.records import Finding, Severity

    missing = Finding(Severity.ERROR, "world_size", "h1: 0 of 2 planned rank(s) reported back",
                      host="h1", root_cause=True)
    versions = Finding(Severity.WARNING, "versions", "h2: torch 2.1 differs", host="h2")
    first, *rest = with_interruption([missing, versions], "SIGINT", "launch")
    assert first.root_cause and first.check == "interrupted"
    assert first.message.startswith("interrupted by the user (SIGINT) at stage launch")
    assert [f.root_cause for f in rest] == [False, False]
    assert rest[0].message.endswith(CONSEQUENCE_NOTE) and rest[1].message == versions.message


def test_a_streamed_row_line_reads_back_and_other_lines_do_not():
    from ddpcheck.analyze.bandwidth import streamed_row
    from ddpcheck.core.busbw import Collective, CollectiveRow
    from ddpcheck.wire import encode

    row = CollectiveRow(Collective.ALL_REDUCE, 256, 2, 0.001, 0)
    assert streamed_row("[default0]:" + encode("row", row.to_dict())) == row
    assert streamed_row(encode("rank", {"rank": 0})) is None
    assert streamed_row("@@DDPCHECK row {not json") is None
    assert streamed_row("plain output") is None
