"""The agent's vocabulary: what the launcher writes into the agent's command line, environment
and stdin, and the agent reads back. Core: standard library only, imported by the plan that
writes a host's commands and by ``remote.agent`` that runs them, so both spell them alike."""

from __future__ import annotations

from typing import Mapping

# srun runs one command line on every node: the agent fills these in with its own node's values.
NODE_RANK_TOKEN = "@NODE_RANK@"
NPROC_TOKEN = "@NPROC@"
HOST_TOKEN = "@HOST@"

WORKDIR_VARIABLE = "DDPCHECK_WORKDIR"  # set by the launcher: where this host's files go

# ``agent facts --torch MODE``: how stage 0 learns torch's version and devices.
TORCH_IMPORT = "import"  # import torch in a child, timed (``ddpcheck node``)
TORCH_INSPECT = "inspect"  # read it (``torchinfo``); import it only where reading cannot tell

# Written to a command's stdin when the launcher stops it: the agent stops torchrun and reports.
STOP_LINE = b"stop\n"

# How long each ``--dcgm`` level may take before it is killed (dcgmi's own estimates: level 1
# seconds, level 2 about two minutes, level 3 up to half an hour; ddpcheck offers 1 and 2). The
# launcher adds it to the host's deadline, so the diagnostics never eat the rest of the run's.
DCGM_DEADLINE_S: Mapping[int, float] = {1: 120.0, 2: 600.0}
