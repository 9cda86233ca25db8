"""Unit and property tests of ddpcheck.config.hostlist (pdsh/SLURM hostlist expressions)."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ddpcheck.config.hostlist import MAX_HOSTS, compress_hostlist, expand_hostlist


@pytest.mark.parametrize("expr, expected", [
    ("node01", ["node01"]),
    ("localhost", ["localhost"]),
    ("10.0.0.5", ["10.0.0.5"]),
    ("node[01-04,07]", ["node01", "node02", "node03", "node04", "node07"]),
    ("node[08-10]", ["node08", "node09", "node10"]),
    ("node[8-10]", ["node8", "node9", "node10"]),
    ("node[098-101]", ["node098", "node099", "node100", "node101"]),
    ("node[1-010]", [f"node{i}" for i in range(1, 11)]),
    ("node[5]", ["node5"]),
    ("node[007]", ["node007"]),
    ("node[3-3]", ["node3"]),
    ("node[1,3,2]", ["node1", "node3", "node2"]),
    ("n[1-2].cluster.local", ["n1.cluster.local", "n2.cluster.local"]),
    ("[1-3]", ["1", "2", "3"]),
    ("a[1-2]-b[3-4]", ["a1-b3", "a1-b4", "a2-b3", "a2-b4"]),
    ("r[1-2]n[01,03]", ["r1n01", "r1n03", "r2n01", "r2n03"]),
    ("n1,n[3-4]", ["n1", "n3", "n4"]),
    ("n[1,2],m[3,4]", ["n1", "n2", "m3", "m4"]),
    ("a,b,c", ["a", "b", "c"]),
    ("  n1 , n2  ", ["n1", "n2"]),
    ("fe80::1%eth0", ["fe80::1%eth0"]),
    ("n_1,n-2", ["n_1", "n-2"]),
    ("n[1-2],n1", ["n1", "n2", "n1"]),  # duplicates are kept; config reports them
])
def test_expand(expr: str, expected: list[str]) -> None:
    assert expand_hostlist(expr) == expected


@pytest.mark.parametrize("expr, words", [
    ("", "empty hostlist"),
    ("   ", "empty hostlist"),
    ("n1,,n2", "empty host name"),
    ("n1,", "empty host name"),
    (",n1", "empty host name"),
    ("node[1-2", "unclosed '['"),
    ("node[", "unclosed '['"),
    ("node1-2]", "unbalanced ']'"),
    ("node]1[", "unbalanced ']'"),
    ("node[[1-2]]", "nested '['"),
    ("node[1-[2]]", "nested '['"),
    ("node[]", "empty range"),
    ("node[1,]", "empty element"),
    ("node[,1]", "empty element"),
    ("node[1,,2]", "empty element"),
    ("node[4-1]", "goes down"),
    ("node[10-9]", "goes down"),
    ("node[a-c]", "is not a number"),
    ("node[1-c]", "is not a number"),
    ("node[x]", "is not a number"),
    ("node[1-2-3]", "is not a number"),
    ("node[ 1-2]", "is not a number"),
    ("node[+1-2]", "is not a number"),
    ("node[\u0661-\u0662]", "is not a number"),  # Arabic-Indic digits are not ASCII digits
    ("node[1-]", "bound is missing"),
    ("node[-2]", "bound is missing"),
    ("node[-]", "bound is missing"),
    ("node[1-1234567890123456789]", "too long"),
    ("node[1-200000]", "more than"),
    ("a[1-1000]b[1-1000]", "more than"),
    ("a b", "invalid character ' '"),
    ("a\tb", "invalid character"),
    ("user@host", "invalid character '@'"),
    ("n;rm", "invalid character ';'"),
    ("-oProxyCommand", "may not start with '-'"),
    ("[1-2]", None),  # valid: sanity check of the table below
])
def test_expand_invalid(expr: str, words: str | None) -> None:
    if words is None:
        assert expand_hostlist(expr) == ["1", "2"]
        return
    with pytest.raises(ValueError) as info:
        expand_hostlist(expr)
    assert words in str(info.value)


def test_expand_size_limit_counts_all_items() -> None:
    half = MAX_HOSTS // 2 + 1
    with pytest.raises(ValueError, match="more than"):
        expand_hostlist(f"a[1-{half}],b[1-{half}]")
    assert len(expand_hostlist(f"a[1-{MAX_HOSTS}]")) == MAX_HOSTS


def test_expand_rejects_non_string() -> None:
    with pytest.raises(ValueError):
        expand_hostlist(None)  # type: ignore[arg-type]


@pytest.mark.parametrize("names, expected", [
    ([], ""),
    (["n1"], "n1"),
    (["node07"], "node07"),
    (["login"], "login"),
    (["n1", "n2", "n3"], "n[1-3]"),
    (["n3", "n1", "n2", "n2"], "n[1-3]"),
    (["n1", "n2", "n3", "n5"], "n[1-3,5]"),
    (["node08", "node09", "node10"], "node[08-10]"),
    (["node8", "node9", "node10"], "node[8-10]"),
    (["n1", "n01"], "n[1,01]"),
    (["n1.a", "n2.a", "n1.b"], "n1.a,n2.a,n1.b"),  # SLURM: no text after a bracket
    (["gpu1-ib", "gpu2-ib"], "gpu1-ib,gpu2-ib"),
    (["x", "n1", "y", "n2"], "x,n[1-2],y"),
    (["a1-b3", "a1-b4", "a2-b3", "a2-b4"], "a1-b[3-4],a2-b[3-4]"),
])
def test_compress(names: list[str], expected: str) -> None:
    assert compress_hostlist(names) == expected


@pytest.mark.parametrize("name", ["", "a b", "n[1]", "a,b", "-x", "a@b"])
def test_compress_rejects_names_without_a_hostlist_form(name: str) -> None:
    with pytest.raises(ValueError):
        compress_hostlist([name])


_literal = st.text(alphabet="abcxyz.-_", min_size=0, max_size=4).filter(
    lambda s: not s.startswith("-"))
_number = st.integers(min_value=0, max_value=200)
_padded = st.tuples(_number, st.integers(min_value=1, max_value=4)).map(
    lambda p: f"{p[0]:0{p[1]}d}")
_name = st.one_of(
    st.text(alphabet="abcxyz", min_size=1, max_size=5),
    st.tuples(st.text(alphabet="abn", min_size=1, max_size=3), _padded, _literal).map("".join),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_name, max_size=30))
def test_compress_expands_back_to_the_same_names(names: list[str]) -> None:
    compressed = compress_hostlist(names)
    if not names:
        assert compressed == ""
        return
    expanded = expand_hostlist(compressed)
    assert sorted(set(expanded)) == sorted(set(names))
    assert len(expanded) == len(set(expanded))


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="ab01-9[],- ", max_size=20))
def test_expand_returns_names_or_raises_value_error(expr: str) -> None:
    try:
        names = expand_hostlist(expr)
    except ValueError:
        return
    assert names and all(name and "[" not in name and "," not in name for name in names)


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 500), st.integers(0, 50), st.integers(1, 4))
def test_range_expansion_matches_the_arithmetic(low: int, span: int, width: int) -> None:
    lo = f"{low:0{width}d}"
    names = expand_hostlist(f"n[{lo}-{low + span}]")
    assert names == [f"n{i:0{width}d}" for i in range(low, low + span + 1)]


SCONTROL = shutil.which("scontrol")


@pytest.fixture(scope="module")
def slurm_conf(tmp_path_factory):
    """A minimal slurm.conf: ``scontrol show hostnames`` needs no controller."""
    if SCONTROL is None:
        if os.environ.get("CI") == "true":
            pytest.fail("scontrol (slurm-client) is missing under CI")
        pytest.skip("scontrol (slurm-client) is not installed")
    path = tmp_path_factory.mktemp("slurm") / "slurm.conf"
    path.write_text("ClusterName=oracle\nSlurmctldHost=localhost\n")
    return str(path)


def slurm_expand(expr: str, conf: str) -> list[str]:
    done = subprocess.run([SCONTROL, "show", "hostnames", expr], capture_output=True,
                          text=True, timeout=30, env={**os.environ, "SLURM_CONF": conf})
    assert done.returncode == 0 and "Invalid" not in done.stderr, (expr, done.stderr)
    return done.stdout.split()


_slurm_name = st.one_of(
    st.text(alphabet="abcxyz", min_size=1, max_size=5),
    st.tuples(st.text(alphabet="abn-", min_size=1, max_size=3).filter(
        lambda s: not s.startswith("-")), _padded, _literal).map("".join),
    st.tuples(st.sampled_from(["gpu", "node-", "rack1-n", "n"]), _padded,
              st.sampled_from(["", "", "-ib", ".ib", "x1"])).map("".join),
)


@settings(max_examples=150, deadline=None)
@given(names=st.lists(_slurm_name, min_size=1, max_size=40))
def test_slurm_expands_every_compressed_list_to_the_same_nodes(names, slurm_conf) -> None:
    """The list handed to ``srun --nodelist`` / ``scontrol``: SLURM accepts it and expands it
    to exactly these nodes."""
    compressed = compress_hostlist(names)
    assert sorted(slurm_expand(compressed, slurm_conf)) == sorted(set(names))
    assert sorted(expand_hostlist(compressed)) == sorted(set(names))
