"""What stage 0 learns of torch without importing it: runs on every host (standard library only).

Importing torch costs seconds of CPU per host, and every rank pays it again a moment later, so
stage 0 reads instead: where ``import torch`` would find the package (``importlib``'s own path
search, nothing executed), its ``version.py`` as text (``__version__``, the CUDA and HIP it was
built for), and the GPUs the ranks will see, from NVML and ``CUDA_VISIBLE_DEVICES`` read the way
torch reads them (``torch.cuda._parse_visible_devices``, ``_transform_uuid_to_ordinals`` and
``_device_count_nvml``, ported). When that cannot answer (a ROCm build, MIG UUIDs, GPU device
nodes NVML cannot list, no readable ``version.py``) ``inspect`` returns None and stage 0 imports
torch as before. Whether torch actually imports is then seen where it costs nothing extra:
torchrun's own import (``remote.torchrun``). ``version.py`` is parsed, never executed.
"""

from __future__ import annotations

import ast
import importlib.util
import os
from typing import Any, Mapping, Optional, Union

VERSION_NAMES = {"__version__": "torch", "cuda": "cuda", "hip": "hip", "git_version": "git"}


def locate() -> Optional[str]:
    """The directory ``import torch`` would load (None: not installed). A namespace package (a
    bare ``torch`` directory on the path) has no origin and counts as not found here."""
    try:
        spec = importlib.util.find_spec("torch")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not os.path.isfile(spec.origin):
        return None
    return os.path.dirname(spec.origin)


def read_version_file(text: str) -> dict[str, Optional[str]]:
    """``torch/version.py``'s constants by name ({"torch", "cuda", "hip", "git"}), read as
    text: only plain string (or None) assignments count."""
    found: dict[str, Optional[str]] = {}
    for node in ast.parse(text).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
        else:
            continue
        name = getattr(target, "id", None)
        if name in VERSION_NAMES and isinstance(value, ast.Constant) and (
                value.value is None or isinstance(value.value, str)):
            found[VERSION_NAMES[name]] = value.value
    return found


def _strtoul(text: str) -> int:
    """The leading integer of ``text`` as strtoul reads it (``1gpu`` -> 1), -1 for none."""
    end = 0
    for index, char in enumerate(text):
        if not (char.isdigit() or (index == 0 and char in "+-")):
            break
        end = index + 1
    try:
        return int(text[:end]) if end > 0 else -1
    except ValueError:  # a lone sign
        return -1


def parse_visible_devices(value: Optional[str]) -> Union[list[int], list[str]]:
    """CUDA_VISIBLE_DEVICES as the CUDA runtime (and torch) reads it: ordinals up to the first
    invalid or negative entry, or ``GPU-``/``MIG-`` UUID prefixes up to the first entry without
    the prefix; a repeated entry makes the set empty; unset means every device."""
    if value is None:
        return list(range(64))
    for prefix in ("GPU-", "MIG-"):
        if value.startswith(prefix):
            names: list[str] = []
            for entry in value.split(","):
                if entry in names:
                    return []
                if not entry.startswith(prefix):
                    break
                names.append(entry)
            return names
    ordinals: list[int] = []
    for entry in value.split(","):
        ordinal = _strtoul(entry.strip())
        if ordinal in ordinals:
            return []
        if ordinal < 0:
            break
        ordinals.append(ordinal)
    return ordinals


def uuids_to_ordinals(candidates: list[str], uuids: list[str]) -> list[int]:
    """UUID prefixes -> device ordinals: an unknown or ambiguous prefix ends the list, a
    repeated device empties it."""
    ordinals: list[int] = []
    for candidate in candidates:
        matches = [index for index, uuid in enumerate(uuids) if uuid.startswith(candidate)]
        if len(matches) != 1:
            break
        if matches[0] in ordinals:
            return []
        ordinals.append(matches[0])
    return ordinals


def visible_gpu_count(value: Optional[str], uuids: list[str]) -> Optional[int]:
    """How many of the host's GPUs (NVML's, in order, by UUID) a CUDA process started with
    ``CUDA_VISIBLE_DEVICES=value`` sees; None for MIG UUIDs, which NVML's device list does not
    name."""
    visible = parse_visible_devices(value)
    if not visible:
        return 0
    if isinstance(visible[0], str):
        if visible[0].startswith("MIG-"):
            return None
        return len(uuids_to_ordinals([str(v) for v in visible], uuids))
    for index, ordinal in enumerate(visible):
        if int(ordinal) >= len(uuids):
            return index
    return len(visible)


def inspect(environ: Mapping[str, str], nvml: Mapping[str, Any]) -> Optional[dict[str, Any]]:
    """Stage 0's torch facts without the import ({"torch", "cuda", "gpus", "torch_path",
    "import_s": None}), ``{"torch_error": ...}`` when torch is not installed, or None when only
    importing it can tell (then the caller imports it)."""
    where = locate()
    if where is None:
        return {"torch_error": "No module named 'torch'"}
    try:
        with open(os.path.join(where, "version.py"), encoding="utf-8") as handle:
            version = read_version_file(handle.read())
    except (OSError, SyntaxError, ValueError):
        return None
    if not version.get("torch") or version.get("hip"):
        return None  # no version to report, or a ROCm build (its GPUs are not NVML's)
    facts: dict[str, Any] = {"torch": version["torch"], "cuda": version.get("cuda"),
                             "torch_path": where, "import_s": None, "gpus": 0}
    if version.get("cuda") and not nvml.get("available"):
        if nvml.get("device_nodes") or nvml.get("error"):
            return None  # GPU device nodes that NVML cannot list: only CUDA itself can tell
        return facts  # no driver, no /dev/nvidiaN: the CUDA runtime sees no GPU either
    if version.get("cuda"):
        uuids = [str(g.get("uuid") or "") for g in nvml.get("gpus") or []]
        count = visible_gpu_count(environ.get("CUDA_VISIBLE_DEVICES"), uuids)
        if count is None:
            return None
        facts["gpus"] = count
    return facts
