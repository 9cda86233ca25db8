"""drift: per-rank fingerprints -> differences, findings and the host-by-value rows (pure)."""

from __future__ import annotations

from ddpcheck.core.drift import (RankPrint, all_differences, ddp_differences, env_differences,
                                 finding, group_ranks, model_differences, rng_differences,
                                 value_rows, version_differences, where)
from ddpcheck.model.records import Severity

HOSTS = {0: "h1", 1: "h1", 2: "h2", 3: "h2", 4: "h3", 5: "h3"}


def prints(values_by_rank, section, key):
    return [RankPrint(rank, HOSTS[rank], {section: {key: value}})
            for rank, value in values_by_rank.items()]


def params(*rows):
    return {"step": None, "optimizer_step": None, "params": [list(r) for r in rows]}


W = ["w", "float32", [2, 2], "aaaa"]
B = ["b", "float32", [2], "bbbb"]


def test_group_ranks_puts_the_largest_group_first_and_ties_to_rank_zero():
    assert group_ranks({0: "a", 1: "b", 2: "b"}) == (("b", (1, 2)), ("a", (0,)))
    assert group_ranks({0: "a", 1: "b"}) == (("a", (0,)), ("b", (1,)))
    assert group_ranks({0: None, 1: "x", 2: None}) == (("(unset)", (0, 2)), ("x", (1,)))


def test_where_names_hosts_then_ranks():
    assert where([2, 3], HOSTS) == "h2 (ranks 2, 3)"
    assert where([1, 4], HOSTS) == "h1 (rank 1), h3 (rank 4)"


def test_extra_nccl_variable_on_one_host_names_that_host():
    env = {r: {"GLOO_SOCKET_IFNAME": "eth0"} for r in HOSTS}
    env[2]["NCCL_IB_DISABLE"] = "1"
    env[3]["NCCL_IB_DISABLE"] = "1"
    given = [RankPrint(r, HOSTS[r], {"env": e}) for r, e in env.items()]
    diffs = env_differences(given)
    assert [(d.check, d.key) for d in diffs] == [("env_drift", "NCCL_IB_DISABLE")]
    found = finding(diffs[0], HOSTS)
    assert found.severity is Severity.ERROR and found.host == "h2" and found.rank is None
    assert found.message.startswith("NCCL_IB_DISABLE differs: 1 on h2 (ranks 2, 3); (unset) on")


def test_thread_count_drift_is_only_a_warning():
    given = prints({0: "1", 1: "1", 2: "8", 3: "1"}, "env", "OMP_NUM_THREADS")
    (diff,) = env_differences(given)
    assert diff.severity is Severity.WARNING


def test_version_differences_name_the_odd_host():
    given = prints({0: "2.13.0", 1: "2.13.0", 2: "2.12.1", 3: "2.12.1", 4: "2.13.0",
                    5: "2.13.0"}, "versions", "torch")
    (diff,) = version_differences(given)
    found = finding(diff, HOSTS)
    assert (found.check, found.host) == ("versions", "h2")
    assert "torch version differs: 2.12.1 on h2 (ranks 2, 3); 2.13.0 on h1" in found.message


def test_rng_seeded_with_rank_differs_on_every_rank():
    given = prints({r: f"state{r}" for r in range(4)}, "rng", "torch")
    (diff,) = rng_differences(given)
    found = finding(diff, {r: HOSTS[r] for r in range(4)})
    assert found.check == "seed" and found.severity is Severity.ERROR
    assert "differs on every rank (4 distinct values)" in found.message


def test_soft_generators_are_warnings():
    given = prints({0: "a", 1: "b"}, "rng", "python")
    (diff,) = rng_differences(given, soft=frozenset({"python"}))
    assert diff.severity is Severity.WARNING


def test_model_dtype_difference_names_rank_and_first_parameter_not_the_checksum():
    odd = ["w", "float64", [2, 2], "cccc"]
    given = [RankPrint(0, "h1", {"model": params(W, B)}),
             RankPrint(1, "h1", {"model": params(W, B)}),
             RankPrint(2, "h2", {"model": params(odd, B)})]
    diffs = model_differences(given)
    assert [(d.check, d.key) for d in diffs] == [("dtype", "w")]
    found = finding(diffs[0], HOSTS)
    assert found.rank == 2 and found.host == "h2"
    assert "dtype of parameter 'w' differs: float64 on h2 (rank 2); float32 on h1" in found.message


def test_model_checksum_names_the_first_differing_parameter():
    b2 = ["b", "float32", [2], "zzzz"]
    w2 = ["w", "float32", [2, 2], "yyyy"]
    given = [RankPrint(0, "h1", {"model": params(W, B)}),
             RankPrint(1, "h1", {"model": params(W, b2)}),
             RankPrint(2, "h2", {"model": params(w2, b2)})]
    (diff,) = model_differences(given)
    assert (diff.check, diff.key) == ("params", "w")
    assert diff.groups == (("aaaa", (0, 1)), ("yyyy", (2,)))


def test_step_off_by_one_names_that_rank():
    given = [RankPrint(r, HOSTS[r], {"model": {**params(W), "step": 7 + (r == 3)}})
             for r in range(4)]
    (diff,) = model_differences(given)
    found = finding(diff, HOSTS)
    assert (found.check, found.rank, found.host) == ("step", 3, "h2")


def test_layout_difference_is_reported_alone():
    given = [RankPrint(0, "h1", {"model": params(W, B)}), RankPrint(1, "h1", {"model": params(W)})]
    assert [d.check for d in model_differences(given)] == ["params"]


def ddp(start, *after):
    return {"ddp": {"start": start, "after": list(after)}}


def test_ddp_start_difference_is_a_warning_and_later_divergence_an_error():
    w_other = ["w", "float32", [2, 2], "other"]
    healthy_after = params(["w", "float32", [2, 2], "s1"])
    given = [RankPrint(0, "h1", ddp(params(W), healthy_after)),
             RankPrint(1, "h2", ddp(params(w_other), healthy_after))]
    diffs = ddp_differences(given)
    assert [(d.check, d.severity) for d in diffs] == [("params", Severity.WARNING)]
    diverged = [RankPrint(0, "h1", ddp(params(W), healthy_after)),
                RankPrint(1, "h2", ddp(params(W), params(w_other)))]
    (diff,) = ddp_differences(diverged)
    assert diff.severity is Severity.ERROR and "after DDP step 1" in diff.detail


def test_all_differences_ignores_rng_unless_seeded_and_rows_mark_the_reference():
    given = [RankPrint(0, "h1", {"rng": {"torch": "a"}, "env": {"NCCL_DEBUG": "INFO"}}),
             RankPrint(1, "h2", {"rng": {"torch": "b"}, "env": {}})]
    assert [d.check for d in all_differences(given, seeded=False)] == ["env_drift"]
    diffs = all_differences(given, seeded=True)
    assert [d.check for d in diffs] == ["env_drift", "seed"]
    rows = value_rows(diffs[:1], {0: "h1", 1: "h2"})
    assert rows == [  # a tie: rank 0's value is the reference
        {"check": "env_drift", "key": "NCCL_DEBUG", "value": "INFO", "hosts": ["h1"],
         "ranks": [0], "reference": True},
        {"check": "env_drift", "key": "NCCL_DEBUG", "value": "(unset)", "hosts": ["h2"],
         "ranks": [1], "reference": False}]


def test_missing_sections_and_garbage_never_raise():
    given = [RankPrint(0, "h1", {"model": {"params": "garbage"}, "ddp": []}),
             RankPrint(1, "h1", {"model": {"params": [[1, 2]]}, "env": None})]
    assert all_differences(given, seeded=True) == []
    assert model_differences(given) == []
