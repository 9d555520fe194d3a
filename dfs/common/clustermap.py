"""The cluster map as clients and servers hold it: shards and their replicas, mgmt,
data targets, the chain table, snapshots, the epoch (mgmt's state machine,
dfs/mgmt/store.py, is where it is made; ``from_pb`` reads the form mgmt sends).

Imports: dfs.common and the generated stubs only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dfs._proto import meta_pb2 as pb


@dataclass(frozen=True, slots=True)
class TargetInfo:
    """A data target as mgmt sees it; state: "serving" | "syncing" | "offline"."""

    id: int
    server: int
    address: str  # the owning data server's data-plane host:port
    state: str
    total: int = 0
    free: int = 0


@dataclass(frozen=True, slots=True)
class ChainInfo:
    """A replication chain. ``targets``: the serving members, head -> tail;
    ``syncing``: members being resynced (they follow the tail, serve no reads);
    ``members``: the configured targets in configured order. ``id`` is the
    chain's position in the chain table."""

    id: int
    version: int
    targets: tuple[int, ...]
    syncing: tuple[int, ...] = ()
    members: tuple[int, ...] = ()

    @property
    def head(self) -> int | None:
        return self.targets[0] if self.targets else None

    @property
    def tail(self) -> int | None:
        return self.targets[-1] if self.targets else None


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    """A snapshot in mgmt's registry. ``epoch``: its number (it holds every change
    tagged ``<= epoch``); ``state``: "creating" | "ready" | "deleting";
    ``exclusive``/``shared``: bytes of the chunk versions the data servers keep
    for it that only it reads / that another snapshot reads too, summed over
    every target (replicas count each), from their last heartbeats."""

    epoch: int
    name: str
    root: int
    path: str
    state: str
    created: int = 0
    exclusive: int = 0
    shared: int = 0


class ClusterMap:
    """What a client knows of the cluster: shard -> replica gRPC addresses, the
    data targets and the chain table, the epoch; and for snapshots the data
    servers' write epoch and the snapshot registry."""

    def __init__(self, epoch: int, shards: list[list[str]], mgmt: list[str],
                 targets: dict[int, TargetInfo] | None = None, chains: list[ChainInfo] | None = None,
                 data_epoch: int = 1, snapshots: dict[int, SnapshotInfo] | None = None,
                 cluster_id: str = "") -> None:
        self.epoch = epoch
        self.cluster_id = cluster_id  # the cluster's name (cluster.toml), what a machine's caches are kept by
        self.shards = shards
        self.mgmt = mgmt
        self.targets: dict[int, TargetInfo] = targets or {}
        self.chains: list[ChainInfo] = chains or []
        self.data_epoch = data_epoch
        self.snapshots: dict[int, SnapshotInfo] = snapshots or {}
        # the credentials the map was fetched with: the data plane shows them to the map's servers
        self.auth: Any = None  # dfs.wire.auth.Credentials the map was fetched with

    @classmethod
    def from_pb(cls, m: pb.ClusterMap) -> ClusterMap:
        shards = [[r.address for r in sorted(s.replicas, key=lambda r: r.id)] for s in sorted(m.shards, key=lambda s: s.shard)]
        targets = {t.id: TargetInfo(t.id, t.server, t.address, t.state, t.total, t.free) for t in m.targets}
        chains = [ChainInfo(c.id, c.version, tuple(c.serving), tuple(c.syncing), tuple(c.members))
                  for c in sorted(m.chains, key=lambda c: c.id)]
        snaps = {s.epoch: SnapshotInfo(s.epoch, s.name, s.root, s.path, s.state, s.created, s.exclusive, s.shared)
                 for s in m.snapshots}
        return cls(m.epoch, shards, [r.address for r in m.mgmt], targets, chains, m.data_epoch or 1, snaps,
                   m.cluster_id)

    @property
    def live_snapshots(self) -> tuple[int, ...]:
        """The snapshots the data servers keep chunk versions for (the ready ones), ascending."""
        return tuple(sorted(s for s, x in self.snapshots.items() if x.state == "ready"))

    def snapshot_gone(self, epoch: int, created: int) -> bool:
        """Whether snapshot ``epoch`` made at ``created`` (ns) is known to be gone: older than
        the data epoch (so mgmt registered it, or never made it) and not in the registry as
        that snapshot. What a machine's caches keep of such a snapshot is never read again."""
        s = self.snapshots.get(epoch)
        return epoch < self.data_epoch and (s is None or s.created != created)
