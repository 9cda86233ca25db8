"""Stragglers: what the Monitor's bookkeeping costs, how fast a slowed rank is named, how often
a healthy run is blamed, and what the compute check adds to preflight. Needs root (namespace
cluster, cgroup CPU quota).

1. Cost: tests/stragglerjob.py (a real small DDP step: 4-layer MLP, gloo, SGD) on 3 hosts of
   the namespace cluster, one rank each, with the Monitor; every rank times each
   ``monitor.step()`` (its heartbeat writes included) beside its training step, and reads the
   CPU time of the Monitor's thread (exchange, heartbeats) against the training thread's.
   Ratios (median of the 3 ranks): mean monitor.step / mean step; Monitor thread CPU /
   training thread CPU; each beside a run with ``Monitor(stragglers=False)`` (heartbeat only).
2. False alarms: the same healthy run, ``--healthy-steps`` steps: straggler lines logged.
3. Onset to naming: a wider model (compute-bound steps); each repetition throttles another rank
   to 3 % of a CPU (cgroup cpu.cfs_quota_us) and counts that rank's steps from the onset until
   every rank has logged it, then lifts the quota.
4. Compute check: one ``ddpcheck preflight`` (3 hosts x 2 ranks): the compute stage's wall time
   (the slowest rank's) over the whole preflight's.

    .venv/bin/python benchmarks/straggler.py [--healthy-steps 1500] [--reps 3]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import statistics
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

JOB = HERE.parent / "tests" / "stragglerjob.py"


def straggler_lines(job) -> list[str]:
    return [line for host in job.hosts for line in job.log_of(host).splitlines()
            if "straggler:" in line]


def healthy_run(cluster, workdir: pathlib.Path, steps: int, port: int,
                *extra: str) -> dict:
    from torchrunjob import start_job

    workdir.mkdir()
    job = start_job(cluster, cluster.hosts[:3], 1, port, workdir,
                    ["--use-monitor", "--width", "256", "--steps", str(steps), "--measure",
                     str(workdir / "cost-"), *extra],
                    env={"DDPCHECK_HEARTBEAT_DIR": str(workdir / "beats")}, script=JOB)
    try:
        job.wait_ready(180)
        for proc in job.procs:
            proc.wait(timeout=steps * 2 + 120)
        costs = [json.loads((workdir / f"cost-{rank}.json").read_text()) for rank in range(3)]
        return {"steps": steps, "false_alarms": len(straggler_lines(job)),
                "monitor.step/step": statistics.median(c["monitor_step_s"] / c["step_s"]
                                                       for c in costs),
                "monitor thread/training thread CPU": statistics.median(
                    c["monitor_thread_cpu_s"] / c["training_thread_cpu_s"] for c in costs),
                "monitor.step/step, medians": statistics.median(
                    c["monitor_step_median_s"] / c["step_median_s"] for c in costs),
                "step_ms": statistics.median(c["step_s"] for c in costs) * 1e3}
    finally:
        job.stop()


def onset_to_naming(cluster, workdir: pathlib.Path, reps: int) -> list[int]:
    import cpuquota
    from torchrunjob import start_job

    workdir.mkdir()
    beats = workdir / "beats"
    job = start_job(cluster, cluster.hosts[:3], 1, 29742, workdir, ["--use-monitor"],
                    env={"DDPCHECK_HEARTBEAT_DIR": str(beats)}, script=JOB)

    def step_of(rank: int) -> int:
        (path,) = beats.glob(f"*/rank-{rank}.json")
        return json.loads(path.read_text())["step"]

    steps = []
    try:
        pids = job.wait_ready(180)
        time.sleep(10)
        for rep in range(reps):
            victim = rep % 3
            pattern = re.compile(rf"straggler: rank {victim} on h{victim + 1} ")
            before = sum(1 for line in straggler_lines(job) if pattern.search(line))
            with cpuquota.cpu_quota([pids[victim]], 0.03):
                onset = step_of(victim)
                deadline = time.monotonic() + 180
                while sum(1 for line in straggler_lines(job) if pattern.search(line)) < before + 3:
                    if time.monotonic() > deadline:
                        raise SystemExit(f"rank {victim} not named:\n{job.logs()}")
                    time.sleep(0.1)
                steps.append(step_of(victim) - onset)
            time.sleep(15)  # recovers: the Monitor forgets it before the next repetition
    finally:
        job.stop()
    return steps


def compute_share(cluster, workdir: pathlib.Path) -> dict:
    from hostsfile import cluster_hosts_yaml

    workdir.mkdir()
    hosts_yaml = cluster_hosts_yaml(cluster, workdir / "hosts.yaml", cluster.hosts[:3],
                                    slots=2, port=29743)
    report_path = workdir / "preflight.json"
    subprocess.run([sys.executable, "-m", "ddpcheck", "preflight", str(hosts_yaml), "--json",
                    str(report_path)], capture_output=True, text=True, timeout=600)
    report = json.loads(report_path.read_text())
    compute_s = max(r["compute"]["seconds"] for r in report["ranks"] if r.get("compute"))
    return {"compute/preflight": compute_s / report["duration_s"],
            "stragglers": [f["message"] for f in report["findings"]
                           if f["check"] == "straggler"]}


def main() -> None:
    from nscluster import NamespaceCluster

    parser = argparse.ArgumentParser()
    parser.add_argument("--healthy-steps", type=int, default=1500)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--cost-only", action="store_true", help="only part 1 and 2")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ddpcheck-bench-") as tmp:
        work = pathlib.Path(tmp)
        with NamespaceCluster(3, work / "cluster") as cluster:
            healthy = healthy_run(cluster, work / "healthy", args.healthy_steps, 29741)
            print(json.dumps(healthy), flush=True)
            baseline = healthy_run(cluster, work / "baseline", min(500, args.healthy_steps),
                                   29744, "--no-stragglers")
            print(json.dumps(baseline), flush=True)
            named, share = [], {"compute/preflight": float("nan")}
            if not args.cost_only:
                named = onset_to_naming(cluster, work / "onset", args.reps)
                print(json.dumps({"steps from onset to naming": named}), flush=True)
                share = compute_share(cluster, work / "preflight")
                print(json.dumps(share), flush=True)
    print("\n| measure | value |\n|---|---|")
    print(f"| monitor.step() / training step, stragglers on (mean; step "
          f"{healthy['step_ms']:.0f} ms) | {healthy['monitor.step/step']:.5f} |")
    print(f"| the same, stragglers=False (heartbeat only) | "
          f"{baseline['monitor.step/step']:.5f} |")
    print(f"| median monitor.step() / median step, stragglers on | "
          f"{healthy['monitor.step/step, medians']:.5f} |")
    print(f"| the same, stragglers=False | {baseline['monitor.step/step, medians']:.5f} |")
    print(f"| Monitor thread CPU / training thread CPU, stragglers on | "
          f"{healthy['monitor thread/training thread CPU']:.4f} |")
    print(f"| the same, stragglers=False (heartbeat only) | "
          f"{baseline['monitor thread/training thread CPU']:.4f} |")
    print(f"| straggler lines over {healthy['steps']} healthy steps x 3 ranks | "
          f"{healthy['false_alarms']} |")
    print(f"| steps from onset to naming (3 % CPU quota) | {named} |")
    print(f"| compute check / preflight wall time | {share['compute/preflight']:.3f} |")


if __name__ == "__main__":
    main()
