"""A ``sitecustomize.py`` that makes one rank's all_reduce wrong, as a bad device or link would.

Put its folder on a host's PYTHONPATH (hosts.yaml ``env``): in the rank whose LOCAL_RANK is
``local_rank``, once torch has been imported, ``torch.distributed.all_reduce`` is wrapped so
that on float tensors of at least 1024 elements (bulk transfers; the small ones of the other
checks pass):

* ``send``: this rank's data at elements 1, 7 and 100 is zeroed before the call, as a device
  whose data goes out wrong: every rank receives a sum that lacks this rank's share there;
* ``receive``: element 5 of the result gets 1 added after the call, as data that went wrong on
  its way in: only this rank receives it wrong.
"""

from __future__ import annotations

from pathlib import Path

from wrongmatmul import planted_site

TEMPLATE = '''
import importlib.machinery
import os
import sys

MODE = {mode!r}

def _wrap(torch):
    original = torch.distributed.all_reduce

    def bulk(tensor):
        return (isinstance(tensor, torch.Tensor) and tensor.is_floating_point()
                and tensor.numel() >= 1024 and tensor.is_contiguous())

    def all_reduce(tensor, *args, **kwargs):
        if MODE == "send" and bulk(tensor):
            with torch.no_grad():
                tensor.view(-1)[[1, 7, 100]] = 0
        work = original(tensor, *args, **kwargs)
        if MODE == "receive" and bulk(tensor):
            if work is not None:
                work.wait()
            with torch.no_grad():
                tensor.view(-1)[5] += 1
        return work

    torch.distributed.all_reduce = all_reduce
'''


def wrong_all_reduce_site(root: Path, mode: str, local_rank: int = 0) -> Path:
    """``root/sitecustomize.py`` spoiling local rank ``local_rank``'s all_reduce (``mode``:
    "send" or "receive"): ``root``, to put on PYTHONPATH."""
    if mode not in ("send", "receive"):
        raise ValueError(f"mode must be send or receive, got {mode!r}")
    return planted_site(root, TEMPLATE.format(mode=mode), local_rank)
