"""A metadata shard's request handling, independent of the transport.

``ShardService.execute`` takes one decoded operation and returns its result or
raises a ``DfsError``: reads are served from applied state on the leader,
single-shard mutations go through the log (group-committed), cross-shard
operations through the coordinator. The gRPC server (``dfs.meta.server``) and
the in-process engine (``dfs.meta.local``) both call it.

Freeing space: deleting a regular file's last link leaves an orphan record
(``O`` ino -> [layout, size]) in the same command. With a ``chunk_remover``
(``async (ino, layout, size) -> None``, which removes the inode's chunks on
every chain of its layout), a task on the leader takes orphan records,
awaits the remover and then deletes the record through the log
(``ORPHANDONE``); a remover that raises leaves the record for the next pass.
Without a remover (``None``: no data servers, or a server not wired to them
yet) the records stay, to be freed by a later run that has one.

Open handles: a client's OPEN keeps a regular file alive (also after its last
link went) until its lease runs out; a task on the leader submits
``EXPIREHANDLES`` whenever the earliest expiry on the shard has passed, which
drops expired handles and deletes the link-less files they kept. A new leader
waits ``handle_grace`` seconds (one default lease) before it expires anything,
so that clients cut off by a failover or a restart get to renew first.

Read handles (OPENREAD / RENEWREAD / CLOSEREAD) live in the leader's memory
instead, with no Raft round per open or close: see ``dfs.meta.readhandles``.

Delegated inode ids (lazy clients, ``dfs.meta.ops.delegate``): a task on the
leader submits ``EXPIREDELEGATIONS`` whenever the earliest grant expiry has
passed, which drops the grants of sessions that stopped renewing (a crashed
client); their unused ids are never used.

Routing is the registry's (``dfs.meta.ops.HANDLERS``): each op's ``Kind`` says
whether it is read here, logged, served from the read-handle table or
coordinated. Only requests that need it are decoded here (reads, read
handles, coordinated ops, logged ops with an ``admit`` check); a logged
command carries the wire fields as they came and MetaStore decodes them.

May import dfs.common, dfs.consensus.api and dfs.meta; not grpc.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgpack

from dfs.common import errors as err
from dfs.common import messages as m
from dfs.common.messages import Kind, to_wire
from dfs.common.ops import DEFAULT_LEASE_S, Op
from dfs.common.records import Attr, Caller
from dfs.common.shards import ShardCalls
from dfs.common.tasks import Supervisor
from dfs.consensus.api import Log
from dfs.meta.coordinator import Coordinator, Recovery
from dfs.meta.ops import handler
from dfs.meta.ops.delegate import next_expiry as next_delegation_expiry
from dfs.meta.readhandles import MARK_AHEAD_NS, MARK_SKEW_NS, ReadHandles, foreign_until
from dfs.meta.snapshots import Holds, Registry, SnapshotCoordinator
from dfs.meta.store import MetaStore, encode_command, unpackb

INTERNAL = Caller(0, 0, ())

ChunkRemover = Callable[[int, int, int], Awaitable[None]]  # (ino, packed layout, size)

log = logging.getLogger(__name__)


class _Shards:
    """The coordinator's ShardCalls: this shard directly, the others through the peers."""

    def __init__(self, svc: ShardService, peers: ShardCalls) -> None:
        self.svc = svc
        self.peers = peers
        self.nshards = svc.store.nshards  # follows the cluster map (ShardService.set_nshards)

    async def call(self, shard: int, op: Op, caller: Caller, args: list, rid: bytes = b"",
                   ts: int | None = None) -> Any:
        if shard == self.svc.shard:
            return await self.svc.execute(op, rid, caller, args, ts=ts)
        return await self.peers.call(shard, op, caller, args, rid=rid, ts=ts)

    async def call_many(self, shard: int, ops: list[tuple[Op, Caller, list, bytes]]) -> list[Any]:
        if shard != self.svc.shard:
            return await self.peers.call_many(shard, ops)
        out: list[Any] = []
        for op, caller, args, rid in ops:
            try:
                out.append(await self.svc.execute(op, rid, caller, args))
            except err.DfsError as e:
                out.append(e)
        return out

    async def close(self) -> None:
        """The peers belong to the server."""


class ShardService:
    def __init__(self, store: MetaStore, log_: Log, peers: ShardCalls, clock=time.time_ns,
                 submit_timeout: float = 5.0, chunk_remover: ChunkRemover | None = None,
                 chain_replicas: int | None = None, handle_grace: float = DEFAULT_LEASE_S,
                 snapshot_registry: Registry | None = None, snapshot_holds: Holds | None = None) -> None:
        self.store = store
        # The cluster has one chain table, all of whose chains have this many
        # targets; a layout asking for another count would not get it.
        self.chain_replicas = chain_replicas
        self.shard = store.shard
        self.log = log_
        self.clock = clock
        self.submit_timeout = submit_timeout
        self.coordinator = Coordinator(self.shard, _Shards(self, peers), clock, pending=self._pending)
        self.recovery = Recovery(self.coordinator)
        self.snapshots = SnapshotCoordinator(self, snapshot_registry, snapshot_holds, clock=clock)
        self.tasks = Supervisor()  # the leader's background loops (dfs/common/tasks.py): none stops silently
        self._recovery_task: asyncio.Task | None = None
        self._prune_task: asyncio.Task | None = None
        self.chunk_remover = chunk_remover
        self._orphan_task: asyncio.Task | None = None
        self.handle_grace = handle_grace
        self._handle_task: asyncio.Task | None = None
        self.stats: dict[str, int] = {}
        self.reads = ReadHandles()
        self._mark: tuple[int, int] = (-1, 0)  # (term, until ns) of this leader's last READMARK
        self._mark_lock = asyncio.Lock()
        self._barrier_term = -1  # the term whose READMARK barrier the orphan task has passed
        self._grant_task: asyncio.Task | None = None
        self.signer = None  # dfs.common.caps.Signer: CAPS signs with it (None: capabilities are off)

    def set_nshards(self, n: int) -> bool:
        """The cluster map names ``n`` shards; counts only grow. Whether it changed."""
        if n <= self.coordinator.shards.nshards:
            return False
        self.coordinator.shards.nshards = n
        self.store.nshards = n
        return True

    def _pending(self, prefix: bytes = b"") -> list:
        """This shard's cross-shard operation records (the coordinator's recovery reads them)."""
        return self.store.pending_ops(prefix)

    def _check_leader(self) -> None:
        if not self.log.is_leader:
            raise err.NotLeader(leader=self.log.leader or "")

    def _check_read(self) -> None:
        """Before answering from this replica's state: its read lease (dfs.consensus.raft
        RaftHost.read_lease) holds, or the client tries again (it may be a leader that lost
        its majority without knowing yet)."""
        if not self.log.read_lease():
            raise err.Unavailable("leadership unconfirmed: no majority heard from within the read lease")

    async def execute(self, op: int, rid: bytes, caller: Caller, args: list, ts: int | None = None) -> Any:
        """Run one op (its wire fields ``args``): the reply's wire form; raises DfsError."""
        h = handler(op)
        if not isinstance(args, list):
            raise err.InvalidArgument("arguments must be a list")
        self._check_leader()
        kind = h.kind
        if kind is Kind.READ:
            return self._read(h, caller, args)
        if kind is Kind.LOGGED:
            # decoded here too: a malformed request is EINVAL before it costs a Raft entry
            # and leaves an idempotency record (bad input changes nothing)
            req = h.decode(args)
            if h.admit is not None:
                h.admit(self, req)
            cmd = encode_command(h.op, rid, ts or self.clock(), caller, args)
            raw = await self.log.submit(cmd, timeout=self.submit_timeout)
            status, payload = unpackb(raw)
            if status:
                raise err.error_for(status, payload)
            return payload
        if kind is Kind.READ_HANDLE or kind is Kind.LEADER:
            self._check_read()
            return to_wire(await h.fn(self, rid, caller, h.decode(args)))
        return to_wire(await self.coordinator.run(h, rid, caller, h.decode(args)))

    def _read(self, h, caller: Caller, args: list) -> Any:
        """A read op's wire reply, from this leader's applied state."""
        self._check_read()
        req = h.decode(args)
        try:
            return to_wire(self.store.read_request(h, caller, req))
        except err.NotFound:
            attr = None if getattr(req, "snap", 0) else self._held_orphan_attr(req)
            if attr is None:
                raise
            return to_wire(attr)

    async def request(self, req: m.Request, rid: bytes = b"", caller: Caller = INTERNAL,
                      ts: int | None = None) -> Any:
        """``execute`` of a typed request on this shard: its typed reply."""
        return req.reply_from_wire(await self.execute(req.OP, rid, caller, req.to_wire(), ts=ts))

    async def execute_batch(self, items: list[tuple[int, bytes, Caller, list]]) -> list[Any]:
        """Many operations at once, answered in order (a result or a DfsError each).

        Single-shard mutations are encoded together and handed to the log in
        one call, so they share Raft entries without a waiter per operation;
        reads are served at once; cross-shard operations run concurrently."""
        self._check_leader()
        out: list[Any] = [None] * len(items)
        logged: list[int] = []
        cmds: list[bytes] = []
        others = []
        now = self.clock()
        for i, (op, rid, caller, args) in enumerate(items):
            try:
                h = handler(op)
                if not isinstance(args, list):
                    raise err.InvalidArgument("arguments must be a list")
                if h.kind is Kind.READ:
                    out[i] = self._read(h, caller, args)
                elif h.kind is Kind.LOGGED:
                    req = h.decode(args)  # malformed: EINVAL, nothing logged (as execute)
                    if h.admit is not None:
                        h.admit(self, req)
                    logged.append(i)
                    cmds.append(encode_command(h.op, rid, now, caller, args))
                else:
                    others.append(i)
            except err.DfsError as e:
                out[i] = e
            except Exception as e:  # a bug in one op: its EIO, not the whole batch's failure
                log.exception("op %s of a batch failed", op)
                out[i] = err.DfsError(repr(e))

        async def one(i: int) -> None:
            op, rid, caller, args = items[i]
            try:
                out[i] = await self.execute(op, rid, caller, args)
            except err.DfsError as e:
                out[i] = e
            except Exception as e:  # a bug in one op: its EIO, as in a request of its own
                log.exception("op %s of a batch failed", op)
                out[i] = err.DfsError(repr(e))

        tasks = [asyncio.ensure_future(one(i)) for i in others]
        if cmds:
            submit_many = getattr(self.log, "submit_many", None)
            if submit_many is not None:
                raws = await submit_many(cmds, timeout=self.submit_timeout)
            else:
                raws = []
                for c in cmds:
                    try:
                        raws.append(await self.log.submit(c, timeout=self.submit_timeout))
                    except err.DfsError as e:
                        raws.append(e)
            for i, raw in zip(logged, raws):
                if isinstance(raw, Exception):
                    out[i] = raw if isinstance(raw, err.DfsError) else err.DfsError(repr(raw))
                    continue
                status, payload = unpackb(raw)
                out[i] = err.error_for(status, payload) if status else payload
        if tasks:
            await asyncio.gather(*tasks)
        return out

    async def execute_wire(self, op: int, rid: bytes, caller: Caller, body: bytes) -> tuple[int, str, bytes]:
        """(status, message, body) for the transport: never raises for bad input."""
        try:
            args = msgpack.unpackb(body, raw=False, use_list=True, strict_map_key=False) if body else []
        except Exception:
            return errno.EINVAL, "malformed body", b""
        try:
            res = await self.execute(op, rid, caller, args)
        except err.DfsError as e:
            return e.errno, e.detail or "", b""
        return 0, "", msgpack.packb(res)

    # ------------------------------------------------------------ read handles (dfs.meta.ops.openread)
    def _held_orphan_attr(self, req: Any) -> Attr | None:
        """GETATTR of a deleted file that a read handle here still holds: its attributes at deletion."""
        if not isinstance(req, m.Getattr):
            return None
        ino = req.ino
        if not self.reads.live(ino, self.clock()):
            return None
        wire = self.store.orphan_attr(ino)
        if wire is not None:
            return m.from_wire(Attr, wire)
        if ino in self.reads.attrs:
            return dataclasses.replace(m.from_wire(Attr, self.reads.attrs[ino]), nlink=0)  # it was deleted
        return None

    async def ensure_mark(self, expiry: int) -> None:
        """Make sure a committed READMARK of this term covers read handles until ``expiry``."""
        term = self.log.term
        if self._mark[0] == term and self._mark[1] >= expiry:
            return
        async with self._mark_lock:
            term = self.log.term
            if self._mark[0] == term and self._mark[1] >= expiry:
                return  # another open's mark covered this one meanwhile
            until = expiry + MARK_AHEAD_NS
            await self.request(m.ReadMark(term, until))
            self._mark = (term, until)

    async def _orphans_may_go(self) -> bool:
        """Whether no read handle of an earlier leader may still be live (see readhandles)."""
        term = self.log.term
        if self._barrier_term != term:
            # a command of this term: once applied, so is every mark committed before it
            await self.request(m.ReadMark(term, 0))
            self._barrier_term = term
        return self.clock() >= foreign_until(self.store.read_mark(), term) + MARK_SKEW_NS

    # ------------------------------------------------------------ recovery
    def start_recovery(self, interval: float = 0.5) -> None:
        """Start the leader's background tasks: 2PC recovery, and freeing orphans (with a chunk_remover)."""
        if self._recovery_task is None:
            self._recovery_task = self.tasks.spawn("recovery", lambda: self._recovery_loop(interval))
        self.start_orphans(interval)
        self.start_handles(interval)
        self.start_delegations(interval)
        self.start_pruning(max(interval, 0.5))

    # ------------------------------------------------------------ snapshot history
    def start_pruning(self, interval: float = 1.0) -> None:
        if self._prune_task is None:
            self._prune_task = self.tasks.spawn("snapshot-pruning", lambda: self._prune_loop(interval))

    async def prune_history(self, limit: int = 1000) -> int:
        """Leader: one pass of SNAPPRUNE steps over the history (what no live snapshot reads
        any more goes); returns the entries removed. Nothing is logged while nothing is owed."""
        if not self.log.is_leader or not self.store.epochs.unpruned:
            return 0
        total, cursor = 0, b""
        while True:
            r = await self.request(m.SnapPrune(cursor, limit))
            total += r.removed
            if r.cursor is None:
                return total
            cursor = r.cursor

    async def _prune_loop(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                n = await self.prune_history()
                if n:
                    log.info("pruned %d snapshot history entries", n)
            except err.DfsError as e:
                log.info("snapshot history pruning: %s", e)
            except Exception:
                log.exception("snapshot history pruning failed")

    def start_handles(self, interval: float = 0.5) -> None:
        if self._handle_task is None:
            self._handle_task = self.tasks.spawn("read-handle-expiry", lambda: self._handle_loop(interval))

    async def expire_handles(self, limit: int = 1000) -> int:
        """Expire the open handles whose lease ran out (by this leader's clock, stamped into
        the EXPIREHANDLES command); returns how many. Leader only; no command is logged
        while nothing has expired."""
        if not self.log.is_leader:
            return 0
        total = 0
        while True:
            nxt = self.store.next_handle_expiry()
            if nxt is None or nxt >= self.clock():
                return total
            expired = (await self.request(m.ExpireHandles(limit))).expired
            total += expired
            if expired < limit:
                return total

    async def _handle_loop(self, interval: float) -> None:
        leader_since: float | None = None
        while True:
            await asyncio.sleep(interval)
            if not self.log.is_leader:
                leader_since = None
                self.reads.clear()  # a later leader has its own; clients renew with it
                continue
            self.reads.prune(self.clock())
            now = time.monotonic()
            if leader_since is None:
                leader_since = now
            if now - leader_since < self.handle_grace:
                continue  # a new leader: clients get one lease to renew first
            try:
                await self.expire_handles()
            except err.DfsError as e:
                log.info("handle expiry: %s", e)
            except Exception:
                log.exception("handle expiry failed")
            self.stats["handle_passes"] = self.stats.get("handle_passes", 0) + 1

    # ------------------------------------------------------------ delegated inode ids
    def start_delegations(self, interval: float = 0.5) -> None:
        if self._grant_task is None:
            self._grant_task = self.tasks.spawn("delegation-expiry", lambda: self._delegation_loop(interval))

    async def expire_delegations(self, limit: int = 1000) -> int:
        """Drop the delegations whose lease ran out (by this leader's clock, stamped into the
        EXPIREDELEGATIONS command); returns how many. Leader only; nothing is logged while
        nothing has expired."""
        if not self.log.is_leader:
            return 0
        total = 0
        while True:
            nxt = next_delegation_expiry(self.store.kv)
            if nxt is None or nxt >= self.clock():
                return total
            expired = (await self.request(m.ExpireDelegations(limit))).expired
            total += expired
            if expired < limit:
                return total

    async def _delegation_loop(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            if not self.log.is_leader:
                continue
            try:
                await self.expire_delegations()
            except err.DfsError as e:
                log.info("delegation expiry: %s", e)
            except Exception:
                log.exception("delegation expiry failed")
            self.stats["grant_passes"] = self.stats.get("grant_passes", 0) + 1

    def start_orphans(self, interval: float = 0.5) -> None:
        if self._orphan_task is None and self.chunk_remover is not None:
            self._orphan_task = self.tasks.spawn("orphan-sweep", lambda: self._orphan_loop(interval))

    async def orphan_sweep(self, limit: int = 256) -> int:
        """Free the chunks of up to ``limit`` orphans; returns how many records were cleared.
        Leader only; a no-op without a chunk_remover."""
        if self.chunk_remover is None or not self.log.is_leader:
            return 0
        if not await self._orphans_may_go():
            return 0
        done = 0
        # held orphans are stepped over, so look at as many more as could be held
        for ino, layout, size in self.store.orphans(limit + min(len(self.reads), 10 * limit)):
            if self.reads.live(ino, self.clock()):
                continue  # a reader holds it: freed after its close or lease
            try:
                await self.chunk_remover(ino, layout, size)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the record stays: the next pass tries again
                log.info("freeing the chunks of inode %#x: %s", ino, e)
                continue
            await self.request(m.OrphanDone(ino))
            done += 1
        return done

    async def _orphan_loop(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            if not self.log.is_leader:
                continue
            try:
                await self.orphan_sweep()
            except err.DfsError as e:
                log.info("orphan sweep: %s", e)
            except Exception:
                log.exception("orphan sweep failed")

    async def _recovery_loop(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            if not self.log.is_leader:
                continue
            try:
                await self.recovery.sweep()
            except err.DfsError as e:
                log.info("recovery sweep: %s", e)
            except Exception:
                log.exception("recovery sweep failed")

    async def stop(self) -> None:
        await self.tasks.stop()
        for name in ("_recovery_task", "_orphan_task", "_handle_task", "_prune_task", "_grant_task"):
            setattr(self, name, None)
