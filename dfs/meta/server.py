"""A metadata replica process: one (shard, replica) of the cluster file.

    python -m dfs.meta.server --config cluster.toml --shard 0 --replica 1 --data DIR

It hosts the shard's MetaStore (RocksDB under DIR/db) in a RaftHost (journal
and snapshots under DIR/raft) and serves MetaService over gRPC. Only the
leader answers; a follower replies NOT_LEADER with the leader's gRPC address.
This module is the thin gRPC edge: protobuf does not pass beyond it.

With a client token in the cluster file every call must show it (refused
UNAUTHENTICATED before it is parsed, ``dfs.wire.auth.TokenCheck``); internal
(two-phase) operations also need the internal token, which only servers
derive (from the Raft password). With [tls] the port speaks TLS only.
With ``[security] root_squash`` a client's uid 0 (and gid 0) is taken as
``squash_uid`` (``squash_gid``) here, before any permission check; calls
with the internal token (servers, whose callers were squashed at the first
edge they reached) are taken as they come. A BATCH's items carry callers of
their own (a lazy client's flush): squashed likewise.
Bounds (``dfs.wire.limits.grpc_server_options``): connections, streams per
connection, calls in progress (more end RESOURCE_EXHAUSTED, which clients
retry) and the time to a usable connection. Files and folders it creates
are its user's only (umask 077).

The replica follows the cluster map (``MapFollower``): every reply carries
the map epoch it knows, so clients notice a newer map (a replica added, a
shard added); the map gives the gRPC addresses of replicas added after the
cluster file was read (leader hints) and the shard count new directories
are placed by. ``Membership`` reports and changes the shard's Raft group
(``dfs admin add-meta-replica`` / ``remove-meta-replica``).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import errno
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
from dfs.common.metrics import Metrics, RequestMetrics, counter, gauge, instrument_raft, task_failures
from dfs.common.messages import Batch, is_internal, request_class
from dfs.common.ops import Op
from dfs.common.records import Caller, squash_root
from dfs.consensus.raft import RaftHost
from dfs.meta.ops.caps import granted_with
from dfs.meta.service import ShardService
from dfs.meta.store import MetaStore
from dfs.wire import limits
from dfs.wire.auth import INTERNAL_HEADER, ServerAuth, shows
from dfs.common.clustermap import ClusterMap
from dfs.route.mgmt import MgmtAdmin
from dfs.route.shards import CHANNEL_OPTIONS, GrpcTransport

GRANTS_WITH_REPLY = frozenset({Op.OPEN, Op.OPENREAD, Op.LOOKUPOPEN, Op.CREATE})  # opens: their caps ride along

log = logging.getLogger("dfs.meta.server")

CLIENT_WINDOW = 60.0  # seconds: a client connection counts as connected this long after its last operation


# requests that take this long are logged (with their op id); DFS_SLOW_OP_MS sets it
SLOW_OP_S = float(os.environ.get("DFS_SLOW_OP_MS", "1000")) / 1000


def _op_name(code: int) -> str:
    return Op(code).name


class Clients:
    """Distinct client connections (gRPC peer ``ip:port``) that sent operations recently.

    ``seen`` runs on the event loop per RPC (one dict store); ``count`` runs on the
    metrics thread and only copies the dict (atomic under the GIL)."""

    def __init__(self, window: float = CLIENT_WINDOW) -> None:
        self.window = window
        self._last: dict[str, float] = {}
        self._prune_at = 0.0

    def seen(self, peer: str, now: float) -> None:
        self._last[peer] = now
        if now >= self._prune_at:
            cutoff = now - self.window
            self._last = {p: t for p, t in self._last.items() if t >= cutoff}
            self._prune_at = now + self.window

    def count(self, now: float | None = None) -> int:
        cutoff = (time.monotonic() if now is None else now) - self.window
        return sum(1 for t in dict(self._last).values() if t >= cutoff)


class MetaServicer(pbg.MetaServiceServicer):
    def __init__(self, svc: ShardService, host: RaftHost, cfg: ClusterConfig, shard: int, replica: int,
                 requests: RequestMetrics | None = None) -> None:
        self.svc = svc
        self.host = host
        self.shard = shard
        self.replica = replica
        self._raft_to_grpc = {r.raft: r.address for r in cfg.shard(shard).replicas}
        self._internal_token = cfg.internal_token
        sec = cfg.security
        self._squash = (sec.squash_uid, sec.squash_gid) if sec.root_squash else None
        self.requests = requests
        self.clients = Clients()
        self.follower: MapFollower | None = None  # set by serve(): the map epoch replies carry

    def learn_addresses(self, raft_to_grpc: dict[str, str]) -> None:
        """gRPC addresses of this shard's replicas from a newer cluster map (replicas added later)."""
        self._raft_to_grpc = {**self._raft_to_grpc, **raft_to_grpc}

    @property
    def epoch(self) -> int:
        return self.follower.epoch if self.follower is not None else 0

    def _seen(self, context, peer: bool) -> None:
        if not peer:  # shard-to-shard traffic is not a client
            self.clients.seen(context.peer() or "?", time.monotonic())

    def _observe(self, op: int, seconds: float, rep: pb.OpReply) -> pb.OpReply:
        st = rep.status
        self.requests.observe(op, seconds, "ok" if st == 0 else "not_leader" if st == err.NOT_LEADER else "error")
        return rep

    def leader_address(self) -> str:
        lead = self.host.leader
        return self._raft_to_grpc.get(lead, "") if lead else ""

    def _is_peer(self, context) -> bool:
        return shows(context.invocation_metadata(), INTERNAL_HEADER, self._internal_token)

    def _caller(self, c: pb.Caller, peer: bool) -> Caller:
        caller = Caller(c.uid, c.gid, tuple(c.groups))
        if self._squash is not None and not peer:
            return squash_root(caller, *self._squash)
        return caller

    def _squash_items(self, op: int, args, peer: bool):
        """A BATCH's ``args`` with its items' callers squashed (malformed ones as they are: the
        handler refuses them EINVAL)."""
        if self._squash is None or peer or op != Op.BATCH:
            return args
        try:
            b = Batch.from_wire(args)
        except err.InvalidArgument:
            return args
        items = []
        for it in b.items:
            c = squash_root(Caller(it.uid, it.gid, tuple(it.groups)), *self._squash)
            items.append(dataclasses.replace(it, uid=c.uid, gid=c.gid, groups=list(c.groups)))
        return Batch(items).to_wire()

    async def _one(self, req: pb.OpRequest, peer: bool) -> pb.OpReply:
        if self.follower is not None and req.epoch > self.follower.epoch:
            # the caller routed with a newer map than ours (e.g. a shard was added and it
            # placed a new directory by the new count): learn it before coordinating
            if req.op == Op.MKDIR:
                await self.follower.refresh(wait=2.0)
            else:
                self.follower.refresh_soon()
        if is_internal(req.op) and not peer:
            return pb.OpReply(status=errno.EPERM, message="internal operation: shard servers only")
        if req.shard != self.shard:
            return pb.OpReply(status=err.WRONG_SHARD, message=f"this is shard {self.shard}")
        if not self.host.is_leader:
            return pb.OpReply(status=err.NOT_LEADER, leader=self.leader_address())
        caller = self._caller(req.caller, peer)
        ts = req.ts if req.ts and is_internal(req.op) else None
        try:
            args = msgpack.unpackb(req.body, raw=False, use_list=True, strict_map_key=False) if req.body else []
        except Exception:  # noqa: BLE001 - any undecodable body is EINVAL
            return pb.OpReply(status=errno.EINVAL, message="malformed body")
        args = self._squash_items(req.op, args, peer)
        # the log lines written while serving it name the request (its id, as retried)
        token = logs.set_op(req.request_id or None)
        t0 = time.monotonic()
        status = errno.EIO
        try:
            res = await self.svc.execute(req.op, req.request_id, caller, args, ts=ts)
            status = 0
        except err.NotLeader:
            status = err.NOT_LEADER
            return pb.OpReply(status=err.NOT_LEADER, leader=self.leader_address())
        except err.DfsError as e:
            status = e.errno
            return pb.OpReply(status=e.errno, message=e.detail or "")
        except Exception as e:  # never let a bug kill the stream; the caller sees EIO
            log.exception("op %s failed", _op_name(req.op))
            return pb.OpReply(status=errno.EIO, message=repr(e))
        finally:
            took = time.monotonic() - t0
            if took >= SLOW_OP_S:
                log.warning("slow %s: %.1f ms, status %d", _op_name(req.op), took * 1e3, status)
            logs.reset_op(token)
        rep = pb.OpReply(status=0, body=msgpack.packb(res))
        if self.svc.signer is not None and req.op in GRANTS_WITH_REPLY:
            rep.caps.extend(self._granted(req.op, args, res))
        return rep

    def _granted(self, op: int, args, res) -> list[bytes]:
        """Capabilities an open's reply carries (dfs.meta.ops.caps.granted_with)."""
        try:
            r = request_class(op).from_wire(args)
            return granted_with(self.svc.signer, r, r.reply_from_wire(res))
        except Exception:  # noqa: BLE001 - never cost the reply: the client asks CAPS later
            log.exception("capabilities for %s", _op_name(op))
            return []

    async def Execute(self, request, context):
        t0 = time.perf_counter()
        peer = self._is_peer(context)
        self._seen(context, peer)
        rep = await self._one(request, peer)
        rep.epoch = self.epoch
        if self.requests is not None:
            self._observe(request.op, time.perf_counter() - t0, rep)
        return rep

    async def ExecuteBatch(self, request, context):
        t0 = time.perf_counter()
        peer = self._is_peer(context)
        self._seen(context, peer)
        rep = await self._batch(request.ops, peer)
        epoch = self.epoch
        for r in rep.replies:
            r.epoch = epoch
        if self.requests is not None:  # each operation of a batch took the batch's time
            dt = time.perf_counter() - t0
            for r, o in zip(request.ops, rep.replies):
                self._observe(r.op, dt, o)
        return rep

    async def _batch(self, ops, peer: bool) -> pb.BatchReply:
        if self.follower is not None and any(r.epoch > self.follower.epoch for r in ops):
            self.follower.refresh_soon()
        if not self.host.is_leader:
            lead = self.leader_address()
            return pb.BatchReply(replies=[pb.OpReply(status=err.NOT_LEADER, leader=lead) for _ in ops])
        replies: list[pb.OpReply | None] = [None] * len(ops)
        items, where = [], []
        for i, r in enumerate(ops):
            if is_internal(r.op) and not peer:
                replies[i] = pb.OpReply(status=errno.EPERM, message="internal operation: shard servers only")
            elif r.shard != self.shard:
                replies[i] = pb.OpReply(status=err.WRONG_SHARD, message=f"this is shard {self.shard}")
            else:
                try:
                    args = msgpack.unpackb(r.body, raw=False, use_list=True, strict_map_key=False) if r.body else []
                except Exception:  # noqa: BLE001 - any undecodable body is EINVAL
                    replies[i] = pb.OpReply(status=errno.EINVAL, message="malformed body")
                    continue
                items.append((r.op, r.request_id, self._caller(r.caller, peer), self._squash_items(r.op, args, peer)))
                where.append(i)
        if items:
            try:
                results = await self.svc.execute_batch(items)
            except err.NotLeader:
                results = [err.NotLeader()] * len(items)
            for (op, _, _, args), i, res in zip(items, where, results):
                if isinstance(res, err.NotLeader):
                    replies[i] = pb.OpReply(status=err.NOT_LEADER, leader=self.leader_address())
                elif isinstance(res, err.DfsError):
                    replies[i] = pb.OpReply(status=res.errno, message=res.detail or "")
                else:
                    rep = replies[i] = pb.OpReply(status=0, body=msgpack.packb(res))
                    if self.svc.signer is not None and op in GRANTS_WITH_REPLY:
                        rep.caps.extend(self._granted(op, args, res))  # as a lone request's reply
        return pb.BatchReply(replies=replies)

    async def Status(self, request, context):
        st = self.host.status()
        return pb.ShardStatus(shard=self.shard, replica=self.replica, role=self.host.role,
                              leader=self.leader_address(), term=st.get("term", 0),
                              commit_index=st.get("commit_index", 0),
                              applied_index=self.svc.store.applied_index(), epoch=self.epoch,
                              leader_ready=self.host.leader_ready())

    async def TransferLeader(self, request, context):
        return await transfer_leader(self.host, request, self._is_peer(context), self.leader_address)

    async def Membership(self, request, context):
        return await membership(self.host, request, self._is_peer(context), self.leader_address)


async def membership(host: RaftHost, request, internal: bool, leader_address) -> pb.MembershipReply:
    """Membership on a Raft group's edge: internal token only. ``op`` "": this replica's view
    (on the leader, every peer's progress); "add" / "remove" ``raft``: on the leader, one
    change, answered once it is committed and applied (RaftHost.add_member / remove_member)."""
    if not internal:
        return pb.MembershipReply(status=errno.EPERM, message="operators only (internal token)")

    def reply(m, status: int = 0, message: str = "") -> pb.MembershipReply:
        return pb.MembershipReply(
            status=status, message=message, leader=leader_address(), members=list(m.members), pending=m.pending,
            last_index=m.last_index, commit_index=m.commit_index, self_raft=m.self_address,
            peers=[pb.PeerProgress(raft=p.address, connected=p.connected, live=p.live, match_index=p.match_index)
                   for p in m.peers])

    try:
        if request.op == "":
            return reply(await host.membership())
        if request.op not in ("add", "remove"):
            return pb.MembershipReply(status=errno.EINVAL, message=f"op must be add or remove, not {request.op!r}")
        if not host.is_leader:
            return pb.MembershipReply(status=err.NOT_LEADER, leader=leader_address())
        if request.op == "add":
            m = await host.add_member(request.raft, request.timeout or 10.0, started=request.started)
        else:
            m = await host.remove_member(request.raft, request.timeout or 10.0)
        return reply(m)
    except err.NotLeader:
        return pb.MembershipReply(status=err.NOT_LEADER, message="not the leader", leader=leader_address())
    except err.DfsError as e:  # Busy (EBUSY), InvalidArgument, Unavailable
        return pb.MembershipReply(status=e.errno, message=e.detail or str(e), leader=leader_address())


async def transfer_leader(host: RaftHost, request, internal: bool, leader_address) -> pb.TransferLeaderReply:
    """TransferLeader on any Raft group's edge: internal token only; the leader moves
    its role to ``request.to`` (or the most caught-up replica). Already led by ``to``
    (or, with no ``to``, asked of a follower): NOT_LEADER with the leader's address."""
    if not internal:
        return pb.TransferLeaderReply(status=errno.EPERM, message="operators only (internal token)")
    to = request.to or None
    if not host.is_leader:
        return pb.TransferLeaderReply(status=err.NOT_LEADER, leader=leader_address())
    if to == host.self_address:
        return pb.TransferLeaderReply(status=0, message="already the leader", leader=leader_address())
    try:
        await host.transfer_leadership(to, request.timeout or 10.0)
    except err.DfsError as e:
        return pb.TransferLeaderReply(status=e.errno, message=e.detail or str(e), leader=leader_address())
    return pb.TransferLeaderReply(status=0, leader=leader_address())


def shard_families(svc: ShardService, clients: Clients) -> list:
    """What a shard replica exports besides Raft and requests (read at scrape time)."""
    from dfs.meta import schema as S

    out = [gauge("dfs_meta_clients", f"client connections (gRPC peers) that sent operations to this replica "
                 f"in the last {CLIENT_WINDOW:.0f}s; the leader's is the shard's", clients.count()),
           task_failures(svc.tasks.failures),
           counter("dfs_meta_commits", "operations that may span shards (mkdir, rmdir, unlink, rename, link) "
                   "committed by this replica as their coordinator, by op and protocol (one_phase: all on "
                   "this shard; two_phase: 2PC over shards); since the process started",
                   labels=("op", "protocol"),
                   samples=[([op, proto], n) for (op, proto), n in dict(svc.coordinator.commits).items()])]
    try:  # one key of applied state; RocksDB reads are safe from this thread
        b = svc.store.kv.get(S.K_NINODES)
    except Exception:  # noqa: BLE001 - the store is being swapped by a snapshot install: skip it this scrape
        return out
    out.append(gauge("dfs_meta_inodes", "inodes on this shard (applied state of this replica)",
                     S.from_u64(b) if b else 0))
    return out


class MapFollower:
    """This replica's copy of the cluster map, fetched from mgmt every ``interval`` seconds
    and at once when a request was routed with a newer map. Applying a map:

    * its epoch is what every reply carries (clients refresh their map when it is newer);
    * the gRPC addresses of this shard's replicas (leader hints name replicas added after
      the cluster file was read);
    * the peers' routes (shards added after start) and the shard count the coordinator
      places new directories by (it only grows)."""

    def __init__(self, cfg: ClusterConfig, shard: int, sa: ServerAuth, servicer: MetaServicer, svc: ShardService,
                 peers: PeerTransport, interval: float = 2.0) -> None:
        self.shard = shard
        self.creds = sa.client
        self.servicer = servicer
        self.svc = svc
        self.peers = peers
        self.interval = interval
        self.epoch = 0
        self.mgmt = [m.address for m in cfg.mgmt]
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._inflight: asyncio.Task | None = None
        self._task: asyncio.Task | None = None
        self._last = 0.0

    async def _fetch(self) -> pb.ClusterMap | None:
        for addr in self.mgmt:
            ch = self._channels.get(addr)
            if ch is None:
                ch = self._channels[addr] = self.creds.channel(addr, CHANNEL_OPTIONS)
            try:
                rep = await pbg.MgmtServiceStub(ch).GetClusterMap(pb.GetClusterMapRequest(), timeout=2.0)
            except grpc.aio.AioRpcError:
                continue
            if rep.status == 0 and rep.map.shards:
                return rep.map
        return None

    def apply(self, m: pb.ClusterMap) -> None:
        if m.epoch <= self.epoch:
            return
        self.epoch = m.epoch
        if m.mgmt:
            self.mgmt = [r.address for r in m.mgmt]
        for s in m.shards:
            if s.shard == self.shard:
                self.servicer.learn_addresses({r.raft_address: r.address for r in s.replicas})
        cmap = ClusterMap.from_pb(m)
        cur = self.peers.map
        if cur is None or cmap.epoch >= cur.epoch:
            cmap.auth = self.peers.auth
            self.peers.map = cmap
        was = self.svc.coordinator.shards.nshards
        if self.svc.set_nshards(len(m.shards)):
            log.info("cluster map epoch %d: %d shards (was %d)", m.epoch, len(m.shards), was)

    async def _refresh(self) -> None:
        self._last = time.monotonic()
        try:
            m = await self._fetch()
        except Exception:  # noqa: BLE001 - never kill the follower; the next round tries again
            log.exception("cluster map fetch failed")
            return
        if m is not None:
            self.apply(m)

    def refresh_soon(self, min_interval: float = 0.2) -> asyncio.Task | None:
        """Start a fetch unless one runs or one started less than ``min_interval`` s ago."""
        if self._inflight is not None and not self._inflight.done():
            return self._inflight
        if time.monotonic() - self._last < min_interval:
            return None
        self._inflight = asyncio.get_running_loop().create_task(self._refresh())
        return self._inflight

    async def refresh(self, wait: float) -> None:
        """Fetch now (or join the fetch running), waiting at most ``wait`` s."""
        t = self.refresh_soon(0.0)
        if t is not None:
            await asyncio.wait([t], timeout=wait)

    async def _run(self) -> None:
        while True:
            await self._refresh()
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        self._task = self.svc.tasks.spawn("map-follower", self._run)

    async def close(self) -> None:
        for t in (self._task, self._inflight):
            if t is not None:
                t.cancel()
        chans, self._channels = list(self._channels.values()), {}
        for ch in chans:
            await ch.close()


class PeerTransport(GrpcTransport):
    """Peer shards, reached with the addresses of the cluster file (no mgmt round trip),
    showing the client token and the internal token."""

    def __init__(self, cfg: ClusterConfig, sa: ServerAuth | None = None) -> None:
        cmap = ClusterMap(0, [[r.address for r in s.replicas] for s in cfg.shards], [m.address for m in cfg.mgmt])
        super().__init__(cmap.mgmt, cmap=cmap, deadline=10.0, attempt_timeout=4.0,
                         metadata=((INTERNAL_HEADER, cfg.internal_token),),
                         auth=(sa or ServerAuth(cfg)).client)


class _Data:
    """This server's DataClient (made at first use, from mgmt's map): frees chunks, and holds and
    resumes the data servers for a snapshot (``dfs.meta.snapshots.Holds``)."""

    def __init__(self, peers: PeerTransport, auth=None) -> None:
        self.peers = peers
        self.auth = auth  # the data plane's credentials: with the internal token (holds, resumes)
        self._dc = None

    async def client(self):
        from dfs.route.data import DataClient

        if self._dc is None:
            self._dc = DataClient(await self.peers.refresh_map(), self.peers.refresh_map, auth=self.auth)
        return self._dc

    async def snap_hold(self, snap: int, lease: float) -> None:
        dc = await self.client()
        await dc.refresh(force=True)
        await dc.snap_hold(snap, lease)

    async def snap_resume(self, snap: int, epoch: int, live: list[int]) -> None:
        await (await self.client()).snap_resume(snap, epoch, live)

    async def close(self) -> None:
        if self._dc is not None:
            await self._dc.close()


class _MgmtRegistry:
    """The snapshot registry in mgmt's cluster map (``dfs.meta.snapshots.Registry``)."""

    def __init__(self, admin: MgmtAdmin, peers: PeerTransport) -> None:
        self.admin, self.peers = admin, peers

    async def command(self, cmd: list) -> list:
        return await self.admin.command(cmd)

    async def snapshots(self) -> dict:
        return (await self.peers.refresh_map()).snapshots


async def serve(cfg: ClusterConfig, shard: int, replica: int, data: str) -> None:
    me = cfg.shard(shard).replica(replica)
    os.makedirs(data, mode=0o700, exist_ok=True)
    os.chmod(data, 0o700)  # the shard's RocksDB and Raft journal: this server's user only
    if cfg.raft_salt is None:
        log.warning("the cluster file has no raft_salt: Raft keys are derived from the password alone, as "
                    "before salts (clusters sharing a password share keys); add raft_salt = "
                    "<secrets.token_hex(16)> and restart every server together")
    store = MetaStore(shard, cfg.nshards, os.path.join(data, "db"))
    o = cfg.raft
    # The group as the cluster file has it; once this replica has run, the membership its
    # log left (members.json, RaftHost) wins: the file may predate membership changes.
    host = RaftHost(store, me.raft, [r.raft for r in cfg.shard(shard).replicas], os.path.join(data, "raft"),
                    password=cfg.raft_key, election_timeout=tuple(o.election_timeout), heartbeat=o.heartbeat,
                    leader_fallback_timeout=o.leader_fallback_timeout, group_commit=o.group_commit,
                    max_batch=o.max_batch, max_inflight=o.max_inflight,
                    log_compaction_min_entries=o.log_compaction_min_entries,
                    log_compaction_min_time=o.log_compaction_min_time, durability=cfg.durability,
                    loop=asyncio.get_running_loop())
    sa = ServerAuth(cfg)
    peers = PeerTransport(cfg, sa)
    data = _Data(peers, sa.peer)
    admin = MgmtAdmin([m.address for m in cfg.mgmt], cfg.internal_token, sa.client)
    remover = None
    if cfg.data:
        # Chunks of deleted files are freed through the data plane, from the
        # cluster map of mgmt (which knows the chains as they are now).
        from dfs.common.layout import Layout

        async def remover(ino: int, layout: int, size: int) -> None:
            await (await data.client()).remove_inode(ino, Layout.unpack(layout), size)

    svc = ShardService(store, host, peers, chunk_remover=remover,
                       chain_replicas=cfg.replicas_per_chain if cfg.data else None,
                       snapshot_registry=_MgmtRegistry(admin, peers), snapshot_holds=data if cfg.data else None)
    if cfg.security.data_capabilities:
        from dfs.common.caps import Signer, cap_key

        svc.signer = Signer(cap_key(cfg.internal_token), cfg.security.capability_ttl)
    metrics = requests = None
    if me.metrics:
        metrics = Metrics("meta", cluster=cfg.cluster_id, shard=shard, replica=replica)
        requests = metrics.requests("dfs_meta", "metadata operations", _op_name)
        instrument_raft(metrics, host)
    servicer = MetaServicer(svc, host, cfg, shard, replica, requests)
    if metrics is not None:
        metrics.collect(lambda: shard_families(svc, servicer.clients), "shard")
        metrics.serve(me.metrics)
    server = grpc.aio.server(options=limits.grpc_server_options(64 << 20), interceptors=sa.interceptors(),
                             maximum_concurrent_rpcs=limits.GRPC_MAX_RPCS)
    follower = MapFollower(cfg, shard, sa, servicer, svc, peers)
    servicer.follower = follower
    pbg.add_MetaServiceServicer_to_server(servicer, server)
    sa.add_port(server, me.address)
    await server.start()
    follower.start()
    svc.start_recovery()
    log.info("shard %d replica %d serving on %s (raft %s)", shard, replica, me.address, me.raft)
    if cfg.security.root_squash:
        log.info("root squashing: clients' uid 0 acts as %d, gid 0 as %d", cfg.security.squash_uid,
                 cfg.security.squash_gid)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping")
    await server.stop(1.0)
    await follower.close()
    await svc.stop()
    await data.close()
    await admin.close()
    await peers.close()
    if metrics is not None:
        metrics.close()
    host.close()
    store.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="dfs-meta")
    ap.add_argument("--config", required=True)
    ap.add_argument("--shard", type=int, required=True)
    ap.add_argument("--replica", type=int, required=True)
    ap.add_argument("--data", required=True)
    a = ap.parse_args(argv)
    os.umask(0o077)  # RocksDB, the Raft journal, the log: readable by this server's user only
    logs.setup(f"meta[{a.shard}.{a.replica}]")
    cfg = ClusterConfig.load(a.config)
    if not 0 <= a.shard < cfg.nshards:
        ap.error(f"no shard {a.shard} in {a.config} (it has {cfg.nshards})")
    try:
        cfg.shard(a.shard).replica(a.replica)
    except KeyError:
        ap.error(f"shard {a.shard} of {a.config} has no replica {a.replica} "
                 f"(ids: {[r.id for r in cfg.shard(a.shard).replicas]})")
    asyncio.run(serve(cfg, a.shard, a.replica, a.data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
