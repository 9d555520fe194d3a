"""A data server process: the targets of one ``[[data]]`` entry of the cluster file.

    python -m dfs.data.server --config cluster.toml --server 0

It opens a ChunkStore (and the chain index sidecar, ``dfs.data.chain``) per
target at the target's path, serves the data plane (``dfs.wire.dataplane``) on
the server's address (bound there only), heartbeats to the mgmt leader every
0.5 s (less with a short ``target_timeout``) with each target's state, capacity and finished resyncs, and refreshes
its cluster map when the epoch in a heartbeat reply grows (or when a request
names a newer chain version than it knows). An answered heartbeat renews
its membership lease (``dfs.data.lease``): chain reads need it. Requests on a connection are
handled concurrently (pipelining), at most ``MAX_CONN_REQUESTS`` at a time.
Bounds (``dfs.wire.limits``, docs/design/security.md): at most
``DATA_MAX_CONNECTIONS`` connections, ``DATA_MAX_PREAUTH`` of them before
their HELLO (which must come within ``DATA_HELLO_TIMEOUT`` seconds, in a
buffer of a few KiB); the payload bytes of client requests in flight (and
the replies READs build in memory) come out of one budget per process,
``max_inflight_bytes`` of the cluster file, charged when a frame's header
arrives and before its payload is read: a request that does not fit waits,
and the sender with it. Connections of servers (HELLO with the internal
token) are not charged: what they forward was charged at the chain's head,
and charging it twice could stall two chains' heads on each other. Only
they may send the chain's own requests (``dfs.wire.dataplane.INTERNAL_OPS``,
forwards); a client's get EPERM. A client's chunk requests need a capability
(``dfs.common.caps``) shown earlier on the connection in a CAP frame, which is
checked inline, before the next frame is read (ENOKEY without one; off with
``[security] data_capabilities = false``).
Background work per target: a scrub pass (``dfs.data.scrub``) about every
``scrub_interval`` seconds at ``scrub_rate`` bytes/s, and an orphan scan
(``dfs.data.orphans``) about every ``orphan_scan_interval`` seconds that
removes this target's chunks of inodes their metadata shard does not have
(older than ``orphan_grace``); all four come from the cluster file. Each pass
logs one line with its counts.
With a client token in the cluster file a connection must open with a HELLO
that shows it (``dfs.wire.dataplane``); otherwise the server answers EACCES and
closes it without reading a request. The server shows the token itself to mgmt
and to its chain peers.
Snapshots: the server takes the data epoch and live snapshots from every
newer map and from SNAP_RESUME (``dfs.data.chain``), drops the versions no
live snapshot reads, counts what each keeps about every ``USAGE_INTERVAL``
seconds and reports it with its heartbeats (``TargetState.snapshots``). A
hold whose lease runs out asks mgmt (``snap_abort``, with the internal token)
what became of the snapshot before it lets writes in again.
SIGTERM/SIGINT: stop accepting, let requests in flight finish (up to a few
seconds), close the stores. Files and folders it creates are its user's only
(umask 077: chunks, RocksDB, logs).
"""

from __future__ import annotations

import argparse
import asyncio
import errno as E
import functools
import itertools
import logging
import os
import random
import signal
import socket
import sys
import time

import grpc
import msgpack

from dfs._proto import meta_pb2 as pb
from dfs._proto import meta_pb2_grpc as pbg
from dfs.common import errors as err
from dfs.common import logs
from dfs.common.caps import CapError, CapSet, Signer, cap_key
from dfs.common.config import ClusterConfig
from dfs.common.ids import shard_of
from dfs.common.metrics import Metrics, counter, gauge, task_failures
from dfs.common.ops import Op
from dfs.common.records import Caller
from dfs.common.tasks import Supervisor
from dfs.data.chain import USAGE_INTERVAL, ChainIndex, ChainService, Extent, Target
from dfs.data.lease import MembershipLease
from dfs.data.store import ChunkStore
from dfs.wire import dataplane as dp
from dfs.wire import limits
from dfs.wire.auth import INTERNAL_HEADER, ServerAuth
from dfs.route.data import Pool
from dfs.route.mgmt import MgmtAdmin
from dfs.common.clustermap import ClusterMap
from dfs.route.shards import CHANNEL_OPTIONS, GrpcTransport

log = logging.getLogger("dfs.data.server")

HEARTBEAT_INTERVAL = 0.5         # at most; more often when target_timeout is short (heartbeat_interval)
MAX_CONN_REQUESTS = 256
PREAUTH_BUFFER = 8 << 10         # a connection's read buffer until its HELLO is good
ORPHAN_BATCH = 256               # inodes per existence check (one GETATTRS per shard)
ROOT = Caller(0, 0, ())          # internal caller of the metadata checks
RESERVE_MAX = 64 << 20           # chunk writes leave 1/64 of a target's file system, at most this, free


def _op_name(op: int) -> str:
    return dp.OP_NAMES[op]


def _chunks_estimate(store: ChunkStore) -> int | None:
    """RocksDB's estimate of the keys in a target's chunk meta (~ its chunks; O(1)), if available."""
    db = getattr(getattr(store, "_kv", None), "_db", None)
    if db is None:
        return None
    return db.property_int_value("rocksdb.estimate-num-keys")


def target_reserve(path: str) -> int:
    """Bytes of a target's file system that chunk data may not use: room for the
    target's RocksDB (chunk meta, chain index) to go on writing when chunks have
    filled the disk, so a full target answers ENOSPC and recovers once chunks are
    removed, rather than wedging its database on a failed WAL write."""
    st = os.statvfs(path)
    return min(RESERVE_MAX, st.f_blocks * st.f_frsize // 64)


def heartbeat_interval(target_timeout: float) -> float:
    """Seconds between heartbeats: HEARTBEAT_INTERVAL, or less so that the membership
    lease (two thirds of target_timeout) spans at least four of them."""
    return min(HEARTBEAT_INTERVAL, target_timeout / 6)


class DataServer:
    def __init__(self, cfg: ClusterConfig, server_id: int) -> None:
        self.cfg = cfg
        self.id = server_id
        self.me = cfg.data_server(server_id)
        self.targets: dict[int, Target] = {}
        for t in self.me.targets:
            os.makedirs(t.path, mode=0o700, exist_ok=True)
            os.chmod(t.path, 0o700)  # a target made by an older version, or by hand: others may not read chunks
            store = ChunkStore(t.path, t.id, reserve=target_reserve(t.path))
            self.targets[t.id] = Target(t.id, store, ChainIndex(os.path.join(t.path, "chains")))
        self.map: ClusterMap | None = None
        self._conn_ids = itertools.count(1)  # names connections in the log's op ids
        self.auth = ServerAuth(cfg)
        self.transport = GrpcTransport([m.address for m in cfg.mgmt], deadline=5.0, attempt_timeout=2.0,
                                       auth=self.auth.client)
        self.peers = Pool(auth=self.auth.peer)  # the chain's own requests: with the internal token
        self._admin = MgmtAdmin([m.address for m in cfg.mgmt], cfg.internal_token, self.auth.client)
        # reads need word from mgmt within two thirds of the time after which mgmt takes a silent
        # target out (counted from the heartbeat's arrival, after its sending: the rest is margin)
        self.lease = MembershipLease(cfg.target_timeout * 2 / 3)
        self.heartbeat_interval = heartbeat_interval(cfg.target_timeout)
        self.tasks = Supervisor()  # background loops (dfs/common/tasks.py): none stops silently
        self.svc = ChainService(self.targets, self.peers, get_map=lambda: self.map, refresh_map=self.refresh_map,
                                resync_rate=cfg.resync_rate, resolve_hold=self.resolve_hold, lease=self.lease)
        self._refresh_task: asyncio.Task | None = None
        self._last_refresh = -1e9
        self._conns: set[asyncio.Task] = set()
        self._preauth = 0                  # connections still before a good HELLO
        self.refused_connections = 0       # turned away at accept (over a cap)
        self.max_connections = limits.DATA_MAX_CONNECTIONS
        self.max_preauth = limits.DATA_MAX_PREAUTH
        self.hello_timeout = limits.DATA_HELLO_TIMEOUT
        self.budget = limits.ByteBudget(cfg.max_inflight_bytes)  # client payload bytes in flight
        # data-plane capabilities (dfs.common.caps): a client's chunk requests need one
        self.signer = Signer(cap_key(cfg.internal_token)) if cfg.security.data_capabilities else None
        self.refused_caps = 0              # CAP frames refused (bad signature, expired, garbage)
        self._hb_metadata = ((INTERNAL_HEADER, cfg.internal_token),)
        self._mgmt_leader: str | None = None
        self._channels: dict[str, grpc.aio.Channel] = {}
        self.scrubbers: dict = {}          # target -> dfs.data.scrub.Scrubber (its stats)
        self.orphan_scanners: dict = {}    # target -> dfs.data.orphans.OrphanScanner (its totals)
        self.inflight = 0                  # data-plane requests being handled
        self.metrics: Metrics | None = None
        self._requests = None
        self._read_bytes: dict[int, object] = {}     # target -> counter child
        self._written_bytes: dict[int, object] = {}
        if self.me.metrics:
            self._setup_metrics()

    # ------------------------------------------------------------------ metrics
    def _setup_metrics(self) -> None:
        m = self.metrics = Metrics("data", cluster=self.cfg.cluster_id, server=self.id)
        self._requests = m.requests("dfs_data", "data-plane requests", _op_name, ("ok", "error"))
        read = m.counter("dfs_data_read_bytes", "bytes sent in READ and SYNC_FETCH replies, by target", ["target"])
        written = m.counter("dfs_data_written_bytes", "bytes of WRITE and INSTALL requests applied (from clients "
                            "and chain predecessors), by target", ["target"])
        for tid in self.targets:
            self._read_bytes[tid] = read.labels(str(tid))
            self._written_bytes[tid] = written.labels(str(tid))
        m.collect(self._families, "data server")

    def _families(self) -> list:
        """Read at scrape time, on the metrics thread."""
        caps, chunks = [], []
        for tid, t in self.targets.items():
            lv = [str(tid)]
            try:
                total, free = t.store.capacity()
                caps.append((lv, total, free))
            except OSError:
                pass
            try:
                n = _chunks_estimate(t.store)
            except Exception:  # noqa: BLE001 - the store closing under a scrape: no estimate this time
                n = None
            if n is not None:
                chunks.append((lv, n))
        store_events = [([str(tid), k], v) for tid, t in self.targets.items() for k, v in dict(t.store.counters).items()]
        snap_bytes = [([str(tid), str(sn), kind], v) for tid, per in dict(self.svc.usage).items()
                      for sn, (ex, sh) in sorted(per.items()) for kind, v in (("exclusive", ex), ("shared", sh))]
        return [
            gauge("dfs_data_target_capacity_bytes", "size of the target's file system", labels=["target"],
                  samples=[(lv, total) for lv, total, _ in caps]),
            gauge("dfs_data_target_free_bytes", "bytes chunk writes may still use on the target (after the reserve)",
                  labels=["target"], samples=[(lv, free) for lv, _, free in caps]),
            gauge("dfs_data_target_chunks", "chunks on the target (RocksDB's estimate of its chunk-meta keys)",
                  labels=["target"], samples=chunks),
            gauge("dfs_data_connections", "open data-plane connections (clients and peer data servers)",
                  len(self._conns)),
            gauge("dfs_data_inflight_requests", "data-plane requests being handled", self.inflight),
            gauge("dfs_data_resyncs", "resyncs of a chain into a local target in progress",
                  self.svc.resyncs_running()),
            task_failures(self.tasks.failures),
            gauge("dfs_data_membership_lease_seconds", "seconds left of the lease mgmt's last answered heartbeat "
                  "gave (chain reads need it; negative: run out)", max(-1e6, self.lease.left())),
            gauge("dfs_data_map_epoch", "epoch of the cluster map this server has", self.map.epoch if self.map else 0),
            counter("dfs_data_chain_events", "chain replication events (checksum_errors, repairs, "
                    "installs_forwarded, resync_copied, resync_removed, reads_without_lease)", labels=["event"],
                    samples=[([k], v) for k, v in dict(self.svc.counters).items()]),
            counter("dfs_data_store_events", "chunk store events by target (checksum_errors, nospace, "
                    "scrubbed_bytes, preserved, preserved_bytes, dropped, dropped_bytes, version_changes)",
                    labels=["target", "event"], samples=store_events),
            counter("dfs_data_refused_capabilities", "CAP frames refused: not signed by this cluster, run out, "
                    "or not a capability", self.refused_caps),
            gauge("dfs_data_epoch", "the data epoch this server tags the mutations it heads with", self.svc.epoch),
            gauge("dfs_data_live_snapshots", "snapshots whose chunk versions this server keeps",
                  len(self.svc.live)),
            gauge("dfs_data_held", "1 while a snapshot hold stops client mutations here",
                  0 if self.svc.holding() is None else 1),
            gauge("dfs_data_held_mutations", "client mutations waiting for a snapshot hold to end",
                  self.svc.waiting_on_hold),
            gauge("dfs_data_preserved_versions", "chunk versions kept for snapshots on the target",
                  labels=["target"], samples=[([str(tid)], t.store.preserved_count()) for tid, t in self.targets.items()]),
            gauge("dfs_data_snapshot_bytes", "bytes of chunk versions the target keeps for a live snapshot "
                  "(exclusive: only it reads them; shared: another live snapshot too)",
                  labels=["target", "snapshot", "kind"], samples=snap_bytes),
        ]

    def _account(self, h: dp.Header, payload, rh: dp.Header, rp, seconds: float) -> None:
        st = rh.status
        self._requests.observe(h.op, seconds, "ok" if st == 0 else "error")
        if st != 0:
            return
        op = h.op
        if op == dp.READ or op == dp.SYNC_FETCH:
            c = self._read_bytes.get(h.target)
            if c is not None:
                c.inc(rp.count if isinstance(rp, Extent) else len(rp))
        elif op == dp.WRITE or op == dp.INSTALL:
            c = self._written_bytes.get(h.target)
            if c is not None:
                c.inc(len(payload))

    # ------------------------------------------------------------------ cluster map
    async def _do_refresh(self) -> None:
        m = await self.transport.refresh_map()
        if self.map is None or m.epoch >= self.map.epoch:
            if self.map is None or m.epoch > self.map.epoch:
                log.info("cluster map epoch %d: chains %s", m.epoch,
                         [(c.id, c.version, c.targets, c.syncing) for c in m.chains])
            self.map = m
            self.svc.on_map(m)

    async def refresh_map(self, min_interval: float = 0.05) -> None:
        """Fetch the map (one fetch at a time; callers arriving during one wait for it)."""
        loop = asyncio.get_running_loop()
        if self._refresh_task is None or self._refresh_task.done():
            if loop.time() - self._last_refresh < min_interval:
                return
            self._last_refresh = loop.time()
            self._refresh_task = loop.create_task(self._do_refresh())
        try:
            await asyncio.shield(self._refresh_task)
        except (err.DfsError, grpc.aio.AioRpcError) as e:
            log.info("map refresh failed: %s", e)

    # ------------------------------------------------------------------ heartbeats
    def _stub(self, addr: str) -> pbg.MgmtServiceStub:
        ch = self._channels.get(addr)
        if ch is None:
            ch = self._channels[addr] = self.auth.client.channel(addr, CHANNEL_OPTIONS)
        return pbg.MgmtServiceStub(ch)

    def _target_states(self) -> list[pb.TargetState]:
        out = []
        for tid, t in self.targets.items():
            try:
                total, free = t.store.capacity()
            except OSError:
                total, free = 0, 0
            state = "serving"
            if self.map is not None and any(tid in c.syncing for c in self.map.chains):
                state = "syncing"
            out.append(pb.TargetState(id=tid, state=state, total=total, free=free,
                                      synced=[pb.SyncedChain(chain=cid, version=v)
                                              for cid, v in self.svc.synced_chains(tid)],
                                      snapshots=[pb.SnapshotUsage(epoch=sn, exclusive=ex, shared=sh)
                                                 for sn, (ex, sh) in sorted(self.svc.usage.get(tid, {}).items())]))
        return out

    async def heartbeat_once(self) -> bool:
        req = pb.HeartbeatRequest(role="data", server=self.id, address=self.me.address, state="up",
                                  targets=self._target_states())
        addrs = [m.address for m in self.cfg.mgmt]
        if self._mgmt_leader in addrs:
            addrs.remove(self._mgmt_leader)
            addrs.insert(0, self._mgmt_leader)
        for addr in addrs:
            sent = self.lease.now()
            try:
                rep = await self._stub(addr).Heartbeat(req, timeout=2.0, metadata=self._hb_metadata)
            except grpc.aio.AioRpcError:
                continue
            if rep.status == err.NOT_LEADER:
                if rep.leader and rep.leader != addr:
                    try:
                        sent = self.lease.now()
                        rep = await self._stub(rep.leader).Heartbeat(req, timeout=2.0, metadata=self._hb_metadata)
                        addr = rep.leader or addr
                    except grpc.aio.AioRpcError:
                        continue
                else:
                    continue
            if rep.status != 0:
                continue
            self.lease.renewed(sent)
            self._mgmt_leader = addr
            if self.map is None or rep.epoch > self.map.epoch:
                await self.refresh_map(0)
            return True
        return False

    async def mgmt_admin(self, cmd: list) -> list | None:
        """One mgmt command through Admin with the internal token (dfs.route.mgmt): what it
        answered beyond the epoch, or None if no leader answered. A refusal raises it."""
        try:
            return await self._admin.command(cmd, deadline=5.0)
        except err.Unavailable:
            return None

    async def resolve_hold(self, snap: int) -> tuple[int, list[int]] | None:
        """An expired hold: abort the snapshot unless it was made ready meanwhile; through
        mgmt's log either way, so the answer (the epochs to resume with) is final."""
        res = await self.mgmt_admin(["snap_abort", snap])
        if res is None:
            return None
        state, epoch, live = res
        log.info("hold for snapshot %d: mgmt says %s; data epoch %d, live %s", snap, state, epoch, live)
        return epoch, live

    async def usage_loop(self) -> None:
        while True:
            await asyncio.sleep(USAGE_INTERVAL)
            try:
                await self.svc.refresh_usage()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("counting snapshot usage")

    async def heartbeats(self) -> None:
        while True:
            try:
                await self.heartbeat_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("heartbeat")
            await asyncio.sleep(self.heartbeat_interval)

    async def scrub_loop(self, tid: int) -> None:
        from dfs.data.scrub import Scrubber

        t = self.targets[tid]
        rate = self.cfg.scrub_rate or None  # 0: unlimited
        s = Scrubber(t.store, lambda ino, index, preserved=None: self.svc.repair_chunk(tid, ino, index, preserved),
                     rate)
        self.scrubbers[tid] = s
        while True:
            await asyncio.sleep(self.cfg.scrub_interval * (0.5 + random.random()))
            try:
                st = await s.run_once()
                # running totals since the server started
                log.info("scrub of target %d: pass %d, %d chunks, %d bad, %d repaired, %d repair failures, "
                         "%d preserved versions", tid, st.passes, st.chunks, st.bad_chunks, st.repaired,
                         st.repair_failures, st.versions)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("scrub of target %d", tid)

    # ------------------------------------------------------------------ orphan scan
    async def inodes_exist(self, inos: list[int]) -> dict[int, bool | None]:
        """Whether each inode exists, asking its shard (GETATTRS scan, root caller): True, False
        (ENOENT), or None (any other answer or error, e.g. EBUSY for a deleted file whose
        chunks the shard leader frees itself: unknown)."""
        out: dict[int, bool | None] = {}
        if self.transport.map is None:
            await self.refresh_map(0)
        nshards = len(self.transport.map.shards) if self.transport.map is not None else 0
        by_shard: dict[int, list[int]] = {}
        for ino in inos:
            sh = shard_of(ino)
            if sh < nshards:
                by_shard.setdefault(sh, []).append(ino)
            else:
                out[ino] = None
        for sh, group in by_shard.items():
            for i in range(0, len(group), ORPHAN_BATCH):
                part = group[i:i + ORPHAN_BATCH]
                try:
                    # scan: an orphan the leader still has to free (maybe after a reader) is EBUSY
                    res = await self.transport.call(sh, Op.GETATTRS, ROOT, [part, True])
                except (err.DfsError, grpc.aio.AioRpcError) as e:
                    log.info("orphan scan: shard %d did not answer: %s", sh, e)
                    res = None
                if not isinstance(res, list) or len(res) != len(part):
                    out.update(dict.fromkeys(part))
                    continue
                for ino, r in zip(part, res):
                    out[ino] = (False if r == E.ENOENT else None) if isinstance(r, int) else True
        return out

    async def _remove_orphan(self, tid: int, ino: int) -> int:
        """Drop this target's chunks of ``ino`` (and their chain index entries); local only.
        Versions a live snapshot reads stay (the inode existed when it was taken)."""
        return await self.svc.remove_local_inode(tid, ino)

    async def orphan_loop(self, tid: int) -> None:
        from dfs.data.orphans import OrphanScanner

        t = self.targets[tid]
        s = OrphanScanner(t.store, self.inodes_exist, self.cfg.orphan_grace,
                          remove=lambda ino: self._remove_orphan(tid, ino), run=t.run)
        self.orphan_scanners[tid] = s
        while True:
            await asyncio.sleep(self.cfg.orphan_scan_interval * (0.5 + random.random()))
            try:
                st = await s.run_once()
                log.info("orphan scan of target %d: pass %d, %d inodes, %d live, %d unknown, %d young, "
                         "%d removed (%d chunks), %d errors", tid, s.passes, st.inodes, st.live, st.unknown,
                         st.young, st.removed_inodes, st.removed_chunks, st.errors)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("orphan scan of target %d", tid)

    # ------------------------------------------------------------------ data plane
    async def handshake(self, reader: dp.FrameReader, writer: dp.FrameWriter, admit=None) \
            -> tuple[bool, bool, tuple[dp.Header, memoryview] | None]:
        """The connection's first frame: (go on?, internal?, a request to handle first).

        A HELLO is answered (EACCES when the cluster has a client token and the
        HELLO does not show it, or it shows an internal token that is not the
        cluster's: go on = False). Without a client token a first frame that is
        a request is handed back to be handled (``admit``: its charge to the
        budget, as ``read_frame``'s). Whatever the peer sends, this returns (or
        raises OSError): a connection that breaks the protocol is closed, never
        the server's task."""
        required = self.auth.expected is not None
        try:
            h, payload = await asyncio.wait_for(
                reader.read_frame(limit=dp.HELLO_MAX if required else dp.MAX_PAYLOAD,
                                  admit=None if required else admit), self.hello_timeout)
        except (TimeoutError, ConnectionError, dp.ProtocolError, dp.PayloadChecksumError, OSError) as e:
            log.debug("connection closed before its HELLO: %s", e)
            return False, False, None
        if h.op != dp.HELLO:
            if required:
                log.info("connection refused: %s before HELLO", h.name)
                return False, False, None
            return True, False, (h, payload)
        internal = False
        try:
            d = dp.parse_hello(h, payload)
            why = self.auth.check(d.get("token"))
            if why is None and "internal" in d:
                internal = self.auth.check_internal(d["internal"])
                if not internal:
                    why = "wrong internal token"
        except dp.ProtocolError as e:
            why = str(e)
        if why is not None:
            log.info("connection refused: %s", why)
            try:
                await writer.send(dp.reply_to(h, status=E.EACCES), why.encode())
            except OSError:
                pass
            return False, False, None
        await writer.send(dp.reply_to(h)._replace(arg=dp.HELLO_VERSION), msgpack.packb({}))
        return True, internal, None

    def _charge(self, h: dp.Header) -> int:
        """The bytes a client request holds while it is handled: its payload, and the
        reply a READ builds in memory (one sent from the chunk file costs none)."""
        n = h.length
        if h.op == dp.READ:
            t = self.targets.get(h.target)
            zero_copy = h.flags & dp.F_BLOCKS and t is not None and t.store.block_size == dp.BLOCK_SIZE
            if not zero_copy:
                n += min(h.arg, dp.MAX_PAYLOAD)
        return n

    def _take_cap(self, h: dp.Header, payload, caps: CapSet | None) -> tuple[dp.Header, bytes]:
        """A CAP frame: checked and added to the connection's set; the reply to send."""
        if caps is None:  # a server's connection, or a cluster that does not check them
            return dp.reply_to(h), b""
        try:
            caps.add(self.signer.verify(payload))
        except CapError as e:
            self.refused_caps += 1
            log.debug("capability refused: %s", e)
            return dp.reply_to(h, status=E.EACCES), str(e).encode()
        return dp.reply_to(h), b""

    @staticmethod
    def _cap_allows(h: dp.Header, caps: CapSet) -> bool:
        need = dp.cap_need(h)
        return need is None or caps.allows(h.ino, need[0], need[1], time.time_ns())

    async def serve_conn(self, sock: socket.socket) -> None:
        conn = next(self._conn_ids)
        reader = dp.FrameReader(sock, PREAUTH_BUFFER, replies=False)
        writer = dp.FrameWriter(sock)
        sem = asyncio.Semaphore(MAX_CONN_REQUESTS)
        tasks: set[asyncio.Task] = set()
        held = 0  # charged to the budget for the frame being read
        budget = self.budget

        async def admit(h: dp.Header) -> None:
            nonlocal held
            n = self._charge(h)
            await budget.acquire(n)
            held = n

        self._preauth += 1
        try:
            ok, internal, first = await self.handshake(reader, writer, admit)
        except OSError:
            ok, internal, first = False, False, None
        finally:
            self._preauth -= 1
        if held and first is None:  # a HELLO (or a frame that broke off) was charged: not a request
            budget.release(held)
            held = 0
        if not ok:
            sock.close()
            return
        reader.grow()
        if internal:
            budget = None
        # a client's capabilities (servers need none); None: the cluster does not check them
        caps = CapSet() if self.signer is not None and not internal else None

        async def one(h: dp.Header, payload, charged: int) -> None:
            logs.set_op(f"c{conn}.{h.req_id}")  # this task's log lines name the request
            self.inflight += 1
            try:
                t0 = time.perf_counter()
                if not internal and dp.needs_internal(h):
                    rh, rp = dp.reply_to(h, status=E.EPERM), b"data servers only (internal token)"
                elif caps is not None and not self._cap_allows(h, caps):
                    rh, rp = dp.reply_to(h, status=E.ENOKEY), b"no capability for this request on this connection"
                else:
                    rh, rp = await self.svc.handle(h, payload)
                if self._requests is not None:
                    try:
                        self._account(h, payload, rh, rp, time.perf_counter() - t0)
                    except Exception:  # metrics must never cost a reply
                        log.exception("metrics of %s", h.name)
                del payload  # the budget's bytes: no longer held once the reply is built
                if isinstance(rp, Extent):
                    try:
                        await writer.send_extent(rh, rp.crcs, rp.fd, rp.start, rp.count)
                    finally:
                        os.close(rp.fd)
                else:
                    await writer.send(rh, rp)
            except ConnectionError:
                sock.close()  # a frame could not be completed: the stream is unusable
            except OSError:
                pass
            finally:
                self.inflight -= 1
                if charged:
                    budget.release(charged)
                sem.release()

        try:
            while True:
                await sem.acquire()
                try:
                    if first is not None:  # a request instead of a HELLO (no client token), charged
                        (h, payload), first = first, None
                    else:
                        h, payload = await reader.read_frame(admit=admit if budget is not None else None)
                except dp.PayloadChecksumError as e:
                    sem.release()
                    if held:
                        budget.release(held)
                        held = 0
                    await writer.send(dp.reply_to(e.header, status=5), b"payload checksum mismatch")
                    continue
                except BaseException:
                    sem.release()
                    if held:
                        budget.release(held)
                        held = 0
                    raise
                charged, held = held, 0
                if h.op == dp.CAP:  # inline: the requests after it on this connection may use it
                    if charged:
                        budget.release(charged)
                    sem.release()
                    await writer.send(*self._take_cap(h, payload, caps))
                    continue
                t = asyncio.get_running_loop().create_task(one(h, payload, charged))
                del payload
                tasks.add(t)
                t.add_done_callback(tasks.discard)
        except (ConnectionError, dp.ProtocolError, OSError) as e:
            log.debug("connection closed: %s", e)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug: lose the connection, never the server's task
            log.exception("connection %d", conn)
        finally:
            if tasks:
                await asyncio.wait(tasks, timeout=5.0)
            sock.close()

    def _accept(self, conn: socket.socket) -> bool:
        """Whether a new connection may stay (under the caps), else it is closed at once."""
        if len(self._conns) >= self.max_connections or self._preauth >= self.max_preauth:
            self.refused_connections += 1
            if self.refused_connections & (self.refused_connections - 1) == 0:  # 1, 2, 4, 8, ...: a flood logs little
                log.warning("connection refused: %d open, %d before their HELLO (caps %d, %d); %d refused so far",
                            len(self._conns), self._preauth, self.max_connections, self.max_preauth,
                            self.refused_connections)
            conn.close()
            return False
        return True

    async def accept_loop(self, lsock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(lsock)
            except OSError as e:  # out of file descriptors (EMFILE/ENFILE), a reset before accept
                log.warning("accept: %s", e)
                await asyncio.sleep(0.1)  # the process's limit: let connections close before trying again
                continue
            if not self._accept(conn):
                continue
            dp.tune(conn)
            t = loop.create_task(self.serve_conn(conn))
            self._conns.add(t)
            t.add_done_callback(self._conns.discard)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        host, port = dp.split_address(self.me.address)
        lsock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lsock.bind((host, port))
        lsock.listen(1024)
        lsock.setblocking(False)
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if self.metrics is not None:
            self.metrics.serve(self.me.metrics)
        tasks = self.tasks
        tasks.spawn("heartbeats", self.heartbeats)
        # without its accept loop the server serves nothing: exit, and be restarted, rather than linger
        tasks.spawn("accept", lambda: self.accept_loop(lsock), policy="fatal")
        for tid in self.targets:
            tasks.spawn(f"scrub.{tid}", functools.partial(self.scrub_loop, tid))
            tasks.spawn(f"orphan-scan.{tid}", functools.partial(self.orphan_loop, tid))
        tasks.spawn("snapshot-usage", self.usage_loop)
        log.info("data server %d serving targets %s on %s", self.id, sorted(self.targets), self.me.address)
        await stop.wait()
        log.info("stopping")
        try:
            await asyncio.wait_for(tasks.stop(), 5.0)
        except TimeoutError:
            log.warning("background tasks did not stop within 5 s: %s", tasks.running())
        lsock.close()
        await self.svc.stop()
        conns = list(self._conns)
        for t in conns:
            t.cancel()
        if conns:
            await asyncio.wait(conns, timeout=5.0)
        await self.peers.close()
        await self.transport.close()
        for ch in self._channels.values():
            await ch.close()
        if self.metrics is not None:
            self.metrics.close()
        for t in self.targets.values():
            t.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="dfs-data")
    ap.add_argument("--config", required=True)
    ap.add_argument("--server", type=int, required=True)
    a = ap.parse_args(argv)
    os.umask(0o077)  # chunks, RocksDB, the log: readable by this server's user only
    logs.setup(f"data[{a.server}]")
    cfg = ClusterConfig.load(a.config)
    asyncio.run(DataServer(cfg, a.server).run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
