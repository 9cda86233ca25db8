"""Progress at scale: per-host lines for a few hosts or -v, summary lines for 1,000 hosts."""

from __future__ import annotations

import io

from ddpcheck.report.progress import FAILURES_SHOWN, Progress, state_of


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_state_of():
    assert state_of("checked: hostname h1") == "checked"
    assert state_of("done in 3.1s") == "done"
    assert state_of("failed stage 0: torch_import: x") == "failed stage 0"


def test_few_hosts_get_a_line_each():
    out = io.StringIO()
    progress = Progress(out, hosts=4)
    progress.host("h1", "connecting")
    progress.host("h1", "checked: hostname h1")
    assert out.getvalue().splitlines()[1].endswith("h1: checked: hostname h1")


def test_a_thousand_hosts_give_a_few_summary_lines():
    out, clock = io.StringIO(), Clock()
    progress = Progress(out, hosts=1000, clock=clock)
    for i in range(1000):
        clock.now += 0.01
        progress.host(f"n{i}", "connecting")
    for i in range(1000):
        clock.now += 0.01
        if i % 100 == 7:
            progress.host(f"n{i}", "unreachable: connect timed out")
        else:
            progress.host(f"n{i}", f"checked: hostname n{i}")
    progress.say("launching")
    progress.finish()
    lines = out.getvalue().splitlines()
    assert len(lines) <= 15, lines
    failures = [line for line in lines if "unreachable: connect" in line]
    assert len(failures) == FAILURES_SHOWN
    summary = [line for line in lines if "1000 hosts:" in line][-1]
    assert "990 checked" in summary and "10 unreachable" in summary
    assert lines[-1].endswith("launching")


def test_verbose_keeps_every_host_line():
    out = io.StringIO()
    progress = Progress(out, verbose=True, hosts=1000)
    for i in range(100):
        progress.host(f"n{i}", "connecting")
    assert len(out.getvalue().splitlines()) == 100


def test_quiet_writes_nothing():
    progress = Progress(None, hosts=1000)
    progress.host("n1", "unreachable: x")
    progress.say("x")
    progress.finish()


def test_open_file_limit_raised_or_refused_clearly():
    import resource

    import pytest

    from ddpcheck.model.errors import DdpcheckError
    from ddpcheck.transport.limits import ensure_open_files, open_files_needed

    set_to = []
    assert ensure_open_files(10, 32, lambda _: (1024, 4096), set_to.append) is None
    assert open_files_needed(1000, 32) > 1024
    note = ensure_open_files(1000, 32, lambda _: (1024, 4096),
                             lambda kind, limits: set_to.append(limits))
    assert "raised" in note and set_to[-1][0] >= open_files_needed(1000, 32)
    assert set_to[-1][1] == 4096
    with pytest.raises(DdpcheckError, match=r"1000 hosts need about \d+ open files.*ulimit -n"):
        ensure_open_files(1000, 32, lambda _: (256, 512), lambda *a: None)
    assert ensure_open_files(10**6, 32, lambda _: (resource.RLIM_INFINITY,) * 2) is None
