"""A mgmt replica process: the cluster-map Raft group's gRPC edge.

    python -m dfs.mgmt.server --config cluster.toml --replica 0 --data DIR

Any replica answers GetClusterMap from its applied state (the epoch tells the
reader how fresh it is); changes go through the leader. The first leader
initialises the map from the cluster file (shards, mgmt, data targets and
the initial chain table).

Failure detection runs on the leader: data servers send Heartbeat with their
targets' state; the leader remembers when it last heard of each target (in
memory), brings an offline target back (``target_up``), records finished
resyncs (``chain_synced``) and capacity, and a monitor task takes a target
silent for more than ``target_timeout`` seconds out of its chains
(``target_down``). A new leader treats every target as just seen. A heartbeat
is answered only under the leader's Raft read lease: the answer renews the data
server's membership lease (``dfs.data.lease``), which must run out before any
leader can take the target out.

With a client token in the cluster file every call must show it
(``dfs.wire.auth.TokenCheck``); SetClusterMap, Admin, TransferLeader and
Heartbeat also need the internal token (servers and operators with the Raft
password only: a client cannot bring a dead target back or change what the
map says of capacity). A heartbeat's snapshot usage is kept for snapshots the
registry has only, and unknown target ids are remembered (for a one-time log
line) up to ``MAX_UNKNOWN``. With [tls] the port speaks TLS only. Bounds as
every dfs gRPC server (``dfs.wire.limits``); files it creates are its user's
only (umask 077).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import os
import signal
import sys
import time

import grpc
import msgpack

from dfs._proto import meta_pb2 as pb
from dfs._proto import meta_pb2_grpc as pbg
from dfs.common import errors as err
from dfs.common import logs
from dfs.common.config import ClusterConfig
from dfs.common.metrics import Metrics, RequestMetrics, gauge, instrument_raft, task_failures
from dfs.common.tasks import Supervisor
from dfs.consensus.raft import RaftHost
from dfs.mgmt.store import OFFLINE, MgmtStore, build_chains, targets_from_servers
from dfs.wire import limits
from dfs.wire.auth import INTERNAL_HEADER, ServerAuth, shows


log = logging.getLogger("dfs.mgmt.server")


def map_from_config(cfg: ClusterConfig) -> dict:
    def rep(r):
        return {"id": r.id, "address": r.address, "raft": r.raft}

    servers = [(d.id, d.address, [t.id for t in d.targets]) for d in cfg.data]
    return {"cluster_id": cfg.cluster_id, "mgmt": [rep(m) for m in cfg.mgmt],
            "shards": [[rep(r) for r in s.replicas] for s in cfg.shards],
            "targets": targets_from_servers(servers),
            "chains": build_chains([(sid, tids) for sid, _, tids in servers], cfg.chain_replicas)}


def map_to_pb(m: dict) -> pb.ClusterMap:
    def rep(r):
        return pb.Replica(id=r["id"], address=r["address"], raft_address=r["raft"])

    targets = [pb.TargetInfo(id=tid, server=t["server"], address=t["address"], state=t["state"],
                             total=t["total"], free=t["free"]) for tid, t in sorted(m.get("targets", {}).items())]
    chains = [pb.ChainInfo(id=c["id"], version=c["version"], members=c["members"], serving=c["serving"],
                           syncing=c["syncing"]) for c in m.get("chains", [])]
    usage = snapshot_usage(m)
    snaps = [pb.SnapshotInfo(epoch=s, name=x["name"], root=x["root"], path=x["path"], state=x["state"],
                             created=x["created"], exclusive=usage.get(s, (0, 0))[0], shared=usage.get(s, (0, 0))[1])
             for s, x in sorted(m.get("snapshots", {}).items())]
    return pb.ClusterMap(epoch=m["epoch"], cluster_id=m["cluster_id"], mgmt=[rep(r) for r in m["mgmt"]],
                         shards=[pb.ShardInfo(shard=i, replicas=[rep(r) for r in s]) for i, s in enumerate(m["shards"])],
                         targets=targets, chains=chains, data_epoch=m.get("data_epoch", 1), snapshots=snaps)


def snapshot_usage(m: dict) -> dict[int, tuple[int, int]]:
    """Per snapshot: (exclusive, shared) bytes summed over the targets' last reports."""
    out: dict[int, tuple[int, int]] = {}
    for per in m.get("snap_usage", {}).values():
        for s, (ex, sh) in per.items():
            a, b = out.get(s, (0, 0))
            out[s] = (a + ex, b + sh)
    return out


CAPACITY_INTERVAL = 5.0  # at most one capacity record per target per this many seconds (unless new)
MAX_UNKNOWN = 1024  # unknown target ids remembered for their one log line


def _timed(fn):
    """Observe an RPC handler in ``self.requests`` (by method name, result from the reply status)."""
    name = fn.__name__

    @functools.wraps(fn)
    async def wrapper(self, request, context):
        t0 = time.perf_counter()
        rep = await fn(self, request, context)
        if self.requests is not None:
            st = rep.status
            self.requests.observe(name, time.perf_counter() - t0,
                                  "ok" if st == 0 else "not_leader" if st == err.NOT_LEADER else "error")
        return rep

    return wrapper


def map_families(m: dict | None, replicas_per_chain: int) -> list:
    """The cluster map as this replica has it applied (read at scrape time)."""
    if m is None:
        return []
    states: dict[str, int] = {"serving": 0, "syncing": 0, "offline": 0}
    for t in m["targets"].values():
        states[t["state"]] = states.get(t["state"], 0) + 1
    chains = m["chains"]
    snaps = m.get("snapshots", {})
    usage = snapshot_usage(m)
    degraded = sum(1 for c in chains if len(c["serving"]) < replicas_per_chain)
    return [
        gauge("dfs_mgmt_map_epoch", "epoch of the cluster map this replica has applied", m["epoch"]),
        gauge("dfs_mgmt_targets", "data targets in the map, by state", labels=["state"],
              samples=[([k], v) for k, v in sorted(states.items())]),
        gauge("dfs_mgmt_chains", "chains in the chain table", len(chains)),
        gauge("dfs_mgmt_chains_degraded", f"chains with fewer serving targets than {replicas_per_chain}",
              degraded),
        gauge("dfs_mgmt_chains_syncing", "chains with a target being resynced",
              sum(1 for c in chains if c["syncing"])),
        gauge("dfs_mgmt_capacity_bytes", "total bytes of the data targets' file systems (last heartbeats)",
              sum(t["total"] for t in m["targets"].values())),
        gauge("dfs_mgmt_free_bytes", "bytes chunk writes may still use on the data targets (last heartbeats)",
              sum(t["free"] for t in m["targets"].values())),
        gauge("dfs_mgmt_data_epoch", "the data servers' write epoch", m.get("data_epoch", 1)),
        gauge("dfs_mgmt_snapshots", "snapshots in the registry, by state", labels=["state"],
              samples=[([st], sum(1 for x in snaps.values() if x["state"] == st))
                       for st in ("creating", "ready", "deleting")]),
        gauge("dfs_mgmt_snapshot_bytes", "bytes of chunk versions kept for a snapshot over every target "
              "(exclusive: only it reads them; shared: another snapshot too), last heartbeats",
              labels=["snapshot", "kind"],
              samples=[([str(s), kind], v) for s, (ex, sh) in sorted(usage.items()) if s in snaps
                       for kind, v in (("exclusive", ex), ("shared", sh))]),
    ]


class MgmtServicer(pbg.MgmtServiceServicer):
    def __init__(self, store: MgmtStore, host: RaftHost, cfg: ClusterConfig,
                 requests: RequestMetrics | None = None) -> None:
        self.store = store
        self.host = host
        self.requests = requests
        self._raft_to_grpc = {m.raft: m.address for m in cfg.mgmt}
        self.target_timeout = cfg.target_timeout
        self._seen: dict[int, float] = {}  # target -> loop time of its last heartbeat (leader only)
        self._capacity_sent: dict[int, float] = {}
        self._usage_sent: dict[int, float] = {}
        self._leading = False
        self._unknown: set[int] = set()
        self._bg: set[asyncio.Task] = set()  # statistics commands a heartbeat started
        self._internal_token = cfg.internal_token

    def _leader(self) -> str:
        return self._raft_to_grpc.get(self.host.leader or "", "")

    @_timed
    async def GetClusterMap(self, request, context):
        return await self._map_reply()

    async def _map_reply(self) -> pb.GetClusterMapReply:
        m = self.store.cluster_map()
        if m is None:
            return pb.GetClusterMapReply(status=err.UNAVAILABLE, leader=self._leader())
        return pb.GetClusterMapReply(status=0, leader=self._leader(), map=map_to_pb(m))

    @_timed
    async def SetClusterMap(self, request, context):
        if not shows(context.invocation_metadata(), INTERNAL_HEADER, self._internal_token):
            return pb.GetClusterMapReply(status=1, leader=self._leader())  # EPERM: servers and operators only
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
        return await self._map_reply()

    # snap_*: the snapshot coordinator (a metadata server) and data servers whose hold expired
    ADMIN_COMMANDS = ("drain", "remove_target", "add_server", "move", "member_begin", "member_end", "member_add",
                      "member_remove", "add_shard", "snap_begin", "snap_ready", "snap_abort", "snap_delete",
                      "snap_forget")

    @_timed
    async def Admin(self, request, context):
        """Operators only (internal token): one cluster-map command of ADMIN_COMMANDS, on the leader."""
        if not shows(context.invocation_metadata(), INTERNAL_HEADER, self._internal_token):
            return pb.AdminReply(status=1, message="operators only (internal token)")  # EPERM
        if not self.host.is_leader:
            return pb.AdminReply(status=err.NOT_LEADER, leader=self._leader())
        try:
            cmd = msgpack.unpackb(request.command, raw=False)
        except Exception:  # noqa: BLE001 - any undecodable command is EINVAL
            cmd = None
        if not isinstance(cmd, list) or not cmd or cmd[0] not in self.ADMIN_COMMANDS:
            return pb.AdminReply(status=22, message=f"not an admin command: {cmd!r}", leader=self._leader())
        log.info("admin command %r", cmd)
        try:
            res = msgpack.unpackb(await self.host.submit(msgpack.packb(cmd), timeout=5.0), raw=False)
        except err.DfsError as e:
            return pb.AdminReply(status=e.errno, message=e.detail or str(e), leader=self._leader())
        if res[0] != 0:
            return pb.AdminReply(status=res[0], message=str(res[1]), leader=self._leader())
        return pb.AdminReply(status=0, epoch=res[1], result=msgpack.packb(res[2:]), leader=self._leader())

    async def TransferLeader(self, request, context):
        """Operators only (internal token); as MetaService.TransferLeader (dfs.meta.server.transfer_leader)."""
        if not shows(context.invocation_metadata(), INTERNAL_HEADER, self._internal_token):
            return pb.TransferLeaderReply(status=1, message="operators only (internal token)")  # EPERM
        to = request.to or None
        if not self.host.is_leader:
            return pb.TransferLeaderReply(status=err.NOT_LEADER, leader=self._leader())
        if to == self.host.self_address:
            return pb.TransferLeaderReply(status=0, message="already the leader", leader=self._leader())
        try:
            await self.host.transfer_leadership(to, request.timeout or 10.0)
        except err.DfsError as e:
            return pb.TransferLeaderReply(status=e.errno, message=e.detail or str(e), leader=self._leader())
        return pb.TransferLeaderReply(status=0, leader=self._leader())

    async def _submit(self, *cmd) -> None:
        await self.host.submit(msgpack.packb(list(cmd)), timeout=5.0)

    @_timed
    async def Heartbeat(self, request, context):
        if not shows(context.invocation_metadata(), INTERNAL_HEADER, self._internal_token):
            return pb.HeartbeatReply(status=1, leader=self._leader())  # EPERM: data servers only
        if not self.host.is_leader:
            return pb.HeartbeatReply(status=err.NOT_LEADER, leader=self._leader())
        m = self.store.cluster_map()
        if m is None or not self.host.read_lease():
            # an answer renews the server's membership lease (dfs/data/lease.py): only a leader
            # no other can have replaced may give it, or a deposed one would vouch for a target
            # the new leader is taking out
            return pb.HeartbeatReply(status=err.UNAVAILABLE, leader=self._leader())
        now = asyncio.get_running_loop().time()
        try:
            for ts in request.targets:
                t = m["targets"].get(ts.id)
                if t is None:  # never in the map, or removed (dfs admin remove-target): once per target
                    if ts.id not in self._unknown and len(self._unknown) < MAX_UNKNOWN:
                        self._unknown.add(ts.id)
                        log.warning("heartbeat from server %d names unknown target %d", request.server, ts.id)
                    continue
                self._seen[ts.id] = now
                if t["state"] == OFFLINE:
                    log.info("target %d is back", ts.id)
                    await self._submit("target_up", ts.id)
                for sc in ts.synced:
                    cid = sc.chain
                    if not (0 <= cid < len(m["chains"]) and ts.id in m["chains"][cid]["syncing"]):
                        continue
                    if m["chains"][cid]["version"] != sc.version:  # resynced at a version the chain has left
                        log.info("target %d synced into chain %d at v%d, chain is at v%d: ignored", ts.id, cid,
                                 sc.version, m["chains"][cid]["version"])
                        continue
                    log.info("target %d synced into chain %d (v%d)", ts.id, cid, sc.version)
                    await self._submit("chain_synced", cid, ts.id, sc.version)
                if ((ts.total, ts.free) != (t["total"], t["free"])
                        and now - self._capacity_sent.get(ts.id, -1e9) >= CAPACITY_INTERVAL):
                    self._capacity_sent[ts.id] = now
                    self._submit_later("capacity", ts.id, ts.total, ts.free)
                # of the registry's snapshots only: what else a heartbeat names is not kept
                usage = {u.epoch: [u.exclusive, u.shared] for u in ts.snapshots if u.epoch in m["snapshots"]}
                if (usage != m["snap_usage"].get(ts.id, {})
                        and now - self._usage_sent.get(ts.id, -1e9) >= CAPACITY_INTERVAL):
                    self._usage_sent[ts.id] = now
                    self._submit_later("snap_usage", ts.id, usage)
        except err.DfsError as e:
            return pb.HeartbeatReply(status=e.errno, leader=self._leader())
        m = self.store.cluster_map()
        return pb.HeartbeatReply(status=0, epoch=m["epoch"] if m else 0, leader=self._leader())

    def _submit_later(self, *cmd) -> None:
        """Submit a statistics command (capacity, snapshot usage) without holding up the
        heartbeat's answer: that answer renews the server's membership lease, counted from
        when the heartbeat was sent, so a Raft commit inside it would eat into the lease."""
        async def run() -> None:
            try:
                await self._submit(*cmd)
            except err.DfsError as e:
                log.info("%s of target %s: %s", cmd[0], cmd[1], e)

        t = asyncio.get_running_loop().create_task(run())
        self._bg.add(t)
        t.add_done_callback(self._bg.discard)

    async def monitor(self, interval: float | None = None) -> None:
        """On the leader: take targets silent for longer than target_timeout out of their chains."""
        interval = interval or max(0.05, min(0.5, self.target_timeout / 6))
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            await asyncio.sleep(interval)
            now = loop.time()
            gap, last = now - last, now
            paused = gap > max(2 * interval, self.target_timeout / 2)
            if not self.host.is_leader:
                self._leading = False
                continue
            m = self.store.cluster_map()
            if m is None:
                continue
            if paused and self._leading:
                # this process did not run (stopped, starved): the heartbeats of that time wait
                # unread, so silence says nothing about the targets yet
                log.info("failure detection paused for %.1fs: every target counts as just seen", gap)
            if not self._leading or paused:  # just became leader: everyone counts as just seen
                self._leading = True
                self._seen = {tid: now for tid in m["targets"]}
            for tid, t in m["targets"].items():
                seen = self._seen.setdefault(tid, now)
                if t["state"] != OFFLINE and now - seen > self.target_timeout:
                    log.info("target %d silent for %.1fs: down", tid, now - seen)
                    try:
                        await self._submit("target_down", tid)
                    except err.DfsError as e:
                        log.info("target_down %d: %s", tid, e)


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
    os.makedirs(data, mode=0o700, exist_ok=True)
    os.chmod(data, 0o700)  # the map's RocksDB and Raft journal: this server's user only
    if cfg.raft_salt is None:
        log.warning("the cluster file has no raft_salt: Raft keys are derived from the password alone, as "
                    "before salts (clusters sharing a password share keys); add raft_salt = "
                    "<secrets.token_hex(16)> and restart every server together")
    store = MgmtStore(os.path.join(data, "db"))
    o = cfg.raft
    host = RaftHost(store, me.raft, [m.raft for m in cfg.mgmt], os.path.join(data, "raft"),
                    password=cfg.raft_key, election_timeout=tuple(o.election_timeout), heartbeat=o.heartbeat,
                    leader_fallback_timeout=o.leader_fallback_timeout, durability=cfg.durability,
                    loop=asyncio.get_running_loop())
    tasks = Supervisor()  # background loops (dfs/common/tasks.py): none stops silently
    metrics = requests = None
    if me.metrics:
        metrics = Metrics("mgmt", cluster=cfg.cluster_id, replica=replica)
        requests = metrics.requests("dfs_mgmt", "mgmt RPCs")
        instrument_raft(metrics, host)
        metrics.collect(lambda: [*map_families(store.cluster_map(), cfg.replicas_per_chain),
                                 task_failures(tasks.failures)], "cluster map")
        metrics.serve(me.metrics)
    sa = ServerAuth(cfg)
    server = grpc.aio.server(options=limits.grpc_server_options(), interceptors=sa.interceptors(),
                             maximum_concurrent_rpcs=limits.GRPC_MAX_RPCS)
    servicer = MgmtServicer(store, host, cfg, requests)
    pbg.add_MgmtServiceServicer_to_server(servicer, server)
    sa.add_port(server, me.address)
    await server.start()
    tasks.spawn("map-init", lambda: _initialise(store, host, cfg), forever=False)
    tasks.spawn("failure-detection", servicer.monitor)
    log.info("mgmt replica %d serving on %s (raft %s)", replica, me.address, me.raft)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await tasks.stop()
    await server.stop(1.0)
    if metrics is not None:
        metrics.close()
    host.close()
    store.kv.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="dfs-mgmt")
    ap.add_argument("--config", required=True)
    ap.add_argument("--replica", type=int, required=True)
    ap.add_argument("--data", required=True)
    a = ap.parse_args(argv)
    os.umask(0o077)  # RocksDB, the Raft journal, the log: readable by this server's user only
    logs.setup(f"mgmt[{a.replica}]")
    asyncio.run(serve(ClusterConfig.load(a.config), a.replica, a.data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
