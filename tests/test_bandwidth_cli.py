"""``ddpcheck bandwidth`` as a user runs it on one machine: bad options, --dry-run, the
embedded default (2 CPU ranks on gloo) with every op, the JSON report and --plot."""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys

import pytest

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def ddpcheck(*args: str, cwd=None, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ddpcheck", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd)


@pytest.fixture
def five_hosts(tmp_path):
    path = tmp_path / "hosts.yaml"
    path.write_text("rendezvous: {port: 29700}\nbackend: gloo\nhosts:\n  - node[1-5]\n")
    return path


@pytest.mark.parametrize("args,message", [
    (["--pairwise"], "--pairwise needs at least 2 hosts"),
    (["-b", "2M", "-e", "1M"], "need 1 <= min size <= max size"),
    (["-b", "1M", "-e", "4M", "-f", "1"], "step factor must be >= 2"),
    (["--ops", "all_reduce,allgather"], "unknown op 'allgather'"),
    (["-b", "1", "-e", "3"], "hold no float32 element"),
    (["--slow-fraction", "1.5"], "must be between 0 and 1"),
    (["-n", "0"], "must be >= 1"),
    (["-b", "1.5X"], "not a size"),
])
def test_bad_options_exit_2_and_run_nothing(args, message, tmp_path):
    done = ddpcheck("bandwidth", *args, "--json", str(tmp_path / "r.json"))
    assert done.returncode == 2, done.stdout + done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr and "checking" not in done.stderr
    assert not (tmp_path / "r.json").exists()


def test_pairwise_measures_one_op(five_hosts):
    done = ddpcheck("bandwidth", str(five_hosts), "--pairwise", "--ops", "all_reduce,broadcast")
    assert done.returncode == 2 and "--pairwise measures one op" in done.stderr


def test_plot_without_matplotlib_says_how_to_install_and_runs_nothing(tmp_path):
    code = ("import sys; sys.modules['matplotlib'] = None\n"
            "from ddpcheck.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    done = subprocess.run([sys.executable, "-c", code, "bandwidth", "--plot",
                           str(tmp_path / "p.png")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "--plot needs matplotlib" in done.stderr
    assert "pip install 'ddpcheck[plot]'" in done.stderr
    assert "Traceback" not in done.stderr and "checking" not in done.stderr
    assert not (tmp_path / "p.png").exists()


def test_pairwise_dry_run_prints_every_pair_once_in_rounds(five_hosts):
    done = ddpcheck("bandwidth", str(five_hosts), "--pairwise", "all", "-e", "4M", "--dry-run")
    assert done.returncode == 0, done.stderr
    rounds = re.findall(r"^# round (\d+): (.*)$", done.stdout, re.M)
    assert [int(n) for n, _ in rounds] == [1, 2, 3, 4, 5]  # odd: 5 rounds, one bye each
    seen = []
    for _, text in rounds:
        pairs = re.findall(r"(node\d)-(node\d) \(master (node\d), port (\d+)\)", text)
        assert len(pairs) == 2
        hosts = [h for a, b, _, _ in pairs for h in (a, b)]
        assert len(set(hosts)) == 4  # no host twice in a round
        assert [int(port) for *_, port in pairs] == [29700, 29701]
        assert all(master == a for a, _, master, _ in pairs)
        seen += [(a, b) for a, b, _, _ in pairs]
    assert sorted(seen) == list(itertools.combinations([f"node{i}" for i in range(1, 6)], 2))
    assert "-m ddpcheck.remote.sweep" in done.stdout and "-b 4194304 -e 4194304 -f 1" in done.stdout
    assert "--nnodes 2" in done.stdout and "--nproc-per-node 1" in done.stdout
    assert done.stderr == ""


def test_adaptive_pairwise_dry_run_shows_round_one_of_at_most_three(five_hosts):
    done = ddpcheck("bandwidth", str(five_hosts), "--pairwise", "-e", "4M", "--dry-run")
    assert done.returncode == 0, done.stderr
    rounds = re.findall(r"^# round (\d+): (.*)$", done.stdout, re.M)
    assert len(rounds) == 1 and "node1-node2" in rounds[0][1] and "node3-node4" in rounds[0][1]
    assert "at most 3 in all" in done.stdout


def test_sweep_dry_run_runs_the_sweep_on_every_rank(five_hosts):
    done = ddpcheck("bandwidth", str(five_hosts), "--ops", "all_gather", "-b", "1K", "-e",
                    "64K", "-f", "4", "-n", "7", "-w", "2", "--dry-run")
    assert done.returncode == 0, done.stderr
    launches = [line for line in done.stdout.splitlines() if "ddpcheck.remote.agent launch" in line]
    assert len(launches) == 5
    for node_rank, line in enumerate(launches):
        assert f"--nnodes 5 --node-rank {node_rank}" in line
        assert "-m ddpcheck.remote.sweep" in line and "--ops all_gather" in line
        assert "-b 1024 -e 65536 -f 4 -n 7 -w 2" in line


def test_embedded_default_sweeps_every_op_checks_results_and_plots(tmp_path):
    report_path, plot_path = tmp_path / "report.json", tmp_path / "busbw.png"
    csv_path, junit_path = tmp_path / "ranks.csv", tmp_path / "junit.xml"
    done = ddpcheck("bandwidth", "-b", "64K", "-e", "256K", "-f", "4", "-n", "2", "-w", "1",
                    "--min-busbw", "0.000001", "--json", str(report_path), "--plot",
                    str(plot_path), "--csv", str(csv_path), "--junit", str(junit_path),
                    cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(report_path.read_text())
    assert report["command"] == "bandwidth" and report["verdict"] == "ok"
    assert report["world_size"] == 2 and report["pairs"] == []
    rows = report["collectives"]
    assert {(r["op"], r["bytes"]) for r in rows} == {
        (op, size) for op in ("all_reduce", "all_gather", "reduce_scatter", "broadcast",
                              "all_to_all") for size in (65536, 262144)}
    for r in rows:
        assert r["wrong"] == 0 and r["time_us"] > 0 and r["busbw_gbs"] > 0
        factor = {"all_reduce": 1.0, "broadcast": 1.0}.get(r["op"], 0.5)  # n = 2
        assert r["busbw_gbs"] == pytest.approx(r["algbw_gbs"] * factor, rel=1e-3)
    assert report["bandwidth"]["check"] == "OK" and report["bandwidth"]["out_of_bounds"] == 0
    for text in ("# all_reduce over 2 ranks", "# all_to_all over 2 ranks", "(GB/s)",
                 "#wrong", "# Out of bounds values : 0 OK", "# Avg bus bandwidth",
                 "(--min-busbw): OK", "#  Rank   1 Pid", "Verdict: OK (exit 0)"):
        assert text in done.stdout
    assert plot_path.read_bytes().startswith(PNG_MAGIC)
    assert f"wrote plot {plot_path}" in done.stderr
    assert len(csv_path.read_text().splitlines()) == 3  # header and a row per rank
    assert "<testsuites" in junit_path.read_text()


def test_w_is_warmup_as_in_nccl_tests_and_nodelist_gives_hosts():
    done = ddpcheck("bandwidth", "-w", "node[1-2]")
    assert done.returncode == 2
    assert "-w is the warm-up iteration count here" in done.stderr and "--nodelist" in done.stderr
    done = ddpcheck("bandwidth", "--nodelist", "node[1-3]", "--ssh-config", "none",
                    "--pairwise", "all", "-w", "2", "--dry-run")
    assert done.returncode == 0, done.stderr
    assert len(re.findall(r"^# round \d+:", done.stdout, re.M)) == 3
    assert "-n 20 -w 2" in done.stdout
