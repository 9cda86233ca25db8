"""Ending a process that imported torch at once, without the interpreter's teardown.

Runs in every rank (``probe``, ``sweep``) and in the ``torchrun`` wrapper; standard library only.
Tearing down an interpreter that imported torch takes about half a second of CPU (module and
object finalisation). A preflight pays it twice in a row at its end, the ranks' and then
torchrun's, which waits for its ranks, and on a small cluster that is a tenth of the run. The
records are already written and flushed by then, so these processes leave with ``os._exit``.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Callable, NoReturn, Optional, Union


def exit_code_of(code: Union[int, str, None]) -> int:
    """The status ``sys.exit(code)`` ends with (a message is printed, then 1)."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def run_then_exit(main: Callable[[], Optional[int]]) -> NoReturn:
    """``sys.exit(main())``, minus the teardown: an exception is printed as the interpreter
    would print it (status 1); Ctrl-C is left to the interpreter as before."""
    try:
        code = exit_code_of(main())
    except SystemExit as exc:
        code = exit_code_of(exc.code)
    except KeyboardInterrupt:
        raise
    except BaseException:  # noqa: BLE001 - printed, as an uncaught exception would be
        traceback.print_exc()
        code = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
