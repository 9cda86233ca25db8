"""Hang analysis and rendering on host scans as ``hangscan`` emits them (pure: no torch, no SSH)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Optional

from goldenfile import check_golden

from ddpcheck.model.checks import Check
from ddpcheck.model.outcomes import Failure
from ddpcheck.analyze.hang import hang_findings
from ddpcheck.collect.scan import parse_scan_output
from ddpcheck.engine.hang import HangOptions, hang_report
from ddpcheck.report.hang import render_hang
from ddpcheck.analyze.hang import (HostScanResult, Role, analyze_job, analyze_scans,
                                   collect_views, compress_ranks)
from ddpcheck.model.records import Finding, HostRecord, Severity
from ddpcheck.model.spec import ClusterSpec, HostSpec

JOB = "none@10.0.0.1:29500"
TORCH = "/venv/lib/python3.11/site-packages/torch/distributed"
IN_ALL_REDUCE = [{"name": "all_reduce", "file": f"{TORCH}/distributed_c10d.py", "line": 3252},
                 {"name": "_exception_logger.<locals>.wrapper", "file": f"{TORCH}/c10d_logger.py",
                  "line": 83},
                 {"name": "train", "file": "/job/train.py", "line": 40}]
IN_BROADCAST = [{**IN_ALL_REDUCE[0], "name": "broadcast"}, *IN_ALL_REDUCE[1:]]
IN_LOAD_BATCH = [{"name": "get", "file": "/usr/lib/python3.11/queue.py", "line": 171},
                 {"name": "load_batch", "file": "/job/train.py", "line": 12},
                 {"name": "train", "file": "/job/train.py", "line": 38}]
IN_COMPUTE = [{"name": "forward", "file": "/job/model.py", "line": 7},
              {"name": "train", "file": "/job/train.py", "line": 36}]
IN_ITEM = [{"name": "train", "file": "/job/train.py", "line": 44}]


def beat(step: int, seq: Optional[int] = None, **more: Any) -> dict[str, Any]:
    return {"v": 1, "job": JOB, "step": step, "time": 12.0, "seq": seq, "seq_now": seq,
            "beat": 12.5, **more}


def worker(rank: int, *, world: int = 4, lws: int = 2, status: str = "sleeping",
           stack: Optional[list] = IN_ALL_REDUCE, first_stack: Optional[list] = None,
           beats: tuple = (None, None), cpu: tuple = (1.0, 1.01),
           flight_record: Optional[dict] = None, job: str = JOB) -> dict[str, Any]:
    pid = 1000 + rank

    def sample(at: float, frames: Optional[list], cpu_s: float, heartbeat) -> dict[str, Any]:
        threads = None if frames is None else {"threads": [
            {"name": "MainThread", "os_tid": pid, "main": True, "active": False, "gil": False,
             "frames": frames},
            {"name": "pin_memory", "os_tid": pid + 50, "main": False, "active": False,
             "gil": False, "frames": [{"name": "run", "file": "/usr/lib/python3.11/threading.py",
                                       "line": 982}]}]}
        return {"status": status, "cpu_s": cpu_s, "at": at, "heartbeat": heartbeat,
                "stack": threads or {}}

    return {"job": job, "rank": rank, "local_rank": rank % lws, "world_size": world,
            "group_rank": rank // lws, "local_world_size": lws, "pid": pid,
            "create_time": 100.0, "cmdline": "python train.py",
            "samples": [sample(10.0, first_stack if first_stack is not None else stack, cpu[0],
                               beats[0]),
                        sample(13.0, stack, cpu[1], beats[1])],
            "flight_record": flight_record}


def scan(host: str, workers: list, gone: list = (), py_spy: Optional[str] = "/venv/bin/py-spy",
         **more: Any) -> HostScanResult:
    return HostScanResult(host, {"hostname": host, "boot_id": f"boot-{host}", "time": 13.0,
                                 "workers": workers, "gone": list(gone), "py_spy": py_spy,
                                 "stacks_requested": True, "python": "/venv/bin/python",
                                 "other_netns": 0, **more})


def two_hosts(rank3: dict, others: Optional[dict] = None) -> list[HostScanResult]:
    others = others or {}
    return [scan("h1", [worker(0, **others), worker(1, **others)]),
            scan("h2", [worker(2, **others), rank3])]


def roles(analysis) -> dict[int, Role]:
    (job,) = analysis.jobs
    return {v.view.rank: v.role for v in job.ranks}


def test_stopped_rank_is_the_root_cause_and_the_others_wait():
    analysis = analyze_scans(two_hosts(worker(3, status="stopped", stack=IN_COMPUTE)))
    assert roles(analysis) == {0: Role.WAITING, 1: Role.WAITING, 2: Role.WAITING,
                               3: Role.STOPPED}
    root = analysis.findings[0]
    assert root.root_cause and (root.rank, root.host, root.check) == (3, "h2", "hang")
    assert "stopped (state T" in root.message and "forward (model.py:7)" in root.message
    assert "ranks 0-2 are waiting in all_reduce" in analysis.findings[1].message
    assert analysis.jobs[0].hung and analysis.jobs[0].culprits == (3,)
    assert "forward (/job/model.py:7)" in analysis.stacks["3"]
    assert analysis.stacks["3"].startswith("Process 1003 (rank 3 on h2): python train.py")


def test_a_rank_still_in_the_collective_the_stopped_rank_left_unfinished_waits_for_it():
    """Rank 3 stopped inside all_reduce 37 after some of its ring sends: ranks 0 and 1 finished
    37 and wait in 38, rank 2 still waits in 37 (seen on the namespace cluster). Rank 3's
    heartbeat is older still. Rank 2 waits for rank 3; it is not behind."""
    def at(seq: int) -> dict:
        return {"beats": (beat(seq - 2, seq), beat(seq - 2, seq))}

    scans = [scan("h1", [worker(0, **at(38)), worker(1, **at(38))]),
             scan("h2", [worker(2, **at(37)), worker(3, status="stopped", **at(25))])]
    analysis = analyze_scans(scans)
    assert roles(analysis) == {0: Role.WAITING, 1: Role.WAITING, 2: Role.WAITING,
                               3: Role.STOPPED}
    assert analysis.jobs[0].culprits == (3,) and analysis.findings[0].rank == 3
    summary = analysis.findings[1].message
    assert "ranks 0-1 are waiting in all_reduce (seq 38)" in summary
    assert "rank 2 is waiting in all_reduce (seq 37)" in summary
    # with nobody stopped, the rank left in collective 37 is the one behind
    scans[1] = scan("h2", [worker(2, **at(37)), worker(3, **at(38))])
    assert roles(analyze_scans(scans))[2] is Role.BEHIND


def test_rank_outside_any_collective_at_both_samples_is_blocked():
    analysis = analyze_scans(two_hosts(worker(3, stack=IN_LOAD_BATCH)))
    assert roles(analysis)[3] is Role.BLOCKED
    message = analysis.findings[0].message
    assert "not in any collective" in message
    assert "in get (queue.py:171), called from load_batch (train.py:12)" in message


def test_a_rank_that_moved_between_samples_is_not_called_blocked():
    analysis = analyze_scans(two_hosts(worker(3, stack=IN_LOAD_BATCH, first_stack=IN_COMPUTE)))
    assert roles(analysis)[3] is Role.UNKNOWN
    assert not analysis.jobs[0].hung
    assert "no sign of a hang" in analysis.findings[-1].message


def test_busy_waiters_are_not_a_hang():
    """Ranks using CPU in all_reduce move data: a rank in its data loader is just slower."""
    analysis = analyze_scans(two_hosts(worker(3, stack=IN_LOAD_BATCH), {"cpu": (1.0, 3.0)}))
    assert roles(analysis)[3] is Role.UNKNOWN and not analysis.jobs[0].hung


def test_rank_in_another_collective_is_a_mismatch():
    analysis = analyze_scans(two_hosts(worker(3, stack=IN_BROADCAST)))
    assert roles(analysis)[3] is Role.MISMATCH
    assert "waits in broadcast while the others wait in all_reduce" in \
        analysis.findings[0].message


def test_behind_by_heartbeat_sequence_without_stacks_and_py_spy_hint():
    scans = [scan("h1", [worker(r, stack=None, beats=(beat(7, 15), beat(7, 15)))
                         for r in (0, 1)], py_spy=None),
             scan("h2", [worker(2, stack=None, beats=(beat(7, 15), beat(7, 15))),
                         worker(3, stack=None, beats=(beat(7, 14), beat(7, 14)))],
                  py_spy=None)]
    analysis = analyze_scans(scans)
    assert roles(analysis)[3] is Role.BEHIND
    assert "collective seq 14, the others 15" in analysis.findings[0].message
    hints = [f for f in analysis.findings if f.check == "stacks"]
    assert [f.host for f in hints] == ["h1", "h2"]
    assert "pip install 'ddpcheck[stacks]'" in hints[0].message
    assert "/venv/bin/python" in hints[0].message


def test_flight_recorder_pending_op_counts_as_waiting_for_nccl_style_stacks():
    pending = {"last_op": "all_reduce", "last_op_pending": True, "last_enqueued": 41}
    done = {"last_op": "all_reduce", "last_op_pending": False, "last_enqueued": 40}
    scans = [scan("h1", [worker(0, stack=IN_ITEM, flight_record=pending, world=2)])
             , scan("h2", [worker(1, stack=IN_ITEM, flight_record=done, world=2)])]
    analysis = analyze_scans(scans)
    assert roles(analysis) == {0: Role.WAITING, 1: Role.BLOCKED}
    assert "stays in train (train.py:44) while the others wait in all_reduce at collective seq 40"\
        in analysis.findings[0].message
    assert "rank 0 is waiting in all_reduce (seq 41)" in analysis.findings[1].message


def test_progressing_job_is_not_hung():
    moving = {"beats": (beat(5, 10), beat(9, 18))}
    analysis = analyze_scans(two_hosts(worker(3, **moving), moving))
    assert set(roles(analysis).values()) == {Role.PROGRESSING}
    assert not analysis.jobs[0].hung
    assert "all 4 rank(s) progressed during the window, at step 9: not hung" in \
        analysis.findings[0].message


def test_every_rank_idle_in_one_collective_is_the_collective_stuck():
    analysis = analyze_scans(two_hosts(worker(3)))
    root = analysis.findings[-1]
    assert root.severity is Severity.ERROR and root.root_cause and root.rank is None
    assert "all 4 ranks wait in all_reduce and none is behind" in root.message


def test_gone_rank_is_named_dead_on_the_host_of_its_heartbeat():
    gone = beat(7, 8, rank=1, world_size=3, host="h2", pid=4242, started=120.0)
    scans = [scan("h1", [worker(0, world=3, lws=1)]), scan("h2", [], gone=[gone]),
             scan("h3", [worker(2, world=3, lws=1)])]
    analysis = analyze_scans(scans)
    assert roles(analysis) == {0: Role.WAITING, 1: Role.DEAD, 2: Role.WAITING}
    root = analysis.findings[0]
    assert (root.rank, root.host) == (1, "h2") and root.root_cause
    assert "pid 4242 no longer runs; its last heartbeat was at step 7, collective seq 8" in \
        root.message


def test_heartbeat_older_than_the_job_is_ignored_and_the_missing_rank_placed_by_elimination():
    stale = beat(70, 80, rank=1, world_size=3, host="h2", pid=4242, started=-500.0)
    scans = [scan("h1", [worker(0, world=3, lws=1)]), scan("h2", [], gone=[stale]),
             scan("h3", [worker(2, world=3, lws=1)])]
    analysis = analyze_scans(scans)
    root = analysis.findings[0]
    assert root.rank == 1 and root.host is None
    assert "rank 1 is missing: WORLD_SIZE is 3" in root.message
    assert "(node 1 by LOCAL_WORLD_SIZE 1)" in root.message
    assert "probably on h2, the only host scanned without a rank of this job" in root.message


def test_missing_ranks_with_an_unscanned_host_say_so():
    scans = [scan("h1", [worker(0), worker(1)]), HostScanResult("h2", None, "ssh: refused")]
    analysis = analyze_scans(scans)
    assert roles(analysis) == {0: Role.WAITING, 1: Role.WAITING, 2: Role.DEAD, 3: Role.DEAD}
    assert "h2 could not be scanned" in analysis.findings[0].message


def test_gone_ranks_of_one_host_are_one_finding():
    gone = [beat(3, 6, rank=r, world_size=4, host="h2", pid=4000 + r, started=120.0)
            for r in (2, 3)]
    analysis = analyze_scans([scan("h1", [worker(0), worker(1)]), scan("h2", [], gone=gone)])
    errors = [f for f in analysis.findings if f.severity is Severity.ERROR]
    assert len(errors) == 1 and errors[0].message.startswith("ranks 2, 3 on h2 are gone")


def test_a_process_seen_by_two_scans_of_one_machine_counts_once():
    same = worker(0, world=1)
    views = collect_views([scan("a", [same]), replace(scan("b", [same]), scan={
        **scan("b", [same]).scan, "boot_id": "boot-a"})])
    assert len(views[JOB]) == 1


def test_job_filter_and_no_job_found():
    scans = two_hosts(worker(3))
    assert analyze_scans(scans, "29500").jobs
    analysis = analyze_scans(scans, "29999")
    assert analysis.jobs == ()
    (warning,) = analysis.findings
    assert warning.severity is Severity.WARNING
    assert "no running torchrun worker of a job matching '29999' found on h1, h2" in \
        warning.message


def test_other_namespaces_are_mentioned_only_where_nothing_was_found():
    scans = [scan("h1", [worker(0, world=1)], other_netns=3), scan("h2", [], other_netns=3)]
    notes = [f for f in analyze_scans(scans).findings if "network namespaces" in f.message]
    assert [f.host for f in notes] == ["h2"]


def test_ranks_outside_the_world_are_unknown():
    verdict = analyze_job(JOB, collect_views([scan("h1", [worker(0, world=1),
                                                            {**worker(5), "world_size": 1}])])[
        JOB])
    assert {v.view.rank: v.role for v in verdict.ranks}[5] is Role.UNKNOWN


def test_compress_ranks():
    assert compress_ranks([4, 0, 1, 2, 7, 8]) == "0-2, 4, 7-8"
    assert compress_ranks([3]) == "3"


def test_unreachable_host_is_root_cause_only_without_a_job_culprit():
    host_error = [Finding(Severity.ERROR, "ssh", "h3: connect: refused", host="h3")]
    culprit = analyze_scans(two_hosts(worker(3, status="stopped")))
    ordered = hang_findings(culprit, host_error)
    assert ordered[0].rank == 3 and ordered[0].root_cause
    assert not next(f for f in ordered if f.check == "ssh").root_cause
    alone = hang_findings(analyze_scans([scan("h1", [])]), host_error)
    assert alone[0].check == "ssh" and alone[0].root_cause


def test_parse_scan_output_tolerates_pty_and_noise():
    text = ("Warning: something\r\n@@DDPCHECK hangscan {\"hostname\": \"h1\", \"workers\": []}"
            "\r\n@@DDPCHECK hangscan {broken\r\n")
    found, stray = parse_scan_output(text)
    assert found == {"hostname": "h1", "workers": []}
    assert stray[0] == "Warning: something" and "broken" in stray[1]
    assert parse_scan_output("Traceback ...\nNo module named ddpcheck\n")[0] is None


def test_report_table_golden():
    spec = ClusterSpec(hosts=(HostSpec("h1", "10.0.0.1"), HostSpec("h2", "10.0.0.2"),
                              HostSpec("h3", "10.0.0.3")), source="hosts.yaml")
    scans, hosts = {}, {}
    for result in two_hosts(worker(3, stack=IN_LOAD_BATCH)):
        scans[result.host] = result
        hosts[result.host] = HostRecord(result.host, "10.0.0.x", reachable=True,
                                        hostname=result.host, stage="done")
    hosts["h3"] = HostRecord("h3", "10.0.0.3",
                             failure=Failure(Check.SSH, "connect to 10.0.0.3:22 timed out"))
    report = replace(hang_report(spec, [hosts[h.name] for h in spec.hosts], scans,
                                 HangOptions(window_s=2.0), False, 0.0), duration_s=2.5)
    assert report.exit_code == 1 and report.verdict.value == "fail"
    assert report.ranks[3].status.value == "error" and report.ranks[3].stage == "blocked"
    assert report.extra["jobs"][0]["culprits"] == [3]
    check_golden("hang_blocked.txt", render_hang(report))


def test_a_rank_spinning_in_one_function_is_blocked_even_at_another_line():
    spinning = [{**IN_LOAD_BATCH[0], "line": 175}, *IN_LOAD_BATCH[1:]]
    analysis = analyze_scans(two_hosts(worker(3, stack=IN_LOAD_BATCH, first_stack=spinning,
                                              cpu=(1.0, 4.0))))
    assert roles(analysis)[3] is Role.BLOCKED


def test_what_a_scan_could_not_read_is_said_plainly():
    """An ordinary user's scan: other users' Python processes are named as not inspected;
    a stack py-spy could not take names the ptrace_scope in force (not for root)."""
    from ddpcheck.analyze.hang import HostScanResult, host_findings

    failed = {"samples": [{"stack": {"error": "Permission denied (os error 13)"}}]}
    scan = {"workers": [failed], "other_users": 3, "uid": 1000, "ptrace_scope": 1,
            "stacks_requested": True, "py_spy": "/usr/bin/py-spy"}
    messages = [f.message for f in host_findings([HostScanResult("h1", scan)], True)]
    assert ("h1: 3 Python process(es) of other users were not inspected (ddpcheck hang reads "
            "only your own processes; root sees every user's jobs)") in messages
    assert any(m.endswith("(kernel.yama.ptrace_scope is 1 on this host)") for m in messages)
    as_root = {**scan, "uid": 0, "other_users": 0}
    messages = [f.message for f in host_findings([HostScanResult("h1", as_root)], True)]
    assert not any("ptrace_scope is" in m or "other users" in m for m in messages)
