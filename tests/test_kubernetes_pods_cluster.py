"""launch/kubernetes/: the pods do what the manifests say, run as the pods would run them.

There is no Kubernetes here, so each manifest's pods are run by hand: tests/podenv.py builds
every pod from the manifest (for 3 nodes of 2 ranks, edited where docs/kubernetes.md says to
edit it) with the environment its operator and the kubelet give it (``PET_*`` for the
PyTorchJob and the TrainJob; ``JOB_COMPLETION_INDEX`` and the downward API's coordinator
annotation for the JobSet), and each pod runs on its own network-namespace host with no sshd
(nothing reaches a host by ssh), the manifest's own command lines as they are: init containers
one after the other, each to success, then the containers, as the kubelet does. The
substitutions, since there is no cluster: no image is pulled (the pods find this checkout's
ddpcheck and torch on PATH, and get a private TMPDIR as a container has its own /tmp); the
cluster DNS is every host's /etc/hosts naming every pod; and the training a pod starts after
the preflight, ``torchrun ...``, is a recorder on PATH that writes its arguments to a file
(ddpcheck starts its own probe's torchrun as ``python -m ddpcheck.remote.torchrun``, never by
that name). So a test sees whether the training would have started, on which pods, with what.

Healthy: every pod exits 0, and the training starts on every pod, placed where torchrun needs
it. One pod's GLOO_SOCKET_IFNAME names an interface its host lacks: every pod exits non-zero,
the training starts on none. One pod never starts (its deadlines lowered, as a user may): the
others exit 3 and node 0 names node rank 2. No process is left on any host after any of them.

Skipped, with the reason, until ``ddpcheck preflight --in-job`` is here
(``ddpcheck.config.jobenv``) and tests/nscluster.py builds hosts without sshd.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional

import pytest

import podenv

from conftest import started_cluster
from nscluster import ETC_NETNS

NNODES, NPROC = 3, 2
POD_DEADLINE_S = 300  # a pod's containers, all of them, on a loaded machine; never a pass/fail
MASTER_PORT = 29500

pytestmark = pytest.mark.cluster

RECORDER = """#!/bin/sh
# the training's torchrun, replaced: record that it started, and with what
printf '%s\\n' "$@" > {marker}
exit 0
"""


@dataclass
class PodResult:
    """What one pod did: each container's exit code (None: it did not run), its log."""

    pod: podenv.PodRun
    exit_codes: dict[str, Optional[int]]
    log: Path
    marker: Path

    @property
    def training_args(self) -> Optional[list[str]]:
        return self.marker.read_text().splitlines() if self.marker.exists() else None

    @property
    def failed_code(self) -> int:
        """The pod's exit code as Kubernetes reports it: its first failed container's."""
        return next((code for code in self.exit_codes.values() if code), 0)


@pytest.fixture(scope="module")
def pod_hosts(tmp_path_factory):
    """3 namespace hosts with no sshd; every pod name of every manifest resolves to the host of
    its node rank (the cluster DNS)."""
    for cluster in started_cluster(NNODES, tmp_path_factory, "k8s_pods", sshd=False):
        names: dict[str, str] = {}
        for path in podenv.manifest_paths():
            for pod in podenv.pods(podenv.scaled(podenv.load(path), NNODES, NPROC)):
                for name in pod.dns_names:
                    names[name] = cluster.hosts[pod.node_rank].address
        lines = "".join(f"{address}\t{name}\n" for name, address in sorted(names.items()))
        for host in cluster.hosts:
            with open(ETC_NETNS / host.netns / "hosts", "a") as hosts_file:
                hosts_file.write(lines)
        yield cluster


def _base_env(tmp: Path, podbin: Path) -> dict[str, str]:
    """What the image gives every container: PATH (the recorder first, then this checkout's
    interpreter and the system's), a private TMPDIR; PYTHONPATH passed on when set."""
    env = {"PATH": os.pathsep.join([str(podbin), str(Path(sys.executable).parent),
                                    os.environ.get("PATH", "/usr/bin:/bin")]),
           "HOME": "/root", "LANG": "C.UTF-8", "TMPDIR": str(tmp)}
    if os.environ.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return env


def _run_pod(cluster, pod: podenv.PodRun, workdir: Path,
             env_override: Mapping[str, str]) -> PodResult:
    """The pod's containers on the host of its node rank, as the kubelet runs them."""
    workdir.mkdir(mode=0o700)
    (workdir / "tmp").mkdir(mode=0o700)
    podbin = workdir / "bin"
    podbin.mkdir(mode=0o700)
    marker = workdir / "training-started"
    recorder = podbin / "torchrun"
    recorder.write_text(RECORDER.format(marker=marker))
    recorder.chmod(0o700)
    log = workdir / "log"
    codes: dict[str, Optional[int]] = {c.name: None for c in pod.init_containers + pod.containers}
    host = cluster.hosts[pod.node_rank]
    with open(log, "w") as out:
        for container in pod.init_containers + pod.containers:
            if container.init is False and any(codes[c.name] for c in pod.init_containers):
                break  # an init container failed: the pod fails, its containers never start
            env = {**_base_env(workdir / "tmp", podbin), **container.env, **env_override}
            out.write(f"==> {container.name}: {' '.join(container.argv)}\n")
            out.flush()
            proc = cluster.popen_in(host, list(container.argv), env=env, cwd=workdir,
                                    stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
            try:
                codes[container.name] = proc.wait(timeout=POD_DEADLINE_S)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                codes[container.name] = proc.wait()
                out.write(f"==> {container.name}: killed after {POD_DEADLINE_S} s\n")
            if codes[container.name]:
                break
    return PodResult(pod, codes, log, marker)


def _run_gang(cluster, manifest: str, workdir: Path,
              env_overrides: Mapping[int, Mapping[str, str]] = {},
              never_started: frozenset[int] = frozenset(),
              deadlines: Optional[tuple[int, int]] = None) -> list[PodResult]:
    """Every pod of the manifest (3 nodes of 2 ranks) at once, but those of the node ranks in
    ``never_started``; ``deadlines``: the preflight's (--timeout, --join-timeout), lowered."""
    docs = podenv.scaled(podenv.load(podenv.MANIFESTS / manifest), NNODES, NPROC)
    if deadlines:
        docs = podenv.with_deadlines(docs, *deadlines)
    pods = podenv.pods(docs)
    assert [p.node_rank for p in pods] == list(range(NNODES))
    pods = [p for p in pods if p.node_rank not in never_started]
    results: list[Optional[PodResult]] = [None] * len(pods)

    def one(i: int) -> None:
        results[i] = _run_pod(cluster, pods[i], workdir / pods[i].name,
                              env_overrides.get(pods[i].node_rank, {}))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(pods))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(results), "a pod's runner raised"
    return results  # type: ignore[return-value]


def _logs(results: list[PodResult]) -> str:
    return "\n".join(f"--- {r.pod.name} {r.exit_codes}\n{r.log.read_text()[-4000:]}"
                     for r in results)


def _left_running(cluster) -> dict[str, list[int]]:
    deadline = time.monotonic() + 10  # the kernel reaps the last ranks' exits
    while True:
        left = {h.name: cluster.pids_in(h) for h in cluster.hosts}
        if not any(left.values()) or time.monotonic() > deadline:
            return {name: pids for name, pids in left.items() if pids}
        time.sleep(0.2)


@pytest.mark.parametrize("manifest", ["pytorchjob.yaml", "trainjob.yaml", "jobset.yaml"])
def test_a_healthy_gang_passes_and_the_training_starts_on_every_pod(
        pod_hosts, tmp_path, manifest: str) -> None:
    results = _run_gang(pod_hosts, manifest, tmp_path)
    logs = _logs(results)
    for r in results:
        assert set(r.exit_codes.values()) == {0}, logs
        args = r.training_args
        assert args is not None, f"{r.pod.name}: the training did not start\n{logs}"
        assert args[-1] == "/workspace/train.py"
        if "--node-rank" in args:  # the JobSet passes torchrun its place as flags
            assert args[args.index("--node-rank") + 1] == str(r.pod.node_rank)
            assert args[args.index("--nnodes") + 1] == str(NNODES)
            assert args[args.index("--master-addr") + 1] == results[0].pod.dns_names[0]
    assert _left_running(pod_hosts) == {}


@pytest.mark.parametrize("manifest", ["pytorchjob.yaml", "trainjob.yaml", "jobset.yaml"])
def test_a_missing_interface_on_one_pod_fails_every_pod_and_starts_no_training(
        pod_hosts, tmp_path, manifest: str) -> None:
    results = _run_gang(pod_hosts, manifest, tmp_path,
                        {2: {"GLOO_SOCKET_IFNAME": "eth9"}})
    logs = _logs(results)
    for r in results:
        assert r.failed_code != 0, f"{r.pod.name} passed a gang with a missing interface\n{logs}"
        assert r.failed_code in (1, 3), logs  # the verdict's code: a check failed / unchecked
        assert r.training_args is None, f"{r.pod.name}: the training started\n{logs}"
    assert "eth9" in results[0].log.read_text(), logs  # node 0's report names it
    assert _left_running(pod_hosts) == {}


@pytest.mark.parametrize("manifest", ["pytorchjob.yaml", "trainjob.yaml", "jobset.yaml"])
def test_a_pod_that_never_starts_is_named_and_no_training_starts(
        pod_hosts, tmp_path, manifest: str) -> None:
    """Node rank 2's pod is never scheduled. With the deadlines lowered (--timeout 90,
    --join-timeout 15, as docs/kubernetes.md says a cached, gang-scheduled job may), the other
    pods stop at the join deadline, not torch's: exit 3, node 0 names node rank 2."""
    results = _run_gang(pod_hosts, manifest, tmp_path, never_started=frozenset({2}),
                        deadlines=(90, 15))
    logs = _logs(results)
    assert [r.pod.node_rank for r in results] == [0, 1]
    for r in results:
        assert r.failed_code == 3, f"{r.pod.name}: not 'a node never joined'\n{logs}"
        assert r.training_args is None, f"{r.pod.name}: the training started\n{logs}"
    assert "node rank 2" in results[0].log.read_text(), logs
    assert _left_running(pod_hosts) == {}
