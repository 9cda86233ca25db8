"""What the numerics check costs, and whether a healthy cluster is ever accused.

1. In preflight (needs root): ``ddpcheck preflight`` on the namespace cluster, 3 hosts x 2 ranks,
   ``--runs`` times with its defaults (the numerics check on); every ``--pair-every``-th run is
   followed at once by one with ``--skip numerics``. Reported: ``numerics`` findings over the
   healthy runs (false alarms; the target is 0), the check's share of a preflight (the slowest
   rank's numerics seconds over the report's duration, median over runs), and the median ratio
   of paired wall times (with / without).
2. In the job: tests/jobs/numerics_job.py under torchrun (3 CPU ranks, gloo, a small MLP step
   with a gradient all_reduce), ``Monitor(numerics_every=100)`` beside ``Monitor()`` without the
   canary, alternated ``--job-reps`` times. Reported: the canaries' time over the training loop's
   on each rank (the target is 0.2 % at one canary per 100 steps), with and without the first
   canary (which builds the chain and connects to the store, once per job), and the ratio of
   loop times (noisy on a shared machine: the canaries' own time is the measure).

    .venv/bin/python benchmarks/numerics.py [--runs 50] [--pair-every 5] [--job-reps 2]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import socket
import statistics
import subprocess
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
JOB = HERE.parent / "tests" / "jobs" / "numerics_job.py"


def preflight(cluster, workdir: pathlib.Path, port: int, *extra: str) -> dict:
    from hostsfile import cluster_hosts_yaml

    workdir.mkdir(parents=True)
    hosts_yaml = cluster_hosts_yaml(cluster, workdir / "hosts.yaml", cluster.hosts[:3],
                                    slots=2, port=port)
    report_path = workdir / "report.json"
    done = subprocess.run([sys.executable, "-m", "ddpcheck", "preflight", str(hosts_yaml),
                           "--json", str(report_path), *extra],
                          capture_output=True, text=True, timeout=600)
    report = json.loads(report_path.read_text())
    seconds = [r["numerics"]["seconds"] for r in report["ranks"] if r.get("numerics")]
    return {"exit": done.returncode, "duration_s": report["duration_s"],
            "numerics_s": max(seconds) if seconds else 0.0,
            "reps": sorted({p["reps"] for r in report["ranks"] if r.get("numerics")
                            for p in r["numerics"]["products"].values()}),
            "alarms": [f["message"] for f in report["findings"] if f["check"] == "numerics"]}


def preflight_part(runs: int, pair_every: int) -> dict:
    from nscluster import NamespaceCluster

    on, pairs = [], []
    with tempfile.TemporaryDirectory(prefix="ddpcheck-bench-") as tmp:
        work = pathlib.Path(tmp)
        with NamespaceCluster(3, work / "cluster") as cluster:
            for run in range(runs):
                with_check = preflight(cluster, work / f"on{run}", 29800 + run % 50)
                on.append(with_check)
                print(json.dumps({"run": run, **with_check}), flush=True)
                if pair_every and run % pair_every == 0:
                    without = preflight(cluster, work / f"off{run}", 29850 + run % 50,
                                        "--skip", "numerics")
                    pairs.append(with_check["duration_s"] / without["duration_s"])
                    print(json.dumps({"run": run, "skip numerics": without}), flush=True)
    # a run stopped before its ranks ran (stage 0 or the rendezvous check under load) ran no
    # numerics check: its share is not a measurement
    checked = [r for r in on if r["numerics_s"] > 0] or [{"numerics_s": 0.0, "duration_s": 1.0}]
    return {"runs": runs, "false alarms": sum(len(r["alarms"]) for r in on),
            "runs not exit 0": sum(r["exit"] != 0 for r in on),
            "runs whose ranks ran the check": sum(r["numerics_s"] > 0 for r in on),
            "numerics / preflight (median)": statistics.median(
                r["numerics_s"] / r["duration_s"] for r in checked),
            "numerics / preflight (max)": max(r["numerics_s"] / r["duration_s"] for r in checked),
            "numerics seconds (median, slowest rank)": statistics.median(
                r["numerics_s"] for r in checked),
            "numerics seconds (max, slowest rank)": max(r["numerics_s"] for r in checked),
            "preflight seconds (median)": statistics.median(r["duration_s"] for r in on),
            "with / without (median of pairs)": statistics.median(pairs) if pairs else None,
            "pairs": len(pairs)}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def job(outdir: pathlib.Path, steps: int, every: int, width: int) -> list[dict]:
    outdir.mkdir(parents=True)
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "3",
         "--master-port", str(free_port()), str(JOB), str(outdir), str(steps), str(every),
         str(width)], capture_output=True, text=True, timeout=1200,
        env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=outdir)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    return [json.loads(p.read_text()) for p in sorted(outdir.glob("rank*.json"))]


def job_part(reps: int, steps: int, every: int, width: int) -> dict:
    shares, steady, first_ms, ratios, step_ms, alarms = [], [], [], [], [], 0
    with tempfile.TemporaryDirectory(prefix="ddpcheck-bench-") as tmp:
        work = pathlib.Path(tmp)
        for rep in range(reps):
            canary = job(work / f"canary{rep}", steps, every, width)
            plain = job(work / f"plain{rep}", steps, 0, width)
            shares += [r["seconds"] / r["loop_s"] for r in canary]
            # the first canary builds the chain and connects to the store: once per job
            steady += [sum(r["times"][1:]) / r["loop_s"] for r in canary]
            first_ms += [1e3 * r["times"][0] for r in canary]
            alarms += sum(len(r["wrong"]) for r in canary)
            ratios.append(statistics.mean(r["loop_s"] for r in canary)
                          / statistics.mean(r["loop_s"] for r in plain))
            step_ms += [1e3 * r["loop_s"] / r["steps"] for r in plain]
            print(json.dumps({"rep": rep, "canary": canary, "plain": plain}), flush=True)
    return {"steps": steps, "numerics_every": every, "step ms (median, no canary)":
            statistics.median(step_ms), "canary / loop, per rank (max)": max(shares),
            "canary / loop, per rank (median)": statistics.median(shares),
            "canaries after the first / loop, per rank (max)": max(steady),
            "canaries after the first / loop, per rank (median)": statistics.median(steady),
            "first canary ms (median; builds the chain, connects)": statistics.median(first_ms),
            "loop with / without (per rep)": ratios, "canary alarms": alarms}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=50, help="healthy preflights")
    parser.add_argument("--pair-every", type=int, default=5,
                        help="a --skip numerics preflight after every N-th run (0: none)")
    parser.add_argument("--job-reps", type=int, default=2)
    parser.add_argument("--job-steps", type=int, default=1000)
    parser.add_argument("--job-width", type=int, default=512)
    parser.add_argument("--numerics-every", type=int, default=100)
    parser.add_argument("--skip-preflight", action="store_true")
    args = parser.parse_args()
    results = {"job": job_part(args.job_reps, args.job_steps, args.numerics_every,
                               args.job_width)}
    print(json.dumps(results["job"]), flush=True)
    if not args.skip_preflight:
        results["preflight"] = preflight_part(args.runs, args.pair_every)
    print("\n| measure | value |\n|---|---|")
    for part in results.values():
        for name, value in part.items():
            shown = f"{value:.4f}" if isinstance(value, float) else value
            print(f"| {name} | {shown} |")


if __name__ == "__main__":
    main()
