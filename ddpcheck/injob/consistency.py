"""The in-job API: ``ddpcheck.check_consistency(model, step=...)`` inside the user's training.

One small gather of a per-rank fingerprint (step, optimizer step, each parameter's dtype, shape
and bit-exact checksum, RNG state hashes) over the default process group or ``group``; the
comparison is ``drift``'s, the same rules preflight uses. Works on gloo and NCCL (on NCCL the
gather uses the current CUDA device, as DDP jobs set it).
"""

from __future__ import annotations

import socket
from typing import Any, Optional

import torch
import torch.distributed as dist

from ..core.drift import RankPrint, finding, model_differences, rng_differences, value_rows
from ..remote.fingerprint import gather_json, model_fingerprint, rng_hashes
from ..model.records import Finding, Severity


# Python's and NumPy's generators usually drive data order and augmentation, often per rank by
# design: a difference there is a warning. torch's and CUDA's drive init and dropout: an error.
SOFT_GENERATORS = frozenset({"python", "numpy"})


class ConsistencyError(RuntimeError):
    """Ranks disagree; ``findings`` has the details, the message is a table naming them."""

    def __init__(self, message: str, findings: list[Finding]) -> None:
        super().__init__(message)
        self.findings = findings


def check_consistency(model: torch.nn.Module, step: Optional[int] = None,
                      optimizer: Any = None, group: Any = None, *, rng: bool = True,
                      raise_on_error: bool = True) -> list[Finding]:
    """Compare this rank's fingerprint with every other rank's; collective: call it on every
    rank of ``group`` at the same point. Returns the findings (empty when all agree) or, with
    ``raise_on_error`` (the default), raises ConsistencyError when a finding is an error."""
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("check_consistency needs an initialized process group "
                           "(torch.distributed.init_process_group)")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    mine = {"host": socket.gethostname(), "model": model_fingerprint(model, step, optimizer),
            "rng": rng_hashes(device) if rng else {}}
    gathered = gather_json(mine, group)
    ranks = (dist.get_process_group_ranks(group) if group is not None
             else list(range(len(gathered))))
    prints = [RankPrint(rank, str(data.get("host", "?")), data)
              for rank, data in zip(ranks, gathered) if isinstance(data, dict)]
    host_of = {p.rank: p.host for p in prints}
    diffs = model_differences(prints) + (rng_differences(prints, SOFT_GENERATORS) if rng else [])
    findings = [finding(diff, host_of) for diff in diffs]
    if raise_on_error and any(f.severity is Severity.ERROR for f in findings):
        raise ConsistencyError(error_message(step, diffs, findings, host_of), findings)
    return findings


def error_message(step: Optional[int], diffs, findings: list[Finding],
                  host_of: dict[int, str]) -> str:
    from tabulate import tabulate

    rows = [[row["check"], row["key"], row["value"],
             " ".join(map(str, row["ranks"])), ", ".join(row["hosts"]),
             "" if row["reference"] else "<- differs"]
            for row in value_rows(diffs, host_of)]
    at = f" at step {step}" if step is not None else ""
    lines = [f"ddpcheck: ranks disagree{at} ({len(findings)} difference(s)):"]
    lines += [f"  [{f.severity.value}] {f.check}: {f.message}" for f in findings]
    lines.append(tabulate(rows, headers=["check", "key", "value", "ranks", "hosts", ""],
                          tablefmt="simple", disable_numparse=True))
    return "\n".join(lines)
