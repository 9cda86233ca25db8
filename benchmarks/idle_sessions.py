"""The launcher's CPU while it holds connected but idle hosts: paramiko's own wake-up (its
transport thread's socket timeout, 0.1 s) beside ddpcheck's (``transport.client.IDLE_WAKE_S``).

Every host stays connected from stage 0 to the end of the launch (one SSH handshake per host in
all), and while a host is waiting (its stage 0 done, the others' still running; torchrun
running for minutes) its paramiko transport thread sleeps in ``recv`` with a timeout, waking to
look for a close. One namespace cluster of ``--hosts`` hosts (real sshd each); ``--per-host``
connections to each, made the way ddpcheck makes them (``SSHSession.connect``); then, for each
wake-up in turn, every held connection's socket timeout is set to it and the process's CPU is
measured over ``--seconds`` of idling; ``--reps`` alternations, medians. Root:

    .venv/bin/python benchmarks/idle_sessions.py [--hosts 32] [--per-host 4] [--seconds 10]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

from ddpcheck.config.hostsyaml import load_hosts_file  # noqa: E402
from ddpcheck.transport.client import IDLE_WAKE_S  # noqa: E402
from ddpcheck.transport.ssh import SSHSession  # noqa: E402
from hostsfile import cluster_hosts_yaml  # noqa: E402
from nscluster import NamespaceCluster  # noqa: E402

PARAMIKO_WAKE_S = 0.1  # paramiko.Transport._active_check_timeout


def idle_cpu(sessions: list[SSHSession], wake_s: float, seconds: float) -> float:
    """CPU seconds per second of this process while every session idles at ``wake_s``."""
    for session in sessions:
        session.client.get_transport().sock.settimeout(wake_s)
    time.sleep(1.0)  # every thread has gone back to sleep at the new timeout
    began = time.process_time()
    time.sleep(seconds)
    return (time.process_time() - began) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=32)
    parser.add_argument("--per-host", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        cluster = NamespaceCluster(args.hosts, pathlib.Path(tmp))
        cluster.start()
        sessions: list[SSHSession] = []
        try:
            path = cluster_hosts_yaml(cluster, pathlib.Path(tmp) / "hosts.yaml")
            spec = load_hosts_file(str(path))
            for _ in range(args.per_host):
                sessions += [SSHSession.connect(host, spec.ssh) for host in spec.hosts]
            ours, theirs = [], []
            for _ in range(args.reps):
                theirs.append(idle_cpu(sessions, PARAMIKO_WAKE_S, args.seconds))
                ours.append(idle_cpu(sessions, IDLE_WAKE_S, args.seconds))
        finally:
            for session in sessions:
                session.close()
            cluster.stop()
    held = len(sessions)
    paramiko_cpu, ddpcheck_cpu = statistics.median(theirs), statistics.median(ours)
    print(f"load average at the start: {' '.join(f'{x:.1f}' for x in load)}; {held} idle "
          f"connections ({args.hosts} hosts x {args.per_host}), medians of {args.reps}")
    print("| wake-up | CPU, % of a core | per 1,000 held hosts | ratio to paramiko's |")
    print("|---|---|---|---|")
    for name, wake, cpu in ((f"paramiko's {PARAMIKO_WAKE_S:g} s", PARAMIKO_WAKE_S,
                             paramiko_cpu),
                            (f"ddpcheck's {IDLE_WAKE_S:g} s", IDLE_WAKE_S, ddpcheck_cpu)):
        print(f"| {name} | {cpu * 100:.1f} | {cpu * 100 * 1000 / held:.0f} | "
              f"{cpu / paramiko_cpu:.2f} |")


if __name__ == "__main__":
    main()
