"""How fast ``ddpcheck hang`` names a stopped rank, and what ``Monitor.step`` costs per step.

1. Time to name: on the namespace cluster (real sshd per host, gloo over veths, 2 ranks per
   host) a job that never imports ddpcheck runs tests/hangjob.py; its last rank is stopped with
   SIGSTOP, and at that moment ``ddpcheck hang HOSTS`` is started (default window, py-spy
   stacks). The time from the stop to ddpcheck's exit with that rank named is set beside NCCL's
   default collective timeout (600 s), the time after which a user learns anything today,
   which also never names the rank. The rank is continued between repetitions, so one job
   serves every repetition of a host count. Needs root.

2. Roles when the stop lands inside a collective (``--stops N``, this part alone): a job with the Monitor and no
   sleep between steps (so most stops land inside an all_reduce) on 2 hosts; its last rank is
   stopped N times at a random moment, ``ddpcheck hang`` runs a second later, and the rank is
   continued. Counted: the stops after which the other ranks were not all in one collective
   (the stopped rank's ring sends let some finish it), and the runs that named anything but
   the stopped rank as the culprit or called another rank anything but waiting.

3. Monitor.step cost: the time of ``monitor.step(step)`` over the time of an empty training
   step (zero_grad, forward and backward of a 16x16 Linear on one sample, SGD step), each timed
   over 1000 calls as a pair in one process (order alternating), the median of 15 pairs'
   ratios. With the default (/dev/shm, stragglers on; ``step()`` records, the Monitor's thread
   writes each new step within 0.1 s), the same without stragglers, a write in ``step()`` on every step to /dev/shm, and the same to a disk
   folder (why the default is /dev/shm).

    .venv/bin/python benchmarks/hang_detection.py [--reps 3] [--slots 2] [--skip-cluster]
        [--stops N]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

NCCL_DEFAULT_TIMEOUT_S = 600.0


def time_to_name(cluster, hosts, slots: int, port: int, reps: int, workdir: pathlib.Path):
    from hostsfile import cluster_hosts_yaml
    from torchrunjob import start_job

    hosts_yaml = cluster_hosts_yaml(cluster, workdir / "hosts.yaml", hosts, slots=slots)
    job = start_job(cluster, hosts, slots, port, workdir)
    times = []
    try:
        pids = job.wait_ready(180)
        victim = max(pids)
        for rep in range(reps):
            report = workdir / f"hang-{rep}.json"
            stopped_at = time.monotonic()
            os.kill(pids[victim], signal.SIGSTOP)
            done = subprocess.run([sys.executable, "-m", "ddpcheck", "hang", str(hosts_yaml),
                                   "--json", str(report)], capture_output=True, text=True,
                                  timeout=120)
            elapsed = time.monotonic() - stopped_at
            os.kill(pids[victim], signal.SIGCONT)
            root = json.loads(report.read_text())["findings"][0]
            if done.returncode != 1 or root.get("rank") != victim:
                raise SystemExit(f"hang did not name rank {victim}:\n{done.stdout}{done.stderr}")
            times.append(elapsed)
            time.sleep(1.0)  # the job runs on
    finally:
        job.stop()
    return times


def stop_roles(cluster, hosts, slots: int, port: int, stops: int,
               workdir: pathlib.Path) -> dict[str, int]:
    from hostsfile import cluster_hosts_yaml
    from torchrunjob import start_job

    hosts_yaml = cluster_hosts_yaml(cluster, workdir / "hosts.yaml", hosts, slots=slots)
    beats = workdir / "heartbeats"
    job = start_job(cluster, hosts, slots, port, workdir, ["--use-monitor", "--sleep", "0"],
                    env={"DDPCHECK_HEARTBEAT_DIR": str(beats)})
    counts = {"stops": 0, "split": 0, "wrong": 0}
    try:
        pids = job.wait_ready(180)
        victim = max(pids)
        for rep in range(stops):
            time.sleep(random.uniform(0.5, 1.0))
            os.kill(pids[victim], signal.SIGSTOP)
            time.sleep(1.0)
            report = workdir / f"stop-{rep}.json"
            subprocess.run([sys.executable, "-m", "ddpcheck", "hang", str(hosts_yaml), "--json",
                            str(report), "--window", "2", "--heartbeat-dir", str(beats)],
                           capture_output=True, text=True, timeout=120)
            os.kill(pids[victim], signal.SIGCONT)
            data = json.loads(report.read_text())
            (found,) = data["jobs"]
            others = [r for r in found["ranks"] if r["rank"] != victim]
            counts["stops"] += 1
            counts["split"] += len({r["seq"] for r in others}) > 1
            counts["wrong"] += (found["culprits"] != [victim]
                                or any(r["role"] != "waiting" for r in others))
    finally:
        job.stop()
    return counts


def monitor_cost(rounds: int = 15, steps: int = 1000) -> dict[str, float]:
    import torch

    import ddpcheck
    from ddpcheck.core.heartbeat import SHM_DIR

    torch.set_num_threads(1)
    model = torch.nn.Linear(16, 16)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    sample = torch.randn(1, 16)
    shm = tempfile.mkdtemp(prefix="ddpcheck-bench-", dir=SHM_DIR if os.path.isdir(SHM_DIR)
                           else None)
    disk = tempfile.mkdtemp(prefix="ddpcheck-bench-", dir=os.path.dirname(HERE))
    env = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "TORCHELASTIC_RUN_ID": "bench"}
    monitors = {"default": ddpcheck.Monitor(shm, env=env),
                "heartbeat_only": ddpcheck.Monitor(shm, env={**env, "TORCHELASTIC_RUN_ID": "b3"},
                                                   stragglers=False),
                "every_step": ddpcheck.Monitor(shm, env={**env, "TORCHELASTIC_RUN_ID": "b2"},
                                               write_every_s=0.0),
                "every_step_disk": ddpcheck.Monitor(disk, env=env, write_every_s=0.0)}

    def empty_steps() -> float:
        began = time.perf_counter()
        for _ in range(steps):
            optimizer.zero_grad()
            model(sample).sum().backward()
            optimizer.step()
        return (time.perf_counter() - began) / steps

    def monitor_steps(monitor) -> float:
        began = time.perf_counter()
        for step in range(steps):
            monitor.step(step)
        return (time.perf_counter() - began) / steps

    empty_steps()  # warm up
    ratios: dict[str, list[float]] = {name: [] for name in monitors}
    empties = []
    for round_index in range(rounds):
        for name, monitor in monitors.items():
            if round_index % 2:
                empty, cost = empty_steps(), monitor_steps(monitor)
            else:
                cost, empty = monitor_steps(monitor), empty_steps()
            empties.append(empty)
            ratios[name].append(cost / empty)
    for monitor in monitors.values():
        monitor.close()
    for folder in (shm, disk):
        shutil.rmtree(folder, ignore_errors=True)
    return {"empty_step_us": statistics.median(empties) * 1e6,
            **{f"{name}_ratio": statistics.median(values) for name, values in ratios.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--skip-cluster", action="store_true")
    parser.add_argument("--stops", type=int, default=0,
                        help="run part 2 only: stop the last rank this many times")
    args = parser.parse_args()
    if not args.skip_cluster:
        from nscluster import NamespaceCluster

        with tempfile.TemporaryDirectory() as tmp:
            cluster = NamespaceCluster(4, pathlib.Path(tmp))
            cluster.start()
            try:
                if args.stops:
                    workdir = pathlib.Path(tmp) / "stops"
                    workdir.mkdir()
                    counts = stop_roles(cluster, cluster.hosts[:2], args.slots, 29849,
                                        args.stops, workdir)
                    print(f"stops: {counts['stops']}, the others split over two collectives: "
                          f"{counts['split']}, misnamed: {counts['wrong']}", flush=True)
                    return
                print("| hosts | ranks | time to name the stopped rank (median of "
                      f"{args.reps}) | ratio to NCCL's 600 s |\n|---|---|---|---|")
                for index, count in enumerate((1, 2, 4)):
                    workdir = pathlib.Path(tmp) / f"h{count}"
                    workdir.mkdir()
                    times = time_to_name(cluster, cluster.hosts[:count], args.slots,
                                         29850 + index, args.reps, workdir)
                    median = statistics.median(times)
                    print(f"| {count} | {count * args.slots} | {median:.1f} s | "
                          f"{median / NCCL_DEFAULT_TIMEOUT_S:.4f} (1/{NCCL_DEFAULT_TIMEOUT_S / median:.0f}) |",
                          flush=True)
            finally:
                cluster.stop()
    cost = monitor_cost()
    print(f"\nempty training step: median {cost['empty_step_us']:.0f} us")
    print("| Monitor.step | its cost / an empty step's time (median of 15 paired rounds)"
          " |\n|---|---|")
    print(f"| default: /dev/shm, stragglers on, the thread writes | {cost['default_ratio']:.4f} |")
    print(f"| stragglers=False (heartbeat only) | {cost['heartbeat_only_ratio']:.4f} |")
    print(f"| write_every_s=0: a write on every step, /dev/shm | "
          f"{cost['every_step_ratio']:.4f} |")
    print(f"| write_every_s=0 on the checkout's disk | {cost['every_step_disk_ratio']:.4f} |")


if __name__ == "__main__":
    main()
