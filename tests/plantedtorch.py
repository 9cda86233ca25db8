"""A ``torch`` package planted on a path for the tests: its ``version.py`` and ``__init__``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional


def planted_torch(root: Path, version_py: Optional[str], init: str) -> Path:
    """``root/torch`` with this ``__init__.py`` (and ``version.py`` unless None): ``root``,
    to put on PYTHONPATH."""
    package = root / "torch"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(init)
    if version_py is not None:
        (package / "version.py").write_text(version_py)
    return root


def broken_torch(root: Path, error: str) -> Path:
    """A torch installed whole (the real ``version.py``) whose import raises ImportError(error),
    as on a host whose CUDA libraries are missing."""
    import torch

    return planted_torch(root, (Path(torch.__file__).parent / "version.py").read_text(),
                         f"raise ImportError({error!r})\n")
