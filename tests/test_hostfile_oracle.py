"""Hostfiles read as OpenMPI reads them: generated hostfiles parsed by ddpcheck and by
``mpirun --display-map --do-not-launch`` (OpenMPI's own parser; nothing is started). Every
hostfile OpenMPI accepts, ddpcheck accepts with the same hosts and slots; every one it refuses,
ddpcheck refuses with a line number."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from typing import Optional

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ddpcheck.config.inventory import parse_hostfile
from ddpcheck.model.errors import ConfigError

MPIRUN = shutil.which("mpirun")
needs_mpirun = pytest.mark.skipif(MPIRUN is None and os.environ.get("CI") != "true",
                                  reason="openmpi-bin is not installed")
_NODE = re.compile(r"Data for node: (\S+)\s+Num slots: (\d+)")
_TOTAL = re.compile(r"Total slots allocated (\d+)")


def _mpirun(path: str, procs: int) -> str:
    env = {**os.environ, "OMPI_MCA_plm": "isolated", "OMPI_MCA_btl": "self",
           "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
    done = subprocess.run([MPIRUN, "--display-map", "--do-not-launch", "--hostfile", path,
                           "-np", str(procs), "true"], capture_output=True, text=True,
                          timeout=60, env=env, stdin=subprocess.DEVNULL)
    return done.stdout + done.stderr


def openmpi_slots(path: str) -> Optional[dict[str, int]]:
    """{node: slots} as OpenMPI maps them, or None when it refuses the hostfile."""
    total = _TOTAL.search(_mpirun(path, 1))
    if total is None:
        return None
    return {name: int(slots) for name, slots in _NODE.findall(_mpirun(path, int(total.group(1))))}


def ddpcheck_slots(path: str) -> Optional[dict[str, int]]:
    try:
        entries = parse_hostfile(open(path).read(), path)
    except ConfigError as exc:
        assert exc.line, f"refused without a line number: {exc}"
        return None
    return {e.name: 1 if e.slots is None else e.slots for e in entries}


HOSTS = ["node01", "node02", "gpu7", "10.0.0.5"]
_line = st.tuples(
    st.sampled_from(["", "", "alice@", "bob@"]),
    st.sampled_from(HOSTS),
    st.lists(st.tuples(st.sampled_from(["slots", "max_slots", "count", "cpu", "max-slots"]),
                       st.sampled_from(["=", " = ", "= "]),
                       st.integers(1, 6)), max_size=2),
    st.sampled_from(["", "", "  # note", "\t"]),
).map(lambda t: t[0] + t[1] + "".join(f" {k}{eq}{v}" for k, eq, v in t[2]) + t[3])


@needs_mpirun
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@example(lines=["node01 max_slots=1 slots=2"])  # keys apply in order: slots raises max_slots
@example(lines=["node01 slots=2 max_slots=1"])
@example(lines=["bob@gpu7", "gpu7 slots=2"])
@given(lines=st.lists(st.one_of(_line, st.sampled_from(["# comment", ""])), min_size=1,
                      max_size=7))
def test_generated_hostfiles_read_as_openmpi_reads_them(lines, tmp_path_factory) -> None:
    if not any(line.strip() and not line.startswith("#") for line in lines):
        lines = lines + ["node01"]
    path = str(tmp_path_factory.mktemp("hostfile") / "hostfile")
    with open(path, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    theirs = openmpi_slots(path)
    ours = ddpcheck_slots(path)
    assert ours == theirs, "\n".join(lines)
