"""The host agent: what the launcher runs on each host (``python -m ddpcheck.agent``).

``facts``: stage 0, this host's facts (hostname, python, torch import, GPUs) as one marked line.
``launch``: runs torchrun with the probe under a dead-man deadline, passes its output through,
and kills torchrun and every rank on deadline, SIGHUP (the ssh connection closed), SIGTERM or
SIGINT. Imports only the standard library (torch is imported in a child, with a deadline), so
it works on a host whose torch is broken and says so.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Optional

MARK = "@@DDPCHECK"
LAUNCH_STARTED_ENV = "DDPCHECK_LAUNCH_STARTED"  # epoch seconds when the agent started torchrun
_PR_SET_PDEATHSIG = 1

# Runs in a child interpreter so a hanging or crashing torch import cannot take the agent along.
_TORCH_FACTS = r"""
import json, time
t0 = time.monotonic()
import torch
facts = {"torch": torch.__version__, "import_s": round(time.monotonic() - t0, 3),
         "cuda": torch.version.cuda, "cuda_available": False, "gpus": 0, "nccl": None}
try:
    facts["gpus"] = torch.cuda.device_count()
    facts["cuda_available"] = facts["gpus"] > 0 and torch.cuda.is_available()
    if torch.distributed.is_available() and torch.distributed.is_nccl_available():
        facts["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
except Exception as exc:
    facts["cuda_error"] = repr(exc)
print(json.dumps(facts))
"""


def emit(kind: str, payload: dict[str, Any]) -> None:
    sys.stdout.write(f"{MARK} {kind} {json.dumps(payload, sort_keys=True)}\n")
    sys.stdout.flush()


def set_parent_death_signal(sig: int) -> None:
    """Linux: deliver ``sig`` to this process when its parent dies (no orphans on any path)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def torch_facts(timeout_s: float) -> dict[str, Any]:
    try:
        done = subprocess.run([sys.executable, "-c", _TORCH_FACTS], capture_output=True,
                              text=True, timeout=max(timeout_s, 1.0))
    except subprocess.TimeoutExpired:
        return {"torch_error": f"import torch did not finish within {timeout_s:.0f}s"}
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["exit %d" % done.returncode])[-1]
        return {"torch_error": tail}
    try:
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"torch_error": f"unreadable output: {done.stdout[-200:]!r}"}


def resolve_with_deadline(name: str, timeout_s: float) -> list[str]:
    """Addresses ``name`` resolves to; a resolver that hangs gives [] after the deadline."""
    found: list[str] = []

    def lookup() -> None:
        try:
            infos = socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)
            found.extend(sorted({info[4][0] for info in infos}))
        except OSError:
            pass

    worker = threading.Thread(target=lookup, daemon=True)
    worker.start()
    worker.join(timeout_s)
    return list(found)


def collect_facts(deadline_s: float) -> dict[str, Any]:
    started = time.monotonic()
    hostname = socket.gethostname()
    facts: dict[str, Any] = {
        "hostname": hostname,
        "addresses": resolve_with_deadline(hostname, min(3.0, deadline_s / 4)),
        "python": platform.python_version(),
        "executable": sys.executable,
        "pid": os.getpid(),
        "time": time.time(),
        "cpus": os.cpu_count(),
    }
    remaining = deadline_s - (time.monotonic() - started)
    facts.update(torch_facts(remaining))
    facts["duration_s"] = round(time.monotonic() - started, 3)
    return facts


def descendants(root: int) -> list[int]:
    """Every live descendant of ``root``, read from /proc (no psutil needed on the host)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry))
        except (OSError, IndexError, ValueError):
            continue
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


class Launch:
    """torchrun as a child, its output passed through, stopped for good on any way out."""

    def __init__(self, torchrun_args: list[str], deadline_s: float) -> None:
        self.torchrun_args = torchrun_args
        self.deadline_s = deadline_s
        self.stop_reason: Optional[str] = None
        self.proc: Optional[subprocess.Popen[bytes]] = None

    def request_stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason

    def _pump(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in iter(self.proc.stdout.readline, b""):
            try:
                sys.stdout.buffer.write(line)
                sys.stdout.buffer.flush()
            except OSError:  # the connection is gone: nobody will read the rest
                self.request_stop("output closed")
                return

    def run(self) -> int:
        started = time.monotonic()
        # The ranks' deadline counts from here, not from their own (later) start.
        env = {**os.environ, LAUNCH_STARTED_ENV: f"{time.time():.3f}"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", *self.torchrun_args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env, preexec_fn=lambda: set_parent_death_signal(signal.SIGTERM))
        pump = threading.Thread(target=self._pump, daemon=True)
        pump.start()
        while self.proc.poll() is None and self.stop_reason is None:
            if time.monotonic() - started > self.deadline_s:
                self.request_stop(f"deadline of {self.deadline_s:g}s")
                break
            time.sleep(0.1)
        if self.stop_reason is not None:
            self.terminate_all()
        code = self.proc.wait()
        pump.join(2.0)
        try:
            emit("agent", {"exit_code": code, "stopped": self.stop_reason,
                           "duration_s": round(time.monotonic() - started, 3)})
        except OSError:
            pass
        return 124 if self.stop_reason else code

    def terminate_all(self) -> None:
        """SIGTERM torchrun (it stops its workers), then SIGKILL whatever is left."""
        assert self.proc is not None
        tree = descendants(os.getpid())
        _signal(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            pass
        for pid in tree + descendants(os.getpid()):
            _signal(pid, signal.SIGKILL)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ddpcheck.agent", description=__doc__)
    sub = parser.add_subparsers(dest="action", required=True)
    facts = sub.add_parser("facts", help="stage 0: print this host's facts")
    facts.add_argument("--deadline", type=float, default=60.0)
    launch = sub.add_parser("launch", help="run torchrun ARGS under a deadline")
    launch.add_argument("--deadline", type=float, default=120.0)
    launch.add_argument("torchrun_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)

    if args.action == "facts":
        emit("facts", collect_facts(args.deadline))
        return 0

    torchrun_args = args.torchrun_args
    if torchrun_args[:1] == ["--"]:
        torchrun_args = torchrun_args[1:]
    job = Launch(torchrun_args, args.deadline)
    for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: job.request_stop(signal.Signals(signum).name))
    return job.run()


if __name__ == "__main__":
    sys.exit(main())
