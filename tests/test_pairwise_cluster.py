"""Adaptive ``--pairwise`` on 8 namespace hosts: a host shaped slow with ``tc`` is named as a
host, and one slow link (shaped between two hosts only, with an htb class and a u32 filter on
the destination) is named as a link, not a host, each in at most 3 rounds.

Every host's link is shaped to RATE_MBIT (so the link, not the 2 shared cores, bounds a pair);
the fault is a quarter of that."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import started_cluster
from hostsfile import cluster_hosts_yaml
from test_preflight_cluster import no_torchrun_left

pytestmark = pytest.mark.cluster

HOSTS = 8
RATE_MBIT = 100.0
SLOW_MBIT = RATE_MBIT / 4


@pytest.fixture(scope="module")
def cluster8(tmp_path_factory):
    yield from started_cluster(HOSTS, tmp_path_factory, "pairwise")


@pytest.fixture
def shaped(cluster8):
    for host in cluster8.hosts:
        cluster8.shape(host, RATE_MBIT)
    yield cluster8
    for host in cluster8.hosts:
        cluster8.shape(host, None)


def tc(cluster, host, *args: str) -> None:
    subprocess.run(["tc", "-n", host.netns, *args], check=True, capture_output=True)


def shape_link(cluster, a, b, rate_mbit: float) -> None:
    """Only traffic between a and b at ``rate_mbit`` (each host's egress to the other through
    its own htb class), everything else at RATE_MBIT."""
    for src, dst in ((a, b), (b, a)):
        dev = src.iface
        tc(cluster, src, "qdisc", "replace", "dev", dev, "root", "handle", "1:", "htb",
           "default", "10")
        tc(cluster, src, "class", "add", "dev", dev, "parent", "1:", "classid", "1:10", "htb",
           "rate", f"{int(RATE_MBIT)}mbit")
        tc(cluster, src, "class", "add", "dev", dev, "parent", "1:", "classid", "1:20", "htb",
           "rate", f"{int(rate_mbit)}mbit")
        tc(cluster, src, "filter", "add", "dev", dev, "parent", "1:", "protocol", "ip",
           "prio", "1", "u32", "match", "ip", "dst", f"{dst.address}/32", "flowid", "1:20")


def run_pairwise(cluster, tmp_path, port: int) -> tuple[subprocess.CompletedProcess, dict]:
    hosts_yaml = cluster_hosts_yaml(cluster, tmp_path / "hosts.yaml", slots=1, port=port)
    report_path = tmp_path / "report.json"
    done = subprocess.run([sys.executable, "-m", "ddpcheck", "bandwidth", str(hosts_yaml),
                           "--pairwise", "-e", "4M", "-n", "3", "-w", "1",
                           "--json", str(report_path)],
                          capture_output=True, text=True, timeout=600)
    return done, json.loads(report_path.read_text())


def test_slow_host_named_in_at_most_three_rounds(shaped, tmp_path):
    slow = shaped.hosts[4]
    shaped.shape(slow, SLOW_MBIT)
    done, report = run_pairwise(shaped, tmp_path, 29670)
    assert done.returncode == 1, done.stdout + done.stderr[-3000:]
    assert report["bandwidth"]["suspect_hosts"] == [slow.name], report["bandwidth"]
    assert report["bandwidth"]["suspect_links"] == []
    assert report["bandwidth"]["rounds"] <= 3
    assert max(p["round"] for p in report["pairs"]) <= 3
    assert len(report["pairs"]) < HOSTS * (HOSTS - 1) // 2  # not the full matrix
    errors = [f for f in report["findings"] if f["severity"] == "error"]
    assert [f["host"] for f in errors] == [slow.name] and errors[0]["check"] == "slow_link"
    no_torchrun_left(shaped)


def test_slow_link_named_as_a_link_not_a_host(shaped, tmp_path):
    a, b = shaped.hosts[2], shaped.hosts[3]  # partners in round 1 (neighbours in hosts.yaml)
    shape_link(shaped, a, b, SLOW_MBIT)
    done, report = run_pairwise(shaped, tmp_path, 29675)
    assert done.returncode == 1, done.stdout + done.stderr[-3000:]
    assert report["bandwidth"]["suspect_links"] == [[a.name, b.name]], report["bandwidth"]
    assert report["bandwidth"]["suspect_hosts"] == []
    assert report["bandwidth"]["rounds"] == 2
    errors = [f for f in report["findings"] if f["severity"] == "error"]
    assert len(errors) == 1 and f"link {a.name}" in errors[0]["message"]
    no_torchrun_left(shaped)
