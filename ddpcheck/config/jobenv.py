"""Config, the in-job place: where this node stands in the gang (``preflight --in-job``).

Pure, on every node of the job: ``resolve(flags, environ)`` reads nnodes, node rank, ranks per
node, master address and port, each from the first place that sets it, in this order: the
flags (``--nnodes --node-rank --nproc-per-node --master-addr --master-port``), torchrun's
``PET_*`` variables (set by the Kubeflow operators), ``MASTER_ADDR``/``MASTER_PORT``, JobSet's
``JOB_COMPLETION_INDEX`` as the node rank, then SLURM's ``SLURM_NNODES``/``SLURM_NODEID`` and
the first node of ``SLURM_JOB_NODELIST`` as the master. Every value keeps where it came from,
so ``--dry-run`` can say it, and a bad value is a ``ConfigError`` naming the variable or flag.
"""

from __future__ import annotations

from typing import Mapping, Optional

from ..model.errors import ConfigError
from ..model.jobplace import PLACE_FIELDS, JobPlace
from .hostlist import expand_hostlist

DEFAULT_MASTER_PORT = 29500  # torchrun's
# torchrun's --nproc-per-node words: none of them is a number of ranks, so preflight's own
# default applies (one rank per GPU, 2 on gloo without one)
NPROC_WORDS = ("auto", "gpu", "cpu", "xpu")

# Where each value may come from, first first (a flag, or a variable).
SOURCES: Mapping[str, tuple[str, ...]] = {
    "nnodes": ("--nnodes", "PET_NNODES", "SLURM_NNODES", "SLURM_JOB_NUM_NODES"),
    "node_rank": ("--node-rank", "PET_NODE_RANK", "JOB_COMPLETION_INDEX", "SLURM_NODEID"),
    "nproc_per_node": ("--nproc-per-node", "PET_NPROC_PER_NODE"),
    "master_addr": ("--master-addr", "PET_MASTER_ADDR", "MASTER_ADDR", "SLURM_JOB_NODELIST",
                    "SLURM_NODELIST"),
    "master_port": ("--master-port", "PET_MASTER_PORT", "MASTER_PORT"),
}


def _first(name: str, flags: Mapping[str, Optional[object]],
           environ: Mapping[str, str]) -> tuple[Optional[str], str]:
    for source in SOURCES[name]:
        if source.startswith("--"):
            value = flags.get(name)
            if value is not None and str(value).strip() != "":
                return str(value).strip(), source
        elif environ.get(source, "").strip():
            return environ[source].strip(), source
    return None, "default"


def _integer(text: str, source: str, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"{source}={text!r} is not a whole number",
                          source=_where(source)) from None
    if value < least:
        raise ConfigError(f"{source}={text!r} must be at least {least}", source=_where(source))
    return value


def _where(source: str) -> str:
    return "command line" if source.startswith("--") else "environment"


def resolve(flags: Mapping[str, Optional[object]], environ: Mapping[str, str]) -> JobPlace:
    """This node's ``JobPlace`` from the flags (keys as ``SOURCES``, None: not given) and the
    environment. Raises ``ConfigError`` naming the variable or flag at fault."""
    values: dict[str, Optional[str]] = {}
    sources: dict[str, str] = {}
    for name in SOURCES:
        values[name], sources[name] = _first(name, flags, environ)
    missing = [name for name in ("nnodes", "node_rank", "master_addr") if values[name] is None]
    if missing:
        wanted = "; ".join(f"{name}: {' or '.join(SOURCES[name])}" for name in missing)
        raise ConfigError(f"--in-job cannot tell where this node stands: nothing sets {wanted}",
                          source="environment")
    nnodes = _integer(str(values["nnodes"]), sources["nnodes"], 1)
    node_rank = _integer(str(values["node_rank"]), sources["node_rank"], 0)
    if node_rank >= nnodes:
        raise ConfigError(f"{sources['node_rank']}={node_rank} but {sources['nnodes']}="
                          f"{nnodes}: node ranks go from 0 to {nnodes - 1}",
                          source=_where(sources["node_rank"]))
    nproc_text = values["nproc_per_node"]
    nproc = (None if nproc_text is None or nproc_text.lower() in NPROC_WORDS else
             _integer(nproc_text, sources["nproc_per_node"], 1))
    master = str(values["master_addr"])
    if sources["master_addr"] in ("SLURM_JOB_NODELIST", "SLURM_NODELIST"):
        try:
            master = expand_hostlist(master)[0]
        except (ValueError, IndexError) as exc:
            raise ConfigError(f"{sources['master_addr']}={master!r}: cannot read it ({exc})",
                              source="environment") from None
    if any(c.isspace() for c in master):
        raise ConfigError(f"{sources['master_addr']}={master!r} is not a host name or address",
                          source=_where(sources["master_addr"]))
    port_text = values["master_port"]
    port = (DEFAULT_MASTER_PORT if port_text is None else
            _integer(port_text, sources["master_port"], 1))
    if port > 65534:  # the rendezvous takes the next port
        raise ConfigError(f"{sources['master_port']}={port}: must be below 65535 (torchrun's "
                          f"ranks meet at the next port)", source=_where(sources["master_port"]))
    return JobPlace(nnodes, node_rank, nproc, master, port, sources)
