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
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgpack

from dfs.common import errors as err
from dfs.common.ops import COORDINATED, DEFAULT_LEASE_S, LOGGED, READS, Op
from dfs.common.records import Caller
from dfs.consensus.api import Log
from dfs.meta.coordinator import Coordinator, Recovery
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
            return self.store.read(op, caller, args)
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
                elif op in COORDINATED:
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
                out[i] = await self.coordinator.run(Op(op), rid, caller, args)
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
                continue
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
        done = 0
        for ino, layout, size in self.store.orphans(limit):
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
