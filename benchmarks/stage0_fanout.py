"""Stage-0 fan-out wall time for 1, 4, 8 and 16 hosts, beside pdsh running the same command.

A 16-host namespace cluster (real sshd per host). For each host count, ddpcheck's stage 0 (connect
over paramiko + ``python -m ddpcheck.remote.agent facts`` on every host + the health rules) is timed as
its own process, and so is ``pdsh -R ssh`` (OpenSSH, the cluster's ssh config and key) running
the identical stage-0 command line on the same hosts; the two are interleaved, 3 repetitions
each, medians compared. Every host's facts line is checked in both outputs. Needs root and pdsh.

    .venv/bin/python benchmarks/stage0_fanout.py [--reps 3] [--counts 1,4,8,16]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE.parent))

from hostsfile import cluster_hosts_yaml  # noqa: E402
from nscluster import NamespaceCluster  # noqa: E402

STAGE0_DEADLINE_S = 58.0  # what preflight passes (its 60 s stage-0 deadline less 2 s)

# The ddpcheck side, as its own process: load hosts.yaml, stage-0 fan-out, health rules.
DDPCHECK_STAGE0 = """
import sys
from ddpcheck.config.hostsyaml import load_hosts_file
from ddpcheck.engine.launchers import SSHLauncher
from ddpcheck.engine.preflight import PreflightOptions, Probe
from ddpcheck.engine.run import Engine, judge_stage0, stage0_step
from ddpcheck.report.progress import Progress
import io
spec = load_hosts_file(sys.argv[1])
launcher = SSHLauncher()
run = Engine(spec, Probe(PreflightOptions(timeout_s=300)), launcher, Progress(io.StringIO()))
try:
    launcher.reach(run, stage0_step(run))
    judge_stage0(run)
finally:
    launcher.close()
bad = [(h.name, h.error) for h in run.state.hosts.values() if h.error or not h.facts]
if bad:
    sys.exit(f"stage 0 failed: {bad}")
print(len(run.state.hosts))
"""


def stage0_yaml(cluster, path: pathlib.Path, count: int) -> pathlib.Path:
    """One workdir for all hosts, so that every host's stage-0 command is the same line."""
    workdir = str(path.parent / "work")
    return cluster_hosts_yaml(cluster, path, cluster.hosts[:count], slots=1,
                              host_overrides={h.name: {"workdir": workdir}
                                              for h in cluster.hosts},
                              extra={"ssh": {"known_hosts": str(cluster.known_hosts),
                                             "connect_timeout": 10, "fanout": 32}})


def time_ddpcheck(hosts_yaml: pathlib.Path, count: int) -> float:
    began = time.monotonic()
    done = subprocess.run([sys.executable, "-c", DDPCHECK_STAGE0, str(hosts_yaml)],
                          capture_output=True, text=True, timeout=600)
    elapsed = time.monotonic() - began
    if done.returncode != 0 or done.stdout.strip() != str(count):
        raise SystemExit(f"ddpcheck stage 0 failed:\n{done.stdout}\n{done.stderr}")
    return elapsed


def time_pdsh(cluster, hosts, command: str) -> float:
    env = {**os.environ, "PDSH_RCMD_TYPE": "ssh",
           "PDSH_SSH_ARGS_APPEND": f"-F {cluster.ssh_config}"}
    began = time.monotonic()
    done = subprocess.run(["pdsh", "-R", "ssh", "-f", "32", "-w", ",".join(h.name for h in hosts),
                           command], capture_output=True, text=True, timeout=600, env=env)
    elapsed = time.monotonic() - began
    answered = {line.split(":", 1)[0] for line in done.stdout.splitlines()
                if "@@DDPCHECK facts " in line}
    if done.returncode != 0 or answered != {h.name for h in hosts}:
        raise SystemExit(f"pdsh failed ({done.returncode}), answered {sorted(answered)}:\n"
                         f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--counts", default="1,4,8,16")
    args = parser.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    if not shutil.which("pdsh"):
        raise SystemExit("pdsh is not installed (apt-get install pdsh)")
    from ddpcheck.config.hostsyaml import load_hosts_file
    from ddpcheck.plan.cmdlines import stage0_command

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cluster = NamespaceCluster(max(counts), pathlib.Path(tmp))
        cluster.start()
        try:
            for count in counts:
                hosts_yaml = stage0_yaml(cluster, pathlib.Path(tmp) / f"h{count}.yaml", count)
                spec = load_hosts_file(str(hosts_yaml))
                master = spec.master_host.address
                commands = {stage0_command(h, STAGE0_DEADLINE_S, master) for h in spec.hosts}
                assert len(commands) == 1, commands  # pdsh runs one line everywhere
                command = commands.pop()
                ours, theirs = [], []
                for _ in range(args.reps):
                    ours.append(time_ddpcheck(hosts_yaml, count))
                    theirs.append(time_pdsh(cluster, cluster.hosts[:count], command))
                rows.append((count, statistics.median(ours), statistics.median(theirs)))
                print(f"{count:2d} host(s): ddpcheck {rows[-1][1]:.1f}s  pdsh {rows[-1][2]:.1f}s",
                      file=sys.stderr)
        finally:
            cluster.stop()
    base_ours, base_theirs = rows[0][1], rows[0][2]
    print(f"| hosts | ddpcheck / 1 host | pdsh / 1 host | ddpcheck / pdsh (median of "
          f"{args.reps}) |")
    print("|---|---|---|---|")
    for count, ours, theirs in rows:
        print(f"| {count} | {ours / base_ours:.2f} | {theirs / base_theirs:.2f} | "
              f"{ours / theirs:.2f} |")


if __name__ == "__main__":
    main()
