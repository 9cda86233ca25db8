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
5. Inside and outside (``--reasons``, or alone with ``--reasons-only``): a 3-host x 2-rank job
   (``--width 256``, one rank of each host on one core's share), twice: with the Monitor
   (inside) and without ddpcheck (``ddpcheck hang --window 3`` run back to back from outside;
   ``--hang-window W`` for another window, ``--inside-only`` / ``--outside-only`` for one variant).
   Over ``--healthy-steps`` healthy steps: the Monitor's straggler lines, and the straggler
   findings of the hang runs meanwhile (false alarms). Then rank 4 (h3) is slowed by each fault
   in turn (a 3 % CPU quota; an 80 ms sleep a step outside the collectives; SIGSTOP 60 ms of
   every 150 ms; h3's link shaped by tc to 20 Mbit/s each way, named as h3's network with both
   its ranks; ``--faults`` picks some), ``--reps`` times each: seconds and rank 4's steps from the onset to the first
   Monitor line naming it with the right reason (when the benchmark, polling every 0.1 s, read
   it, and by the line's own logged time), and seconds to the end of the first hang run that
   names it so. ``--load N`` adds N spinning processes as the neighbours' load;
   ``--step-s S`` pads every step of every job to S seconds with a sleep (the issue's steps of
   0.1 s; the training step alone is a few ms to tens of ms here).

    .venv/bin/python benchmarks/straggler.py [--healthy-steps 1500] [--reps 3]
    .venv/bin/python benchmarks/straggler.py --reasons-only --healthy-steps 3000 --reps 2
    .venv/bin/python benchmarks/straggler.py --reasons-only --step-s 0.1 --load 4 ...
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Optional

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

JOB = HERE.parent / "tests" / "stragglerjob.py"
STEP: list[str] = []  # ["--step-s", S] with --step-s: every job's steps padded to S seconds
HANG_WINDOW = ["--window", "3"]  # --hang-window: each outside run's window


def straggler_lines(job) -> list[str]:
    return [line for lines in host_straggler_lines(job) for line in lines]


def host_straggler_lines(job) -> list[list[str]]:
    """Each host's straggler lines, in its log's order."""
    return [[line for line in job.log_of(host).splitlines() if "straggler:" in line]
            for host in job.hosts]


def lines_since(job, before: list[int]) -> list[str]:
    """The straggler lines each host logged after its first ``before[i]``: those logged since
    (all hosts' lines in one list would shift a host's old lines past a count)."""
    return [line for lines, seen in zip(host_straggler_lines(job), before)
            for line in lines[seen:]]


def healthy_run(cluster, workdir: pathlib.Path, steps: int, port: int,
                *extra: str) -> dict:
    from torchrunjob import start_job

    workdir.mkdir()
    job = start_job(cluster, cluster.hosts[:3], 1, port, workdir,
                    ["--use-monitor", "--width", "256", "--steps", str(steps), "--measure",
                     str(workdir / "cost-"), *STEP, *extra],
                    env={"DDPCHECK_HEARTBEAT_DIR": str(workdir / "beats")}, script=JOB)
    try:
        job.wait_ready(180)
        for proc in job.procs:
            proc.wait(timeout=steps * (2 + float((STEP or [0, 0])[1])) + 120)
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


REASON_WORDS = {"starved": "starved of CPU", "blocked": "blocked outside the collectives",
                "stopped": "stopped"}
NETWORK_WORDS = "rank 4, 5 on h3: h3's network is slow"  # h3 shaped with tc (both its ranks)
FAULTS = ["starved", "blocked", "stopped", "network"]  # --faults: the faults of part 5
SLOW_MBIT = 20.0  # the network fault: h3's link each way
VICTIM = 4  # rank 4, on h3


def slow(reason: str, pid: int, ready: pathlib.Path, cluster=None):
    import contextlib

    import cpuquota
    from stragglerfaults import flag_file, stop_cycle

    if reason == "network":
        @contextlib.contextmanager
        def shaped():
            cluster.shape(cluster.hosts[2], SLOW_MBIT)
            try:
                yield
            finally:
                cluster.shape(cluster.hosts[2], None)
        return shaped()
    if reason == "starved":
        return cpuquota.cpu_quota([pid], 0.03)
    if reason == "blocked":
        return flag_file(ready / f"sleep-{VICTIM}")
    return stop_cycle(pid)


def last_step(ready: pathlib.Path, rank: int) -> int:
    lines = (ready / f"steps-{rank}").read_text().split("\n")
    return max(int(line.split()[0]) for line in lines if line.strip())


def steps_ended(ready: pathlib.Path, rank: int, after: float, until: float) -> int:
    """The rank's steps that ended in (after, until], by the wall-clock times it wrote."""
    times = [float(line.split()[1]) for line in
             (ready / f"steps-{rank}").read_text().split("\n") if line.strip()]
    return sum(1 for t in times if after < t <= until)


def logged_at(line: str) -> Optional[float]:
    """The wall-clock time stragglerjob.py's logging put first on a line, if it did."""
    head = line.split(" ", 1)[0]
    try:
        return float(head)
    except ValueError:
        return None


def hang_names(cluster, workdir: pathlib.Path, name: str,
               exits: Optional[list[int]] = None) -> list[str]:
    """One ``ddpcheck hang`` from outside: its straggler findings (its exit status appended to
    ``exits``)."""
    from hostsfile import cluster_hosts_yaml

    hosts_yaml = cluster_hosts_yaml(cluster, workdir / "hosts.yaml", cluster.hosts[:3])
    report = workdir / f"hang-{name}.json"
    done = subprocess.run([sys.executable, "-m", "ddpcheck", "hang", str(hosts_yaml), "--json",
                           str(report), *HANG_WINDOW, "--no-stacks", "--timeout", "150"],
                          capture_output=True, text=True, timeout=200)
    if exits is not None:
        exits.append(done.returncode)
    try:
        findings = json.loads(report.read_text())["findings"]
    except (OSError, ValueError, KeyError):
        return []
    return [f["message"] for f in findings if f["check"] in ("straggler", "slow_link")]


def inside_outside(cluster, workdir: pathlib.Path, monitor: bool, healthy_steps: int,
                   reps: int, port: int) -> dict:
    """Part 5, one variant: false alarms over the healthy steps, then time to name each
    fault (inside: the Monitor's first line; outside: the first hang run naming it)."""
    from torchrunjob import start_job

    workdir.mkdir()
    ready = workdir / "ready"
    job = start_job(cluster, cluster.hosts[:3], 2, port, workdir,
                    ["--mark-every", "1", "--flag-sleep", "0.08", "--width", "256", *STEP]
                    + (["--use-monitor"] if monitor else []),
                    env={"DDPCHECK_HEARTBEAT_DIR": str(workdir / "beats")}, script=JOB)
    result: dict = {"variant": "Monitor (inside)" if monitor else "ddpcheck hang (outside)"}
    try:
        pids = job.wait_ready(180)
        began, start = time.monotonic(), last_step(ready, 0)
        hang_runs, hang_alarms, exits = 0, 0, []
        while last_step(ready, 0) < start + healthy_steps:
            if monitor:
                time.sleep(2.0)
            else:
                hang_runs += 1
                hang_alarms += len(hang_names(cluster, workdir, f"healthy-{hang_runs}", exits))
        result["healthy"] = {"steps": last_step(ready, 0) - start, "ranks": 6,
                             "seconds": round(time.monotonic() - began),
                             "false_alarms": (len(straggler_lines(job)) if monitor
                                              else hang_alarms),
                             "hang_runs": hang_runs,
                             "hang_not_ok": sum(1 for code in exits if code != 0)}
        print(json.dumps(result), flush=True)
        for reason in FAULTS:
            words = f"rank {VICTIM} on h3 {'arrives' if monitor else ''}"
            for rep in range(reps):
                logged = [len(lines) for lines in host_straggler_lines(job)]
                with slow(reason, pids[VICTIM], ready, cluster):
                    onset, onset_step = time.monotonic(), last_step(ready, VICTIM)
                    onset_wall = time.time()
                    seconds = steps = line_seconds = line_steps = None
                    runs = 0
                    while time.monotonic() - onset < 90:
                        if monitor:
                            new = lines_since(job, logged)
                            naming = [line for line in new if (
                                NETWORK_WORDS in line if reason == "network" else
                                words in line and REASON_WORDS[reason] in line)]
                            if naming:
                                seconds = time.monotonic() - onset
                                steps = last_step(ready, VICTIM) - onset_step
                                # and by the first line's own time (the poll's 0.1 s left out)
                                at = min((t for t in map(logged_at, naming) if t is not None),
                                         default=None)
                                if at is not None:
                                    line_seconds = at - onset_wall
                                    line_steps = steps_ended(ready, VICTIM, onset_wall, at)
                                break
                            time.sleep(0.1)
                        else:
                            runs += 1
                            named = hang_names(cluster, workdir, f"{reason}-{rep}-{runs}")
                            if any(NETWORK_WORDS in m if reason == "network" else
                                   f"rank {VICTIM} on h3 {REASON_WORDS[reason]}" in m
                                   for m in named):
                                seconds = time.monotonic() - onset
                                steps = last_step(ready, VICTIM) - onset_step
                                break
                result.setdefault(reason, []).append(
                    {"seconds": None if seconds is None else round(seconds, 1),
                     "steps": steps,
                     "line_seconds": None if line_seconds is None else round(line_seconds, 2),
                     "line_steps": line_steps})
                print(json.dumps({reason: result[reason][-1], "monitor": monitor}), flush=True)
                time.sleep(15)  # recovers: the Monitor forgets it before the next one
    finally:
        if monitor:  # a line naming any other rank, healthy stretch or not, is a false alarm
            others = [line for line in straggler_lines(job)
                      if f"straggler: rank {VICTIM} " not in line and NETWORK_WORDS not in line]
            result["others_named"] = len(others)
            print("\n".join(others[:6]), flush=True)  # what they said
        job.stop()
    return result


def reasons_table(results: list[dict]) -> None:
    print("\n| measure | " + " | ".join(r["variant"] for r in results) + " |")
    print("|---|" + "---|" * len(results))
    print("| straggler reports over the healthy steps (steps x ranks; hang runs) | " + " | ".join(
        f"{r['healthy']['false_alarms']} ({r['healthy']['steps']} x 6"
        + (f"; {r['healthy']['hang_runs']} runs" if r['healthy']['hang_runs'] else "") + ")"
        for r in results) + " |")
    print("| hang runs over the healthy steps that did not exit 0 (hung, cannot tell) | "
          + " | ".join(str(r["healthy"].get("hang_not_ok", "")) if r["healthy"]["hang_runs"]
                       else "" for r in results) + " |")
    print("| lines naming a rank other than rank 4, the whole run | " + " | ".join(
        str(r.get("others_named", "")) for r in results) + " |")
    for reason in FAULTS:
        print(f"| {reason}: seconds (steps of rank 4) from onset to naming | " + " | ".join(
            ", ".join(f"{t['seconds']} ({t['steps']})" if t["seconds"] is not None
                      else "not named" for t in r.get(reason, [])) for r in results) + " |")
    for reason in FAULTS:  # the Monitor's lines carry their time: naming without the poll
        if any(t.get("line_seconds") is not None for r in results for t in r.get(reason, [])):
            print(f"| {reason}: seconds (steps of rank 4) from onset to the line's own time | "
                  + " | ".join(", ".join(
                      f"{t['line_seconds']} ({t['line_steps']})"
                      if t.get("line_seconds") is not None else "-" for t in r.get(reason, []))
                      for r in results) + " |")


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
    parser = argparse.ArgumentParser()
    parser.add_argument("--healthy-steps", type=int, default=1500)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--cost-only", action="store_true", help="only part 1 and 2")
    parser.add_argument("--reasons", action="store_true", help="also part 5")
    parser.add_argument("--reasons-only", action="store_true", help="only part 5")
    parser.add_argument("--inside-only", action="store_true",
                        help="part 5 with the Monitor only (not ddpcheck hang from outside)")
    parser.add_argument("--outside-only", action="store_true",
                        help="part 5 with ddpcheck hang from outside only (no Monitor)")
    parser.add_argument("--faults", default=",".join(FAULTS),
                        help="part 5's faults, in order (starved,blocked,stopped,network)")
    parser.add_argument("--hang-window", type=float, default=3.0,
                        help="the --window of each outside ddpcheck hang run (seconds)")
    parser.add_argument("--step-s", type=float, default=0.0,
                        help="pad every job's steps to this many seconds with a sleep")
    parser.add_argument("--load", type=int, default=0,
                        help="spinning processes started as the neighbours' load")
    args = parser.parse_args()
    if args.step_s:
        STEP[:] = ["--step-s", str(args.step_s)]
    HANG_WINDOW[:] = ["--window", str(args.hang_window)]
    FAULTS[:] = [fault for fault in args.faults.split(",") if fault]
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
                for _ in range(args.load)]
    try:
        run(args)
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


def run(args: argparse.Namespace) -> None:
    from nscluster import NamespaceCluster

    with tempfile.TemporaryDirectory(prefix="ddpcheck-bench-") as tmp:
        work = pathlib.Path(tmp)
        with NamespaceCluster(3, work / "cluster") as cluster:
            if args.reasons or args.reasons_only:
                load = os.getloadavg()[0]
                results = [inside_outside(cluster, work / f"reasons-{variant}", variant,
                                          args.healthy_steps, args.reps, 29745 + variant)
                           for variant in ((True,) if args.inside_only else
                                           (False,) if args.outside_only else (True, False))]
                print(f"load average before: {load:.1f}, after: {os.getloadavg()[0]:.1f}")
                reasons_table(results)
                if args.reasons_only:
                    return
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
