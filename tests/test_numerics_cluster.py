"""The numerics check on the namespace cluster: a planted bad device is named, and only it.

Three hosts with two gloo ranks each; on h2 a ``sitecustomize.py`` (tests/wrongmatmul.py, on its
PYTHONPATH through hosts.yaml ``env``) spoils local rank 1's matrix products after torch loads:
one element's lowest bit in every k-th result (k = 1, 3, 50), or a NaN once. The report must
name h2's rank 3 and nothing else; the healthy cluster gets no ``numerics`` finding (its false
alarm rate over many runs is measured in benchmarks/numerics.py). A wrong all_reduce planted on
one rank (tests/wrongallreduce.py: its data zeroed going out, or the result spoiled coming in)
is named: whose data it was, or the pair of ranks in ring order the data went wrong between.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree
from typing import Optional

import pytest

from hostsfile import cluster_hosts_yaml
from wrongallreduce import wrong_all_reduce_site
from wrongmatmul import wrong_matmul_site

pytestmark = pytest.mark.cluster

SLOTS = 2
BAD_HOST = "h2"
BAD_LOCAL_RANK = 1
BAD_RANK = 1 * SLOTS + BAD_LOCAL_RANK  # h2 is node rank 1


def preflight(cluster, folder: Path, port: int, plant: Optional[Path],
              *extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    folder.mkdir(parents=True, exist_ok=True)
    overrides = {}
    if plant is not None:
        overrides[BAD_HOST] = {"env": {"GLOO_SOCKET_IFNAME": "eth0", "PYTHONPATH": str(plant)}}
    hosts_yaml = cluster_hosts_yaml(cluster, folder / "hosts.yaml", cluster.hosts[:3],
                                    slots=SLOTS, port=port, host_overrides=overrides)
    report_path = folder / "report.json"
    done = subprocess.run([sys.executable, "-m", "ddpcheck", "preflight", str(hosts_yaml),
                           "--json", str(report_path), *extra],
                          capture_output=True, text=True, timeout=240)
    return done, json.loads(report_path.read_text())


def numerics_findings(report: dict) -> list[dict]:
    return [f for f in report["findings"] if f["check"] == "numerics"]


def test_healthy_cluster_has_no_numerics_finding(ns_cluster, tmp_path):
    done, report = preflight(ns_cluster, tmp_path, 29771, None)
    assert done.returncode == 0, done.stdout + done.stderr
    assert numerics_findings(report) == []
    for rank in report["ranks"]:
        products = rank["numerics"]["products"]
        assert set(products) == {"fp32", "bf16"}
        # every rank gave one digest per dtype, and the same one as every other rank
        assert all(len(p["digests"]) == 1 for p in products.values())
        assert all(entry["wrong"] == 0 for entry in rank["numerics"]["all_reduce"])
    for dtype in ("fp32", "bf16"):
        assert len({next(iter(r["numerics"]["products"][dtype]["digests"]))
                    for r in report["ranks"]}) == 1


@pytest.mark.parametrize("every,nan_at,port", [(1, None, 29772), (3, None, 29773),
                                               (50, None, 29774), (None, 4, 29775)],
                         ids=["every-product", "every-3rd", "every-50th", "nan-once"])
def test_wrong_products_name_exactly_that_host_and_rank(ns_cluster, tmp_path, every, nan_at,
                                                        port):
    plant = wrong_matmul_site(tmp_path / "site", every=every, nan_at=nan_at,
                              local_rank=BAD_LOCAL_RANK)
    junit, prom = tmp_path / "report.xml", tmp_path / "report.prom"
    done, report = preflight(ns_cluster, tmp_path, port, plant, "--skip", "consistency",
                             "--junit", str(junit), "--prom", str(prom))
    assert done.returncode == 1, done.stdout + done.stderr
    assert report["verdict"] == "fail"
    found = numerics_findings(report)
    assert [(f["host"], f["rank"], f["severity"]) for f in found] == [
        (BAD_HOST, BAD_RANK, "error")], found
    message = found[0]["message"]
    assert f"rank {BAD_RANK} on {BAD_HOST} (cpu) computes wrong" in message
    assert "differs from its 5 peers bit for bit" in message and "RMA if it repeats" in message
    if nan_at is not None:
        assert "NaN or Inf" in message and "fp32 products wrong in 1 of" in message
    if every in (1, 3):  # every repetition of both dtypes has a spoiled product
        for dtype in ("fp32", "bf16"):
            reps = next(r for r in report["ranks"]
                        if r["rank"] == BAD_RANK)["numerics"]["products"][dtype]["reps"]
            assert f"{dtype} products wrong in {reps} of {reps} repetitions" in message
    assert "numerics" in done.stdout  # the table's findings
    # the machine outputs carry it: a failed testcase for that rank, a 0 sample for that host
    cases = ElementTree.parse(junit).getroot().iter("testcase")
    failed = [c.get("name") for c in cases if c.find("failure") is not None
              and c.get("classname") == "ddpcheck.preflight.numerics"]
    assert failed == [f"{BAD_HOST} rank {BAD_RANK}"]
    # ... and what to do: in the JUnit failure's text and the --prom finding
    failure = next(c for c in ElementTree.parse(junit).getroot().iter("testcase")
                   if c.get("classname") == "ddpcheck.preflight.numerics"
                   and c.find("failure") is not None).find("failure")
    assert "dcgmi diag" in failure.text or "field diagnostics" in failure.text
    assert "RMA if it repeats" in failure.text
    [info] = [line for line in prom.read_text().splitlines()
              if line.startswith("ddpcheck_finding_info{") and 'check="numerics"' in line]
    assert f'host="{BAD_HOST}",rank="{BAD_RANK}"' in info and "RMA if it repeats" in info
    assert f'ddpcheck_check_ok{{command="preflight",check="numerics",host="{BAD_HOST}"}} 0' in (
        prom.read_text())


@pytest.mark.parametrize("mode,local_rank,port,words", [
    ("send", 1, 29776, "rank 3 on h2: its data went wrong in an all_reduce of known integers: "
                       "every rank received a wrong sum"),
    ("receive", 0, 29777, "the data went wrong between rank 1 on h1 and rank 2 on h2")])
def test_a_wrong_all_reduce_names_whose_data_or_which_link(ns_cluster, tmp_path, mode,
                                                           local_rank, port, words):
    plant = wrong_all_reduce_site(tmp_path / "site", mode, local_rank=local_rank)
    done, report = preflight(ns_cluster, tmp_path, port, plant, "--skip", "consistency")
    assert done.returncode == 1, done.stdout + done.stderr
    found = numerics_findings(report)
    rank = 1 * SLOTS + local_rank
    assert [(f["host"], f["rank"], f["severity"]) for f in found] == [
        (BAD_HOST, rank, "error")], found
    assert words in found[0]["message"], found[0]["message"]
    if mode == "send":
        assert "off by exactly rank 3's share" in found[0]["message"]
    else:
        assert "5 other rank(s) received the right result" in found[0]["message"]
