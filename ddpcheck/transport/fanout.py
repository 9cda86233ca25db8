"""Transport, fan-out: run one piece of work per item, N at once; every item gets its result or
its error (as fabric's GroupResult), and no failure stops the others. Runs on the launcher.
"""

from __future__ import annotations

import concurrent.futures
import threading
from dataclasses import dataclass
from typing import Callable, Generic, Optional, Sequence, TypeVar

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Outcome(Generic[T, R]):
    item: T
    result: Optional[R] = None
    error: Optional[BaseException] = None


def fan_out(items: Sequence[T], work: Callable[[T], R], workers: int,
            cancel: threading.Event) -> list[Outcome[T, R]]:
    """Run ``work`` on every item, ``workers`` at once; each item gets a result or its error.

    On KeyboardInterrupt the cancel event is set (so running work stops and cleans up), the
    workers are waited for, and the interrupt is raised again.
    """
    if not items:
        return []
    outcomes: dict[int, Outcome[T, R]] = {}
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(workers, len(items))))
    futures = {pool.submit(work, item): index for index, item in enumerate(items)}
    try:
        pending = set(futures)
        while pending:
            done, pending = concurrent.futures.wait(pending, timeout=0.2)
            for future in done:
                index = futures[future]
                error = future.exception()
                outcomes[index] = (Outcome(items[index], error=error) if error is not None
                                   else Outcome(items[index], result=future.result()))
    except KeyboardInterrupt:
        cancel.set()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return [outcomes[i] for i in range(len(items))]
