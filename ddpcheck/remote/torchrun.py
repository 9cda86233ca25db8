"""torchrun, with its torch import reported: what the agent's ``launch`` runs on every host.

``python -m ddpcheck.remote.torchrun ARGS`` is ``torchrun ARGS`` (``torch.distributed.run``'s
own ``main``), preceded by one ``torch_import`` record: the seconds ``import torch`` took and
the version it loaded, or the import's error (then exit 1 and no rank starts). torchrun imports
torch anyway, so this is the import check of a stage 0 that only inspected torch
(``torchinfo``), at no extra cost. Runs on every host; standard library, then torch.
"""

from __future__ import annotations

import sys
import time
from typing import Optional

from .. import wire
from .fastexit import run_then_exit

IMPORT_FAILED_EXIT = 1


def import_error_text(exc: BaseException) -> str:
    """The import's error as its traceback's last line would say it."""
    return f"{type(exc).__name__}: {exc}"


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
    sys.argv[0] = "torchrun"
    run.main(sys.argv[1:] if argv is None else argv)
    return 0


if __name__ == "__main__":
    run_then_exit(main)
