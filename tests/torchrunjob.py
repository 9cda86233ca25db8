"""Starts tests/hangjob.py (or another job script) with torchrun on hosts of the namespace cluster, as a user would
(one torchrun per host, static rendezvous at the first host), and always cleans up: every
process of the job is continued (in case a test stopped it) and killed. Used by the hang tests
and the hang benchmark."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import psutil

HANGJOB = pathlib.Path(__file__).resolve().parent / "hangjob.py"


@dataclass(frozen=True)
class ThisMachine:
    """Stands for a cluster host when the job runs on this machine (``cluster`` None)."""

    name: str = "localhost"
    address: str = "127.0.0.1"


class TorchrunJob:
    def __init__(self, cluster: Any, hosts: Sequence[Any], slots: int, port: int,
                 workdir: pathlib.Path, args: Sequence[str] = (),
                 env: Mapping[str, str] = {}, script: pathlib.Path = HANGJOB) -> None:
        self.cluster = cluster
        self.script = script
        self.hosts = list(hosts)
        self.slots = slots
        self.port = port
        self.workdir = workdir
        self.ready_dir = workdir / "ready"
        self.args = list(args)
        interface = "eth0" if cluster is not None else "lo"
        self.env = {**os.environ, "GLOO_SOCKET_IFNAME": interface, "OMP_NUM_THREADS": "1",
                    "PYTHONUNBUFFERED": "1", **env}
        self.procs: list[subprocess.Popen] = []
        self.known: dict[int, float] = {}  # pid -> create time, of every process of the job
        self.world_size = slots * len(self.hosts)

    def start(self) -> "TorchrunJob":
        self.ready_dir.mkdir(parents=True, exist_ok=True)
        for node_rank, host in enumerate(self.hosts):
            log = open(self.workdir / f"torchrun-{host.name}.log", "wb")
            argv = [sys.executable, "-m", "torch.distributed.run", "--nnodes",
                    str(len(self.hosts)), "--node-rank", str(node_rank), "--nproc-per-node",
                    str(self.slots), "--master-addr", self.hosts[0].address, "--master-port",
                    str(self.port), "--max-restarts", "0", "--monitor-interval", "0.5",
                    str(self.script), "--ready-dir", str(self.ready_dir), *self.args]
            options = dict(env=self.env, stdout=log, stderr=subprocess.STDOUT,
                           stdin=subprocess.DEVNULL, start_new_session=True)
            self.procs.append(subprocess.Popen(argv, **options) if self.cluster is None
                              else self.cluster.popen_in(host, argv, **options))
            log.close()
        return self

    def wait_ready(self, timeout_s: float = 120.0) -> dict[int, int]:
        """{rank: pid} once every rank has made its first steps."""
        deadline = time.monotonic() + timeout_s
        while True:
            self._remember()
            files = {int(p.name.split("-")[1]): p for p in self.ready_dir.glob("rank-*")}
            if len(files) == self.world_size:
                pids = {}
                for rank, path in files.items():
                    text = path.read_text().strip()
                    if not text:
                        break
                    pids[rank] = int(text)
                else:
                    self._remember()
                    return pids
            exited = [p for p in self.procs if p.poll() is not None]
            if exited or time.monotonic() > deadline:
                raise AssertionError(f"job did not start (exited: {len(exited)}):\n{self.logs()}")
            time.sleep(0.2)

    def host_of(self, rank: int) -> Any:
        return self.hosts[rank // self.slots]

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
                         for p in sorted(self.workdir.glob("torchrun-*.log")))

    def log_of(self, host: Any) -> str:
        return (self.workdir / f"torchrun-{host.name}.log").read_text(errors="replace")

    def _remember(self) -> None:
        for proc in self.procs:
            try:
                root = psutil.Process(proc.pid)
                for p in [root, *root.children(recursive=True)]:
                    self.known.setdefault(p.pid, p.create_time())
            except psutil.Error:
                continue

    def alive(self) -> list[int]:
        left = []
        for pid, created in self.known.items():
            try:
                p = psutil.Process(pid)
                if p.create_time() == created and p.status() != psutil.STATUS_ZOMBIE:
                    left.append(pid)
            except psutil.Error:
                continue
        return left

    def stop(self) -> None:
        """SIGCONT then SIGKILL every process of the job (a stopped process must be continued
        first, or it lingers as stopped); wait until none is left."""
        self._remember()
        for sig in (signal.SIGCONT, signal.SIGKILL):
            for pid in self.alive():
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        deadline = time.monotonic() + 10
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        left = self.alive()
        if left:
            raise AssertionError(f"job processes left behind: {left}")


def job_pids_running(marker: str) -> list[int]:
    """Processes whose command line mentions ``marker`` (e.g. the job's port)."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(proc.info.get("cmdline") or [])
        if marker in cmdline and str(HANGJOB) in cmdline:
            found.append(proc.info["pid"])
    return found


def start_job(cluster: Any, hosts: Sequence[Any], slots: int, port: int,
              workdir: pathlib.Path, args: Sequence[str] = (),
              env: Optional[Mapping[str, str]] = None,
              script: pathlib.Path = HANGJOB) -> TorchrunJob:
    return TorchrunJob(cluster, hosts, slots, port, workdir, args, env or {}, script).start()
