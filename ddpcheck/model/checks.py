"""Check names: what a finding is about (the exit-code table is beside ``Verdict``, in records).

Runs on the launcher (and is importable anywhere: standard library only). Every check name a
finding carries is a member: tests/test_docs.py holds each member to its entry in
docs/troubleshooting.md and its line in docs/interface.md. A ``Check`` is a ``str``, so JSON,
tables and comparisons with plain names stay as they were.
"""

from __future__ import annotations

import enum


class Check(str, enum.Enum):
    SSH = "ssh"
    SRUN = "srun"
    JOIN = "join"  # a node of the in-job gang that never joined, went silent or left
    PYTHON = "python"
    TORCH_IMPORT = "torch_import"
    HOSTNAME = "hostname"
    RENDEZVOUS = "rendezvous"
    TIMEOUT = "timeout"
    CRASH = "crash"  # a rank died without a record of its own (signal, exit)
    PROBE = "probe"  # a rank failed in a stage of the probe that has no check of its own
    WORLD_SIZE = "world_size"
    GPU_COUNT = "gpu_count"
    DUPLICATE_DEVICE = "duplicate_device"
    GPU_HEALTH = "gpu_health"
    INFINIBAND = "infiniband"  # IB/RoCE ports and NCCL_IB_HCA (stage 0, node)
    RESOURCES = "resources"
    CLOCK_SKEW = "clock_skew"  # a host's clock against the launcher's (stage 0)
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
    INTERRUPTED = "interrupted"  # Ctrl-C or SIGTERM: the root cause of what did not finish
    NUMERICS = "numerics"  # a device whose products or all_reduce come out wrong

    def __str__(self) -> str:
        return self.value

    __format__ = str.__format__
