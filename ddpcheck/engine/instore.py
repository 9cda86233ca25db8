"""The in-job transport (``preflight --in-job``): the job's store, a third launcher under the
one run engine. Runs on every node of the job; no SSH anywhere.

Every node runs ``ddpcheck preflight --in-job`` itself (a pod's command, ``srun
--ntasks-per-node=1``, mpirun, by hand). Node 0 hosts a TCPStore on the master port (as
torchrun's own rendezvous does) and runs the ``Engine`` with ``StoreLauncher``; every other node
runs ``run_node``, the store's end of the transport (what the agent behind sshd is to the SSH
launcher). The keys, one writer each:

    join/R      node R: {hostname, address, python}        (then ``joined`` += 1)
    alive/R     node R: a counter, every HEARTBEAT_S        (node 0 names a node whose stops)
    stage0/R    node R: its stage-0 CommandResult           (then ``stage0s`` += 1)
    plan        node 0: the launch's shape: every node's name and slots (node-rank order), the
                backend, the agent's deadline, the run id, and with ``--bandwidth`` the
                sweep's shape (ops, sizes, iterations)   (then ``decision`` = launch)
    decision    node 0: launch | none                       (nothing starts without it)
    result/R    node R: its launch's CommandResult          (then ``results`` += 1)
    plan.2 ...  each later launch has the same keys with ``.N`` (``--bandwidth``: the sweep
                once the probe passed, then each round of node pairs, whose plan has the
                pairs and every node's address): node 0 writes ``decision.N`` (launch | none)
                after launch N-1's results, and every node waits for it before the verdict
    stop        node 0: the world is broken, stop the ranks
    gone/R      node R: it was interrupted (SIGTERM: a pod deleted), and why
    verdict     node 0: {verdict, exit_code, causes}         (then every node exits with it)

No node runs a command line it read from the store: each plans its own torchrun with
``plan.cmdlines.plan_launch`` from the plan's values (checked; the sweep's shape with
``plan.bandwidth.SweepProgram.from_dict``, a round's pairs with ``plan.bandwidth.plan_round``),
its own interpreter, options and master address, as node 0 plans its own; anyone who can reach the port could write keys,
as with torchrun's own store, but not make a node run something else.

Every node starts its stage 0 at once, beside joining, so the gang's wait is the slowest node's
stage 0, not the sum. Node 0 waits ``join_timeout_s`` for the joins; a node that never joined is
named by its node rank. Every wait is bounded by ``--timeout``.
"""

from __future__ import annotations

import json
import re
import socket
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass, replace
from typing import Callable, Optional, Sequence

from ..analyze import join as joins
from ..analyze.bandwidth import (MIN_HOSTS_TO_COMPARE, SweepSettings, gang_sweep_findings,
                                 pair_findings, pairs_json, pairs_summary, rows_of,
                                 sweep_findings, sweep_summary)
from ..analyze.outcomes import launch_end, launch_failure, rows_source
from ..collect.hostoutput import parse_output, rank_record
from ..core.busbw import format_size, message_sizes
from ..model.checks import Check
from ..model.outcomes import CommandResult, Failure, GroupResult, LaunchEnd
from ..model.records import RankRecord, Severity, Stage
from ..model.report import Report
from ..model.spec import Backend, ClusterSpec, HostSpec
from ..model.jobplace import JobPlace
from ..plan.bandwidth import PAIR_SLOTS, SweepProgram, plan_round
from ..plan.cmdlines import (LaunchOptions, RankProgram, in_job_stage0_command, plan_launch,
                             probe_program)
from ..report.progress import Progress
from ..transport.local import LocalSession
from ..transport.store import JobStore, StoreError, Traffic
from .bandwidth import BandwidthOptions, PairRounds, finish_report, timer_name
from .launchers import HostDone, HostJob, HostStep, RendezvousResults, Run, announce_launch
from .preflight import PreflightOptions, Probe, base_report
from .run import Engine
from .state import REACH_WINDOW_S, WORLD_BROKEN_GRACE_S, LaunchSetup

HEARTBEAT_S = 1.0  # each node's heartbeat, which also hears ``stop``: one round trip a second
SILENT_AFTER_S = 6.0  # a joined node whose heartbeat stood still this long is gone
POLL_S = 0.1  # node 0's look at the counters while it waits
VERDICT_GRACE_S = 8.0  # a node waits this long past --timeout for node 0's verdict
JOIN_TIMEOUT_MAX_S = 60.0


@dataclass(frozen=True)
class NodeStage0:
    """Stage 0 as every node runs it: its budget, DCGM, and the rendezvous check's window
    (None: --skip rendezvous)."""

    seconds: float  # stage 0's own budget (core.deadlines)
    timeout_s: float  # the whole command's
    dcgm: Optional[int]
    reach_window_s: Optional[float]

    def command(self, place: JobPlace, host: HostSpec, seconds: float, listens: bool) -> str:
        return in_job_stage0_command(place, host, seconds, self.dcgm, self.reach_window_s,
                                     listens)


def launch_key(name: str, number: int) -> str:
    """A launch's key: the first launch's as they always were (``plan``, ``decision``,
    ``result``, ``results``), the n-th's with ``.n`` (``plan.2``, ``result.2/R``...)."""
    return name if number == 1 else f"{name}.{number}"


def join_timeout(timeout_s: float, given: Optional[float] = None) -> float:
    """--join-timeout, else half of --timeout, at most a minute."""
    return given if given is not None else min(timeout_s / 2, JOIN_TIMEOUT_MAX_S)


@dataclass(frozen=True)
class NodeJoin:
    """What a node says of itself when it joins."""

    node_rank: int
    hostname: str
    address: str  # its address on the route to the master
    python: str  # the interpreter its ranks run

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: bytes) -> "NodeJoin":
        data = json.loads(text)
        return cls(int(data["node_rank"]), str(data["hostname"]), str(data["address"]),
                   str(data["python"]))


def result_json(result: CommandResult) -> str:
    return json.dumps({"exit_code": result.exit_code, "output": result.output,
                       "timed_out": result.timed_out, "cancelled": result.cancelled,
                       "duration_s": result.duration_s})


def result_of(text: bytes) -> CommandResult:
    data = json.loads(text)
    return CommandResult(data["exit_code"], data["output"], bool(data["timed_out"]),
                         bool(data["cancelled"]), float(data["duration_s"]))


def node_host(place: JobPlace, hostname: str, address: str, python: str) -> HostSpec:
    """A node as the plans see it: its ranks get the environment they run in (no ``env``)."""
    return HostSpec(name=hostname, address=address, python=python,
                    slots=place.nproc_per_node)


def missing_name(node_rank: int) -> str:
    return f"node-rank-{node_rank}"


def in_job_spec(place: JobPlace, hostname: str) -> ClusterSpec:
    """Node 0's spec before the joins: itself, at the master address it was given (what
    torchrun's ranks will be given too); ``StoreLauncher.prepare`` adds the others."""
    return ClusterSpec(hosts=(node_host(place, hostname, place.master_addr, sys.executable),),
                       rendezvous_port=place.rendezvous_port, in_job=True,
                       source=f"in-job ({place.sources['nnodes']})")


def local_address(master: str, port: int) -> str:
    """This node's address on the route to the master (no packet is sent)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect((master, port))
            return probe.getsockname()[0]
    except OSError:
        return socket.gethostname()


class Counters:
    """Node 0's view of a counter key: which node ranks' keys are new since the last look."""

    def __init__(self, store: JobStore, counter: str, prefix: str, ranks: Sequence[int]) -> None:
        self.store = store
        self.counter = counter
        self.prefix = prefix
        self.pending = set(ranks)
        self.seen = 0

    def new(self) -> dict[int, bytes]:
        """Two round trips when something came (the counter, then every pending key at
        once), one when nothing did."""
        count = self.store.add(self.counter, 0)
        if count == self.seen or not self.pending:
            return {}
        ranks = sorted(self.pending)
        found = {rank: value for rank, value in zip(ranks, self.store.values(
            [f"{self.prefix}/{r}" for r in ranks])) if value is not None}
        self.seen += len(found)
        self.pending -= set(found)
        return found


class Liveness:
    """Node 0's watch on the heartbeats of joined nodes: a node whose counter stood still for
    SILENT_AFTER_S, or that wrote ``gone/R``, is named once."""

    def __init__(self, store: JobStore) -> None:
        self.store = store
        self.last: dict[int, tuple[bytes, float]] = {}
        self.next_look = 0.0

    def lost(self, ranks: Sequence[int]) -> dict[int, tuple[str, float]]:
        """{node rank: (why, silent seconds)} for the ranks gone since the last look."""
        now = time.monotonic()
        if now < self.next_look or not ranks:
            return {}
        self.next_look = now + HEARTBEAT_S
        gone = {}
        left = self.store.values([f"gone/{r}" for r in ranks])
        for rank, why in zip(ranks, left):
            if why is not None:
                gone[rank] = (why.decode(), 0.0)
        beating = [r for r in ranks if r not in gone]
        values = [v or b"" for v in self.store.values([f"alive/{r}" for r in beating])]
        for rank, value in zip(beating, values):
            before = self.last.get(rank)
            if before is None or before[0] != value:
                self.last[rank] = (value, now)
            elif now - before[1] >= SILENT_AFTER_S:
                gone[rank] = ("", now - before[1])
        return gone


def gang_hosts(place: JobPlace, joined: dict[int, NodeJoin]
               ) -> tuple[tuple[HostSpec, ...], dict[int, str]]:
    """One host per node rank, in node-rank order (torchrun's node ranks), named by its
    hostname (``node-rank-R`` for a node that never joined), and the names by node rank."""
    used: set[str] = set()
    hosts, names = [], {}
    for rank in range(place.nnodes):
        join = joined.get(rank)
        name = join.hostname if join else missing_name(rank)
        if name in used:  # two nodes with one hostname (cloned images): keep them apart in
            # the report by node rank, in characters a hostname never has and the plan's
            # check of names takes ("#" made every other node refuse node 0's plan)
            name = f"{name}_{rank}"
        used.add(name)
        names[rank] = name
        hosts.append(node_host(place, name, join.address, join.python) if join else
                     HostSpec(name=name, address="unknown"))
    return tuple(hosts), names


class WorldEnds:
    """Each node's launch end, in node-rank order, and what it means for the others (as the
    SSH launcher does): once one ended with failures the others get the collective timeout
    and a grace, then ``stop``; a node whose torchrun never started stops them at once."""

    def __init__(self, run: Run, hosts: Sequence[str], done: HostDone, window_s: float) -> None:
        self.run = run
        self.hosts = list(hosts)
        self.done = done
        self.window_s = window_s
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.timers: list[threading.Timer] = []
        self.published = False
        self.results: dict[str, CommandResult] = {}  # each node's end, by host name

    def ended(self, rank: int, result: CommandResult) -> None:
        with self.lock:
            self.results[self.hosts[rank]] = result
            end = self.done(self.hosts[rank], result)
            if end is LaunchEnd.OK or len(self.hosts) == 1 or self.stop.is_set() \
                    or self.timers:
                return
            if end is LaunchEnd.NEVER_JOINED:
                self.stop.set()
                return
            timer = threading.Timer(self.window_s, self.stop.set)
            timer.daemon = True
            self.timers.append(timer)
            timer.start()
        self.run.progress.say(f"{self.hosts[rank]} ended with failures: the other nodes get "
                              f"{self.window_s:g}s to end, then are asked to stop")

    def publish_stop(self, store: JobStore) -> None:
        """``stop`` in the store, once, when the world is broken: every node's heartbeat
        sees it and stops its torchrun."""
        if self.stop.is_set() and not self.published:
            self.published = True
            store.set("stop", "world broken")

    def close(self) -> None:
        for timer in self.timers:
            timer.cancel()


class Gathering:
    """Node 0's gathering of one value per node (stage 0, launch results) from the store, with
    the nodes' liveness: a node gone meanwhile is named once, under ``join``."""

    def __init__(self, store: JobStore) -> None:
        self.store = store
        self.liveness = Liveness(store)
        self.names: dict[int, str] = {}  # node rank -> host name in the spec
        self.gone: set[int] = set()  # nodes named lost or left: nothing more is asked of them

    def gather(self, run: Run, counter: str, prefix: str, ranks: Sequence[int], deadline: float,
               stage: str, arrived: Callable[[int, bytes], None],
               lost: Optional[Callable[[int], None]] = None,
               busy: Callable[[], bool] = lambda: False,
               tick: Callable[[], None] = lambda: None) -> list[int]:
        """Each node's value as it comes, until all came (and ``busy()`` is over), the
        deadline or the run's cancel; a node gone meanwhile is named (``lost``). Returns the
        node ranks whose value never came."""
        values = Counters(self.store, counter, prefix, ranks)
        while (values.pending or busy()) and time.monotonic() < deadline \
                and not run.state.cancel.is_set():
            for rank, text in values.new().items():
                arrived(rank, text)
            for rank, (why, silent) in self.liveness.lost(
                    sorted(values.pending - self.gone)).items():
                self.gone.add(rank)
                values.pending.discard(rank)
                name = self.names[rank]
                failure = (joins.left(rank, name, why, stage) if why else
                           joins.went_silent(rank, name, silent, stage))
                run.state.fail(name, failure, reachable=False)
                run.progress.host(name, f"failed: {failure.message}")
                if lost is not None:
                    lost(rank)
            tick()
            time.sleep(POLL_S)
        return sorted(values.pending)


class StoreLauncher:
    """Node 0's launcher: the other nodes come to it through the store; node 0's own stage 0
    and torchrun run here, as ``LocalSession`` commands."""

    # node 0's stage 0 listens on torchrun's port while every node's reaches it
    rendezvous_in_stage0 = True

    def __init__(self, place: JobPlace, store: JobStore, join_timeout_s: float,
                 started: float, stage0: "NodeStage0") -> None:
        self.stage0 = stage0
        self.own_stage0: list[CommandResult] = []
        self.listener_stop = threading.Event()  # every other node's stage 0 is in
        self.cancel = threading.Event()
        self.place = place
        self.store = store
        self.join_timeout_s = join_timeout_s
        self.started = started
        self.session = LocalSession()
        self.joins: dict[int, NodeJoin] = {}
        self.gathering = Gathering(store)
        self.decided = 0  # decisions posted: ``decision``, ``decision.2``...

    # -- set-up: the joins ---------------------------------------------------------------------
    def prepare(self, spec: ClusterSpec, run: Run) -> ClusterSpec:
        """Wait for every node to join (within the join timeout); the spec gets one host per
        node rank, in node-rank order (torchrun's node ranks), named by its hostname."""
        run.progress.expect(self.place.nnodes, run.verbose)
        me = spec.hosts[0]
        self.joins[0] = NodeJoin(0, me.name, me.address, me.python)
        # node 0's stage 0 starts now, before the joins: its listener must be up when the
        # others' stage 0 reach for it, and it may wait for the joins and their stage 0
        seconds = min(self.join_timeout_s + self.stage0.seconds,
                      self.started + self.stage0.timeout_s - time.monotonic())
        command = self.stage0.command(self.place, me, max(seconds - 2, 1), listens=True)
        self.own_thread = threading.Thread(target=lambda: self.own_stage0.append(
            self.session.run(command, time.monotonic() + seconds, self.cancel,
                             self.listener_stop if self.stage0.reach_window_s else None)),
            daemon=True)
        self.own_thread.start()
        others = list(range(1, self.place.nnodes))
        arrivals = Counters(self.store, "joined", "join", others)
        deadline = time.monotonic() + self.join_timeout_s  # from the store's start
        if others:
            run.progress.say(f"node 0: the store is up at port {self.place.store_port}; waiting "
                             f"up to {self.join_timeout_s:g}s for {len(others)} node(s) to join")
        while arrivals.pending and time.monotonic() < deadline:
            for rank, text in arrivals.new().items():
                self.joins[rank] = NodeJoin.from_json(text)
            if arrivals.pending:
                time.sleep(POLL_S)
        hosts, self.gathering.names = gang_hosts(self.place, self.joins)
        return replace(spec, hosts=hosts)

    # -- stage 0: its own here, the others' from the store --------------------------------------
    def reach(self, run: Run, step: HostStep) -> None:
        if step.stage is not Stage.STAGE0:
            raise StoreError("--in-job runs preflight only")
        joined = [self.gathering.names[r] for r in sorted(self.joins)]
        for rank in range(self.place.nnodes):
            if rank not in self.joins:
                name = self.gathering.names[rank]
                run.state.fail(name, joins.never_joined(rank, self.join_timeout_s, joined),
                               stage=Stage.CONNECT, reachable=False)
                run.progress.host(name, f"never joined within {self.join_timeout_s:g}s")
        hosts = {rank: h for rank, h in enumerate(run.spec.hosts)}
        for rank in self.joins:
            run.state.update(self.gathering.names[rank], reachable=True, stage=Stage.STAGE0)
        deadline = run.state.until(step.timeout_s)
        others = [r for r in self.joins if r != 0]
        pending = self.gathering.gather(
            run, "stage0s", "stage0", others, deadline, "stage 0",
            lambda rank, text: step.record(hosts[rank], result_of(text), None))
        for rank in pending:
            run.state.fail(self.gathering.names[rank], Failure(
                Check.TIMEOUT, f"stage 0 on node rank {rank} gave no result before its deadline",
                no_result=True))
        self.listener_stop.set()  # every other node's step has ended (HostStep.listener)
        while self.own_thread.is_alive():
            self.own_thread.join(0.2)  # bounded by its deadline: the session kills it there
        step.record(hosts[0], self.own_stage0[0] if self.own_stage0 else
                    CommandResult(None, "", cancelled=True), None)

    def rendezvous(self, run: Run) -> RendezvousResults:
        return []  # never asked: stage 0 makes the check (rendezvous_in_stage0)

    # -- launch: every node's torchrun ---------------------------------------------------------
    def launch(self, run: Run, setup: LaunchSetup, program: Optional[RankProgram],
               done: HostDone, on_line=None) -> GroupResult[str]:
        """Node 0 plans every node's command (as the SSH launcher would), posts them, says
        ``launch``, runs its own and gathers the others' ends as they come (each handed to
        ``done`` then); every node's result, by host."""
        if program is not None and not isinstance(program, SweepProgram):
            raise StoreError("--in-job runs the probe or the bandwidth sweep only")
        run_id = uuid.uuid4().hex[:12]
        plans = plan_launch(run.spec, setup.slots, setup.backend, setup.options,
                            run_id=run_id, rank_program=program or probe_program)
        announce_launch(run, plans)
        number = self.decided + 1
        self.store.set(launch_key("plan", number), json.dumps(
            {"hosts": [[h.name, setup.slots[h.name]] for h in run.spec.hosts],
             "backend": setup.backend.value, "deadline_s": setup.options.deadline_s,
             "run_id": run_id, **({"sweep": program.to_dict()} if program else {})}))
        self.decide("launch")
        world = WorldEnds(run, [p.host for p in plans], done,
                          setup.options.collective_timeout_s + WORLD_BROKEN_GRACE_S)
        deadline = run.state.until(setup.options.deadline_s + run.launch_grace_s)
        mine = threading.Thread(target=lambda: world.ended(0, self.session.run(
            plans[0].command, deadline, run.state.cancel, world.stop)), daemon=True)
        mine.start()
        try:
            pending = self.gathering.gather(
                run, launch_key("results", number), launch_key("result", number),
                range(1, len(plans)), deadline, "launch",
                lambda rank, text: world.ended(rank, result_of(text)),
                lambda rank: world.ended(rank, CommandResult(None, "", lost=True)),
                busy=mine.is_alive, tick=lambda: world.publish_stop(self.store))
            mine.join(max(deadline - time.monotonic(), 0) + 10)
            for rank in pending:  # past the deadline: no result came
                world.ended(rank, CommandResult(None, "", timed_out=True))
        finally:
            world.close()
        return GroupResult(world.results)

    def run_jobs(self, run: Run, jobs: Sequence[HostJob]) -> GroupResult[int]:
        """A round of pair jobs: node 0 posts its shape (``HostJob.shape``) and every node's
        address, never a command; each node plans its own job (``pair_round``)."""
        return pair_round(self, run, jobs)

    def decide(self, decision: str) -> None:
        """The next launch's decision (``decision``, then ``decision.2``...)."""
        self.decided += 1
        self.store.set(launch_key("decision", self.decided), decision)

    def release(self, names: Sequence[str]) -> None:
        """Nothing is held per node: a node that will run nothing more hears it from the
        decision."""

    def close(self) -> None:
        """Whatever happened, the other nodes hear that nothing (more) starts."""
        self.cancel.set()
        try:
            launched = self.decided > 0
            self.decide("none")  # no launch after the last one
            if launched:  # interrupted mid-launch: every node's torchrun stops too
                self.store.set("stop", "node 0 ended")
        except StoreError:
            pass
        self.session.close()


def pair_round(launcher: StoreLauncher, run: Run, jobs: Sequence[HostJob]
               ) -> GroupResult[int]:
    """``StoreLauncher.run_jobs``: node 0 posts the round's shape (the pairs, backend,
    deadline, run id, the sweep's shape) and every node's address; each node plans its own job
    with ``plan.bandwidth.plan_round`` (a node in no pair posts that it ran nothing). Node 0
    runs its own job and gathers the others'. {job index: its result}."""
    shapes = {json.dumps(job.shape, sort_keys=True) for job in jobs}
    if not jobs or len(shapes) != 1 or jobs[0].shape is None:
        raise StoreError("--in-job runs the probe, the sweep or a round of pair jobs only")
    names = [h.name for h in run.spec.hosts]
    number = launcher.decided + 1
    launcher.store.set(launch_key("plan", number), json.dumps(
        {**jobs[0].shape, "hosts": [[name, PAIR_SLOTS] for name in names],
         "addresses": [h.address for h in run.spec.hosts]}))
    launcher.decide("launch")
    index = {job.host: i for i, job in enumerate(jobs)}
    results: dict[int, CommandResult | BaseException] = {}
    deadline = run.state.until(max(job.deadline_s for job in jobs))
    own = index.get(names[0])

    def run_own() -> None:
        if own is not None:
            results[own] = launcher.session.run(jobs[own].command, deadline, run.state.cancel)

    mine = threading.Thread(target=run_own, daemon=True)
    mine.start()

    def arrived(rank: int, text: bytes) -> None:
        if names[rank] in index:
            results[index[names[rank]]] = result_of(text)

    def lost(rank: int) -> None:
        if names[rank] in index:
            results[index[names[rank]]] = CommandResult(None, "", lost=True)

    others = [r for r in range(1, len(names)) if r not in launcher.gathering.gone]
    launcher.gathering.gather(run, launch_key("results", number), launch_key("result", number),
                              others, deadline, "launch", arrived, lost, busy=mine.is_alive)
    mine.join(max(deadline - time.monotonic(), 0) + 10)
    for i in range(len(jobs)):  # past the deadline: no result came
        results.setdefault(i, CommandResult(None, "", timed_out=True))
    return GroupResult(results)


class ProbeThenSweep(Probe):
    """``--in-job --bandwidth``: the probe on the gang, then, once it passed, the sweep
    ``ddpcheck bandwidth`` runs (``remote.sweep`` on every rank of the same world, through
    the same launcher), then, once the sweep passed on 3 nodes or more, ``bandwidth
    --pairwise``'s adaptive rounds of node pairs at the sweep's largest size (``PairRounds``,
    its jobs through ``StoreLauncher.run_jobs``) to name a slow node or link. The report is
    preflight's with the sweep's rows, summary and findings as ``bandwidth --json`` has them
    (``collectives``, ``bandwidth``) and the pairs' (``pairs``, ``pairwise``)."""

    def __init__(self, options: PreflightOptions, sweep: SweepProgram) -> None:
        super().__init__(options)
        self.sweep = sweep
        self.settings = SweepSettings(ops=sweep.ops, iters=sweep.iters, warmup=sweep.warmup,
                                      sizes=tuple(message_sizes(sweep.min_bytes,
                                                                sweep.max_bytes, sweep.factor)))
        self.skipped: Optional[str] = "not run: the probe did not run"
        self.ranks: list[RankRecord] = []  # the sweep's rank records (the probe's are the state's)
        self.host_failures: dict[str, str] = {}
        self.pairs: Optional[PairRounds] = None

    def launch(self, run: Engine) -> None:
        super().launch(run)
        probe = base_report(run, self.options.launch, False)
        if run.state.cancel.is_set() or probe.exit_code != 0:
            self.skipped = f"not run: the probe ended {probe.verdict.value}"
            run.progress.say(f"no bandwidth sweep: the probe ended {probe.verdict.value}")
            return
        self.skipped = None
        setup = run.state.setup(run.spec.hosts, self.options.launch)
        ops = ", ".join(op.value for op in self.sweep.ops)
        run.progress.say(f"the probe passed: the bandwidth sweep ({ops}, "
                         f"{format_size(self.sweep.min_bytes)}B to "
                         f"{format_size(self.sweep.max_bytes)}B) on the same ranks")
        results = run.launcher.launch(run, setup, self.sweep,
                                      lambda name, result: self.swept(run, name, result))
        for name, error in results.failed.items():
            self.host_failures[name] = str(error)
        rows = rows_of(rows_source(self.ranks))
        if len(run.spec.hosts) >= MIN_HOSTS_TO_COMPARE and not run.state.cancel.is_set() \
                and not gang_sweep_findings(self.host_failures, self.ranks, rows) \
                and not sweep_findings(rows, self.settings):
            self.localize(run)

    def localize(self, run: Engine) -> None:
        """``bandwidth --pairwise``'s adaptive rounds at the sweep's largest size, each node
        in one pair job a round; the hosts' slots are the probe's again afterwards."""
        size = self.sweep.max_bytes
        self.pairs = PairRounds(BandwidthOptions(
            settings=replace(self.settings, ops=self.sweep.ops[:1], sizes=(size,),
                             pairwise=True, pairing="adaptive"),
            min_bytes=size, max_bytes=size, factor=1, timeout_s=self.timeout_s,
            launch=self.options.launch, verbose=self.verbose))
        slots = {h.name: run.state.hosts[h.name].slots for h in run.spec.hosts}
        run.progress.say(f"the sweep passed: pairs of nodes at {format_size(size)}B, to name "
                         f"a slow node or link")
        try:
            self.pairs.launch(run)
        finally:
            for name, count in slots.items():
                run.state.update(name, slots=count)

    def swept(self, run: Engine, name: str, result: CommandResult) -> LaunchEnd:
        """One node's sweep ended: its rank records are kept apart from the probe's."""
        parsed = parse_output(result.output)
        ranks = [rank_record(raw, name) for raw in parsed.ranks]
        failure = launch_failure(result, parsed, ranks)
        with run.state.lock:
            self.ranks += ranks
            if failure is not None:
                self.host_failures[name] = failure.message
        ended = f"failed: {failure.message}" if failure else "done"
        run.progress.host(name, f"bandwidth sweep {ended} in {result.duration_s:.1f}s")
        return launch_end(failure, ranks)

    def report(self, run: Engine, interrupted: bool) -> Report:
        base = super().report(run, interrupted)
        if self.skipped is not None:
            return replace(base, extra={**base.extra, "bandwidth": {
                **self.settings.to_dict(), "skipped": self.skipped}})
        rows = rows_of(rows_source(self.ranks))
        summary = sweep_summary(rows, self.settings)
        summary["timer"] = timer_name(run.state.backend)
        findings = list(base.findings) + sweep_findings(rows, self.settings) + \
            gang_sweep_findings(self.host_failures, self.ranks, rows)
        extra = {**base.extra, "bandwidth": summary}
        pairs: tuple = ()
        if self.pairs is not None:
            hosts = self.pairs.paired or [h.name for h in run.spec.hosts]
            paired = self.pairs.bandwidth.settings
            rounds = len(self.pairs.rounds)
            findings += pair_findings(hosts, self.pairs.results, paired, rounds)
            extra["pairwise"] = pairs_summary(self.pairs.results, hosts, paired, rounds)
            pairs = tuple(pairs_json(self.pairs.results, hosts, paired.slow_fraction))
        return finish_report(base, findings, interrupted, command="preflight",
                             collectives=tuple(r.to_dict() for r in rows), pairs=pairs,
                             extra=extra)


# -- the verdict, on every node -----------------------------------------------------------------

def node_causes(report: Report, names: dict[int, str]) -> dict[str, str]:
    """Each node's cause (by node rank): its own first error, else the root cause."""
    root = next((f for f in report.findings if f.root_cause), None) or next(
        (f for f in report.findings if f.severity is Severity.ERROR), None)
    causes = {}
    for rank, name in names.items():
        own = next((f for f in report.findings
                    if f.host == name and f.severity is Severity.ERROR), None)
        finding = own or root
        causes[str(rank)] = (f"{finding.check}: {finding.message}" if finding else
                             "every check passed")
    return causes


def publish_verdict(store: JobStore, report: Report, names: dict[int, str],
                    readers: int, wait_s: float = 15.0) -> None:
    """The verdict for every node, then a short wait while the ``readers`` (the other nodes
    that joined and did not go: one that never came never reads) read it (the store lives in
    this process)."""
    store.set("verdict", json.dumps({"verdict": report.verdict.value,
                                     "exit_code": report.exit_code,
                                     "causes": node_causes(report, names),
                                     "names": {str(r): n for r, n in names.items()}}))
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and store.add("read", 0) < readers:
        time.sleep(POLL_S)


def traffic_line(node_rank: int, traffic: Traffic) -> str:
    return (f"node rank {node_rank}: store traffic {traffic.sent} bytes sent, "
            f"{traffic.received} received, {traffic.round_trips} round trips")


def summary_line(node_rank: int, host: str, verdict: str, cause: str) -> str:
    """The one line every node prints last."""
    return f"ddpcheck: node rank {node_rank} ({host}): {verdict.upper()}: {cause}"


# -- a node other than 0: the store's end of the transport --------------------------------------

@dataclass(frozen=True)
class NodeOutcome:
    exit_code: int
    verdict: str
    cause: str
    host: str
    traffic: Traffic


class Heartbeat:
    """A node's heartbeat on its own connection; it also watches ``stop``."""

    def __init__(self, store: JobStore, node_rank: int, stop: threading.Event) -> None:
        self.store = store
        self.key = f"alive/{node_rank}"
        self.stop = stop
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.beat, daemon=True)

    def start(self) -> "Heartbeat":
        self.thread.start()
        return self

    def beat(self) -> None:
        count = 0
        while not self.done.is_set():
            count += 1
            try:
                if self.store.beat(self.key, str(count), "stop"):
                    self.stop.set()
            except StoreError:
                return  # node 0 is gone: the main thread's next call says so
            self.done.wait(HEARTBEAT_S)

    def close(self) -> None:
        self.done.set()
        self.thread.join(HEARTBEAT_S + 1)
        self.store.close()


ADDRESS = re.compile(r"[A-Za-z0-9_.:%-]{1,253}")  # a host name, IPv4 or IPv6 address
RUN_ID = re.compile(r"[0-9a-f]{1,32}(-[0-9]{1,4})?")  # a pair round's: ``<id>-<round>``


def node_launch_command(place: JobPlace, host: HostSpec, options: LaunchOptions,
                        plan: dict) -> Optional[str]:
    """This node's agent command from node 0's plan, planned here as node 0 plans its own:
    the plan gives only names, slots, the backend, the agent's deadline, the run id and the
    sweep's shape when it is the sweep (each checked); the interpreter, options and master
    address are this node's own. A round of pair jobs (``pairs``, with every node's
    ``addresses``): this node's job in it, planned with ``plan_round``, or None when it is
    in no pair."""
    try:
        names = [str(name) for name, _ in plan["hosts"]]
        slots = {str(name): int(count) for name, count in plan["hosts"]}
        backend = Backend(plan["backend"])
        deadline_s = float(plan["deadline_s"])
        run_id = str(plan["run_id"])
        program: RankProgram = (SweepProgram.from_dict(plan["sweep"]) if "sweep" in plan
                                else probe_program)
        pairs = [(str(a), str(b)) for a, b in plan["pairs"]] if "pairs" in plan else None
        addresses = ([str(a) for a in plan["addresses"]] if pairs is not None else
                     [place.master_addr if rank == 0 else name
                      for rank, name in enumerate(names)])
    except (KeyError, TypeError, ValueError) as exc:
        raise StoreError(f"node 0's plan is unreadable: {exc}") from None
    paired = [name for pair in pairs or () for name in pair]
    if (len(names) != place.nnodes or not all(0 < n <= 4096 for n in slots.values())
            or not 0 < deadline_s <= 86400 or not RUN_ID.fullmatch(run_id)
            or len(addresses) != len(names) or not all(map(ADDRESS.fullmatch, addresses))
            or len(set(paired)) != len(paired) or not set(paired) <= set(names)
            or (pairs is None and "-" in run_id)):
        raise StoreError(f"node 0's plan does not fit this job ({place.nnodes} nodes): {plan}")
    hosts = tuple(replace(host, name=name) if rank == place.node_rank else
                  HostSpec(name=name, address=addresses[rank])
                  for rank, name in enumerate(names))
    spec = ClusterSpec(hosts=hosts, rendezvous_port=place.rendezvous_port, in_job=True)
    if pairs is not None:
        planned = plan_round(spec, pairs, backend, replace(options, deadline_s=deadline_s),
                             program, run_id=run_id)
        mine = [launch.command for pair in planned for launch in pair.launches
                if launch.host == names[place.node_rank]]
        return mine[0] if mine else None
    return plan_launch(spec, slots, backend, replace(options, deadline_s=deadline_s),
                       run_id=run_id, rank_program=program)[place.node_rank].command


@dataclass
class NodeStage:
    """Where a node other than 0 is, for the message when node 0 is lost."""
    now: str = "join"


def join_store(place: JobPlace, join: NodeJoin, seconds: float, traffic: Traffic) -> JobStore:
    """Connect to node 0's store and register this node (StoreError when it cannot)."""
    store = JobStore.connect(place.master_addr, place.store_port, seconds, traffic)
    store.set(f"join/{join.node_rank}", join.to_json())
    store.add("joined", 1)
    return store


def follow_decisions(store: JobStore, place: JobPlace, host: HostSpec, options: LaunchOptions,
                     run_command: Callable[[str], CommandResult], progress: Progress,
                     deadline: float, stage: NodeStage) -> None:
    """Run each launch node 0 decides (the probe, then with --bandwidth the sweep and its
    rounds of pairs) and post its result, until node 0 decides to stop."""
    rank, hostname = place.node_rank, host.name
    number = 1
    while True:
        stage.now = "the decision"
        decision = launch_key("decision", number)
        if not store.wait([decision], deadline + (VERDICT_GRACE_S if number > 1 else 0)):
            raise StoreError("node 0 gave no decision within --timeout")
        if store.get(decision).decode() != "launch":
            return
        stage.now = "launch" if number == 1 else f"launch {number}"
        plan = json.loads(store.get(launch_key("plan", number)))
        launch = node_launch_command(place, host, options, plan)
        what = (" (a pair job)" if "pairs" in plan else
                " (the bandwidth sweep)" if "sweep" in plan else "")
        if launch is None:
            progress.say(f"node rank {rank} ({hostname}): in no pair this round")
            ran = CommandResult(0, "", duration_s=0.0)
        else:
            progress.say(f"node rank {rank} ({hostname}): launching torchrun{what}")
            ran = run_command(launch)
        store.set(f"{launch_key('result', number)}/{rank}", result_json(ran))
        store.add(launch_key("results", number), 1)
        number += 1


def take_verdict(store: JobStore, rank: int, hostname: str, deadline: float,
                 traffic: Traffic) -> NodeOutcome:
    """Node 0's verdict, as this node reports it."""
    if not store.wait(["verdict"], deadline + VERDICT_GRACE_S):
        raise StoreError("node 0 gave no verdict within --timeout")
    verdict = json.loads(store.get("verdict"))
    store.add("read", 1)
    return NodeOutcome(int(verdict["exit_code"]), verdict["verdict"],
                       verdict["causes"].get(str(rank), ""),
                       verdict["names"].get(str(rank), hostname), traffic)


def run_node(place: JobPlace, settings: NodeStage0, launch_options: LaunchOptions,
             join_timeout_s: float, progress: Progress, started: float) -> NodeOutcome:
    """One node other than 0: join node 0's store, run stage 0 here (at once with --skip
    rendezvous; else once joined, since its rendezvous check reaches node 0's listener), post
    the facts, run the command node 0 decides (or nothing), and take node 0's verdict."""
    hostname = socket.gethostname()
    deadline = started + settings.timeout_s
    address = local_address(place.master_addr, place.store_port)
    host = node_host(place, hostname, address, sys.executable)
    session = LocalSession()
    cancel = threading.Event()
    stage0: list[CommandResult] = []

    def check_here() -> None:
        until = min(deadline, time.monotonic() + settings.seconds)
        stage0.append(session.run(settings.command(place, host, max(
            until - time.monotonic() - 2, 1), listens=False), until, cancel))

    checker = threading.Thread(target=check_here, daemon=True)
    if settings.reach_window_s is None:
        checker.start()
    traffic = Traffic()
    store: Optional[JobStore] = None
    heartbeat: Optional[Heartbeat] = None
    rank = place.node_rank
    stage = NodeStage()
    try:
        progress.say(f"node rank {rank} ({hostname}): joining {place.master_addr}:"
                     f"{place.store_port}")
        try:
            store = join_store(place, NodeJoin(rank, hostname, address, sys.executable),
                               min(join_timeout_s, deadline - time.monotonic()), traffic)
        except StoreError as exc:
            failure = joins.master_unreachable(str(exc))
            return NodeOutcome(3, "unreachable", f"{failure.check}: {failure.message}",
                               hostname, traffic)
        if not checker.is_alive() and not stage0:
            checker.start()
        stop = threading.Event()
        heartbeat = Heartbeat(store.connection(min(10.0, max(deadline - time.monotonic(), 1))),
                              rank, stop).start()
        stage.now = "stage 0"
        while checker.is_alive():
            checker.join(0.2)
        result = stage0[0] if stage0 else CommandResult(None, "", cancelled=True)
        store.set(f"stage0/{rank}", result_json(result))
        store.add("stage0s", 1)
        progress.say(f"node rank {rank} ({hostname}): stage 0 done in {result.duration_s:.1f}s;"
                     f" waiting for node 0's decision")
        follow_decisions(store, place, host, launch_options,
                         lambda command: session.run(command, deadline + 5.0, cancel, stop),
                         progress, deadline, stage)
        stage.now = "the verdict"
        return take_verdict(store, rank, hostname, deadline, traffic)
    except StoreError as exc:
        return NodeOutcome(3, "unreachable", f"join: lost node 0 during {stage.now}: {exc}",
                           hostname, traffic)
    except KeyboardInterrupt as exc:
        from ..analyze.outcomes import signal_name

        why = signal_name(exc)
        if store is not None:
            try:
                store.set(f"gone/{rank}", f"interrupted ({why})")
            except StoreError:
                pass
        return NodeOutcome(130, "interrupted", f"interrupted ({why}) during {stage.now}",
                           hostname, traffic)
    finally:
        cancel.set()
        if heartbeat is not None:
            heartbeat.close()
        if store is not None:
            store.close()
        session.close()
        progress.say(traffic_line(rank, traffic))


# -- the command's frame on every node ----------------------------------------------------------

Reported = Callable[[Callable[[ClusterSpec], Report], Callable[[], ClusterSpec]], int]


def run_in_job(place: JobPlace, options: PreflightOptions, join_timeout_s: Optional[float],
               progress: Progress, reported: Reported,
               sweep: Optional[SweepProgram] = None) -> int:
    """``preflight --in-job`` on this node: node 0 runs the engine with ``StoreLauncher``
    inside ``reported`` (the command's frame: the table, the report files, the exit code) and
    publishes the verdict; any other node runs ``run_node``. Every node ends with its summary
    line on stderr and exits with the verdict's code. ``sweep`` (``--bandwidth``): node 0's
    workload is ``ProbeThenSweep``; the other nodes learn it from node 0's plan."""

    started = time.monotonic()
    join_s = min(join_timeout(options.timeout_s, join_timeout_s), options.timeout_s)
    stage0 = NodeStage0(options.stage0_timeout_s, options.timeout_s, options.dcgm,
                        REACH_WINDOW_S if options.rendezvous_check else None)
    if place.node_rank != 0:
        outcome = run_node(place, stage0, options.launch, join_s, progress, started)
        print(summary_line(place.node_rank, outcome.host, outcome.verdict, outcome.cause),
              file=sys.stderr)
        return outcome.exit_code
    hostname = socket.gethostname()
    try:
        store = JobStore.serve(place.store_port, options.timeout_s)
    except StoreError as exc:
        print(summary_line(0, hostname, "unreachable", f"join: {exc}"), file=sys.stderr)
        return 3
    launcher = StoreLauncher(place, store, join_s, started, stage0)
    reports: list[Report] = []

    def execute(spec: ClusterSpec) -> Report:
        try:
            workload = Probe(options) if sweep is None else ProbeThenSweep(options, sweep)
            reports.append(Engine(spec, workload, launcher, progress).run())
            return reports[0]
        finally:
            names = launcher.gathering.names or {0: hostname}
            if reports:
                readers = [r for r in launcher.joins if r and r not in launcher.gathering.gone]
                publish_verdict(store, reports[0], names, len(readers))
            else:  # interrupted before the engine could report
                store.set("verdict", json.dumps({
                    "verdict": "interrupted", "exit_code": 130, "names": {},
                    "causes": {str(r): "interrupted: node 0 was stopped" for r in
                               range(place.nnodes)}}))

    try:
        code = reported(execute, lambda: in_job_spec(place, hostname))
    finally:
        store.close()
        progress.say(traffic_line(0, store.traffic))
    if reports:
        cause = node_causes(reports[0], launcher.gathering.names or {0: hostname})["0"]
        print(summary_line(0, hostname, reports[0].verdict.value, cause), file=sys.stderr)
    else:
        print(summary_line(0, hostname, "interrupted" if code == 130 else "error",
                           "see above"), file=sys.stderr)
    return code
