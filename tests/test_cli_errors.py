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
    plot = str(tmp_path / "x" / "p.png")
    for command in (["hang"], ["bandwidth"], ["bandwidth", "--plot", plot]):
        target = "--plot" if "--plot" in command else "--json"
        args = command if target == "--plot" else command + ["--json", "/nonexistent/r.json"]
        done = ddpcheck(*args)
        assert done.returncode == 2, (command, done.stderr)
        assert done.stderr.startswith(f"ddpcheck: {target} "), done.stderr


BAD_HOSTS = """\
defaults:
  slots: 0
  colour: blue
ssh:
  fanout: many
rendezvous: {port: 70000}
backend: mpi
hosts:
  - name: a
    port: -1
  - name: b
    python: ""
  - 42
  - name: a
  - name: c
    usr: bob
"""


def test_every_error_in_hosts_yaml_is_named_at_once(tmp_path):
    hosts = tmp_path / "hosts.yaml"
    hosts.write_text(BAD_HOSTS)
    done = ddpcheck("preflight", str(hosts), "--json", str(tmp_path / "r.json"))
    assert done.returncode == 2, done.stderr
    assert done.stdout == "" and not (tmp_path / "r.json").exists()
    lines = done.stderr.splitlines()
    where = [line.split(": ")[1] for line in lines]  # ddpcheck: FILE:LINE: KEY: problem
    assert where == [f"{hosts}:{n}" for n in (2, 3, 5, 6, 7, 10, 12, 13, 14, 16)], lines
    keys = [line.split(": ")[2] for line in lines]
    assert keys == ["defaults.slots", "defaults.colour", "ssh.fanout", "rendezvous.port",
                    "backend", "hosts[0].port", "hosts[1].python", "hosts[2]", "hosts[3]",
                    "hosts[4].usr"]
    assert "duplicate host 'a' (first at line 9)" in lines[8]
    assert "did you mean 'user'?" in lines[9]


def test_a_single_error_reads_as_before(tmp_path):
    hosts = tmp_path / "hosts.yaml"
    hosts.write_text("hosts:\n  - name: a\n    slots: 0\n")
    done = ddpcheck("preflight", str(hosts))
    assert done.returncode == 2
    assert done.stderr == (f"ddpcheck: {hosts}:3: hosts[0].slots: must be an integer >= 1, "
                           f"got 0\n")


def test_every_error_in_a_config_file_is_named_at_once(tmp_path):
    config = tmp_path / "defaults.yaml"
    config.write_text("defaults:\n  port: x\nssh:\n  connect_timeout: 0\nhosts: [a]\n")
    done = ddpcheck("preflight", "-w", "a,b", "--config", str(config))
    assert done.returncode == 2
    assert [line.split(": ")[1:3] for line in done.stderr.splitlines()] == [
        [f"{config}:2", "defaults.port"], [f"{config}:4", "ssh.connect_timeout"],
        [f"{config}:5", "hosts"]]


@pytest.mark.parametrize("flags, named", [
    (["--nnodes", "2"], "--nnodes"),
    (["--node-rank", "1", "--master-addr", "10.0.0.1"], "--node-rank, --master-addr"),
    (["--join-timeout", "5"], "--join-timeout"),
    (["--bandwidth"], "--bandwidth is for --in-job"),
])
def test_the_in_job_flags_without_in_job_are_a_usage_error(flags, named):
    """They describe a gang that only --in-job reads: ignored, they would check this machine
    and exit 0 as if the gang had been checked."""
    done = ddpcheck("preflight", *flags)
    assert done.returncode == 2, done.stdout + done.stderr
    assert named in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("timeout, connect_timeout, check, words", [
    ("3", 30, "timeout", "h2: connect: not reached in time: its ssh connect was still waiting"),
    ("60", 2, "ssh", "h2: connect: no SSH banner from"),
])
def test_a_connect_the_timeout_cut_short_is_not_reached_and_the_hosts_own_is_its_failure(
        tmp_path, timeout, connect_timeout, check, words):
    """A port that accepts and never speaks SSH: when --timeout ends the wait before the
    host's own ssh.connect_timeout, the host was not reached in time (never the root cause);
    when its own timeout ends it, that is its failure. Exit 3 either way."""
    import json
    import socket

    silent = socket.create_server(("127.0.0.1", 0))
    hosts = tmp_path / "hosts.yaml"
    hosts.write_text(f"hosts:\n  - name: h2\n    address: 127.0.0.1\n"
                     f"    port: {silent.getsockname()[1]}\n"
                     f"ssh:\n  connect_timeout: {connect_timeout}\n")
    try:
        done = ddpcheck("preflight", str(hosts), "--ssh-config", "none", "--timeout", timeout,
                        "--json", str(tmp_path / "r.json"))
    finally:
        silent.close()
    report = json.loads((tmp_path / "r.json").read_text())
    assert done.returncode == 3, done.stdout + done.stderr
    (found,) = [f for f in report["findings"] if f["severity"] == "error"]
    assert found["check"] == check and found["message"].startswith(words), found
    assert ("ROOT CAUSE" in done.stdout) == (check == "ssh"), done.stdout


def test_an_in_job_node_0_whose_other_node_never_joined_reports_its_whole_wait(tmp_path):
    """Node 0 waits --join-timeout for node 1, which never comes: the report's duration counts
    that wait (it said 0.0 s), and node 0 does not then wait for node 1 to read the verdict
    (it waited 15 s more, silent, for a node that never joined)."""
    import json
    import socket

    with socket.socket() as probe:  # a free port for the store, and the next for torchrun
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    began = time.monotonic()
    done = ddpcheck("preflight", "--in-job", "--nnodes", "2", "--node-rank", "0",
                    "--master-addr", "127.0.0.1", "--master-port", str(port),
                    "--join-timeout", "3", "--timeout", "60", "--json", str(tmp_path / "r.json"))
    took = time.monotonic() - began
    report = json.loads((tmp_path / "r.json").read_text())
    assert done.returncode == 3, done.stdout + done.stderr
    assert "node rank 1 never joined within 3s" in done.stdout
    assert report["duration_s"] >= 3.0 and "(exit 3) in 0." not in done.stdout
    assert took < 3.0 + 12.0, done.stderr  # no 15 s wait for a reader that never came


def test_a_hosts_summary_line_leaves_out_pythons_warnings(tmp_path):
    """A real warning as Python prints it (its line, then the source line) after the line that
    says what happened: the summary is that line, not the warning's source line."""
    from ddpcheck.analyze.outcomes import summary_of

    script = tmp_path / "warns.py"
    script.write_text("import sys, warnings\n"
                      "print('the agent stopped torchrun: deadline of 1s', file=sys.stderr)\n"
                      "cpu = warnings.warn('Failed to initialize NumPy', UserWarning)\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
    lines = done.stderr.splitlines()
    assert len(lines) == 3 and "UserWarning: Failed to initialize NumPy" in lines[1], lines
    assert lines[2].startswith("  cpu = warnings.warn"), lines
    assert summary_of(lines) == "the agent stopped torchrun: deadline of 1s"
    assert summary_of(lines[1:]) == lines[-1].strip()  # only a warning: still says something
    assert summary_of([]) == "no output"
