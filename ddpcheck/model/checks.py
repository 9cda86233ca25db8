"""Check names (what a finding is about) and the one table of exit codes.

Runs on the launcher (and is importable anywhere: standard library only). The names are the
interface contract's (docs/interface.md) plus ddpcheck's own (``srun``, ``stacks``, ``infiniband``); a
``Check`` is a ``str``, so JSON, tables and comparisons with plain names stay as they were.
"""

from __future__ import annotations

import enum
from typing import Mapping

from .records import Verdict


class Check(str, enum.Enum):
    SSH = "ssh"
    SRUN = "srun"
    PYTHON = "python"
    TORCH_IMPORT = "torch_import"
    HOSTNAME = "hostname"
    RENDEZVOUS = "rendezvous"
    TIMEOUT = "timeout"
    WORLD_SIZE = "world_size"
    GPU_COUNT = "gpu_count"
    DUPLICATE_DEVICE = "duplicate_device"
    GPU_HEALTH = "gpu_health"
    INFINIBAND = "infiniband"  # IB/RoCE ports and NCCL_IB_HCA (stage 0, node)
    RESOURCES = "resources"
    ENV = "env"
    ENV_DRIFT = "env_drift"
    VERSIONS = "versions"
    DTYPE = "dtype"
    SEED = "seed"
    PARAMS = "params"
    STEP = "step"
    BARRIER = "barrier"
    ALL_REDUCE = "all_reduce"
    BANDWIDTH = "bandwidth"
    SLOW_LINK = "slow_link"
    STRAGGLER = "straggler"
    HANG = "hang"
    STACKS = "stacks"
    NUMERICS = "numerics"  # a device whose products or all_reduce come out wrong

    def __str__(self) -> str:
        return self.value

    __format__ = str.__format__


# The one exit-code table: every command's verdict maps here; usage errors are 2.
EXIT_CODES: Mapping[Verdict, int] = {Verdict.OK: 0, Verdict.FAIL: 1, Verdict.UNREACHABLE: 3,
                                     Verdict.INTERRUPTED: 130}
EXIT_USAGE = 2
EXIT_INTERRUPTED = EXIT_CODES[Verdict.INTERRUPTED]
