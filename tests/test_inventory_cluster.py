"""Inventories, ssh_config/ProxyJump, machine outputs and the launch scripts on the real
namespace cluster: real sshd, real torchrun, gloo across the veths, iptables for the fault."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import socket
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET

import pytest
import yaml

from ddpcheck.collect.hostoutput import parse_output
from ddpcheck.config.hostsyaml import parse_hosts_yaml
from ddpcheck.model.errors import HostError
from ddpcheck.config.sshconfig import apply_ssh_config, read_ssh_config
from ddpcheck.transport.fanout import fan_out
from ddpcheck.transport.jump import JumpPool
from ddpcheck.transport.ssh import SSHSession

pytestmark = pytest.mark.cluster

REPO = pathlib.Path(__file__).resolve().parents[1]
VOLATILE_RANK_KEYS = ("pid", "barrier_us", "allreduce_small_us")


def ddpcheck(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ddpcheck", *args], capture_output=True,
                          text=True, timeout=timeout)


def write_ssh_config(cluster, path: pathlib.Path, jump_through=None) -> pathlib.Path:
    """An ssh_config naming every host by its hostname (HostName = its bridge address), as a
    user's ~/.ssh/config would; hosts other than ``jump_through`` get ProxyJump to it."""
    lines = []
    for host in cluster.hosts:
        lines += [f"Host {host.name}", f"  HostName {host.address}", "  User root",
                  f"  IdentityFile {cluster.identity_file}"]
        if jump_through is not None and host.name != jump_through.name:
            lines.append(f"  ProxyJump {jump_through.name}")
    path.write_text("\n".join(lines) + "\n")
    return path


def shared_sections(cluster, tmp_path: pathlib.Path, port: int, ssh_config: pathlib.Path,
                    slots=None) -> dict:
    defaults = {"python": sys.executable, "env": {"GLOO_SOCKET_IFNAME": "eth0"},
                "workdir": str(tmp_path / "work")}
    if slots is not None:
        defaults["slots"] = slots
    return {"defaults": defaults,
            "ssh": {"known_hosts": str(cluster.known_hosts), "connect_timeout": 5,
                    "config": str(ssh_config)},
            "rendezvous": {"port": port}, "backend": "gloo"}


def comparable(report: dict) -> dict:
    """The report without what differs between two healthy runs: timings, pids, the source."""
    report = json.loads(json.dumps(report))
    for key in ("duration_s", "source", "stage0"):  # stage0: each host's load, clock, memory
        report.pop(key, None)
    for rank in report["ranks"]:
        for key in VOLATILE_RANK_KEYS:
            rank.pop(key)
        rank.pop("compute", None)  # the compute check's throughputs
        rank.pop("numerics", None)  # the numerics check: how many repetitions fit its time
    for collective in report["collectives"]:
        for key in ("time_us", "algbw_gbs", "busbw_gbs"):
            collective.pop(key)
    for finding in report["findings"]:
        if finding["check"] == "barrier" and finding["severity"] == "info":
            finding.pop("message")  # barrier latencies
    # warnings about the moment's load (a slow torch import, a clock read late, a rank's compute
    # check squeezed by other work) may come and go
    report["findings"] = [f for f in report["findings"] if not (
        f["severity"] == "warning" and f["check"] in ("torch_import", "clock_skew",
                                                      "straggler"))]
    return report


@contextlib.contextmanager
def blocked_from_here(addresses):
    """Drop everything this (root) namespace sends to ``addresses``: the launcher's direct
    route to those hosts is gone; the hosts still reach each other over the bridge."""
    rules = [["OUTPUT", "-d", address, "-j", "DROP", "-m", "comment", "--comment",
              f"ddpc-jump-test-{os.getpid()}"] for address in addresses]
    added = []
    try:
        for rule in rules:
            subprocess.run(["iptables", "-w", "5", "-I", *rule], check=True,
                           capture_output=True)
            added.append(rule)
        yield
    finally:
        for rule in added:
            subprocess.run(["iptables", "-w", "5", "-D", *rule], capture_output=True)


def reachable_directly(address: str) -> bool:
    try:
        with socket.create_connection((address, 22), timeout=1.5):
            return True
    except OSError:
        return False


def test_hostfile_and_w_give_the_same_report_as_hosts_yaml(ns_cluster, tmp_path):
    hosts = ns_cluster.hosts[:2]
    port = 29640
    ssh_config = write_ssh_config(ns_cluster, tmp_path / "ssh_config")
    sections = shared_sections(ns_cluster, tmp_path, port, ssh_config, slots=2)
    hosts_yaml = tmp_path / "hosts.yaml"
    hosts_yaml.write_text(yaml.safe_dump({**sections, "hosts": [
        {"name": h.name, "address": h.address} for h in hosts]}))
    config_slots = tmp_path / "config-slots.yaml"
    config_slots.write_text(yaml.safe_dump(sections))
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(shared_sections(ns_cluster, tmp_path, port, ssh_config)))
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("# DeepSpeed hostfile\n" +
                        "".join(f"{h.name} slots=2\n" for h in hosts))

    reports = {}
    runs = {
        "yaml": [str(hosts_yaml)],
        "hostfile": ["--hostfile", str(hostfile), "--config", str(config),
                     "--junit", str(tmp_path / "report.xml"), "--csv", str(tmp_path / "r.csv"),
                     "-q"],
        "w": ["-w", "h[1-2]", "--config", str(config_slots)],
    }
    for name, args in runs.items():
        path = tmp_path / f"{name}.json"
        done = ddpcheck("preflight", *args, "--json", str(path))
        assert done.returncode == 0, f"{name}:\n{done.stdout}{done.stderr}"
        reports[name] = json.loads(path.read_text())
        if name == "hostfile":  # -q: the verdict line only, no progress
            assert done.stdout.startswith("# Verdict: OK (exit 0)")
            assert len(done.stdout.splitlines()) == 1 and done.stderr == ""
    assert reports["yaml"]["world_size"] == 4
    assert [h["address"] for h in reports["w"]["hosts"]] == [h.address for h in hosts]
    assert comparable(reports["hostfile"]) == comparable(reports["yaml"])
    assert comparable(reports["w"]) == comparable(reports["yaml"])
    assert reports["w"]["source"] == "-w h[1-2]"
    assert reports["hostfile"]["source"] == str(hostfile)

    # The JUnit report of the hostfile run: valid XML, a testcase per host in host checks
    # and per rank in rank checks, nothing failed.
    root = ET.parse(tmp_path / "report.xml").getroot()
    assert root.tag == "testsuites" and root.get("failures") == "0" == root.get("errors")
    suites = {s.get("name"): s for s in root.iter("testsuite")}
    assert [c.get("name") for c in suites["ddpcheck.ssh"].iter("testcase")] == ["h1", "h2"]
    assert [c.get("name") for c in suites["ddpcheck.all_reduce"].iter("testcase")] == [
        f"h{r // 2 + 1} rank {r}" for r in range(4)]
    csv_rows = (tmp_path / "r.csv").read_text().splitlines()
    assert len(csv_rows) == 5 and all(",ok," in row for row in csv_rows[1:])


def preflight_with_direct_routes_blocked(config, tmp_path, jump, behind):
    """``preflight -w h[1-3]`` while this machine cannot reach the hosts ``behind`` the jump
    host directly; every rank must report ok. Returns the finished command."""
    with blocked_from_here([h.address for h in behind]):
        assert not reachable_directly(behind[0].address)  # the fault is real
        assert reachable_directly(jump.address)
        report_path = tmp_path / "report.json"
        done = ddpcheck("preflight", "-w", "h[1-3]", "--config", str(config),
                        "--json", str(report_path))
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(report_path.read_text())
    assert [r["hostname"] for r in report["ranks"]] == ["h1", "h2", "h3"]
    assert all(r["status"] == "ok" for r in report["ranks"])
    return done


def test_proxyjump_through_the_first_host_when_direct_routes_are_blocked(ns_cluster,
                                                                        tmp_path):
    jump, *behind = ns_cluster.hosts[:3]
    ssh_config = write_ssh_config(ns_cluster, tmp_path / "ssh_config", jump_through=jump)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(shared_sections(ns_cluster, tmp_path, 29641, ssh_config)))
    done = preflight_with_direct_routes_blocked(config, tmp_path, jump, behind)
    for host in behind:
        assert f"{host.name}: connecting through {jump.name}" in done.stderr
    assert f"{jump.name}: connecting\n" in done.stderr.replace("\r", "")


def jump_spec(cluster, tmp_path, known_hosts=None, handshakes=2):
    jump = cluster.hosts[0]
    ssh_config = write_ssh_config(cluster, tmp_path / "ssh_config", jump_through=jump)
    text = yaml.safe_dump({
        "ssh": {"known_hosts": str(known_hosts or cluster.known_hosts), "connect_timeout": 5,
                "jump_handshakes": handshakes},
        "hosts": [h.name for h in cluster.hosts[1:]]})
    spec = parse_hosts_yaml(text, "hosts.yaml")
    lookup, source = read_ssh_config(str(ssh_config))
    return apply_ssh_config(spec, lookup, source, "root")


def test_proxycommand_through_real_ssh_when_direct_routes_are_blocked(ns_cluster, tmp_path):
    """ssh_config ProxyCommand (``ssh -W %h:%p`` through the first host, OpenSSH's own client):
    the hosts behind it are reached only through the command, and --dry-run shows it."""
    jump, *behind = ns_cluster.hosts[:3]
    ssh_config = write_ssh_config(ns_cluster, tmp_path / "ssh_config")
    with open(ssh_config, "a") as handle:
        for host in behind:
            handle.write(f"Match originalhost {host.name}\n  ProxyCommand ssh -F "
                         f"{ns_cluster.ssh_config} -W %h:%p {jump.name}  # via {jump.name}\n")
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(shared_sections(ns_cluster, tmp_path, 29643, ssh_config)))
    dry = ddpcheck("preflight", "-w", "h[1-3]", "--config", str(config), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert (f"through ProxyCommand 'ssh -F {ns_cluster.ssh_config} -W "
            f"{behind[0].address}:22 {jump.name}  # via {jump.name}'") in dry.stdout
    preflight_with_direct_routes_blocked(config, tmp_path, jump, behind)


def test_jump_pool_shares_one_connection_and_caps_handshakes(ns_cluster, tmp_path):
    spec = jump_spec(ns_cluster, tmp_path, handshakes=1)
    pool = JumpPool(spec.ssh)
    sessions = {}

    def connect(host):
        sessions[host.name] = SSHSession.connect(host, spec.ssh, pool)
        return sessions[host.name].run("hostname", time.monotonic() + 10,
                                       threading.Event()).output.strip()

    try:
        with blocked_from_here([h.address for h in ns_cluster.hosts[1:]]):
            outcomes = fan_out(list(spec.hosts), connect, 8, threading.Event())
    finally:
        for session in sessions.values():
            session.close()
        pool.close()
    assert [o.error for o in outcomes] == [None, None, None]
    assert [o.result for o in outcomes] == ["h2", "h3", "h4"]
    assert pool.connections_made == 1  # one authenticated connection to the jump host
    assert pool.jump(spec.hosts[0].jumps).max_in_flight == 1  # the cap held


def test_jump_host_key_is_checked_too(ns_cluster, tmp_path):
    jump = ns_cluster.hosts[0]
    known = tmp_path / "known_hosts"
    known.write_text("".join(line + "\n" for line in ns_cluster.known_hosts.read_text()
                             .splitlines() if not line.startswith((jump.address + " ",
                                                                   jump.name + " "))))
    spec = jump_spec(ns_cluster, tmp_path, known_hosts=known)
    pool = JumpPool(spec.ssh)
    try:
        outcomes = fan_out(list(spec.hosts), lambda h: SSHSession.connect(h, spec.ssh, pool),
                           8, threading.Event())
    finally:
        pool.close()
    for outcome in outcomes:
        assert isinstance(outcome.error, HostError)
        assert outcome.error.message.startswith(f"jump host {jump.name}: host key for "
                                                f"{jump.address} is not in")
    assert pool.connections_made == 0


def test_torchrun_probe_script_on_two_hosts(ns_cluster, tmp_path):
    """launch/torchrun-probe.sh run by hand on h1 and h2, as its usage line says."""
    script = str(REPO / "launch" / "torchrun-probe.sh")
    master = ns_cluster.hosts[0]
    env = {**os.environ, "PYTHON": sys.executable, "GLOO_SOCKET_IFNAME": "eth0"}
    procs = [ns_cluster.popen_in(host, ["bash", script, "2", str(node_rank), master.address,
                                        "1", "29642"],
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                 env=env, cwd=tmp_path)
             for node_rank, host in enumerate(ns_cluster.hosts[:2])]
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=120)[0])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    assert [p.returncode for p in procs] == [0, 0], "\n".join(outputs)
    ranks = [r for text in outputs for r in parse_output(text).ranks]
    assert sorted((r["rank"], r["hostname"], r["status"]) for r in ranks) == [
        (0, "h1", "ok"), (1, "h2", "ok")]
    assert all(r["world_size"] == 2 and r["all_reduce_wrong"] == 0 for r in ranks)


def test_torchrun_probe_script_usage(tmp_path):
    done = subprocess.run(["bash", str(REPO / "launch" / "torchrun-probe.sh"), "2"],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "NNODES NODE_RANK MASTER_ADDR" in done.stderr


def accepted_logins(cluster, host) -> int:
    """Authenticated connections the host's sshd has logged (LogLevel INFO)."""
    log = cluster._hostdir(host.name) / "sshd.log"
    return log.read_text(errors="replace").count("Accepted publickey for ")


def test_hang_through_a_jump_host_opens_one_connection_to_it(ns_cluster, tmp_path):
    """``ddpcheck hang`` goes through the engine's launcher, so it shares one connection to the
    jump host for every host behind it (counted by the jump host's own sshd), with direct
    routes blocked so nothing can bypass it."""
    jump, *behind = ns_cluster.hosts
    ssh_config = write_ssh_config(ns_cluster, tmp_path / "ssh_config", jump_through=jump)
    hosts_yaml = tmp_path / "hosts.yaml"
    hosts_yaml.write_text(yaml.safe_dump({
        **shared_sections(ns_cluster, tmp_path, 29643, ssh_config),
        "hosts": [h.name for h in behind]}))
    report_path = tmp_path / "hang.json"
    before = accepted_logins(ns_cluster, jump)
    with blocked_from_here([h.address for h in behind]):
        assert not reachable_directly(behind[0].address)  # the fault is real
        done = ddpcheck("hang", str(hosts_yaml), "--window", "1", "--no-stacks",
                        "--json", str(report_path))
    time.sleep(0.5)  # sshd writes its log line as it accepts; let it land
    report = json.loads(report_path.read_text())
    assert [h["reachable"] for h in report["hosts"]] == [True] * len(behind), done.stderr
    assert done.returncode == 0, done.stdout + done.stderr  # no job runs: nothing is hung
    for host in behind:
        assert f"{host.name}: connecting through {jump.name}" in done.stderr
    assert accepted_logins(ns_cluster, jump) - before == 1
