"""Unit tests for ddpcheck.collect.hostoutput: parse_output over fixture outputs, rank_record tolerance."""

from __future__ import annotations

from pathlib import Path

import pytest

from ddpcheck.collect.facts import read_facts, torch_import_s
from ddpcheck.collect.hostoutput import HostOutput, parse_output, rank_record, tail
from ddpcheck.model.records import RankRecord, RankStatus

FIXTURES = Path(__file__).parent / "fixtures"


def load(name: str) -> str:
    # newline="" keeps the pty fixture's \r\n as written
    with open(FIXTURES / name, newline="") as f:
        return f.read()


def test_healthy_output():
    out = parse_output(load("healthy.txt"))
    assert out.garbled == 0
    assert out.facts is None
    assert [r["rank"] for r in out.ranks] == [0, 1]
    assert out.agent == {"exit_code": 0, "stopped": None, "ranks": 2}
    assert len(out.stray) == 1 and "OMP_NUM_THREADS" in out.stray[0]
    records = [rank_record(r, "h1") for r in out.ranks]
    assert records[0] == RankRecord(
        rank=0, host="h1", local_rank=0, node_rank=0, hostname="h1", pid=101, world_size=2,
        device="cpu", status=RankStatus.OK, stage="finish", barrier_us=120.5,
        allreduce_small_us=80.0, all_reduce_wrong=0,
        versions={"python": "3.11.7", "torch": "2.3.0"})
    assert records[1].allreduce_small_us == 85.25


def test_missing_rank_output():
    out = parse_output(load("missing_rank.txt"))
    assert len(out.ranks) == 1 and out.ranks[0]["rank"] == 0
    assert out.agent == {"exit_code": 1, "stopped": None}
    assert out.garbled == 0
    assert out.stray[-1] == "RuntimeError: boom"
    assert tail(out.stray, 2) == '  File "probe.py", line 1, in <module>\nRuntimeError: boom'


def test_torchrun_prefixed_lines():
    out = parse_output(load("torchrun_prefixed.txt"))
    assert out.garbled == 0
    assert [r["rank"] for r in out.ranks] == [0, 1]
    assert out.agent == {"exit_code": 1}
    assert out.stray == ("[default1]:some other rank output",)
    failed = rank_record(out.ranks[1], "ignored")
    assert failed.host == "h2"
    assert failed.status is RankStatus.ERROR
    assert failed.stage == "init" and failed.error == "timed out" and failed.failed_at == 12.5


def test_pty_crlf_endings():
    text = load("pty_crlf.txt")
    assert "\r\n" in text
    out = parse_output(text)
    assert out.garbled == 0
    assert out.facts == {"hostname": "h3", "gpus": 0}
    assert out.ranks == ({"rank": 0, "host": "h3", "status": "ok"},)
    assert out.agent == {"exit_code": 0}
    assert out.stray == ("plain log line",)
    assert all("\r" not in s for s in out.stray)


def test_garbage_and_truncated_json_counted_not_raised():
    out = parse_output(load("garbage.txt"))
    # truncated rank, "not json", empty payload, truncated agent, list, string, null, bogus kind
    assert out.garbled == 8
    assert out.ranks == ({"rank": 0, "host": "h1", "status": "ok"},)
    assert out.agent is None
    assert out.facts == {"hostname": "h1"}
    assert "@@DDPCHECKrank {\"rank\": 9}" in out.stray


@pytest.mark.parametrize("payload", ["[1]", "42", "\"s\"", "null", "true", "1.5"])
def test_non_dict_json_is_garbled(payload):
    out = parse_output(f"@@DDPCHECK rank {payload}\n@@DDPCHECK agent {payload}\n")
    assert out == HostOutput(garbled=2)


def test_empty_and_last_facts_wins():
    assert parse_output("") == HostOutput()
    out = parse_output('@@DDPCHECK facts {"a": 1}\n@@DDPCHECK facts {"a": 2}\n')
    assert out.facts == {"a": 2}


def test_rank_record_empty_dict_defaults():
    rec = rank_record({}, "hx")
    assert rec == RankRecord(rank=None, host="hx", status=RankStatus.ERROR)
    assert rec.device == "cpu" and rec.visible_gpus == 0 and rec.stage == ""
    assert rec.versions == {} and rec.collectives == ()


def test_rank_record_mistyped_fields():
    raw = {
        "rank": "3", "local_rank": True, "node_rank": 1.0, "pid": [1], "world_size": "x",
        "host": "", "hostname": 7, "device": None, "gpu_uuid": 5, "visible_gpus": "two",
        "status": "exploded", "stage": None, "error": 12, "failed_at": "soon",
        "barrier_us": True, "allreduce_small_us": 3, "all_reduce_wrong": "-2",
        "versions": ["not", "a", "dict"], "collectives": {"not": "a list"},
    }
    rec = rank_record(raw, "fallback")
    assert rec.rank == 3
    assert rec.local_rank is None  # bool is not an int here
    assert rec.node_rank is None  # float is not an int
    assert rec.pid is None and rec.world_size is None
    assert rec.host == "fallback"  # empty host falls back
    assert rec.hostname == "7" and rec.gpu_uuid == "5" and rec.error == "12"
    assert rec.device == "cpu"
    assert rec.visible_gpus == 0
    assert rec.status is RankStatus.ERROR
    assert rec.stage == ""
    assert rec.failed_at is None and rec.barrier_us is None
    assert rec.allreduce_small_us == 3.0 and isinstance(rec.allreduce_small_us, float)
    assert rec.all_reduce_wrong == -2
    assert rec.versions == {} and rec.collectives == ()


@pytest.mark.parametrize("status", [None, 3, ["ok"], {"a": 1}])
def test_rank_record_unhashable_or_odd_status(status):
    assert rank_record({"status": status}, "h").status is RankStatus.ERROR


def test_rank_record_statuses_and_nested():
    assert rank_record({"status": "timeout"}, "h").status is RankStatus.TIMEOUT
    assert rank_record({"status": "ok"}, "h").status is RankStatus.OK
    rec = rank_record({"versions": {"torch": "2.3", "nccl": None, 1: 2},
                       "collectives": [{"op": "all_reduce"}, "junk", 3, {"op": "b"}]}, "h")
    assert rec.versions == {"torch": "2.3", "nccl": None, "1": "2"}
    assert rec.collectives == ({"op": "all_reduce"}, {"op": "b"})


@pytest.mark.parametrize("value", ["--5", "²"])
def test_rank_record_int_like_strings_do_not_crash(value):
    assert rank_record({"rank": value}, "h").rank is None


def test_torchruns_import_record_is_read_and_a_failed_import_is_the_launch_failure():
    """``remote.torchrun`` reports torchrun's own import of torch before any rank starts."""
    from ddpcheck.analyze.health import slow_import_findings
    from ddpcheck.analyze.outcomes import launch_failure
    from ddpcheck.model.outcomes import CommandResult
    from ddpcheck.wire import encode

    failed = (encode("torch_import", {"error": "ImportError: libcudart.so.12: cannot open",
                                      "import_s": 0.2}) + "\r\n" +
              encode("agent", {"exit_code": 1, "stopped": None}) + "\n")
    parsed = parse_output(failed)
    assert parsed.torch_import["error"].startswith("ImportError") and parsed.garbled == 0
    failure = launch_failure(CommandResult(1, failed), parsed, [])
    assert failure.check == "torch_import"
    assert failure.message == "launch: import torch failed: ImportError: libcudart.so.12: " \
                              "cannot open"
    slow = parse_output(encode("torch_import", {"torch": "2.13.0", "import_s": 45.0}))
    assert launch_failure(CommandResult(0, ""), slow, []).check != "torch_import"
    [warning] = slow_import_findings("h7", torch_import_s(slow.torch_import))
    assert warning.check == "torch_import" and warning.severity.value == "warning"
    assert "import torch took 45.0s" in warning.message
    assert slow_import_findings("h7", torch_import_s({"torch": "2.13.0", "import_s": 2.0})) == []
