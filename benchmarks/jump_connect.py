"""Connecting through a ProxyJump host: one shared jump connection against one per host.

On the namespace cluster (real sshd per host), hosts h2..hN are reached through h1 three ways,
interleaved in one run so the ratios hold on a noisy machine; each way connects to every host at
once (fan-out) and runs ``true`` on it:

* shared: ddpcheck's JumpPool, one authenticated connection to h1 for all hosts behind it;
* per host: a fresh jump connection for every host (what N separate ``ssh -J h1 hK`` do);
* direct: no jump host at all (the floor).

Two measures per way: wall time, and the CPU time the jump host's sshd spent (its listener's
own and reaped children's user+system time, read from /proc inside h1's namespace): the cost
the bastion pays, which is what sharing saves when hundreds of hosts sit behind it.

Needs root.  .venv/bin/python benchmarks/jump_connect.py [--hosts 8] [--reps 5]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import replace

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from nscluster import NamespaceCluster  # noqa: E402

from ddpcheck.model.spec import HostSpec, SSHSpec  # noqa: E402
from ddpcheck.transport.fanout import fan_out  # noqa: E402
from ddpcheck.transport.jump import JumpPool  # noqa: E402
from ddpcheck.transport.ssh import SSHSession  # noqa: E402


def sshd_cpu_s(cluster: NamespaceCluster, host) -> float:
    """CPU seconds of everything in the host's netns, reaped children included."""
    total = 0
    for pid in cluster.pids_in(host) + [cluster.sshd_pid(host)]:
        try:
            with open(f"/proc/{pid}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except (OSError, TypeError):
            continue
        total += sum(int(fields[i]) for i in (11, 12, 13, 14))  # utime stime cutime cstime
    return total / os.sysconf("SC_CLK_TCK")


def connect_all(hosts: list[HostSpec], ssh: SSHSpec, shared: bool) -> float:
    pool = JumpPool(ssh) if shared else None
    sessions: list[SSHSession] = []
    lock = threading.Lock()

    def work(host: HostSpec) -> None:
        session = SSHSession.connect(host, ssh, pool)
        with lock:
            sessions.append(session)
        result = session.run("true", time.monotonic() + 30, threading.Event())
        if result.exit_code != 0:
            raise RuntimeError(f"{host.name}: {result.output}")

    began = time.monotonic()
    try:
        outcomes = fan_out(hosts, work, len(hosts), threading.Event())
        elapsed = time.monotonic() - began
    finally:
        for session in sessions:
            session.close()
        if pool is not None:
            pool.close()
    errors = [o.error for o in outcomes if o.error is not None]
    if errors:
        raise SystemExit(f"connect failed: {errors[0]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hosts", type=int, default=8)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        with NamespaceCluster(args.hosts, pathlib.Path(tmp)) as cluster:
            ssh = SSHSpec(known_hosts=str(cluster.known_hosts), connect_timeout=10,
                          jump_handshakes=32)
            jump = HostSpec(name="h1", address=cluster.hosts[0].address, user="root",
                            identity_file=str(cluster.identity_file))
            direct = [replace(jump, name=h.name, address=h.address)
                      for h in cluster.hosts[1:]]
            behind = [replace(h, jumps=(jump,)) for h in direct]
            times: dict[str, list[float]] = {"shared": [], "per host": [], "direct": []}
            cpu: dict[str, list[float]] = {"shared": [], "per host": []}
            ways = (("shared", behind, True), ("per host", behind, False),
                    ("direct", direct, True))
            for _ in range(args.reps):
                for name, hosts, shared in ways:
                    before = sshd_cpu_s(cluster, cluster.hosts[0])
                    times[name].append(connect_all(hosts, ssh, shared))
                    time.sleep(0.5)  # let the jump host's sshd reap its children
                    if name in cpu:
                        cpu[name].append(sshd_cpu_s(cluster, cluster.hosts[0]) - before)
    median = {name: statistics.median(values) for name, values in times.items()}
    cpu_median = {name: statistics.median(values) for name, values in cpu.items()}
    print(f"{len(behind)} hosts behind one jump host, median of {args.reps}:")
    print(f"  wall time, per host / shared:          {median['per host'] / median['shared']:.2f}")
    print(f"  wall time, shared / direct:            {median['shared'] / median['direct']:.2f}")
    print(f"  jump host sshd CPU, per host / shared: "
          f"{cpu_median['per host'] / max(cpu_median['shared'], 1e-9):.2f}")


if __name__ == "__main__":
    main()
