"""A ``sitecustomize.py`` that makes one rank's matrix products wrong, as a bad device would.

Put its folder on a host's PYTHONPATH (hosts.yaml ``env``): every Python process there runs it at
start-up; in the rank whose LOCAL_RANK is ``local_rank``, once torch has been imported,
``torch.matmul``, ``torch.mm``, ``torch.bmm`` and ``Tensor.__matmul__`` are wrapped so that every
``every``-th result has one element's lowest mantissa bit flipped (a silent one-ulp error), or
the ``nan_at``-th result holds a NaN. Nothing else in the process changes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

TEMPLATE = '''
import importlib.machinery
import os
import sys

EVERY = {every!r}
NAN_AT = {nan_at!r}

def _wrap(torch):
    calls = [0]

    def spoil(out):
        calls[0] += 1
        if not isinstance(out, torch.Tensor) or not out.is_floating_point() or not out.numel():
            return out
        if not out.is_contiguous():
            out = out.contiguous()
        with torch.no_grad():
            first = out.view(-1)[:1]
            if NAN_AT is not None and calls[0] == NAN_AT:
                first.fill_(float("nan"))
            elif EVERY is not None and calls[0] % EVERY == 0:
                first.view(torch.int16)[:1].bitwise_xor_(1)  # the lowest mantissa bit
        return out

    def wrapped(function):
        def product(*args, **kwargs):
            return spoil(function(*args, **kwargs))
        return product

    for name in ("matmul", "mm", "bmm"):
        setattr(torch, name, wrapped(getattr(torch, name)))
    torch.Tensor.__matmul__ = wrapped(torch.Tensor.__matmul__)
'''

# Runs ``_wrap(torch)`` once torch's import is complete, in the rank planted on.
LOADER = '''

class _AfterTorch:
    """Finds torch as usual and runs ``_wrap`` on it once its import is complete."""

    def find_spec(self, name, path=None, target=None):
        if name != "torch":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        load = spec.loader.exec_module

        def exec_module(module):
            load(module)
            _wrap(module)

        spec.loader.exec_module = exec_module
        return spec


if os.environ.get("LOCAL_RANK") == {local_rank!r} and {hostname!r} in (None, os.uname().nodename):
    sys.meta_path.insert(0, _AfterTorch())
'''


def wrong_matmul_site(root: Path, every: Optional[int] = None, nan_at: Optional[int] = None,
                      local_rank: int = 0, hostname: Optional[str] = None) -> Path:
    """``root/sitecustomize.py`` spoiling the products of local rank ``local_rank`` (on the
    host named ``hostname`` only, when given): ``root``, to put on PYTHONPATH."""
    return planted_site(root, TEMPLATE.format(every=every, nan_at=nan_at), local_rank, hostname)


def planted_site(root: Path, wrap_source: str, local_rank: int,
                 hostname: Optional[str] = None) -> Path:
    """``root/sitecustomize.py``: ``wrap_source`` (which defines ``_wrap(torch)``) run once torch
    is imported in the process whose LOCAL_RANK is ``local_rank`` (and whose host is named
    ``hostname``, when given: for a job whose hosts share one environment): ``root``, for
    PYTHONPATH."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "sitecustomize.py").write_text(
        wrap_source + LOADER.replace("{local_rank!r}", repr(str(local_rank)))
        .replace("{hostname!r}", repr(hostname)))
    return root
