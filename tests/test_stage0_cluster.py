"""Stage 0 on the real namespace cluster: hosts that fail it are named with their checks before
torchrun starts, the others are still checked; ``ddpcheck node`` inside a namespace host with
real interface and route faults (ip link set down, a deleted route)."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys

import pytest

from hostsfile import cluster_hosts_yaml
from test_preflight_cluster import ddpcheck, no_torchrun_left

pytestmark = pytest.mark.cluster


def test_bad_interface_and_missing_python_named_before_torchrun(ns_cluster, tmp_path):
    h1, h2, h3, h4 = ns_cluster.hosts
    hosts_yaml = cluster_hosts_yaml(
        ns_cluster, tmp_path / "hosts.yaml", port=29620,
        host_overrides={"h2": {"env": {"GLOO_SOCKET_IFNAME": "eth9"}},
                        "h3": {"python": "/opt/nowhere/bin/python3"}})
    report_path = tmp_path / "report.json"
    done = ddpcheck("preflight", str(hosts_yaml), "--json", str(report_path))
    assert done.returncode == 1, done.stdout + done.stderr
    report = json.loads(report_path.read_text())
    assert report["verdict"] == "fail" and report["ranks"] == []

    roots = {f["host"]: f for f in report["findings"] if f["root_cause"]}
    assert set(roots) == {"h2", "h3"}
    assert roots["h2"]["check"] == "env" and roots["h2"]["severity"] == "error"
    assert ("GLOO_SOCKET_IFNAME=eth9: no interface 'eth9' on this host (it has: eth0, lo)"
            in roots["h2"]["message"])
    assert roots["h3"]["check"] == "python"
    assert "interpreter '/opt/nowhere/bin/python3' not found" in roots["h3"]["message"]
    not_started = [f for f in report["findings"] if "torchrun was not started" in f["message"]]
    assert len(not_started) == 1 and "h2, h3 failed before launch" in not_started[0]["message"]

    hosts = {h["name"]: h for h in report["hosts"]}
    for name in ("h1", "h4"):  # the healthy hosts were checked all the same
        assert hosts[name]["reachable"] and hosts[name]["error"] is None
        assert hosts[name]["hostname"] == name and hosts[name]["stage"] == "stage0"
        assert f"{name}: checked: hostname {name}" in done.stderr
    stage0 = report["stage0"]
    assert set(stage0) == {"h1", "h2", "h4"}  # h3 never ran stage 0
    # stage 0 ran with each host's env from hosts.yaml, as its ranks would
    assert stage0["h2"]["env"]["GLOO_SOCKET_IFNAME"] == "eth9"
    assert stage0["h1"]["env"]["GLOO_SOCKET_IFNAME"] == "eth0"
    assert set(stage0["h2"]["interfaces"]) == {"lo", "eth0"}
    assert stage0["h4"]["route"] == {"master": h1.address, "address": h1.address,
                                     "source": h4.address, "interface": "eth0"}
    assert hosts["h2"]["error"].startswith("GLOO_SOCKET_IFNAME=eth9")
    assert "launched torchrun" not in done.stderr
    assert "not launching: h2, h3 failed before launch" in done.stderr
    no_torchrun_left(ns_cluster)


def node_in(cluster, host, tmp_path, *args, env=None):
    report_path = tmp_path / f"node-{host.name}.json"
    argv = [sys.executable, "-m", "ddpcheck", "node", "--no-torch", "--json", str(report_path),
            *args]
    if env:
        argv = ["env", *[f"{k}={v}" for k, v in env.items()], *argv]
    done = cluster.run_in(host, argv, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    return done, json.loads(report_path.read_text())


def test_node_in_a_namespace_host_with_interface_and_route_faults(ns_cluster, tmp_path):
    h1, h4 = ns_cluster.hosts[0], ns_cluster.hosts[3]
    done, report = node_in(ns_cluster, h4, tmp_path, "--master", h1.address,
                           env={"GLOO_SOCKET_IFNAME": "eth0"})
    assert done.returncode == 0, done.stdout + done.stderr
    facts = report["stage0"]["h4"]
    assert report["hosts"][0]["hostname"] == "h4" and set(facts["interfaces"]) == {"lo", "eth0"}
    assert facts["route"]["interface"] == "eth0" and facts["route"]["source"] == h4.address

    netns = ["ip", "-n", h4.netns]
    # A second link inside h4 (a veth pair, both ends there), down, then up without carrier.
    subprocess.run(netns + ["link", "add", "ddpc0", "type", "veth", "peer", "name", "ddpc1"],
                   check=True)
    try:
        subprocess.run(netns + ["addr", "add", "10.250.0.4/24", "dev", "ddpc0"], check=True)
        problems = []
        for step in ("down", "no carrier", "up"):
            if step == "no carrier":
                subprocess.run(netns + ["link", "set", "ddpc0", "up"], check=True)
            elif step == "up":
                subprocess.run(netns + ["link", "set", "ddpc1", "up"], check=True)
            done, report = node_in(ns_cluster, h4, tmp_path, env={"GLOO_SOCKET_IFNAME": "ddpc0"})
            problems.append((done.returncode, [f["message"] for f in report["findings"]
                                               if f["check"] == "env"]))
        assert problems == [
            (1, ["h4: GLOO_SOCKET_IFNAME=ddpc0: interface 'ddpc0' is down"]),
            (1, ["h4: GLOO_SOCKET_IFNAME=ddpc0: interface 'ddpc0' has no carrier (not running)"]),
            (0, [])]
    finally:
        subprocess.run(netns + ["link", "del", "ddpc0"], check=False)

    # No route to the master: keep only a host route to the launcher's bridge address.
    subnet = f"{h4.address.rsplit('.', 1)[0]}.0/24"
    subprocess.run(netns + ["route", "add", f"{ns_cluster.gateway}/32", "dev", "eth0"],
                   check=True)
    subprocess.run(netns + ["route", "del", subnet, "dev", "eth0"], check=True)
    try:
        done, report = node_in(ns_cluster, h4, tmp_path, "--master", h1.address)
        assert done.returncode == 1, done.stdout
        (root,) = [f for f in report["findings"] if f["root_cause"]]
        assert root["check"] == "rendezvous"
        assert root["message"].startswith(f"h4: cannot reach the master {h1.address}: no route")
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            subprocess.run(netns + ["route", "replace", subnet, "dev", "eth0", "proto", "kernel",
                                    "scope", "link", "src", h4.address], check=True)
        subprocess.run(netns + ["route", "del", f"{ns_cluster.gateway}/32", "dev", "eth0"],
                       check=False)
    routes = subprocess.run(netns + ["route", "show"], capture_output=True, text=True).stdout
    assert subnet in routes
