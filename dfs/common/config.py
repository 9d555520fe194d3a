"""The cluster file: one TOML document that every dfs process and client reads.

    cluster_id = "c1"
    raft_password = "..."          # encrypts and authenticates Raft peer traffic

    [[mgmt]]                       # the cluster-map Raft group (1, 3 or 5 replicas)
    id = 0
    address = "127.0.0.1:7000"     # gRPC, for clients and servers
    raft = "127.0.0.1:7100"        # Raft peers only (cluster network)

    [[shards]]                     # metadata shards, each a Raft group
    id = 0
    [[shards.replicas]]
    id = 0
    address = "127.0.0.1:7010"
    raft = "127.0.0.1:7110"

    [raft]                         # optional tuning
    election_timeout = [0.4, 0.8]
    group_commit = true
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field

import tomli_w


@dataclass(frozen=True, slots=True)
class ReplicaAddr:
    id: int
    address: str
    raft: str


@dataclass(frozen=True, slots=True)
class ShardConfig:
    id: int
    replicas: tuple[ReplicaAddr, ...]


@dataclass(frozen=True)
class RaftOptions:
    election_timeout: tuple[float, float] = (0.4, 0.8)
    heartbeat: float = 0.1
    leader_fallback_timeout: float = 1.0
    group_commit: bool = True
    max_batch: int = 1024
    max_inflight: int = 2
    log_compaction_min_entries: int = 20000
    log_compaction_min_time: float = 600.0


@dataclass(frozen=True)
class ClusterConfig:
    cluster_id: str
    raft_password: str
    mgmt: tuple[ReplicaAddr, ...]
    shards: tuple[ShardConfig, ...]
    raft: RaftOptions = field(default_factory=RaftOptions)

    @property
    def internal_token(self) -> str:
        """What shard servers show each other for internal (two-phase) operations."""
        import hashlib
        import hmac

        return hmac.new(self.raft_password.encode(), b"dfs-internal-ops", hashlib.sha256).hexdigest()

    @property
    def nshards(self) -> int:
        return len(self.shards)

    def shard(self, sid: int) -> ShardConfig:
        return self.shards[sid]

    def to_dict(self) -> dict:
        def rep(r: ReplicaAddr) -> dict:
            return {"id": r.id, "address": r.address, "raft": r.raft}

        o = self.raft
        return {
            "cluster_id": self.cluster_id,
            "raft_password": self.raft_password,
            "mgmt": [rep(r) for r in self.mgmt],
            "shards": [{"id": s.id, "replicas": [rep(r) for r in s.replicas]} for s in self.shards],
            "raft": {
                "election_timeout": list(o.election_timeout),
                "heartbeat": o.heartbeat,
                "leader_fallback_timeout": o.leader_fallback_timeout,
                "group_commit": o.group_commit,
                "max_batch": o.max_batch,
                "max_inflight": o.max_inflight,
                "log_compaction_min_entries": o.log_compaction_min_entries,
                "log_compaction_min_time": o.log_compaction_min_time,
            },
        }

    @classmethod
    def from_dict(cls, d: dict) -> ClusterConfig:
        def rep(x: dict) -> ReplicaAddr:
            return ReplicaAddr(int(x["id"]), str(x["address"]), str(x["raft"]))

        shards = tuple(ShardConfig(int(s["id"]), tuple(rep(r) for r in s["replicas"])) for s in d["shards"])
        if [s.id for s in shards] != list(range(len(shards))):
            raise ValueError("shard ids must be 0..S-1 in order")
        for s in shards:
            if len(s.replicas) not in (1, 3, 5):
                raise ValueError(f"shard {s.id}: 1, 3 or 5 replicas")
        r = d.get("raft", {})
        opts = RaftOptions(**{k: (tuple(v) if k == "election_timeout" else v) for k, v in r.items()})
        return cls(str(d["cluster_id"]), str(d["raft_password"]), tuple(rep(m) for m in d["mgmt"]), shards, opts)

    def save(self, path: str) -> None:
        with open(path, "wb") as f:
            tomli_w.dump(self.to_dict(), f)

    @classmethod
    def load(cls, path: str) -> ClusterConfig:
        with open(path, "rb") as f:
            return cls.from_dict(tomllib.load(f))
