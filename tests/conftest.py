"""Shared fixtures: the engines the namespace conformance suite runs against."""

from __future__ import annotations

import itertools
import os
import re
from dataclasses import dataclass

import pytest

from dfs.client.meta import MetaClient, SyncMetaClient
from dfs.common.ids import ROOT_INO

_counter = itertools.count()


@dataclass
class NS:
    c: SyncMetaClient
    top: int
    engine: str = "memory"

    def run(self, coro):
        return self.c.run(coro)


def _engines() -> list[str]:
    wanted = os.environ.get("DFS_TEST_ENGINES", "memory,cluster")
    return [e for e in wanted.split(",") if e]


@pytest.fixture(params=_engines())
def ns(request):
    if request.param == "memory":
        from dfs.meta.local import LocalEngine

        c = SyncMetaClient(lambda: MetaClient(LocalEngine(3)))
        try:
            top = c.mkdir(ROOT_INO, "t").ino
            yield NS(c, top)
        finally:
            c.close()
    else:
        cluster = request.getfixturevalue("shared_cluster")
        c = cluster.client()
        try:
            label = re.sub(r"[^A-Za-z0-9_.-]", "_", request.node.name)[:100]
            top = c.mkdir(ROOT_INO, f"t{next(_counter)}-{label}").ino
            yield NS(c, top, "cluster")
        finally:
            c.close()


@pytest.fixture
def make_cluster(tmp_path):
    """``make_cluster(**LocalCluster options)``: a started cluster in this test's folder; every
    cluster made is stopped when the test ends, passed or failed."""
    from dfs.testing.cluster import ClusterFactory

    f = ClusterFactory(str(tmp_path))
    try:
        yield f.make
    finally:
        f.close()


@pytest.fixture(scope="module")
def module_clusters(tmp_path_factory):
    """The factory of clusters one test module shares (stopped after its last test)."""
    from dfs.testing.cluster import ClusterFactory

    f = ClusterFactory(str(tmp_path_factory.mktemp("module")))
    try:
        yield f
    finally:
        f.close()


@pytest.fixture(scope="session")
def session_clusters(tmp_path_factory):
    from dfs.testing.cluster import ClusterFactory

    f = ClusterFactory(str(tmp_path_factory.mktemp("clusters")))
    try:
        yield f
    finally:
        f.close()


@pytest.fixture(scope="session")
def shared_cluster(session_clusters):
    """One real cluster (mgmt + 2 shards x 3 replicas, separate processes) for the session."""
    return session_clusters.make("cluster", shards=2, replicas=3)


@pytest.fixture(scope="session")
def data_cluster(session_clusters):
    """A real cluster with data: 2 shards x 3 replicas, 3 data servers, chains of 3."""
    return session_clusters.make("datacluster", shards=2, replicas=3, mgmt_replicas=1, data_servers=3,
                                 chain_replicas=3)
