"""The launcher's own cost per host at 16 to 1,000+ hosts, beside pdsh running the same command.

One namespace cluster of max(--counts) hosts (real sshd each; past 253 hosts a larger subnet,
past 1,023 a second bridge: ``tests/nscluster.py``). Hosts are made cheap, honestly:
their ``python:`` is the system interpreter without torch, so stage 0 runs the real agent, reports
its facts and stops at the torch import within a second; the 2 shared cores then measure the
launcher, not torch. For each host count, ``ddpcheck preflight --skip rendezvous`` (a process:
load hosts.yaml, connect, stage 0 everywhere, analysis, report; without the rendezvous check,
which stage 0 makes and which gives the master and each host a command of its own) and
``pdsh -R ssh -f FANOUT`` (OpenSSH with the cluster's config and key) running the identical
stage-0 command line on the same hosts, each
as a child of this script, interleaved. Per run: CPU seconds of the process and all its
children (``wait4``: pdsh counts its ssh processes), peak RSS of the launcher, peak threads and
open files of the launcher (sampled from /proc every 50 ms), wall time. Every host must answer
in both. A least-squares line CPU = a + b x hosts is fitted to each tool and projected to 1,000
and 4,096 hosts (with two counts or more).

With ``--hang``, ``ddpcheck hang`` runs too at each count, beside preflight on the same hosts:
every host's scan (``python -m ddpcheck.remote.hangscan``, this interpreter, which has psutil;
no job runs, so each host answers that it has no torchrun worker), the launcher's CPU per host,
how many hosts were scanned or not reached, and the report's length in lines and characters
(the longest line too). ``--no-pdsh`` leaves pdsh out (at 1,000 hosts it costs minutes of CPU
on the shared cores). The cluster is torn down at the end, on an error, Ctrl-C or SIGTERM.
Needs root (and pdsh unless --no-pdsh):

    .venv/bin/python benchmarks/fanout_scale.py [--counts 16,32,64,128] [--fanout 32]
    .venv/bin/python benchmarks/fanout_scale.py --counts 1030 --hang --no-pdsh --timeout 600 \\
        --hang-timeout 400 --hang-timeout 60
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

from hostsfile import cluster_hosts_yaml  # noqa: E402
from nscluster import NamespaceCluster  # noqa: E402

SYSTEM_PYTHON = "/usr/bin/python3"


def sample(pid: int, peaks: dict, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            status = pathlib.Path(f"/proc/{pid}/status").read_text()
            threads = int(status.split("Threads:")[1].split()[0])
            fds = len(os.listdir(f"/proc/{pid}/fd"))
        except (OSError, IndexError, ValueError):
            break
        peaks["threads"] = max(peaks.get("threads", 0), threads)
        peaks["fds"] = max(peaks.get("fds", 0), fds)
        time.sleep(0.05)


def measured(argv: list[str], env: dict | None = None,
             stderr: int = subprocess.STDOUT) -> tuple[dict, str]:
    began = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=stderr, env=env)
    peaks: dict = {}
    stop = threading.Event()
    sampler = threading.Thread(target=sample, args=(proc.pid, peaks, stop), daemon=True)
    sampler.start()
    output = proc.stdout.read().decode("utf-8", "replace")
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    stop.set()
    sampler.join()
    return {"wall_s": time.monotonic() - began, "cpu_s": usage.ru_utime + usage.ru_stime,
            "rss_mb": usage.ru_maxrss / 1024, "threads": peaks.get("threads", 0),
            "fds": peaks.get("fds", 0), "rc": proc.returncode}, output


def fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return my - b * mx, b


def hang_run(cluster, hosts: list, tmp: pathlib.Path, fanout: int, timeout_s: float) -> dict:
    """``ddpcheck hang`` over ``hosts``: the launcher's cost, what came back, the report's size."""
    path = tmp / f"hang{len(hosts)}.yaml"
    cluster_hosts_yaml(
        cluster, path, hosts, slots=1,
        host_overrides={h.name: {"workdir": str(tmp / "work")} for h in hosts},
        extra={"ssh": {"known_hosts": str(cluster.known_hosts), "connect_timeout": 10,
                       "fanout": fanout},
               "defaults": {"user": "root", "identity_file": str(cluster.identity_file),
                            "python": sys.executable, "env": {"PYTHONPATH": str(REPO)}}})
    report = tmp / f"hang{len(hosts)}.json"
    # the report on stdout is measured; the progress lines (stderr) are made, not kept
    usage, text = measured([sys.executable, "-m", "ddpcheck", "hang", str(path),
                            "--json", str(report), "--no-stacks", "--no-ras",
                            "--timeout", f"{timeout_s:g}"], stderr=subprocess.DEVNULL)
    data = json.loads(report.read_text())
    by_host = {f["host"]: f["message"] for f in data["findings"] if f.get("host")}
    lines = text.splitlines()
    usage.update(scanned=sum(1 for h in data["hosts"] if h["stage"] == "done"),
                 not_reached=sum(1 for m in by_host.values() if "not reached in time" in m),
                 lines=len(lines), chars=len(text), widest=max(map(len, lines), default=0),
                 text=text)
    return usage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="16,32,64,128")
    parser.add_argument("--fanout", type=int, default=32)
    parser.add_argument("--hang", action="store_true", help="run ddpcheck hang at each count too")
    parser.add_argument("--hang-timeout", type=float, action="append", metavar="SECONDS",
                        help="ddpcheck hang's --timeout (default 60, its own); may repeat: a "
                             "run for each")
    parser.add_argument("--no-pdsh", action="store_true", help="leave pdsh out")
    parser.add_argument("--timeout", type=float, default=180.0,
                        help="preflight's --timeout (default 180, its own)")
    args = parser.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    timeouts = args.hang_timeout or [60.0]
    if not args.no_pdsh and not shutil.which("pdsh"):
        raise SystemExit("pdsh is not installed (apt-get install pdsh), or pass --no-pdsh")
    # SIGTERM (timeout(1), a CI runner) unwinds like Ctrl-C, so the cluster is torn down
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    from ddpcheck.config.hostsyaml import load_hosts_file
    from ddpcheck.engine.preflight import STAGE0_DEADLINE_S
    from ddpcheck.plan.cmdlines import stage0_command

    load = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cluster = NamespaceCluster(max(counts), pathlib.Path(tmp))
        began = time.monotonic()
        cluster.start()
        print(f"cluster of {max(counts)} hosts up in {time.monotonic() - began:.0f}s",
              file=sys.stderr)
        try:
            for count in counts:
                hosts = cluster.hosts[:count]
                path = pathlib.Path(tmp) / f"h{count}.yaml"
                cluster_hosts_yaml(
                    cluster, path, hosts, slots=1,
                    host_overrides={h.name: {"workdir": str(pathlib.Path(tmp) / "work")}
                                    for h in hosts},
                    extra={"ssh": {"known_hosts": str(cluster.known_hosts),
                                   "connect_timeout": 10, "fanout": args.fanout},
                           "defaults": {"user": "root",
                                        "identity_file": str(cluster.identity_file),
                                        "python": SYSTEM_PYTHON,
                                        "env": {"PYTHONPATH": str(REPO)}}})
                spec = load_hosts_file(str(path))
                commands = {stage0_command(h, STAGE0_DEADLINE_S, spec.master_host.address)
                            for h in spec.hosts}
                assert len(commands) == 1, commands
                report = pathlib.Path(tmp) / f"r{count}.json"
                ours, _ = measured([sys.executable, "-m", "ddpcheck", "preflight", str(path),
                                    "--skip", "rendezvous", "--json", str(report), "-q",
                                    "--timeout", f"{args.timeout:g}"])
                data = json.loads(report.read_text())
                missing = [h["name"] for h in data["hosts"] if not h["hostname"]]
                if len(data["hosts"]) != count or (missing and not args.hang):
                    raise SystemExit(f"ddpcheck lost hosts at {count}: {missing}")
                ours["lost"] = len(missing)  # with --hang, counted rather than fatal
                theirs = None
                if not args.no_pdsh:
                    env = {**os.environ, "PDSH_RCMD_TYPE": "ssh",
                           "PDSH_SSH_ARGS_APPEND": f"-F {cluster.ssh_config}"}
                    theirs, out = measured(["pdsh", "-R", "ssh", "-f", str(args.fanout), "-w",
                                            ",".join(h.name for h in hosts), commands.pop()],
                                           env)
                    answered = {line.split(":", 1)[0] for line in out.splitlines()
                                if "@@DDPCHECK facts " in line}
                    if answered != {h.name for h in hosts}:
                        raise SystemExit(f"pdsh lost hosts at {count}: "
                                         f"{sorted({h.name for h in hosts} - answered)}")
                hangs = [hang_run(cluster, hosts, pathlib.Path(tmp), args.fanout, seconds)
                          for seconds in timeouts] if args.hang else []
                rows.append((count, ours, theirs, hangs))
                shown = [{k: v for k, v in hang.items() if k != "text"} for hang in hangs]
                print(f"{count} hosts: ddpcheck {ours}  pdsh {theirs}  hang {shown}",
                      file=sys.stderr)
        finally:
            began = time.monotonic()
            cluster.stop()
            print(f"cluster torn down in {time.monotonic() - began:.0f}s", file=sys.stderr)
    print(f"load average at the start: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} "
          f"(2 cores); fan-out {args.fanout}")
    if not args.no_pdsh:
        print("| hosts | CPU ms/host ddpcheck | CPU ms/host pdsh (+ssh) | ddpcheck/pdsh CPU | "
              "wall ddpcheck/pdsh | RSS MB ddpcheck | threads ddpcheck | fds ddpcheck |")
        print("|---|---|---|---|---|---|---|---|")
        for count, ours, theirs, _ in rows:
            print(f"| {count} | {1000 * ours['cpu_s'] / count:.0f} | "
                  f"{1000 * theirs['cpu_s'] / count:.0f} | "
                  f"{ours['cpu_s'] / theirs['cpu_s']:.2f} | "
                  f"{ours['wall_s'] / theirs['wall_s']:.2f} | {ours['rss_mb']:.0f} | "
                  f"{ours['threads']} | {ours['fds']} |")
    if args.hang:
        print("| hosts | hang --timeout | CPU ms/host preflight | CPU ms/host hang | "
              "hang/preflight CPU | wall hang/preflight | hosts scanned | not reached | exit | "
              "report lines | report chars | longest line | RSS MB hang | threads hang |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for count, ours, _, hangs in rows:
            for seconds, hang in zip(timeouts, hangs):
                print(f"| {count} | {seconds:g} s | {1000 * ours['cpu_s'] / count:.0f} | "
                      f"{1000 * hang['cpu_s'] / count:.0f} | "
                      f"{hang['cpu_s'] / ours['cpu_s']:.2f} | "
                      f"{hang['wall_s'] / ours['wall_s']:.2f} | {hang['scanned']} | "
                      f"{hang['not_reached']} | {hang['rc']} | {hang['lines']} | "
                      f"{hang['chars']} | {hang['widest']} | {hang['rss_mb']:.0f} | "
                      f"{hang['threads']} |")
        print(f"preflight lost {rows[-1][1]['lost']} host(s) at {rows[-1][0]}")
        for seconds, hang in zip(timeouts, rows[-1][3]):
            print(f"hang's report at {rows[-1][0]} hosts, --timeout {seconds:g}:")
            print("\n".join(f"    {line}" for line in hang["text"].splitlines()))
    if len(rows) < 2:
        return
    xs = [float(c) for c, _, _, _ in rows]
    for name, index in (("ddpcheck", 1),) + ((("pdsh", 2),) if not args.no_pdsh else ()):
        a, b = fit(xs, [r[index]["cpu_s"] for r in rows])
        wall_a, wall_b = fit(xs, [r[index]["wall_s"] for r in rows])
        print(f"{name}: CPU = {a:.2f} s + {1000 * b:.0f} ms x hosts -> 1,000 hosts "
              f"{a + 1000 * b:.0f} s, 4,096 hosts {a + 4096 * b:.0f} s of CPU; wall "
              f"{wall_a + 1000 * wall_b:.0f} s / {wall_a + 4096 * wall_b:.0f} s (on 2 shared "
              f"cores that also run every host)")


if __name__ == "__main__":
    main()
