"""A real, private SLURM for tests: munged and slurmctld on this machine, and slurmd for nodes.

Without nodes: one node (``gpu017``, never contacted: no slurmd runs) in one partition, for
scontrol. With ``nodes`` (name and address of each): those nodes, each served by a real slurmd
that ``start_nodes`` runs wherever the caller's ``popen`` starts it (a network namespace of
tests/nscluster.py: one network stack, hostname and address per node), so srun, salloc and
slurmstepd run jobs there for real. No cgroups: proctrack/linuxproc, task/none. Private
sockets, ports, spool and state under a temporary folder, so the tools talk to it through
``SLURM_CONF`` and nothing of the machine's own SLURM (if any) is touched. ``stop`` ends every
daemon it started. Needs root, munge, slurmctld and slurm-client (and slurmd for nodes).
"""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

NODE = "gpu017"
TOOLS = ("munged", "mungekey", "slurmctld", "scontrol")
NODE_TOOLS = ("slurmd", "slurmstepd", "srun", "salloc")


@dataclass(frozen=True)
class SlurmNode:
    name: str  # SLURM's NodeName
    address: str  # NodeAddr: where slurmctld and srun reach its slurmd
    hostname: str = ""  # NodeHostname; default: the name
    cpus: int = 2


def slurm_available(with_nodes: bool = False) -> tuple[bool, str]:
    tools = TOOLS + (NODE_TOOLS if with_nodes else ())
    missing = [t for t in tools if not shutil.which(t) and not os.path.exists(f"/usr/sbin/{t}")]
    if missing:
        return False, "missing " + ", ".join(missing) + " (apt-get install munge slurmctld " \
                                                        "slurm-client slurmd)"
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
    def __init__(self, basedir: pathlib.Path, nodes: Sequence[SlurmNode] = (),
                 controller_address: str = "127.0.0.1") -> None:
        self.basedir = basedir
        self.conf = basedir / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.nodes = tuple(nodes)
        self.controller_address = controller_address
        self._ctld: Optional[subprocess.Popen] = None
        self._slurmd: dict[str, subprocess.Popen] = {}

    def _node_lines(self) -> str:
        if not self.nodes:
            return (f"NodeName={NODE} NodeAddr=127.0.0.1 CPUs=1 State=UNKNOWN\n"
                    f"PartitionName=debug Nodes={NODE} Default=YES State=UP\n")
        lines = [f"NodeName={n.name} NodeHostname={n.hostname or n.name} NodeAddr={n.address} "
                 f"CPUs={n.cpus} State=UNKNOWN" for n in self.nodes]
        names = ",".join(n.name for n in self.nodes)
        return "\n".join(lines) + f"\nPartitionName=debug Nodes={names} Default=YES State=UP\n"

    def start(self) -> None:
        base = self.basedir
        for sub in ("state", "spool", *(f"spool-{n.name}" for n in self.nodes)):
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
SlurmctldHost={host}({self.controller_address})
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/munge
AuthInfo=socket={base / 'munge.sock'}
SlurmUser=root
StateSaveLocation={base / 'state'}
SlurmctldPidFile={base / 'slurmctld.pid'}
SlurmctldLogFile={base / 'slurmctld.log'}
SlurmdSpoolDir={base / ('spool-%n' if self.nodes else 'spool')}
SlurmdPidFile={base / 'slurmd-%n.pid'}
SlurmdLogFile={base / 'slurmd-%n.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
ReturnToService=2
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
""" + self._node_lines())
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

    def start_nodes(self, popen: Callable[..., subprocess.Popen] = subprocess.Popen,
                    timeout_s: float = 30.0) -> None:
        """A slurmd per node, started by ``popen(argv, **kw)`` (for a node of a namespace
        cluster: its ``popen_in``), then waits until slurmctld has every node idle."""
        for node in self.nodes:
            log = open(self.basedir / f"slurmd-{node.name}.out", "wb")
            try:
                self._slurmd[node.name] = popen(
                    [_tool("slurmd"), "-D", "-N", node.name, "-f", str(self.conf)],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True, env=self.env)
            finally:
                log.close()
        deadline = time.monotonic() + timeout_s
        while True:
            states = {n.name: self.node_state(n.name).get("State", "") for n in self.nodes}
            if all(state.startswith("IDLE") for state in states.values()):
                return
            dead = [name for name, proc in self._slurmd.items() if proc.poll() is not None]
            if dead or time.monotonic() > deadline:
                logs = "".join(
                    (self.basedir / f"slurmd-{name}.out").read_text(errors="replace")[-1500:]
                    for name in dead or self._slurmd)
                raise RuntimeError(f"slurmd did not come up (states {states}, exited: "
                                   f"{dead}): {logs}")
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
        for proc in self._slurmd.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self._slurmd.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
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
