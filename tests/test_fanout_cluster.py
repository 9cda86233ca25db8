"""Fan-out at 64 hosts: every host reached, checked and reported, on a real namespace cluster.

The hosts are made cheap, honestly: each host's ``python:`` is an interpreter without torch (a
bare venv made for the test; ddpcheck's host side is stdlib-only and found through
``PYTHONPATH``). So every host
really accepts an SSH connection (its own sshd), runs the real stage-0 agent, reports its facts,
and fails the ``torch_import`` check within a second instead of importing torch for seconds on
the machine's shared cores. What is measured is the launcher: all 64 hosts must come back with
their own facts and that one finding, grouped in the table, none lost, none a timeout.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

from conftest import started_cluster
from hostsfile import cluster_hosts_yaml

pytestmark = pytest.mark.cluster

HOSTS = 64
REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cheap_python(tmp_path_factory) -> str:
    """A bare venv of this interpreter: the standard library only, no torch."""
    where = tmp_path_factory.mktemp("bare") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True)
    python = str(where / "bin" / "python")
    assert subprocess.run([python, "-c", "import torch"], capture_output=True).returncode != 0
    return python


@pytest.fixture(scope="module")
def big_cluster(tmp_path_factory):
    yield from started_cluster(HOSTS, tmp_path_factory, "fanout")


def cheap_hosts_yaml(cluster, path: pathlib.Path, python: str) -> pathlib.Path:
    """No GLOO_SOCKET_IFNAME: the interface check of the stdlib-only facts (no psutil in the
    system interpreter) is not what this test is about."""
    return cluster_hosts_yaml(
        cluster, path, slots=1, port=29640,
        extra={"defaults": {"user": "root", "identity_file": str(cluster.identity_file),
                            "python": python, "env": {"PYTHONPATH": str(REPO)}}})


def test_every_one_of_64_hosts_is_reached_checked_and_reported(big_cluster, cheap_python,
                                                                tmp_path):
    hosts_yaml = cheap_hosts_yaml(big_cluster, tmp_path / "hosts.yaml", cheap_python)
    report_path = tmp_path / "report.json"
    done = subprocess.run([sys.executable, "-m", "ddpcheck", "preflight", str(hosts_yaml),
                           "--json", str(report_path), "--timeout", "120"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr[-3000:]
    report = json.loads(report_path.read_text())
    hosts = {h["name"]: h for h in report["hosts"]}
    assert set(hosts) == {h.name for h in big_cluster.hosts}
    for host in big_cluster.hosts:
        record = hosts[host.name]
        assert record["reachable"] and record["hostname"] == host.name, record
        assert record["stage"] == "stage0"
        assert report["stage0"][host.name]["hostname"] == host.name
    errors = [f for f in report["findings"] if f["host"] and f["severity"] == "error"]
    assert {f["check"] for f in errors} == {"torch_import"}, errors
    assert sorted(f["host"] for f in errors) == sorted(hosts)  # one finding per host
    assert not any(f["check"] in ("ssh", "timeout") for f in report["findings"])
    # the table: one group line and one merged finding for the 64 alike hosts
    table = done.stdout
    assert f"h[1-{HOSTS}]" in table
    merged = [line for line in table.splitlines() if "torch_import" in line
              and line.startswith("#  ")]
    assert len(merged) == 1 and f"{HOSTS} findings on {HOSTS} hosts" in merged[0]
    assert len(table.splitlines()) < 20
