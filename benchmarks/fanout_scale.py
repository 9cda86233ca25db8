"""The launcher's own cost per host at 16 to 128 hosts, beside pdsh running the same command.

One namespace cluster of max(--counts) hosts (real sshd each). Hosts are made cheap, honestly:
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
and 4,096 hosts. Needs root and pdsh:

    .venv/bin/python benchmarks/fanout_scale.py [--counts 16,32,64,128] [--fanout 32]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
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


def measured(argv: list[str], env: dict | None = None) -> tuple[dict, str]:
    began = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="16,32,64,128")
    parser.add_argument("--fanout", type=int, default=32)
    args = parser.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    if not shutil.which("pdsh"):
        raise SystemExit("pdsh is not installed (apt-get install pdsh)")
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
                                    "--skip", "rendezvous", "--json", str(report), "-q"])
                data = json.loads(report.read_text())
                missing = [h["name"] for h in data["hosts"] if not h["hostname"]]
                if len(data["hosts"]) != count or missing:
                    raise SystemExit(f"ddpcheck lost hosts at {count}: {missing}")
                env = {**os.environ, "PDSH_RCMD_TYPE": "ssh",
                       "PDSH_SSH_ARGS_APPEND": f"-F {cluster.ssh_config}"}
                theirs, out = measured(["pdsh", "-R", "ssh", "-f", str(args.fanout), "-w",
                                        ",".join(h.name for h in hosts), commands.pop()], env)
                answered = {line.split(":", 1)[0] for line in out.splitlines()
                            if "@@DDPCHECK facts " in line}
                if answered != {h.name for h in hosts}:
                    raise SystemExit(f"pdsh lost hosts at {count}: "
                                     f"{sorted({h.name for h in hosts} - answered)}")
                rows.append((count, ours, theirs))
                print(f"{count} hosts: ddpcheck {ours}  pdsh {theirs}", file=sys.stderr)
        finally:
            cluster.stop()
    print(f"load average at the start: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} "
          f"(2 cores); fan-out {args.fanout}")
    print("| hosts | CPU ms/host ddpcheck | CPU ms/host pdsh (+ssh) | ddpcheck/pdsh CPU | "
          "wall ddpcheck/pdsh | RSS MB ddpcheck | threads ddpcheck | fds ddpcheck |")
    print("|---|---|---|---|---|---|---|---|")
    for count, ours, theirs in rows:
        print(f"| {count} | {1000 * ours['cpu_s'] / count:.0f} | "
              f"{1000 * theirs['cpu_s'] / count:.0f} | {ours['cpu_s'] / theirs['cpu_s']:.2f} | "
              f"{ours['wall_s'] / theirs['wall_s']:.2f} | {ours['rss_mb']:.0f} | "
              f"{ours['threads']} | {ours['fds']} |")
    xs = [float(c) for c, _, _ in rows]
    for name, index in (("ddpcheck", 1), ("pdsh", 2)):
        a, b = fit(xs, [r[index]["cpu_s"] for r in rows])
        wall_a, wall_b = fit(xs, [r[index]["wall_s"] for r in rows])
        print(f"{name}: CPU = {a:.2f} s + {1000 * b:.0f} ms x hosts -> 1,000 hosts "
              f"{a + 1000 * b:.0f} s, 4,096 hosts {a + 4096 * b:.0f} s of CPU; wall "
              f"{wall_a + 1000 * wall_b:.0f} s / {wall_a + 4096 * wall_b:.0f} s (on 2 shared "
              f"cores that also run every host)")


if __name__ == "__main__":
    main()
