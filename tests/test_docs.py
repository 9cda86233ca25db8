"""The newcomer docs keep up with the code: every check has a troubleshooting entry."""

from __future__ import annotations

import re
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
TROUBLESHOOTING = REPO / "docs" / "troubleshooting.md"
INTERFACE = REPO / "docs" / "interface.md"  # the user-facing contract
# The check names of the interface contract (docs/interface.md).
INTERFACE_CHECKS = (
    "ssh python torch_import hostname rendezvous env env_drift versions gpu_count world_size "
    "duplicate_device gpu_health resources barrier all_reduce dtype seed params step "
    "bandwidth slow_link straggler hang timeout").split()
OWN_CHECKS = ("srun", "infiniband", "numerics")


def documented() -> set[str]:
    return set(re.findall(r"^### `([a-z_]+)`$", TROUBLESHOOTING.read_text(), re.M))


def test_every_check_has_a_troubleshooting_entry() -> None:
    assert set(INTERFACE_CHECKS) | set(OWN_CHECKS) <= documented()


def test_interface_check_list_is_covered() -> None:
    section = INTERFACE.read_text().split("### Check names", 1)[1].split("\n\n", 2)[1]
    names = set(re.findall(r"`([a-z_]+)`", section))
    assert names == set(INTERFACE_CHECKS)
    assert names <= documented()


def test_readme_links_the_troubleshooting_guide() -> None:
    assert "(docs/troubleshooting.md)" in (REPO / "README.md").read_text()
