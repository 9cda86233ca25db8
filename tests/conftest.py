"""Shared pytest fixtures.  ``ns_cluster``: a real 4-host cluster of network namespaces."""

from __future__ import annotations

import os

import pytest

try:
    from nscluster import NamespaceCluster, cluster_available
except ImportError:  # tests/ imported as a package
    from tests.nscluster import NamespaceCluster, cluster_available


def pytest_configure(config):
    config.addinivalue_line("markers", "cluster: needs the network-namespace cluster (root, ip, sshd)")


def started_cluster(hosts: int, tmp_path_factory, name: str, sshd: bool = True):
    """Yield a started NamespaceCluster of ``hosts`` hosts (h1..hN), stopped afterwards: the
    body of every cluster fixture (``sshd=False``: hosts with no sshd, as pods are).

    Skipped where namespaces are unavailable, except under CI=true, where that is a failure."""
    ok, reason = cluster_available()
    if not ok:
        if os.environ.get("CI") == "true":
            pytest.fail(f"namespace cluster unavailable under CI: {reason}")
        pytest.skip(f"namespace cluster unavailable: {reason}")
    cluster = NamespaceCluster(hosts, tmp_path_factory.mktemp(name), sshd=sshd)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def ns_cluster(tmp_path_factory):
    """A started 4-host NamespaceCluster (h1..h4), stopped at the end of the session."""
    yield from started_cluster(4, tmp_path_factory, "ns_cluster")
