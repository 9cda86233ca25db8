"""fingerprint: what one rank contributes (torch, one process, no process group)."""

from __future__ import annotations

import random

import pytest
import torch

from ddpcheck.remote.fingerprint import (call_setup, load_setup, model_fingerprint, parameter_table,
                                  relevant_env, rng_hashes, seed_everything)


def test_checksum_changes_with_any_single_element_and_is_stable():
    weight = torch.randn(64, 33)
    first = parameter_table([("w", weight)])
    assert first == parameter_table([("w", weight.clone())])
    nudged = weight.clone()
    nudged[17, 5] = torch.nextafter(nudged[17, 5], torch.tensor(1e9))  # one ulp
    assert parameter_table([("w", nudged)])[0][3] != first[0][3]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64, torch.int8,
                                   torch.bool, torch.complex64])
def test_every_dtype_gets_a_checksum_and_its_name(dtype):
    tensor = torch.ones(5, 3).to(dtype)
    (row,) = parameter_table([("p", tensor)])
    assert row[:3] == ["p", str(dtype).replace("torch.", ""), [5, 3]]
    assert len(row[3]) == 16


def test_non_contiguous_and_empty_tensors():
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    assert parameter_table([("t", base.t())])[0][3] == parameter_table(
        [("t", base.t().contiguous())])[0][3]
    assert parameter_table([("e", torch.empty(0))])[0][3] == "0" * 16


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.int8])
def test_a_view_into_a_flat_buffer_at_any_offset_sums_as_its_copy(dtype):
    """Parameters that are views into one flat buffer (FSDP's flat parameters, a fused
    optimizer's storage) start at any element: the checksum depends on the values only."""
    flat = torch.randn(64).to(dtype)
    for start in range(9):
        view = flat[start:start + 32]
        assert parameter_table([("v", view)]) == parameter_table([("v", view.clone())]), start


def test_model_fingerprint_reads_the_optimizer_step():
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters())
    for _ in range(2):
        model(torch.ones(1, 3)).sum().backward()
        optimizer.step()
    fingerprint = model_fingerprint(model, step=9, optimizer=optimizer)
    assert fingerprint["step"] == 9 and fingerprint["optimizer_step"] == 2
    assert [row[0] for row in fingerprint["params"]] == ["weight", "bias"]


def test_rng_hashes_follow_the_seed():
    seed_everything(5)
    first = rng_hashes()
    random.random()
    assert rng_hashes()["python"] != first["python"]
    seed_everything(5)
    assert rng_hashes() == first
    seed_everything(6)
    assert rng_hashes()["torch"] != first["torch"]


def test_relevant_env_keeps_the_families_that_must_agree():
    env = {"NCCL_IB_DISABLE": "1", "TORCH_NCCL_BLOCKING_WAIT": "1", "GLOO_SOCKET_IFNAME": "e",
           "OMP_NUM_THREADS": "4", "HOME": "/root", "RANK": "3", "TORCHELASTIC_RUN_ID": "x",
           "TORCH_NCCL_DEBUG_INFO_TEMP_FILE": "/tmp/x"}
    assert list(relevant_env(env)) == ["GLOO_SOCKET_IFNAME", "NCCL_IB_DISABLE",
                                       "OMP_NUM_THREADS", "TORCH_NCCL_BLOCKING_WAIT"]


def test_load_setup_from_a_file_and_a_module(tmp_path, monkeypatch):
    (tmp_path / "my_setup.py").write_text(
        "CALLS = []\ndef with_seed(seed):\n    CALLS.append(seed)\n"
        "def without():\n    CALLS.append('none')\n")
    function = load_setup(f"{tmp_path / 'my_setup.py'}:with_seed")
    call_setup(function, 11)
    assert function.__globals__["CALLS"] == [11]
    monkeypatch.syspath_prepend(str(tmp_path))
    without = load_setup("my_setup:without")
    call_setup(without, 11)
    assert without.__globals__["CALLS"] == ["none"]


@pytest.mark.parametrize("target", ["nofunction", ":f", "mod:", "json:nothing_here",
                                    "relative/setup.py:f"])
def test_load_setup_rejects_bad_targets_clearly(target):
    with pytest.raises(ValueError, match="--setup"):
        load_setup(target)
