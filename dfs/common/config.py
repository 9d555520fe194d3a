"""The cluster file: one TOML document that every dfs process and client reads.

    cluster_id = "c1"
    raft_password = "..."          # encrypts and authenticates Raft peer traffic

    [[mgmt]]                       # the cluster-map Raft group (1, 3 or 5 replicas)
    id = 0
    address = "127.0.0.1:7000"     # gRPC, for clients and servers
    raft = "127.0.0.1:7100"        # Raft peers only (cluster network)
    metrics = "127.0.0.1:9100"     # optional: Prometheus metrics over HTTP (absent: none)

    [[shards]]                     # metadata shards, each a Raft group
    id = 0
    [[shards.replicas]]
    id = 0
    address = "127.0.0.1:7010"
    raft = "127.0.0.1:7110"
    metrics = "127.0.0.1:9110"     # optional, as for mgmt

    [[data]]                       # data servers (optional)
    id = 0
    address = "127.0.0.1:7200"     # data plane host:port
    metrics = "127.0.0.1:9200"     # optional, as for mgmt
    [[data.targets]]               # one directory on a local disk each
    id = 1                         # cluster-wide unique u32
    path = "/srv/dfs/t1"

    chain_replicas = 3             # targets per chain (capped at the number of data servers)
    target_timeout = 3.0           # seconds without a heartbeat before mgmt takes a target out
    scrub_interval = 3600.0        # data servers: seconds between scrub passes of a target
    scrub_rate = 67108864          # data servers: bytes/s a scrub pass reads (0: unlimited)
    orphan_scan_interval = 600.0   # data servers: seconds between orphan scans of a target
    orphan_grace = 3600.0          # data servers: an orphan scan leaves chunks younger than this (s)

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
    metrics: str | None = None  # Prometheus metrics host:port (None: no endpoint)


@dataclass(frozen=True, slots=True)
class ShardConfig:
    id: int
    replicas: tuple[ReplicaAddr, ...]


@dataclass(frozen=True, slots=True)
class TargetConfig:
    id: int  # cluster-wide unique u32
    path: str  # the target's directory on the data server's machine


@dataclass(frozen=True, slots=True)
class DataServerConfig:
    id: int
    address: str  # data plane host:port
    targets: tuple[TargetConfig, ...]
    metrics: str | None = None  # Prometheus metrics host:port (None: no endpoint)


def _check_hostport(what: str, addr: str) -> None:
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{what}: address must be host:port, not {addr!r}")


def _metrics(x: dict) -> str | None:
    v = x.get("metrics")
    if v is not None and not isinstance(v, str):
        raise ValueError(f"metrics must be a host:port string, not {v!r}")
    return v


def _as_int(what: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"{what} must be an integer, not {v!r}")
    return v


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
    data: tuple[DataServerConfig, ...] = ()
    chain_replicas: int = 3
    target_timeout: float = 3.0
    scrub_interval: float = 3600.0  # data servers: seconds between scrub passes of a target
    scrub_rate: int = 64 << 20  # data servers: bytes/s a scrub pass reads; 0 = unlimited
    orphan_scan_interval: float = 600.0  # data servers: seconds between orphan scans of a target
    orphan_grace: float = 3600.0  # data servers: chunks younger than this are never orphan-scanned away

    def __post_init__(self) -> None:
        self._check_metrics()
        servers: set[int] = set()
        targets: set[int] = set()
        for d in self.data:
            if not isinstance(d.id, int) or d.id < 0:
                raise ValueError(f"data server id must be a non-negative int, not {d.id!r}")
            if d.id in servers:
                raise ValueError(f"data server id {d.id} appears twice")
            servers.add(d.id)
            _check_hostport(f"data server {d.id}", d.address)
            if not d.targets:
                raise ValueError(f"data server {d.id}: at least one [[data.targets]]")
            for t in d.targets:
                if not isinstance(t.id, int) or not 0 <= t.id < 2**32:
                    raise ValueError(f"data server {d.id}: target id must be a u32, not {t.id!r}")
                if t.id in targets:
                    raise ValueError(f"target id {t.id} appears twice (target ids are cluster-wide)")
                targets.add(t.id)
                if not t.path:
                    raise ValueError(f"target {t.id}: empty path")
        if not isinstance(self.chain_replicas, int) or not 1 <= self.chain_replicas <= 255:
            raise ValueError(f"chain_replicas must be in 1..255, not {self.chain_replicas!r}")
        if not self.target_timeout > 0:
            raise ValueError(f"target_timeout must be positive, not {self.target_timeout!r}")
        if not self.scrub_interval > 0:
            raise ValueError(f"scrub_interval must be positive, not {self.scrub_interval!r}")
        if isinstance(self.scrub_rate, bool) or not isinstance(self.scrub_rate, int) or self.scrub_rate < 0:
            raise ValueError(f"scrub_rate must be a non-negative integer (bytes/s), not {self.scrub_rate!r}")
        if not self.orphan_scan_interval > 0:
            raise ValueError(f"orphan_scan_interval must be positive, not {self.orphan_scan_interval!r}")
        if not self.orphan_grace >= 0:
            raise ValueError(f"orphan_grace must not be negative, not {self.orphan_grace!r}")

    def _check_metrics(self) -> None:
        seen: dict[str, str] = {}
        named = [(f"mgmt replica {m.id}", m.metrics) for m in self.mgmt]
        named += [(f"shard {s.id} replica {r.id}", r.metrics) for s in self.shards for r in s.replicas]
        named += [(f"data server {d.id}", d.metrics) for d in self.data]
        for what, addr in named:
            if addr is None:
                continue
            if not isinstance(addr, str):  # the cluster file's errors are all ValueErrors
                raise ValueError(f"{what}: metrics must be a host:port string, not {addr!r}")  # noqa: TRY004
            _check_hostport(f"{what} metrics", addr)
            if addr in seen:
                raise ValueError(f"{what}: metrics address {addr} is also {seen[addr]}'s")
            seen[addr] = what

    @property
    def replicas_per_chain(self) -> int:
        """chain_replicas capped at the number of data servers (at least 1)."""
        return max(1, min(self.chain_replicas, len(self.data)))

    def data_server(self, sid: int) -> DataServerConfig:
        for d in self.data:
            if d.id == sid:
                return d
        raise KeyError(f"no data server {sid}")

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
            d = {"id": r.id, "address": r.address, "raft": r.raft}
            if r.metrics is not None:  # TOML has no null: absent means no endpoint
                d["metrics"] = r.metrics
            return d

        def server(x: DataServerConfig) -> dict:
            d = {"id": x.id, "address": x.address}
            if x.metrics is not None:
                d["metrics"] = x.metrics
            d["targets"] = [{"id": t.id, "path": t.path} for t in x.targets]
            return d

        o = self.raft
        d = {
            "cluster_id": self.cluster_id,
            "raft_password": self.raft_password,
            "chain_replicas": self.chain_replicas,
            "target_timeout": self.target_timeout,
            "scrub_interval": self.scrub_interval,
            "scrub_rate": self.scrub_rate,
            "orphan_scan_interval": self.orphan_scan_interval,
            "orphan_grace": self.orphan_grace,
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
        if self.data:
            d["data"] = [server(x) for x in self.data]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ClusterConfig:
        def rep(x: dict) -> ReplicaAddr:
            return ReplicaAddr(int(x["id"]), str(x["address"]), str(x["raft"]), _metrics(x))

        shards = tuple(ShardConfig(int(s["id"]), tuple(rep(r) for r in s["replicas"])) for s in d["shards"])
        if [s.id for s in shards] != list(range(len(shards))):
            raise ValueError("shard ids must be 0..S-1 in order")
        for s in shards:
            if len(s.replicas) not in (1, 3, 5):
                raise ValueError(f"shard {s.id}: 1, 3 or 5 replicas")
        r = d.get("raft", {})
        opts = RaftOptions(**{k: (tuple(v) if k == "election_timeout" else v) for k, v in r.items()})
        data = []
        for x in d.get("data", []):
            if "id" not in x or "address" not in x:
                raise ValueError(f"[[data]] needs id and address: {x!r}")
            tg = []
            for t in x.get("targets", []):
                if "id" not in t or "path" not in t:
                    raise ValueError(f"[[data.targets]] needs id and path: {t!r}")
                tg.append(TargetConfig(_as_int("target id", t["id"]), str(t["path"])))
            data.append(DataServerConfig(_as_int("data server id", x["id"]), str(x["address"]), tuple(tg),
                                         _metrics(x)))
        return cls(str(d["cluster_id"]), str(d["raft_password"]), tuple(rep(m) for m in d["mgmt"]), shards, opts,
                   data=tuple(data), chain_replicas=_as_int("chain_replicas", d.get("chain_replicas", 3)),
                   target_timeout=float(d.get("target_timeout", 3.0)),
                   scrub_interval=float(d.get("scrub_interval", 3600.0)),
                   scrub_rate=_as_int("scrub_rate", d.get("scrub_rate", 64 << 20)),
                   orphan_scan_interval=float(d.get("orphan_scan_interval", 600.0)),
                   orphan_grace=float(d.get("orphan_grace", 3600.0)))

    def save(self, path: str) -> None:
        with open(path, "wb") as f:
            tomli_w.dump(self.to_dict(), f)

    @classmethod
    def load(cls, path: str) -> ClusterConfig:
        with open(path, "rb") as f:
            return cls.from_dict(tomllib.load(f))
