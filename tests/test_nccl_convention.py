"""ddpcheck's bandwidth tables in nccl-tests' convention, checked against nccl-tests itself:
its own GetCollByteCount and parsesize (tests/fixtures/nccl_tests_rules.c, copied unchanged
from nccl-tests and compiled here) on generated sizes and world sizes, and rows of its
published outputs (size, count, time -> algbw, busbw)."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ddpcheck.core.busbw import Collective, CollectiveRow, element_count, parse_size

RULES_C = os.path.join(os.path.dirname(__file__), "fixtures", "nccl_tests_rules.c")


@pytest.fixture(scope="module")
def nccl_tests(tmp_path_factory):
    """nccl-tests' rules as a process: one question per line in, one answer per line out."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        if os.environ.get("CI") == "true":
            pytest.fail("no C compiler to build nccl-tests' rules")
        pytest.skip("no C compiler")
    binary = tmp_path_factory.mktemp("ncclrules") / "rules"
    subprocess.run([compiler, "-O1", "-o", str(binary), RULES_C], check=True)
    proc = subprocess.Popen([str(binary)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)

    def ask(question: str) -> str:
        proc.stdin.write(question + "\n")
        proc.stdin.flush()
        return proc.stdout.readline().strip()

    yield ask
    proc.stdin.close()
    proc.wait(timeout=10)


@settings(max_examples=400, deadline=None)
@given(op=st.sampled_from(list(Collective)),
       size=st.one_of(st.integers(1, 4096), st.integers(1, 1 << 31)),
       world=st.one_of(st.integers(1, 16), st.integers(1, 4096)))
def test_bytes_and_count_columns_are_nccl_tests(nccl_tests, op, size, world) -> None:
    name = op.value if op is not Collective.ALL_TO_ALL else "all_to_all"
    expected_bytes, expected_count = map(int, nccl_tests(f"count {name} {size} {world}").split())
    count = element_count(op, size, world)
    row = CollectiveRow(op, count, world, 1e-3, 0)
    assert (row.nbytes, row.table_count) == (expected_bytes, expected_count)


_number = st.one_of(st.integers(0, 5000).map(str),
                    st.tuples(st.integers(0, 999), st.integers(0, 999)).map(
                        lambda t: f"{t[0]}.{t[1]}"),
                    st.sampled_from(["0.5", ".5", "1.5", "0.25", "2.75", "1e3", "1.5e2"]))


@settings(max_examples=300, deadline=None)
@given(number=_number, unit=st.sampled_from(["", "K", "M", "G", "k", "m", "g"]))
def test_size_syntax_is_nccl_tests(nccl_tests, number, unit) -> None:
    text = number + unit
    expected = int(nccl_tests(f"parse {text}"))
    assert parse_size(text) == expected, text


# Rows of nccl-tests outputs published with the issues and pull requests they come from:
# (op, ranks, size column, count column, time us, algbw, busbw).
PUBLISHED = [
    # github.com/ROCm/rccl/issues/1490: all_gather_perf -b 64K -e 4G -f 2 -g 1, 32 ranks
    (Collective.ALL_GATHER, 32, 65536, 512, 107.5, "0.61", "0.59"),
    (Collective.ALL_GATHER, 32, 131072, 1024, 210.0, "0.62", "0.60"),
    (Collective.ALL_GATHER, 32, 262144, 2048, 211.1, "1.24", "1.20"),
    (Collective.ALL_GATHER, 32, 1048576, 8192, 1456.6, "0.72", "0.70"),
    # github.com/NVIDIA/nccl-tests/issues/78: all_reduce_perf, 256 GPUs
    (Collective.ALL_REDUCE, 256, 33554432, 8388608, 1464.2, "22.92", "45.65"),
    (Collective.ALL_REDUCE, 256, 67108864, 16777216, 2659.1, "25.24", "50.28"),
    (Collective.ALL_REDUCE, 256, 134217728, 33554432, 4263.8, "31.48", "62.71"),
    # github.com/NVIDIA/dgx-spark-playbooks/pull/103: all_reduce_perf, 2 ranks
    (Collective.ALL_REDUCE, 2, 8192, 2048, 35.15, "0.23", "0.23"),
    (Collective.ALL_REDUCE, 2, 65536, 16384, 67.93, "0.96", "0.96"),
    # github.com/ROCm/rccl/pull/2075: alltoall_perf, 2 ranks
    (Collective.ALL_TO_ALL, 2, 262144, 32768, 42.91, "6.11", "3.05"),
    (Collective.ALL_TO_ALL, 2, 134217728, 16777216, 10580, "12.69", "6.34"),
]


@pytest.mark.parametrize("op, world, size, count, time_us, algbw, busbw", PUBLISHED)
def test_published_nccl_tests_rows(op, world, size, count, time_us, algbw, busbw) -> None:
    row = CollectiveRow(op, element_count(op, size, world), world, time_us / 1e6, 0)
    assert (row.nbytes, row.table_count) == (size, count)
    # the published time is rounded, so the last printed digit may differ by one
    assert abs(row.algbw_gbs - float(algbw)) <= 0.011
    assert abs(row.busbw_gbs - float(busbw)) <= 0.011
