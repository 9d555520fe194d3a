"""A mgmt replica process: the cluster-map Raft group's gRPC edge.

    python -m dfs.mgmt.server --config cluster.toml --replica 0 --data DIR

Any replica answers GetClusterMap from its applied state (the epoch tells the
reader how fresh it is); changes go through the leader. The first leader
initialises the map from the cluster file.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

import grpc
import msgpack

from dfs._proto import meta_pb2 as pb
from dfs._proto import meta_pb2_grpc as pbg
from dfs.common import errors as err
from dfs.common.config import ClusterConfig
from dfs.consensus.raft import RaftHost
from dfs.mgmt.store import MgmtStore

log = logging.getLogger("dfs.mgmt.server")


def map_from_config(cfg: ClusterConfig) -> dict:
    def rep(r):
        return {"id": r.id, "address": r.address, "raft": r.raft}

    return {"cluster_id": cfg.cluster_id, "mgmt": [rep(m) for m in cfg.mgmt],
            "shards": [[rep(r) for r in s.replicas] for s in cfg.shards]}


def map_to_pb(m: dict) -> pb.ClusterMap:
    def rep(r):
        return pb.Replica(id=r["id"], address=r["address"], raft_address=r["raft"])

    return pb.ClusterMap(epoch=m["epoch"], cluster_id=m["cluster_id"], mgmt=[rep(r) for r in m["mgmt"]],
                         shards=[pb.ShardInfo(shard=i, replicas=[rep(r) for r in s]) for i, s in enumerate(m["shards"])])


class MgmtServicer(pbg.MgmtServiceServicer):
    def __init__(self, store: MgmtStore, host: RaftHost, cfg: ClusterConfig) -> None:
        self.store = store
        self.host = host
        self._raft_to_grpc = {m.raft: m.address for m in cfg.mgmt}

    def _leader(self) -> str:
        return self._raft_to_grpc.get(self.host.leader or "", "")

    async def GetClusterMap(self, request, context):
        m = self.store.cluster_map()
        if m is None:
            return pb.GetClusterMapReply(status=err.UNAVAILABLE, leader=self._leader())
        return pb.GetClusterMapReply(status=0, leader=self._leader(), map=map_to_pb(m))

    async def SetClusterMap(self, request, context):
        if not self.host.is_leader:
            return pb.GetClusterMapReply(status=err.NOT_LEADER, leader=self._leader())
        m = request.map
        new = {"cluster_id": m.cluster_id,
               "mgmt": [{"id": r.id, "address": r.address, "raft": r.raft_address} for r in m.mgmt],
               "shards": [[{"id": r.id, "address": r.address, "raft": r.raft_address} for r in s.replicas]
                          for s in sorted(m.shards, key=lambda s: s.shard)]}
        try:
            await self.host.submit(msgpack.packb(["set", new]), timeout=5.0)
        except err.DfsError as e:
            return pb.GetClusterMapReply(status=e.errno, leader=self._leader())
        return await self.GetClusterMap(None, context)

    async def Heartbeat(self, request, context):
        m = self.store.cluster_map()
        return pb.HeartbeatReply(status=0, epoch=m["epoch"] if m else 0, leader=self._leader())


async def _initialise(store: MgmtStore, host: RaftHost, cfg: ClusterConfig) -> None:
    cmd = msgpack.packb(["init", map_from_config(cfg)])
    while store.cluster_map() is None:
        if host.is_leader:
            try:
                await host.submit(cmd, timeout=5.0)
            except err.DfsError as e:
                log.info("map init: %s", e)
        await asyncio.sleep(0.05)


async def serve(cfg: ClusterConfig, replica: int, data: str) -> None:
    me = cfg.mgmt[replica]
    store = MgmtStore(os.path.join(data, "db"))
    o = cfg.raft
    host = RaftHost(store, me.raft, [m.raft for m in cfg.mgmt], os.path.join(data, "raft"),
                    password=cfg.raft_password, election_timeout=tuple(o.election_timeout), heartbeat=o.heartbeat,
                    leader_fallback_timeout=o.leader_fallback_timeout, loop=asyncio.get_running_loop())
    server = grpc.aio.server()
    pbg.add_MgmtServiceServicer_to_server(MgmtServicer(store, host, cfg), server)
    server.add_insecure_port(me.address)
    await server.start()
    init = asyncio.get_running_loop().create_task(_initialise(store, host, cfg))
    log.info("mgmt replica %d serving on %s (raft %s)", replica, me.address, me.raft)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    init.cancel()
    await server.stop(1.0)
    host.close()
    store.kv.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="dfs-mgmt")
    ap.add_argument("--config", required=True)
    ap.add_argument("--replica", type=int, required=True)
    ap.add_argument("--data", required=True)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s mgmt[{a.replica}] %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(ClusterConfig.load(a.config), a.replica, a.data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
