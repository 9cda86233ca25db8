"""Mistakes a user makes on the command line, found before any work: report paths that
cannot be written, and every error of a hosts.yaml at once. Real ``ddpcheck`` subprocesses."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest


def ddpcheck(*args: str, cwd=None, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ddpcheck", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd)


@pytest.mark.parametrize("option, path, words", [
    ("--json", "/nonexistent/r.json", "directory /nonexistent does not exist"),
    ("--junit", "/proc/x.xml", "cannot write in /proc"),
    ("--csv", "/", "is a directory"),
    ("--prom", "/etc/hostname/m.prom", "/etc/hostname is not a directory"),
])
def test_unwritable_report_path_is_exit_2_before_anything_runs(option, path, words):
    began = time.monotonic()
    done = ddpcheck("preflight", option, path)
    took = time.monotonic() - began
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr == f"ddpcheck: {option} {path}: {done.stderr.split(': ', 2)[2]}"
    assert words in done.stderr and done.stderr.count("\n") == 1
    assert "ddpcheck [" not in done.stderr and done.stdout == ""  # no stage started
    print(f"{option} {path}: exit 2 in {took:.1f}s")


def test_every_unwritable_path_is_named_and_a_writable_one_left_alone(tmp_path):
    good = tmp_path / "r.json"
    done = ddpcheck("preflight", "--json", str(good), "--csv", str(tmp_path),
                    "--junit", str(tmp_path / "no" / "j.xml"))
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert lines == [f"ddpcheck: --csv {tmp_path}: is a directory; give a file name",
                     f"ddpcheck: --junit {tmp_path / 'no' / 'j.xml'}: directory "
                     f"{tmp_path / 'no'} does not exist"]
    assert list(tmp_path.iterdir()) == []  # the probe file is gone, nothing written


def test_hang_and_bandwidth_check_their_paths_too(tmp_path):
    for command in (["hang"], ["bandwidth"], ["bandwidth", "--plot", str(tmp_path / "x" / "p.png")]):
        target = "--plot" if "--plot" in command else "--json"
        args = command if target == "--plot" else command + ["--json", "/nonexistent/r.json"]
        done = ddpcheck(*args)
        assert done.returncode == 2, (command, done.stderr)
        assert done.stderr.startswith(f"ddpcheck: {target} "), done.stderr
