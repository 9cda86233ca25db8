"""The straggler analysis (pure) and the Monitor's step clock against a real CPU quota."""

from __future__ import annotations

import random
import statistics
import time
from typing import Optional
from dataclasses import replace

import pytest

from ddpcheck.core.straggler import (Reason, StepSample, Thresholds, history_from_rows,
                                       identify_stragglers, median_without, slow_devices)


def synchronous_run(world: int, steps: int, compute: dict[int, float], seed: int = 0,
                    noise: float = 0.2) -> dict[int, list[StepSample]]:
    """Steps of a synchronous job: every rank computes (its mean times a noisy factor), then
    waits in the collective until the slowest has arrived."""
    rng = random.Random(seed)
    history: dict[int, list[StepSample]] = {rank: [] for rank in range(world)}
    for step in range(steps):
        busy = {r: compute.get(r, 0.05) * rng.lognormvariate(0, noise) for r in range(world)}
        last = max(busy.values())
        for rank in range(world):
            history[rank].append(StepSample(step, busy[rank], last - busy[rank] + 0.002))
    return history


def test_median_without_matches_the_median_of_the_others():
    rng = random.Random(1)
    for n in range(2, 12):
        values = sorted(rng.choice([1.0, 2.0, 3.0, rng.random()]) for _ in range(n))
        for i, value in enumerate(values):
            others = values[:i] + values[i + 1:]
            assert median_without(values, value) == pytest.approx(statistics.median(others))


def test_a_consistently_late_rank_is_named_with_its_host_lag_and_ratio():
    history = synchronous_run(8, 30, {5: 0.08})
    (found,) = identify_stragglers(history, {r: f"h{r // 2 + 1}" for r in range(8)})
    assert (found.rank, found.host, found.window) == (5, "h3", 10)
    assert found.flagged >= 8 and found.compute_ratio > 1.3 and found.lag_s > 0.02
    assert found.message().startswith("rank 5 on h3 arrives ")
    assert f"{found.flagged} of the last 10 steps" in found.message()


def test_noisy_healthy_runs_name_nobody():
    for seed in range(200):  # 200 runs x 21 windows x 16 ranks; every step jitters ~20 %
        history = synchronous_run(16, 30, {}, seed=seed)
        for end in range(10, 31):
            window = {r: samples[:end] for r, samples in history.items()}
            assert identify_stragglers(window) == [], (seed, end)


def test_late_in_too_few_steps_or_too_little_is_not_named():
    history = synchronous_run(4, 10, {}, noise=0.0)
    # rank 2 slow in only 8 of the last 10 steps
    for sample_index in range(8):
        history[2][sample_index] = StepSample(sample_index, 0.1, 0.0)
        for rank in (0, 1, 3):
            history[rank][sample_index] = StepSample(sample_index, 0.05, 0.05)
    assert identify_stragglers(history) == []
    assert [s.rank for s in identify_stragglers(history, thresholds=Thresholds(min_steps=8))] \
        == [2]
    # 15 % slower every step: under the default 1.2x ratio
    assert identify_stragglers(synchronous_run(4, 20, {1: 0.0575}, noise=0.0)) == []


def test_steps_not_reported_by_every_rank_are_not_judged():
    history = synchronous_run(3, 20, {2: 0.1}, noise=0.0)
    history[0] = history[0][:5]  # rank 0 stopped reporting after step 4
    assert identify_stragglers(history) == []


def test_rows_round_trip_and_bad_rows_are_skipped():
    sample = StepSample(7, 0.25, 0.125, 1700000000.5)
    rows = {"3": [sample.as_list(), ["x"], None, [1, 2]]}
    assert history_from_rows(rows) == {3: [sample]}
    with pytest.raises(ValueError):
        Thresholds(window=5, min_steps=6)


def test_slow_devices_are_judged_against_peers_of_the_same_model():
    def result(rank, model, tflops, gbs):
        return {"rank": rank, "host": f"n{rank}", "device_model": model,
                "where": f"GPU 0 on n{rank}", "metrics": {"bf16 TFLOP/s": tflops,
                                                          "memory GB/s": gbs}}

    results = [result(r, "H100", 700.0 + r, 3000.0) for r in range(6)]
    results[3] = result(3, "H100", 490.0, 3000.0)
    results += [result(10 + r, "A100", 280.0, 1500.0) for r in range(2)]  # too few to judge
    (slow,) = slow_devices(results)
    assert (slow.rank, slow.metric, slow.peers) == (3, "bf16 TFLOP/s", 6)
    assert slow.message().startswith("GPU 0 on n3: 0.70x the median bf16 TFLOP/s of 6 H100s")
    assert slow_devices(results, fraction=0.6) == []


def cpu_quota_or_skip():
    """tests/cpuquota.py's ``cpu_quota``, or a skip where no CPU controller can be used."""
    from cpuquota import available, cpu_quota

    ok, why = available()
    if not ok:
        pytest.skip(why)
    return cpu_quota


def spin(seconds: float) -> None:
    """Hold a CPU for ``seconds`` of wall time, in Python (the GIL held)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def test_step_clock_counts_throttled_time_as_busy_and_sleep_as_wait():
    """A real CFS quota: a thread spinning at 20 % of a CPU is busy the whole step (running or
    throttled), one that sleeps is waiting; the step's throttled time is its cgroup's."""
    import os
    import threading
    import time

    from ddpcheck.injob.stragglers import StepClock
    cpu_quota = cpu_quota_or_skip()

    clock = StepClock()
    clock.sample(0, time.time())
    assert clock.tid == threading.get_native_id()  # the training thread
    time.sleep(0.3)
    clock.sample(1, time.time())
    with cpu_quota([os.getpid()], 0.2):
        clock.refresh()  # what the Monitor's thread does every beat
        spin(0.5)
        clock.refresh()
        clock.sample(2, time.time())
    assert clock.runq_rate > 0.5  # throttled 80 % of the time: runnable, not running
    assert clock.quota.rate > 0.5  # ... and its cgroup's cpu.stat says it was the quota
    (_, _, busy1, wait1, starved1), (_, _, busy2, wait2, starved2) = (
        row[:5] for row in clock.recent())
    throttled1, throttled2 = (row[7] for row in clock.recent())
    assert wait1 > 0.25 and busy1 < 0.05 and starved1 < 0.05 and throttled1 == 0
    assert busy2 > 0.45 and wait2 < 0.05
    assert starved2 > 0.25  # the throttled part of the busy time
    assert throttled2 > 0.25


def test_a_quota_s_first_steps_take_its_rate_from_the_sampler():
    """A real CFS quota from the middle of a run: with the sampler refreshing the quota's rate
    (every 0.1 s, over the last 0.2 s), the first step under the quota is busy, its throttled
    time starved, with no beat of the background thread between (the rate read each beat gave
    it the rate from before the quota: waiting, on time), and a step after the quota is not."""
    import os
    import threading
    import time

    from ddpcheck.injob.stragglers import StepClock, ThreadSampler
    cpu_quota = cpu_quota_or_skip()

    stop = threading.Event()
    clock = StepClock()
    clock.sample(0, time.time())
    clock.refresh()  # the background thread's first beat, before the sampler starts
    clock.sampler = ThreadSampler(stop, quota=clock.quota)
    clock.sampler.start(clock.tid)
    try:
        time.sleep(0.3)
        clock.sample(1, time.time())
        with cpu_quota([os.getpid()], 0.2):
            time.sleep(0.3)
            clock.sample(2, time.time())
            spin(0.5)
            clock.sample(3, time.time())
        time.sleep(0.5)
        clock.sample(4, time.time())
    finally:
        stop.set()
        clock.sampler.thread.join(5)
        clock.close()
    rows = {row[0]: row for row in clock.recent()}
    _, _, _, wait3, starved3, _, _, throttled3 = rows[3]
    # held 80 % of the 0.5 s: not waiting for anyone, and never stopped (the sampler waited
    # for the GIL the throttled thread held: it used to count 0.1-0.16 s of it as stopped)
    assert throttled3 > 0.25 and starved3 > 0.1 and wait3 < 0.05
    assert rows[3][6] < 0.03, rows[3]
    assert rows[1][7] == 0 and rows[4][7] < 0.05  # no quota yet, and the quota lifted
    assert not clock.sampler.polls_quota  # its thread ended: the background thread reads it


def test_a_step_queued_behind_a_neighbour_is_starved_before_the_rate_knows():
    """A neighbour spinning on the training thread's one CPU from the middle of a step: the
    thread runs half the time and queues the other half. The sampler's reads of its run queue
    make that step starved at once; the rate the background thread refreshes each beat (none
    here) knew only the time before, and the queued half looked like waiting for the others."""
    import os
    import subprocess
    import sys
    import threading

    from ddpcheck.injob.stragglers import StepClock, ThreadSampler

    cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cpus)})
    stop = threading.Event()
    clock = StepClock()
    clock.sample(0, time.time())
    clock.refresh()  # the background thread's first beat: no load yet
    clock.sampler = ThreadSampler(stop)
    clock.sampler.start(clock.tid)
    neighbour = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.2)
        clock.sample(1, time.time())
        spin(0.6)
        clock.sample(2, time.time())
    finally:
        neighbour.kill()
        neighbour.wait()
        stop.set()
        clock.sampler.thread.join(5)
        clock.close()
        os.sched_setaffinity(0, cpus)
    _, _, _, wait, starved = clock.recent()[-1][:5]
    assert starved > 0.15 and wait < 0.1, clock.recent()[-1]


def test_waiting_for_its_own_throttled_thread_is_starved_not_waiting():
    """A real CFS quota on the process: the training thread waits in a futex for a thread of
    its own (as for gloo's) that needs 20 ms of CPU, at 4 % of a CPU. Without the quota that
    wait is short and is wait; under it the sampler queues as long as it sleeps, and the wait
    is starved (the old clock called it all wait: the rank looked on time)."""
    import os
    import threading
    import time

    import hashlib

    from ddpcheck.injob.stragglers import StepClock, ThreadSampler
    from cpuquota import available, cpu_quota

    ok, why = available()
    if not ok:
        pytest.skip(why)
    block = bytes(1 << 20)

    def work_in_a_thread() -> None:  # the training thread waits for it (a futex)
        done = threading.Event()

        def spin() -> None:  # hashing a MB at a time lets go of the GIL, as gloo's threads do
            end = time.thread_time() + 0.02
            while time.thread_time() < end:
                hashlib.sha256(block).digest()
            done.set()

        threading.Thread(target=spin).start()
        done.wait()

    stop = threading.Event()
    clock = StepClock()
    clock.sampler = ThreadSampler(stop)
    clock.sample(0, time.time())
    clock.sampler.start(clock.tid)
    try:
        time.sleep(0.1)
        clock.sample(1, time.time())
        work_in_a_thread()
        time.sleep(0.05)
        clock.sample(2, time.time())  # healthy
        with cpu_quota([os.getpid()], 0.04):
            work_in_a_thread()
            clock.sample(3, time.time())
    finally:
        stop.set()
        clock.sampler.thread.join()
    healthy, throttled = ([row[2] + row[3] + row[5], row[4]] + row[2:4]
                          for row in clock.recent()[-2:])
    assert healthy[1] < 0.25 * healthy[0], healthy  # starved
    assert throttled[0] > 0.2 and throttled[1] > 0.5 * throttled[0], throttled
    assert throttled[3] < 0.5 * throttled[0], throttled  # wait


def test_sampler_tells_a_sleep_outside_the_collectives_from_waiting_for_another_thread():
    import threading
    import time

    from ddpcheck.injob.stragglers import ThreadSampler

    phase, tid = {"sleep": True}, []
    done, woken = threading.Event(), threading.Event()

    def training() -> None:  # sleeps like a slow data loader, then waits like a collective
        tid.append(threading.get_native_id())
        while phase["sleep"]:
            time.sleep(0.05)
        woken.wait()

    thread = threading.Thread(target=training)
    thread.start()
    while not tid:
        time.sleep(0.01)
    sampler = ThreadSampler(done)
    sampler.start(tid[0])
    try:
        time.sleep(1.0)
        blocked, stopped, _ = sampler.step_shares()
        channel = sampler.channel()
        assert blocked > 0.8 and stopped < 0.2, (blocked, stopped)
        assert channel is not None and "sleep" in channel  # hrtimer_nanosleep, do_nanosleep
        phase["sleep"] = False
        time.sleep(0.2)
        sampler.step_shares(), sampler.channel()
        time.sleep(1.0)
        blocked, stopped, _ = sampler.step_shares()
        assert blocked < 0.1 and sampler.channel() is None, blocked  # a futex: waiting
    finally:
        done.set()
        woken.set()
        thread.join()


def test_sampler_counts_the_time_its_process_was_stopped(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    code = ("import threading, time, sys\n"
            "from ddpcheck.injob.stragglers import ThreadSampler\n"
            "stop = threading.Event(); s = ThreadSampler(stop)\n"
            "s.start(threading.get_native_id()); time.sleep(0.3); s.step_shares()\n"
            "print('ready', flush=True); began = time.monotonic(); sys.stdin.readline()\n"
            "blocked, stopped, _ = s.step_shares()\n"
            "print(blocked, stopped / (time.monotonic() - began), flush=True)\n")
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        until = time.monotonic() + 2.0
        while time.monotonic() < until:  # stopped 60 ms of every 150 ms: 40 %
            os.kill(child.pid, signal.SIGSTOP)
            time.sleep(0.06)
            os.kill(child.pid, signal.SIGCONT)
            time.sleep(0.09)
        child.stdin.write("\n")
        child.stdin.flush()
        blocked, stopped = (float(x) for x in child.stdout.readline().split())
    finally:
        os.kill(child.pid, signal.SIGCONT)
        child.kill()
        child.wait()
    assert 0.25 <= stopped <= 0.55, stopped
    assert blocked > 0.5  # meanwhile its main thread read a pipe (stdin): blocked, not waiting


# -- ddpcheck hang's analysis of a progressing job ------------------------------------------------

def _scans(history: dict[int, list[StepSample]], busy: dict[int, float], with_history: bool):
    from test_hanganalysis import beat, scan, worker

    workers = {}
    for rank in range(4):
        rows = [s.as_list() for s in history[rank]]
        last = history[rank][-1].step
        beats = (beat(last - 10, 2 * last - 20, **({"history": rows[:-10]} if with_history
                                                   else {})),
                 beat(last, 2 * last, **({"history": rows} if with_history else {})))
        w = worker(rank, beats=beats)
        w["samples"][0]["busy_s"] = 5.0
        w["samples"][1]["busy_s"] = 5.0 + 3.0 * busy[rank]  # the samples are 3 s apart
        w["samples"][0]["heartbeat"]["time"] = 10.0
        w["samples"][1]["heartbeat"]["time"] = 12.5
        workers[rank] = w
    return [scan("h1", [workers[0], workers[1]]), scan("h2", [workers[2], workers[3]])]


def test_hang_names_a_straggler_of_a_progressing_job_from_monitor_histories():
    from ddpcheck.analyze.hang import analyze_scans

    history = synchronous_run(4, 20, {3: 0.09})
    in_job = identify_stragglers(history, {0: "h1", 1: "h1", 2: "h2", 3: "h2"})
    analysis = analyze_scans(_scans(history, {r: 0.5 for r in range(4)}, True))
    assert not analysis.jobs[0].hung
    (finding,) = [f for f in analysis.findings if f.check == "straggler"]
    assert (finding.rank, finding.host) == (3, "h2")
    assert finding.message.endswith(in_job[0].message())  # the in-job words
    view = {v.view.rank: v.view for v in analysis.jobs[0].ranks}[0]
    assert view.step_rate == 4.0 and view.busy == 0.5
    # slow only in the steps after the first sample: not yet named (both samples must agree)
    late = synchronous_run(4, 30, {})
    late[3][-10:] = synchronous_run(4, 10, {3: 0.09}, seed=1)[3]
    for rank in range(3):
        late[rank][-10:] = synchronous_run(4, 10, {3: 0.09}, seed=1)[rank]
    for rank in range(4):
        late[rank] = [StepSample(i, s.busy_s, s.wait_s) for i, s in enumerate(late[rank])]
    assert identify_stragglers(late) != []
    analysis = analyze_scans(_scans(late, {r: 0.5 for r in range(4)}, True))
    assert [f for f in analysis.findings if f.check == "straggler"] == []


def test_hang_names_a_straggler_without_monitor_by_busy_time_and_not_a_healthy_job():
    from ddpcheck.analyze.hang import analyze_scans

    history = synchronous_run(4, 20, {})
    slow = analyze_scans(_scans(history, {0: 0.3, 1: 0.35, 2: 0.98, 3: 0.32}, False))
    (finding,) = [f for f in slow.findings if f.check == "straggler"]
    assert (finding.rank, finding.host) == (2, "h2")
    assert "rank 2 on h2 busy 98% of the window" in finding.message
    healthy = analyze_scans(_scans(history, {0: 0.3, 1: 0.45, 2: 0.38, 3: 0.32}, False))
    assert [f for f in healthy.findings if f.check == "straggler"] == []


def test_the_monitor_names_a_rank_only_after_consecutive_verdicts_agree(tmp_path):
    from types import SimpleNamespace

    from ddpcheck.injob.stragglers import StragglerWatch

    monitor = SimpleNamespace(world_size=4, beat_s=1.0, rank=0, hostname="h1", warnings=[],
                              stragglers=[])
    entry = {"rank": 3, "rule": "stopped", "message": "rank 3 on h2 arrives ..."}
    assert StragglerWatch(monitor, Thresholds(), store=None)._confirmed([entry]) == [entry]
    watch = StragglerWatch(monitor, Thresholds(confirmations=3), store=None)
    assert watch._confirmed([entry]) == [] and watch._confirmed([entry]) == []
    assert watch._confirmed([entry]) == [entry]
    assert watch._confirmed([]) == []  # recovered: the streak starts again
    assert watch._confirmed([entry]) == []
    steady = dict(entry, rule="steady")  # verdicts over 2 s: 9 a quarter second apart
    assert watch._confirmed([]) == []
    assert [watch._confirmed([steady]) for _ in range(9)][-2:] == [[], [steady]]
    watch._log([entry])
    watch._log([entry])
    assert monitor.warnings == ["ddpcheck.Monitor [h1:rank 0]: straggler: rank 3 on h2 "
                                "arrives ..."]  # logged once per episode


def test_a_named_rank_stays_named_while_late_in_half_the_window():
    from types import SimpleNamespace

    from ddpcheck.injob.stragglers import StragglerWatch

    monitor = SimpleNamespace(world_size=4, beat_s=1.0, rank=0, hostname="h1", warnings=[],
                              stragglers=[])
    watch = StragglerWatch(monitor, Thresholds(), store=None)
    entry = {"rank": 3, "message": "rank 3 on h2 arrives ..."}
    assert watch._confirmed([], [entry]) == []  # half the window is not enough to be named
    for _ in range(9):  # the steady rule: verdicts over 2 s
        named = watch._confirmed([entry], [entry])
    assert named == [entry]
    assert watch._confirmed([], [entry]) == [entry]  # late in 8 of 10 steps: still named
    assert watch._confirmed([], []) == []  # late in fewer than half: released


def test_heartbeat_carries_the_step_history_for_ddpcheck_hang(tmp_path):
    import json
    import time

    from ddpcheck.injob.monitor import Monitor

    with Monitor(str(tmp_path), env={"RANK": "0", "WORLD_SIZE": "1"}, beat_s=0.1) as monitor:
        for step in range(5):
            time.sleep(0.02)
            monitor.step(step)
        deadline = time.monotonic() + 5
        while True:
            rows = json.loads(open(monitor.path, encoding="utf-8").read()).get("history")
            if rows and rows[-1][0] == 4 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    assert [row[0] for row in rows] == [1, 2, 3, 4]  # the first step has no "since"
    for _, _, busy, wait, _, blocked, *_ in rows:
        # it slept between steps: waiting, or blocked outside the collectives once the
        # Monitor's sampler runs (from its first exchange on)
        assert wait + blocked > 0.015 and busy >= 0


def test_the_compute_checks_second_window_is_asked_for_by_a_suspect_and_keeps_the_better():
    from ddpcheck.remote.computecheck import better_window, suspects

    def record(rank: int, gflops: float, memory: float = 10.0) -> dict:
        return {"rank": rank, "host": f"h{rank}", "device_model": "cpu", "where": f"rank {rank}",
                "metrics": {"fp32 GFLOP/s": gflops, "memory GB/s": memory}}

    healthy = [record(r, 100.0 + r) for r in range(4)]
    assert not suspects(healthy)
    assert suspects(healthy[:3] + [record(3, 60.0)])  # 0.6x the median
    assert suspects(healthy[:3] + [record(3, 101.0, memory=5.0)])  # any metric
    assert not suspects([record(0, 100.0), record(1, 10.0)])  # too few peers to judge
    # a moment's preemption in the first window: the second, better, one is kept
    first = {**record(3, 60.0, memory=9.0), "seconds": 0.5, "windows": 1}
    second = {**record(3, 98.0, memory=8.0), "seconds": 0.5}
    kept = better_window(first, second)
    assert kept["metrics"] == {"fp32 GFLOP/s": 98.0, "memory GB/s": 9.0}
    assert kept["windows"] == 2 and kept["seconds"] == 1.0


# -- the reasons, inside and outside ------------------------------------------------------------

def _account(waiting: int, running: int = 0, stopped: int = 0, blocked: int = 0,
             runq: float = 0.0, channel: str = "hrtimer_nanosleep", threads_runq: float = 0.0,
             oncpu: Optional[float] = None):
    from ddpcheck.core.straggler import WindowAccount

    states = {"S:futex_do_wait": waiting, "R": running, "T": stopped,
              f"S:{channel}": blocked}
    polls = waiting + running + stopped + blocked
    busy = 3.0 * running / polls
    return WindowAccount(3.0, busy - runq if oncpu is None else oncpu, runq,
                         tuple((k, n) for k, n in states.items() if n), threads_runq)


@pytest.mark.parametrize("reason,slow", [
    ("starved", dict(waiting=60, running=90, runq=1.6)),
    ("blocked", dict(waiting=40, running=40, blocked=70)),
    ("stopped", dict(waiting=10, running=80, stopped=60)),
    ("compute", dict(waiting=10, running=140)),
])
def test_outside_the_rank_the_others_wait_for_is_named_with_its_reason(reason, slow):
    from ddpcheck.core.straggler import Reason, window_stragglers

    healthy = [_account(waiting=100 + 5 * r, running=50 - 5 * r) for r in range(5)]
    accounts = {r: a for r, a in enumerate(healthy[:4])} | {4: _account(**slow), 5: healthy[4]}
    (found,) = window_stragglers(accounts, {r: f"h{r // 2 + 1}" for r in range(6)})
    assert (found.rank, found.host, found.reason) == (4, "h3", Reason(reason))
    assert found.message().startswith(f"rank 4 on h3 {found.explanation()}: it held the others")
    if reason == "blocked":
        assert "(in hrtimer_nanosleep: a sleep)" in found.message()
    if reason == "stopped":
        assert "stopped 40% of the window" in found.message()
    assert window_stragglers(dict(enumerate(healthy))) == []  # a healthy job: nobody


def test_outside_time_every_rank_spends_outside_the_collectives_hides_no_straggler():
    """Every rank asleep 59 % of the window outside the collectives (a padded step, a data
    loader), rank 4 stopped 40 % of it: the others wait 35 % of the window, rank 4 4 %. It held
    the others up 96 % of the window, its peers 65 %: 1.5x the peers' held share is out of
    reach, 1.5x less waiting is not. A healthy job of the same shape names nobody."""
    from ddpcheck.core.straggler import Reason, window_stragglers

    healthy = [_account(waiting=51 + r, blocked=89, running=10 - r) for r in range(5)]
    slow = _account(waiting=6, blocked=76, stopped=60, running=8)
    (found,) = window_stragglers({r: a for r, a in enumerate(healthy[:4])}
                                 | {4: slow, 5: healthy[4]})
    assert (found.rank, found.reason) == (4, Reason.STOPPED)
    assert found.holding < 1.5 * found.peers  # held 96 %, its peers 65 %
    assert window_stragglers(dict(enumerate(healthy))) == []
    evenly = _account(waiting=30, blocked=110, running=10)  # 15 points more: not enough
    assert window_stragglers({r: a for r, a in enumerate(healthy[:4])}
                             | {4: evenly, 5: healthy[4]}) == []


def test_outside_two_ranks_are_enough_one_is_not_and_each_needs_enough_polls():
    """Two ranks: the one the other waits for is named, as the Monitor names it in-job."""
    from ddpcheck.core.straggler import window_stragglers

    slow = _account(waiting=0, running=150)
    assert [s.rank for s in window_stragglers({0: _account(100, 50), 1: slow})] == [1]
    assert window_stragglers({0: _account(100, 50), 1: _account(100, 50)}) == []
    assert window_stragglers({1: slow}) == []
    assert window_stragglers({0: _account(10, 5), 1: _account(10, 5), 2: _account(0, 15)}) == []


def test_outside_a_quota_on_the_process_is_starved_though_its_main_thread_waits_in_a_futex():
    """As measured on the namespace cluster (3 % CPU quota, a 3 s window): the throttled rank's
    main thread sat in a futex half the window, waiting for its own throttled gloo threads, and
    looked like its peers by its states alone; its threads' run-queue time (3.0 s in 3 s against
    0.1-0.35 s) is what tells it apart."""
    from ddpcheck.core.straggler import Reason, window_stragglers

    peers = {r: _account(waiting=85, running=3, blocked=56, runq=0.05, threads_runq=0.1 + r / 20)
             for r in (0, 1, 2, 3, 5)}
    throttled = _account(waiting=72, running=17, blocked=55, runq=0.3, threads_runq=3.0)
    assert window_stragglers(peers | {4: _account(72, 17, blocked=55, runq=0.3)}) == []
    (found,) = window_stragglers(peers | {4: throttled}, {4: "h3"})
    assert (found.rank, found.reason) == (4, Reason.STARVED), found
    assert found.message().startswith("rank 4 on h3 starved of CPU ")
    assert "runnable but not running" in found.message()
    # its cgroup's cpu.stat read at both samples: the quota is named as the cause
    (found,) = window_stragglers(peers | {4: replace(throttled, throttled_s=2.9)}, {4: "h3"})
    assert "(its cgroup's CPU quota throttled it 97% of the window)" in found.message()
    # a healthy job under a neighbour's load: every rank's threads queue a little
    busy = {r: _account(waiting=85, running=5, blocked=50, runq=0.1, threads_runq=0.6 + r / 10)
            for r in range(6)}
    assert window_stragglers(busy) == []


def test_inside_the_reason_is_the_share_of_the_step_that_grew_most():
    from ddpcheck.core.straggler import Reason

    def run(**slow) -> dict[int, list[StepSample]]:
        history = {}
        for rank in range(4):
            rows = []
            for step in range(12):
                if rank == 3:
                    rows.append(StepSample(step, 0.05 + slow.get("starved", 0), 0.0,
                                           starved_s=slow.get("starved", 0),
                                           blocked_s=slow.get("blocked", 0),
                                           stopped_s=slow.get("stopped", 0)))
                else:
                    extra = sum(slow.values())
                    rows.append(StepSample(step, 0.05, extra))
            history[rank] = rows
        return history

    for reason, words in (("starved", "starved of CPU 62% of its step"),
                          ("blocked", "blocked outside the collectives 62% of its step"),
                          ("stopped", "stopped 62% of its step")):
        (found,) = identify_stragglers(run(**{reason: 0.08}), {3: "h2"},
                                       channels={3: "hrtimer_nanosleep"})
        assert found.reason is Reason(reason), found
        assert found.message().startswith(f"rank 3 on h2 arrives 80 ms after the median, {words}")
        assert found.as_dict()["reason"] == reason
    history = synchronous_run(4, 20, {2: 0.09})
    (found,) = identify_stragglers(history)
    assert found.reason is Reason.COMPUTE and "x the median compute time" in found.message()
    assert "no share" not in found.message()
    # late with no share of its step above its peers' (a pause its clocks did not see): said
    unexplained = replace(found, compute_ratio=1.02, shares=((Reason.COMPUTE, 0.5),),
                          peers=((Reason.COMPUTE, 0.5),))
    assert unexplained.reason is None and unexplained.as_dict()["reason"] is None
    assert ("1.02x the median compute time, no share of its step above its peers'"
            in unexplained.message())


def test_rows_of_older_monitors_still_read():
    old = StepSample.from_list([5, 1.5, 0.1, 0.2])
    assert (old.step, old.busy_s, old.wait_s, old.starved_s, old.blocked_s) == (5, 0.1, 0.2, 0,
                                                                                  0)
    row = StepSample(5, 0.1, 0.2, 1.5, 0.05, 0.03, 0.01).as_list()
    assert StepSample.from_list(row[:7]) == StepSample(5, 0.1, 0.2, 1.5, 0.05, 0.03, 0.01)
    row = StepSample(5, 0.1, 0.2, 1.5, 0.05, 0.03, 0.01, 0.04).as_list()
    assert StepSample.from_list(row) == StepSample(5, 0.1, 0.2, 1.5, 0.05, 0.03, 0.01, 0.04)


def test_hang_repeats_the_monitors_verdict_from_its_heartbeats():
    from ddpcheck.analyze.hang import analyze_scans
    from test_hanganalysis import beat, scan, worker

    said = {"rank": 3, "host": "h2", "reason": "blocked",
            "message": "rank 3 on h2 arrives 90 ms after the median, blocked outside the "
                       "collectives 40% of its step (in hrtimer_nanosleep: a sleep), its peers "
                       "0%, 9 of the last 10 steps"}
    workers = [worker(r, beats=(beat(10), beat(20, stragglers=[said]))) for r in range(4)]
    analysis = analyze_scans([scan("h1", workers[:2]), scan("h2", workers[2:])])
    assert not analysis.jobs[0].hung
    (finding,) = [f for f in analysis.findings if f.check == "straggler"]
    assert (finding.rank, finding.host) == (3, "h2")
    assert finding.message.endswith(said["message"])
    quiet = [worker(r, beats=(beat(10), beat(20, stragglers=[]))) for r in range(4)]
    analysis = analyze_scans([scan("h1", quiet[:2]), scan("h2", quiet[2:])])
    assert [f for f in analysis.findings if f.check == "straggler"] == []  # it names no one


def test_a_rank_stopped_at_one_sample_of_a_progressing_job_is_not_hung():
    import copy

    from ddpcheck.analyze.hang import Role, analyze_scans
    from test_hanganalysis import beat, scan, worker

    def states(**counts):
        return {"S:futex_do_wait": 60, "R": 40, **counts}

    workers = []
    for rank in range(4):
        w = worker(rank, status="stopped" if rank == 3 else "sleeping", stack=None)
        w["states"] = {"R": 60, "T": 60, "S:futex_do_wait": 30} if rank == 3 else states()
        for sample, sched in zip(w["samples"], ([1.0, 0.1], [2.8, 0.2])):
            sample["sched"] = sched
        workers.append(w)
    analysis = analyze_scans([scan("h1", workers[:2]), scan("h2", workers[2:])])
    (job,) = analysis.jobs
    assert not job.hung and {v.role for v in job.ranks} == {Role.PROGRESSING}
    (finding,) = [f for f in analysis.findings if f.check == "straggler"]
    assert finding.rank == 3 and "rank 3 on h2 stopped 40% of the window" in finding.message
    # with a Monitor that names no one (its own process stopped), the scan's view is added
    monitored = copy.deepcopy(workers)
    for w in monitored:
        for sample, step in zip(w["samples"], (10, 20)):
            sample["heartbeat"] = beat(step, stragglers=[])

    def monitored_finding(*said):  # the Monitor's verdict in its latest heartbeats
        for w in monitored:
            w["samples"][1]["heartbeat"] = beat(20, stragglers=list(said))
        (found,) = [f for f in analyze_scans([scan("h1", monitored[:2]),
                                              scan("h2", monitored[2:])]).findings
                    if f.check == "straggler"]
        return found

    finding = monitored_finding()
    assert finding.rank == 3 and "rank 3 on h2 stopped 40% of the window" in finding.message
    # the Monitor names it for another reason (its stops fell in the step's sleeps, its clock
    # saw compute): one finding, the Monitor's words and then the scan's state T
    said = {"rank": 3, "host": "h2", "reason": "compute", "rule": "steady",
            "message": "rank 3 on h2 arrives 15 ms after the median, 1.02x the median compute "
                       "time, 7 of the last 10 steps"}
    finding = monitored_finding(said)
    assert finding.rank == 3 and said["message"] in finding.message
    assert finding.message.endswith("; outside, its scan saw it stopped 40% of the window "
                                    "(state T: SIGSTOP, a debugger or a sampling profiler)")
    # the Monitor saw the stops itself: its words alone
    said = dict(said, reason="stopped", message="rank 3 on h2 arrives 90 ms after the median, "
                "stopped 40% of its step, 4 of the last 10 steps")
    finding = monitored_finding(said)
    assert finding.message == f"job {analysis.jobs[0].job}: {said['message']}"
    # stopped at both samples and all the time between, no progress: stopped (the hang)
    for w in workers:
        w["states"] = {"S:futex_do_wait": 150}
    workers[3]["states"] = {"T": 150}
    workers[3]["samples"][0]["status"] = "stopped"
    analysis = analyze_scans([scan("h1", workers[:2]), scan("h2", workers[2:])])
    assert analysis.jobs[0].hung
    assert {v.view.rank: v.role for v in analysis.jobs[0].ranks}[3] is Role.STOPPED


def run_with_extra(world: int, steps: int, extra: dict[tuple[int, int], tuple[str, float]],
                   seed: int = 0, noise: float = 0.2, throttled: float = 0.0
                   ) -> dict[int, list[StepSample]]:
    """Steps of about 0.1 s (compute 0.08 s jittering ``noise``, then the collective), where
    ``extra[(step, rank)] = (kind, seconds)`` adds time that rank spent blocked outside the
    collectives, stopped, computing, or starved of CPU by its cgroup's quota ("throttled") or
    otherwise ("starved") before it arrived; ``throttled`` every rank's share of each step its
    cgroup throttled it besides (a CPU limit on every pod)."""
    rng = random.Random(seed)
    history: dict[int, list[StepSample]] = {rank: [] for rank in range(world)}
    for step in range(steps):
        busy = {r: 0.08 * rng.lognormvariate(0, noise) for r in range(world)}
        held = {r: busy[r] + extra.get((step, r), ("", 0.0))[1] for r in range(world)}
        last = max(held.values())
        for rank in range(world):
            kind, seconds = extra.get((step, rank), ("", 0.0))
            starved = seconds if kind in ("throttled", "starved") else 0.0
            limit = throttled * busy[rank] * rng.uniform(0.5, 1.5)
            history[rank].append(StepSample(
                step, busy[rank] + (seconds if kind == "busy" else 0.0) + starved,
                last - held[rank] + 0.002, step * 0.1, starved_s=starved + limit,
                blocked_s=seconds if kind == "blocked" else 0.0,
                stopped_s=seconds if kind == "stopped" else 0.0,
                throttled_s=(seconds if kind == "throttled" else 0.0) + limit))
    return history


def first_named(history: dict[int, list[StepSample]]) -> dict[int, tuple[int, str]]:
    """{rank: (the step it was first named at, by which rule)}, judging after every step."""
    named: dict[int, tuple[int, str]] = {}
    for end in range(1, len(next(iter(history.values()))) + 1):
        for found in identify_stragglers({r: s[:end] for r, s in history.items()}):
            named.setdefault(found.rank, (end - 1, found.rule))
    return named


@pytest.mark.parametrize("kind,seconds", [("blocked", 0.08), ("busy", 0.08),
                                          ("stopped", 0.06)])
def test_a_persistent_straggler_is_named_by_its_fifth_late_step(kind, seconds):
    """Compute jittering 10 %: a peer's spike that hides the straggler's lateness for one step
    (at 20 %, a few seeds in 20) starts its run of late steps again."""
    for seed in range(20):
        onset = 20
        history = run_with_extra(6, 40, {(step, 4): (kind, seconds)
                                         for step in range(onset, 40)}, seed, noise=0.1)
        named = first_named(history)
        assert list(named) == [4] and named[4][1] in ("quick", kind), seed
        assert onset <= named[4][0] <= onset + 4, seed  # its fifth late step at the latest


@pytest.mark.parametrize("kind,seconds,late", [("blocked", 0.08, 3), ("stopped", 0.06, 2)])
def test_a_rank_its_own_clock_saw_held_is_named_in_a_few_late_steps(kind, seconds, late):
    """Asleep outside the collectives (its own clock's evidence, which no neighbour's load
    makes): three late steps are enough, by the quick rule; stopped, two, by the stopped rule
    (a stop no scheduler makes); computing as long takes five."""
    named_by = set()
    for seed in range(20):
        onset = 20
        extra = {(step, 4): (kind, seconds) for step in range(onset, 40)}
        named = first_named(run_with_extra(6, 40, extra, seed, noise=0.1))
        assert list(named) == [4] and named[4][0] == onset + late - 1, seed
        named_by.add(named[4][1])
        busy = {key: ("busy", seconds) for key in extra}
        assert first_named(run_with_extra(6, 40, busy, seed, noise=0.1))[4][0] > onset + 2, seed
    assert named_by == {"quick" if kind == "blocked" else "stopped"}


def test_a_short_held_burst_is_not_named_quickly():
    """Held in two steps only, held too little of each, or three steps of a few milliseconds."""
    for seed in range(50):
        two = {(step, 3): ("blocked", 0.08) for step in (20, 21)}
        assert first_named(run_with_extra(6, 40, two, seed)) == {}, seed
    for seed in range(10):
        # late by 60 ms a step from step 20 on: asleep all of it, or 12 ms (8 % of its step)
        asleep = run_with_extra(6, 40, {(step, 4): ("blocked", 0.06) for step in range(20, 40)},
                                seed, noise=0.05)
        assert first_named(asleep) == {4: (22, "quick")}, seed  # the held 3 steps
        little = run_with_extra(6, 40, {(step, 4): ("busy", 0.06) for step in range(20, 40)},
                                seed, noise=0.05)
        little[4] = [replace(s, busy_s=s.busy_s - 0.012, blocked_s=0.012) if s.step >= 20
                     else s for s in little[4]]
        assert first_named(little) == {4: (24, "quick")}, seed  # the 5-step rule
    short = {rank: [replace(s, busy_s=s.busy_s / 20, wait_s=s.wait_s / 20,
                            blocked_s=s.blocked_s / 20) for s in samples]
             for rank, samples in run_with_extra(
                 6, 40, {(step, 4): ("blocked", 0.08) for step in (30, 31, 32)}, seed=2).items()}
    assert first_named(short) == {}  # 3 held steps of 9 ms: 27 ms in all


def test_a_one_step_stall_or_a_short_burst_is_never_named():
    for seed in range(50):
        stall = {(12, seed % 6): ("stopped", 1.0)}  # one step, held a second
        burst = {(step, (seed + 1) % 6): ("busy", 0.15) for step in (25, 26, 27)}
        assert first_named(run_with_extra(6, 40, {**stall, **burst}, seed)) == {}, seed


def test_a_stopped_duty_cycle_is_named_though_late_only_in_one_step_of_three():
    """A rank stopped 60 ms in one step of every three: late only in those."""
    extra = {(step, 4): ("stopped", 0.06) for step in range(10, 40) if step % 3 == 0}
    named = first_named(run_with_extra(6, 40, extra, seed=3))
    assert list(named) == [4] and named[4][1] == "stopped"
    (found,) = identify_stragglers(run_with_extra(6, 40, extra, seed=3))
    assert found.reason is Reason.STOPPED and "stopped" in found.message()


def test_a_quota_spent_in_periods_is_named_as_throttled_though_late_only_in_some_steps():
    """A rank held by its cgroup's quota 60 ms in one step of every three (the quota runs out
    in some 100 ms periods, not in others) is named by the ``throttled`` rule, with the quota as
    the reason. The same lateness from a run queue alone, which a neighbour's load also makes,
    is not; nor is a job whose every rank its CPU limit throttles alike."""
    extra = {(step, 4): ("throttled", 0.06) for step in range(10, 40) if step % 3 == 0}
    named = first_named(run_with_extra(6, 40, extra, seed=3))
    assert list(named) == [4] and named[4][1] == "throttled"
    assert named[4][0] <= 10 + 3 * 3  # by its fourth late step (3 held, 15 % of the window)
    (found,) = identify_stragglers(run_with_extra(6, 40, extra, seed=3))
    assert found.reason is Reason.STARVED and found.rule == "throttled"
    assert "its cgroup's CPU quota throttled it" in found.message(), found.message()
    queued = {key: ("starved", seconds) for key, (_, seconds) in extra.items()}
    for seed in range(20):
        assert first_named(run_with_extra(6, 40, queued, seed=seed)) == {}, seed
        assert first_named(run_with_extra(6, 40, {}, seed=seed, throttled=0.3)) == {}, seed


@pytest.mark.parametrize("kind", ["stopped", "throttled"])
def test_a_held_cycle_is_judged_since_it_began_not_over_the_whole_window(kind):
    """Held 50 ms in every other step from step 20 on (a SIGSTOP cycle, or a quota spent in
    some periods): at its second late step it was held 28 % of the time since the first, but
    10 % of the 10-step window, whose healthy steps before the onset dilute it (15 % needed).
    Named then, by its own rule; the window's share alone would wait for a fourth."""
    extra = {(step, 4): (kind, 0.05) for step in range(20, 40, 2)}
    for seed in range(20):
        history = run_with_extra(6, 40, extra, seed, noise=0.1)
        assert first_named(history) == {4: (22, kind)}, seed
        (found,) = identify_stragglers({r: s[:23] for r, s in history.items()})
        assert (found.flagged, found.window) == (2, 3)  # late in 2 of the 3 steps since
        if kind == "throttled":
            assert found.throttled > 0.2 and "throttled it 2" in found.message(), found


def test_a_held_episode_reaches_back_a_third_of_a_second_and_is_set_against_its_peers():
    """Stopped 12 ms in each of three steps of 50 ms: 19 % of those steps, but the episode
    reaches back to 0.3 s, where 36 ms is 11 %, so no one is named (a burst, not a cycle); nor
    is a rank stopped as often as all its peers (a profiler attached to every rank)."""
    burst = {(step, 4): ("stopped", 0.024) for step in (30, 31, 32)}
    everyone = {(step, rank): ("stopped", 0.05) for step in range(20, 40, 2) for rank in range(6)}
    for seed in range(20):
        half = {rank: [replace(s, busy_s=s.busy_s / 2, wait_s=s.wait_s / 2,
                               stopped_s=s.stopped_s / 2) for s in samples]
                for rank, samples in run_with_extra(6, 40, burst, seed, noise=0.1).items()}
        assert first_named(half) == {}, seed
        assert first_named(run_with_extra(6, 40, everyone, seed, noise=0.1)) == {}, seed


def test_the_monitor_names_a_quick_straggler_at_once():
    from types import SimpleNamespace

    from ddpcheck.injob.stragglers import StragglerWatch

    monitor = SimpleNamespace(world_size=4, beat_s=1.0, rank=0, hostname="h1", warnings=[],
                              stragglers=[])
    watch = StragglerWatch(monitor, Thresholds(), store=None)
    entry = {"rank": 3, "rule": "quick", "message": "rank 3 on h2 arrives ..."}
    assert watch._confirmed([entry]) == [entry]
    assert watch._confirmed([], [dict(entry, rule="steady")]) == [entry | {"rule": "steady"}]


def test_a_job_progresses_when_its_loops_turn_though_one_rank_runs_throughout():
    """A rank starved of CPU is runnable at every poll, yet its peers' loops turn: each of their
    collectives needed it, so the job progressed. Spinning or asleep in one place while the
    peers wait throughout is no progress."""
    from ddpcheck.core.straggler import job_progressed

    turning = [_account(waiting=100, running=50) for _ in range(5)]
    assert job_progressed(turning)
    assert job_progressed(turning + [_account(waiting=0, running=150, runq=2.5)])  # starved
    waiting = [_account(waiting=150) for _ in range(5)]
    assert not job_progressed(waiting + [_account(waiting=0, running=150)])  # spins alone
    assert not job_progressed(waiting + [_account(waiting=0, blocked=150)])  # asleep alone
    assert not job_progressed([_account(waiting=0, running=150)] * 6)  # all spin (NCCL hang)
    assert not job_progressed(turning + [_account(waiting=0, blocked=150)])  # one never moves
    assert not job_progressed([])
    # as measured under a 3 % quota on rank 4: its peers each ran a step or two of the window,
    # and its main thread waited in a futex for its own throttled threads (4.5 s queued in 3 s)
    brief = [_account(waiting=146, running=1, threads_runq=0.15) for _ in range(4)]
    quota = _account(waiting=148, threads_runq=4.5)
    assert job_progressed(brief + [turning[0], quota])
    assert not job_progressed(brief + [turning[0], _account(waiting=148, threads_runq=0.15)])
    assert not job_progressed(brief + [quota])  # nobody went round a loop


def test_a_near_idle_loop_progresses_though_no_poll_sees_it_running():
    """As measured on a 3-rank gloo job whose step is a small all_reduce and a 50 ms sleep
    (rank 1 sleeps 80 ms more): each main thread ran 5-7 ms of a 3 s window and no poll saw
    one running, but each slept in two places, the collective's futex and the sleep, turn about.
    A thread asleep in one place, or in two without running between, went round no loop."""
    from ddpcheck.core.straggler import WindowAccount, job_progressed

    def account(states: dict, oncpu: float) -> WindowAccount:
        return WindowAccount(3.0, oncpu, 0.0, tuple(states.items()), 0.0)

    peers = [account({"S:futex_do_wait": 89, "S:hrtimer_nanosleep": 57}, 0.0055),
             account({"S:futex_do_wait": 90, "S:hrtimer_nanosleep": 57}, 0.0055)]
    slow = account({"S:futex_do_wait": 4, "S:hrtimer_nanosleep": 143}, 0.0066)
    assert job_progressed(peers + [slow])
    # asleep at every poll, yet it ran: the peers' collectives completed, so it took part
    assert job_progressed(peers + [account({"S:hrtimer_nanosleep": 147}, 0.0066)])
    assert not job_progressed(peers + [account({"S:hrtimer_nanosleep": 147}, 0.0)])
    still = [account({"S:futex_do_wait": 89, "S:hrtimer_nanosleep": 57}, 0.0) for _ in range(3)]
    assert not job_progressed(still)  # no CPU at all: nothing went round
    once = [account({"S:futex_do_wait": 146, "S:hrtimer_nanosleep": 1}, 0.0055)] * 3
    assert not job_progressed(once)  # seen in the second place once: not a loop yet


def test_a_peer_no_poll_saw_running_progressed_if_it_ran_between_the_polls():
    """Windows measured with gloo (3 s, a poll every 20 ms): beside a rank held to 3 % of a CPU
    its peers each ran 37-48 ms, yet a poll caught a peer running only 1-5 times, and at fewer
    steps none may: the on-CPU time says it woke for its collectives. Every waiter of a rank
    spinning or asleep for ever got 0 ns (0.1 ms with two py-spy dumps): no progress."""
    from ddpcheck.core.straggler import job_progressed

    throttled = _account(waiting=90, running=54, runq=1.04, oncpu=0.045)
    unseen = _account(waiting=145, oncpu=0.037)  # ran 37 ms, between the polls
    assert job_progressed([_account(waiting=141, running=4, oncpu=0.040)] * 4
                          + [unseen, throttled])
    assert job_progressed([unseen] * 5 + [throttled])
    hung = _account(waiting=146, oncpu=0.0)
    assert not job_progressed([hung] * 5 + [_account(waiting=0, running=146, oncpu=3.0)])
    assert not job_progressed([hung] * 5 + [_account(waiting=0, blocked=146, oncpu=0.0)])
    assert not job_progressed([hung] * 4 + [_account(waiting=146, oncpu=0.0001), throttled])
    # a rank asleep outside the collectives at every poll that ran between them took part in
    # the collectives its peers woke for; beside waiters that got no CPU it did not
    asleep = _account(waiting=0, blocked=146, oncpu=0.01)
    assert job_progressed([unseen] * 4 + [asleep, throttled])
    assert not job_progressed([hung] * 5 + [asleep])


def test_the_monitor_asks_nccl_to_time_collectives_only_before_the_group_exists(tmp_path):
    """ProcessGroupNCCL reads TORCH_NCCL_ENABLE_TIMING when a group is created: the Monitor sets
    it then (a value the job set stays), and leaves it alone once a group is up; a group that
    is not NCCL gets no completion hook either way."""
    import torch.distributed as dist

    from ddpcheck.injob.stragglers import NCCL_TIMING_ENV, ask_nccl_timing, nccl_collective_log

    environ: dict[str, str] = {}
    ask_nccl_timing(environ)
    assert environ == {NCCL_TIMING_ENV: "1"}
    environ = {NCCL_TIMING_ENV: "0"}
    ask_nccl_timing(environ)
    assert environ == {NCCL_TIMING_ENV: "0"}
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0,
                            world_size=1)
    try:
        environ = {}
        ask_nccl_timing(environ)
        assert environ == {}
        assert nccl_collective_log() is None  # gloo
    finally:
        dist.destroy_process_group()


def test_collectives_are_credited_to_the_step_that_issued_them():
    """Generated timelines: each collective's seconds go to the step whose span holds its
    issue time (a linear scan says which), those issued after the last step ended wait for
    theirs, and those before the history are dropped."""
    from ddpcheck.injob.stragglers import credit_collectives

    rng = random.Random(7)
    for _ in range(200):
        start = rng.uniform(0, 100)
        bounds = [start]
        for _ in range(rng.randint(0, 12)):
            bounds.append(bounds[-1] + rng.choice([0.0005, 0.01, 0.1, rng.uniform(0, 2)]))
        spans = list(zip(bounds, bounds[1:]))
        collectives = [(rng.uniform(start - 1, bounds[-1] + 1), rng.uniform(0, 0.1))
                       for _ in range(rng.randint(0, 40))]
        added, later = credit_collectives(spans, collectives)
        expected = [sum(s for t, s in collectives if a <= t < b) for a, b in spans]
        assert added == pytest.approx(expected)
        assert later == [(t, s) for t, s in collectives if not spans or t >= bounds[-1]]


def test_the_nccl_clock_gives_each_short_step_its_own_collectives_though_the_hook_is_late():
    """NCCL's completion hook runs when its watchdog finds a collective done, up to 100 ms
    later: with 20 ms steps the records of five steps arrive at once. Each step gets the time
    of the collectives it issued (here every other step issues one of 15 ms), and a step is
    given only once a collective issued after it completed, or half a second after it
    ended. The records are shaped as ProcessGroupNCCL's WorkInfo gives them (timedeltas on
    the monotonic clock); the real hook runs in tests/test_straggler_gpu.py."""
    import time
    from datetime import timedelta
    from types import SimpleNamespace

    import threading

    from ddpcheck.injob.stragglers import CollectiveLog, StepClock, ThreadSampler

    log, clock = CollectiveLog(), StepClock()
    clock.sample(0, time.time())
    clock.sampler = ThreadSampler(threading.Event())
    clock.sampler.start(clock.tid)
    clock.attach(log)  # the sampler's polls would go unread from now on: its thread ends
    clock.sampler.thread.join(1.0)
    assert not clock.sampler.thread.is_alive()
    issued = []
    for step in range(1, 11):
        if step % 2:
            issued.append(time.monotonic())  # the collective of this step
        time.sleep(0.02)
        clock.sample(step, time.time())
        if step == 5:  # the watchdog's poll: the collectives of steps 1, 3, 5 complete
            assert clock.recent() == []
            for started in issued:
                log.completed(SimpleNamespace(time_started=timedelta(seconds=started),
                                              active_duration=timedelta(milliseconds=15)))
            issued = []
    rows = clock.recent()
    assert [row[0] for row in rows] == [1, 2, 3, 4]  # step 5 ends after the last issue time
    for step, _, busy, wait, *_ in rows:
        assert wait == (0.015 if step % 2 else 0.0)
        assert busy > 0.004 if step % 2 else busy > 0.019
    time.sleep(0.55)
    assert [row[0] for row in clock.recent()] == list(range(1, 11))


def test_the_nccl_log_reads_either_clock_torch_gives_and_never_raises_on_the_hook_thread():
    """Torch before late 2025 gave WorkInfo.time_started as a system-clock datetime, later as
    a steady_clock timedelta: both come back as the same monotonic instant; a record of
    another shape is dropped, not raised on NCCL's hook thread."""
    import time
    from datetime import datetime, timedelta
    from types import SimpleNamespace

    from ddpcheck.injob.stragglers import CollectiveLog

    log = CollectiveLog()
    now_mono, now_wall = time.monotonic(), time.time()
    ten_ms = timedelta(milliseconds=10)
    log.completed(SimpleNamespace(time_started=timedelta(seconds=now_mono - 1),
                                  active_duration=ten_ms))
    log.completed(SimpleNamespace(time_started=datetime.fromtimestamp(now_wall - 1),
                                  active_duration=ten_ms))
    log.completed(SimpleNamespace(time_started="soon", active_duration=ten_ms))
    log.completed(SimpleNamespace(active_duration=ten_ms))
    (steady, seconds1), (system, seconds2) = log.take()
    assert steady == pytest.approx(now_mono - 1, abs=1e-6)
    assert system == pytest.approx(now_mono - 1, abs=0.01)
    assert seconds1 == seconds2 == pytest.approx(0.01)
    assert log.take() == []
