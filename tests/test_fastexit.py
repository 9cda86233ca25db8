"""remote.fastexit: a process leaves with the status ``sys.exit(main())`` would give, its output
flushed, and without the interpreter's teardown (atexit handlers do not run)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import atexit, sys
    from ddpcheck.remote.fastexit import run_then_exit
    atexit.register(lambda: sys.stderr.write("TEARDOWN\\n"))
    def main():
        sys.stdout.write("partial line, never flushed by main")
        {body}
    run_then_exit(main)
""")


def run_script(body: str) -> subprocess.CompletedProcess[str]:
    # stdout to a pipe is block-buffered: only run_then_exit's flush can get it out
    return subprocess.run([sys.executable, "-c", SCRIPT.format(body=body)],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("body, status", [
    ("return 3", 3),
    ("return None", 0),
    ("sys.exit(4)", 4),
    ("sys.exit(None)", 0),
])
def test_status_as_sys_exit_gives_it_output_flushed_no_teardown(body, status):
    done = run_script(body)
    assert done.returncode == status
    assert done.stdout == "partial line, never flushed by main"
    assert "TEARDOWN" not in done.stderr


def test_a_message_exit_prints_it_and_ends_1():
    done = run_script("sys.exit('no GPU here')")
    assert done.returncode == 1
    assert done.stderr.strip() == "no GPU here"


def test_an_exception_is_printed_as_the_interpreter_would_and_ends_1():
    done = run_script("raise ValueError('broken rank')")
    assert done.returncode == 1
    assert "Traceback (most recent call last)" in done.stderr
    assert done.stderr.strip().endswith("ValueError: broken rank")
    assert done.stdout == "partial line, never flushed by main"
    assert "TEARDOWN" not in done.stderr


def test_ctrl_c_is_left_to_the_interpreter():
    done = run_script("raise KeyboardInterrupt")
    assert done.returncode != 0
    assert "KeyboardInterrupt" in done.stderr
    assert "TEARDOWN" in done.stderr  # the normal way out, handlers and all
