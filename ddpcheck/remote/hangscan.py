"""The host scan of ``ddpcheck hang``: what the launcher runs on each host
(``python -m ddpcheck.remote.hangscan --window 3``), like ``ddpcheck.remote.agent`` for preflight.

It finds the torchrun workers running here (processes whose environment has RANK, WORLD_SIZE and
LOCAL_RANK, and TORCHELASTIC_RUN_ID or MASTER_ADDR; a data-loader child inherits that environment,
so only the topmost process of each rank counts), samples each twice, ``--window`` seconds apart
(process state, CPU time, the main thread's schedstat, Python stack with py-spy when installed,
the ``ddpcheck.Monitor`` heartbeat, the PyTorch Flight Recorder dump when the job wrote one,
its TCP connections' counters from ``remote.tcpinfo``),
reads each main thread's state and wait channel every 20 ms in between (how the window was
spent: waiting in a collective, running, asleep elsewhere, stopped) and prints one marked JSON
line, ``@@DDPCHECK hangscan {...}``, that the launcher collects. Heartbeats written on this host
by ranks whose process is gone are reported too: that is how a dead rank is named with its host.

With ``--ras`` (``ddpcheck hang`` asks it of one host) the scan also asks NCCL's RAS service
(NCCL >= 2.24, ``remote.ncclras``) for its view of the job, while the ranks are sampled.

Only processes in this scan's network namespace are inspected (on one machine, other namespaces
are other hosts or containers); the count of skipped workers is reported. On a shared node only
the caller's own processes are inspected (root sees every user's): other users' Python processes
are counted, not read, and the ``kernel.yama.ptrace_scope`` in force is reported so that a stack
py-spy could not take is explained. Heartbeats and Flight Recorder dumps are read only from files
owned by the rank's user, opened without following links (``model.safety``): a file another user
planted in a shared /tmp is not taken for the job's. Standard library and psutil only: no torch,
so it works while the job holds every GPU.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import functools
import glob
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time
from typing import Any, Mapping, Optional, Sequence

from . import ncclras, tcpinfo
from .. import wire
from ..core import heartbeat
from ..core.cgroupcpu import cpu_stat_paths, throttled_s
from .flightrecorder import MAX_DUMP_BYTES, dump_prefix, parse_dump
from ..model import safety

PY_SPY_VARIABLE = "DDPCHECK_PY_SPY"
POLL_S = 0.02  # between the two samples, each main thread's state is read this often
MAX_FRAMES = 80
MAX_THREADS = 32
KEPT_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "GROUP_RANK", "LOCAL_WORLD_SIZE",
            "TORCHELASTIC_RUN_ID", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RESTART_COUNT",
            "NCCL_RAS_ADDR", "NCCL_RAS_ENABLE")


def emit(kind: str, payload: Mapping[str, Any]) -> None:
    wire.emit(kind, payload)


# -- which processes are workers (pure) -------------------------------------------------------

def worker_identity(env: Mapping[str, str]) -> Optional[dict[str, Any]]:
    """Rank, world and job of a torchrun worker's environment; None for any other process."""
    try:
        rank, world, local = int(env["RANK"]), int(env["WORLD_SIZE"]), int(env["LOCAL_RANK"])
    except (KeyError, ValueError):
        return None
    if not (env.get("TORCHELASTIC_RUN_ID") or env.get("MASTER_ADDR")):
        return None
    if not 0 <= rank < world:
        return None
    return {"job": heartbeat.job_key(env), "rank": rank, "local_rank": local, "world_size": world,
            "group_rank": _int_or_none(env.get("GROUP_RANK")),
            "local_world_size": _int_or_none(env.get("LOCAL_WORLD_SIZE"))}


def topmost(candidates: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (job, rank), the process whose parent is not one of the same rank (data-loader
    workers and other children inherit the rank's environment); ``children`` counts the rest."""
    by_rank: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for cand in candidates:
        by_rank.setdefault((cand["job"], cand["rank"]), []).append(cand)
    chosen = []
    for group in by_rank.values():
        pids = {c["pid"] for c in group}
        roots = [c for c in group if c["ppid"] not in pids] or group
        # a wrapper shell above the interpreter: prefer the topmost python process
        pythons = [c for c in group if "python" in (c.get("name") or "")]
        pick = roots[0]
        if pythons and "python" not in (pick.get("name") or ""):
            pick = min(pythons, key=lambda c: c["create_time"])
        chosen.append({**pick, "children": len(group) - 1})
    return sorted(chosen, key=lambda c: (c["job"], c["rank"]))


# -- py-spy -----------------------------------------------------------------------------------

def find_py_spy(env: Mapping[str, str] = os.environ) -> Optional[str]:
    """$DDPCHECK_PY_SPY, py-spy on PATH, or beside this interpreter (a venv's bin/)."""
    for cand in (env.get(PY_SPY_VARIABLE), shutil.which("py-spy"),
                 os.path.join(os.path.dirname(sys.executable), "py-spy")):
        if cand and os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    return None


def parse_py_spy_json(text: str, pid: int) -> list[dict[str, Any]]:
    """py-spy ``dump --json`` -> threads (main thread first), frames innermost first."""
    data = json.loads(text)
    if not isinstance(data, list):
        raise ValueError("py-spy output is not a list of threads")
    threads = []
    for thread in data[:MAX_THREADS]:
        if not isinstance(thread, dict):
            continue
        frames = []
        for frame in (thread.get("frames") or [])[:MAX_FRAMES]:
            if isinstance(frame, dict):
                frames.append({"name": str(frame.get("name") or "?"),
                               "file": str(frame.get("filename") or "?"),
                               "line": _int_or_none(frame.get("line"))})
        os_tid = _int_or_none(thread.get("os_thread_id"))
        threads.append({"name": thread.get("thread_name"), "os_tid": os_tid,
                        "main": os_tid == pid, "active": bool(thread.get("active")),
                        "gil": bool(thread.get("owns_gil")), "frames": frames})
    threads.sort(key=lambda t: not t["main"])
    return threads


def take_stack(py_spy: str, pid: int, stopped: bool,
               timeout_s: float) -> tuple[Optional[list[dict[str, Any]]], Optional[str]]:
    """(threads, None) or (None, why). A stopped process cannot be paused by ptrace: it is read
    without pausing (--nonblocking); a running one is paused for a consistent stack, and read
    without pausing when that fails."""
    attempts = [["--nonblocking"]] if stopped else [[], ["--nonblocking"]]
    error = "py-spy gave no output"
    for extra in attempts:
        try:
            done = subprocess.run([py_spy, "dump", "--pid", str(pid), "--json", *extra],
                                  capture_output=True, text=True, timeout=timeout_s,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            error = f"py-spy did not answer within {timeout_s:g}s"
            continue
        except OSError as exc:
            return None, f"cannot run py-spy: {exc}"
        if done.returncode == 0:
            try:
                return parse_py_spy_json(done.stdout, pid), None
            except ValueError as exc:
                error = f"unreadable py-spy output: {exc}"
                continue
        error = _py_spy_error(done.stderr or done.stdout)
    return None, error


def _py_spy_error(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    first = next((line for line in lines if line.startswith("Error")), lines[0] if lines else "")
    if "Permission" in text or "EPERM" in text or "Operation not permitted" in text:
        first += (" (py-spy needs root, the job's user with kernel.yama.ptrace_scope=0, or "
                  "CAP_SYS_PTRACE in a container)")
    return first[:300] or "py-spy failed"


# -- heartbeats and Flight Recorder dumps -----------------------------------------------------

def read_json_file(path: str, owners: Sequence[int],
                   limit: int = heartbeat.MAX_BYTES) -> Optional[dict[str, Any]]:
    """The JSON object in ``path`` when it is a regular file owned by one of ``owners``."""
    data = safety.read_owned_file(path, owners, limit)
    return None if data is None else heartbeat.decode(data)


def read_flight_record(path: str, not_before: float,
                       owners: Sequence[int]) -> Optional[dict[str, Any]]:
    """The summary of a dump at ``path`` written after ``not_before`` (an older one belongs to
    an earlier run of the same rank number) by the rank's user (``owners``: the default path
    is in the shared /tmp); None when there is none."""
    try:
        info = os.lstat(path)
    except OSError:
        return None
    if info.st_mtime < not_before:
        return None
    data = safety.read_owned_file(path, owners, MAX_DUMP_BYTES)
    if data is None:
        return None
    return {"path": path, "mtime": info.st_mtime, **parse_dump(data).to_json()}


def heartbeat_roots(extra: list[str], uid: Optional[int] = None) -> list[str]:
    """Folders that may hold heartbeats: given ones, $DDPCHECK_HEARTBEAT_DIR, and the default
    folder in /dev/shm and the temp dir of the user ``uid`` (every user's for root)."""
    uid = os.geteuid() if uid is None else uid
    roots = list(extra)
    if os.environ.get(heartbeat.DIR_VARIABLE):
        roots.append(os.environ[heartbeat.DIR_VARIABLE])
    pattern = heartbeat.PREFIX + ("*" if uid == 0 else str(uid))
    for base in (heartbeat.SHM_DIR, "/tmp", os.environ.get("TMPDIR") or "/tmp"):
        roots += sorted(glob.glob(os.path.join(base, pattern)))
    seen: list[str] = []
    for root in roots:
        if root and root not in seen:
            seen.append(root)
    return seen


def orphan_heartbeats(roots: list[str], hostname: str, live: set[tuple[str, int]],
                      alive: Any, uid: Optional[int] = None) -> list[dict[str, Any]]:
    """Heartbeats written on this host whose rank has no live process: dead ranks. Only files
    owned by the user whose job folder holds them, and only that user's folders unless ``uid``
    (default: ours) is root."""
    uid = os.geteuid() if uid is None else uid
    found = []
    for root in roots:
        for folder in glob.glob(os.path.join(root, "*")):
            try:
                info = os.lstat(folder)
            except OSError:
                continue
            owner = info.st_uid
            if not stat.S_ISDIR(info.st_mode) or (uid != 0 and owner != uid):
                continue  # a link in its place, or another user's folder
            for path in glob.glob(os.path.join(folder, "rank-*.json")):
                beat = read_json_file(path, (owner,))
                if beat and is_orphan(beat, hostname, live, alive):
                    found.append({**beat, "path": path})
    return found


def is_orphan(beat: dict[str, Any], hostname: str, live: set[tuple[str, int]],
              alive: Any) -> bool:
    """A heartbeat of this host whose rank is not among the live workers and whose process
    is gone (a live one is of another namespace, or a job not found as a worker)."""
    if beat.get("host") != hostname:
        return False
    rank, pid = _int_or_none(beat.get("rank")), _int_or_none(beat.get("pid"))
    if rank is None or pid is None or (str(beat.get("job")), rank) in live:
        return False
    return not alive(pid, beat.get("started"))


# -- the scan (I/O) ----------------------------------------------------------------------------

class HostScan:
    def __init__(self, window_s: float, heartbeat_dirs: list[str], stacks: bool,
                 deadline_s: float, job_filter: str = "", ras: bool = False) -> None:
        import psutil  # a dependency of ddpcheck; imported here so --help works without it

        self.psutil = psutil
        self.window_s = window_s
        self.heartbeat_dirs = heartbeat_dirs
        self.job_filter = job_filter
        self.started = time.monotonic()
        self.deadline = self.started + deadline_s
        self.py_spy = find_py_spy() if stacks else None
        self.stacks = stacks
        self.ras = ras
        self.own_netns = _netns(os.getpid())
        self.hostname = socket.gethostname()
        self.uid = os.geteuid()
        self.other_users = 0  # Python processes of other users, not inspected

    def find_workers(self) -> tuple[list[dict[str, Any]], int, int]:
        """(workers, workers skipped in other network namespaces, processes we may not read);
        other users' Python processes are only counted (``other_users``), unless we are root."""
        me = os.getpid()
        candidates, other_netns, denied = [], 0, 0
        for proc in self.psutil.process_iter(["pid", "ppid", "name", "create_time", "uids"]):
            info = proc.info
            if info["pid"] == me:
                continue
            if not_ours(info, self.uid):
                self.other_users += "python" in (info.get("name") or "")
                continue
            try:
                env = proc.environ()
            except (self.psutil.AccessDenied, self.psutil.ZombieProcess):
                denied += 1
                continue
            except self.psutil.NoSuchProcess:
                continue
            identity = worker_identity(env)
            if identity is None or self.job_filter not in identity["job"]:
                continue
            if _netns(info["pid"]) != self.own_netns:
                other_netns += 1
                continue
            try:
                cmdline = " ".join(proc.cmdline())[:300]
                cwd = proc.cwd()
            except (self.psutil.Error, OSError):
                cmdline, cwd = "", "/"
            uids = info.get("uids")
            candidates.append({
                **identity, "pid": info["pid"], "ppid": info["ppid"], "name": info["name"],
                "create_time": info["create_time"], "cmdline": cmdline,
                "uid": uids.real if uids else None,
                "env": {k: env[k] for k in KEPT_ENV if k in env},
                "heartbeat_path": heartbeat.path(heartbeat.root(env, uids.real if uids else None),
                                                 identity["job"], identity["rank"]),
                "fr_path": os.path.join(cwd, dump_prefix(env) + str(identity["rank"])),
            })
        return topmost(candidates), other_netns, denied

    def sample(self, worker: dict[str, Any], sockets: Mapping[int, Any]) -> dict[str, Any]:
        try:
            proc = self.psutil.Process(worker["pid"])
            if proc.create_time() != worker["create_time"]:
                return {"status": "gone"}
            with proc.oneshot():
                times = proc.cpu_times()
                main = main_thread_schedstat(worker["pid"])  # busy: on a CPU or runnable
                return {"status": proc.status(), "cpu_s": round(times.user + times.system, 3),
                        "threads": proc.num_threads(), "at": time.time(),
                        "busy_s": round(sum(main) / 1e9, 4) if main else None,
                        "sched": [round(ns / 1e9, 4) for ns in main] if main else None,
                        "threads_sched": threads_schedstat(worker["pid"]),
                        "throttled": cgroup_throttled(worker["pid"]),
                        "tcp": tcpinfo.process_links(worker["pid"], sockets)}
        except (self.psutil.NoSuchProcess, self.psutil.ZombieProcess):
            return {"status": "gone"}
        except self.psutil.AccessDenied:
            return {"status": "denied"}

    def stack(self, worker: dict[str, Any], status: str) -> dict[str, Any]:
        if not self.py_spy or status in ("gone", "zombie", "denied"):
            return {}
        remaining = max(2.0, min(15.0, self.deadline - time.monotonic() - 1.0))
        threads, error = take_stack(self.py_spy, worker["pid"],
                                    status in ("stopped", "tracing-stop"), remaining)
        return {"threads": threads} if threads is not None else {"error": error}

    def observe(self, workers: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One sample of every worker: state, CPU, heartbeat, stack (stacks taken in parallel,
        each py-spy pausing its process for milliseconds)."""
        sockets = tcpinfo.established_sockets() if workers else {}
        samples = [self.sample(w, sockets) for w in workers]
        beats = [read_json_file(w["heartbeat_path"], _owners(w)) for w in workers]
        stacks: list[dict[str, Any]] = [{} for _ in workers]
        if self.py_spy and workers:
            with concurrent.futures.ThreadPoolExecutor(max_workers=min(8, len(workers))) as pool:
                stacks = list(pool.map(self.stack, workers, [s["status"] for s in samples]))
        return [{**sample, "heartbeat": beat, "stack": stack}
                for sample, beat, stack in zip(samples, beats, stacks)]

    def query_ras(self, workers: list[dict[str, Any]], into: dict[str, Any]) -> None:
        """NCCL RAS's view of the job, asked through the RAS port of this host (meanwhile)."""
        env = workers[0].get("env", {}) if workers else {}
        if env.get("NCCL_RAS_ENABLE") == "0":
            into["error"] = "NCCL_RAS_ENABLE=0 in the job's environment: RAS is off"
            return
        host, port = ncclras.address(env)
        budget = max(3.0, min(30.0, self.deadline - time.monotonic() - 3.0))
        into.update(ncclras.query(host, port, budget))

    def run(self) -> dict[str, Any]:
        workers, other_netns, denied = self.find_workers()
        ras: dict[str, Any] = {}
        asking = None
        if self.ras and workers:
            asking = threading.Thread(target=self.query_ras, args=(workers, ras), daemon=True)
            asking.start()
        first_at = time.monotonic()
        first = self.observe(workers)
        rest = self.window_s - (time.monotonic() - first_at)
        states: list[dict[str, int]] = [{} for _ in workers]
        if workers and rest > 0:
            poll_states(workers, states, min(rest, max(0.0, self.deadline - time.monotonic()
                                                       - 5.0)))
        second = self.observe(workers)
        for worker, a, b, seen in zip(workers, first, second, states):
            worker["samples"] = [a, b]
            worker["states"] = seen
            worker["flight_record"] = read_flight_record(worker["fr_path"],
                                                         worker["create_time"], _owners(worker))
        live = {(w["job"], w["rank"]) for w in workers}
        gone = [beat for beat in orphan_heartbeats(heartbeat_roots(self.heartbeat_dirs),
                                                   self.hostname, live,
                                                   functools.partial(process_alive, self.psutil))
                if self.job_filter in str(beat.get("job"))]
        extra: dict[str, Any] = {}
        if asking is not None:
            asking.join(max(0.5, self.deadline - time.monotonic() - 1.0))
            extra["ras"] = dict(ras) if ras else {"error": "NCCL RAS did not answer in time"}
        return {**extra, "hostname": self.hostname, "boot_id": _boot_id(),
                "scan_pid": os.getpid(),
                "time": time.time(), "window_s": self.window_s,
                "py_spy": self.py_spy, "stacks_requested": self.stacks,
                "python": sys.executable, "workers": workers, "gone": gone,
                "other_netns": other_netns, "denied": denied,
                "other_users": self.other_users, "uid": self.uid, "ptrace_scope": ptrace_scope(),
                "duration_s": round(time.monotonic() - self.started, 3)}


def process_alive(psutil: Any, pid: int, started: Any) -> bool:
    """The process ``pid`` still runs and is the one that started at ``started``."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        if isinstance(started, (int, float)) and proc.create_time() > started + 2.0:
            return False  # the pid was reused by a later process
        return True
    except psutil.Error:
        return False


def poll_states(workers: Sequence[Mapping[str, Any]], into: list[dict[str, int]],
                duration_s: float, every_s: float = POLL_S) -> None:
    """For ``duration_s``, every ``every_s``: each worker's main thread state, counted into
    ``into`` by ``main_thread_state`` ("R", "T", "S:futex_do_wait", ...): how the window was
    spent, which two samples cannot tell (a rank stopped 40 % of the time, or asleep)."""
    until = time.monotonic() + duration_s
    while True:
        for worker, counts in zip(workers, into):
            state = main_thread_state(worker["pid"])
            if state is not None:
                counts[state] = counts.get(state, 0) + 1
        left = until - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(every_s, left))


def main_thread_state(pid: int) -> Optional[str]:
    """The main thread's state letter from /proc/PID/task/PID/stat, with its wait channel
    when it sleeps ("S:hrtimer_nanosleep", "D:io_schedule"); None when it is gone."""
    try:
        with open(f"/proc/{pid}/task/{pid}/stat", encoding="ascii", errors="replace") as handle:
            state = handle.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None
    if state in ("S", "D"):
        try:
            with open(f"/proc/{pid}/task/{pid}/wchan", encoding="ascii",
                      errors="replace") as handle:
                wchan = handle.read().strip()
        except OSError:
            wchan = ""
        if wchan and wchan != "0":
            return f"{state}:{wchan[:60]}"
    return state


def schedstat_ns(path: str) -> Optional[tuple[int, int]]:
    """(nanoseconds on a CPU, nanoseconds runnable but waiting: run queue, CPU quota) of one
    thread, from its ``schedstat`` file; None where unavailable (or the thread ended)."""
    try:
        with open(path, encoding="ascii") as handle:
            oncpu, runq = handle.read().split()[:2]
        return int(oncpu), int(runq)
    except (OSError, ValueError):
        return None


def main_thread_schedstat(pid: int) -> Optional[tuple[int, int]]:
    """The main thread's ``schedstat_ns``, from /proc/PID/task/PID/schedstat."""
    return schedstat_ns(f"/proc/{pid}/task/{pid}/schedstat")


def threads_schedstat(pid: int) -> Optional[list[float]]:
    """[seconds on a CPU, seconds runnable but waiting] of all the process's threads summed,
    from /proc/PID/task/*/schedstat: a CPU quota on the process shows in its other threads'
    run-queue time while its main thread waits for them; None where unavailable."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    read = [ns for tid in tids if (ns := schedstat_ns(f"/proc/{pid}/task/{tid}/schedstat"))]
    return [round(sum(ns[0] for ns in read) / 1e9, 4), round(sum(ns[1] for ns in read) / 1e9, 4)]


def cgroup_throttled(pid: int) -> Optional[dict[str, float]]:
    """{cpu.stat path: seconds throttled} of the process's CPU cgroup and each ancestor, where a
    CPU quota on it or above it (a pod's) is accounted; None where unreadable. The group comes
    from the kernel (``/proc/PID/cgroup``, as this scan's cgroup namespace sees it) and the
    mount points from this scan's own mountinfo, never the process's: another user's process
    cannot point the scan at a file of its choosing. Only regular files are read, without
    blocking."""
    try:
        with open(f"/proc/{pid}/cgroup", encoding="utf-8") as cgroup:
            paths = cpu_stat_paths(cgroup.read(), _own_mountinfo())
    except OSError:
        return None
    found = {}
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            if stat.S_ISREG(os.fstat(fd).st_mode):
                seconds = throttled_s(os.read(fd, 4096).decode("ascii", "replace"))
                if seconds is not None:
                    found[path] = seconds
        except OSError:
            pass
        finally:
            os.close(fd)
    return found


@functools.lru_cache(maxsize=1)
def _own_mountinfo() -> str:
    with open("/proc/self/mountinfo", encoding="utf-8") as handle:
        return handle.read()


def not_ours(info: Mapping[str, Any], uid: int) -> bool:
    """A process of another user, which a scan by ``uid`` leaves alone (root's sees all)."""
    owner = info["uids"].real if info.get("uids") else None
    return uid != 0 and owner != uid


def _owners(worker: Mapping[str, Any]) -> tuple[int, ...]:
    """Whose files may be the worker's heartbeat or dump: its user's only."""
    return (worker["uid"],) if isinstance(worker.get("uid"), int) else ()


def ptrace_scope() -> Optional[int]:
    """kernel.yama.ptrace_scope: 0 any process of the same user, 1 only descendants (py-spy
    then needs root or CAP_SYS_PTRACE), 2 admin only, 3 none; None without Yama."""
    try:
        with open("/proc/sys/kernel/yama/ptrace_scope", encoding="ascii") as handle:
            return int(handle.read().strip())
    except (OSError, ValueError):
        return None


def _netns(pid: int) -> Optional[str]:
    try:
        return os.readlink(f"/proc/{pid}/ns/net")
    except OSError:
        return None


def _boot_id() -> Optional[str]:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as handle:
            return handle.read().strip()
    except OSError:
        return None


def _int_or_none(value: Any) -> Optional[int]:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return None


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ddpcheck.remote.hangscan", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--window", type=float, default=3.0,
                        help="seconds between the two samples of every rank (default 3)")
    parser.add_argument("--heartbeat-dir", action="append", default=[],
                        help="also look for ddpcheck.Monitor heartbeats here")
    parser.add_argument("--no-stacks", action="store_true", help="do not run py-spy")
    parser.add_argument("--job", default="", help="only jobs whose key contains this")
    parser.add_argument("--deadline", type=float, default=60.0,
                        help="give up and report what was seen after this many seconds")
    parser.add_argument("--ras", action="store_true",
                        help="also ask NCCL RAS (NCCL >= 2.24) for its view of the job")
    args = parser.parse_args(argv)
    try:
        scan = HostScan(max(args.window, 0.0), args.heartbeat_dir, not args.no_stacks,
                        args.deadline, args.job, ras=args.ras)
    except ImportError as exc:
        emit("hangscan", {"hostname": socket.gethostname(), "error": f"psutil missing: {exc}"})
        return 1
    emit("hangscan", scan.run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
