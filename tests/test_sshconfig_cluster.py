"""ssh_config's second pass on the real namespace cluster: the User and IdentityFile that let
ddpcheck in are set only in blocks that match a host's *final* name (the address its HostName
gives), read again because of ``Match final`` or ``CanonicalizeHostname yes``, as OpenSSH
does. Without the second pass no key is offered and every real sshd refuses the login."""

from __future__ import annotations

import json
import pathlib

import pytest
import yaml

from test_inventory_cluster import ddpcheck, shared_sections

pytestmark = pytest.mark.cluster


@pytest.mark.parametrize("second_pass,port", [("Match final", 29651),
                                               ("CanonicalizeHostname yes", 29652)])
def test_preflight_uses_what_the_second_pass_sets(ns_cluster, tmp_path: pathlib.Path,
                                                  second_pass: str, port: int) -> None:
    hosts = ns_cluster.hosts[:2]
    lines = [second_pass] if second_pass.startswith("Canonicalize") else []
    for host in hosts:
        lines += [f"Host {host.name}", f"  HostName {host.address}"]
    lines += ["Host " + " ".join(h.address for h in hosts), "  User root",
              f"  IdentityFile {ns_cluster.identity_file}"]
    lines += [second_pass] if second_pass.startswith("Match") else []
    ssh_config = tmp_path / "ssh_config"
    ssh_config.write_text("\n".join(lines) + "\n")
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(shared_sections(ns_cluster, tmp_path, port, ssh_config)))
    report_path = tmp_path / "report.json"
    done = ddpcheck("preflight", "-w", ",".join(h.name for h in hosts), "--config", str(config),
                    "--json", str(report_path))
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(report_path.read_text())
    assert [h["address"] for h in report["hosts"]] == [h.address for h in hosts]
    assert [r["status"] for r in report["ranks"]] == ["ok"] * len(report["ranks"]) != []
