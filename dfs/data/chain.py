"""Chain replication and resync on a data server.

``ChainService.handle(header, payload)`` serves one data-plane request for one
of this server's targets (``header.target``) and returns the reply
``(header, payload)``. See docs/design/data.md ("Chain replication",
"Failure and resync") for the protocol; in short:

* **Mutations** (WRITE, TRUNCATE, REMOVE, REMOVE_INODE) from a client go to
  the chain head, routed with ``(chain_id, chain_version)``; a server whose map
  has another version for the chain (after one map refresh) answers ESTALE.
  The head takes a per-chunk lock, assigns ``version = stored + 1``, applies
  locally, forwards (``F_FORWARD``, same version) to the next member (serving
  targets head -> tail, then the syncing ones), waits for the ack, commits,
  releases the lock and answers. A member that receives a forwarded
  WRITE/TRUNCATE applies it only on top of ``version - 1``; otherwise (it
  missed writes, or holds a version that never committed) it answers
  ``NEED_INSTALL`` and its predecessor sends its whole chunk (INSTALL), which
  the member installs and forwards as INSTALL too.
* A downstream target (serving or syncing) that cannot be reached or answers
  an error fails the write (EAGAIN; the client refreshes the map and retries:
  mgmt takes a dead target out within ``target_timeout``). A syncing member
  that silently missed a write could later be promoted without it.
* **Reads** are served by serving members when the chunk has no write in
  flight (``committed == version``) — the tail always (it has everything
  that is acknowledged); otherwise EAGAIN. A chain read also needs the
  server's membership lease (dfs/data/lease.py: a heartbeat mgmt answered
  recently), or a member mgmt took out while it could not hear of it would
  answer from a copy that missed the new chain's writes. A bad block answers EIO
  ("checksum ...") and schedules a repair of the chunk from a peer.
* **Chunk -> chain index.** A chunk's meta does not say which chain it
  belongs to (the layout is per file and unknown here), so each target keeps
  a sidecar RocksDB ``<target>/chains`` owned by this module:
  ``c chain ino index`` and ``i ino index -> chain``, written before the
  chunk's first apply on that target (a stale entry without a chunk is
  harmless and skipped). SYNC_LIST pages through ``c chain``.
* **Resync** (the syncing member's side) is dfs/data/resync.py: passes tied
  to a chain version, listings gated on the tail, forwarded ops recorded so
  that copies never undo them. This module serves SYNC_LIST and SYNC_FETCH
  and tells the resync about every forwarded op. A forward to a syncing
  member that fails fails the write, like one to a serving member.
* **Snapshots** (docs/design/snapshots.md, "Data"). The server has a data
  epoch and a set of live snapshots, from every newer map and from
  SNAP_RESUME (whichever names the higher epoch; never backwards). A chain
  head tags each client mutation with its epoch ``e`` and with ``snap``, the
  newest live snapshot older than ``e``; both travel down the chain in the
  header, so every replica keeps (the store's ``keep``) exactly the versions
  the head keeps. A predecessor answering NEED_INSTALL sends the chunk's
  preserved versions (INSTALL ``F_SNAP``) before the chunk itself. READ
  ``F_SNAP`` reads at a snapshot epoch; a preserved version never changes, so
  any serving member serves it. A chunk keeps its chain index entry while it
  has preserved versions (resync lists them, repair finds its chain). When a
  snapshot leaves the live set, ``drop_unread`` removes, in the background,
  the versions no live snapshot reads; ``refresh_usage`` counts what each live
  snapshot keeps.
* **Hold and resume** (the snapshot coordinator's cut): dfs/data/hold.py.
"""

from __future__ import annotations

import asyncio
import errno as E
import logging
import os
import struct
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import msgpack

from dfs.common import errors as err
from dfs.data.hold import HoldGate
from dfs.data.lease import MembershipLease
from dfs.data.resync import InflightGate, Resyncer, digest, vdigest
from dfs.data.store import Preserved
from dfs.kv import RocksKV, WriteBatch
from dfs.wire import dataplane as dp
from dfs.route.data import Pool

log = logging.getLogger("dfs.data.chain")

MAX_CHUNK = 64 << 20
SYNC_PAGE = 2048
USAGE_INTERVAL = 5.0   # seconds between two counts of a target's preserved versions (when they changed)
_CK = struct.Struct(">IQI")
_IK = struct.Struct(">QI")


class NeedInstall(Exception):
    pass


def chunk_size_of(arg: int) -> int:
    """The chunk size from a packed layout in a header's arg (64 MiB when not given)."""
    shift = arg >> 24
    return 1 << shift if 16 <= shift <= 26 else MAX_CHUNK


class ChainIndex:
    """Sidecar: which chain each chunk on a target was written through."""

    def __init__(self, path: str) -> None:
        self.kv = RocksKV(path)

    def add(self, chain: int, ino: int, index: int) -> None:
        cur = self.kv.get(b"i" + _IK.pack(ino, index))
        if cur is not None and int.from_bytes(cur, "big") == chain:
            return
        b = WriteBatch()
        if cur is not None:
            b.delete(b"c" + _CK.pack(int.from_bytes(cur, "big"), ino, index))
        b.put(b"c" + _CK.pack(chain, ino, index), b"")
        b.put(b"i" + _IK.pack(ino, index), chain.to_bytes(4, "big"))
        self.kv.write(b)

    def remove(self, ino: int, index: int) -> None:
        cur = self.kv.get(b"i" + _IK.pack(ino, index))
        if cur is None:
            return
        b = WriteBatch()
        b.delete(b"c" + _CK.pack(int.from_bytes(cur, "big"), ino, index))
        b.delete(b"i" + _IK.pack(ino, index))
        self.kv.write(b)

    def remove_inode(self, ino: int) -> None:
        b = WriteBatch()
        for k, v in self.kv.scan_prefix(b"i" + ino.to_bytes(8, "big")):
            _, index = _IK.unpack(k[1:])
            b.delete(k)
            b.delete(b"c" + _CK.pack(int.from_bytes(v, "big"), ino, index))
        if len(b):
            self.kv.write(b)

    def chunks(self, chain: int, after: tuple[int, int] | None = None, limit: int | None = None):
        prefix = b"c" + chain.to_bytes(4, "big")
        start = prefix if after is None else b"c" + _CK.pack(chain, after[0], after[1] + 1)
        from dfs.kv import prefix_end

        for k, _ in self.kv.scan(start, prefix_end(prefix), limit):
            _, ino, index = _CK.unpack(k[1:])
            yield ino, index

    def close(self) -> None:
        self.kv.close()


class Target:
    """One target of this server: its store, chain index and a thread pool for disk I/O."""

    def __init__(self, tid: int, store, index: ChainIndex, threads: int = 4) -> None:
        self.id = tid
        self.store = store
        self.index = index
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix=f"t{tid}")

    async def run(self, fn: Callable, *args, **kw):
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, lambda: fn(*args, **kw))

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        self.index.close()
        self.store.close()


class KeyedLocks:
    def __init__(self) -> None:
        self._locks: dict[tuple, list] = {}

    def __call__(self, key: tuple):
        return _Held(self, key)


class _Held:
    __slots__ = ("entry", "key", "locks")

    def __init__(self, locks: KeyedLocks, key: tuple) -> None:
        self.locks, self.key = locks, key

    async def __aenter__(self):
        e = self.locks._locks.get(self.key)
        if e is None:
            e = self.locks._locks[self.key] = [asyncio.Lock(), 0]
        e[1] += 1
        self.entry = e
        await e[0].acquire()

    async def __aexit__(self, *exc):
        e = self.entry
        e[0].release()
        e[1] -= 1
        if e[1] == 0:
            self.locks._locks.pop(self.key, None)


class Extent(NamedTuple):
    """A READ reply to send from a file (see FrameWriter.send_extent); the sender closes fd."""

    fd: int
    start: int
    count: int
    crcs: bytes


class ChainService:
    """The data-plane request handlers of one data server (all its targets)."""

    def __init__(self, targets: dict[int, Target], peers: Pool, *, get_map: Callable, refresh_map: Callable,
                 forward_timeout: float = 10.0, resync_rate: int = 0,
                 resolve_hold: Callable[[int], Awaitable[tuple[int, list[int]] | None]] | None = None,
                 lease: MembershipLease | None = None) -> None:
        self.targets = targets
        self.lease = lease              # None: no mgmt to answer to (in-process tests), reads never gated
        self.peers = peers
        self.get_map = get_map          # () -> ClusterMap | None
        self.refresh_map = refresh_map  # async () -> None (rate-limited by the caller)
        self.forward_timeout = forward_timeout
        self.locks = KeyedLocks()       # (target, ino, index): head ordering, local apply/install ordering
        self.counters = {"checksum_errors": 0, "repairs": 0, "installs_forwarded": 0, "resync_copied": 0,
                         "resync_removed": 0, "reads_without_lease": 0}
        self.gate = InflightGate()      # mutations in flight per chain version (SYNC_LIST waits on older ones)
        self.resync = Resyncer(self, resync_rate)
        self._repairs: set[tuple] = set()
        self._bg: set[asyncio.Task] = set()
        # snapshots: the data epoch, the live snapshots (ascending, each < epoch), whether a map or
        # resume has set them yet
        self.epoch = 1
        self.live: tuple[int, ...] = ()
        self._epochs_known = False
        self.resolve_hold = resolve_hold  # async (S) -> (epoch, live) | None: an expired hold's outcome
        self.holds = HoldGate(self)       # SNAP_HOLD / SNAP_RESUME: client mutations wait while held
        self._drop_task: asyncio.Task | None = None
        self._drop_again = False
        self.usage: dict[int, dict[int, tuple[int, int]]] = {}  # target -> {snapshot: (exclusive, shared)}
        self._usage_seen: dict[int, tuple] = {}

    # ------------------------------------------------------------------ map helpers
    def chain(self, cid: int):
        m = self.get_map()
        if m is None or not 0 <= cid < len(m.chains):
            return None
        return m.chains[cid]

    async def _checked_chain(self, h: dp.Header):
        """The chain at the version the request was routed with, else Stale (after one refresh)."""
        ch = self.chain(h.chain_id)
        if ch is None or ch.version != h.chain_version:
            if ch is None or h.chain_version > ch.version:
                await self.refresh_map()
                ch = self.chain(h.chain_id)
            if ch is None or ch.version != h.chain_version:
                have = ch.version if ch else None
                raise err.Stale(f"chain {h.chain_id} version {h.chain_version}, server has {have}")
        return ch

    def address_of(self, tid: int) -> str:
        m = self.get_map()
        t = m.targets.get(tid) if m else None
        if t is None:
            raise ConnectionError(f"target {tid} not in the map")
        return t.address

    # ------------------------------------------------------------------ dispatch
    async def handle(self, h: dp.Header, payload) -> tuple[dp.Header, bytes]:
        try:
            if h.op == dp.SNAP_HOLD:
                return await self.holds.snap_hold(h), b""
            if h.op == dp.SNAP_RESUME:
                return self.holds.snap_resume(h, payload), b""
            tgt = self.targets.get(h.target)
            if tgt is None:
                raise err.InvalidArgument(f"target {h.target} is not on this server")
            op = h.op
            if op == dp.READ:
                return await self.read(tgt, h)
            if op in (dp.WRITE, dp.TRUNCATE, dp.INSTALL):
                return dp.reply_to(h, version=await self.mutate(tgt, h, payload)), b""
            if op == dp.REMOVE:
                await self.remove(tgt, h)
                return dp.reply_to(h), b""
            if op == dp.REMOVE_INODE:
                return dp.reply_to(h, offset=await self.remove_inode(tgt, h)), b""
            if op == dp.STAT:
                m = await tgt.run(tgt.store.stat, h.ino, h.index)
                if m is None:
                    raise err.NotFound(f"chunk {h.ino:x}.{h.index}")
                return dp.reply_to(h, version=m.version)._replace(epoch=m.epoch), \
                    msgpack.packb([m.version, m.committed, m.length, m.crcs, m.epoch])
            if op == dp.SYNC_LIST:
                return await self.sync_list(tgt, h)
            if op == dp.SYNC_FETCH:
                return await self.sync_fetch(tgt, h)
            if op == dp.PING:
                return dp.reply_to(h), b""
            raise err.InvalidArgument(f"unknown op {op}")
        except NeedInstall:
            return dp.reply_to(h, status=dp.NEED_INSTALL), b""
        except err.ChecksumError as e:
            self.counters["checksum_errors"] += 1
            msg = e.detail or "checksum mismatch"
            if "checksum" not in msg:
                msg = "checksum: " + msg
            return dp.reply_to(h, status=E.EIO), msg.encode()
        except (err.DfsError, OSError) as e:
            return dp.reply_to(h, status=dp.status_of(e)), dp.error_payload(e)
        except Exception as e:  # a bug: answer EIO, keep serving
            log.exception("%s failed", h.name)
            return dp.reply_to(h, status=E.EIO), repr(e).encode()

    # ------------------------------------------------------------------ mutations
    def _members(self, ch) -> tuple[int, ...]:
        return tuple(ch.targets) + tuple(t for t in ch.syncing if t not in ch.targets)

    async def mutate(self, tgt: Target, h: dp.Header, payload) -> int:
        ch, members, pos = await self._place(tgt, h)
        async with self.holds.admitted(h):
            with self.gate.entered(ch.id, ch.version):
                return await self._mutate(tgt, h, payload, ch, members, pos)

    def tag(self) -> tuple[int, int]:
        """(epoch, snap) for a mutation this server heads: its data epoch, and the
        newest live snapshot older than it (0: none), whose versions are kept."""
        e = self.epoch
        return e, max((s for s in self.live if s < e), default=0)

    async def _mutate(self, tgt: Target, h: dp.Header, payload, ch, members, pos: int) -> int:
        forwarded = bool(h.flags & dp.F_FORWARD)
        key = (tgt.id, h.ino, h.index)
        async with self.locks(key):
            self._recheck(ch)
            store = tgt.store
            if forwarded:
                v = h.version
                if h.op == dp.INSTALL and h.flags & dp.F_SNAP:
                    # a preserved version of the predecessor's, sent before the chunk itself
                    self.resync.touch_version(tgt.id, ch.id, ch.version, h.ino, h.index)
                    await tgt.run(tgt.index.add, ch.id, h.ino, h.index)
                    await tgt.run(store.install_version, h.ino, h.index, h.epoch, h.snap, payload, v)
                    await self._forward(tgt, ch, members, pos, h, payload)
                    return v
                self.resync.touch(tgt.id, ch.id, ch.version, h.ino, h.index)
                if h.op == dp.INSTALL:
                    # the predecessor's whole chunk, sent under its chunk lock: it is the chain's,
                    # even below a version held here (versions restart after a remove)
                    cur = await tgt.run(store.stat, h.ino, h.index)
                    await tgt.run(tgt.index.add, ch.id, h.ino, h.index)
                    await tgt.run(store.install, h.ino, h.index, payload, v,
                                  committed=min(cur.committed, v - 1) if cur else 0, epoch=h.epoch)
                    self.resync.known(tgt.id, ch.id, ch.version, h.ino, h.index)
                else:
                    cur = await tgt.run(store.stat, h.ino, h.index)
                    if (cur.version if cur else 0) != v - 1:
                        raise NeedInstall()
                    if cur is not None and not self.resync.is_known(tgt.id, ch.id, ch.version, h.ino, h.index):
                        raise NeedInstall()  # a syncing member's copy from before: maybe another lineage
                    await self._apply_and_forward(tgt, ch, members, pos, h, payload, v, cur)
                    await tgt.run(store.commit, h.ino, h.index, v)
                    self.resync.known(tgt.id, ch.id, ch.version, h.ino, h.index)
                    return v
            else:
                e, k = self.tag()
                h = h._replace(epoch=e, snap=k)
                cur = await tgt.run(store.stat, h.ino, h.index)
                v = (cur.version if cur else 0) + 1
                try:
                    await self._apply_and_forward(tgt, ch, members, pos, h, payload, v, cur)
                except err.ChecksumError:
                    # a partial-block write over a bad block: repair the chunk from a peer, then
                    # once more (a successor that got version v already answers NEED_INSTALL and
                    # receives the whole chunk)
                    if not await self._repair_now(tgt, ch, h.ino, h.index):
                        raise
                    cur = await tgt.run(store.stat, h.ino, h.index)
                    v = (cur.version if cur else 0) + 1
                    await self._apply_and_forward(tgt, ch, members, pos, h, payload, v, cur)
                await tgt.run(store.commit, h.ino, h.index, v)
                return v
            await self._forward(tgt, ch, members, pos, h._replace(version=v), payload)
            await tgt.run(store.commit, h.ino, h.index, v)
            return v

    async def _apply_and_forward(self, tgt: Target, ch, members, pos: int, h: dp.Header, payload, v: int,
                                 cur) -> None:
        """Apply locally and send down the chain at the same time: the data goes to
        the next target while this one writes it (the chain's latency is one hop's
        transfer plus the slowest write, not the sum). If the local apply fails
        after the successor took version v, the successor is ahead; the next write
        finds it there and it answers NEED_INSTALL, so the chain converges."""
        apply = asyncio.ensure_future(self._apply(tgt, ch.id, h, payload, v, cur))
        fwd = asyncio.ensure_future(self._forward(tgt, ch, members, pos, h._replace(version=v), payload,
                                                  applied=apply))
        done = await asyncio.gather(apply, fwd, return_exceptions=True)
        for r in done:
            if isinstance(r, BaseException):
                raise r

    async def _apply(self, tgt: Target, cid: int, h: dp.Header, payload, v: int, cur) -> None:
        store = tgt.store
        if cur is None:
            await tgt.run(tgt.index.add, cid, h.ino, h.index)
        try:
            if h.op == dp.WRITE:
                await tgt.run(store.write, h.ino, h.index, h.offset, payload, v, chunk_size=chunk_size_of(h.arg),
                              epoch=h.epoch, keep=h.snap)
            else:  # TRUNCATE: offset is the new length
                await tgt.run(store.truncate, h.ino, h.index, h.offset, v, chunk_size=chunk_size_of(h.arg),
                              epoch=h.epoch, keep=h.snap)
        except err.ChecksumError:
            if h.flags & dp.F_FORWARD:
                raise NeedInstall() from None  # the predecessor's whole chunk replaces the bad one
            raise

    async def _forward(self, tgt: Target, ch, members: tuple[int, ...], pos: int, h: dp.Header, payload,
                       applied: asyncio.Future | None = None) -> None:
        """Send ``h`` to the next member. ``applied``: the local apply running
        alongside; a successor that needs the whole chunk gets it only after that
        apply is done, so it receives this version, not the one before."""
        if pos + 1 >= len(members):
            return
        nxt = members[pos + 1]
        syncing = nxt not in ch.targets
        fh = h._replace(flags=(h.flags & dp.F_SNAP) | dp.F_FORWARD, target=nxt, chain_id=ch.id,
                        chain_version=ch.version)
        try:
            addr = self.address_of(nxt)
            # the payload arrived with this CRC and was checked against it: pass it on
            rh, rp = await self.peers.call(addr, fh, payload, self.forward_timeout,
                                           crc=h.payload_crc if len(payload) else None)
            if rh.status == dp.NEED_INSTALL and h.op in (dp.WRITE, dp.TRUNCATE, dp.INSTALL):
                if applied is not None:
                    await applied  # the local apply failing fails the write: no install then
                self.counters["installs_forwarded"] += 1
                # the chunk's preserved versions first (the successor's may be missing or differ:
                # it did not apply the writes that made them here), then the chunk
                for p in await tgt.run(tgt.store.versions, h.ino, h.index):
                    got = await tgt.run(tgt.store.read_version, h.ino, h.index, p.epoch)
                    if got is None:
                        continue
                    p, data = got
                    ph = fh._replace(op=dp.INSTALL, flags=dp.F_FORWARD | dp.F_SNAP, offset=0, version=p.version,
                                     epoch=p.epoch, snap=p.until)
                    rh, rp = await self.peers.call(addr, ph, data, self.forward_timeout)
                    if rh.status:
                        break
                else:
                    m, data = await tgt.run(self._whole, tgt.store, h.ino, h.index)
                    ih = fh._replace(op=dp.INSTALL, flags=dp.F_FORWARD, offset=0,
                                     version=m.version if m else h.version, epoch=m.epoch if m else h.epoch, snap=0)
                    rh, rp = await self.peers.call(addr, ih, data, self.forward_timeout)
        except (ConnectionError, TimeoutError, OSError) as e:
            # a syncing member too: one that silently missed a write could be promoted without it
            log.info("chain %d v%d: forward to %s target %d failed: %s", ch.id, ch.version,
                     "syncing" if syncing else "serving", nxt, e)
            raise err.Retryable(f"chain {ch.id}: downstream target {nxt} failed: {e}") from None
        if rh.status:
            msg = bytes(rp).decode(errors="replace")
            if rh.status == E.ESTALE:
                await self.refresh_map()
            code = rh.status if rh.status in (E.ESTALE, E.ENOSPC, E.EINVAL) else E.EAGAIN
            raise err.error_for(code, f"chain {ch.id}: downstream target {nxt}: {msg or rh.status}")

    @staticmethod
    def _whole(store, ino: int, index: int):
        """(meta, bytes) of one version of a chunk: read again if a write landed in
        between (not under the chunk lock: a repair holding its own lock fetches
        from peers, and a peer's write may hold theirs)."""
        for _ in range(100):
            a = store.stat(ino, index)
            if a is None:
                return None, b""
            data = store.read(ino, index, 0, a.length)
            if store.stat(ino, index) == a:
                return a, data
        raise err.Retryable(f"chunk {ino:x}.{index}: changing too fast to copy")

    def _recheck(self, ch) -> None:
        """Under the chunk lock: the chain is still at the version the request was
        placed with. A request can wait for the lock while the chain changes; applied
        after that, a forward the predecessor gave up on long ago (a member frozen
        and thawed, say) would land on a syncing member as if the new version had
        forwarded it."""
        now = self.chain(ch.id)
        if now is None or now.version != ch.version:
            raise err.Stale(f"chain {ch.id} changed from v{ch.version} to v{now.version if now else None}")

    async def _place(self, tgt: Target, h: dp.Header):
        """(chain, members, position of ``tgt``) for a mutation: ESTALE unless the
        target is in the chain, and is its head when the request is not forwarded."""
        ch = await self._checked_chain(h)
        members = self._members(ch)
        if tgt.id not in members:
            raise err.Stale(f"target {tgt.id} is not in chain {ch.id} v{ch.version}")
        pos = members.index(tgt.id)
        if not h.flags & dp.F_FORWARD and (pos != 0 or h.op == dp.INSTALL):
            raise err.Stale(f"target {tgt.id} is not the head of chain {ch.id} v{ch.version}")
        return ch, members, pos

    def _epochs_of(self, h: dp.Header) -> dp.Header:
        """A client's mutation tagged by this head; a forwarded one as it came."""
        if h.flags & dp.F_FORWARD:
            return h
        e, k = self.tag()
        return h._replace(epoch=e, snap=k)

    async def remove(self, tgt: Target, h: dp.Header) -> None:
        ch, members, pos = await self._place(tgt, h)
        async with self.holds.admitted(h):
            with self.gate.entered(ch.id, ch.version):
                async with self.locks((tgt.id, h.ino, h.index)):
                    self._recheck(ch)
                    h = self._epochs_of(h)
                    self.resync.touch(tgt.id, ch.id, ch.version, h.ino, h.index)
                    if not await tgt.run(tgt.store.remove, h.ino, h.index, epoch=h.epoch, keep=h.snap):
                        await tgt.run(tgt.index.remove, h.ino, h.index)  # kept while versions remain
                    self.resync.known(tgt.id, ch.id, ch.version, h.ino, h.index)
                    await self._forward(tgt, ch, members, pos, h, b"")

    async def remove_inode(self, tgt: Target, h: dp.Header) -> int:
        """Every chunk of the inode on this target, each under its lock (a resync
        copy of one of them, fetched before, is then never installed after)."""
        ch, members, pos = await self._place(tgt, h)
        async with self.holds.admitted(h):
            with self.gate.entered(ch.id, ch.version):
                h = self._epochs_of(h)
                self.resync.touch_inode(tgt.id, ch.id, ch.version, h.ino)
                indexes = await tgt.run(lambda: [x for _, x, _ in tgt.store.list_chunks(h.ino)])
                n = 0
                for index in indexes:
                    async with self.locks((tgt.id, h.ino, index)):
                        self._recheck(ch)
                        if await tgt.run(tgt.store.stat, h.ino, index) is not None:
                            await tgt.run(tgt.store.remove, h.ino, index, epoch=h.epoch, keep=h.snap)
                            n += 1
                await tgt.run(self._unindex_inode, tgt, h.ino)
                await self._forward(tgt, ch, members, pos, h, b"")
                return n

    @staticmethod
    def _unindex_inode(tgt: Target, ino: int) -> None:
        """Drop the inode's chain index entries, except those of chunks that still have
        preserved versions (they stay listed for resync and findable for repair)."""
        if not tgt.store.has_versions():
            tgt.index.remove_inode(ino)
            return
        kept = {x for _, x, _ in tgt.store.list_versions(ino)}
        for _, x, _ in list(tgt.store.list_chunks(ino)):
            kept.add(x)
        for k, _ in list(tgt.index.kv.scan_prefix(b"i" + ino.to_bytes(8, "big"))):
            _, index = _IK.unpack(k[1:])
            if index not in kept:
                tgt.index.remove(ino, index)

    async def remove_local_inode(self, tid: int, ino: int) -> int:
        """The orphan scan's removal: this target's chunks of ``ino``, nothing forwarded;
        versions live snapshots read are kept (at this server's epochs)."""
        t = self.targets[tid]
        e, k = self.tag()
        n = await t.run(t.store.remove_inode, ino, epoch=e, keep=k)
        await t.run(self._unindex_inode, t, ino)
        return n

    # ------------------------------------------------------------------ reads
    @staticmethod
    def _read_consistent(store, ino: int, index: int, offset: int, length: int, at: int | None = None):
        """(meta before, data, meta after): equal metas mean no write landed in between.
        ``at``: of the version snapshot ``at`` reads (a ``Preserved`` one, or the current)."""
        if at is None:
            a = store.stat(ino, index)
            data = store.read(ino, index, offset, length) if a is not None else b""
            b = store.stat(ino, index)
        else:
            a = store.version_at(ino, index, at)
            data = store.read(ino, index, offset, length, at=at) if a is not None else b""
            b = store.version_at(ino, index, at)
        return a, data, b

    def _snap_of(self, h: dp.Header) -> int | None:
        """The snapshot a READ is at (None: the current data), ESTALE for one this server
        knows was deleted (or never made): what it kept for it may be gone."""
        if not h.flags & dp.F_SNAP:
            return None
        if h.epoch < self.epoch and h.epoch not in self.live:
            raise err.Stale(f"snapshot {h.epoch} is not kept (data epoch {self.epoch}, live {list(self.live)})")
        return h.epoch

    async def read(self, tgt: Target, h: dp.Header):
        anyrole = bool(h.flags & dp.F_ANY)
        at = self._snap_of(h)
        ch = None
        if not anyrole:
            self._check_lease(tgt)
            ch = await self._checked_chain(h)
            if tgt.id not in ch.targets:
                raise err.Stale(f"target {tgt.id} does not serve chain {ch.id} v{ch.version}")
        if h.flags & dp.F_BLOCKS and tgt.store.block_size == dp.BLOCK_SIZE:
            return await self._read_blocks(tgt, h, ch, anyrole, at)
        try:
            a, data, b = await tgt.run(self._read_consistent, tgt.store, h.ino, h.index, h.offset, h.arg, at)
        except err.ChecksumError:
            await self._repair_what_reads(tgt, h.ino, h.index, at)
            raise
        if a is None:
            return dp.reply_to(h, version=0), b""
        if not anyrole and not isinstance(a, Preserved):  # a preserved version never changes
            is_tail = ch.targets[-1] == tgt.id
            if a != b or (a.committed != a.version and not is_tail):
                raise err.Retryable(f"chunk {h.ino:x}.{h.index}: write in flight on target {tgt.id}")
        elif a != b:
            raise err.Retryable(f"chunk {h.ino:x}.{h.index}: changed while read on target {tgt.id}")
        return dp.reply_to(h, version=a.version), data

    def _check_lease(self, tgt: Target) -> None:
        """A chain read needs the membership lease (dfs/data/lease.py): without it mgmt
        may already have taken this target out of the chain, and writes acknowledged since
        are not here."""
        if self.lease is not None and not self.lease.held():
            self.counters["reads_without_lease"] += 1
            raise err.Retryable(f"target {tgt.id}: no word from mgmt for {-self.lease.left():.1f}s "
                                f"beyond its lease; it may no longer be in the chain")

    async def _read_blocks(self, tgt: Target, h: dp.Header, ch, anyrole: bool, at: int | None = None):
        """Zero-copy read: whole blocks sent from the chunk file with their stored
        CRCs; the reader verifies them. The CRCs are those of one committed
        version: bytes a concurrent write changes fail the reader's check, and it
        reads again. At a snapshot, of the version it reads (a preserved one:
        its own file, which never changes)."""
        try:
            ext = await tgt.run(tgt.store.block_extent, h.ino, h.index, h.offset, h.arg, at=at)
        except err.ChecksumError:
            await self._repair_what_reads(tgt, h.ino, h.index, at)
            raise
        if ext is None:
            m = await tgt.run(tgt.store.stat, h.ino, h.index) if at is None else None
            return dp.reply_to(h, version=m.version if m else 0), b""
        m, fd, start, count, crcs = ext
        if (not anyrole and not isinstance(m, Preserved) and m.committed != m.version
                and ch.targets[-1] != tgt.id):
            os.close(fd)
            raise err.Retryable(f"chunk {h.ino:x}.{h.index}: write in flight on target {tgt.id}")
        return dp.reply_to(h, version=m.version, offset=start), Extent(fd, start, count, crcs)

    async def _repair_what_reads(self, tgt: Target, ino: int, index: int, at: int | None) -> None:
        """A bad block in a read: repair the version that read hit (current or preserved)."""
        preserved = None
        if at is not None:
            m = await tgt.run(tgt.store.version_at, ino, index, at)
            if isinstance(m, Preserved):
                preserved = m.epoch
        self._schedule_repair(tgt, ino, index, preserved)

    # ------------------------------------------------------------------ repair
    def _schedule_repair(self, tgt: Target, ino: int, index: int, preserved: int | None = None) -> None:
        key = (tgt.id, ino, index, preserved)
        if key in self._repairs:
            return
        self._repairs.add(key)

        async def run():
            try:
                await self.repair_chunk(tgt.id, ino, index, preserved)
            except Exception as e:  # noqa: BLE001 - best effort; the next bad read schedules it again
                log.warning("repair of %x.%d on target %d failed: %s", ino, index, tgt.id, e)
            finally:
                self._repairs.discard(key)

        self.spawn(run())

    async def repair_chunk(self, tid: int, ino: int, index: int, preserved: int | None = None) -> bool:
        """Repair a damaged chunk of target ``tid`` from a peer of its chain (the
        scrubber's repair callback); ``preserved``: its preserved version of that epoch."""
        tgt = self.targets[tid]
        idx = await tgt.run(tgt.index.kv.get, b"i" + _IK.pack(ino, index))
        ch = self.chain(int.from_bytes(idx, "big")) if idx is not None else None
        if ch is None:
            return False
        async with self.locks((tid, ino, index)):
            if preserved is not None:
                return await self._repair_version(tgt, ch, ino, index, preserved)
            return await self._repair_now(tgt, ch, ino, index)

    async def _repair_now(self, tgt: Target, ch, ino: int, index: int) -> bool:
        """Replace a damaged local chunk with a peer's copy of the same version (caller holds the chunk lock)."""
        cur = await tgt.run(tgt.store.stat, ino, index)
        if cur is None:
            return False
        for peer in ch.targets:
            if peer == tgt.id:
                continue
            try:
                rh, rp = await self.peers.call(self.address_of(peer), dp.Header(dp.SYNC_FETCH, ino=ino, index=index,
                                                                           target=peer), b"", self.forward_timeout)
            except (ConnectionError, TimeoutError, OSError):
                continue
            if rh.status or rh.version != cur.version:
                continue
            await tgt.run(tgt.store.install, ino, index, rp, cur.version, committed=cur.committed, epoch=cur.epoch)
            self.counters["repairs"] += 1
            log.info("repaired chunk %x.%d on target %d from target %d (v%d)", ino, index, tgt.id, peer, cur.version)
            return True
        return False

    async def _repair_version(self, tgt: Target, ch, ino: int, index: int, t: int) -> bool:
        """Replace a damaged preserved version with a peer's copy of it (caller holds the chunk lock)."""
        ps = [p for p in await tgt.run(tgt.store.versions, ino, index) if p.epoch == t]
        if not ps:
            return False
        p = ps[0]
        for peer in ch.targets:
            if peer == tgt.id:
                continue
            h = dp.Header(dp.SYNC_FETCH, flags=dp.F_SNAP, ino=ino, index=index, target=peer, epoch=t)
            try:
                rh, rp = await self.peers.call(self.address_of(peer), h, b"", self.forward_timeout)
            except (ConnectionError, TimeoutError, OSError):
                continue
            if rh.status or rh.version != p.version:
                continue
            await tgt.run(tgt.store.install_version, ino, index, t, p.until, rp, p.version)
            self.counters["repairs"] += 1
            log.info("repaired chunk %x.%d@%d on target %d from target %d", ino, index, t, tgt.id, peer)
            return True
        return False

    # ------------------------------------------------------------------ resync (serving side)
    async def sync_list(self, tgt: Target, h: dp.Header):
        """A page of the chain's chunks on this target: ``[ino, index, version,
        digest, epoch, [[t, until, version, digest] per preserved version]]``
        (version 0: only preserved versions are left). With a chain version (a
        resync's listing), only at that version, and only after the mutations
        admitted here under older versions (never forwarded to the syncing
        member) have finished, so the listing holds every one of them."""
        if h.chain_version:
            await self._checked_chain(h)
            try:
                await asyncio.wait_for(self.gate.drained(h.chain_id, h.chain_version), self.forward_timeout)
            except TimeoutError:
                raise err.Retryable(f"chain {h.chain_id}: older writes still in flight on target {tgt.id}") from None
        after = (h.ino, h.index) if h.flags & dp.F_CURSOR else None

        def page():
            out = []
            ids = list(tgt.index.chunks(h.chain_id, after, SYNC_PAGE + 1))
            more = len(ids) > SYNC_PAGE
            versions = tgt.store.has_versions()
            for ino, index in ids[:SYNC_PAGE]:
                m = tgt.store.stat(ino, index)
                vs = [[p.epoch, p.until, p.version, vdigest(p)] for p in tgt.store.versions(ino, index)] \
                    if versions else []
                if m is not None or vs:
                    out.append([ino, index, m.version if m else 0, digest(m), m.epoch if m else 0, vs])
            last = ids[SYNC_PAGE - 1] if more else None
            return out, more, last

        out, more, last = await tgt.run(page)
        rh = dp.reply_to(h, flags=dp.F_MORE if more else 0)
        if last is not None:
            rh = rh._replace(ino=last[0], index=last[1])
        return rh, msgpack.packb(out)

    async def sync_fetch(self, tgt: Target, h: dp.Header):
        if h.flags & dp.F_SNAP:
            got = await tgt.run(tgt.store.read_version, h.ino, h.index, h.epoch)
            if got is None:
                raise err.NotFound(f"chunk {h.ino:x}.{h.index}@{h.epoch}")
            p, data = got
            return dp.reply_to(h, version=p.version)._replace(epoch=p.epoch, snap=p.until), data
        m, data = await tgt.run(self._whole, tgt.store, h.ino, h.index)
        if m is None:
            raise err.NotFound(f"chunk {h.ino:x}.{h.index}")
        return dp.reply_to(h, version=m.version, offset=m.committed & 0xFFFFFFFF)._replace(epoch=m.epoch), data

    # ------------------------------------------------------------------ resync (syncing side: dfs/data/resync.py)
    def on_map(self, m) -> None:
        if m is not None:
            first = not self._epochs_known
            self.set_epochs(getattr(m, "data_epoch", 1), getattr(m, "live_snapshots", ()))
            creating = [s for s, x in getattr(m, "snapshots", {}).items() if x.state == "creating" and s >= self.epoch]
            self.holds.on_map(first, creating)
        self.resync.on_map(m)

    # ------------------------------------------------------------------ snapshots: hold and resume (dfs/data/hold.py)
    def holding(self) -> int | None:
        """The snapshot a hold of this server is for (None: not held)."""
        return self.holds.holding()

    @property
    def waiting_on_hold(self) -> int:
        """Client mutations waiting for a hold to end."""
        return self.holds.waiting

    def resyncs_running(self) -> int:
        return self.resync.running()

    def synced_chains(self, tid: int) -> list[tuple[int, int]]:
        """(chain, chain version) of the chains target ``tid`` finished resyncing into."""
        return self.resync.synced(tid)

    # ------------------------------------------------------------------ snapshots: epochs
    def set_epochs(self, epoch: int, live) -> bool:
        """Take a data epoch and live snapshots (from a map or SNAP_RESUME) unless they
        are older than what this server has: a map fetched from a lagging mgmt
        replica must not take back a resume. Whether they were taken."""
        if epoch < self.epoch or epoch < 1:
            return False
        live = tuple(sorted({s for s in live if s < epoch}))
        if self._epochs_known and (epoch, live) == (self.epoch, self.live):
            return True
        gone = set(self.live) - set(live)
        first = not self._epochs_known
        if (epoch, live) != (self.epoch, self.live):
            log.info("data epoch %d, live snapshots %s", epoch, list(live))
        moved = epoch != self.epoch
        self.epoch, self.live, self._epochs_known = epoch, live, True
        if gone or first or (moved and any(t.store.has_versions() for t in self.targets.values())):
            self.schedule_drop()
        return True

    # ------------------------------------------------------------------ snapshots: dropping and counting
    def schedule_drop(self) -> None:
        """Drop, in the background, the preserved versions no live snapshot reads
        (once more after the running pass if asked during it)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop yet (a map before the server runs): the first map after it schedules one
        if self._drop_task is not None and not self._drop_task.done():
            self._drop_again = True
            return
        self._drop_task = self.spawn(self._drop_loop())

    async def _drop_loop(self) -> None:
        while True:
            self._drop_again = False
            for tgt in self.targets.values():
                try:
                    await self.drop_unread(tgt)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("dropping versions on target %d", tgt.id)
            if not self._drop_again:
                return

    async def drop_unread(self, tgt: Target) -> int:
        """One pass over a target's preserved versions at the current epochs; returns how many went."""
        if not tgt.store.has_versions():
            return 0
        epoch, live = self.epoch, self.live
        n, nbytes, emptied = await tgt.run(tgt.store.drop, live, epoch)
        for ino, index in emptied:  # no version left at all: the chain index entry goes too
            async with self.locks((tgt.id, ino, index)):
                if await tgt.run(lambda i=ino, x=index: tgt.store.stat(i, x) is None and not tgt.store.versions(i, x)):
                    await tgt.run(tgt.index.remove, ino, index)
        if n:
            log.info("target %d: dropped %d preserved versions (%d bytes) no live snapshot of %s reads",
                     tgt.id, n, nbytes, list(live))
        return n

    async def refresh_usage(self, force: bool = False) -> None:
        """Count, per target, the bytes each live snapshot keeps (``usage``), when
        the versions or the live set changed since the last count."""
        for tid, tgt in self.targets.items():
            c = tgt.store.counters
            seen = (self.live, c["version_changes"])
            if not force and self._usage_seen.get(tid) == seen:
                continue
            self._usage_seen[tid] = seen
            if not tgt.store.has_versions():
                self.usage[tid] = dict.fromkeys(self.live, (0, 0))
                continue
            self.usage[tid] = await tgt.run(tgt.store.usage, self.live)

    # ------------------------------------------------------------------ tasks
    def spawn(self, coro) -> asyncio.Task:
        t = asyncio.get_running_loop().create_task(coro)
        self._bg.add(t)
        t.add_done_callback(self._bg.discard)
        return t

    async def stop(self) -> None:
        for t in list(self._bg):
            t.cancel()
        for t in list(self._bg):
            try:
                await t
            except BaseException:  # noqa: BLE001, S110 - stopping: outcomes of cancelled tasks do not matter
                pass
