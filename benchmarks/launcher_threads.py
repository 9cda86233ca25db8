"""The launcher's threads and CPU while N hosts run a command, a thread per host beside one
thread waiting on all of them (``multiplex.run_many``, the way of ``SSHLauncher.run_jobs``).

One namespace cluster of max(--counts) hosts (real sshd each), connected once. For each host
count, the same command (``sleep 3; echo done``) runs on that many hosts, alternately:

* per-host: ``fan_out(hosts, SSHSession.run, len(hosts))``, the launcher's former way (kept
  here only, for the comparison): a thread per host polls its channel;
* one-waiter: ``SSHLauncher.run_jobs``: starts ``--fanout`` at once, then one thread waits.

Measured in this process: peak threads (sampled every 20 ms; paramiko's one transport thread
per connection counted apart, it stays either way), CPU seconds of the process during the run
(``time.process_time``: the transport threads' crypto is the same in both), wall time. Every host
must answer ``done`` in both. Ratios per count, medians of ``--reps`` alternated runs. Root:

    .venv/bin/python benchmarks/launcher_threads.py [--counts 16,32,64] [--fanout 16]

At 128 hosts on a 2-core machine the hosts' own start-up is the limit: 128 login shells at once
(whose start-up files, on the machine measured, take a lock in turn) did not all reach ``done``
within the 60 s deadline; the counts measured before are still reported.
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

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

import paramiko  # noqa: E402

from ddpcheck.engine.launchers import HostJob, SSHLauncher  # noqa: E402
from ddpcheck.model.spec import ClusterSpec, HostSpec, SSHSpec  # noqa: E402
from ddpcheck.transport.fanout import fan_out  # noqa: E402
from ddpcheck.transport.ssh import SSHSession  # noqa: E402
from launcherrun import launcher_run  # noqa: E402
from nscluster import NamespaceCluster  # noqa: E402

COMMAND = "sleep 3; echo done"



def measured(work) -> dict:
    """Peak threads (all, and less paramiko's transports), CPU and wall of ``work()``."""
    peak = {"all": 0, "ours": 0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            threads = threading.enumerate()
            peak["all"] = max(peak["all"], len(threads) - 1)  # less this sampler
            peak["ours"] = max(peak["ours"], sum(
                not isinstance(t, paramiko.Transport) for t in threads) - 1)
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    cpu, wall = time.process_time(), time.monotonic()
    outputs = work()
    cpu, wall = time.process_time() - cpu, time.monotonic() - wall
    stop.set()
    sampler.join()
    if not all(out.strip().endswith("done") for out in outputs):
        raise SystemExit(f"a host did not answer: {[o for o in outputs if 'done' not in o][:3]}")
    return {"threads": peak["all"], "ours": peak["ours"], "cpu_s": cpu, "wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="16,32,64")
    parser.add_argument("--fanout", type=int, default=16)
    parser.add_argument("--reps", type=int, default=2)
    args = parser.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    load = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cluster = NamespaceCluster(max(counts), pathlib.Path(tmp))
        cluster.start()
        spec = ClusterSpec(hosts=tuple(
            HostSpec(name=h.name, address=h.address, user="root",
                     identity_file=str(cluster.identity_file)) for h in cluster.hosts),
            ssh=SSHSpec(known_hosts=str(cluster.known_hosts), fanout=args.fanout))
        launcher = SSHLauncher()
        try:
            connected = fan_out(list(spec.hosts), lambda h: SSHSession.connect(h, spec.ssh),
                                args.fanout, threading.Event())
            launcher.sessions = {o.item.name: o.result for o in connected}
            run = launcher_run(spec, 3600.0)
            for count in counts:
                names = [h.name for h in spec.hosts[:count]]

                def per_host() -> list[str]:
                    deadline = time.monotonic() + 60
                    outcomes = fan_out(names, lambda name: launcher.sessions[name].run(
                        COMMAND, deadline, run.state.cancel), len(names), run.state.cancel)
                    return [o.result.output if o.result else "" for o in outcomes]

                def one_waiter() -> list[str]:
                    results = launcher.run_jobs(run, [HostJob(n, COMMAND, 60) for n in names])
                    return [results[i].output if i in results else "" for i in range(count)]

                before, after = [], []
                try:
                    for rep in range(args.reps):  # alternated: neither always runs first
                        pair = (per_host, one_waiter) if rep % 2 == 0 else (one_waiter, per_host)
                        for work in pair:
                            (before if work is per_host else after).append(measured(work))
                except SystemExit as exc:  # the counts measured so far are still reported
                    print(f"{count} hosts: stopped: {exc}", file=sys.stderr)
                    break
                rows.append((count, before, after))
                print(f"{count}: per-host {before} one-waiter {after}", file=sys.stderr)
        finally:
            launcher.close()
            cluster.stop()
    print(f"load average at the start: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} (2 cores); "
          f"fan-out {args.fanout}; medians of {args.reps} alternated runs; command "
          f"'{COMMAND}'")
    print("| hosts | peak threads, not paramiko's: thread per host | the same: one waiter | "
          "all threads (connections open): per host / one waiter | CPU ms/host: per host / "
          "one waiter | CPU one waiter / per host | wall one waiter / per host |")
    print("|---|---|---|---|---|---|---|")
    for count, before, after in rows:
        med = {k: (statistics.median(r[k] for r in before),
                   statistics.median(r[k] for r in after))
               for k in ("threads", "ours", "cpu_s", "wall_s")}
        cpu, wall = med["cpu_s"], med["wall_s"]
        print(f"| {count} | {med['ours'][0]:.0f} | {med['ours'][1]:.0f} | "
              f"{med['threads'][0]:.0f} / {med['threads'][1]:.0f} | "
              f"{1000 * cpu[0] / count:.1f} / {1000 * cpu[1] / count:.1f} | "
              f"{cpu[1] / cpu[0]:.2f} | {wall[1] / wall[0]:.2f} |")

if __name__ == "__main__":
    main()
