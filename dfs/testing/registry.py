"""mgmt's snapshot registry for the in-process engine: the cluster-map commands of
dfs/mgmt/store.py applied to a map in memory, as mgmt's Raft group applies them.

    eng = LocalEngine(3, registry=MemoryRegistry())
"""

from __future__ import annotations

import copy

from dfs.common import errors as err
from dfs.common.clustermap import ClusterMap
from dfs.mgmt.server import map_to_pb
from dfs.mgmt.store import COMMANDS, CommandError


class MemoryRegistry:
    def __init__(self) -> None:
        self.m = {"epoch": 1, "cluster_id": "memory", "mgmt": [], "shards": [], "targets": {}, "chains": [],
                  "data_epoch": 1, "snap_next": 1, "snapshots": {}, "snap_usage": {}}

    async def command(self, cmd: list) -> list:
        new = copy.deepcopy(self.m)
        try:
            changed, bump, *extra = COMMANDS[cmd[0]](new, *cmd[1:])
        except CommandError as e:
            raise err.error_for(getattr(e, "errno", None) or 22, str(e)) from None
        if changed:
            if bump:
                new["epoch"] += 1
            self.m = new
        return extra

    def map(self) -> ClusterMap:
        return ClusterMap.from_pb(map_to_pb(self.m))

    async def snapshots(self) -> dict:
        return self.map().snapshots
