"""A real, private SLURM controller for tests: munged and slurmctld on this machine.

One node (``gpu017``, never contacted: no slurmd runs) in one partition, private sockets, ports
and state under a temporary folder, so scontrol talks to it through ``SLURM_CONF`` and nothing
of the machine's own SLURM (if any) is touched. Needs root, munge, slurmctld and slurm-client.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import socket
import subprocess
import time
from typing import Optional

NODE = "gpu017"
TOOLS = ("munged", "mungekey", "slurmctld", "scontrol")


def slurm_available() -> tuple[bool, str]:
    missing = [t for t in TOOLS if not shutil.which(t) and not os.path.exists(f"/usr/sbin/{t}")]
    if missing:
        return False, "missing " + ", ".join(missing) + " (apt-get install munge slurmctld " \
                                                        "slurm-client)"
    if os.geteuid() != 0:
        return False, "needs root"
    return True, "ok"


def _tool(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class SlurmController:
    def __init__(self, basedir: pathlib.Path) -> None:
        self.basedir = basedir
        self.conf = basedir / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self._ctld: Optional[subprocess.Popen] = None

    def start(self) -> None:
        base = self.basedir
        for sub in ("state", "spool"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(base, 0o700)
        subprocess.run([_tool("mungekey"), "--create", "--keyfile", str(base / "munge.key")],
                       check=True, capture_output=True, timeout=30)
        subprocess.run([_tool("munged"), "--force", "--key-file", str(base / "munge.key"),
                        "--socket", str(base / "munge.sock"), "--pid-file",
                        str(base / "munged.pid"), "--log-file", str(base / "munged.log"),
                        "--seed-file", str(base / "munged.seed")],
                       check=True, capture_output=True, timeout=30)
        host = socket.gethostname().split(".")[0]
        self.conf.write_text(f"""\
ClusterName=ddpcheck
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/munge
AuthInfo=socket={base / 'munge.sock'}
SlurmUser=root
StateSaveLocation={base / 'state'}
SlurmctldPidFile={base / 'slurmctld.pid'}
SlurmctldLogFile={base / 'slurmctld.log'}
SlurmdSpoolDir={base / 'spool'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/builtin
SelectType=select/linear
MpiDefault=none
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
NodeName={NODE} NodeAddr=127.0.0.1 CPUs=1 State=UNKNOWN
PartitionName=debug Nodes={NODE} Default=YES State=UP
""")
        self._ctld = subprocess.Popen([_tool("slurmctld"), "-D", "-i", "-f", str(self.conf)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 30
        while True:
            ping = self.scontrol("ping")
            if "is UP" in ping.stdout:
                return
            if self._ctld.poll() is not None or time.monotonic() > deadline:
                log = (base / "slurmctld.log")
                raise RuntimeError(f"slurmctld did not come up: {ping.stdout}{ping.stderr} "
                                   f"{log.read_text()[-2000:] if log.exists() else ''}")
            time.sleep(0.2)

    def scontrol(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([_tool("scontrol"), *args], capture_output=True, text=True,
                              env=self.env, timeout=30)

    def node_state(self, node: str = NODE) -> dict[str, str]:
        """State and Reason of the node, as ``scontrol show node`` prints them."""
        text = self.scontrol("show", "node", node).stdout
        found = {}
        for line in text.splitlines():
            line = line.strip()
            if line.startswith("State="):
                found["State"] = line.split()[0].split("=", 1)[1]
            elif line.startswith("Reason="):
                found["Reason"] = line.split("=", 1)[1].rsplit(" [", 1)[0]
        return found

    def stop(self) -> None:
        if self._ctld is not None and self._ctld.poll() is None:
            self._ctld.terminate()
            try:
                self._ctld.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._ctld.kill()
                self._ctld.wait(timeout=5)
        pid_file = self.basedir / "munged.pid"
        try:
            os.kill(int(pid_file.read_text().strip()), signal.SIGTERM)
        except (OSError, ValueError):
            pass
