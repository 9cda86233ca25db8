"""``ddpcheck bandwidth`` on the real namespace cluster: real sshd, real torchrun, gloo over veths
whose rate is limited for real with ``tc`` (tbf on both ends of each host's veth, so both
directions carry the same rate)."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys

import pytest

from hostsfile import cluster_hosts_yaml
from test_preflight_cluster import no_torchrun_left

pytestmark = pytest.mark.cluster

RATE_MBIT = 200.0  # slow enough that the link, not the 2-core CPU, is the bottleneck
RATE_GBS = RATE_MBIT * 1e6 / 8 / 1e9
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def ddpcheck(*args: str, timeout: float = 400) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ddpcheck", *args], capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture
def shape(ns_cluster):
    """shape(host, rate_mbit) for the test; every host's link is unshaped again afterwards."""
    shaped = []

    def apply(host, rate_mbit: float) -> None:
        ns_cluster.shape(host, rate_mbit)
        shaped.append(host)

    yield apply
    for host in shaped:
        ns_cluster.shape(host, None)


def test_sweep_busbw_tracks_the_shaped_rate_and_min_busbw_above_it_fails(ns_cluster, shape,
                                                                          tmp_path):
    for host in ns_cluster.hosts:
        shape(host, RATE_MBIT)
    hosts_yaml = cluster_hosts_yaml(ns_cluster, tmp_path / "hosts.yaml", slots=1, port=29625)
    report_path = tmp_path / "report.json"
    done = ddpcheck("bandwidth", str(hosts_yaml), "--ops", "all", "-b", "256K", "-e", "8M",
                    "-f", "32", "-n", "3", "-w", "1", "--min-busbw", f"{2 * RATE_GBS:g}",
                    "--json", str(report_path))
    assert done.returncode == 1, done.stdout + done.stderr
    report = json.loads(report_path.read_text())
    assert report["verdict"] == "fail" and report["world_size"] == 4
    assert sorted(r["hostname"] for r in report["ranks"]) == ["h1", "h2", "h3", "h4"]
    rows = report["collectives"]
    assert {(r["op"], r["bytes"]) for r in rows} == {
        (op, size) for op in ("all_reduce", "all_gather", "reduce_scatter", "broadcast",
                              "all_to_all") for size in (256 * 1024, 8 * 1024 * 1024)}
    assert all(r["wrong"] == 0 and r["world_size"] == 4 for r in rows)
    largest = next(r for r in rows if r["op"] == "all_reduce" and r["bytes"] == 8 << 20)
    assert largest["busbw_gbs"] == pytest.approx(RATE_GBS, rel=0.15), largest
    # below the threshold: the footer, the finding and the exit code say so
    assert report["bandwidth"]["check"] == "FAILED"
    assert [f["check"] for f in report["findings"] if f["severity"] == "error"] == ["bandwidth"]
    assert "below --min-busbw" in report["findings"][0]["message"]
    assert "(--min-busbw): FAILED" in done.stdout and "Verdict: FAIL (exit 1)" in done.stdout
    no_torchrun_left(ns_cluster)


def test_pairwise_names_the_host_at_a_quarter_rate_and_no_other(ns_cluster, shape, tmp_path):
    slow = ns_cluster.hosts[2]
    for host in ns_cluster.hosts:
        shape(host, RATE_MBIT / 4 if host is slow else RATE_MBIT)
    hosts_yaml = cluster_hosts_yaml(ns_cluster, tmp_path / "hosts.yaml", slots=1, port=29630)
    report_path, plot_path = tmp_path / "report.json", tmp_path / "pairs.png"
    done = ddpcheck("bandwidth", str(hosts_yaml), "--pairwise", "all", "-e", "4M", "-n", "3",
                    "-w", "1", "--json", str(report_path), "--plot", str(plot_path))
    assert done.returncode == 1, done.stdout + done.stderr
    report = json.loads(report_path.read_text())
    slow_link = [f for f in report["findings"]
                 if f["check"] == "slow_link" and f["severity"] == "error"]
    assert [f["host"] for f in slow_link] == [slow.name], slow_link
    assert [f for f in report["findings"] if f["severity"] == "error"] == slow_link
    names = [h.name for h in ns_cluster.hosts]
    pairs = report["pairs"]
    assert sorted(tuple(p["hosts"]) for p in pairs) == list(itertools.combinations(names, 2))
    for number in (1, 2, 3):  # 4 hosts: 3 rounds of 2 concurrent pairs, no host twice
        in_round = [h for p in pairs if p["round"] == number for h in p["hosts"]]
        assert sorted(in_round) == sorted(names)
    for pair in pairs:
        assert pair["error"] is None and pair["wrong"] == 0
        if slow.name in pair["hosts"]:
            assert pair["slow"] and pair["busbw_gbs"] < 0.3 * RATE_GBS, pair
        else:
            assert not pair["slow"] and pair["busbw_gbs"] > 0.8 * RATE_GBS, pair
    assert report["bandwidth"]["suspect_hosts"] == [slow.name]
    assert report["bandwidth"]["suspect_links"] == []
    matrix_row = next(line for line in done.stdout.splitlines() if line.startswith(slow.name))
    assert matrix_row.count("*") == 3
    assert plot_path.read_bytes().startswith(PNG_MAGIC)
    no_torchrun_left(ns_cluster)


def test_pairwise_pairs_the_others_when_a_host_is_cut_off(ns_cluster, tmp_path):
    cut = ns_cluster.hosts[3]
    hosts = [ns_cluster.hosts[0], ns_cluster.hosts[1], cut]
    hosts_yaml = cluster_hosts_yaml(ns_cluster, tmp_path / "hosts.yaml", hosts, slots=1,
                                    port=29650)
    report_path = tmp_path / "report.json"
    ns_cluster.set_link(cut, False)
    try:
        done = ddpcheck("bandwidth", str(hosts_yaml), "--pairwise", "all", "-e", "1M", "-n", "2",
                        "-w", "0", "--json", str(report_path))
    finally:
        ns_cluster.set_link(cut, True)
    assert done.returncode == 3, done.stdout + done.stderr  # unreachable, no check failed
    report = json.loads(report_path.read_text())
    assert report["verdict"] == "unreachable"
    assert [f["host"] for f in report["findings"] if f["check"] == "ssh"] == [cut.name]
    assert [p["hosts"] for p in report["pairs"]] == [["h1", "h2"]]
    assert report["pairs"][0]["busbw_gbs"] > 0 and report["pairs"][0]["error"] is None
    assert f"leaving out {cut.name}" in done.stderr
    matrix_row = next(line for line in done.stdout.splitlines() if line.startswith(cut.name))
    assert matrix_row.split()[1:] == ["n/a", "n/a", "-"]
    no_torchrun_left(ns_cluster)
