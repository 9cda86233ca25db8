"""Preflight through in-process SSH servers: every fault named with its host and stage, the
other hosts' results standing, each stage's deadline firing, and no secret in any output.

The servers (tests/sshserver.py) run the commands they get for real on this machine (the real
agent, the real interpreter), except where a fault replaces the answer.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from ddpcheck.plan.cmdlines import LaunchOptions
from ddpcheck.engine.preflight import PreflightOptions, run_preflight
from ddpcheck.model.spec import Backend, ClusterSpec, HostSpec, SSHSpec
from ddpcheck.report.progress import Progress

from plantedtorch import broken_torch
from sshserver import (FakeSSHServer, by_command, drop_mid_stream, free_port, hang, new_key,
                       run_locally)

PASSPHRASE = "correct horse battery staple 7f3a"
SECRET_IN_A_FILE = "AKIA-NOT-A-KEY-BUT-A-SECRET-5be1c0de"


@pytest.fixture
def servers():
    started: list[FakeSSHServer] = []

    def start(behaviour=run_locally, host_key=None, client_key=None, **faults) -> FakeSSHServer:
        server = FakeSSHServer(host_key or SERVER_KEY, client_key or CLIENT_KEY, behaviour,
                               **faults).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


SERVER_KEY = new_key()
CLIENT_KEY = new_key()


def write_keys(folder: Path) -> dict[str, Path]:
    """The client key, the same key encrypted with a passphrase, and a file that is no key."""
    plain, encrypted, garbage = folder / "id_ecdsa", folder / "id_encrypted", folder / "id_junk"
    CLIENT_KEY.write_private_key_file(str(plain))
    CLIENT_KEY.write_private_key_file(str(encrypted), password=PASSPHRASE)
    garbage.write_text(f"-----BEGIN OPENSSH PRIVATE KEY-----\n{SECRET_IN_A_FILE}\n"
                       f"-----END OPENSSH PRIVATE KEY-----\n")
    return {"plain": plain, "encrypted": encrypted, "garbage": garbage}


def key_material(path: Path) -> list[str]:
    """Pieces of a key file that must never be printed: each base64 line of its body."""
    return [line for line in path.read_text().splitlines()
            if line and not line.startswith("-----") and ":" not in line and len(line) >= 16]


def test_every_fault_is_named_with_its_host_and_the_good_host_stands(servers, tmp_path):
    """Through the command line, as a user runs it, with -v: eleven hosts, ten faults."""
    keys = write_keys(tmp_path)
    impostor_key = new_key()
    good = servers()
    silent = servers(banner_delay_s=60)
    rejected = servers(reject_auth=True)
    impostor = servers(host_key=impostor_key)
    nopython = servers()
    dropped = servers(by_command(run_locally, facts=drop_mid_stream(b"half a line")))
    encrypted = servers()
    junk = servers()
    badworkdir = servers()
    brokentorch = servers()
    broken = tmp_path / "broken-site" / "torch"  # a torch whose import fails, on one host
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text(
        "raise ImportError('libcudart.so.12: cannot open shared object file')\n")
    refused_port = free_port()
    known = tmp_path / "known_hosts"
    known.write_text("".join(f"[127.0.0.1]:{s.port} {SERVER_KEY.get_name()} "
                             f"{SERVER_KEY.get_base64()}\n"
                             for s in (good, silent, rejected, impostor, nopython, dropped,
                                       encrypted, junk, badworkdir, brokentorch)))

    def host(name: str, port: int, **extra) -> dict:
        return {"name": name, "address": "127.0.0.1", "port": port, **extra}

    hosts_yaml = tmp_path / "hosts.yaml"
    hosts_yaml.write_text(yaml.safe_dump({
        "defaults": {"user": "tester", "identity_file": str(keys["plain"]),
                     "python": sys.executable, "workdir": str(tmp_path / "work")},
        "ssh": {"known_hosts": str(known), "connect_timeout": 2},
        "backend": "gloo",
        "hosts": [
            host("good", good.port),
            host("refused", refused_port),
            host("silent", silent.port),
            host("rejected", rejected.port),
            host("impostor", impostor.port),
            host("nopython", nopython.port, python="/nonexistent/bin/python3"),
            host("dropped", dropped.port),
            host("encrypted", encrypted.port, identity_file=str(keys["encrypted"])),
            host("junk", junk.port, identity_file=str(keys["garbage"])),
            host("badworkdir", badworkdir.port, workdir="/proc/ddpcheck-cannot-be-here"),
            host("brokentorch", brokentorch.port,
                 env={"PYTHONPATH": str(broken.parent)}),
        ]}, sort_keys=False))
    report_path = tmp_path / "report.json"
    began = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "ddpcheck", "preflight", str(hosts_yaml),
                           "--json", str(report_path), "-v", "--timeout", "120"],
                          capture_output=True, text=True, timeout=200)
    took = time.monotonic() - began
    report = json.loads(report_path.read_text())
    assert done.returncode == 1, done.stdout + done.stderr
    assert report["verdict"] == "fail"
    # each faulty host's own finding (every host here is this machine: they also share a
    # hostname, which the hostname check reports, as it should)
    by_host = {f["host"]: f for f in report["findings"] if f["host"] and f["root_cause"]
               and f["message"].startswith(f"{f['host']}: ")}
    expected = {
        "refused": ("ssh", "connect", "Connection refused"),
        "silent": ("ssh", "connect", "no SSH banner"),
        "rejected": ("ssh", "connect", "authentication failed as tester"),
        "impostor": ("ssh", "connect", "HOST KEY CHANGED"),
        "nopython": ("python", "stage0", "'/nonexistent/bin/python3' not found"),
        "dropped": ("ssh", "stage0", "connection was lost during stage 0"),
        "encrypted": ("ssh", "connect", "is encrypted"),
        "junk": ("ssh", "connect", "not a private key ddpcheck can read"),
        "badworkdir": ("resources", "stage0", "/proc/ddpcheck-cannot-be-here"),
        "brokentorch": ("torch_import", "stage0", "libcudart.so.12: cannot open"),
    }
    for name, (check, stage, words) in expected.items():
        finding = by_host.get(name)
        assert finding is not None, (name, report["findings"])
        assert finding["check"] == check and finding["root_cause"], finding
        assert finding["message"].startswith(f"{name}: {stage}: "), finding
        assert words in finding["message"], finding
    hosts = {h["name"]: h for h in report["hosts"]}
    assert hosts["good"]["reachable"] and hosts["good"]["error"] is None
    assert hosts["good"]["hostname"] == socket.gethostname()
    assert hosts["good"]["versions"]["torch"]
    assert "good" not in by_host
    assert not hosts["refused"]["reachable"] and not hosts["dropped"]["reachable"]
    assert report["ranks"] == [] and "launched torchrun" not in done.stderr
    assert "Traceback" not in done.stderr and "Exception" not in done.stderr
    # every connect fault answers within its connect timeout; the run within stage 0's time
    assert took < 90, took
    # nothing secret anywhere: key bodies, the passphrase, the contents of a bad key file
    outputs = {"stdout": done.stdout, "stderr": done.stderr, "json": report_path.read_text()}
    secrets = [PASSPHRASE, SECRET_IN_A_FILE, *key_material(keys["plain"]),
               *key_material(keys["encrypted"])]
    assert len(secrets) > 4
    for where, text in outputs.items():
        for secret in secrets:
            assert secret not in text, f"{secret[:12]}... in {where}"


def spec_of(*pairs: tuple[str, FakeSSHServer], tmp_path: Path, **host_extra) -> ClusterSpec:
    """A ClusterSpec over in-process servers (one known_hosts line each)."""
    keys = write_keys(tmp_path)
    known = tmp_path / "known_hosts"
    known.write_text("".join(s.known_hosts_line() + "\n" for _, s in pairs))
    hosts = tuple(HostSpec(name=name, address="127.0.0.1", port=server.port, user="tester",
                           identity_file=str(keys["plain"]), python=sys.executable,
                           workdir=str(tmp_path / f"work-{name}"), **host_extra)
                  for name, server in pairs)
    return ClusterSpec(hosts=hosts, ssh=SSHSpec(known_hosts=str(known), connect_timeout=2),
                       rendezvous_port=free_port(), backend=Backend.GLOO, source="test")


def quiet() -> Progress:
    return Progress(open("/dev/null", "w"))


def test_stage0_deadline_fires_and_the_host_counts_as_not_checked(servers, tmp_path):
    stuck = servers(by_command(run_locally, facts=hang))
    spec = spec_of(("stuck", stuck), tmp_path=tmp_path)
    began = time.monotonic()
    report = run_preflight(spec, PreflightOptions(timeout_s=60, stage0_timeout_s=1.5), quiet())
    took = time.monotonic() - began
    assert 1.4 <= took < 5, took
    [finding] = [f for f in report.findings if f.host == "stuck"]
    assert finding.check == "timeout" and "stage 0 did not finish" in finding.message
    assert report.exit_code == 3  # could not be checked, not a failed check
    assert wait_for(lambda: len(stuck.observed.hangups) == 1)  # hung up remotely


def test_whole_command_timeout_bounds_stage0(servers, tmp_path):
    stuck = servers(by_command(run_locally, facts=hang))
    spec = spec_of(("stuck", stuck), tmp_path=tmp_path)
    began = time.monotonic()
    report = run_preflight(spec, PreflightOptions(timeout_s=2.0, stage0_timeout_s=60), quiet())
    took = time.monotonic() - began
    assert 1.9 <= took < 5, took
    assert [f.check for f in report.findings if f.host == "stuck"] == ["timeout"]


def test_whole_command_timeout_bounds_connect(servers, tmp_path):
    silent = servers(banner_delay_s=60)
    spec = spec_of(("silent", silent), tmp_path=tmp_path)
    spec = ClusterSpec(hosts=spec.hosts, ssh=SSHSpec(known_hosts=spec.ssh.known_hosts,
                                                     connect_timeout=60), source="test")
    began = time.monotonic()
    report = run_preflight(spec, PreflightOptions(timeout_s=1.5), quiet())
    assert time.monotonic() - began < 4
    # the run's --timeout, not the host's own connect timeout, ended the wait: not reached
    (found,) = [f for f in report.findings if f.host == "silent"]
    assert found.check == "timeout" and "not reached in time: its ssh connect" in found.message
    assert not found.root_cause
    assert report.exit_code == 3


def wait_for(condition, seconds: float = 5.0) -> bool:
    ends = time.monotonic() + seconds
    while not condition() and time.monotonic() < ends:
        time.sleep(0.05)
    return condition()


def test_launch_deadline_fires_and_a_lost_launch_is_an_ssh_finding(servers, tmp_path):
    """Stage 0 and the rendezvous check run for real on both hosts; then one host's launch
    never answers (the transport gives up at the agent's deadline plus the grace and hangs
    it up), the other's connection drops mid-stream."""
    lonely = servers(by_command(run_locally, **{"agent launch": hang}))
    flaky = servers(by_command(run_locally, **{"agent launch": drop_mid_stream(b"torchrun")}))
    spec = spec_of(("lonely", lonely), ("flaky", flaky), tmp_path=tmp_path)
    options = PreflightOptions(timeout_s=120, launch=LaunchOptions(deadline_s=1.0),
                               launch_grace_s=1.0)
    report = run_preflight(spec, options, quiet())
    # (both hosts are this machine, whose hostname may resolve to loopback: the hostname
    # check says so; the launch findings are these)
    errors = {f.host: f for f in report.findings
              if f.severity.value == "error" and f.check in ("timeout", "ssh")}
    assert errors["lonely"].check == "timeout"
    assert "no answer within the deadline" in errors["lonely"].message
    launch = [c for c in lonely.observed.commands if "agent launch" in c]
    assert len(launch) == 1 and wait_for(lambda: lonely.observed.hangups == launch)
    assert errors["flaky"].check == "ssh" and "connection was lost" in errors["flaky"].message
    hosts = {h.name: h for h in report.hosts}
    assert not hosts["flaky"].reachable and hosts["flaky"].stage == "done"
    assert hosts["lonely"].reachable and hosts["lonely"].launch_stopped == "deadline"
    assert report.exit_code == 1  # the timeout during launch is a failed check


def test_a_torch_that_is_installed_but_will_not_import_is_named_at_launch(servers, tmp_path):
    """Stage 0 reads torch without importing it (its version.py is whole here, as on a host
    whose CUDA libraries are missing), so the import failure is seen by torchrun's own import
    on that host: named there, as ``torch_import``, the root cause, and no rank started."""
    import torch

    site = broken_torch(tmp_path / "site", "libcudart.so.12: cannot open shared object file")
    broken = servers()
    spec = spec_of(("broken", broken), tmp_path=tmp_path,
                   env={"PYTHONPATH": str(site)})
    report = run_preflight(spec, PreflightOptions(timeout_s=120), quiet())
    host = report.hosts[0]
    assert host.versions["torch"] == torch.__version__  # stage 0 passed, torch unimported
    assert any("agent facts" in c and "--torch inspect" in c for c in broken.observed.commands)
    [finding] = [f for f in report.findings if f.root_cause]
    assert finding.check == "torch_import" and finding.host == "broken"
    assert finding.message.startswith("broken: done: launch: import torch failed: "
                                      "ImportError: libcudart.so.12"), finding.message
    assert report.ranks == () and report.exit_code == 1
