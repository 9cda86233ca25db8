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
