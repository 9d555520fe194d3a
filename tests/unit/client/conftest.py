"""The two clients the library's tests run on (through their own ``fs`` fixtures): the
in-process engine (MetaClient(LocalEngine(3)) + MemoryChunks) and the session's real
``data_cluster``; one of each per module."""

from __future__ import annotations

import pytest

import dfs
from dfs.client.api import AsyncClient, Client
from dfs.client.file import MemoryChunks
from dfs.client.meta import MetaClient
from dfs.common.records import ROOT


@pytest.fixture(scope="module")
def memory_client():
    from dfs.meta.local import LocalEngine

    c = Client(lambda: AsyncClient(MetaClient(LocalEngine(3), ROOT), MemoryChunks()))
    yield c
    c.close()


@pytest.fixture(scope="module")
def cluster_client(data_cluster):
    c = dfs.connect(mgmt=data_cluster.mgmt_addresses, uid=0, gid=0, groups=())
    yield c
    c.close()
