"""A deadline that bounds the run: hosts the --timeout ran out before are reported as not
reached (exit 3), never as failures or the root cause, and no connection starts after it.

Real SSH (the in-process server of tests/sshserver.py, whose commands never end), 24 hosts at
a fan-out of 4 and a 4 s --timeout: the first wave's stage 0 is cut by the deadline, the rest
are never connected."""

from __future__ import annotations

import time

import pytest
import yaml

from sshserver import FakeSSHServer, hang, new_key

from ddpcheck.model.checks import Check
from ddpcheck.model.outcomes import Failure
from ddpcheck.analyze.outcomes import not_reached_failure
from ddpcheck.analyze import verdict as analyze
from ddpcheck.config.hostsyaml import load_hosts_file
from ddpcheck.engine.preflight import PreflightOptions, run_preflight
from ddpcheck.report.progress import Progress
from ddpcheck.model.records import HostRecord, Stage
from ddpcheck.report.table import render_table

HOSTS = 24


@pytest.fixture
def server(tmp_path):
    host_key, client_key = new_key(), new_key()
    key_file = tmp_path / "id"
    client_key.write_private_key_file(str(key_file))
    started = FakeSSHServer(host_key, client_key, hang).start()
    yield started, key_file
    started.stop()


def test_hosts_past_the_deadline_are_not_reached_not_failed(server, tmp_path):
    fake, key_file = server
    known = tmp_path / "known_hosts"
    known.write_text(fake.known_hosts_line() + "\n")
    hosts_yaml = tmp_path / "hosts.yaml"
    hosts_yaml.write_text(yaml.safe_dump({
        "defaults": {"user": "tester", "identity_file": str(key_file), "port": fake.port},
        "ssh": {"known_hosts": str(known), "fanout": 4, "connect_timeout": 5},
        "hosts": [{"name": f"n{i:02d}", "address": "127.0.0.1"} for i in range(HOSTS)]}))
    spec = load_hosts_file(str(hosts_yaml))
    began = time.monotonic()
    report = run_preflight(spec, PreflightOptions(timeout_s=4.0), Progress(None))
    took = time.monotonic() - began
    assert took < 4.0 + 12.0, took  # the deadline, plus the hang-up of the running commands
    assert len(report.hosts) == HOSTS
    connected = fake.observed.connections
    assert connected < HOSTS  # nothing was started after the deadline
    for host in report.hosts:
        assert host.error and host.not_reached, host
    assert sum(1 for h in report.hosts if h.stage is Stage.CONNECT) >= HOSTS - connected
    assert not any(f.root_cause for f in report.findings)
    assert report.exit_code == 3 and report.verdict.value == "unreachable"
    text = render_table(report)
    assert "ROOT CAUSE" not in text


def test_not_reached_hosts_merge_into_one_line_and_leave_the_real_failure_root():
    records = [HostRecord(f"n{i:03d}", "10.0.0.1", stage=Stage.CONNECT,
                          failure=not_reached_failure(60.0, "not connected"))
               for i in range(100)]
    records.append(HostRecord("bad", "10.0.0.2", stage=Stage.CONNECT,
                              failure=Failure(Check.SSH,
                                              "connect to 10.0.0.2:22 timed out after 10s")))
    findings = analyze.mark_single_root_cause(analyze.order_findings(
        analyze.host_findings(records)))
    roots = [f for f in findings if f.root_cause]
    assert [f.host for f in roots] == ["bad"]
    assert analyze.verdict(findings, records).value == "unreachable"
