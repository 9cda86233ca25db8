"""The host agent: what the launcher runs on each host (``python -m ddpcheck.agent``).

``facts``: stage 0, this host's facts (hostname, python, torch import, GPUs) as one marked line.
``listen`` / ``reach``: the rendezvous check before torchrun: the master host listens on the
rendezvous port while every host connects to it, so a firewall or a wrong address is named in
seconds instead of after torchrun's join timeout.
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
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Optional

MARK = "@@DDPCHECK"
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


WRITE_TEST_BYTES = 1 << 20  # what stage 0 writes (and removes) to prove the workdir usable


def workdir_facts(path: Optional[str] = None) -> dict[str, Any]:
    """The workdir (the current directory: the launcher cds into it) can be written, and how
    much room it has. A full disk or a read-only mount becomes a ``workdir_error``."""
    path = path or os.getcwd()
    facts: dict[str, Any] = {"workdir": path}
    try:
        stat = os.statvfs(path)
        facts["workdir_free_mb"] = round(stat.f_bavail * stat.f_frsize / (1 << 20), 1)
    except OSError:
        pass
    test = os.path.join(path, f".ddpcheck-write-test-{os.getpid()}")
    try:
        with open(test, "wb") as handle:
            handle.write(b"\0" * WRITE_TEST_BYTES)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        facts["workdir_error"] = (f"cannot write {WRITE_TEST_BYTES >> 20} MiB in {path}: "
                                  f"{exc.strerror or exc}")
    finally:
        try:
            os.unlink(test)
        except OSError:
            pass
    return facts


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
    facts.update(workdir_facts())
    remaining = deadline_s - (time.monotonic() - started)
    facts.update(torch_facts(remaining))
    facts["duration_s"] = round(time.monotonic() - started, 3)
    return facts


def listen(port: int, deadline_s: float, expect: int) -> dict[str, Any]:
    """Accept connections on ``port`` until ``expect`` peers said their name or the deadline.

    The peer closes first (it waits for our "ok"), so TIME_WAIT stays on its side and the port
    is free for torchrun's store right after."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        server.bind(("", port))
        server.listen(max(expect, 1) + 8)
    except OSError as exc:
        server.close()
        return {"ok": False, "port": port, "error": f"cannot listen on port {port}: "
                                                    f"{exc.strerror or exc}"}
    emit("listening", {"port": port})
    peers: list[dict[str, str]] = []
    ends = time.monotonic() + deadline_s
    try:
        while len(peers) < expect and time.monotonic() < ends:
            server.settimeout(max(ends - time.monotonic(), 0.01))
            try:
                conn, address = server.accept()
            except (socket.timeout, OSError):
                break
            with conn:
                conn.settimeout(max(ends - time.monotonic(), 0.5))
                try:
                    name = conn.recv(256).decode(errors="replace").strip()
                    conn.sendall(b"ok\n")
                    conn.recv(16)  # EOF: the peer closed first
                except OSError:
                    continue
            peers.append({"name": name, "address": address[0]})
    finally:
        server.close()
    return {"ok": True, "port": port, "peers": peers}


def reach(address: str, port: int, name: str, timeout_s: float) -> dict[str, Any]:
    """Connect to ``address:port`` until it answers or ``timeout_s`` passes (the listener may
    start a moment after us: a refused connection is retried)."""
    started = time.monotonic()
    ends = started + timeout_s
    last = "no attempt"
    attempts = 0
    while time.monotonic() < ends:
        attempts += 1
        try:
            with socket.create_connection((address, port),
                                          timeout=max(min(ends - time.monotonic(), 2.0), 0.1)) \
                    as conn:
                conn.settimeout(max(ends - time.monotonic(), 0.5))
                conn.sendall(name.encode() + b"\n")
                if conn.recv(16).startswith(b"ok"):
                    return {"ok": True, "address": address, "port": port, "attempts": attempts,
                            "elapsed_s": round(time.monotonic() - started, 3)}
                last = "the port answered but not as the ddpcheck listener"
        except socket.timeout:
            last = "connection timed out (packets dropped: a firewall?)"
        except ConnectionRefusedError:
            last = "connection refused (nothing listening, or a firewall rejecting)"
        except OSError as exc:
            last = exc.strerror or str(exc)
        time.sleep(0.2)
    return {"ok": False, "address": address, "port": port, "attempts": attempts,
            "elapsed_s": round(time.monotonic() - started, 3), "error": last}


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


def _read_proc(pid: int, name: str) -> bytes:
    try:
        with open(f"/proc/{pid}/{name}", "rb") as handle:
            return handle.read()
    except OSError:
        return b""


def process_state(pid: int) -> Optional[str]:
    """The one-letter state of ``pid`` (R, S, D, T for stopped, Z...), None when gone."""
    stat = _read_proc(pid, "stat")
    fields = stat.rsplit(b")", 1)[-1].split()
    return fields[0].decode() if fields else None


def workers_of(parent: int) -> dict[int, dict[str, Any]]:
    """torchrun's workers: its children with LOCAL_RANK in their environment, by pid."""
    found: dict[int, dict[str, Any]] = {}
    for pid in descendants(parent):
        environ = dict(item.split(b"=", 1) for item in _read_proc(pid, "environ").split(b"\0")
                       if b"=" in item)
        if b"LOCAL_RANK" not in environ or b"RANK" not in environ:
            continue
        try:
            rank, local_rank = int(environ[b"RANK"]), int(environ[b"LOCAL_RANK"])
        except ValueError:
            continue
        found[pid] = {"pid": pid, "rank": rank, "local_rank": local_rank,
                      "state": process_state(pid)}
    return found


class Launch:
    """torchrun as a child, its output passed through, stopped for good on any way out.

    torchrun runs in the run directory (``--run-dir``, under the workdir) with TMPDIR pointing
    into it, so its log directories and whatever the ranks write to temporary files stay
    there; the output is also kept there as ``launch.log``; the directory is removed at the
    end, whatever the end, unless ``--keep``. The workers' pids, ranks and process states are
    watched, so the agent's record says which ranks were still running, or stopped, when
    torchrun ended or was stopped."""

    WATCH_EVERY_S = 0.5

    def __init__(self, torchrun_args: list[str], deadline_s: float,
                 run_dir: Optional[str] = None, keep: bool = False) -> None:
        self.torchrun_args = torchrun_args
        self.deadline_s = deadline_s
        self.run_dir = os.path.abspath(run_dir) if run_dir else None
        self.keep = keep
        self.stop_reason: Optional[str] = None
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.log: Optional[Any] = None
        self.workers: dict[int, dict[str, Any]] = {}

    def request_stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason

    def listen_for_stop(self) -> None:
        """The launcher writes "stop" on our stdin when the rest of the world has failed and
        waiting longer cannot help: stop torchrun, and still report who was running."""
        stdin = sys.stdin
        if stdin is None:
            return
        try:
            if stdin.isatty():  # a pty echoes what it reads back into our output: not that
                import termios

                attributes = termios.tcgetattr(stdin.fileno())
                attributes[3] &= ~termios.ECHO
                termios.tcsetattr(stdin.fileno(), termios.TCSANOW, attributes)
        except (OSError, ValueError, ImportError):
            pass

        def read() -> None:
            try:
                for line in iter(stdin.buffer.readline, b""):
                    if line.strip() == b"stop":
                        self.request_stop("asked to stop by the launcher")
                        return
            except (OSError, ValueError):
                return

        threading.Thread(target=read, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in iter(self.proc.stdout.readline, b""):
            if self.log is not None:
                try:
                    self.log.write(line)
                except (OSError, ValueError):  # disk full: the log stops, the run goes on
                    self.log = None
            try:
                sys.stdout.buffer.write(line)
                sys.stdout.buffer.flush()
            except OSError:  # the connection is gone: nobody will read the rest
                self.request_stop("output closed")
                return

    def watch_workers(self) -> None:
        """Refresh what is known of each worker; a worker that is gone keeps its last state."""
        assert self.proc is not None
        alive = workers_of(self.proc.pid)
        for pid, seen in self.workers.items():
            if pid not in alive:
                seen["alive"] = False
        for pid, now in alive.items():
            self.workers[pid] = {**now, "alive": now["state"] not in (None, "Z", "X")}

    def prepare_run_dir(self) -> Optional[str]:
        """Make the run directory; the reason when it cannot be made or written."""
        if self.run_dir is None:
            return None
        try:
            os.makedirs(self.run_dir, exist_ok=True)
            self.log = open(os.path.join(self.run_dir, "launch.log"), "wb")
        except OSError as exc:
            return f"cannot create the run directory {self.run_dir}: {exc.strerror or exc}"
        return None

    def remove_run_dir(self) -> bool:
        """True when the run directory is gone (or there was none)."""
        if self.log is not None:
            try:
                self.log.close()
            except OSError:
                pass
            self.log = None
        if self.run_dir is None:
            return True
        if not self.keep:
            shutil.rmtree(self.run_dir, ignore_errors=True)
        return not os.path.exists(self.run_dir)

    def run(self) -> int:
        started = time.monotonic()
        code: Optional[int] = None
        self.listen_for_stop()
        error = self.prepare_run_dir()
        try:
            if error is None:
                code = self.run_torchrun(started)
        finally:
            removed = self.remove_run_dir()
        record: dict[str, Any] = {
            "exit_code": code, "stopped": self.stop_reason,
            "duration_s": round(time.monotonic() - started, 3),
            "workers": sorted(self.workers.values(), key=lambda w: w["local_rank"])}
        if self.run_dir is not None:
            record.update(run_dir=self.run_dir, kept=self.keep and not removed,
                          removed=removed)
        if error is not None:
            record["error"] = error
        try:
            emit("agent", record)
        except OSError:
            pass
        if error is not None:
            return 1
        return 124 if self.stop_reason else (code or 0)

    def run_torchrun(self, started: float) -> int:
        env = dict(os.environ)
        if self.run_dir is not None:
            env["TMPDIR"] = self.run_dir  # torchrun's log dirs, the ranks' temporary files
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", *self.torchrun_args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=self.run_dir, env=env,
            preexec_fn=lambda: set_parent_death_signal(signal.SIGTERM))
        pump = threading.Thread(target=self._pump, daemon=True)
        pump.start()
        watched = 0.0
        while self.proc.poll() is None and self.stop_reason is None:
            if time.monotonic() - started > self.deadline_s:
                self.request_stop(f"deadline of {self.deadline_s:g}s")
                break
            if time.monotonic() - watched >= self.WATCH_EVERY_S:
                self.watch_workers()
                watched = time.monotonic()
            time.sleep(0.1)
        if self.stop_reason is not None:
            self.watch_workers()  # who was still running when we stopped them
            self.terminate_all()
        code = self.proc.wait()
        pump.join(2.0)
        return code

    def terminate_all(self) -> None:
        """SIGTERM torchrun (it stops its workers), then SIGKILL whatever is left (a stopped
        process ignores SIGTERM until continued; SIGKILL still ends it)."""
        assert self.proc is not None
        tree = descendants(os.getpid())
        for pid, worker in self.workers.items():
            if worker.get("alive") and process_state(pid) == "T":
                # stopped: it cannot act on SIGTERM, and torchrun would wait 30 s for it
                _signal(pid, signal.SIGKILL)
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
    listener = sub.add_parser("listen", help="accept rendezvous check connections on PORT")
    listener.add_argument("--port", type=int, required=True)
    listener.add_argument("--deadline", type=float, default=10.0)
    listener.add_argument("--expect", type=int, default=1)
    reacher = sub.add_parser("reach", help="connect to the rendezvous check listener")
    reacher.add_argument("--address", required=True)
    reacher.add_argument("--port", type=int, required=True)
    reacher.add_argument("--name", default=socket.gethostname())
    reacher.add_argument("--timeout", type=float, default=5.0)
    launch = sub.add_parser("launch", help="run torchrun ARGS under a deadline")
    launch.add_argument("--deadline", type=float, default=120.0)
    launch.add_argument("--run-dir", default=None,
                        help="directory (under the workdir) for this run's files; removed at "
                             "the end unless --keep")
    launch.add_argument("--keep", action="store_true", help="leave the run directory in place")
    launch.add_argument("torchrun_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)

    if args.action == "facts":
        emit("facts", collect_facts(args.deadline))
        return 0
    if args.action == "listen":
        emit("listen", listen(args.port, args.deadline, args.expect))
        return 0
    if args.action == "reach":
        emit("reach", reach(args.address, args.port, args.name, args.timeout))
        return 0

    torchrun_args = args.torchrun_args
    if torchrun_args[:1] == ["--"]:
        torchrun_args = torchrun_args[1:]
    job = Launch(torchrun_args, args.deadline, args.run_dir, args.keep)
    for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: job.request_stop(signal.Signals(signum).name))
    return job.run()


if __name__ == "__main__":
    sys.exit(main())
