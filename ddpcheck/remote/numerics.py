"""The preflight numerics check, run by every rank of the probe (stdlib + torch only).

Does the device compute *right*? Every rank runs the same chain of matrix products from one
seed, in every dtype the device trains in (GPU: bf16, fp16, fp32 with and without TF32; CPU: fp32
and bf16), with deterministic algorithms, repeated for its share of ``--numerics-seconds`` so
that an intermittent fault shows. Each repetition's results are fingerprinted by their bit
patterns (exactly: a weighted sum of every 16-bit half of every element, in int64, on the
device) and hashed; a small product in each repetition is also checked against a float64
reference computed without matmul, within a bound set by the dtype; NaN and Inf are counted.
``analyze`` (``core.numerics_vote``) compares the digests of ranks whose device model, driver
and library versions agree: they must agree bit for bit.

Before the products, an all_reduce whose exact result is known, in each training dtype, at sizes
on either side of NCCL's protocol changes (LL, LL128, Simple). Each rank contributes a power of
two of its own to each element (``all_reduce_contribution``), so a wrong element tells whose
contribution it lost or gained; which ranks received wrong elements tells, in ring order, which
link the data went wrong on (``analyze.numerics``). The products get what it leaves of the
budget.

On CPU the products run on one thread, so the bits depend on the CPU's code path (its model and
ISA level, which are part of the group) and not on how many threads a rank was given.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from typing import Any, Callable, Optional

import torch

from .computecheck import cpu_model
from .tf32 import MatmulTF32

SEED = 20240915  # every rank's inputs: the same everywhere
CHAIN_LENGTH = 5  # products per repetition, each fed the last one's result
CPU_N = 128
GPU_N = 2048
REFERENCE_M = 32  # the small product checked against float64
REFERENCE_K = 32  # its inner dimension: small enough that bf16's error bound stays < 1
MIN_REPS = 4  # a floor, so an every-3rd fault shows however loaded the host: 28 products a dtype
MAX_REPS = 256
MIN_PRODUCTS_SHARE = 0.25  # of the budget, when the all_reduce check took the rest
DIGEST_CHARS = 16
WORKSPACE_VARIABLE = "CUBLAS_WORKSPACE_CONFIG"
WORKSPACE_DETERMINISTIC = ":4096:8"  # what torch's reproducibility notes ask for

# Unit roundoff of each dtype's products (TF32 rounds fp32 inputs to a 10-bit mantissa).
UNIT_ROUNDOFF = {"fp32": 2.0 ** -24, "tf32": 2.0 ** -11, "fp16": 2.0 ** -11, "bf16": 2.0 ** -8}
DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "fp16": torch.float16,
          "bf16": torch.bfloat16}
# Each dtype holds every integer below 2^bits exactly: an all_reduce of sums below it is exact.
EXACT_BITS = {"fp32": 24, "fp16": 11, "bf16": 8}
# ...of which these stay for a value that varies along the tensor, whatever the world size
VARYING_BITS = {"fp32": 8, "fp16": 3, "bf16": 2}
MAX_DECODED = 256  # wrong elements of one all_reduce whose culprit is worked out
CPU_ALL_REDUCE_BYTES = (4 << 10, 1 << 20)
# Under NCCL's LL threshold, in LL128's range, and well into Simple's.
GPU_ALL_REDUCE_BYTES = (4 << 10, 1 << 20, 64 << 20)


def prepare_environment() -> None:
    """cuBLAS reads its workspace setting when it starts: set it before the first product."""
    os.environ.setdefault(WORKSPACE_VARIABLE, WORKSPACE_DETERMINISTIC)


def device_dtypes(device: torch.device) -> list[str]:
    """The dtypes this device trains in."""
    if device.type != "cuda":
        return ["fp32", "bf16"]
    major, _ = torch.cuda.get_device_capability(device)
    names = []
    if major >= 8 and torch.cuda.is_bf16_supported():
        names.append("bf16")
    if major >= 6:
        names.append("fp16")
    names.append("fp32")
    if major >= 8:
        names.append("tf32")
    return names


def driver_version() -> str:
    """The NVIDIA kernel driver's version (/proc/driver/nvidia/version), or "?"."""
    try:
        with open("/proc/driver/nvidia/version", encoding="utf-8", errors="replace") as handle:
            words = handle.readline().split()
    except OSError:
        return "?"
    numbers = [w for w in words if w[:1].isdigit() and "." in w]
    return numbers[0] if numbers else "?"


def device_identity(device: torch.device, host: str, rank: Optional[int]) -> dict[str, Any]:
    """Where the device is (for messages) and its group: the ranks that must agree bit for bit
    (device model, driver and library versions)."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        bus = "%04x:%02x:%02x.0" % (getattr(props, "pci_domain_id", 0),
                                    getattr(props, "pci_bus_id", 0),
                                    getattr(props, "pci_device_id", 0))
        uuid = str(getattr(props, "uuid", "")) or "?"
        # the SM count too: a MIG slice or a cut-down part picks other cuBLAS kernels
        group = (f"{props.name} sm{props.major}{props.minor} x{props.multi_processor_count} | "
                 f"driver {driver_version()} | "
                 f"torch {torch.__version__} | cuda {torch.version.cuda} | "
                 f"cudnn {torch.backends.cudnn.version()}")
        return {"where": f"GPU {device.index} on {host} (uuid {uuid}, bus {bus}, rank {rank})",
                "group": group, "uuid": uuid, "bus_id": bus, "device_model": props.name}
    capability = getattr(torch.backends.cpu, "get_cpu_capability", lambda: "?")()
    model = cpu_model()
    return {"where": f"rank {rank} on {host} (cpu)", "device_model": model,
            "group": f"{model} | {capability} | torch {torch.__version__}"}


# -- fingerprints: exact, on the device ---------------------------------------------------------

class Fingerprints:
    """Exact fingerprints of tensors' bit patterns, computed where the tensors are.

    Every element is viewed as 16-bit halves; the fingerprint is the sum of each half (0..65535)
    times an odd weight below 2^23 for its position, in int64. With fewer than 2^24 halves the
    sum cannot overflow, so it is exact, and changing any one half changes it (an odd weight
    times a non-zero difference below 2^16 is never zero)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.weights: dict[int, torch.Tensor] = {}

    def of(self, tensor: torch.Tensor) -> torch.Tensor:
        halves = tensor.contiguous().view(-1).view(torch.int16)
        count = halves.numel()
        weights = self.weights.get(count)
        if weights is None:
            position = torch.arange(count, dtype=torch.int64, device=self.device)
            weights = (position * 2654435761 % (1 << 22)) * 2 + 1
            self.weights[count] = weights
        return (halves.to(torch.int64) & 0xFFFF).mul(weights).sum()


def digest(values: list[int]) -> str:
    return hashlib.sha256(",".join(map(str, values)).encode()).hexdigest()[:DIGEST_CHARS]


def error_bound(unit: float, inner: int) -> float:
    """gamma_{k+1} = (k+1)u / (1 - (k+1)u): the worst relative error of a dot product of length
    k rounded to the dtype, whatever the summation order (the +1: the result's own rounding)."""
    grown = (inner + 1) * unit
    return grown / (1.0 - grown)


class ProductChain:
    """One dtype's products: a chain of ``CHAIN_LENGTH`` products (each fed the last result),
    a batched product, and a small product checked against float64."""

    def __init__(self, name: str, device: torch.device, size: int) -> None:
        dtype = DTYPES[name]
        generator = torch.Generator().manual_seed(SEED)
        scale = 1.0 / math.sqrt(size)  # keeps the chain's values near 1: no overflow in fp16

        def inputs(*shape: int, scaled: float = 1.0) -> torch.Tensor:
            return (torch.randn(*shape, generator=generator) * scaled).to(dtype).to(device)

        self.name = name
        self.device = device
        self.start = inputs(size, size)
        self.factors = [inputs(size, size, scaled=scale) for _ in range(CHAIN_LENGTH)]
        batch = 4
        self.batched = (inputs(batch, size // batch, size // batch),
                        inputs(batch, size // batch, size // batch, scaled=scale * 2))
        self.small = (inputs(REFERENCE_M, REFERENCE_K), inputs(REFERENCE_K, REFERENCE_M))
        a64, b64 = (t.cpu().double() for t in self.small)
        # the reference and its bound by elementwise products and sums, never a matmul: the
        # code under test is not its own judge
        self.reference = (a64[:, :, None] * b64[None, :, :]).sum(dim=1)
        magnitude = (a64.abs()[:, :, None] * b64.abs()[None, :, :]).sum(dim=1)
        bound = error_bound(UNIT_ROUNDOFF[name], REFERENCE_K)
        self.tolerance = magnitude * bound + 1e-30
        self.fingerprints = Fingerprints(device)

    def repetition(self) -> tuple[str, bool, bool]:
        """One repetition: (digest of every result's bits, any NaN/Inf, small product off the
        float64 reference)."""
        prints = []
        nonfinite = torch.zeros((), dtype=torch.int64, device=self.device)
        x = self.start
        for factor in self.factors:
            x = torch.matmul(x, factor)
            prints.append(self.fingerprints.of(x))
            nonfinite += (~torch.isfinite(x)).sum()
        batched = torch.bmm(*self.batched)
        prints.append(self.fingerprints.of(batched))
        nonfinite += (~torch.isfinite(batched)).sum()
        small = torch.matmul(*self.small)
        prints.append(self.fingerprints.of(small))
        values = torch.stack([*prints, nonfinite]).tolist()  # the one sync of the repetition
        got = small.double().cpu()
        finite = bool(torch.isfinite(got).all())
        off = finite and bool(((got - self.reference).abs() > self.tolerance).any())
        return digest(values[:-1]), bool(values[-1]) or not finite, off


def run_products(name: str, device: torch.device, deadline: float) -> dict[str, Any]:
    """Repetitions of one dtype's products until ``deadline`` (a ``time.perf_counter()``),
    ``MIN_REPS``..``MAX_REPS`` of them; building the inputs counts against it, and a repetition
    that would end past the deadline (as long as the slowest one so far) is not started."""
    chain = ProductChain(name, device, GPU_N if device.type == "cuda" else CPU_N)
    digests: dict[str, int] = {}
    nonfinite = reference_bad = reps = 0
    longest = 0.0
    while reps < MIN_REPS or (reps < MAX_REPS and time.perf_counter() + longest < deadline):
        begin = time.perf_counter()
        value, bad, off = chain.repetition()
        longest = max(longest, time.perf_counter() - begin)
        digests[value] = digests.get(value, 0) + 1
        nonfinite += bad
        reference_bad += off
        reps += 1
    return {"reps": reps, "digests": digests, "nonfinite": nonfinite,
            "reference_bad": reference_bad}


def set_deterministic(mode: bool, warn_only: bool) -> None:
    """``torch.use_deterministic_algorithms`` for eager ops: the public function also imports
    inductor's config (about 800 modules, a second of CPU per rank) for compiled code, which
    these products are not."""
    setter = getattr(torch._C, "_set_deterministic_algorithms", None)
    if setter is None:
        torch.use_deterministic_algorithms(mode, warn_only=warn_only)
    else:
        setter(mode, warn_only=warn_only)


class NumericSettings:
    """Deterministic algorithms, one CPU thread, TF32 as a dtype asks; restored on exit."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def __enter__(self) -> "NumericSettings":
        self.deterministic = torch.are_deterministic_algorithms_enabled()
        self.warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
        self.threads = torch.get_num_threads()
        set_deterministic(True, warn_only=True)
        self.tf32 = MatmulTF32() if self.device.type == "cuda" else None
        if self.device.type != "cuda":
            torch.set_num_threads(1)
        return self

    def allow_tf32(self, allowed: bool) -> None:
        if self.tf32 is not None:
            self.tf32.allow(allowed)

    def __exit__(self, *exc: Any) -> None:
        set_deterministic(self.deterministic, warn_only=self.warn_only)
        if self.tf32 is not None:
            self.tf32.restore()
        else:
            torch.set_num_threads(self.threads)


def check_products(device: torch.device, seconds: float) -> dict[str, Any]:
    """Every dtype's repetitions, sharing ``seconds``: each dtype ends at its share's end, so
    time one overran is taken from the next."""
    names = device_dtypes(device)
    results = {}
    begin = time.perf_counter()
    with NumericSettings(device) as settings:
        for index, name in enumerate(names):
            settings.allow_tf32(name == "tf32")
            results[name] = run_products(name, device,
                                         begin + seconds * (index + 1) / len(names))
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return results


# -- all_reduce with a known exact result ---------------------------------------------------------

def pattern_bits(name: str, world: int) -> tuple[int, int]:
    """(m, high): at each element ``m`` ranks contribute a power of two each (all of them, up to
    the dtype's exact bits less ``VARYING_BITS``), and ``high`` more bits carry a value that
    varies along the tensor."""
    bits = EXACT_BITS[name]
    low = min(world, bits - VARYING_BITS[name])
    return low, bits - low


def all_reduce_contribution(elements: int, rank: int, world: int, name: str,
                            device: torch.device) -> torch.Tensor:
    """Rank ``rank``'s integers (int64): at element i, 2^j where j = (rank - i) mod world, when
    j < m (so the ranks of an element each set a bit of their own and a wrong element tells
    whose bit it lost or gained); the element's owner (j = 0) adds q(i) * 2^m, q(i) = (i //
    world) mod 2^high, so that the sum varies along the tensor and a shifted or reordered chunk
    shows."""
    low, high = pattern_bits(name, world)
    position = torch.arange(elements, dtype=torch.int64, device=device)
    j = (rank - position) % world
    ones = torch.ones_like(position)
    value = torch.where(j < low, torch.bitwise_left_shift(ones, j.clamp(max=low)), 0)
    owner = ((position // world) % (1 << high)) << low
    return value + torch.where(j == 0, owner, 0)


def all_reduce_expected(elements: int, world: int, name: str,
                        device: torch.device) -> torch.Tensor:
    """The exact sum of every rank's contribution: 2^m - 1 plus the owner's q(i) * 2^m."""
    low, high = pattern_bits(name, world)
    position = torch.arange(elements, dtype=torch.int64, device=device)
    return ((1 << low) - 1) + (((position // world) % (1 << high)) << low)


def whose_bit(position: int, got: int, expected: int, world: int, name: str) -> Optional[int]:
    """The rank whose contribution a wrong element lost, doubled or flipped a bit of: the
    difference is one rank's power of two, or a multiple of 2^m within the owner's field
    (None: the difference is no one rank's)."""
    low, high = pattern_bits(name, world)
    difference = abs(got - expected)
    if difference and difference & (difference - 1) == 0 and difference < (1 << low):
        return (position + difference.bit_length() - 1) % world
    owner_bits = (((position // world) % (1 << high)) << low) + 1
    if difference == owner_bits or (difference and difference % (1 << low) == 0
                                    and difference < (1 << (low + high))):
        return position % world
    return None


def check_all_reduce(device: torch.device, rank: int, world: int,
                     all_reduce: Callable[[torch.Tensor], Any]) -> list[dict[str, Any]]:
    """all_reduce of known integers per dtype and size: the wrong elements this rank got, and
    whose contribution each of the first ``MAX_DECODED`` of them is off by (``suspects``)."""
    sizes = GPU_ALL_REDUCE_BYTES if device.type == "cuda" else CPU_ALL_REDUCE_BYTES
    names = [n for n in device_dtypes(device) if n in EXACT_BITS]
    results = []
    for name in names:
        dtype = DTYPES[name]
        for nbytes in sizes:
            elements = nbytes // torch.finfo(dtype).bits * 8
            entry: dict[str, Any] = {"dtype": name, "bytes": nbytes}
            tensor = all_reduce_contribution(elements, rank, world, name, device).to(dtype)
            all_reduce(tensor)
            got = tensor.to(torch.int64)
            expected = all_reduce_expected(elements, world, name, device)
            wrong = got != expected
            count = int(wrong.sum().item())
            entry["wrong"] = count
            if count:
                where = wrong.nonzero()[:MAX_DECODED, 0]
                entry["first_wrong"] = int(where[0].item())
                suspects: dict[str, int] = {}
                for position, value, right in zip(where.tolist(), got[where].tolist(),
                                                  expected[where].tolist()):
                    suspect = whose_bit(position, value, right, world, name)
                    key = "?" if suspect is None else str(suspect)
                    suspects[key] = suspects.get(key, 0) + 1
                entry["suspects"] = suspects
            results.append(entry)
    return results


def numerics_check(device: torch.device, host: str, rank: Optional[int], world: int,
                   seconds: float, all_reduce: Callable[[torch.Tensor], Any]) -> dict[str, Any]:
    """This rank's numerics record: who it is, its products' digests, its all_reduce check."""
    begin = time.perf_counter()
    record = device_identity(device, host, rank)
    record["all_reduce"] = check_all_reduce(device, rank or 0, world, all_reduce)
    # the products get what the all_reduce left of the budget (a floor of MIN_REPS each), so
    # the whole check keeps to about ``seconds`` however slow the network is
    left = max(seconds - (time.perf_counter() - begin), seconds * MIN_PRODUCTS_SHARE)
    record["products"] = check_products(device, left)
    record["seconds"] = round(time.perf_counter() - begin, 3)
    return record
