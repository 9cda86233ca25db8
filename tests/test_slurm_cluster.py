"""``ddpcheck preflight --launcher slurm`` under a real SLURM: a private slurmctld, and a real
slurmd in two hosts of the namespace cluster (own network stack, hostname and address each).
The SLURM node names (n1, n2) are not the hostnames (h1, h2) and resolve nowhere, as on clusters
whose NodeName differs from the DNS name: the ranks must meet at SLURM's NodeAddr. ddpcheck runs
inside ``salloc`` as a user would, srun starts the agent on each node through slurmd and
slurmstepd, torchrun starts the ranks there, and gloo traffic crosses the bridge."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time

import pytest
from slurmctl import SlurmController, SlurmNode, slurm_available

REPO = pathlib.Path(__file__).resolve().parents[1]
NODES = ("n1", "n2")
HOSTS = ("h1", "h2")
LEFTOVER_WORDS = ("srun", "slurmstepd", "torchrun", "ddpcheck.remote.probe", "ddpcheck.remote.agent")


@pytest.fixture
def slurm_nodes(ns_cluster, tmp_path):
    """slurmctld in the root namespace (on the bridge address), slurmd n1 in h1, n2 in h2."""
    ok, reason = slurm_available(with_nodes=True)
    if not ok:
        if os.environ.get("CI") == "true":
            pytest.fail(f"SLURM with slurmd unavailable under CI: {reason}")
        pytest.skip(f"SLURM with slurmd unavailable: {reason}")
    nodes = [SlurmNode(node, ns_cluster.host(host).address, hostname=host)
             for node, host in zip(NODES, HOSTS)]
    controller = SlurmController(tmp_path / "slurm", nodes, ns_cluster.gateway)
    try:
        controller.start()
        by_name = dict(zip(NODES, HOSTS))
        controller.start_nodes(lambda argv, **kw: subprocess.Popen(
            in_host(ns_cluster, by_name[argv[argv.index("-N") + 1]], argv), **kw))
        yield controller
    finally:
        controller.stop()


def in_host(ns_cluster, host: str, argv: list[str]) -> list[str]:
    """argv in the host's network and UTS namespaces with its /etc/hosts, like the cluster's
    ``popen_in``, but keeping this machine's /sys: ``ip netns exec`` mounts a fresh sysfs,
    without /sys/fs/cgroup, and slurmd will not start without its cgroup plugin."""
    netns = ns_cluster.host(host).netns
    return ["nsenter", f"--net=/run/netns/{netns}", f"--uts={ns_cluster.uts_file(host)}", "--",
            "unshare", "--mount", "--propagation", "private", "--",
            "sh", "-c", 'mount --bind "$0" /etc/hosts && exec "$@"',
            f"/etc/netns/{netns}/hosts", *argv]


def leftovers(ns_cluster, conf: str) -> list[str]:
    """Live processes of the run: in h1/h2 anything but slurmd, here an srun of this SLURM."""
    found = []
    pids = [p for host in HOSTS for p in ns_cluster.pids_in(host)]
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            stat = open(f"/proc/{pid}/stat").read()
            cmdline = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode()
            environ = open(f"/proc/{pid}/environ", "rb").read()
        except OSError:
            continue
        if stat.rsplit(")", 1)[1].split()[0] == "Z":  # dead, only not yet reaped
            continue
        ours = int(pid) in pids or f"SLURM_CONF={conf}".encode() in environ
        if ours and "slurmd " not in cmdline + " " and any(w in cmdline for w in LEFTOVER_WORDS):
            found.append(f"{pid}: {cmdline[:200]}")
    return found


def test_preflight_launcher_slurm_under_real_slurm(slurm_nodes, ns_cluster, tmp_path):
    defaults = tmp_path / "defaults.yaml"
    defaults.write_text(f"defaults:\n  python: {sys.executable}\n  workdir: {tmp_path / 'work'}\n")
    report_path = tmp_path / "report.json"
    env = {**slurm_nodes.env, "PYTHONPATH": str(REPO)}
    started = time.monotonic()
    done = subprocess.run(
        ["salloc", "--nodes=2", "--ntasks-per-node=2", "--time=5",
         sys.executable, "-m", "ddpcheck", "preflight", "--launcher", "slurm", "--config",
         str(defaults), "--json", str(report_path), "--timeout", "120"],
        capture_output=True, text=True, env=env, timeout=180)
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(report_path.read_text())
    ranks = report["ranks"]
    assert len(ranks) == 4 and all(r["status"] == "ok" for r in ranks), ranks
    assert sorted(r["rank"] for r in ranks) == [0, 1, 2, 3]
    assert all(r["world_size"] == 4 for r in ranks)
    # node rank follows the nodelist: n1 (hostname h1) holds ranks 0-1, n2 (h2) ranks 2-3
    placed = {(r["host"], r["hostname"], r["rank"]) for r in ranks}
    assert placed == {("n1", "h1", 0), ("n1", "h1", 1), ("n2", "h2", 2), ("n2", "h2", 3)}
    hosts = {h["name"]: h for h in report["hosts"]}
    assert {name: h["address"] for name, h in hosts.items()} == {
        node: ns_cluster.host(host).address for node, host in zip(NODES, HOSTS)}
    assert "salloc: Granted job allocation" in done.stderr
    deadline = time.monotonic() + 10  # slurmstepd may take a moment to finish the step
    while leftovers(ns_cluster, str(slurm_nodes.conf)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert leftovers(ns_cluster, str(slurm_nodes.conf)) == []
    print(f"preflight --launcher slurm under salloc: {elapsed:.1f}s")


def test_preflight_in_job_under_srun(slurm_nodes, ns_cluster, tmp_path):
    """``srun --ntasks-per-node=1 ddpcheck preflight --in-job``: each node's task reads its
    place from SLURM_NNODES / SLURM_NODEID, node 0 hosts the store, no ssh and no
    ``--launcher slurm``. The node names resolve nowhere here, so the master's address is
    given as a flag (flags come first), as it must be on such a cluster."""
    report_path = tmp_path / "report.json"
    env = {**slurm_nodes.env, "PYTHONPATH": str(REPO)}
    master = ns_cluster.host(HOSTS[0]).address
    done = subprocess.run(
        ["salloc", "--nodes=2", "--ntasks-per-node=1", "--time=5",
         "srun", "--ntasks-per-node=1", "--label",
         sys.executable, "-m", "ddpcheck", "preflight", "--in-job", "--master-addr", master,
         "--master-port", "29640", "--nproc-per-node", "2", "--json", str(report_path),
         "--timeout", "120", "--skip", "compute,numerics"],
        capture_output=True, text=True, env=env, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(report_path.read_text())
    assert [h["name"] for h in report["hosts"]] == list(HOSTS)
    assert sorted(r["rank"] for r in report["ranks"] if r["status"] == "ok") == [0, 1, 2, 3]
    summaries = [line for line in done.stderr.splitlines() if "ddpcheck: node rank" in line]
    assert len(summaries) == 2 and all("OK: every check passed" in s for s in summaries)
    deadline = time.monotonic() + 10
    while leftovers(ns_cluster, str(slurm_nodes.conf)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert leftovers(ns_cluster, str(slurm_nodes.conf)) == []
