"""The numerics check's parts: exact fingerprints, the float64 reference, the exact all_reduce
pattern, the vote (synthetic results: peers, two models in one cluster, one rank of its model),
the findings, and the options that reach the probe."""

from __future__ import annotations

import random

import pytest
import torch

from ddpcheck.analyze.numerics import numerics_findings
from ddpcheck.collect.hostoutput import rank_record
from ddpcheck.model.checks import Check
from ddpcheck.model.records import RankRecord, Severity
from ddpcheck.remote import numerics
from ddpcheck.core.numerics_vote import (DtypeResult, RankNumerics, Why, consensus, mode,
                                           odd_ones, rank_numerics)

CPU = torch.device("cpu")


# -- fingerprints and the reference ---------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_any_one_bit_flip_changes_the_fingerprint(dtype):
    prints = numerics.Fingerprints(CPU)
    tensor = torch.randn(64, 48, generator=torch.Generator().manual_seed(1)).to(dtype)
    base = int(prints.of(tensor))
    assert int(prints.of(tensor.clone())) == base
    rng = random.Random(7)
    for _ in range(200):
        spoiled = tensor.clone()
        halves = spoiled.view(-1).view(torch.int16)
        index = rng.randrange(halves.numel())
        halves[index] ^= 1 << rng.randrange(15)  # any bit of any 16-bit half but the sign's
        assert int(prints.of(spoiled)) != base


def test_a_healthy_chain_is_the_same_every_repetition_and_within_the_reference():
    for name in ("fp32", "bf16"):
        chain = numerics.ProductChain(name, CPU, 64)
        results = {chain.repetition() for _ in range(5)}
        assert len(results) == 1
        _, nonfinite, off = results.pop()
        assert not nonfinite and not off


def test_a_wrong_small_product_is_off_the_reference_and_a_rounding_is_not():
    chain = numerics.ProductChain("bf16", CPU, 64)
    original = torch.matmul

    def product(a, b, scale):
        out = original(a, b)
        if out.shape == (numerics.REFERENCE_M, numerics.REFERENCE_M):
            out = out.clone()
            out.view(-1)[5] = out.view(-1)[5] * scale
        return out

    for scale, expect_off in ((1.0078125, False), (4.0, True)):  # one bf16 ulp; a 4x error
        torch.matmul = lambda a, b, s=scale: product(a, b, s)
        try:
            _, _, off = chain.repetition()
        finally:
            torch.matmul = original
        assert off is expect_off


def test_error_bound_grows_with_the_inner_dimension_and_the_dtype():
    assert numerics.error_bound(2.0 ** -8, 32) < 0.15
    assert numerics.error_bound(2.0 ** -24, 32) < numerics.error_bound(2.0 ** -11, 32)


@pytest.mark.parametrize("world", [1, 2, 3, 5, 7, 64, 100, 300])
def test_all_reduce_pattern_sums_to_the_expected_exact_integers(world):
    for name in ("fp32", "fp16", "bf16"):
        total = sum(numerics.all_reduce_contribution(1000, r, world, name, CPU)
                    for r in range(world))
        assert torch.equal(total, numerics.all_reduce_expected(1000, world, name, CPU))
        assert int(total.max()) < 1 << numerics.EXACT_BITS[name]
        # exact in the dtype: every rank's contribution and every partial sum
        dtype = numerics.DTYPES[name]
        assert torch.equal(total.to(dtype).to(torch.int64), total)
        if world > 1:
            assert len(set(total.tolist())) > 1  # it varies along the tensor


@pytest.mark.parametrize("world,name", [(6, "fp32"), (6, "bf16"), (11, "fp16"), (30, "bf16"),
                                        (300, "fp32")])
def test_a_wrong_element_tells_whose_contribution_it_lost_gained_or_flipped(world, name):
    expected = numerics.all_reduce_expected(200, world, name, CPU)
    for culprit in {0, 1, world // 2, world - 1}:
        share = numerics.all_reduce_contribution(200, culprit, world, name, CPU)
        for position in range(200):
            if not share[position]:
                continue  # this element has no share of the culprit's (a large world)
            right = int(expected[position])
            for got in (right - int(share[position]), right + int(share[position])):
                assert numerics.whose_bit(position, got, right, world, name) == culprit
    # a difference no one rank's share explains is nobody's
    assert numerics.whose_bit(5, int(expected[5]) + 3, int(expected[5]), world, name) is None


def test_all_reduce_check_counts_wrong_elements_and_decodes_whose():
    def corrupt(tensor):
        tensor[3] += 1

    results = numerics.check_all_reduce(CPU, 0, 1, corrupt)
    assert results and all(r["wrong"] == 1 and r["first_wrong"] == 3 for r in results)
    assert all(r["suspects"] == {"0": 1} for r in results)
    assert all(r["wrong"] == 0 for r in numerics.check_all_reduce(CPU, 0, 1, lambda t: None))


# -- the vote ---------------------------------------------------------------------------------

GOOD = "g00d"


def result(reps: int = 10, wrong: int = 0, digest: str = GOOD, other: str = "bad1",
           nonfinite: int = 0, reference_bad: int = 0) -> DtypeResult:
    digests = {digest: reps - wrong}
    if wrong:
        digests[other] = wrong
    return DtypeResult(reps, {k: v for k, v in digests.items() if v}, nonfinite, reference_bad)


def ranks_of(results: list[DtypeResult], group: str = "cpu A", host_of=lambda r: f"h{r // 2}",
             start: int = 0) -> list[RankNumerics]:
    return [RankNumerics(start + i, host_of(start + i), f"rank {start + i}", group,
                         {"fp32": res}) for i, res in enumerate(results)]


def test_healthy_ranks_give_nothing():
    assert odd_ones(ranks_of([result() for _ in range(6)])) == []


def test_a_rank_always_wrong_is_outvoted_by_its_peers():
    ranks = ranks_of([result(), result(), result(), result(wrong=10), result()])
    [wrong] = odd_ones(ranks)
    assert (wrong.rank, wrong.wrong, wrong.reps, wrong.why, wrong.peers) == (3, 10, 10,
                                                                               (Why.PEERS,), 4)


def test_an_intermittent_rank_counts_its_wrong_repetitions():
    [wrong] = odd_ones(ranks_of([result(), result(reps=40, wrong=3), result()]))
    assert (wrong.rank, wrong.wrong, wrong.reps) == (1, 3, 40)


def test_nan_is_wrong_on_its_own_even_when_the_bits_agree():
    [wrong] = odd_ones(ranks_of([result(), result(nonfinite=1), result()]))
    assert wrong.rank == 1 and wrong.why == (Why.NONFINITE,) and wrong.wrong == 1


def test_two_models_in_one_cluster_vote_apart():
    # model A's answer differs from model B's: neither is wrong, each group agrees in itself
    a = ranks_of([result(digest="aaaa") for _ in range(3)], group="A")
    b = ranks_of([result(digest="bbbb") for _ in range(3)], group="B", start=3)
    assert odd_ones(a + b) == []
    b_bad = ranks_of([result(digest="bbbb"), result(digest="bbbb"),
                      result(digest="bbbb", wrong=2)], group="B", start=3)
    [wrong] = odd_ones(a + b_bad)
    assert wrong.rank == 5 and wrong.peers == 2


def test_one_rank_of_its_model_is_judged_by_itself_and_the_reference():
    many = ranks_of([result() for _ in range(4)], group="A")
    alone_ok = ranks_of([result(digest="cccc")], group="C", start=4)
    assert odd_ones(many + alone_ok) == []
    alone_flaky = ranks_of([result(digest="cccc", wrong=2)], group="C", start=4)
    [wrong] = odd_ones(many + alone_flaky)
    assert wrong.rank == 4 and wrong.why == (Why.ITSELF,) and wrong.wrong == 2
    alone_off = ranks_of([result(digest="cccc", reference_bad=10)], group="C", start=4)
    [wrong] = odd_ones(many + alone_off)
    assert wrong.why == (Why.REFERENCE,) and wrong.wrong == 10 and wrong.decisive


def test_two_ranks_that_disagree_are_decided_by_the_reference_or_reported_undecided():
    pair = ranks_of([result(digest="dddd"), result(digest="eeee", reference_bad=4)], group="D")
    [wrong] = odd_ones(pair)
    assert wrong.rank == 1 and wrong.why == (Why.REFERENCE,)
    undecided = odd_ones(ranks_of([result(digest="dddd"), result(digest="eeee")], group="D"))
    assert [(w.rank, w.decisive) for w in undecided] == [(0, False), (1, False)]


def test_no_majority_in_a_group_falls_back_to_each_rank_itself():
    three = ranks_of([result(digest="x"), result(digest="y"), result(digest="z")])
    assert consensus([r.dtypes["fp32"] for r in three]) is None
    assert odd_ones(three) == []  # consistent each, and nothing off the reference


def test_mode_needs_a_strict_majority():
    assert mode(DtypeResult(4, {"a": 2, "b": 2})) is None
    assert mode(DtypeResult(4, {"a": 3, "b": 1})) == "a"


def test_garbled_records_are_no_results():
    parsed = rank_numerics(1, "h1", {"products": {"fp32": {"reps": "x"}, "bf16": 3,
                                                  "fp16": {"reps": 2, "digests": {"a": 2}}}})
    assert list(parsed.dtypes) == ["fp16"]
    assert rank_numerics(0, "h0", {}).dtypes == {}


# -- findings ----------------------------------------------------------------------------------

def rank_with(rank: int, host: str, products: dict, all_reduce=(), device="cpu") -> RankRecord:
    return RankRecord(rank=rank, host=host, device=device, numerics={
        "where": f"rank {rank} on {host} ({device})", "group": "cpu A | AVX2 | torch 2",
        "products": products, "all_reduce": list(all_reduce)})


def healthy(reps=20):
    return {"fp32": {"reps": reps, "digests": {GOOD: reps}},
            "bf16": {"reps": reps, "digests": {"b0": reps}}}


def test_findings_name_the_rank_dtypes_counts_and_what_to_do():
    ranks = [rank_with(r, f"h{r}", healthy()) for r in range(4)]
    ranks[2] = rank_with(2, "h2", {"fp32": {"reps": 20, "digests": {GOOD: 17, "x": 3}},
                                   "bf16": {"reps": 20, "digests": {"b0": 19, "y": 1},
                                            "nonfinite": 1}})
    [finding] = numerics_findings(ranks)
    assert (finding.check, finding.severity, finding.host, finding.rank) == (
        Check.NUMERICS, Severity.ERROR, "h2", 2)
    assert finding.message == (
        "rank 2 on h2 (cpu) computes wrong: bf16 products wrong in 1 of 20 repetitions "
        "(differs from its 3 peers bit for bit, NaN or Inf in the result); fp32 products wrong "
        "in 3 of 20 repetitions (differs from its 3 peers bit for bit); drain the node; run the "
        "vendor's CPU and memory field diagnostics; RMA if it repeats")


def test_a_gpu_finding_points_at_dcgm():
    ranks = [rank_with(r, "h0", healthy(), device=f"cuda:{r}") for r in range(3)]
    ranks[1] = rank_with(1, "h0", {"fp32": {"reps": 20, "digests": {"z": 20}}},
                         device="cuda:1")
    [finding] = numerics_findings(ranks)
    assert "dcgmi diag -r 3" in finding.message


def test_all_reduce_findings_name_the_link_in_ring_order():
    good = [{"dtype": "bf16", "bytes": 4096, "wrong": 0}]
    bad = [{"dtype": "bf16", "bytes": 4096, "wrong": 7, "first_wrong": 12,
            "suspects": {"0": 7}}]
    hosts = ["h0", "h0", "h1", "h1", "h2", "h2"]
    ranks = [rank_with(r, hosts[r], healthy(), bad if r == 3 else good) for r in range(6)]
    [finding] = numerics_findings(ranks)
    assert (finding.rank, finding.host) == (3, "h1")
    assert "7 wrong element(s) in bf16 at 4096 bytes" in finding.message
    assert "5 other rank(s) received the right result" in finding.message
    assert "between rank 2 on h1 and rank 3 on h1" in finding.message
    # a run of ranks downstream of the link: the pair at its start; around the ring too
    ranks = [rank_with(r, hosts[r], healthy(), bad if r in (4, 5, 0) else good)
             for r in range(6)]
    [finding] = numerics_findings(ranks)
    assert (finding.rank, finding.host) == (4, "h2")
    assert "between rank 3 on h1 and rank 4 on h2" in finding.message
    assert "rank(s) 5, 0, downstream" in finding.message


def test_all_reduce_findings_name_whose_data_went_wrong_when_every_rank_got_it():
    hosts = ["h0", "h0", "h1", "h1", "h2", "h2"]
    bad = [{"dtype": "fp32", "bytes": 4096, "wrong": 4, "first_wrong": 0,
            "suspects": {"3": 3, "?": 1}}]
    [finding] = numerics_findings([rank_with(r, hosts[r], healthy(), bad) for r in range(6)])
    assert (finding.rank, finding.host) == (3, "h1")
    assert "every rank received a wrong sum" in finding.message
    assert "18 of the 24 wrong element(s) examined are off by exactly rank 3's share" in (
        finding.message)
    assert "RMA if it repeats" in finding.message
    # no one rank explains them: every rank is named, as received
    bad = [{"dtype": "fp32", "bytes": 4096, "wrong": 4, "first_wrong": 0, "suspects": {"?": 4}}]
    everyone = numerics_findings([rank_with(r, f"h{r}", healthy(), bad) for r in range(3)])
    assert len(everyone) == 3 and "every rank received them" in everyone[0].message


def test_the_record_survives_collect():
    raw = {"rank": 3, "host": "h2", "status": "ok",
           "numerics": {"where": "w", "group": "g", "products": healthy()}}
    assert rank_record(raw, "h2").numerics["products"]["fp32"]["reps"] == 20
    assert rank_record({**raw, "numerics": "garbage"}, "h2").numerics == {}


# -- options -----------------------------------------------------------------------------------

def test_skip_and_seconds_reach_the_probe_command():
    from ddpcheck.cli import build_parser
    from ddpcheck.commands.preflight import preflight_options
    from ddpcheck.model.spec import Backend
    from ddpcheck.plan.cmdlines import probe_program

    parser = build_parser()

    def argv(*extra):
        options = preflight_options(parser.parse_args(["preflight", *extra]))
        return probe_program("h1", 2, Backend.GLOO, options.launch)

    assert "--numerics-seconds" not in argv()  # the probe's default, 1 s
    skipped = argv("--skip", "numerics")
    assert skipped[skipped.index("--numerics-seconds") + 1] == "0"
    longer = argv("--numerics-seconds", "2.5")
    assert longer[longer.index("--numerics-seconds") + 1] == "2.5"
    from ddpcheck.remote.probe import parse_args
    assert parse_args(["--backend", "gloo"]).numerics_seconds == 1.0
    assert parse_args(["--backend", "gloo", "--numerics-seconds", "0"]).numerics_seconds == 0.0
    with pytest.raises(SystemExit):
        parser.parse_args(["preflight", "--skip", "numerix"])
