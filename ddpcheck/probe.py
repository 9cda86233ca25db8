"""``python -m ddpcheck.probe``: the per-rank probe's public name (INTERFACE.md, launch/).

The probe lives in ``ddpcheck.remote.probe``; this module only keeps the documented entry point.
"""

from .remote.fastexit import run_then_exit
from .remote.probe import main

if __name__ == "__main__":
    run_then_exit(main)
