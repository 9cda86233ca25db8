"""Consistency checks in preflight on the real namespace cluster, with real faults: an extra
NCCL_* variable on one host, an interpreter whose torch reports another version, a --setup that
seeds with seed + rank, a firewall dropping one host's packets to the master port, a hostname
that resolves to loopback."""

from __future__ import annotations

import contextlib
import json
import pathlib
import subprocess
import sys
import sysconfig
import time

import pytest

from hostsfile import cluster_hosts_yaml

pytestmark = pytest.mark.cluster


def preflight(hosts_yaml, report_path, *extra, timeout=240):
    done = subprocess.run([sys.executable, "-m", "ddpcheck", "preflight", str(hosts_yaml),
                           "--json", str(report_path), *extra],
                          capture_output=True, text=True, timeout=timeout)
    return done, json.loads(report_path.read_text())


def errors(report, check):
    return [f for f in report["findings"] if f["check"] == check and f["severity"] == "error"]


def test_extra_nccl_variable_on_one_host_is_env_drift_naming_it(ns_cluster, tmp_path):
    h1, h2, h3 = ns_cluster.hosts[:3]
    hosts_yaml = cluster_hosts_yaml(ns_cluster, tmp_path / "hosts.yaml", [h1, h2, h3], slots=1,
                                    port=29640,
                                    host_overrides={"h2": {"env": {"NCCL_IB_DISABLE": "1"}}})
    done, report = preflight(hosts_yaml, tmp_path / "report.json")
    assert done.returncode == 1, done.stdout + done.stderr
    (drift,) = errors(report, "env_drift")
    assert drift["host"] == "h2"
    assert drift["message"].startswith("NCCL_IB_DISABLE differs: 1 on h2 (rank 1); (unset) on")
    assert {r["status"] for r in report["ranks"]} == {"ok"}  # the job itself ran
    rows = [r for r in report["drift"] if r["key"] == "NCCL_IB_DISABLE"]
    assert [(r["value"], r["hosts"], r["reference"]) for r in rows] == [
        ("(unset)", ["h1", "h3"], True), ("1", ["h2"], False)]
    assert "What differs across ranks" in done.stdout and "<- differs" in done.stdout


@pytest.fixture(scope="module")
def other_torch_python(tmp_path_factory):
    """An interpreter whose torch reports another version: a copy of this virtualenv (its
    packages linked, torch's files linked but for torch/version.py, which says 2.12.1)."""
    root = tmp_path_factory.mktemp("other-venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    ours = pathlib.Path(sysconfig.get_paths()["purelib"])
    theirs = root / ours.relative_to(sys.prefix)
    theirs.mkdir(parents=True, exist_ok=True)
    for entry in ours.iterdir():
        if entry.name != "torch":
            (theirs / entry.name).symlink_to(entry)
    torch_copy = theirs / "torch"
    torch_copy.mkdir()
    for entry in (ours / "torch").iterdir():
        if entry.name not in ("version.py", "__pycache__"):
            (torch_copy / entry.name).symlink_to(entry)
    version = (ours / "torch" / "version.py").read_text()
    import torch

    (torch_copy / "version.py").write_text(version.replace(torch.__version__, "2.12.1+cpu"))
    python = root / "bin" / "python"
    check = subprocess.run([str(python), "-c", "import torch, ddpcheck; print(torch.__version__)"],
                           capture_output=True, text=True, timeout=120)
    assert check.stdout.strip() == "2.12.1+cpu", check.stderr
    return python


def test_host_whose_torch_reports_another_version_is_named(ns_cluster, tmp_path,
                                                           other_torch_python):
    h1, h2, h3 = ns_cluster.hosts[:3]
    hosts_yaml = cluster_hosts_yaml(ns_cluster, tmp_path / "hosts.yaml", [h1, h2, h3], slots=1,
                                    port=29641,
                                    host_overrides={"h3": {"python": str(other_torch_python)}})
    done, report = preflight(hosts_yaml, tmp_path / "report.json")
    assert done.returncode == 1, done.stdout + done.stderr
    (versions,) = errors(report, "versions")
    assert versions["host"] == "h3" and versions["rank"] == 2
    assert "torch version differs: 2.12.1+cpu on h3 (rank 2)" in versions["message"]
    assert [h["versions"]["torch"] for h in report["hosts"]][2] == "2.12.1+cpu"


def test_setup_seeding_with_seed_plus_rank_is_a_seed_error(ns_cluster, tmp_path):
    setup = tmp_path / "user_setup.py"
    setup.write_text(
        "import os, random\nimport torch\n\n"
        "def seed_everything(seed):\n"
        "    seed = seed + int(os.environ['RANK'])  # the bug: every rank its own seed\n"
        "    random.seed(seed)\n    torch.manual_seed(seed)\n\n"
        "def seed_correctly(seed):\n    random.seed(seed)\n    torch.manual_seed(seed)\n")
    hosts_yaml = cluster_hosts_yaml(ns_cluster, tmp_path / "hosts.yaml", ns_cluster.hosts[:2],
                                    slots=2, port=29642)
    done, report = preflight(hosts_yaml, tmp_path / "report.json", "--seed", "7",
                             "--setup", f"{setup}:seed_everything")
    assert done.returncode == 1, done.stdout + done.stderr
    seeds = errors(report, "seed")
    assert {s["message"].split(" RNG")[0] for s in seeds} == {"python", "torch"}
    assert all("differs on every rank (4 distinct values)" in s["message"] for s in seeds)
    # the model each rank builds differs too; DDP broadcasts rank 0's, so only a warning
    params = [f for f in report["findings"] if f["check"] == "params"]
    assert [p["severity"] for p in params] == ["warning"]

    done, report = preflight(hosts_yaml, tmp_path / "report2.json", "--seed", "7",
                             "--setup", f"{setup}:seed_correctly")
    assert done.returncode == 0, done.stdout + done.stderr
    assert not [f for f in report["findings"] if f["check"] in ("seed", "params")]


@contextlib.contextmanager
def dropped(cluster, host, port, source):
    rule = ["INPUT", "-p", "tcp", "--dport", str(port), "-s", source, "-j", "DROP"]
    cluster.run_in(host, ["iptables", "-I", *rule], check=True)
    try:
        yield
    finally:
        cluster.run_in(host, ["iptables", "-D", *rule], check=False)


def test_firewalled_master_port_names_the_host_in_seconds_and_starts_nothing(ns_cluster,
                                                                            tmp_path):
    h1, h2, h3 = ns_cluster.hosts[:3]
    hosts_yaml = cluster_hosts_yaml(ns_cluster, tmp_path / "hosts.yaml", [h1, h2, h3], slots=1,
                                    port=29643)
    started = time.monotonic()
    with dropped(ns_cluster, h1, 29643, h3.address):
        done, report = preflight(hosts_yaml, tmp_path / "report.json")
    elapsed = time.monotonic() - started
    assert done.returncode == 1, done.stdout + done.stderr
    failures = errors(report, "rendezvous")
    assert [(f["host"], f["root_cause"]) for f in failures] == [("h3", True)]
    assert f"cannot connect to master h1 {h1.address}:29643" in failures[0]["message"]
    assert "timed out" in failures[0]["message"]
    assert report["ranks"] == [] and "launched torchrun" not in done.stderr
    assert elapsed < 60, f"took {elapsed:.0f}s"


def test_hostname_on_loopback_is_named(ns_cluster, tmp_path):
    h1, h2 = ns_cluster.hosts[:2]
    hosts_file = pathlib.Path("/etc/netns") / h2.netns / "hosts"
    original = hosts_file.read_text()
    hosts_file.write_text(f"127.0.1.1\t{h2.name}\n" + original)  # the Debian default
    try:
        hosts_yaml = cluster_hosts_yaml(ns_cluster, tmp_path / "hosts.yaml", [h1, h2], slots=1,
                                        port=29644)
        done, report = preflight(hosts_yaml, tmp_path / "report.json")
    finally:
        hosts_file.write_text(original)
    names = [f for f in report["findings"] if f["check"] == "hostname"]
    assert [(f["host"], f["severity"]) for f in names] == [("h2", "warning")]  # eth0 is pinned
    assert "127.0.1.1" in names[0]["message"]
    assert done.returncode == 0, done.stdout + done.stderr
