"""Flight Recorder dumps -> collective sequence ids: real torch dumps, other versions, hostile
input. No torch needed."""

from __future__ import annotations

import os
import pathlib
import pickle

from ddpcheck.remote.flightrecorder import dump_prefix, op_name, parse_dump, summarize_dump

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "flight_recorder"


def test_real_gloo_dumps_give_the_pending_collective_and_the_rank_behind():
    waiting = parse_dump((FIXTURES / "gloo_trace_rank_0").read_bytes())
    behind = parse_dump((FIXTURES / "gloo_trace_rank_1").read_bytes())
    assert waiting.error is None and waiting.version == "2.10"
    assert (waiting.last_op, waiting.last_op_seq, waiting.last_op_pending) == ("all_reduce", 5,
                                                                               True)
    assert (waiting.last_enqueued, waiting.last_completed) == (5, 4)
    assert (behind.last_op, behind.last_op_seq, behind.last_op_pending) == ("broadcast", 4, False)
    assert behind.last_enqueued == 4


def entry(seq, state, name="nccl:all_reduce", pg=0, **more):
    return {"pg_id": pg, "collective_seq_id": seq, "profiling_name": name, "state": state,
            "is_p2p": False, **more}


def test_nccl_style_dump_without_pg_status_reads_states_from_entries():
    dump = {"version": "2.4", "entries": [entry(1, "completed"), entry(2, "completed"),
                                          entry(3, "started"), entry(9, "completed", pg=1)]}
    record = summarize_dump(dump)
    assert (record.last_enqueued, record.last_started, record.last_completed) == (3, 3, 2)
    assert (record.last_op, record.last_op_seq, record.last_op_pending) == ("all_reduce", 3, True)


def test_pg_status_wins_and_minus_one_means_not_tracked():
    dump = {"version": "2.10", "entries": [entry(7, "scheduled", retired=False)],
            "pg_status": {"0": {"last_enqueued_collective": 7, "last_started_collective": -1,
                                "last_completed_collective": 6}}}
    record = summarize_dump(dump)
    assert (record.last_enqueued, record.last_started, record.last_completed) == (7, None, 6)
    assert record.last_op_pending


def test_p2p_entries_are_not_collectives():
    dump = {"entries": [entry(4, "completed"), {**entry(0, "started", "nccl:send"),
                                                "is_p2p": True}]}
    assert summarize_dump(dump).last_op == "all_reduce"


def test_malformed_and_hostile_dumps_are_unreadable_not_fatal(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    hostile = parse_dump(pickle.dumps({"entries": [Exploit()]}))
    assert hostile.error and "refusing" in hostile.error and not marker.exists()
    assert parse_dump(b"not a pickle").error
    assert parse_dump(pickle.dumps([1, 2])).error.endswith("a list")
    odd = parse_dump(pickle.dumps({"entries": "x", "pg_status": [], "version": 3}))
    assert odd.error is None and odd.entries == 0 and odd.last_op is None
    typed = parse_dump(pickle.dumps({"entries": [{"collective_seq_id": "7", "state": 1},
                                                 None, entry(True, "completed")]}))
    assert typed.error is None and typed.last_enqueued is None


def test_dump_prefix_follows_torch_variables():
    assert dump_prefix({}) == "/tmp/nccl_trace_rank_"
    assert dump_prefix({"TORCH_NCCL_DEBUG_INFO_TEMP_FILE": "/a/t_"}) == "/a/t_"
    assert dump_prefix({"TORCH_NCCL_DEBUG_INFO_TEMP_FILE": "/a/t_",
                        "TORCH_FR_DUMP_TEMP_FILE": "/b/f_"}) == "/b/f_"
    assert op_name("nccl:all_reduce") == "all_reduce" and op_name(None) is None


# -- every process group ------------------------------------------------------------------------

def subgroup_views():
    """The dumps of a real 4-rank gloo job (tests/hangjob.py --subgroup 0,1,2 --block-rank 2):
    ranks 0 and 1 wait in their group's all_reduce, rank 2 never called it, rank 3 (not in the
    group) went on to the next all_reduce of the default group."""
    from ddpcheck.analyze.hang import RankView

    views = []
    for rank in range(4):
        record = parse_dump((FIXTURES / f"gloo_subgroup_trace_rank_{rank}").read_bytes())
        views.append(RankView(job="train", rank=rank, world_size=4, host=f"node{rank // 2}",
                              status="sleeping", seq=record.last_enqueued,
                              flight_record=record.to_json()))
    return views


def test_every_process_group_of_a_real_gloo_dump_is_read():
    record = parse_dump((FIXTURES / "gloo_subgroup_trace_rank_0").read_bytes())
    assert [(g.pg_id, g.desc, g.last_enqueued, g.last_completed, g.last_op, g.pending)
            for g in record.groups] == [("0", "default_pg", 7, 7, "all_reduce", False),
                                        ("1", "undefined", 7, 6, "all_reduce", True)]
    assert [g.pg_id for g in parse_dump(
        (FIXTURES / "gloo_subgroup_trace_rank_3").read_bytes()).groups] == ["0"]


def test_subgroup_hang_names_the_group_and_the_missing_rank():
    from ddpcheck.analyze.hang import analyze_job, group_stalls

    views = subgroup_views()
    first = group_stalls(views, 4)[0]
    assert (first.pg_id, first.members, first.op, first.seq, first.waiting, first.missing,
            first.culprits) == ("1", (0, 1, 2), "all_reduce", 7, (0, 1), (2,), (2,))
    verdict = analyze_job("train", views)
    assert verdict.hung and verdict.culprits == (2,)
    [root] = [f for f in verdict.findings if f.root_cause]
    assert root.rank == 2 and root.host == "node1"
    assert "process group 1, ranks 0-2" in root.message
    assert "rank(s) 0-1 wait in all_reduce (collective seq 7)" in root.message
    assert "2 on node1, its last seq 6" in root.message


def test_nccl_pg_config_ranks_name_the_members_even_without_their_dumps():
    from ddpcheck.analyze.hang import RankView, group_stalls

    def dump(seq, pending):
        return {"version": "2.10", "pg_config": {"7": {"name": "7", "desc": "tp",
                                                       "ranks": "[4, 5, 6]"}},
                "pg_status": {"7": {"last_enqueued_collective": seq,
                                    "last_completed_collective": seq - 1 if pending else seq}},
                "entries": [{"pg_id": 7, "process_group": ("7", "tp"), "collective_seq_id": seq,
                             "profiling_name": "nccl:all_gather", "is_p2p": False,
                             "state": "started" if pending else "completed"}]}

    views = [RankView(job="j", rank=r, world_size=8, host="h", status="sleeping",
                      flight_record=summarize_dump(dump(3, True)).to_json()) for r in (4, 5)]
    [stall] = group_stalls(views, 8)
    assert (stall.members, stall.missing, stall.culprits, stall.op) == ((4, 5, 6), (6,), (6,),
                                                                         "all_gather")
    assert stall.describe() == "process group 7 (tp), ranks 4-6"
