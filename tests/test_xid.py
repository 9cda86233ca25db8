"""Xid / SXid from the kernel log: real lines written to /dev/kmsg (root), read by ``ddpcheck
node``; a user the kernel will not show its log (kernel.dmesg_restrict) gets a plain statement."""

from __future__ import annotations

import json
import os
import pwd
import random
import re
import site
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

from ddpcheck.collect.facts import read_facts
from ddpcheck.analyze import xid
from ddpcheck.core import argtypes
from ddpcheck.model.records import Severity
from ddpcheck.remote import kernlog

ROOT = os.geteuid() == 0
DRIVER_LOAD = "<6>NVRM: loading NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar  5 22:23:47 UTC 2024"


# -- parsing (pure) ------------------------------------------------------------------------

@pytest.mark.parametrize("line, kind, number, bus, pid, process", [
    ("NVRM: Xid (PCI:0000:3b:00): 79, pid=1234, name=python, GPU has fallen off the bus.",
     "Xid", 79, "0000:3b:00.0", 1234, "python"),
    ("NVRM: Xid (PCI:0000:3B:00): 48, pid='<unknown>', name=<unknown>, An uncorrectable double "
     "bit error (DBE) has been detected on GPU in the framebuffer at partition 6, subpartition 0.",
     "Xid", 48, "0000:3b:00.0", None, None),
    ("NVRM: Xid (PCI:0000:18:00): 13, Graphics SM Warp Exception on (GPC 0, TPC 1, SM 0): "
     "Out Of Range Address", "Xid", 13, "0000:18:00.0", None, None),
    ("nvidia-nvswitch3: SXid (PCI:0000:c6:00.0): 12028, Non-fatal, Link 32 egress non-posted "
     "PRIV error (First)", "SXid", 12028, "0000:c6:00.0", None, None),
])
def test_driver_formats_are_parsed(line, kind, number, bus, pid, process):
    event = kernlog.parse_event(line)
    assert event is not None
    assert (event["kind"], event["xid"], event["bus_id"], event["pid"], event["process"]) == (
        kind, number, bus, pid, process)


@pytest.mark.parametrize("line", [
    "NVRM: loading NVIDIA UNIX x86_64 Kernel Module  550.54.15",
    "NVRM: GPU at PCI:0000:3b:00: GPU-5a3c1b2e-0000-0000-0000-000000000000",
    "NVRM: Xid (PCI:0000:zz:00): 79, pid=1, name=x, GPU has fallen off the bus.",
    "NVRM: Xid (PCI:0000:3b:00): , pid=1, no number",
    "NVRM: Xid PCI:0000:3b:00: 79 without the parentheses",
])
def test_other_and_malformed_lines_are_ignored(line):
    assert kernlog.parse_event(line) is None


def test_repeated_xids_are_counted_not_listed():
    line = "NVRM: Xid (PCI:0000:18:00): 13, Graphics Exception: ESR 0x{}"
    counted = kernlog.count_events([(100.0 + i, line.format(i)) for i in range(500)])
    (event,) = counted["events"]
    assert (event["count"], event["first"], event["last"]) == (500, 100.0, 599.0)
    assert event["message"].endswith("0x499")


def test_only_events_since_the_last_driver_load_count():
    xid79 = "NVRM: Xid (PCI:0000:3b:00): 79, pid=1, name=x, GPU has fallen off the bus."
    counted = kernlog.count_events([(1.0, xid79), (2.0, DRIVER_LOAD[3:]), (3.0, xid79.replace(
        "79", "48", 1))])
    assert [e["xid"] for e in counted["events"]] == [48] and counted["driver_loaded"] == 2.0


def test_kmsg_records_and_since():
    assert kernlog.parse_kmsg_record("4,1234,5678901,-;NVRM: Xid (PCI:0000:3b:00): 79, x\n"
                                     " SUBSYSTEM=pci\n") == (5678901, "NVRM: Xid (PCI:0000:3b:00):"
                                                                      " 79, x")
    assert kernlog.parse_kmsg_record("no header at all") is None
    now = 1_700_000_000.0
    assert argtypes.parse_since("boot") is None
    assert argtypes.parse_since("10m", now) == now - 600
    assert argtypes.parse_since("1700000000") == now
    with pytest.raises(ValueError, match="not a time"):
        argtypes.parse_since("yesterday")


def test_findings_name_gpu_meaning_action_and_severity():
    facts = {"nvml": {"available": True, "gpus": [
        {"index": 3, "bus_id": "0000:3b:00.0", "uuid": "GPU-aaaa"}]},
        "kernel_log": {"source": "/dev/kmsg", **kernlog.count_events([
            (1.0, "NVRM: Xid (PCI:0000:3b:00): 79, pid=7, name=python, GPU has fallen off "
                  "the bus."),
            (2.0, "NVRM: Xid (PCI:0000:3b:00): 94, pid=7, name=python, Contained: SM (0x1)."),
            (3.0, "NVRM: Xid (PCI:0000:5e:00): 999, pid=7, name=python, something new"),
        ])}}
    findings = xid.xid_findings("n1", read_facts(facts))
    by_number = {f.message.split(" on ")[0].split()[-1]: f for f in findings}
    assert by_number["79"].severity is Severity.ERROR
    assert "GPU 3 (0000:3b:00.0, GPU-aaaa)" in by_number["79"].message
    assert "fallen off the bus" in by_number["79"].message and "drain" in by_number["79"].message
    assert by_number["94"].severity is Severity.WARNING and "contained" in by_number["94"].message
    assert by_number["999"].severity is Severity.WARNING
    assert "not in NVML's inventory" in by_number["999"].message
    assert all(f.check == "gpu_health" and f.host == "n1" for f in findings)


# -- the real kernel log -----------------------------------------------------------------

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def node(*args: str, user: str = "", python: str = sys.executable,
         cwd: str = None) -> subprocess.CompletedProcess:
    argv = [python, "-m", "ddpcheck", "node", "--no-torch", *args]
    if user:
        argv = ["runuser", "-u", user, "--", *argv]
    path = os.pathsep.join([REPO, *site.getsitepackages()])
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=cwd,
                          env={**os.environ, "PYTHONPATH": path})


def interpreter_for(user: str) -> str:
    """This interpreter, or one of the same version the user may execute (a venv under /root
    is out of a user's reach); its packages come from PYTHONPATH."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (sys.executable, shutil.which(version) or "", f"/usr/bin/{version}",
                      f"/usr/local/bin/{version}"):
        if candidate and subprocess.run(["runuser", "-u", user, "--", candidate, "-c", "1"],
                                        capture_output=True).returncode == 0:
            return candidate
    pytest.skip(f"NOT RUN: no {version} interpreter that user {user} may execute")


def write_kmsg(line: str) -> None:
    """One record, one open: /dev/kmsg rate-limits writers per open file (10 per 5 s)."""
    fd = os.open("/dev/kmsg", os.O_WRONLY)
    try:
        os.write(fd, line.encode() + b"\n")
    finally:
        os.close(fd)


@pytest.mark.skipif(not ROOT or not os.access("/dev/kmsg", os.W_OK),
                    reason="writes to /dev/kmsg: needs root")
def test_xids_written_to_kmsg_are_named_by_ddpcheck_node(tmp_path):
    domain = f"{random.randint(0x1000, 0xfffe):04x}"  # this run's own PCI domain
    since = time.time() - 0.5
    lines = [
        f"<3>NVRM: Xid (PCI:{domain}:3b:00): 79, pid=4242, name=python3, GPU has fallen off "
        f"the bus.",
        f"<3>NVRM: Xid (PCI:{domain}:5e:00): 48, pid='<unknown>', name=<unknown>, An "
        f"uncorrectable double bit error (DBE) has been detected on GPU in the framebuffer at "
        f"partition 6, subpartition 0.",
        *[f"<4>NVRM: Xid (PCI:{domain}:86:00): 13, pid=99, name=train, Graphics SM Warp "
          f"Exception on (GPC 1, TPC {i}, SM 0): Out Of Range Address" for i in range(3)],
        f"<4>NVRM: Xid (PCI:{domain}:af:00): 63, pid='<unknown>', name=<unknown>, Row Remapper: "
        f"New row marked for remapping, reset gpu to activate.",
        f"<3>NVRM: Xid (PCI:{domain}:d8:00): 119, pid=77, name=python3, Timeout after 6s of "
        f"waiting for RPC response from GPU0 GSP!",
        f"<4>nvidia-nvswitch2: SXid (PCI:{domain}:c6:00.0): 12028, Non-fatal, Link 32 egress "
        f"non-posted PRIV error (First)",
        f"<6>NVRM: GPU at PCI:{domain}:3b:00: GPU-00000000-1111-2222-3333-444444444444",
        f"<3>NVRM: Xid (PCI:{domain}:zz:00): 79, pid=1, name=x, malformed bus id",
        f"<3>NVRM: Xid (PCI:{domain}:3c:00): , no Xid number",
    ]
    try:
        for line in lines:
            write_kmsg(line)
        report_path = tmp_path / "node.json"
        done = node("--since", f"{since:.3f}", "--json", str(report_path), cwd=str(tmp_path))
        later = kernlog.read_xids(since=time.time() + 1)  # the since boundary, in-process
    finally:
        # A driver load ends the events above for every later reader (other tests of this
        # kernel): only Xids since the driver's last load count.
        write_kmsg(DRIVER_LOAD)
    after_load = node(cwd=str(tmp_path))
    assert domain not in after_load.stdout
    out = done.stdout
    assert done.returncode == 1, out + done.stderr  # 79, 48 and 119 are errors
    ours = [f for f in json.loads(report_path.read_text())["findings"]
            if f["check"] == "gpu_health" and domain in f["message"]]
    expected = {("Xid", 79, "3b:00.0", "error"), ("Xid", 48, "5e:00.0", "error"),
                ("Xid", 13, "86:00.0", "warning"), ("Xid", 63, "af:00.0", "warning"),
                ("Xid", 119, "d8:00.0", "error"), ("SXid", 12028, "c6:00.0", "warning")}
    seen = set()
    for finding in ours:
        words = finding["message"].split()
        kind_at = next(i for i, w in enumerate(words) if w in ("Xid", "SXid"))
        bus = re.search(rf"{domain}:([0-9a-f]{{2}}:[0-9a-f]{{2}}\.\d)", finding["message"]).group(1)
        seen.add((words[kind_at], int(words[kind_at + 1]), bus, finding["severity"]))
    assert seen == expected, out
    (repeated,) = [f for f in ours if " 13 " in f["message"]]
    assert "3 times" in repeated["message"] and "pid 99 (train)" in repeated["message"]
    assert "fallen off the bus" in out and "double-bit (uncorrectable) ECC" in out
    assert "GSP RPC timeout" in out and "NVSwitch non-fatal error" in out
    assert "zz:00" not in out and "no Xid number" not in out
    assert f"kernel log (/dev/kmsg) since" in out
    # The since boundary: the same lines are not counted when asked from after them.
    assert later["source"] == "/dev/kmsg" and domain not in json.dumps(later["events"])


@pytest.fixture
def unprivileged_user():
    if not ROOT or shutil.which("useradd") is None or shutil.which("runuser") is None:
        pytest.skip("creates a user: needs root, useradd and runuser")
    name = f"ddpx{random.randint(0, 99999):05d}"
    subprocess.run(["useradd", "--no-create-home", "--shell", "/bin/sh", name], check=True,
                   capture_output=True)
    restrict = open(kernlog.DMESG_RESTRICT).read().strip()
    home = tempfile.mkdtemp(prefix="ddpcheck-xid-")
    try:
        if restrict != "1":
            try:
                with open(kernlog.DMESG_RESTRICT, "w") as handle:
                    handle.write("1")
            except OSError as exc:
                pytest.skip(f"cannot set kernel.dmesg_restrict=1: {exc}")
        entry = pwd.getpwnam(name)
        os.chown(home, entry.pw_uid, entry.pw_gid)
        yield name, home
    finally:
        if restrict != "1":
            try:
                with open(kernlog.DMESG_RESTRICT, "w") as handle:
                    handle.write(restrict)
            except OSError:
                pass
        subprocess.run(["userdel", "--force", name], capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


def test_a_user_without_log_access_gets_a_plain_statement(unprivileged_user):
    name, home = unprivileged_user
    report_path = os.path.join(home, "node.json")
    done = node("--workdir", home, "--json", report_path, user=name, cwd=home,
                python=interpreter_for(name))
    report = json.loads(open(report_path).read())
    statement = [f for f in report["findings"] if "kernel log" in f["message"]]
    assert len(statement) == 1, done.stdout + done.stderr
    (finding,) = statement
    assert finding["check"] == "gpu_health" and finding["severity"] == "warning"
    assert f"cannot read the kernel log as user {name}" in finding["message"]
    assert "kernel.dmesg_restrict=1" in finding["message"]
    assert "Xid/SXid errors were NOT checked" in finding["message"]
    assert "kernel log: NOT read" in done.stdout
    # a warning, as documented: the node is not drained for it (exit 0 unless a check failed)
    errors = [f for f in report["findings"] if f["severity"] == "error"]
    assert done.returncode == (1 if errors else 0)
    assert not errors, errors
