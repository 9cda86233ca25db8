"""The host agent: what the launcher runs on each host (``python -m ddpcheck.remote.agent``).

``facts``: stage 0, this host's facts as one marked line: hostname, python, torch (``--torch
import``: the import in a child, with a deadline, timed; ``--torch inspect``, preflight's: its
version and the GPUs it will see read without importing it, ``torchinfo``), GPUs through NVML
(``nvml``), CPU, memory, disks, ulimits, interfaces and the route to the master
(``hostfacts``), and its clock for the skew check. With ``--port``, the rendezvous check beside
them (``RendezvousBesideFacts``): the master (``--listen``) listens on the rendezvous port while
every host (``--reach``) connects to it, so a firewall or a wrong address is named in seconds
instead of after torchrun's join timeout, with no command of its own.
``listen`` / ``reach``: the same check as commands of their own (srun runs each as a step).
``launch``: runs torchrun (through ``remote.torchrun``, which reports its torch import: the
import check of a stage 0 that inspected) with the probe under a dead-man deadline, passes its
output through, and kills torchrun and every rank on deadline, SIGHUP (the ssh connection
closed), SIGTERM or SIGINT. Under srun (``--launcher slurm``) one command runs on every node:
``--slurm-hosts`` lists the nodes in node-rank order, the agent finds its own (SLURMD_NODENAME,
else SLURM_NODEID), says which it is in a ``node`` line and fills in the @NODE_RANK@, @NPROC@ and
@HOST@ placeholders of the torchrun arguments. Imports only the standard library (torch is
imported in a child, with a deadline), so it works on a host whose torch is broken and says so.
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
import tempfile
import threading
import time
from typing import Any, Callable, Mapping, Optional, Sequence

from .. import wire
from . import hostfacts

from . import dcgm, ibports, kernlog, nvml, torchinfo
from ..core.agentargs import (HOST_TOKEN, NODE_RANK_TOKEN, NPROC_TOKEN, STOP_LINE, TORCH_IMPORT,
                              TORCH_INSPECT, WORKDIR_VARIABLE)
from ..model import safety

_PR_SET_PDEATHSIG = 1
FLIGHT_RECORDER_VARIABLES = ("TORCH_FR_DUMP_TEMP_FILE", "TORCH_NCCL_DEBUG_INFO_TEMP_FILE")

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
    wire.emit(kind, payload)


def slurm_node(hosts: Sequence[str], env: Mapping[str, str]) -> tuple[int, str]:
    """(node rank, host name) of this node among ``hosts``: by SLURMD_NODENAME (or its short
    form), else by SLURM_NODEID. Raises ValueError when neither places it."""
    name = env.get("SLURMD_NODENAME", "")
    if name in hosts:
        return list(hosts).index(name), name
    short = name.split(".")[0]
    if short:
        for index, host in enumerate(hosts):
            if host.split(".")[0] == short:
                return index, host
    node_id = env.get("SLURM_NODEID", "")
    if node_id.isdigit() and int(node_id) < len(hosts):
        return int(node_id), hosts[int(node_id)]
    raise ValueError(f"this node ({name or 'SLURMD_NODENAME unset'}, SLURM_NODEID "
                     f"{node_id or 'unset'}) is not one of {', '.join(hosts)}")


def fill_node_tokens(argv: Sequence[str], node_rank: int, nproc: int, host: str) -> list[str]:
    """The torchrun arguments with this node's placeholders filled in (whole arguments only,
    so no other value can be mistaken for one)."""
    values = {NODE_RANK_TOKEN: str(node_rank), NPROC_TOKEN: str(nproc), HOST_TOKEN: host}
    return [values.get(arg, arg) for arg in argv]


def set_parent_death_signal(sig: int) -> None:
    """Linux: deliver ``sig`` to this process when its parent dies (no orphans on any path)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def safe_python_env(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` for a Python we start: the current directory off ``sys.path`` on 3.11+
    (PYTHONSAFEPATH, unless the user set it); older Pythons are started in a private or
    root-owned directory instead."""
    return {"PYTHONSAFEPATH": "1", **env}


def start_torch_facts() -> subprocess.Popen[str]:
    """The torch import in a child, started first so the other facts are read meanwhile. It
    runs in / (``-c`` puts the current directory first on ``sys.path``: a ``torch`` planted in
    a shared current directory must not be what it imports)."""
    return subprocess.Popen([sys.executable, "-c", _TORCH_FACTS], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                            cwd="/", env=safe_python_env(os.environ))


def finish_torch_facts(child: subprocess.Popen[str], timeout_s: float) -> dict[str, Any]:
    try:
        stdout, stderr = child.communicate(timeout=max(timeout_s, 1.0))
    except subprocess.TimeoutExpired:
        child.kill()
        child.communicate()
        return {"torch_error": f"import torch did not finish within {max(timeout_s, 1.0):.0f}s"}
    if child.returncode != 0:
        tail = (stderr.strip().splitlines() or ["exit %d" % child.returncode])[-1]
        return {"torch_error": tail}
    try:
        return json.loads(stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"torch_error": f"unreadable output: {stdout[-200:]!r}"}


def with_deadline(read, timeout_s: float, what: str) -> dict[str, Any]:
    """``read()`` in a daemon thread: a driver call that hangs (a GPU gone bad) costs its
    deadline, not stage 0."""
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result.update(read())
        except Exception as exc:  # noqa: BLE001 - reported, never raised
            result["error"] = f"{what}: {type(exc).__name__}: {exc}"

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        return {"error": f"{what} did not answer within {timeout_s:.0f}s"}
    return result


RANK_REPORT_MARGIN_S = 2.0  # ranks report a timeout this long before the agent's deadline
RENDEZVOUS_MARGIN_S = 2.0  # a listener beside the facts ends this long before their deadline
STOP_POLL_S = 0.1  # how often a listener waiting for peers looks at the launcher's stop line
WRITE_TEST_BYTES = 1 << 20  # what stage 0 writes (and removes) to prove the workdir usable


def workdir_write_test(path: str = ".") -> Optional[str]:
    """Write (and remove) ``WRITE_TEST_BYTES`` in the workdir, for real: None when it worked,
    else why not (a read-only mount, a full disk, a quota: what ``os.access`` and free space
    cannot tell)."""
    path = os.path.abspath(path)
    test = None
    try:  # a new file of an unpredictable name (O_EXCL): nothing planted is written through
        fd, test = tempfile.mkstemp(prefix=".ddpcheck-write-test-", dir=path)
        with os.fdopen(fd, "wb") as handle:
            handle.write(b"\0" * WRITE_TEST_BYTES)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        return f"cannot write {WRITE_TEST_BYTES >> 20} MiB in {path}: {exc.strerror or exc}"
    finally:
        if test is not None:
            try:
                os.unlink(test)
            except OSError:
                pass
    return None


def enter_workdir(env: Mapping[str, str]) -> tuple[str, Optional[str]]:
    """(workdir, why it is refused or unusable) for ``$DDPCHECK_WORKDIR`` (``{uid}`` filled
    in): created 0700 when missing, checked (``safety.place_problem``: ours, writable by
    nobody else, nothing above it that others could swap) and made the current directory.
    Without the variable (the agent started by hand), the current directory as it is."""
    template = env.get(WORKDIR_VARIABLE)
    if not template:
        return ".", None
    workdir = safety.expand_workdir(template, os.geteuid())
    try:
        return safety.enter_private_dir(workdir, "workdir"), None
    except safety.UnsafePlace as exc:
        return workdir, str(exc)
    except OSError as exc:
        return workdir, (f"cannot create or enter the workdir {workdir}: "
                         f"{exc.strerror or exc}")


def collect_facts(deadline_s: float, master: Optional[str] = None,
                  torch_mode: Optional[str] = TORCH_IMPORT,
                  workdir: str = ".", xid_since: Optional[float] = None,
                  ib_root: str = ibports.SYSFS_ROOT,
                  dcgm_level: Optional[int] = None,
                  workdir_error: Optional[str] = None) -> dict[str, Any]:
    """Stage 0's facts. ``torch_mode``: ``TORCH_IMPORT``, ``TORCH_INSPECT`` (preflight: the
    ranks import it) or None (no torch facts). ``dcgm_level`` runs ``dcgmi diag`` meanwhile,
    under its own deadline (``DCGM_DEADLINE_S``), which the caller's deadline must leave room
    for. ``workdir_error``: the workdir was refused (``enter_workdir``): said, and nothing is
    written there."""
    started = time.monotonic()
    diag = dcgm.start(dcgm_level) if dcgm_level else None
    child = start_torch_facts() if torch_mode == TORCH_IMPORT else None
    hostname = socket.gethostname()
    facts: dict[str, Any] = {
        "hostname": hostname,
        "addresses": hostfacts.resolve(hostname, min(3.0, deadline_s / 4)),
        "python": platform.python_version(),
        "executable": sys.executable,
        "pid": os.getpid(),
        "time": time.time(),
        "cpus": os.cpu_count(),
    }
    share = max(min(10.0, deadline_s / 3), 1.0)
    facts["nvml"] = with_deadline(nvml.read_gpus, share, "NVML")
    if torch_mode == TORCH_INSPECT:
        inspected = torchinfo.inspect(os.environ, facts["nvml"])
        if inspected is None:
            child = start_torch_facts()  # only the import can tell
        else:
            facts.update(inspected)
    host = with_deadline(lambda: hostfacts.collect(master, workdir, min(3.0, share)), share,
                         "host facts")
    if "error" in host:
        facts["host_facts_error"] = host.pop("error")
    facts.update(host)
    facts["kernel_log"] = with_deadline(lambda: kernlog.read_xids(xid_since), share,
                                        "kernel log")
    facts["infiniband"] = with_deadline(lambda: ibports.read_ports(ib_root), min(3.0, share),
                                        "InfiniBand sysfs")
    write_error = workdir_write_test(workdir) if workdir_error is None else None
    if workdir_error:
        facts["workdir_error"] = workdir_error
    if write_error:
        facts["workdir_write_error"] = write_error
    if child is not None:
        facts.update(finish_torch_facts(child, deadline_s - (time.monotonic() - started)))
    if diag is not None and dcgm_level:
        left = deadline_s - (time.monotonic() - started) - 1.0
        facts["dcgm"] = dcgm.finish(diag, dcgm_level, max(left, 1.0))
    facts["duration_s"] = round(time.monotonic() - started, 3)
    facts["time_end"] = time.time()
    return facts


def open_listener(port: int, expect: int) -> tuple[Optional[socket.socket], dict[str, Any]]:
    """The rendezvous check's listening socket on ``port`` (None, and the outcome saying why,
    when it cannot be had)."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        server.bind(("", port))
        server.listen(max(expect, 1) + 8)
    except OSError as exc:
        server.close()
        return None, {"ok": False, "port": port, "error": f"cannot listen on port {port}: "
                                                          f"{exc.strerror or exc}"}
    return server, {"ok": True, "port": port}


def accept_peers(server: socket.socket, port: int, deadline_s: float, expect: int,
                 stopped: Callable[[], bool] = lambda: False) -> dict[str, Any]:
    """Accept connections until ``expect`` peers said their name, the deadline, or
    ``stopped()``; closes ``server``.

    The peer closes first (it waits for our "ok"), so TIME_WAIT stays on its side and the port
    is free for torchrun's store right after."""
    peers: list[dict[str, str]] = []
    ends = time.monotonic() + deadline_s
    try:
        while len(peers) < expect and time.monotonic() < ends:
            if stopped():
                break
            server.settimeout(max(min(ends - time.monotonic(), STOP_POLL_S), 0.01))
            try:
                conn, address = server.accept()
            except socket.timeout:
                continue
            except OSError:
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


def listen(port: int, deadline_s: float, expect: int) -> dict[str, Any]:
    """Listen on ``port`` and accept peers (``accept_peers``); says "listening" once it can."""
    server, outcome = open_listener(port, expect)
    if server is None:
        return outcome
    emit("listening", {"port": port})
    return accept_peers(server, port, deadline_s, expect)


def reach(address: str, port: int, name: str, timeout_s: float,
          stop: Optional[threading.Event] = None) -> dict[str, Any]:
    """Connect to ``address:port`` until it answers, ``timeout_s`` passes or ``stop`` is set
    (the listener may start a moment after us: a refused connection is retried, 20 ms after
    the first try, the wait doubling up to 0.2 s so a thousand hosts do not flood the
    master)."""
    started = time.monotonic()
    ends = started + timeout_s
    last = "no attempt"
    attempts = 0
    pause = 0.02
    while time.monotonic() < ends:
        if stop is not None and stop.is_set():
            last = "stopped by the launcher: the master's stage 0 ended without listening"
            break
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
        (stop or threading.Event()).wait(min(pause, max(ends - time.monotonic(), 0.0)))
        pause = min(pause * 2, 0.2)
    return {"ok": False, "address": address, "port": port, "attempts": attempts,
            "elapsed_s": round(time.monotonic() - started, 3), "error": last}


class RendezvousBesideFacts:
    """The rendezvous check made while stage 0 collects its facts (``facts --port``), which
    saves every host a second command: on the master a listener (``--listen``: bound before
    anything else, then accepting peers in a thread), and on every host a connection to the
    master's address (``--reach``), also in a thread. The launcher's stop line ends the
    master's wait once every other host's stage 0 has ended (some may never come), and a
    host's reach once the master's stage 0 ended without listening. The master's own reach
    (to itself) is not cut short by it: its listener stops only once that reach is done."""

    def __init__(self, port: int, reach_address: Optional[str], name: str, reach_timeout_s: float,
                 listen_expect: Optional[int], listen_deadline_s: float) -> None:
        self.stop = threading.Event()
        self.outcomes: dict[str, dict[str, Any]] = {}
        listen_for_stop(lambda _reason: self.stop.set())
        threads = []
        if listen_expect is not None:
            server, outcome = open_listener(port, listen_expect)
            if server is None:
                self.outcomes["listen"] = outcome
            else:
                threads.append(threading.Thread(target=self._keep, daemon=True, args=(
                    "listen", accept_peers, server, port, listen_deadline_s, listen_expect,
                    lambda: self.stop.is_set() and (reach_address is None
                                                    or "reach" in self.outcomes))))
        if reach_address is not None:
            threads.append(threading.Thread(target=self._keep, daemon=True, args=(
                "reach", reach, reach_address, port, name, reach_timeout_s,
                None if listen_expect is not None else self.stop)))
        for thread in threads:
            thread.start()
        self.threads = threads

    def _keep(self, kind: str, check: Callable[..., dict[str, Any]], *args: Any) -> None:
        self.outcomes[kind] = check(*args)

    def finish(self) -> list[tuple[str, dict[str, Any]]]:
        """Wait for both; their outcomes as records (reach, then listen)."""
        for thread in self.threads:
            thread.join()
        return [(kind, self.outcomes[kind]) for kind in ("reach", "listen")
                if kind in self.outcomes]


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


def listen_for_stop(request_stop: Callable[[str], None]) -> None:
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
                if line.strip() == STOP_LINE.strip():
                    request_stop(wire.STOPPED_BY_LAUNCHER)
                    return
        except (OSError, ValueError):
            return

    threading.Thread(target=read, daemon=True).start()


def refresh_workers(workers: dict[int, dict[str, Any]], root_pid: int) -> None:
    """Refresh what is known of each worker under ``root_pid``; a worker that is gone keeps its
    last state."""
    alive = workers_of(root_pid)
    for pid, seen in workers.items():
        if pid not in alive:
            seen["alive"] = False
    for pid, now in alive.items():
        workers[pid] = {**now, "alive": now["state"] not in (None, "Z", "X")}


def torchrun_env(environ: Mapping[str, str], run_dir: Optional[str]) -> dict[str, str]:
    """The environment of torchrun and its ranks: the current directory off ``sys.path``, and
    with a run directory, ``TMPDIR`` (torchrun's log dirs, the ranks' temporary files) and
    NCCL's Flight Recorder dumps in it unless the user chose their place (NCCL's default is
    the shared /tmp/nccl_trace_rank_<rank>, where another user could plant a link)."""
    env = safe_python_env(environ)
    if run_dir is not None:
        env["TMPDIR"] = run_dir
        if not any(env.get(name) for name in FLIGHT_RECORDER_VARIABLES):
            for name in FLIGHT_RECORDER_VARIABLES:
                env[name] = os.path.join(run_dir, "nccl_trace_rank_")
    return env


def open_new(path: str) -> Any:
    """A new file (O_EXCL, 0600) for writing bytes: never one planted before."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb")


class Launch:
    """torchrun as a child, its output passed through, stopped for good on any way out.

    torchrun runs in the run directory (``--run-dir NAME``: a new ``NAME-<random>`` made by
    ``mkdtemp`` in the workdir, 0700) with TMPDIR pointing into it, so its log directories and
    whatever the ranks write to temporary files stay there, where no other user can plant or
    read anything; the output is also kept there as ``launch.log``; the directory is removed
    at the end, whatever the end, unless ``--keep``. The workers' pids, ranks and process
    states are watched, so the agent's record says which ranks were still running, or stopped,
    when torchrun ended or was stopped."""

    WATCH_EVERY_S = 0.5

    def __init__(self, torchrun_args: list[str], deadline_s: float,
                 run_dir: Optional[str] = None, keep: bool = False,
                 workdir_error: Optional[str] = None) -> None:
        self.torchrun_args = torchrun_args
        self.deadline_s = deadline_s
        self.run_dir_name = run_dir
        self.run_dir: Optional[str] = None
        self.workdir_error = workdir_error
        self.keep = keep
        self.stop_reason: Optional[str] = None
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.log: Optional[Any] = None
        self.workers: dict[int, dict[str, Any]] = {}

    def request_stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason

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

    def prepare_run_dir(self) -> Optional[str]:
        """Make the run directory; the reason when it (or the workdir) cannot be used."""
        if self.workdir_error is not None:
            return self.workdir_error
        if self.run_dir_name is None:
            return None
        where = os.path.abspath(self.run_dir_name)
        try:
            self.run_dir = safety.private_run_dir(os.path.dirname(where),
                                                  os.path.basename(where))
            self.log = open_new(os.path.join(self.run_dir, "launch.log"))
        except OSError as exc:
            return f"cannot create the run directory {where}-*: {exc.strerror or exc}"
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
        listen_for_stop(self.request_stop)
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
        env = torchrun_env(os.environ, self.run_dir)
        # the ranks' watchdogs report just before we stop them (see probe.RankProbe.watchdog)
        left = self.deadline_s - (time.monotonic() - started)
        env["DDPCHECK_RANK_DEADLINE"] = f"{time.time() + left - RANK_REPORT_MARGIN_S:.3f}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ddpcheck.remote.torchrun", *self.torchrun_args],
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
                refresh_workers(self.workers, self.proc.pid)
                watched = time.monotonic()
            time.sleep(0.1)
        if self.stop_reason is not None:
            refresh_workers(self.workers, self.proc.pid)  # who was still running when we stopped them
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
    parser = argparse.ArgumentParser(prog="python -m ddpcheck.remote.agent", description=__doc__)
    sub = parser.add_subparsers(dest="action", required=True)
    facts = sub.add_parser("facts", help="stage 0: print this host's facts")
    facts.add_argument("--deadline", type=float, default=60.0)
    facts.add_argument("--master", default=None, help="rendezvous host: report the route to it")
    facts.add_argument("--slurm-hosts", default=None, help="under srun: the nodes, in order")
    facts.add_argument("--dcgm", type=int, choices=(1, 2), default=None,
                       help="also run dcgmi diag -r N (the deadline must leave room)")
    facts.add_argument("--torch", choices=(TORCH_IMPORT, TORCH_INSPECT), default=TORCH_IMPORT,
                       help="import torch (timed), or inspect it without importing (the ranks "
                            "import it)")
    facts.add_argument("--xid-since", type=float, default=None,
                       help="Xid/SXid events since this epoch time (default: since boot)")
    facts.add_argument("--port", type=int, default=None,
                       help="the rendezvous check, beside the facts: the rendezvous port")
    facts.add_argument("--listen", type=int, default=None, metavar="EXPECT",
                       help="listen on --port (the master) until EXPECT hosts reached it, the "
                            "deadline or the launcher's stop line")
    facts.add_argument("--reach", default=None, metavar="ADDRESS",
                       help="connect to ADDRESS:--port (the address torchrun will be given)")
    facts.add_argument("--name", default=None, help="the name --reach gives (default: hostname)")
    facts.add_argument("--reach-timeout", type=float, default=5.0)
    listener = sub.add_parser("listen", help="accept rendezvous check connections on PORT")
    listener.add_argument("--port", type=int, required=True)
    listener.add_argument("--deadline", type=float, default=10.0)
    listener.add_argument("--expect", type=int, default=1)
    reacher = sub.add_parser("reach", help="connect to the rendezvous check listener")
    reacher.add_argument("--address", required=True)
    reacher.add_argument("--port", type=int, required=True)
    reacher.add_argument("--name", default=None, help="default: the node under srun, else "
                                                       "the hostname")
    reacher.add_argument("--slurm-hosts", default=None, help="under srun: the nodes, in order")
    reacher.add_argument("--timeout", type=float, default=5.0)
    launch = sub.add_parser("launch", help="run torchrun ARGS under a deadline")
    launch.add_argument("--deadline", type=float, default=120.0)
    launch.add_argument("--slurm-hosts", default=None, help="under srun: the nodes, in order")
    launch.add_argument("--slurm-slots", default=None,
                        help="under srun: ranks per node, in the order of --slurm-hosts")
    launch.add_argument("--run-dir", default=None,
                        help="name of this run's directory (NAME-<random>, made in the "
                             "workdir); removed at the end unless --keep")
    launch.add_argument("--keep", action="store_true", help="leave the run directory in place")
    launch.add_argument("torchrun_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)

    node: Optional[tuple[int, str]] = None
    if getattr(args, "slurm_hosts", None):  # facts and launch take it
        hosts = args.slurm_hosts.split(",")
        try:
            node = slurm_node(hosts, os.environ)
        except ValueError as exc:
            print(f"ddpcheck agent: {exc}", file=sys.stderr)
            return 2
        emit("node", {"host": node[1], "node_rank": node[0]})

    if args.action == "facts":
        check = None
        if args.port is not None and (args.listen is not None or args.reach):
            check = RendezvousBesideFacts(
                args.port, args.reach, args.name or socket.gethostname(), args.reach_timeout,
                args.listen, max(args.deadline - RENDEZVOUS_MARGIN_S, 1.0))
        workdir, workdir_error = enter_workdir(os.environ)
        facts = collect_facts(args.deadline, args.master, workdir=workdir, dcgm_level=args.dcgm,
                              xid_since=args.xid_since, workdir_error=workdir_error,
                              torch_mode=args.torch)
        checked: list[tuple[str, dict[str, Any]]] = []
        if check is not None:
            collected = time.monotonic()
            checked = check.finish()
            # the clock rule bounds time_end by when the launcher got the answer: read it now
            facts["duration_s"] = round(facts["duration_s"] + time.monotonic() - collected, 3)
            facts["time_end"] = time.time()
        emit("facts", facts)
        for kind, outcome in checked:
            emit(kind, outcome)
        return 0
    if args.action == "listen":
        emit("listen", listen(args.port, args.deadline, args.expect))
        return 0
    if args.action == "reach":
        name = args.name or (node[1] if node is not None else socket.gethostname())
        emit("reach", reach(args.address, args.port, name, args.timeout))
        return 0

    torchrun_args = args.torchrun_args
    if torchrun_args[:1] == ["--"]:
        torchrun_args = torchrun_args[1:]
    if node is not None:
        slots = (args.slurm_slots or "").split(",")
        if len(slots) != len(hosts) or not all(s.isdigit() for s in slots):
            print(f"ddpcheck agent: --slurm-slots needs {len(hosts)} numbers, got "
                  f"{args.slurm_slots!r}", file=sys.stderr)
            return 2
        torchrun_args = fill_node_tokens(torchrun_args, node[0], int(slots[node[0]]), node[1])
    _, workdir_error = enter_workdir(os.environ)
    job = Launch(torchrun_args, args.deadline, args.run_dir, args.keep, workdir_error)
    for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: job.request_stop(signal.Signals(signum).name))
    return job.run()


if __name__ == "__main__":
    sys.exit(main())
