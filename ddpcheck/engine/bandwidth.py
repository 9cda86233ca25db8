"""``ddpcheck bandwidth``: spec -> report, with the I/O at this edge (as ``preflight``).

The all-host sweep goes preflight's one way through (connect and stage 0 on every host, then one
torchrun per host) with ``ddpcheck.remote.sweep`` on every rank instead of the probe, then adds the
sweep's rows, its findings and the nccl-tests footer.

``--pairwise`` runs stage 0 everywhere, then the circle-method rounds (``pairing``): the pairs of
a round run at the same time, each pair its own 2-rank torchrun job (one rank on each of its two
hosts, the first host its master, master port = rendezvous port + the pair's index in the round,
so concurrent pairs never share a port), measuring the largest size only. A host that failed
stage 0 is left out and the others are still paired: an unreachable host never stops the rest.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from dataclasses import dataclass, replace
from typing import Any, Optional, Sequence

from ..analyze import verdict as analyze
from ..remote.argtypes import (at_least, collectives, fraction, message_size, non_negative,
                       positive)
from ..report.bandwidth import (DEFAULT_SLOW_FRACTION, PLOT_INSTALL_HINT, PairResult, PlotUnavailable,
                        analyze_pairs,
                        SweepSettings, pair_findings, pair_name, pairs_json, pairs_summary,
                        plot_report, render_bandwidth, require_matplotlib, rows_of,
                        sweep_findings, sweep_summary)
from ..remote.busbw import (ALL_COLLECTIVES, Collective, element_count, format_size, message_sizes,
                    parse_size)
from ..collect.hostoutput import parse_output, rank_record
from ..model.errors import ConfigError
from ..plan.pairing import MAX_ADAPTIVE_ROUNDS, circle_rounds, first_round, next_round
from ..plan.commands import (HostLaunch, LaunchOptions, RankProgram, plan_launch, resolve_backend,
                   resolve_slots, stage0_command)
from .preflight import PreflightOptions, PreflightRun, Progress, summary_of
from ..model.records import Finding, HostRecord, RankRecord, Severity
from ..report.table import Report
from ..model.spec import Backend, ClusterSpec, HostSpec
from ..transport.ssh import CommandResult, fan_out

SWEEP_TIMEOUT_S = 600.0  # default --timeout of the all-host sweep
PAIRWISE_BASE_S = 120.0  # default --timeout of --pairwise: this plus PAIRWISE_ROUND_S a round
PAIRWISE_ROUND_S = 60.0
PAIR_SLOTS = 1  # a pair job is 2 ranks: one on each host


@dataclass(frozen=True)
class BandwidthOptions:
    settings: SweepSettings
    min_bytes: int
    max_bytes: int
    factor: int
    timeout_s: float = SWEEP_TIMEOUT_S
    launch: LaunchOptions = LaunchOptions(deadline_s=SWEEP_TIMEOUT_S)
    verbose: bool = False

    def preflight_options(self) -> PreflightOptions:
        # --pairwise: each pair has its own master, so the check of the one master's port
        # before torchrun does not apply; the pair jobs show which pairs cannot meet.
        return PreflightOptions(timeout_s=self.timeout_s, launch=self.launch,
                                verbose=self.verbose,
                                rendezvous_check=not self.settings.pairwise)


# -- planning (pure) ---------------------------------------------------------------------------


def sweep_program(ops: Sequence[Collective], min_bytes: int, max_bytes: int, factor: int,
                  iters: int, warmup: int) -> RankProgram:
    """``-m ddpcheck.remote.sweep ...`` for every rank, in place of the probe."""

    def program(host_name: str, world_size: int, backend: Backend,
                options: LaunchOptions) -> list[str]:
        return ["-m", "ddpcheck.remote.sweep",
                "--host", host_name,
                "--expected-world-size", str(world_size),
                "--backend", backend.value,
                "--collective-timeout", str(options.collective_timeout_s),
                "--deadline", f"{options.deadline_s:g}",
                "--ops", ",".join(op.value for op in ops),
                "-b", str(min_bytes), "-e", str(max_bytes), "-f", str(factor),
                "-n", str(iters), "-w", str(warmup)]

    return program


def options_program(options: BandwidthOptions) -> RankProgram:
    """The sweep as asked; for a pair job, only the largest size."""
    settings = options.settings
    if settings.pairwise:
        return sweep_program(settings.ops, options.max_bytes, options.max_bytes, 1,
                             settings.iters, settings.warmup)
    return sweep_program(settings.ops, options.min_bytes, options.max_bytes, options.factor,
                         settings.iters, settings.warmup)


@dataclass(frozen=True)
class PairLaunch:
    hosts: tuple[str, str]
    port: int  # the pair's master port
    launches: tuple[HostLaunch, ...]  # node rank 0 (master) first


def pair_spec(spec: ClusterSpec, first: HostSpec, second: HostSpec, port: int) -> ClusterSpec:
    """A 2-host world: ``first`` is the master, at ``port``."""
    return replace(spec, hosts=(first, second), master=first.name, rendezvous_port=port)


def plan_round(spec: ClusterSpec, pairs: Sequence[tuple[str, str]], backend: Backend,
               launch: LaunchOptions, program: RankProgram,
               run_id: Optional[str] = None) -> list[PairLaunch]:
    """Every pair of one round: its own master port (rendezvous port + index in the round)."""
    by_name = {host.name: host for host in spec.hosts}
    planned = []
    for index, (first, second) in enumerate(pairs):
        port = spec.rendezvous_port + index
        sub = pair_spec(spec, by_name[first], by_name[second], port)
        launches = plan_launch(sub, {first: PAIR_SLOTS, second: PAIR_SLOTS}, backend, launch,
                               run_id=f"{run_id}-{first}-{second}" if run_id else None,
                               rank_program=program)
        planned.append(PairLaunch((first, second), port, tuple(launches)))
    return planned


def default_timeout(spec: ClusterSpec, pairwise) -> float:
    """``pairwise``: False/None (the sweep), "all" (every pair) or "adaptive" (at most
    MAX_ADAPTIVE_ROUNDS rounds, whatever the number of hosts)."""
    if not pairwise:
        return SWEEP_TIMEOUT_S
    if pairwise != "all":
        return PAIRWISE_BASE_S + PAIRWISE_ROUND_S * MAX_ADAPTIVE_ROUNDS
    return PAIRWISE_BASE_S + PAIRWISE_ROUND_S * len(circle_rounds([h.name for h in spec.hosts]))


def dry_run_text(spec: ClusterSpec, options: BandwidthOptions) -> str:
    """Each host's exact commands (slots shown as for hosts without GPUs: stage 0 has not run)."""
    from ..transport.ssh import ssh_target

    backend = resolve_backend(spec.backend, {h.name: 0 for h in spec.hosts})
    program = options_program(options)
    settings = options.settings
    lines = [f"# ddpcheck bandwidth --dry-run: {len(spec.hosts)} host(s) from {spec.source}, "
             f"backend {backend.value} (auto picks nccl when every host has GPUs)"]
    for host in spec.hosts:
        where = "local" if spec.local else f"ssh {ssh_target(host)}"
        if host.jumps:
            where += " through " + " > ".join(ssh_target(jump) for jump in host.jumps)
        lines += [f"# {host.name} stage 0 via {where}",
                  stage0_command(host, 58, master=spec.master_host.address)]
    if not settings.pairwise:
        slots = {h.name: resolve_slots(h, 0, spec.local) for h in spec.hosts}
        for launch in plan_launch(spec, slots, backend, options.launch, rank_program=program):
            lines += [f"# {launch.host}: node rank {launch.node_rank}, {launch.slots} rank(s)",
                      launch.command]
        return "\n".join(lines) + "\n"
    names = [h.name for h in spec.hosts]
    adaptive = settings.pairing != "all"
    rounds = [first_round(names)] if adaptive else circle_rounds(names)
    lines.append(f"# {len(rounds)} round(s), the pairs of a round at the same time, one rank "
                 f"per host, {settings.ops[0].value} at {format_size(options.max_bytes)}B")
    if adaptive:
        lines.append(f"# adaptive: rounds 2 and 3 (at most {MAX_ADAPTIVE_ROUNDS} in all) pair "
                     f"the hosts of slow pairs with hosts known to be good, once round 1 ran")
    for number, pairs in enumerate(rounds, 1):
        planned = plan_round(spec, pairs, backend, options.launch, program)
        lines.append(f"# round {number}: " + ", ".join(
            f"{pair_name(p.hosts)} (master {p.hosts[0]}, port {p.port})" for p in planned))
        for pair in planned:
            for launch in pair.launches:
                lines += [f"# round {number} {pair_name(pair.hosts)}: {launch.host}",
                          launch.command]
    return "\n".join(lines) + "\n"


# -- the all-host sweep ------------------------------------------------------------------------


class SweepRun(PreflightRun):
    """Preflight's flow with the sweep on every rank."""

    def __init__(self, spec: ClusterSpec, options: BandwidthOptions, progress: Progress) -> None:
        super().__init__(spec, options.preflight_options(), progress)
        self.bandwidth = options

    def plan(self, backend: Backend, launch_options: LaunchOptions) -> list[HostLaunch]:
        return plan_launch(self.spec, self.slots, backend, launch_options,
                           run_id=uuid.uuid4().hex[:12],
                           rank_program=options_program(self.bandwidth))

    def build_report(self, interrupted: bool) -> Report:
        base = super().build_report(interrupted)
        settings = self.bandwidth.settings
        rows = rows_of(rows_source(base.ranks))
        findings = list(base.findings) + sweep_findings(rows, settings)
        summary = sweep_summary(rows, settings)
        summary["timer"] = "cuda_events" if self.backend == "nccl" else "monotonic"
        return finish_report(base, findings, interrupted, collectives=tuple(
            r.to_dict() for r in rows), extra={**base.extra, "bandwidth": summary})


def rows_source(ranks: Sequence[RankRecord]) -> tuple[dict[str, Any], ...]:
    """Every rank reports the same rows (slowest time, wrong summed): take rank 0's, else the
    rank that got furthest."""
    with_rows = [r for r in ranks if r.collectives]
    if not with_rows:
        return ()
    chosen = min(with_rows, key=lambda r: (r.rank != 0, -len(r.collectives)))
    return tuple(dict(c) for c in chosen.collectives)


def finish_report(base: Report, findings: list[Finding], interrupted: bool,
                  **changes: Any) -> Report:
    ordered = analyze.mark_single_root_cause(analyze.order_findings(findings))
    verdict = analyze.verdict(ordered, base.hosts, interrupted)
    return replace(base, command="bandwidth", findings=tuple(ordered), verdict=verdict,
                   exit_code=analyze.EXIT_CODES[verdict], **changes)


# -- pairwise ---------------------------------------------------------------------------------


class PairwiseRun(PreflightRun):
    """Stage 0 on every host, then the rounds of concurrent 2-rank pair jobs."""

    def __init__(self, spec: ClusterSpec, options: BandwidthOptions, progress: Progress) -> None:
        super().__init__(spec, options.preflight_options(), progress)
        self.bandwidth = options
        self.rounds: list[list[tuple[str, str]]] = []
        self.pair_results: list[PairResult] = []
        self.paired_hosts: list[str] = []

    def can_launch_without(self, failed: list[HostRecord]) -> bool:
        healthy = len(self.spec.hosts) - len(failed)
        if healthy < 2:
            return False
        names = ", ".join(h.name for h in failed)
        self.extra_findings.append(Finding(
            Severity.INFO, "slow_link",
            f"pairs with {names} were not measured ({names} failed before launch); the other "
            f"{healthy} hosts were paired"))
        self.progress.say(f"leaving out {names}: failed before launch")
        return True

    def launch(self) -> None:
        healthy = [h for h in self.spec.hosts if not self.hosts[h.name].error]
        backend = resolve_backend(self.spec.backend,
                                  {h.name: self.hosts[h.name].gpus for h in healthy})
        self.backend = backend.value
        self.paired_hosts = [h.name for h in healthy]
        adaptive = self.bandwidth.settings.pairing != "all"
        self.rounds = [] if adaptive else circle_rounds(self.paired_hosts)
        for host in healthy:
            self.update(host.name, slots=PAIR_SLOTS, stage="launch")
        program = options_program(self.bandwidth)
        run_id = uuid.uuid4().hex[:8]
        for number, pairs in enumerate(self.adaptive_rounds() if adaptive else self.rounds, 1):
            remaining = self.deadline - time.monotonic() - 5.0
            if self.cancel.is_set() or remaining < 5.0:
                self.skip_rounds(number, "not run: the --timeout was reached")
                break
            launch = replace(self.options.launch,
                             deadline_s=max(min(self.options.launch.deadline_s, remaining), 5.0))
            planned = plan_round(self.spec, pairs, backend, launch, program,
                                 run_id=f"{run_id}-{number}")
            total = f"/{len(self.rounds)}" if not adaptive else f" (of at most " \
                                                                  f"{MAX_ADAPTIVE_ROUNDS})"
            self.progress.say(f"round {number}{total}: " + (", ".join(
                pair_name(p.hosts) for p in planned) if len(planned) <= 8 else
                f"{len(planned)} pairs at once"))
            self.run_round(number, planned, launch.deadline_s)
        for host in healthy:
            self.update(host.name, stage="done")

    def adaptive_rounds(self):
        """Round 1, then rounds 2 and 3 only for what the pairs so far leave open
        (``plan.pairing.next_round``); a pair is slow below the report's threshold, and a pair
        that failed counts as slow. Each round is recorded in ``self.rounds`` as it starts."""
        done = 0
        while not self.cancel.is_set():
            slow = analyze_pairs(self.paired_hosts, self.pair_results,
                                 self.bandwidth.settings.slow_fraction).slow
            measured = [(p.hosts, p.hosts in slow or p.busbw_gbs is None)
                        for p in self.pair_results]
            pairs = next_round(self.paired_hosts, measured, done)
            if not pairs:
                return
            done += 1
            self.rounds.append(pairs)
            yield pairs

    def skip_rounds(self, first: int, why: str) -> None:
        for number, pairs in enumerate(self.rounds[first - 1:], first):
            for pair in pairs:
                self.pair_results.append(PairResult(pair, number, error=why, check="timeout"))

    def run_round(self, number: int, planned: list[PairLaunch], deadline_s: float) -> None:
        jobs = [(pair, launch) for pair in planned for launch in pair.launches]
        started = time.monotonic()
        outputs: dict[tuple[tuple[str, str], str], CommandResult] = {}
        finished: dict[tuple[str, str], float] = {}

        def run_one(job: tuple[PairLaunch, HostLaunch]) -> None:
            pair, launch = job
            if self.options.verbose:
                self.progress.host(launch.host, f"command: {launch.command}")
            deadline = min(self.deadline, time.monotonic() + deadline_s + 10)
            try:
                outputs[(pair.hosts, launch.host)] = self.sessions[launch.host].run(
                    launch.command, deadline, self.cancel)
            finally:
                finished[pair.hosts] = max(finished.get(pair.hosts, 0.0), time.monotonic())

        outcomes = fan_out(jobs, run_one, len(jobs), self.cancel)
        errors = {(o.item[0].hosts, o.item[1].host): str(o.error) for o in outcomes
                  if o.error is not None}
        for pair in planned:
            results = [(launch.host, outputs.get((pair.hosts, launch.host)),
                        errors.get((pair.hosts, launch.host))) for launch in pair.launches]
            result = pair_result(pair.hosts, number, results,
                                 finished.get(pair.hosts, time.monotonic()) - started,
                                 self.bandwidth.settings.ops[0])
            self.pair_results.append(result)
            self.progress.say(f"{pair_name(pair.hosts)}: " + (
                f"busbw {result.busbw_gbs:.4g} GB/s" if result.busbw_gbs is not None
                else f"failed: {result.error}") + f" (round {number}) in {result.duration_s:.1f}s")

    def build_report(self, interrupted: bool) -> Report:
        base = super().build_report(interrupted)
        settings = self.bandwidth.settings
        hosts = self.paired_hosts or [h.name for h in self.spec.hosts]
        findings = list(base.findings) + pair_findings(hosts, self.pair_results, settings,
                                                       len(self.rounds))
        summary = pairs_summary(self.pair_results, hosts, settings, len(self.rounds))
        summary["hosts_order"] = [h.name for h in self.spec.hosts]
        widest = max((len(pairs) for pairs in self.rounds), default=0)
        if widest:
            port = self.spec.rendezvous_port
            summary["ports"] = [port, port + widest - 1]
        summary["timer"] = "cuda_events" if self.backend == "nccl" else "monotonic"
        return finish_report(base, findings, interrupted, world_size=2 if self.rounds else None,
                             expected_world_size=2 if self.rounds else None,
                             pairs=pairs_json(self.pair_results, hosts, settings.slow_fraction),
                             master=None, extra={**base.extra, "bandwidth": summary})


def pair_result(hosts: tuple[str, str], number: int,
                results: Sequence[tuple[str, Optional[CommandResult], Optional[str]]],
                duration_s: float, op: Collective) -> PairResult:
    """One pair's outcome from the output of its two hosts (pure)."""
    ranks: list[RankRecord] = []
    problems: list[str] = []
    check = "rendezvous"
    for host, result, error in results:
        if error is not None or result is None:
            problems.append(f"{host}: {error or 'no result'}")
            continue
        parsed = parse_output(result.output)
        own = [rank_record(raw, host) for raw in parsed.ranks]
        ranks += own
        if not own:
            agent = parsed.agent or {}
            if result.timed_out or agent.get("stopped"):
                check = "timeout"
            why = ("interrupted" if result.cancelled else
                   "no answer within the deadline" if result.timed_out else
                   f"torchrun exited {agent.get('exit_code', result.exit_code)}")
            problems.append(f"{host}: no rank reported back ({why}): {summary_of(parsed.stray)}")
    rows = [r for r in rows_of(rows_source(ranks)) if r.op is op]
    row = max(rows, key=lambda r: r.nbytes) if rows else None
    failures = analyze.failure_findings(ranks)
    error = None
    if failures:
        first = failures[0]
        error, check = first.message, first.check
    elif problems:
        error = "; ".join(problems)
    elif row is None:
        error = "no bandwidth row came back"
        check = "bandwidth"
    return PairResult(hosts, number, row=row, error=error, check=check, duration_s=duration_s)


# -- the command -------------------------------------------------------------------------------


WARMUP_HINT = ("-w is the warm-up iteration count here, as in nccl-tests; give a host list "
               "with --nodelist")


def register_bandwidth(sub) -> None:
    from ..cli import add_common_options, add_inventory_options, add_output_options

    parser = sub.add_parser(
        "bandwidth", help="nccl-tests style bus-bandwidth sweep; --pairwise finds a slow host "
                          "or link",
        description="Measure collectives across every rank of HOSTS (or this machine), "
                    "nccl-tests style: algbw and busbw per size, each result checked. "
                    "With --pairwise, measure every pair of hosts (circle method: the pairs of "
                    "a round run at once) and name a slow host or link.")
    add_common_options(parser, SWEEP_TIMEOUT_S)
    add_inventory_options(parser, hostlist_flags=("--nodelist",))  # -w: warm-up, as nccl-tests
    add_output_options(parser)
    parser.set_defaults(timeout=None)
    parser._option_string_actions["--timeout"].help = (
        f"hard deadline for the whole command (default {SWEEP_TIMEOUT_S:g}; with --pairwise "
        f"{PAIRWISE_BASE_S:g} + {PAIRWISE_ROUND_S:g} per round)")
    parser.add_argument("--ops", type=collectives, default=None, metavar="OP[,OP...]",
                        help="all_reduce, all_gather, reduce_scatter, broadcast, all_to_all or "
                             "all (default: all; with --pairwise: all_reduce)")
    parser.add_argument("-b", "--minbytes", type=message_size, default=parse_size("1M"),
                        metavar="SIZE",
                        help="smallest size, e.g. 8, 64K, 1M (default 1M)")
    parser.add_argument("-e", "--maxbytes", type=message_size, default=parse_size("32M"),
                        metavar="SIZE", help="largest size (default 32M; the only size of "
                                             "--pairwise)")
    parser.add_argument("-f", "--stepfactor", type=at_least(1), default=2, metavar="F",
                        help="multiply the size by F each step (default 2)")
    parser.add_argument("-n", "--iters", type=at_least(1), default=20, metavar="N",
                        help="timed iterations per size (default 20)")
    parser.add_argument("-w", "--warmup", type=at_least(0, hint=WARMUP_HINT), default=5,
                        metavar="N", help="warm-up iterations per size, not timed (default 5; "
                                          "a host list is --nodelist here)")
    parser.add_argument("--min-busbw", type=non_negative, default=None, metavar="GB/s",
                        help="fail (exit 1) when the average busbw (with --pairwise: any "
                             "pair's) is below this")
    parser.add_argument("--pairwise", nargs="?", const="adaptive", default=None,
                        choices=("adaptive", "all"),
                        help="name a slow host or link from pairs of hosts: adaptive (the "
                             "default) pairs every host once, then re-pairs the hosts of slow "
                             "pairs with good ones (at most 3 rounds, whatever the number of "
                             "hosts); 'all' measures every pair (n-1 rounds)")
    parser.add_argument("--slow-fraction", type=fraction, default=DEFAULT_SLOW_FRACTION,
                        metavar="X", help="with --pairwise, a pair below X times the typical "
                                          "busbw is slow (default 0.5)")
    parser.add_argument("--plot", metavar="FILE.png",
                        help="draw busbw against size per op (with --pairwise: a heatmap); "
                             f"needs matplotlib ({PLOT_INSTALL_HINT})")
    parser.add_argument("--collective-timeout", type=positive, default=60.0, metavar="SECONDS",
                        help="process group timeout for the ranks (default 60)")
    parser.add_argument("--rendezvous-timeout", type=positive, default=30.0, metavar="SECONDS",
                        help="torchrun rendezvous timeout (default 30)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print each host's exact commands (and the rounds) and run nothing")
    parser.set_defaults(run=bandwidth_command)


def bandwidth_options(args: argparse.Namespace, spec: Optional[ClusterSpec]) -> BandwidthOptions:
    """Options from the command line; ConfigError for a combination that cannot run."""
    ops = args.ops or ((Collective.ALL_REDUCE,) if args.pairwise else ALL_COLLECTIVES)
    if args.pairwise and len(ops) != 1:
        raise ConfigError("--pairwise measures one op: give one with --ops", "command line",
                          key="--ops")
    try:
        sizes = message_sizes(args.minbytes, args.maxbytes, args.stepfactor)
    except ValueError as exc:
        raise ConfigError(str(exc), "command line", key="-b/-e/-f") from None
    if args.pairwise:
        sizes = [args.maxbytes]
        if spec is not None and len(spec.hosts) < 2:
            raise ConfigError(f"--pairwise needs at least 2 hosts; {spec.source} has "
                              f"{len(spec.hosts)}", "command line", key="--pairwise")
    if all(element_count(op, size, 1) == 0 for op in ops for size in sizes):
        raise ConfigError(f"sizes up to {args.maxbytes} B hold no float32 element",
                          "command line", key="-e")
    timeout = args.timeout or (default_timeout(spec, args.pairwise) if spec else SWEEP_TIMEOUT_S)
    return BandwidthOptions(
        settings=SweepSettings(ops=tuple(ops), sizes=tuple(sizes), iters=args.iters,
                               warmup=args.warmup, min_busbw_gbs=args.min_busbw,
                               pairwise=bool(args.pairwise), slow_fraction=args.slow_fraction,
                               pairing=args.pairwise or "adaptive"),
        min_bytes=args.minbytes, max_bytes=args.maxbytes, factor=args.stepfactor,
        timeout_s=timeout, verbose=args.verbose,
        launch=LaunchOptions(deadline_s=timeout,
                             rendezvous_timeout_s=max(int(args.rendezvous_timeout), 1),
                             collective_timeout_s=max(int(args.collective_timeout), 1)))


def run_bandwidth(spec: ClusterSpec, options: BandwidthOptions,
                  progress: Optional[Progress] = None) -> Report:
    run_class = PairwiseRun if options.settings.pairwise else SweepRun
    return run_class(spec, options, progress or Progress()).run()


def bandwidth_command(args: argparse.Namespace) -> int:
    from ..cli import EXIT_USAGE, load_spec_from_args, run_reported

    if args.plot:
        try:
            require_matplotlib()
        except PlotUnavailable as exc:
            print(f"ddpcheck: {exc}", file=sys.stderr)
            return EXIT_USAGE
    try:
        spec: Optional[ClusterSpec] = load_spec_from_args(args)
    except ConfigError:
        spec = None  # run_reported reports it, with the file, line and key
    try:
        options = bandwidth_options(args, spec)
    except ConfigError as exc:
        print(f"ddpcheck: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.dry_run:
        if spec is None:
            return run_reported(args, lambda s: run_bandwidth(s, options))  # reports the error
        sys.stdout.write(dry_run_text(spec, options))
        return 0
    reports: list[Report] = []
    progress = Progress(None if args.quiet else sys.stderr)

    def execute(run_spec: ClusterSpec) -> Report:
        report = run_bandwidth(run_spec, options, progress)
        reports.append(report)
        return report

    code = run_reported(args, execute, render_bandwidth)
    if args.plot and reports:
        try:
            wrote = plot_report(reports[0], args.plot)
        except (OSError, ValueError) as exc:
            print(f"ddpcheck: cannot write plot {args.plot}: {exc}", file=sys.stderr)
        else:
            print(f"ddpcheck: {'wrote plot ' + args.plot if wrote else 'no data to plot'}",
                  file=sys.stderr)
    return code
