"""TF32 for float32 matmuls on CUDA: read, switched and restored through the API the job uses
(runs on a rank, for the numerics and compute checks and the consistency fingerprint).

torch has two APIs for it: the legacy one (``torch.backends.cuda.matmul.allow_tf32``,
``torch.set_float32_matmul_precision``) and ``torch.backends.cuda.matmul.fp32_precision``. Once a
job sets the new one, every legacy read raises ("mix of the legacy and new APIs"), and a legacy
flag set after ``set_float32_matmul_precision("medium")`` leaves the same mixed state. So reads
that must not fail go through the new attribute, which reflects either; and a switch goes
through the API the job's own state still answers, and is undone the same way, so the job reads
its settings afterwards exactly as before."""

from __future__ import annotations

import torch

# the legacy precision each fp32_precision value of CUDA matmuls means
LEGACY_PRECISION = {"tf32": "high", "ieee": "highest", "none": "highest"}


def matmul_tf32() -> bool:
    """Whether float32 matmuls on CUDA may use TF32 (either API; never raises)."""
    return torch.backends.cuda.matmul.fp32_precision == "tf32"


def matmul_precision() -> str:
    """``torch.get_float32_matmul_precision()``; when the job's use of the new API makes that
    raise, the legacy name of its setting, so ranks that set the same through either API
    agree."""
    try:
        return torch.get_float32_matmul_precision()
    except RuntimeError:
        value = torch.backends.cuda.matmul.fp32_precision
        return LEGACY_PRECISION.get(value, value)


class MatmulTF32:
    """Switch TF32 for float32 matmuls on and off, then ``restore()`` what the job had."""

    def __init__(self) -> None:
        self.saved_new = torch.backends.cuda.matmul.fp32_precision
        try:
            self.saved = torch.get_float32_matmul_precision()
            self.legacy = True
        except RuntimeError:  # the job uses the new API: so do we
            self.saved = self.saved_new
            self.legacy = False

    def allow(self, allowed: bool) -> None:
        if self.legacy:
            torch.set_float32_matmul_precision("high" if allowed else "highest")
        else:
            torch.backends.cuda.matmul.fp32_precision = "tf32" if allowed else "ieee"

    def restore(self) -> None:
        if self.legacy:
            torch.set_float32_matmul_precision(self.saved)
        if torch.backends.cuda.matmul.fp32_precision != self.saved_new:
            # "none" (follow torch.backends.fp32_precision), which the legacy API sets as "ieee"
            torch.backends.cuda.matmul.fp32_precision = self.saved_new
