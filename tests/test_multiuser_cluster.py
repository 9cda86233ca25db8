"""Multi-user nodes, for real: a second user account (made here with useradd, removed at the
end) plants code, directories and links where ddpcheck run as root would once have used them,
on the namespace cluster.

Each host's sshd has its own mount namespace: a plant in the default workdir is made on a tmpfs
mounted over that path in one host's namespace only, so nothing else on this machine sees it.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import subprocess
import sys
import sysconfig
import uuid
from pathlib import Path

import pytest

from hostsfile import cluster_hosts_yaml
from torchrunjob import start_job

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def other_user():
    """A real second account (no home, no login shell), removed at the end."""
    if os.geteuid() != 0:
        pytest.skip("making a user account needs root")
    name = f"ddpc{uuid.uuid4().hex[:8]}"
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                    "--user-group", name], check=True, capture_output=True)
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], capture_output=True)


def as_user(user, argv: list[str]) -> list[str]:
    return ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups",
            "--", *argv]


def user_python(user) -> list[str]:
    """An interpreter with ddpcheck and psutil that ``user`` may run: this one, else the
    system's with this one's packages on PYTHONPATH (this one may live in root's home)."""
    repo = str(Path(__file__).resolve().parent.parent)
    for argv in ([sys.executable],
                 ["env", f"PYTHONPATH={repo}:{sysconfig.get_paths()['purelib']}",
                  "/usr/bin/python3"]):
        check = ("import ddpcheck, psutil, subprocess, sys; "
                 "subprocess.run([sys.executable, '-c', 'pass'], check=True)")
        probe = subprocess.run(as_user(user, [*argv, "-c", check]), capture_output=True,
                               cwd="/")
        if probe.returncode == 0:
            return argv
    pytest.skip(f"no python with ddpcheck that {user.pw_name} may run")


def in_host(cluster, host, argv: list[str]) -> list[str]:
    """``argv`` in the host's own mount namespace (that of its sshd), as root."""
    return ["nsenter", "-t", str(cluster.sshd_pid(host)), "-m", "--", *argv]


@contextlib.contextmanager
def tmpfs_in(cluster, host, target: Path, options: str):
    enter = ["nsenter", "-t", str(cluster.sshd_pid(host)), "-m", "--"]
    subprocess.run([*enter, "mount", "-t", "tmpfs", "-o", options, "ddpcheck-test",
                    str(target)], check=True, capture_output=True)
    try:
        yield target
    finally:
        subprocess.run([*enter, "umount", "-l", str(target)], capture_output=True)


def ddpcheck(*args: str, timeout: float = 240, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ddpcheck", *args], capture_output=True,
                          text=True, timeout=timeout, **kw)


def errors_by_host(report: dict) -> dict[str, dict]:
    return {f["host"]: f for f in report["findings"] if f["severity"] == "error"}


PLANT = """import os
open({marker!r}, "a").write("planted code ran as uid %d\\n" % os.getuid())
"""


def test_a_ddpcheck_planted_in_the_default_workdir_never_runs(ns_cluster, other_user,
                                                               tmp_path):
    """Another user made root's default workdir (/tmp/ddpcheck-0) on h1 and put a ``ddpcheck``
    package (and torch, and sitecustomize) in it that writes a marker: the preflight refuses
    the workdir on h1 with a resources finding naming path, owner and mode; the marker is never
    written; h2, whose default workdir is root's own, passes stage 0."""
    h1, h2 = ns_cluster.hosts[:2]
    workdir = Path(f"/tmp/ddpcheck-{os.geteuid()}")
    workdir.mkdir(mode=0o700, exist_ok=True)  # the mount point; root's own on every other host
    marker = tmp_path / "pwned"
    options = f"uid={other_user.pw_uid},gid={other_user.pw_gid},mode=0755,size=4m"
    with tmpfs_in(ns_cluster, h1, workdir, options):
        script = "; ".join([
            f"mkdir -p {workdir}/ddpcheck/remote {workdir}/torch",
            *[f"printf '%s' \"$PLANT\" > {workdir}/{name}" for name in (
                "ddpcheck/__init__.py", "ddpcheck/remote/__init__.py",
                "ddpcheck/remote/agent.py", "torch/__init__.py", "sitecustomize.py")]])
        planted = subprocess.run(
            in_host(ns_cluster, h1, as_user(other_user, ["/bin/sh", "-c", script])),
            env={**os.environ, "PLANT": PLANT.format(marker=str(marker))},
            capture_output=True, text=True)
        assert planted.returncode == 0, planted.stderr
        listing = subprocess.run(in_host(ns_cluster, h1, ["ls", "-ln", str(workdir)]),
                                 capture_output=True, text=True).stdout
        assert f" {other_user.pw_uid} " in listing and "ddpcheck" in listing
        # the plant is real: started there the old way, Python runs it
        old_way = subprocess.run(in_host(ns_cluster, h1, [
            "/bin/sh", "-c", f"cd {workdir} && exec {sys.executable} -c 'import ddpcheck'"]),
            capture_output=True, text=True)
        assert old_way.returncode == 0 and marker.exists(), old_way.stderr
        marker.unlink()

        hosts_yaml = cluster_hosts_yaml(ns_cluster, tmp_path / "hosts.yaml", [h1, h2],
                                        port=29641)
        text = hosts_yaml.read_text()
        hosts_yaml.write_text("\n".join(line for line in text.splitlines()
                                        if "workdir:" not in line) + "\n")  # the default
        report_path = tmp_path / "report.json"
        done = ddpcheck("preflight", str(hosts_yaml), "--json", str(report_path))
    report = json.loads(report_path.read_text())
    assert not marker.exists(), marker.read_text()
    assert done.returncode == 1, done.stdout + done.stderr
    errors = errors_by_host(report)
    assert set(errors) == {h1.name}, errors
    finding = errors[h1.name]
    assert finding["check"] == "resources"
    assert (f"workdir {workdir} is owned by {other_user.pw_name} (uid {other_user.pw_uid}), "
            f"mode 0755, not by you (uid 0): refused") in finding["message"]
    assert "StrictModes" in finding["message"]
    hosts = {h["name"]: h for h in report["hosts"]}
    assert hosts[h2.name]["error"] is None and hosts[h2.name]["hostname"] == h2.name


def test_a_link_planted_in_place_of_the_workdir_is_not_followed(ns_cluster, other_user,
                                                                 tmp_path):
    """hosts.yaml names a workdir in a shared sticky folder (like /tmp) that does not exist
    yet; another user puts a link there to a folder of root's: refused, nothing written in
    the folder it points to. Also a run directory cannot be planted: it is made by mkdtemp in
    a private workdir (see the other host, which runs with --keep)."""
    h1, h2 = ns_cluster.hosts[:2]
    shared = Path(f"/tmp/ddpcheck-test-shared-{uuid.uuid4().hex[:8]}")
    shared.mkdir()
    shared.chmod(0o1777)
    victim = tmp_path / "roots-folder"
    victim.mkdir(mode=0o700)
    try:
        link = shared / "work"
        subprocess.run(as_user(other_user, ["ln", "-s", str(victim), str(link)]), check=True)
        hosts_yaml = cluster_hosts_yaml(ns_cluster, tmp_path / "hosts.yaml", [h1, h2],
                                        port=29643, host_overrides={h1.name: {
                                            "workdir": str(link)}})
        report_path = tmp_path / "report.json"
        done = ddpcheck("preflight", str(hosts_yaml), "--json", str(report_path))
        report = json.loads(report_path.read_text())
        assert done.returncode == 1, done.stdout + done.stderr
        errors = errors_by_host(report)
        assert set(errors) == {h1.name}
        assert errors[h1.name]["check"] == "resources"
        assert (f"workdir {link} is a symbolic link (owned by {other_user.pw_name} "
                f"(uid {other_user.pw_uid})") in errors[h1.name]["message"]
        assert list(victim.iterdir()) == []  # nothing was written through the link
    finally:
        subprocess.run(["rm", "-rf", str(shared)])


def test_a_group_writable_workdir_is_refused_on_that_host_only(ns_cluster, tmp_path):
    h1, h2, h3 = ns_cluster.hosts[:3]
    shared = tmp_path / "group-work"
    shared.mkdir()
    shared.chmod(0o775)
    hosts_yaml = cluster_hosts_yaml(ns_cluster, tmp_path / "hosts.yaml", [h1, h2, h3],
                                    port=29645, host_overrides={h2.name: {
                                        "workdir": str(shared)}})
    report_path = tmp_path / "report.json"
    done = ddpcheck("preflight", str(hosts_yaml), "--json", str(report_path))
    report = json.loads(report_path.read_text())
    assert done.returncode == 1, done.stdout + done.stderr
    errors = errors_by_host(report)
    assert set(errors) == {h2.name}
    message = errors[h2.name]["message"]
    assert errors[h2.name]["check"] == "resources" and ": stage0: " in message
    assert (f"workdir {shared} is owned by root (uid 0), mode 0775: writable by group or "
            f"others, refused") in message
    hosts = {h["name"]: h for h in report["hosts"]}
    assert all(hosts[h.name]["error"] is None for h in (h1, h3))
    assert list(shared.iterdir()) == []  # nothing ran or was written there


def test_a_link_planted_at_the_report_path_is_not_written_through(other_user, tmp_path):
    """``--json /shared/report.json`` where another user put a link to a file of root's:
    refused with a message, the file it points to unchanged. The same link made by root
    itself is followed, as a user who made it expects."""
    shared = Path(f"/tmp/ddpcheck-test-shared-{uuid.uuid4().hex[:8]}")
    shared.mkdir()
    shared.chmod(0o1777)
    victim = tmp_path / "precious.txt"
    victim.write_text("root's file\n")
    try:
        link = shared / "report.json"
        subprocess.run(as_user(other_user, ["ln", "-s", str(victim), str(link)]), check=True)
        done = ddpcheck("node", "--no-torch", "--json", str(link), cwd=tmp_path)
        assert victim.read_text() == "root's file\n"
        assert link.is_symlink()
        assert f"cannot write {link}: {link} is a symbolic link owned by " \
               f"{other_user.pw_name}" in done.stderr
        assert "planted by another user: refused" in done.stderr
        assert "Traceback" not in done.stderr
        own = tmp_path / "own-link.json"
        own.symlink_to(victim)
        ddpcheck("node", "--no-torch", "--json", str(own), cwd=tmp_path)
        assert json.loads(victim.read_text())["command"] == "node" and own.is_symlink()
    finally:
        subprocess.run(["rm", "-rf", str(shared)])


def test_a_heartbeat_folder_planted_by_another_user_is_refused(other_user, tmp_path):
    """The Monitor's default folder in a shared /dev/shm: another user made it, or put a link
    to a folder of root's in its place: the Monitor refuses it, nothing is written there."""
    shm = Path(f"/tmp/ddpcheck-test-shm-{uuid.uuid4().hex[:8]}")  # reachable by the other user
    shm.mkdir()
    shm.chmod(0o1777)
    victim = tmp_path / "victim"
    victim.mkdir(mode=0o700)
    folder = shm / f"ddpcheck-heartbeat-{os.getuid()}"
    code = ("import ddpcheck.core.heartbeat as h, ddpcheck.injob.monitor as m, sys\n"
            "h.SHM_DIR = sys.argv[1]\n"
            "try:\n    m.Monitor(env={'RANK': '0', 'WORLD_SIZE': '1'}).close()\n"
            "except PermissionError as exc:\n    print('refused:', exc); sys.exit(3)\n")
    try:
        for plant in (["mkdir", "-m", "0777", str(folder)],
                      ["ln", "-s", str(victim), str(folder)]):
            subprocess.run(["rm", "-rf", str(folder)], check=True)
            subprocess.run(as_user(other_user, plant), check=True)
            done = subprocess.run([sys.executable, "-c", code, str(shm)], capture_output=True,
                                  text=True, timeout=60, cwd=tmp_path)
            assert done.returncode == 3, done.stdout + done.stderr
            assert f"heartbeat folder {folder}" in done.stdout
            assert other_user.pw_name in done.stdout
            assert list(victim.iterdir()) == []
    finally:
        subprocess.run(["rm", "-rf", str(shm)])


def test_hang_by_an_ordinary_user_ignores_another_users_job(ns_cluster, other_user, tmp_path):
    """root's torchrun job runs on h3; an ordinary user runs ``ddpcheck hang`` there: the job
    is not reported, the scan says plainly that other users' processes were not inspected,
    and nothing fails (no traceback, the report is written)."""
    h3 = ns_cluster.hosts[2]
    job = start_job(ns_cluster, [h3], 2, 29647, tmp_path / "job")
    try:
        job.wait_ready()
        out = Path(f"/tmp/ddpcheck-test-hang-{uuid.uuid4().hex[:8]}")
        out.mkdir(mode=0o700)
        os.chown(out, other_user.pw_uid, other_user.pw_gid)
        report_path = out / "hang.json"
        argv = as_user(other_user, ["env", f"HOME={out}", *user_python(other_user), "-m",
                                    "ddpcheck", "hang", "--json", str(report_path),
                                    "--window", "1"])
        done = ns_cluster.run_in(h3, argv, capture_output=True, text=True, timeout=120,
                                 cwd="/")
        try:
            assert report_path.exists(), done.stdout + done.stderr
            report = json.loads(report_path.read_text())
        finally:
            subprocess.run(["rm", "-rf", str(out)])
        assert "Traceback" not in done.stderr, done.stderr
        assert report["jobs"] == [], report["jobs"]
        messages = [f["message"] for f in report["findings"]]
        assert any("Python process(es) of other users were not inspected" in m
                   for m in messages), messages
        assert not any(f["severity"] == "error" for f in report["findings"]), messages
        # root, the job's user, sees it on the same host
        hosts_yaml = cluster_hosts_yaml(ns_cluster, tmp_path / "hosts.yaml", [h3])
        seen = ddpcheck("hang", str(hosts_yaml), "--json", str(tmp_path / "root.json"),
                        "--window", "1")
        root_report = json.loads((tmp_path / "root.json").read_text())
        assert len(root_report["jobs"]) == 1, seen.stdout + seen.stderr
    finally:
        job.stop()
