"""``--format`` on every command that prints a table, and a help text for every option.
The jobs are real: torchrun with 2 gloo ranks on this machine."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from ddpcheck.cli import build_parser
from torchrunjob import ThisMachine, start_job


def ddpcheck(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ddpcheck", *args], capture_output=True,
                          text=True, timeout=timeout)


def test_every_option_of_every_command_says_what_it_does():
    parser = build_parser()
    [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    silent = [f"{name} {'/'.join(action.option_strings) or action.dest}"
              for name, command in sub.choices.items() for action in command._actions
              if not (action.help or "").strip()]
    assert silent == []


def test_bandwidth_format_lays_out_the_sweep_table_and_default_keeps_nccl_columns(tmp_path):
    sweep = ("bandwidth", "--ops", "all_reduce", "-b", "1K", "-e", "4K", "-n", "2", "-w", "1")
    github = ddpcheck(*sweep, "--format", "github")
    assert github.returncode == 0, github.stdout + github.stderr
    lines = github.stdout.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("| size (B)"))
    assert lines[head + 1].startswith("|--")
    sizes = [line.split("|")[1].strip() for line in lines[head + 2:head + 5]]
    assert sizes == ["1024", "2048", "4096"]
    plain = ddpcheck(*sweep)
    assert plain.returncode == 0, plain.stderr
    assert "| size" not in plain.stdout and "#        size" in plain.stdout


def test_hang_format_lays_out_the_rank_table(tmp_path):
    port = 29900 + os.getpid() % 90
    job = start_job(None, [ThisMachine()], 2, port, tmp_path, ["--use-monitor"],
                    env={"DDPCHECK_HEARTBEAT_DIR": str(tmp_path / "beats")})
    try:
        job.wait_ready()
        done = ddpcheck("hang", "--job", f"127.0.0.1:{port}", "--window", "1",
                        "--format", "psql")
    finally:
        job.stop()
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("| host"))
    assert lines[head - 1].startswith("+--") and lines[head + 1].startswith("|--")
    assert sum(line.startswith("| localhost") for line in lines) == 2


def test_an_in_job_sweep_keeps_nccl_columns_and_the_verdict_line_stays_last():
    """preflight --in-job --bandwidth on one node: the sweep's table in nccl-tests' columns (as
    `ddpcheck bandwidth` prints it; --format lays it out as asked), and the verdict line last."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    for extra, header in (([], "(elements)"), (["--format", "github"], "| size (B)")):
        done = ddpcheck("preflight", "--in-job", "--nnodes", "1", "--node-rank", "0",
                        "--master-addr", "127.0.0.1", "--master-port", str(port),
                        "--bandwidth", "1M", *extra)
        assert done.returncode == 0, done.stdout + done.stderr
        lines = done.stdout.rstrip("\n").splitlines()
        assert lines[-1].startswith("# Verdict: OK (exit 0)"), done.stdout
        assert "# Bandwidth sweep: the same ranks, after the probe passed" in done.stdout
        assert any(header in line for line in lines), done.stdout
        port += 2
