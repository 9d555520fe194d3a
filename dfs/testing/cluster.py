"""The tests' LocalCluster: the production launcher (``dfs.local.cluster``:
real processes on loopback under one folder, kill/restart, replicas, shards
and data servers added) with what only tests need on top:

    c = LocalCluster("/tmp/x", shards=2, replicas=3).start()
    with c.client() as fs: ...              # a SyncMetaClient of the cluster
    c.read_replica(c.leader_of(0), b"P")    # a replica's RocksDB, read-only
    c.pending_records()                     # cross-shard records and locks left
    c.wait_all_converged()

Same constructor and methods as ``dfs.local.cluster.LocalCluster``; ``Proc``
and ``free_ports`` are re-exported for the tests that import them from here.

``ClusterFactory`` is the one way tests make clusters: ``make(**options)``
starts one under the factory's folder, and ``close()`` (the fixtures' teardown)
stops every one it made, whatever the test did (tests/conftest.py's
``make_cluster`` and the session clusters use it).
"""

from __future__ import annotations

import dataclasses
import itertools
import os

from dfs.client.meta import MetaClient, SyncMetaClient
from dfs.local.cluster import LocalCluster as _Launcher
from dfs.local.procs import Proc, free_ports
from dfs.route.shards import GrpcTransport
from dfs.testing.replicas import ReplicaFiles

__all__ = ["ClusterFactory", "LocalCluster", "Proc", "free_ports"]


class LocalCluster(_Launcher, ReplicaFiles):
    async def aclient(self) -> MetaClient:
        return MetaClient(await GrpcTransport(self.mgmt_addresses, auth=self.credentials).connect())

    def client(self) -> SyncMetaClient:
        return SyncMetaClient(self.aclient)

    @property
    def server_credentials(self):
        """What a server shows the data plane: the client token and the internal token (tests
        that play a server's part: snapshot holds, resync listings)."""
        return dataclasses.replace(self.credentials, internal=self.cfg.internal_token)

    def _argv(self, p: Proc) -> list[str]:  # the name older tests use
        return self.argv(p)


class ClusterFactory:
    """Clusters for tests, each in its own folder under ``root``, all stopped by ``close``."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.made: list[LocalCluster] = []
        self._n = itertools.count()

    def make(self, name: str | None = None, *, start: bool = True, timeout: float = 90.0, **options) -> LocalCluster:
        """A cluster with ``LocalCluster``'s ``options``, started unless ``start`` is False
        (the same ``name`` again: the same folder, hence the same cluster file)."""
        c = LocalCluster(os.path.join(self.root, name or f"c{next(self._n)}"), **options)
        self.made.append(c)
        if start:
            c.start(timeout=timeout)
        return c

    def close(self) -> None:
        for c in reversed(self.made):
            c.stop()
        self.made.clear()
