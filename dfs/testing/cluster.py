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
"""

from __future__ import annotations

from dfs.client.meta import MetaClient, SyncMetaClient
from dfs.local.cluster import LocalCluster as _Launcher
from dfs.local.procs import Proc, free_ports
from dfs.rpc.transport import GrpcTransport
from dfs.testing.replicas import ReplicaFiles

__all__ = ["LocalCluster", "Proc", "free_ports"]


class LocalCluster(_Launcher, ReplicaFiles):
    async def aclient(self) -> MetaClient:
        return MetaClient(await GrpcTransport(self.mgmt_addresses, auth=self.credentials).connect())

    def client(self) -> SyncMetaClient:
        return SyncMetaClient(self.aclient)

    def _argv(self, p: Proc) -> list[str]:  # the name older tests use
        return self.argv(p)
