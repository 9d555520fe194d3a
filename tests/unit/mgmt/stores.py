"""A cluster-map store fed one command per entry, as mgmt's Raft host feeds it, and the
cluster files its tests start from."""

from __future__ import annotations

import msgpack

from dfs.common.config import (
    ClusterConfig,
    DataServerConfig,
    ReplicaAddr,
    ShardConfig,
    TargetConfig,
)
from dfs.testing.keys import raft_password
from dfs.mgmt.server import map_from_config
from dfs.mgmt.store import MgmtStore


def cfg(servers: int, per: int, replicas: int = 3) -> ClusterConfig:
    r = ReplicaAddr(0, "127.0.0.1:1", "127.0.0.1:2")
    data = tuple(DataServerConfig(s, f"127.0.0.1:{9000 + s}",
                                  tuple(TargetConfig(s * per + t + 1, f"/d{s}/t{t}") for t in range(per)))
                 for s in range(servers))
    return ClusterConfig("c", raft_password(), (r,), (ShardConfig(0, (r,)),), data=data, chain_replicas=replicas)


class Mgmt:
    """A store fed one command per entry, as the Raft host would."""

    def __init__(self, c: ClusterConfig) -> None:
        self.s = MgmtStore(None)
        self.log: list[bytes] = []
        assert self.do("init", map_from_config(c)) == [0, 1]

    def do(self, *cmd):
        raw = msgpack.packb(list(cmd))
        self.log.append(raw)
        return msgpack.unpackb(self.s.apply(self.s.applied_index() + 1, [raw])[0])

    @property
    def map(self) -> dict:
        return self.s.cluster_map()

    def chain(self, i: int) -> dict:
        return self.map["chains"][i]

    def state(self, tid: int) -> str:
        return self.map["targets"][tid]["state"]

    def chains_of(self, tid: int) -> list[dict]:
        return [c for c in self.map["chains"] if tid in c["members"]]
