"""torchrun, with its torch import reported: what the agent's ``launch`` runs on every host.

``python -m ddpcheck.remote.torchrun ARGS`` is ``torchrun ARGS`` (``torch.distributed.run``'s
own ``main``), preceded by one ``torch_import`` record: the seconds ``import torch`` took and
the version it loaded, or the import's error (then exit 1 and no rank starts). torchrun imports
torch anyway, so this is the import check of a stage 0 that only inspected torch
(``torchinfo``), at no extra cost. Runs on every host; standard library, then torch.

With torchrun's static rendezvous, a node other than 0 then waits until the master's port
accepts before torchrun connects to it (``wait_for_master``). torchrun's store client retries a
refused connection with a backoff that grows toward a second and more, with jitter; a node whose
torchrun finished importing before node 0's (most of them: node 0 has the store to build) slept
through up to a second of that backoff after the store was up, with every core idle.
"""

from __future__ import annotations

import socket
import sys
import time
from typing import Optional, Sequence

from .. import wire
from .fastexit import run_then_exit

IMPORT_FAILED_EXIT = 1
RENDEZVOUS_TIMEOUT_EXIT = 1  # what torchrun exits with when its rendezvous times out
POLL_S = 0.02  # between connection attempts to the master's port
CONNECT_TIMEOUT_S = 1.0  # one attempt's, on a route that drops packets instead of refusing
STATIC_DEFAULT_TIMEOUT_S = 900.0  # torchrun's rendezvous timeout without --rdzv-conf timeout=


def import_error_text(exc: BaseException) -> str:
    """The import's error as its traceback's last line would say it."""
    return f"{type(exc).__name__}: {exc}"


def static_master(args: Sequence[str]) -> Optional[tuple[str, int, float]]:
    """(address, port, seconds to wait) of the master this node's torchrun will connect to,
    read with torchrun's own parser; None on node 0 (it hosts the store) and for any other
    rendezvous than the static one (c10d and etcd have their own endpoints and retries)."""
    from torch.distributed.elastic.rendezvous.utils import parse_rendezvous_endpoint
    from torch.distributed.run import get_args_parser

    parsed, _ = get_args_parser().parse_known_args(list(args))
    if parsed.standalone or parsed.rdzv_backend != "static" or not parsed.node_rank:
        return None
    endpoint = parsed.rdzv_endpoint or f"{parsed.master_addr}:{parsed.master_port}"
    conf = dict(item.split("=", 1) for item in parsed.rdzv_conf.split(",") if "=" in item)
    try:
        address, port = parse_rendezvous_endpoint(endpoint, default_port=-1)
        timeout = float(int(conf.get("timeout", STATIC_DEFAULT_TIMEOUT_S)))
    except ValueError:
        return None  # torchrun rejects the endpoint or the timeout with its own error
    if port == -1:
        return None  # likewise: a static endpoint needs a port
    return address, port, timeout


def wait_for_master(address: str, port: int, seconds: float) -> bool:
    """Whether the master's port accepted a connection within ``seconds`` (tried every
    ``POLL_S``). When it never does, the rendezvous timed out: torchrun would wait as long
    again for the same port, so ``main`` says so and exits as torchrun would."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            with socket.create_connection((address, port), timeout=CONNECT_TIMEOUT_S):
                return True
        except OSError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(POLL_S)


def main(argv: Optional[list[str]] = None) -> int:
    began = time.monotonic()
    try:
        import torch
        imported = time.monotonic()
        from torch.distributed import run
    except BaseException as exc:  # noqa: BLE001 - whatever the import raised is the finding
        if isinstance(exc, KeyboardInterrupt):
            raise
        wire.emit("torch_import", {"error": import_error_text(exc),
                                   "import_s": round(time.monotonic() - began, 3)})
        return IMPORT_FAILED_EXIT
    wire.emit("torch_import", {"torch": torch.__version__, "cuda": torch.version.cuda,
                               "import_s": round(imported - began, 3)})
    args = sys.argv[1:] if argv is None else argv
    master = static_master(args)
    if master is not None and not wait_for_master(*master):
        address, port, seconds = master
        print(f"torchrun: static rendezvous timed out: the master {address}:{port} accepted no "
              f"connection within the rendezvous timeout ({seconds:g}s)", file=sys.stderr,
              flush=True)
        return RENDEZVOUS_TIMEOUT_EXIT
    sys.argv[0] = "torchrun"
    run.main(args)
    return 0


if __name__ == "__main__":
    run_then_exit(main)
