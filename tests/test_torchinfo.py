"""Stage 0's torch facts without the import (``remote.torchinfo``), against torch itself.

The oracle is the installed torch: its own ``CUDA_VISIBLE_DEVICES`` reading
(``torch.cuda._device_count_nvml``, given the generated GPUs as NVML's answer) for generated
values, and its ``torch.__version__`` / ``torch.version.cuda`` for the version file read as text.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.cuda
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ddpcheck.remote import torchinfo
from plantedtorch import planted_torch

HEX = "0123456789abcdef"


@st.composite
def gpus_and_visible(draw):
    """A host's GPU UUIDs (some sharing long prefixes, so prefixes can be ambiguous) and a
    CUDA_VISIBLE_DEVICES built from the tokens users write: ordinals (some out of range,
    negative, with junk after the digits, padded), UUIDs and their prefixes, MIG names, empty
    entries and repeats."""
    count = draw(st.integers(0, 8))
    stem = "GPU-" + draw(st.text(HEX, min_size=2, max_size=4))
    uuids = [stem + draw(st.text(HEX, min_size=1, max_size=6)) + f"-{i}" for i in range(count)]
    ordinal = st.integers(-2, 10).map(str)
    junk = st.tuples(st.integers(0, 10), st.sampled_from(["gpu", "x", " ", "a1"])).map(
        lambda t: f"{t[0]}{t[1]}")
    padded = st.integers(0, 10).map(lambda n: f" {n} ")
    prefix = (st.sampled_from(uuids).flatmap(
        lambda u: st.integers(4, len(u)).map(lambda k: u[:k])) if uuids else st.just("GPU-"))
    other = st.sampled_from(["GPU-", "GPU-zz", "MIG-ab", "", "+1", "-", "abc"])
    tokens = draw(st.lists(st.one_of(ordinal, junk, padded, prefix, other), max_size=6))
    value = draw(st.one_of(st.none(), st.just(",".join(tokens))))
    return uuids, value


def torch_count(value, uuids, monkeypatch) -> int:
    if value is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", value)
    monkeypatch.setattr(torch.cuda, "_raw_device_count_nvml", lambda: len(uuids))
    monkeypatch.setattr(torch.cuda, "_raw_device_uuid_nvml", lambda: list(uuids))
    return torch.cuda._device_count_nvml()


@settings(max_examples=400, deadline=None)
@given(gpus_and_visible())
@example((["GPU-aa1-0", "GPU-aa2-1"], "GPU-aa"))  # ambiguous prefix: nothing after it
@example((["GPU-aa1-0", "GPU-aa2-1"], "1gpu2,0"))  # strtoul: 1, then 0
@example((["GPU-aa1-0"], "0,0"))  # a repeat empties the set
@example((["GPU-aa1-0", "GPU-aa2-1"], "MIG-x"))
@example(([], None))
def test_visible_gpu_count_matches_torch(case):
    uuids, value = case
    ours = torchinfo.visible_gpu_count(value, uuids)
    with pytest.MonkeyPatch.context() as monkeypatch:
        try:
            expected = torch_count(value, uuids, monkeypatch)
        except ValueError:  # torch's port raises on a lone sign ("-"); ours reads it as the
            return          # end of the list, as strtoul converts nothing there
    if expected < 0:  # torch cannot tell either (MIG): stage 0 falls back to importing it
        assert ours is None, (value, uuids)
    else:
        assert ours == expected, (value, uuids)


def test_version_file_read_as_text_matches_the_imported_torch():
    where = torchinfo.locate()
    assert where == os.path.dirname(torch.__file__)
    version = torchinfo.read_version_file(Path(where, "version.py").read_text())
    assert version["torch"] == torch.__version__
    assert version["cuda"] == torch.version.cuda
    assert version["hip"] == torch.version.hip
    assert version["git"] == torch.version.git_version


def test_inspect_reports_what_the_import_would_without_importing(tmp_path):
    """In a fresh interpreter: the facts match torch's own answers, and torch is not loaded."""
    script = ("import json, os, sys\n"
              "from ddpcheck.remote import torchinfo\n"
              "facts = torchinfo.inspect(os.environ, {'available': False, 'gpus': []})\n"
              "print(json.dumps({'facts': facts, 'loaded': 'torch' in sys.modules}))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=True, cwd=tmp_path)
    answer = json.loads(done.stdout)
    assert answer["loaded"] is False
    facts = answer["facts"]
    assert facts["torch"] == torch.__version__ and facts["cuda"] == torch.version.cuda
    assert facts["gpus"] == torch.cuda.device_count()


def run_inspect(path: Path, nvml: dict, env: dict | None = None) -> dict | None:
    script = ("import json, os\nfrom ddpcheck.remote import torchinfo\n"
              f"print(json.dumps(torchinfo.inspect(os.environ, {nvml!r})))\n")
    environ = {**os.environ, "PYTHONPATH": f"{path}:{Path(__file__).resolve().parents[1]}",
               **(env or {})}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=True, env=environ, cwd="/")
    return json.loads(done.stdout)


CUDA_BUILD = "__version__ = '2.9.1+cu128'\ncuda: Optional[str] = '12.8'\nhip = None\n"
GPUS = {"available": True, "gpus": [{"uuid": f"GPU-{i}aaa"} for i in range(4)]}


def test_a_cuda_build_counts_the_gpus_nvml_lists_that_cuda_visible_devices_leaves(tmp_path):
    site = planted_torch(tmp_path, CUDA_BUILD, "raise ImportError('never imported')\n")
    assert run_inspect(site, GPUS)["gpus"] == 4
    assert run_inspect(site, GPUS, {"CUDA_VISIBLE_DEVICES": "2,0"})["gpus"] == 2
    assert run_inspect(site, GPUS, {"CUDA_VISIBLE_DEVICES": "GPU-3"})["gpus"] == 1
    assert run_inspect(site, GPUS, {"CUDA_VISIBLE_DEVICES": ""})["gpus"] == 0
    facts = run_inspect(site, GPUS)
    assert facts["torch"] == "2.9.1+cu128" and facts["cuda"] == "12.8"
    # no driver and no /dev/nvidiaN: CUDA sees nothing either
    assert run_inspect(site, {"available": False, "gpus": [], "device_nodes": []})["gpus"] == 0


def test_what_only_the_import_can_tell_is_left_to_it(tmp_path):
    """None: stage 0 then imports torch in a child, as before."""
    cuda = planted_torch(tmp_path / "a", CUDA_BUILD, "")
    assert run_inspect(cuda, {"available": False, "gpus": [], "device_nodes": ["nvidia0"]}) \
        is None  # GPU device nodes that NVML cannot list
    assert run_inspect(cuda, GPUS, {"CUDA_VISIBLE_DEVICES": "MIG-abc"}) is None
    rocm = planted_torch(tmp_path / "b", "__version__ = '2.9.1+rocm6.4'\nhip = '6.4'\n", "")
    assert run_inspect(rocm, GPUS) is None
    bare = planted_torch(tmp_path / "c", None, "")  # no version.py
    assert run_inspect(bare, GPUS) is None


def test_no_torch_at_all_is_said_as_the_import_would(tmp_path):
    script = ("import json, os, sys\nsys.path = [p for p in sys.path if 'site-packages' not in p]\n"
              "from ddpcheck.remote import torchinfo\n"
              "print(json.dumps(torchinfo.inspect(os.environ, {})))\n")
    environ = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=True, env=environ, cwd="/")
    assert json.loads(done.stdout) == {"torch_error": "No module named 'torch'"}
