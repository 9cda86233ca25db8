"""What making every field carryable costs the machine outputs (JUnit, CSV, Prometheus).

The report of 1,024 hosts x 8 ranks (tests/test_report_scale.py's generator, one bad GPU; on
every 16th host a finding that carries a host's stray output: ANSI colours, NUL, undecodable
bytes) rendered twice per renderer, side by side in one run: as shipped, and with
``machine.carryable`` replaced by the identity (the renderers as they were, whose JUnit and
CSV of this report are malformed or fail to encode). CPU time, best of 5; the ratio is the
cost. No root, no cluster:

    .venv/bin/python benchmarks/carryable_cost.py [--hosts 1024]
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from dataclasses import replace
from unittest import mock

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE.parent))

from test_report_scale import cluster  # noqa: E402
from report_scale import cpu_time  # noqa: E402

from ddpcheck.model.records import Finding, Severity  # noqa: E402
from ddpcheck.report import machine, prometheus  # noqa: E402

STRAY = "ssh: \x1b[31mConnection refused\x1b[0m\x00 (banner: \udcff\udcfe)\x0c"
RENDERERS = {
    "junit": machine.render_junit,
    "csv": machine.render_csv,
    "prom": lambda r: prometheus.render_prom(r, now=0.0),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=1024)
    args = parser.parse_args()
    report = cluster(hosts=args.hosts, bad_gpu=(args.hosts // 2, 3))
    stray = tuple(Finding(Severity.ERROR, "python", f"{STRAY} on {host.name}", host=host.name)
                  for host in report.hosts[::16])
    report = replace(report, findings=report.findings + stray)
    print(f"| renderer | carryable (s) | identity (s) | ratio |   ({len(report.hosts)} hosts, "
          f"{len(report.ranks)} ranks, {len(report.findings)} findings)")
    print("|---|---|---|---|")
    for name, render in RENDERERS.items():
        shipped = cpu_time(render, report, reps=5)
        with mock.patch.object(machine, "carryable", lambda text, limit=0: text), \
                mock.patch.object(prometheus, "carryable", lambda text, limit=0: text):
            bare = cpu_time(render, report, reps=5)
        print(f"| {name} | {shipped:.3f} | {bare:.3f} | {shipped / bare:.2f} |")


if __name__ == "__main__":
    main()
