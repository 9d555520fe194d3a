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
"""

from __future__ import annotations

import asyncio
import errno
import logging
import stat
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgpack

from dfs.common import errors as err
from dfs.common.ops import COORDINATED, DEFAULT_LEASE_S, LOGGED, READ_HANDLES, READS, Op
from dfs.common.records import FLAG_INLINE, Caller
from dfs.consensus.api import Log
from dfs.meta.coordinator import Coordinator, Recovery
from dfs.meta.readhandles import MARK_AHEAD_NS, MARK_SKEW_NS, MAX_READ_HANDLES, ReadHandles, foreign_until
from dfs.meta.store import MetaStore, encode_command, unpackb

ChunkRemover = Callable[[int, int, int], Awaitable[None]]  # (ino, packed layout, size)

log = logging.getLogger(__name__)


class PeerRouter:
    """How a shard reaches the leaders of the other shards."""

    nshards: int

    async def call(self, shard: int, op: Op, caller: Caller, args: list, rid: bytes = b"",
                   ts: int | None = None) -> Any:
        raise NotImplementedError


class _Shards:
    """The coordinator's view: this shard directly, the others through the router."""

    def __init__(self, svc: ShardService, peers: PeerRouter) -> None:
        self.svc = svc
        self.peers = peers
        self.nshards = svc.store.nshards

    async def call(self, shard: int, op: Op, caller: Caller, args: list, rid: bytes = b"",
                   ts: int | None = None) -> Any:
        if shard == self.svc.shard:
            return await self.svc.execute(op, rid, caller, args, ts=ts)
        return await self.peers.call(shard, op, caller, args, rid=rid, ts=ts)

    async def pending(self, shard: int) -> list:
        assert shard == self.svc.shard
        return self.svc.store.pending_ops()


class ShardService:
    def __init__(self, store: MetaStore, log_: Log, peers: PeerRouter, clock=time.time_ns,
                 submit_timeout: float = 5.0, chunk_remover: ChunkRemover | None = None,
                 chain_replicas: int | None = None, handle_grace: float = DEFAULT_LEASE_S) -> None:
        self.store = store
        # The cluster has one chain table, all of whose chains have this many
        # targets; a layout asking for another count would not get it.
        self.chain_replicas = chain_replicas
        self.shard = store.shard
        self.log = log_
        self.clock = clock
        self.submit_timeout = submit_timeout
        self.coordinator = Coordinator(self.shard, _Shards(self, peers), clock)
        self.recovery = Recovery(self.coordinator)
        self._recovery_task: asyncio.Task | None = None
        self.chunk_remover = chunk_remover
        self._orphan_task: asyncio.Task | None = None
        self.handle_grace = handle_grace
        self._handle_task: asyncio.Task | None = None
        self.stats: dict[str, int] = {}
        self.reads = ReadHandles()
        self._mark: tuple[int, int] = (-1, 0)  # (term, until ns) of this leader's last READMARK
        self._mark_lock = asyncio.Lock()
        self._barrier_term = -1  # the term whose READMARK barrier the orphan task has passed

    def _check_layout(self, args: list) -> None:
        from dfs.common.layout import Layout

        if self.chain_replicas is None or len(args) < 2 or not isinstance(args[1], int) or args[1] == 0:
            return
        want = Layout.unpack(args[1]).replicas
        if want != self.chain_replicas:
            raise err.InvalidArgument(f"this cluster's chains have {self.chain_replicas} replicas, "
                                      f"not {want} (one chain table)")

    def _check_leader(self) -> None:
        if not self.log.is_leader:
            raise err.NotLeader(leader=self.log.leader or "")

    async def execute(self, op: int, rid: bytes, caller: Caller, args: list, ts: int | None = None) -> Any:
        try:
            op = Op(op)
        except ValueError:
            raise err.InvalidArgument(f"unknown op {op}") from None
        if not isinstance(args, list):
            raise err.InvalidArgument("arguments must be a list")
        self._check_leader()
        if op in READS:
            try:
                return self.store.read(op, caller, args)
            except err.NotFound:
                attr = self._held_orphan_attr(op, args)
                if attr is None:
                    raise
                return attr
        if op in READ_HANDLES:
            return await self._read_handle_op(op, rid, caller, args)
        if op in LOGGED:
            if op == Op.SETLAYOUT:
                self._check_layout(args)
            cmd = encode_command(op, rid, ts or self.clock(), caller, args)
            raw = await self.log.submit(cmd, timeout=self.submit_timeout)
            status, payload = unpackb(raw)
            if status:
                raise err.error_for(status, payload)
            return payload
        if op in COORDINATED:
            return await self.coordinator.run(op, rid, caller, args)
        raise err.InvalidArgument(f"op {op!r} is not served here")

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
                op = Op(op)
                if not isinstance(args, list):
                    raise err.InvalidArgument("arguments must be a list")
                if op in READS:
                    out[i] = self.store.read(op, caller, args)
                elif op in LOGGED:
                    if op == Op.SETLAYOUT:
                        self._check_layout(args)
                    logged.append(i)
                    cmds.append(encode_command(op, rid, now, caller, args))
                elif op in COORDINATED or op in READ_HANDLES:
                    others.append(i)
                else:
                    raise err.InvalidArgument(f"op {op!r} is not served here")
            except ValueError:
                out[i] = err.InvalidArgument(f"unknown op {op}")
            except err.DfsError as e:
                out[i] = e

        async def coordinated(i: int) -> None:
            op, rid, caller, args = items[i]
            try:
                out[i] = await self.execute(op, rid, caller, args)
            except err.DfsError as e:
                out[i] = e

        tasks = [asyncio.ensure_future(coordinated(i)) for i in others]
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

    # ------------------------------------------------------------ read handles
    async def _read_handle_op(self, op: Op, rid: bytes, caller: Caller, args: list) -> Any:
        try:
            if op == Op.OPENREAD:
                return await self.open_read(rid, caller, *args)
            if op == Op.LOOKUPOPEN:
                return await self.lookup_open(rid, caller, *args)
            if op == Op.RENEWREAD:
                return await self.renew_read(*args)
            return self.close_read(*args)
        except TypeError:
            raise err.InvalidArgument(f"{op.name}: wrong arguments") from None

    async def open_read(self, rid: bytes, caller: Caller, ino: int, handle: bytes, lease_s, access: int = 0) -> list:
        """OPENREAD: [attr, durable]; see dfs.meta.readhandles."""
        MetaStore._check_handle(handle)
        lease = MetaStore._lease_ns(lease_s)
        i = self.store.open_for_read(caller, ino, access)
        if i.flags & FLAG_INLINE or len(self.reads) >= MAX_READ_HANDLES:
            args = [ino, handle, lease_s] + ([access] if access else [])
            return [await self.execute(Op.OPEN, rid, caller, args), True]
        expiry = self.clock() + lease
        wire = i.wire()
        # before any await: the orphan task sees it at once; an empty file will leave no
        # orphan record to answer GETATTR from, so its attributes are kept here
        self.reads.put(ino, handle, expiry, wire if i.size == 0 else None)
        try:
            await self._ensure_mark(expiry)
        except BaseException:
            self.reads.drop(ino, handle)
            raise
        return [wire, False]

    async def lookup_open(self, rid: bytes, caller: Caller, parent: int, name: bytes, handle: bytes, lease_s,
                          access: int = 0) -> list:
        """LOOKUPOPEN: a path's last step and its open for reading in one round trip."""
        ino, mode, wire = self.store.read(Op.LOOKUP, caller, [parent, name])
        if wire is None or not stat.S_ISREG(mode):
            return [ino, mode, wire, 0]  # another shard's inode, or nothing to open for reading
        attr, durable = await self.open_read(rid, caller, ino, handle, lease_s, access)
        return [ino, mode, attr, 2 if durable else 1]

    async def renew_read(self, pairs: list, lease_s) -> list[int]:
        """RENEWREAD: per pair 0 (extended, or adopted: a failover lost it, the file or its
        orphan record is still here) or ENOENT (the file and its chunks are gone)."""
        lease = MetaStore._lease_ns(lease_s)
        if not isinstance(pairs, list):
            raise err.InvalidArgument("pairs")
        now = self.clock()
        expiry = now + lease
        out = []
        for pair in pairs:
            if not isinstance(pair, list) or len(pair) != 2 or not isinstance(pair[0], int):
                raise err.InvalidArgument("pairs: [[ino, handle]...]")
            ino, handle = pair
            MetaStore._check_handle(handle)
            self.store.check_owned(ino)
            if (self.reads.live_handle(ino, handle, now) or self.store.inode_exists(ino)
                    or self.store.is_orphan(ino)):
                self.reads.put(ino, handle, expiry)
                out.append(0)
            else:
                out.append(errno.ENOENT)
        if any(e == 0 for e in out):
            await self._ensure_mark(expiry)
        return out

    def close_read(self, pairs: list) -> None:
        """CLOSEREAD: forget read handles (unknown ones are fine: closed, expired, another leader's)."""
        if not isinstance(pairs, list):
            raise err.InvalidArgument("pairs")
        for pair in pairs:
            if not isinstance(pair, list) or len(pair) != 2 or not isinstance(pair[0], int):
                raise err.InvalidArgument("pairs: [[ino, handle]...]")
            MetaStore._check_handle(pair[1])
            self.reads.drop(pair[0], pair[1])

    def _held_orphan_attr(self, op: Op, args: list) -> list | None:
        """GETATTR of a deleted file that a read handle here still holds: its attributes at deletion."""
        if op != Op.GETATTR or not args or not isinstance(args[0], int):
            return None
        if not self.reads.live(args[0], self.clock()):
            return None
        attr = self.store.orphan_attr(args[0])
        if attr is None and args[0] in self.reads.attrs:
            attr = list(self.reads.attrs[args[0]])
            attr[2] = 0  # nlink: it was deleted
        return attr

    async def _ensure_mark(self, expiry: int) -> None:
        """Make sure a committed READMARK of this term covers read handles until ``expiry``."""
        term = self.log.term
        if self._mark[0] == term and self._mark[1] >= expiry:
            return
        async with self._mark_lock:
            term = self.log.term
            if self._mark[0] == term and self._mark[1] >= expiry:
                return  # another open's mark covered this one meanwhile
            until = expiry + MARK_AHEAD_NS
            await self.execute(Op.READMARK, b"", Caller(0, 0, ()), [term, until])
            self._mark = (term, until)

    async def _orphans_may_go(self) -> bool:
        """Whether no read handle of an earlier leader may still be live (see readhandles)."""
        term = self.log.term
        if self._barrier_term != term:
            # a command of this term: once applied, so is every mark committed before it
            await self.execute(Op.READMARK, b"", Caller(0, 0, ()), [term, 0])
            self._barrier_term = term
        return self.clock() >= foreign_until(self.store.read_mark(), term) + MARK_SKEW_NS

    # ------------------------------------------------------------ recovery
    def start_recovery(self, interval: float = 0.5) -> None:
        """Start the leader's background tasks: 2PC recovery, and freeing orphans (with a chunk_remover)."""
        if self._recovery_task is None:
            self._recovery_task = asyncio.get_running_loop().create_task(self._recovery_loop(interval))
        self.start_orphans(interval)
        self.start_handles(interval)

    def start_handles(self, interval: float = 0.5) -> None:
        if self._handle_task is None:
            self._handle_task = asyncio.get_running_loop().create_task(self._handle_loop(interval))

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
            expired, _freed = await self.execute(Op.EXPIREHANDLES, b"", Caller(0, 0, ()), [limit])
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

    def start_orphans(self, interval: float = 0.5) -> None:
        if self._orphan_task is None and self.chunk_remover is not None:
            self._orphan_task = asyncio.get_running_loop().create_task(self._orphan_loop(interval))

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
            await self.execute(Op.ORPHANDONE, b"", Caller(0, 0, ()), [ino])
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
        for name in ("_recovery_task", "_orphan_task", "_handle_task"):
            t = getattr(self, name)
            if t is not None:
                t.cancel()
                try:
                    await t
                except asyncio.CancelledError:
                    pass
                setattr(self, name, None)
