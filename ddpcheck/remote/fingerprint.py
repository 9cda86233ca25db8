"""Fingerprints: what must agree across ranks, taken on one rank (standard library + torch).

Used by the probe in preflight and by ``ddpcheck.check_consistency`` in the user's job. Each
function returns plain JSON-friendly data; ``drift`` compares them across ranks. Checksums are
bit-exact: a parameter's bits are viewed as integers and summed, so any single changed element
changes the checksum (no float rounding hides a difference; reordered elements are not caught),
computed on the parameter's device with one host transfer for the whole model.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import os
import pickle
import platform
import random
import sys
from typing import Any, Callable, Iterable, Optional

import torch

from .tf32 import matmul_precision, matmul_tf32

# Environment that must agree across ranks; per-rank or per-launch variables are left out.
ENV_PREFIXES = ("NCCL_", "TORCH_", "GLOO_", "CUDA_", "PYTORCH_", "OMP_", "MKL_", "KMP_",
                "CUBLAS_", "CUDNN_", "UCX_", "FI_")
ENV_IGNORED = frozenset({"TORCH_NCCL_DEBUG_INFO_TEMP_FILE", "TORCH_FR_DUMP_TEMP_FILE"})

_INT_VIEW = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def short_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def runtime_versions() -> dict[str, Optional[str]]:
    """Python, torch, CUDA, cuDNN, NCCL and the driver's CUDA version, as strings (None: n/a)."""
    versions: dict[str, Optional[str]] = {
        "python": platform.python_version(), "torch": torch.__version__,
        "cuda": torch.version.cuda, "cudnn": None, "nccl": None, "driver": None}
    try:
        cudnn = torch.backends.cudnn.version()
        versions["cudnn"] = str(cudnn) if cudnn else None
    except Exception:  # noqa: BLE001 - a build without cuDNN
        pass
    if torch.cuda.is_available():
        try:
            versions["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
        except Exception:  # noqa: BLE001 - a build without NCCL
            pass
        versions["driver"] = _driver_version()
    return versions


def _driver_version() -> Optional[str]:
    """The NVIDIA driver version through NVML when nvidia-ml-py is installed, else None."""
    try:
        import pynvml  # nvidia-ml-py; optional on a rank

        pynvml.nvmlInit()
        try:
            value = pynvml.nvmlSystemGetDriverVersion()
            return value.decode() if isinstance(value, bytes) else str(value)
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - no NVML: the driver is simply not reported
        return None


def numeric_settings() -> dict[str, Any]:
    """Settings that change numerics: default dtype, TF32, determinism, matmul precision, bf16."""
    settings: dict[str, Any] = {
        "default_dtype": str(torch.get_default_dtype()).replace("torch.", ""),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "float32_matmul_precision": matmul_precision(),
        "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
    }
    if torch.cuda.is_available():
        settings["tf32_matmul"] = matmul_tf32()
        settings["tf32_cudnn"] = bool(torch.backends.cudnn.allow_tf32)
        settings["bf16_supported"] = bool(torch.cuda.is_bf16_supported())
    return settings


def relevant_env(environ: Optional[dict[str, str]] = None) -> dict[str, str]:
    environ = dict(os.environ if environ is None else environ)
    return {name: value for name, value in sorted(environ.items())
            if name.startswith(ENV_PREFIXES) and name not in ENV_IGNORED}


def rng_hashes(device: Optional[torch.device] = None) -> dict[str, Optional[str]]:
    """Short hashes of the Python, NumPy (when imported), torch CPU and CUDA RNG states."""
    hashes: dict[str, Optional[str]] = {
        "python": short_hash(pickle.dumps(random.getstate())),
        "numpy": None,
        "torch": _state_hash(torch.get_rng_state()),
        "cuda": None,
    }
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        hashes["numpy"] = short_hash(pickle.dumps(numpy.random.get_state()))
    if device is not None and device.type == "cuda":
        hashes["cuda"] = _state_hash(torch.cuda.get_rng_state(device))
    return hashes


def _state_hash(state: torch.Tensor) -> str:
    return short_hash(bytes(state.cpu().tolist()))  # a ByteTensor; no NumPy needed


def seed_everything(seed: int) -> None:
    """What training scripts do: Python, NumPy (when installed) and torch (all devices)."""
    random.seed(seed)
    try:
        import numpy

        numpy.random.seed(seed % (1 << 32))
    except ImportError:
        pass
    torch.manual_seed(seed)


def load_setup(target: str) -> Callable[..., Any]:
    """``MODULE:FUNCTION`` or ``/path/to/file.py:FUNCTION`` -> the function.

    A file is loaded from the absolute path the user named (the launcher makes a relative one
    absolute), never looked for in the current directory; a module is imported from
    ``sys.path``, which ddpcheck starts without the current directory."""
    where, sep, name = target.rpartition(":")
    if not sep or not where or not name:
        raise ValueError(f"--setup wants MODULE:FUNCTION or FILE.py:FUNCTION, got {target!r}")
    if where.endswith(".py") or os.sep in where:
        if not os.path.isabs(where):
            raise ValueError(f"--setup: {where!r} is not an absolute path (ranks run in a "
                             f"private run directory; name the file by its full path)")
        spec = importlib.util.spec_from_file_location("ddpcheck_user_setup", where)
        if spec is None or spec.loader is None:
            raise ValueError(f"--setup: cannot load {where!r}")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(where)
    function = getattr(module, name, None)
    if not callable(function):
        raise ValueError(f"--setup: {where} has no function {name!r}")
    return function


def call_setup(function: Callable[..., Any], seed: Optional[int]) -> None:
    """The user's set-up gets the seed when it takes an argument (``seed_everything(seed)``)."""
    try:
        takes_argument = any(
            p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
            for p in inspect.signature(function).parameters.values())
    except (TypeError, ValueError):
        takes_argument = False
    if takes_argument:
        function(0 if seed is None else seed)
    else:
        function()


def parameter_table(named: Iterable[tuple[str, torch.Tensor]]) -> list[list[Any]]:
    """[[name, dtype, shape, checksum], ...] with bit-exact checksums, one transfer in all."""
    rows: list[list[Any]] = []
    sums: list[torch.Tensor] = []
    for name, tensor in named:
        data = tensor.detach()
        rows.append([name, str(data.dtype).replace("torch.", ""), list(data.shape), None])
        sums.append(_bit_sum(data))
    if sums:
        values = torch.stack([s.to("cpu") for s in sums]).tolist()
        for row, value in zip(rows, values):
            row[3] = f"{value & 0xFFFFFFFFFFFFFFFF:016x}"
    return rows


def _bit_sum(data: torch.Tensor) -> torch.Tensor:
    if data.is_complex():
        data = torch.view_as_real(data)
    if data.dtype == torch.bool:
        data = data.to(torch.int8)
    if data.numel() == 0 or data.element_size() not in _INT_VIEW:
        return torch.zeros((), dtype=torch.int64, device=data.device)
    flat = data.contiguous().reshape(-1)
    if flat.numel() * flat.element_size() % 8 == 0:
        if flat.storage_offset() * flat.element_size() % 8:
            flat = flat.clone()  # a view off a word boundary (into a flat buffer): copied
        flat = flat.view(torch.int64)  # whole words: summed in place, no widened copy
    else:
        flat = flat.view(_INT_VIEW[flat.element_size()])
    return flat.sum(dtype=torch.int64)  # wraps silently on overflow, which a checksum may


def optimizer_step(optimizer: Any) -> Optional[int]:
    """The optimizer's own step count (Adam-style state ``step``), when it keeps one."""
    if optimizer is None:
        return None
    steps = []
    for state in getattr(optimizer, "state", {}).values():
        value = state.get("step") if isinstance(state, dict) else None
        if value is not None:
            steps.append(int(value.item() if isinstance(value, torch.Tensor) else value))
    return max(steps) if steps else None


def model_fingerprint(model: torch.nn.Module, step: Optional[int] = None,
                      optimizer: Any = None) -> dict[str, Any]:
    return {"step": step, "optimizer_step": optimizer_step(optimizer),
            "params": parameter_table(model.named_parameters())}


def gather_json(value: Any, group: Any = None) -> list[Any]:
    """Every rank's ``value`` (JSON-able), on every rank of ``group``: a gather of the sizes,
    then one of the padded payloads. Unlike ``all_gather_object`` it needs no NumPy and no
    pickle (nothing a peer sends is unpickled)."""
    import json

    import torch.distributed as dist

    device = torch.device("cpu")
    if dist.get_backend(group) == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    payload = json.dumps(value, sort_keys=True).encode()
    world = dist.get_world_size(group)
    size = torch.tensor([len(payload)], dtype=torch.int64, device=device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size, group=group)
    lengths = [int(s.item()) for s in sizes]
    buffer = torch.zeros(max(lengths), dtype=torch.uint8, device=device)
    if payload:
        buffer[:len(payload)] = torch.frombuffer(bytearray(payload), dtype=torch.uint8)
    buffers = [torch.zeros_like(buffer) for _ in range(world)]
    dist.all_gather(buffers, buffer, group=group)
    return [json.loads(bytes(b[:n].cpu().tolist())) for b, n in zip(buffers, lengths)]
