"""Faults injected for real on the namespace cluster, through ``ddpcheck preflight`` as users
run it: a cut link, a stopped sshd, a changed host key, an unusable workdir, a rank killed (with
hostile env values), a rank stopped. Each test checks what is reported, the exit code, how long
the answer took, and that nothing is left behind (processes, run directories).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

import pytest

from hostsfile import cluster_hosts_yaml
from test_preflight_cluster import wait_until_clean

pytestmark = pytest.mark.cluster


def preflight(hosts_yaml: Path, report: Path, *options: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ddpcheck", "preflight", str(hosts_yaml),
                             "--json", str(report), *options],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = 240) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def run_preflight(hosts_yaml: Path, report: Path, *options: str) -> tuple[int, str, str, float]:
    began = time.monotonic()
    proc = preflight(hosts_yaml, report, *options)
    out, err = finish(proc)
    return proc.returncode, out, err, time.monotonic() - began


def ranks_on(cluster, host) -> list[tuple[int, int, int]]:
    """(pid, rank, local rank) of the ranks running on ``host`` (processes in its namespace
    whose environment torchrun gave a RANK and a LOCAL_RANK)."""
    found = []
    for pid in cluster.pids_in(host):
        try:
            raw = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        env = dict(item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
        if b"LOCAL_RANK" in env and b"RANK" in env:
            found.append((pid, int(env[b"RANK"]), int(env[b"LOCAL_RANK"])))
    return sorted(found, key=lambda r: r[1])


def wait_for_ranks(cluster, hosts: Sequence, count: int, proc: subprocess.Popen,
                   seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while sum(len(ranks_on(cluster, h)) for h in hosts) < count:
        assert proc.poll() is None, finish(proc)
        assert time.monotonic() < deadline, "the ranks never started"
        time.sleep(0.2)


def process_state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def run_dirs_left(workdirs: Sequence[Path]) -> list[Path]:
    return [p for w in workdirs if w.exists() for p in w.iterdir()
            if p.name.startswith("ddpcheck-")]


def assert_nothing_left(cluster, workdirs: Sequence[Path], seconds: float = 20) -> None:
    wait_until_clean(cluster, seconds)
    deadline = time.monotonic() + seconds
    while run_dirs_left(workdirs) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert run_dirs_left(workdirs) == []


def errors_by_host(report: dict) -> dict[str, dict]:
    return {f["host"]: f for f in report["findings"] if f["severity"] == "error" and f["host"]}


# -- hosts that cannot be reached --------------------------------------------------------------


def test_cut_link_stopped_sshd_and_changed_key_each_named_while_the_rest_stand(ns_cluster,
                                                                            tmp_path):
    ok, cut, no_sshd, rekeyed = ns_cluster.hosts
    hosts_yaml = cluster_hosts_yaml(ns_cluster, tmp_path / "hosts.yaml", port=29620)
    report_path = tmp_path / "report.json"
    ns_cluster.set_link(cut, up=False)
    ns_cluster.stop_sshd(no_sshd)
    ns_cluster.regenerate_host_key(rekeyed)  # known_hosts still has the old key
    try:
        code, out, err, took = run_preflight(hosts_yaml, report_path)
    finally:
        ns_cluster.set_link(cut, up=True)
        ns_cluster.start_sshd(no_sshd)
        ns_cluster.write_known_hosts()
    report = json.loads(report_path.read_text())
    assert code == 3 and report["verdict"] == "unreachable", out + err
    errors = errors_by_host(report)
    assert set(errors) == {cut.name, no_sshd.name, rekeyed.name}
    assert all(f["check"] == "ssh" and f["root_cause"] for f in errors.values())
    assert errors[cut.name]["message"].startswith(f"{cut.name}: connect: connect to "
                                                  f"{cut.address}:22 timed out after 5s")
    assert "Connection refused" in errors[no_sshd.name]["message"]
    assert "HOST KEY CHANGED" in errors[rekeyed.name]["message"]
    assert f"ssh-keygen -f {ns_cluster.known_hosts} -R {rekeyed.address}" in \
        errors[rekeyed.name]["message"]
    hosts = {h["name"]: h for h in report["hosts"]}
    assert hosts[ok.name]["reachable"] and hosts[ok.name]["hostname"] == ok.name
    assert hosts[ok.name]["versions"]["torch"]
    assert [h["reachable"] for h in report["hosts"]] == [True, False, False, False]
    assert report["ranks"] == [] and "launched torchrun" not in err
    assert took < 5 + 60, took  # the connect timeout, while h1's stage 0 runs
    print(f"connect faults answered in {took:.1f}s")


def test_a_master_without_sshd_is_named_and_the_others_stop_trying_to_reach_it(ns_cluster,
                                                                              tmp_path):
    """The rendezvous check is made by stage 0: every host tries the master's port for up to
    5 s. When the master's stage 0 cannot run, the launcher's stop line ends those tries at
    once: the others are checked in their usual time, and only the master is a finding."""
    master, *others = ns_cluster.hosts[:3]
    hosts_yaml = cluster_hosts_yaml(ns_cluster, tmp_path / "hosts.yaml", [master, *others],
                                    port=29621)
    report_path = tmp_path / "report.json"
    ns_cluster.stop_sshd(master)
    try:
        code, out, err, took = run_preflight(hosts_yaml, report_path, "-v")
    finally:
        ns_cluster.start_sshd(master)
    report = json.loads(report_path.read_text())
    assert code == 3 and report["verdict"] == "unreachable", out + err
    errors = errors_by_host(report)
    assert set(errors) == {master.name} and errors[master.name]["check"] == "ssh"
    assert not [f for f in report["findings"] if f["check"] == "rendezvous"
                and f["severity"] == "error"]
    for host in others:
        (line,) = [x for x in err.splitlines() if f"{host.name}: checked:" in x]
        seconds = float(line.rsplit(" in ", 1)[1].rstrip("s"))
        assert seconds < 4.0, line  # not the 5 s of tries a master that never listens costs
    assert report["ranks"] == [] and "launched torchrun" not in err


# -- a workdir that cannot be used ------------------------------------------------------------


@contextlib.contextmanager
def mounted_in(cluster, host, target: Path, options: str):
    """A tmpfs on ``target`` in the host's own mount namespace (that of its sshd), so that
    only this host sees it: its disk, not the others'. (A tmpfs is 1777 unless ``mode=`` says
    otherwise, and a workdir others may write is refused before any write.)"""
    target.mkdir(parents=True, exist_ok=True)
    enter = ["nsenter", "-t", str(cluster.sshd_pid(host)), "-m", "--"]
    subprocess.run([*enter, "mount", "-t", "tmpfs", "-o", options, "ddpcheck-test", str(target)],
                   check=True, capture_output=True)
    try:
        yield target
    finally:
        subprocess.run([*enter, "umount", "-l", str(target)], capture_output=True)


def test_read_only_full_or_missing_workdir_is_a_finding_for_that_host(ns_cluster, tmp_path):
    ok, read_only, full, cannot_create = ns_cluster.hosts
    mounts = tmp_path / "mounts"
    with contextlib.ExitStack() as stack:
        ro = stack.enter_context(mounted_in(ns_cluster, read_only, mounts / "ro", "ro,size=1m,mode=0755"))
        tiny = stack.enter_context(mounted_in(ns_cluster, full, mounts / "tiny", "size=64k,mode=0755"))
        ro_parent = stack.enter_context(mounted_in(ns_cluster, cannot_create, mounts / "ro4",
                                                   "ro,size=1m,mode=0755"))
        overrides = {read_only.name: {"workdir": str(ro)}, full.name: {"workdir": str(tiny)},
                     cannot_create.name: {"workdir": str(ro_parent / "sub")}}
        hosts_yaml = cluster_hosts_yaml(ns_cluster, tmp_path / "hosts.yaml", port=29621,
                                        host_overrides=overrides)
        report_path = tmp_path / "report.json"
        code, out, err, took = run_preflight(hosts_yaml, report_path)
    report = json.loads(report_path.read_text())
    assert code == 1 and report["verdict"] == "fail", out + err
    errors = errors_by_host(report)
    assert set(errors) == {read_only.name, full.name, cannot_create.name}
    assert all(f["check"] == "resources" and ": stage0: " in f["message"]
               for f in errors.values())
    assert f"cannot write 1 MiB in {ro}: Read-only file system" in \
        errors[read_only.name]["message"]
    assert f"cannot write 1 MiB in {tiny}: No space left on device" in \
        errors[full.name]["message"]
    assert f"cannot create or enter the workdir {ro_parent / 'sub'}" in \
        errors[cannot_create.name]["message"]
    assert "Read-only file system" in errors[cannot_create.name]["message"]
    hosts = {h["name"]: h for h in report["hosts"]}
    assert hosts[ok.name]["error"] is None and hosts[ok.name]["hostname"] == ok.name
    assert all(h["reachable"] for h in report["hosts"])
    assert report["ranks"] == [] and "launched torchrun" not in err
    print(f"workdir faults answered in {took:.1f}s")


# -- ranks that die or stop during preflight ---------------------------------------------------


def rank_environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return {k.decode(): v.decode() for k, v in (item.split(b"=", 1) for item in raw.split(b"\0")
                                                if b"=" in item)}


def test_rank_killed_mid_preflight_is_named_as_the_root_cause(ns_cluster, tmp_path):
    """Also: env values with $(...), backticks, ; and quotes went through stage 0, the
    rendezvous check and torchrun on both hosts: the ranks have them byte for byte in their
    environment, and nothing in them ran."""
    h1, h2 = ns_cluster.hosts[:2]
    pwned = tmp_path / "pwned"
    hostile = {h1.name: f"$(touch {pwned}1); touch {pwned}2; `touch {pwned}3`",
               h2.name: f"x' ; touch {pwned}4 # \" $HOME && touch {pwned}5 | tee {pwned}6"}
    overrides = {name: {"env": {"GLOO_SOCKET_IFNAME": "eth0", "DDPCHECK_TEST_VALUE": value}}
                 for name, value in hostile.items()}
    hosts_yaml = cluster_hosts_yaml(ns_cluster, tmp_path / "hosts.yaml", [h1, h2], slots=2,
                                    port=29622, host_overrides=overrides)
    report_path = tmp_path / "report.json"
    # a billion barriers: the ranks are busy for good, a known place to kill one
    proc = preflight(hosts_yaml, report_path, "--iterations", "1000000000", "--skip",
                     "consistency", "--collective-timeout", "5", "--timeout", "200")
    try:
        wait_for_ranks(ns_cluster, [h1, h2], 4, proc)
        for host in (h1, h2):
            for pid, _, _ in ranks_on(ns_cluster, host):
                assert rank_environ(pid)["DDPCHECK_TEST_VALUE"] == hostile[host.name]
        time.sleep(1.0)
        [victim] = [r for r in ranks_on(ns_cluster, h2) if r[2] == 1]
        os.kill(victim[0], signal.SIGKILL)
        killed = time.monotonic()
        out, err = finish(proc)
        answered = time.monotonic() - killed
    finally:
        finish(proc)
    report = json.loads(report_path.read_text())
    assert list(tmp_path.glob("pwned*")) == [] and not Path("pwned1").exists()
    assert proc.returncode == 1 and report["verdict"] == "fail", out + err
    [root] = [f for f in report["findings"] if f["root_cause"]]
    assert (root["check"], root["host"], root["rank"]) == ("crash", h2.name, victim[1])
    assert "killed by SIGKILL" in root["message"] and str(victim[0]) in root["message"]
    ranks = {r["rank"]: r for r in report["ranks"]}
    assert sorted(ranks) == [0, 1, 2, 3]
    assert ranks[victim[1]]["status"] == "error" and ranks[victim[1]]["pid"] == victim[0]
    sibling = victim[1] - 1  # torchrun stopped h2's other rank, unless it failed first
    assert ranks[sibling]["status"] in ("missing", "error")
    assert all(ranks[r]["status"] == "error" for r in (0, 1))  # h1: their peer vanished
    assert answered < 5 + 5 + 30, answered  # collective timeout, grace, slack
    assert_nothing_left(ns_cluster, [tmp_path / "work-h1", tmp_path / "work-h2"])
    print(f"rank killed: answered {answered:.1f}s after the kill")


def test_rank_stopped_mid_preflight_is_named_as_timeout_and_nothing_hangs(ns_cluster, tmp_path):
    h1, h2 = ns_cluster.hosts[:2]
    hosts_yaml = cluster_hosts_yaml(ns_cluster, tmp_path / "hosts.yaml", [h1, h2], slots=1,
                                    port=29623)
    report_path = tmp_path / "report.json"
    proc = preflight(hosts_yaml, report_path, "--iterations", "1000000000", "--skip",
                     "consistency", "--collective-timeout", "5", "--timeout", "200")
    victim = None
    try:
        wait_for_ranks(ns_cluster, [h1, h2], 2, proc)
        time.sleep(2.0)
        [victim] = ranks_on(ns_cluster, h2)
        os.kill(victim[0], signal.SIGSTOP)
        stopped = time.monotonic()
        out, err = finish(proc)
        answered = time.monotonic() - stopped
        after = process_state(victim[0])  # before any clean-up of ours
    finally:
        finish(proc)
        if victim is not None:  # in case ddpcheck did not end it: continue it, then kill it
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim[0], signal.SIGCONT)
                os.kill(victim[0], signal.SIGKILL)
    report = json.loads(report_path.read_text())
    assert proc.returncode == 1 and report["verdict"] == "fail", out + err
    [root] = [f for f in report["findings"] if f["root_cause"]]
    assert (root["check"], root["host"], root["rank"]) == ("timeout", h2.name, victim[1])
    assert "was stopped (state T" in root["message"] and str(victim[0]) in root["message"]
    assert [r["status"] for r in report["ranks"]] == ["error", "timeout"]
    assert "asked to stop" in err  # h1 failed: h2 was asked to stop, not waited for
    assert answered < 5 + 5 + 30, answered  # collective timeout, grace, slack
    assert after in (None, "Z"), after  # ddpcheck's agent ended it (a zombie is dead)
    assert_nothing_left(ns_cluster, [tmp_path / "work-h1", tmp_path / "work-h2"])
    print(f"rank stopped: answered {answered:.1f}s after SIGSTOP")
