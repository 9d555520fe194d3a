"""The client side of the data plane: connections, chain writes, replica reads.

``Connection`` is one TCP connection to a data server with pipelined requests
(request id -> future; one reader task dispatches replies). ``Pool`` keeps one
connection per address. ``DataClient`` routes chunk operations with the
cluster map: writes (and truncates, removes) to the head of the chunk's chain,
reads to any serving replica.

Retries (until ``deadline``):

* ``ESTALE`` (the server's chain version differs from ours), a connection
  error, a timeout, ``EAGAIN`` or ``EIO`` from the head (a downstream target
  failed): refresh the map (``refresh()``, at most every ``refresh_interval``
  unless the answer was ESTALE) and send again. A re-sent write is applied
  again as a new version: chunk writes are idempotent in content (same bytes
  at the same offset).
* Reads: a random serving replica first, then the others, the tail last;
  ``EAGAIN`` (a write in flight there) and ``EIO`` (a bad block there; the
  server repairs it from a peer) move on to the next replica.

Every connection starts with the HELLO handshake (``dfs.wire.dataplane``)
carrying the client token of the ``Credentials`` (``dfs.wire.auth``) the
client was given, or that the cluster map was fetched with; a refusal raises
``Unauthenticated`` (EACCES), which is not retried.

Bounded buffers: at most ``max_inflight`` payload bytes are outstanding per
connection (a semaphore of bytes); a caller beyond that waits.

Snapshots: ``read``/``read_into`` take ``at``, a snapshot's epoch, and then
read the chunk as it was in that snapshot (empty if it did not exist then);
a server that no longer keeps the snapshot answers ESTALE, raised as
``Stale`` once the map also says the snapshot is gone. ``snap_hold`` and
``snap_resume`` are the snapshot coordinator's: they go to every data server
of the map.

Imports: dfs.common (and msgpack) only; the map is ``dfs.route.shards.ClusterMap``.
"""

from __future__ import annotations

import asyncio
import errno as E
import itertools
import logging
import random
import socket
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

import msgpack

from dfs.common import caps
from dfs.common import errors as err
from dfs.wire import dataplane as dp
from dfs.wire.auth import Credentials, Unauthenticated
from dfs.common.clustermap import ClusterMap

log = logging.getLogger(__name__)

MAX_CHUNK = 64 << 20


class ByteSemaphore:
    """Admits callers while the sum of their sizes stays under ``limit`` (one oversize caller alone)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._cond = asyncio.Condition()

    async def acquire(self, n: int) -> None:
        async with self._cond:
            await self._cond.wait_for(lambda: self.used == 0 or self.used + n <= self.limit)
            self.used += n

    async def release(self, n: int) -> None:
        async with self._cond:
            self.used -= n
            self._cond.notify_all()


class Connection:
    """One pipelined data-plane connection."""

    def __init__(self, addr: str, sock: socket.socket, max_inflight: int = 64 << 20,
                 reader: dp.FrameReader | None = None) -> None:
        self.addr = addr
        self.sock = sock
        self.reader = reader or dp.FrameReader(sock)
        self.writer = dp.FrameWriter(sock)
        self.pending: dict[int, asyncio.Future] = {}
        self.dests: dict[int, memoryview] = {}  # request id -> where its reply payload goes
        self.ids = itertools.count(1)
        self.budget = ByteSemaphore(max_inflight)
        self.closed = False
        self.caps_shown: set[bytes] = set()  # capabilities sent on this connection (CAP frames)
        self._task = asyncio.get_running_loop().create_task(self._read_loop())

    @classmethod
    async def open(cls, addr: str, timeout: float = 5.0, max_inflight: int = 64 << 20,
                   token: str | None = None, internal: str | None = None) -> Connection:
        """Connect and shake hands (HELLO with ``token``, and a server's ``internal`` token)."""
        sock = await dp.open_connection(addr, timeout)
        try:
            reader = await asyncio.wait_for(handshake(addr, sock, token, internal), timeout)
        except BaseException as e:
            sock.close()
            if isinstance(e, TimeoutError):
                raise ConnectionError(f"{addr}: no answer to HELLO in {timeout}s") from None
            raise
        return cls(addr, sock, max_inflight, reader)

    async def _read_loop(self) -> None:
        exc: BaseException = ConnectionError(f"{self.addr}: connection closed")
        try:
            while True:
                try:
                    h, payload = await self.reader.read_frame(self._dest)
                except dp.PayloadChecksumError as e:
                    h, payload = e.header._replace(status=E.EIO), memoryview(b"payload checksum mismatch")
                except dp.BlockChecksumError as e:
                    h, payload = e.header._replace(status=E.EIO), memoryview(BLOCK_CHECKSUM_MESSAGE)
                fut = self.pending.pop(h.req_id, None)
                if fut is not None and not fut.done():
                    fut.set_result((h, payload))
        except asyncio.CancelledError:
            exc = ConnectionError(f"{self.addr}: connection closed")
        except (OSError, dp.ProtocolError) as e:
            exc = ConnectionError(f"{self.addr}: {e}")
        finally:
            self._fail(exc)

    def _dest(self, h: dp.Header) -> memoryview | None:
        return self.dests.pop(h.req_id, None) if h.status == 0 else None

    def _fail(self, exc: BaseException) -> None:
        self.closed = True
        try:
            self.sock.close()
        except OSError:
            pass
        pending, self.pending = self.pending, {}
        for f in pending.values():
            if not f.done():
                f.set_exception(exc)

    async def call(self, h: dp.Header, payload=b"", timeout: float = 10.0,
                   into: memoryview | None = None, crc: int | None = None) -> tuple[dp.Header, memoryview]:
        """Send a request; its reply (header, payload). Error statuses are returned, not raised.

        With ``into``, a successful reply's payload is received straight into it
        (the returned payload is then a slice of ``into``)."""
        if self.closed:
            raise ConnectionError(f"{self.addr}: connection closed")
        n = len(payload) + (h.arg if h.op == dp.READ else MAX_CHUNK if h.op == dp.SYNC_FETCH else 0)
        await self.budget.acquire(n)
        rid = next(self.ids)
        fut = asyncio.get_running_loop().create_future()
        self.pending[rid] = fut
        if into is not None:
            self.dests[rid] = into
        try:
            await self.writer.send(h._replace(req_id=rid, flags=h.flags & ~dp.F_REPLY), payload, crc)
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            if into is not None and not self.closed:
                # the reader may be filling the caller's buffer right now: abandon
                # the connection rather than let a late reply write into memory
                # the caller has taken back
                self._task.cancel()
            raise TimeoutError(f"{self.addr}: {h.name} timed out after {timeout}s") from None
        except OSError as e:
            if not self.closed:
                self._task.cancel()
            raise ConnectionError(f"{self.addr}: {e}") from None
        finally:
            self.pending.pop(rid, None)
            self.dests.pop(rid, None)
            await self.budget.release(n)

    async def show_cap(self, token: bytes) -> None:
        """Send capability ``token`` (a CAP frame) unless this connection showed it already.
        Its reply is not awaited: the server takes a CAP before it reads the next frame,
        so a request sent after this returns may use it. A refusal is logged and the
        token forgotten (the request that needed it is answered ENOKEY)."""
        if token in self.caps_shown or self.closed:
            return
        if len(self.caps_shown) >= caps.CONN_CAPS_MAX // 2:  # the server sheds old ones too
            self.caps_shown.clear()
        rid = next(self.ids)
        fut = asyncio.get_running_loop().create_future()
        self.pending[rid] = fut
        self.caps_shown.add(token)

        def answered(f: asyncio.Future) -> None:
            if f.cancelled() or f.exception() is not None:
                return
            h, payload = f.result()
            if h.status:
                self.caps_shown.discard(token)
                log.info("%s refused a capability: %s", self.addr, bytes(payload).decode(errors="replace"))

        fut.add_done_callback(answered)
        try:
            await self.writer.send(dp.Header(dp.CAP, req_id=rid), token)
        except OSError as e:
            self.pending.pop(rid, None)
            self.caps_shown.discard(token)
            if not self.closed:
                self._task.cancel()
            raise ConnectionError(f"{self.addr}: {e}") from None

    async def close(self) -> None:
        self._task.cancel()
        try:
            await self._task
        except BaseException:  # noqa: BLE001, S110 - the reader task ends with the connection
            pass


async def handshake(addr: str, sock: socket.socket, token: str | None,
                    internal: str | None = None) -> dp.FrameReader:
    """HELLO on a fresh connection; the reader to go on with (``Unauthenticated`` if refused)."""
    reader, writer = dp.FrameReader(sock), dp.FrameWriter(sock)
    h, payload = dp.hello(token, internal)
    await writer.send(h, payload)
    try:
        rh, rp = await reader.read_frame(limit=dp.HELLO_MAX)
    except ConnectionError as e:
        raise ConnectionError(f"{addr}: closed at the handshake ({e})") from None
    if rh.status == E.EACCES:
        raise Unauthenticated(f"data server {addr} refused the connection: "
                              f"{bytes(rp).decode(errors='replace')}")
    if rh.status:
        raise ConnectionError(f"{addr}: HELLO answered {rh.status}: {bytes(rp).decode(errors='replace')}")
    dp.parse_hello(rh, rp)
    return reader


class Pool:
    """One connection per address, opened on first use, replaced when it breaks.

    ``auth``: the credentials whose token (and, a server's, internal token) the
    connections show (default: none)."""

    def __init__(self, *, connect_timeout: float = 3.0, max_inflight: int = 64 << 20,
                 auth: Credentials | None = None) -> None:
        self.conns: dict[str, Connection] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.connect_timeout = connect_timeout
        self.max_inflight = max_inflight
        self.token = auth.token if auth is not None else None
        self.internal = auth.internal if auth is not None else None  # servers only

    async def get(self, addr: str) -> Connection:
        c = self.conns.get(addr)
        if c is not None and not c.closed:
            return c
        lock = self._locks.setdefault(addr, asyncio.Lock())
        async with lock:
            c = self.conns.get(addr)
            if c is None or c.closed:
                c = self.conns[addr] = await Connection.open(addr, self.connect_timeout, self.max_inflight,
                                                             self.token, self.internal)
            return c

    async def call(self, addr: str, h: dp.Header, payload=b"", timeout: float = 10.0, into=None,
                   crc: int | None = None):
        c = await self.get(addr)
        return await c.call(h, payload, timeout, into, crc)

    async def close(self) -> None:
        conns, self.conns = list(self.conns.values()), {}
        for c in conns:
            await c.close()


_RETRY_STATUSES = {E.ESTALE, E.EAGAIN, E.EIO, err.UNAVAILABLE}
BLOCK_CHECKSUM_MESSAGE = b"block checksum mismatch (checked by the reader)"


class DataClient:
    """Chunk I/O against the data servers of a cluster map.

    ``cmap``: the current map; ``refresh``: ``async () -> ClusterMap`` (e.g.
    ``GrpcTransport.refresh_map``). ``auth``: the credentials to show the data
    servers (default: those the map was fetched with, ``cmap.auth``).

    Capabilities (``dfs.common.caps``): a request is sent after the CAP frame of a
    capability that covers it, when ``caps`` holds one (opens bring them); a
    request answered ENOKEY (none, or one that ran out) gets one from
    ``cap_source`` (``async (ino, rights, snap) -> token``, e.g. ``MetaClient.caps``
    with the caller's open handle; see ``set_cap_source``) and is sent once more.
    Server credentials need none."""

    def __init__(self, cmap: ClusterMap, refresh: Callable[[], Awaitable[ClusterMap]] | None = None, *,
                 deadline: float = 30.0, attempt_timeout: float = 10.0, refresh_interval: float = 0.2,
                 max_inflight: int = 64 << 20, auth: Credentials | None = None) -> None:
        self.map = cmap
        self._refresh = refresh
        self.deadline = deadline
        self.attempt_timeout = attempt_timeout
        self.refresh_interval = refresh_interval
        self.pool = Pool(max_inflight=max_inflight, auth=auth if auth is not None else cmap.auth)
        self._last_refresh = -1e9
        self._refreshing: asyncio.Task | None = None
        self._bg: set[asyncio.Task] = set()
        self.caps = caps.CapBook()
        self._hints: weakref.WeakSet = weakref.WeakSet()  # client cores (add_cap_hints)
        self.cap_source: Callable[[int, int, int], Awaitable[bytes | None]] | None = None
        self._cap_fetches: dict[tuple[int, int, int], asyncio.Future] = {}

    def set_cap_source(self, source: Callable[[int, int, int], Awaitable[bytes | None]] | None) -> None:
        """Where capabilities come from when a data server asks for one (ENOKEY)."""
        self.cap_source = source

    def add_cap_hints(self, core) -> None:
        """A client core over this DataClient (kept weakly): what a ``cap_source`` asks with
        comes from it, ``core.cap_handle(ino)`` (the open handle it holds) and
        ``core.cap_session()`` (its lazy session). A process may run several cores over one
        DataClient (a manifest builder next to the user's)."""
        self._hints.add(core)

    def handle_of(self, ino: int) -> bytes | None:
        for core in list(self._hints):
            h = core.cap_handle(ino)
            if h is not None:
                return h
        return None

    def session(self) -> bytes | None:
        for core in list(self._hints):
            s = core.cap_session()
            if s is not None:
                return s
        return None

    def add_caps(self, tokens) -> None:
        """Capabilities the metadata service handed out (e.g. with an open)."""
        for t in tokens:
            try:
                self.caps.add(t)
            except caps.CapError as e:
                log.warning("ignoring a malformed capability from the metadata service: %s", e)

    async def _fetch_cap(self, ino: int, rights: int, snap: int) -> bytes:
        """A capability for (ino, rights, snap) from ``cap_source`` (one fetch per key at a time)."""
        key = (ino, rights, snap)
        fut = self._cap_fetches.get(key)
        if fut is None and self._cap_fetches:
            # one in flight may bring a capability that covers this too (a lazy session's
            # block, a snapshot's): wait for those first rather than ask again
            await asyncio.wait(list(self._cap_fetches.values()))  # (wait cancels none of them)
            tok = self.caps.find(ino, rights, snap, time.time_ns())
            if tok is not None:
                return tok
            fut = self._cap_fetches.get(key)
        if fut is None:
            if self.cap_source is None:
                raise err.PermissionDenied(f"no capability for inode {ino:#x} (open it through the metadata "
                                           f"service)")
            fut = self._cap_fetches[key] = asyncio.ensure_future(self.cap_source(ino, rights, snap))
            fut.add_done_callback(lambda _f: self._cap_fetches.pop(key, None))
        tok = await asyncio.shield(fut)
        if not tok:
            raise err.PermissionDenied("the metadata service grants no capabilities, the data servers ask "
                                       "for them: [security] data_capabilities differs between them?")
        self.caps.add(tok)
        return tok

    async def call(self, addr: str, h: dp.Header, payload=b"", timeout: float = 10.0, into=None,
                   crc: int | None = None) -> tuple[dp.Header, memoryview]:
        """One request to the server at ``addr`` (``Pool.call``), with the capability it needs shown
        first (see the class). Error statuses are returned, not raised."""
        conn = await self.pool.get(addr)
        need = None if self.pool.internal else dp.cap_need(h)
        if need is not None:
            tok = self.caps.find(h.ino, need[0], need[1], time.time_ns())
            if tok is not None:
                await conn.show_cap(tok)
        rh, rp = await conn.call(h, payload, timeout, into, crc)
        if rh.status != E.ENOKEY or need is None:
            return rh, rp
        tok = await self._fetch_cap(h.ino, need[0], need[1])
        if conn.closed:
            conn = await self.pool.get(addr)
        conn.caps_shown.discard(tok)  # the server may have shed it: show it again
        await conn.show_cap(tok)
        rh, rp = await conn.call(h, payload, timeout, into, crc)
        if rh.status == E.ENOKEY:
            return rh._replace(status=E.EACCES), memoryview(f"data server {addr} refused the capability for "
                                                              f"inode {h.ino:#x}".encode())
        return rh, rp

    async def close(self) -> None:
        for f in list(self._cap_fetches.values()):
            f.cancel()
        await self.pool.close()

    # ------------------------------------------------------------------ map
    async def refresh(self, force: bool = False) -> ClusterMap:
        loop = asyncio.get_running_loop()
        if self._refresh is None:
            return self.map
        if not force and loop.time() - self._last_refresh < self.refresh_interval:
            return self.map
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = loop.create_task(self._refresh())
        try:
            m = await asyncio.shield(self._refreshing)
        except err.DfsError as e:
            log.debug("map refresh: %s", e)
            return self.map
        self._last_refresh = loop.time()
        if m.epoch >= self.map.epoch:
            self.map = m
        return self.map

    async def capacity(self) -> tuple[int, int] | None:
        """(bytes, free bytes) a file's data can use, from the targets' last heartbeats in the
        map: their file systems' sums divided by the copies a chain keeps (the most any chain
        keeps, so free space is never overstated). None: no target reported any yet. Targets
        sharing one file system each count it, as Ceph's raw figures do."""
        m = await self.refresh()
        ts = [t for t in m.targets.values() if t.total > 0]
        if not ts:
            return None
        copies = max((len(c.members) or len(c.targets) for c in m.chains), default=1) or 1
        return sum(t.total for t in ts) // copies, sum(t.free for t in ts) // copies

    def chain_for(self, ino: int, index: int, layout) -> Any:
        from dfs.common.layout import chain_of

        n = len(self.map.chains)
        if n == 0:
            raise err.Unavailable("no chains in the cluster map")
        return self.map.chains[chain_of(ino, index, layout, n)]

    def _addr(self, tid: int) -> str:
        t = self.map.targets.get(tid)
        if t is None:
            raise err.Unavailable(f"target {tid} not in the map")
        return t.address

    # ------------------------------------------------------------------ chain ops
    async def _to_head(self, make: Callable[[Any], dp.Header], payload=b"", *, chain_pos: Callable[[], Any]) \
            -> tuple[dp.Header, memoryview]:
        """Send a mutation to the head of the chain ``chain_pos()`` picks, with retries."""
        loop = asyncio.get_running_loop()
        end = loop.time() + self.deadline
        delay = 0.01
        last: BaseException | None = None
        while True:
            force = False
            try:
                ch = chain_pos()
                if not ch.targets:
                    raise err.Unavailable(f"chain {ch.id} has no serving target")
                head = ch.targets[0]
                h = make(ch)._replace(chain_id=ch.id, chain_version=ch.version, target=head)
                rh, rp = await self.call(self._addr(head), h, payload,
                                          min(self.attempt_timeout, max(0.1, end - loop.time())))
                if rh.status == 0:
                    return rh, rp
                if rh.status not in _RETRY_STATUSES:
                    dp.raise_for(rh, rp)
                last = err.error_for(rh.status, bytes(rp).decode(errors="replace"))
                force = rh.status == E.ESTALE
            except (ConnectionError, TimeoutError, err.Unavailable) as e:
                last = e
            delay = await self._retry_pause(end, last, force, delay, "no answer before the deadline")

    async def _retry_pause(self, end: float, last: BaseException | None, force: bool, delay: float,
                           what: str) -> float:
        """Between two rounds of a retried request: give up at the deadline (with the last
        error), else refresh the map and back off; returns the next delay."""
        if asyncio.get_running_loop().time() >= end:
            if isinstance(last, err.DfsError):
                raise last
            raise err.Unavailable(f"{what}: {last}")
        await self.refresh(force)
        await asyncio.sleep(delay * (0.5 + random.random()))
        return min(delay * 2, 0.2)

    async def write(self, ino: int, index: int, offset: int, data, layout) -> int:
        """Write ``data`` at ``offset`` of chunk ``index``; returns the chunk's new version."""
        if offset < 0 or offset + len(data) > layout.chunk_size:
            raise err.InvalidArgument(f"write [{offset}, {offset + len(data)}) outside chunk of {layout.chunk_size}")
        rh, _ = await self._to_head(lambda ch: dp.Header(dp.WRITE, ino=ino, index=index, offset=offset,
                                                         arg=layout.pack()),
                                    data, chain_pos=lambda: self.chain_for(ino, index, layout))
        return rh.version

    async def truncate(self, ino: int, index: int, length: int, layout) -> int:
        """Set chunk ``index``'s length (a missing chunk is created with that length)."""
        rh, _ = await self._to_head(lambda ch: dp.Header(dp.TRUNCATE, ino=ino, index=index, offset=length,
                                                         arg=layout.pack()),
                                    chain_pos=lambda: self.chain_for(ino, index, layout))
        return rh.version

    async def remove(self, ino: int, index: int, layout) -> None:
        await self._to_head(lambda ch: dp.Header(dp.REMOVE, ino=ino, index=index),
                            chain_pos=lambda: self.chain_for(ino, index, layout))

    async def remove_inode(self, ino: int, layout, size: int = 0) -> int:
        """Remove every chunk of ``ino`` on every chain its layout maps it to (each head and its
        chain remove all the inode's chunks they hold). Returns how many chunks the heads removed."""
        from dfs.common.layout import chain_of

        n = len(self.map.chains)
        if n == 0:
            return 0
        positions = sorted({chain_of(ino, k, layout, n) for k in range(min(layout.stripe, n))})
        total = 0
        for pos in positions:
            rh, _ = await self._to_head(lambda ch: dp.Header(dp.REMOVE_INODE, ino=ino),
                                        chain_pos=lambda pos=pos: self.map.chains[pos])
            total += rh.offset
        return total

    # ------------------------------------------------------------------ reads
    async def read(self, ino: int, index: int, offset: int, length: int, layout, at: int | None = None) \
            -> memoryview:
        """Up to ``length`` bytes of chunk ``index`` from ``offset`` (empty past its end or if it does not exist).
        ``at``: as of the snapshot of that epoch."""
        return await self._read(ino, index, offset, length, layout, None, at)

    async def read_into(self, ino: int, index: int, offset: int, buf: memoryview, layout,
                        at: int | None = None) -> int:
        """Read up to ``len(buf)`` bytes of chunk ``index`` from ``offset`` straight into ``buf``
        (received from the socket into it); returns how many bytes arrived. ``at``: as of
        the snapshot of that epoch."""
        got = await self._read(ino, index, offset, len(buf), layout, buf, at)
        if got.obj is not buf.obj:  # small replies come through the frame buffer
            buf[:len(got)] = got
        return len(got)

    async def _read(self, ino: int, index: int, offset: int, length: int, layout, into,
                    at: int | None = None) -> memoryview:
        loop = asyncio.get_running_loop()
        end = loop.time() + self.deadline
        delay = 0.01
        last: BaseException | None = None
        while True:
            force = False
            ch = None
            try:
                ch = self.chain_for(ino, index, layout)
                order = list(ch.targets)
                if not order:
                    raise err.Unavailable(f"chain {ch.id} has no serving target")
                tail = order.pop()
                random.shuffle(order)
                order.append(tail)
            except err.Unavailable as e:
                last, order = e, []
            for tid in order:
                # Whole blocks with their stored CRCs, sent from the chunk file
                # without a copy; checked here, end to end.
                h = dp.Header(dp.READ, flags=dp.F_BLOCKS if at is None else dp.F_BLOCKS | dp.F_SNAP, ino=ino,
                              index=index, offset=offset, arg=length, chain_id=ch.id, chain_version=ch.version,
                              target=tid, epoch=at or 0)
                dst = into if into is not None and offset % dp.BLOCK_SIZE == 0 else None
                try:
                    rh, rp = await self.call(self._addr(tid), h, b"",
                                              min(self.attempt_timeout, max(0.1, end - loop.time())), dst)
                except (ConnectionError, TimeoutError, err.Unavailable) as e:
                    last = e
                    continue
                if rh.status == 0:
                    if rh.flags & dp.F_BLOCKCRC:
                        skip = offset - rh.offset
                        return rp[skip:skip + length]
                    return rp
                if rh.status == E.EIO and bytes(rp) == BLOCK_CHECKSUM_MESSAGE:
                    self._verify_on(tid, ch, ino, index, at)
                last = err.error_for(rh.status, bytes(rp).decode(errors="replace"))
                if rh.status == E.ESTALE:
                    if at is not None and await self._snapshot_gone(at):
                        raise err.Stale(f"snapshot {at} deleted")
                    force = True
                    break
                if rh.status not in _RETRY_STATUSES:
                    dp.raise_for(rh, rp)
            delay = await self._retry_pause(end, last, force, delay, "read: no replica answered before the deadline")

    async def _snapshot_gone(self, at: int) -> bool:
        """Whether the map (refreshed now) says snapshot ``at`` is not kept any more."""
        m = await self.refresh(True)
        return at < m.data_epoch and at not in m.live_snapshots

    def _verify_on(self, tid: int, ch, ino: int, index: int, at: int | None = None) -> None:
        """A block from ``tid`` failed our check: ask it for a read it verifies
        itself, so that a really bad copy is found, counted and repaired there."""
        h = dp.Header(dp.READ, ino=ino, index=index, offset=0, arg=MAX_CHUNK, chain_id=ch.id,
                      chain_version=ch.version, target=tid, flags=dp.F_ANY if at is None else dp.F_ANY | dp.F_SNAP,
                      epoch=at or 0)

        async def go():
            try:
                await self.call(self._addr(tid), h, b"", self.attempt_timeout)
            except (ConnectionError, TimeoutError, err.DfsError) as e:
                log.debug("verification read on target %d: %s", tid, e)

        t = asyncio.get_running_loop().create_task(go())
        self._bg.add(t)
        t.add_done_callback(self._bg.discard)

    # ------------------------------------------------------------------ snapshots: the coordinator's cut
    def _servers(self) -> dict[str, int]:
        """Every data server of the map with a target that is not offline: address -> one of
        its targets. An offline server heads no chain (mgmt took it out), and one that comes
        back while a snapshot is being created holds by itself (dfs/data/chain.py)."""
        out: dict[str, int] = {}
        for tid, t in sorted(self.map.targets.items()):
            if t.state != "offline":
                out.setdefault(t.address, tid)
        return out

    async def _each_server(self, h: dp.Header, payload=b"", timeout: float | None = None) -> None:
        async def one(addr: str, tid: int) -> None:
            rh, rp = await self.pool.call(addr, h._replace(target=tid), payload, timeout or self.attempt_timeout)
            dp.raise_for(rh, rp)

        res = await asyncio.gather(*(one(a, t) for a, t in self._servers().items()), return_exceptions=True)
        for r in res:
            if isinstance(r, BaseException):
                raise r

    async def snap_hold(self, snapshot: int, lease: float) -> None:
        """SNAP_HOLD on every data server not offline: each stops admitting client mutations and answers
        once those in flight are done. Raises the first failure (the hold still ends at
        the lease on the servers that took it)."""
        await self._each_server(dp.Header(dp.SNAP_HOLD, version=snapshot, arg=int(lease * 1000)),
                                timeout=lease + self.attempt_timeout)

    async def snap_resume(self, snapshot: int, epoch: int, live) -> None:
        """SNAP_RESUME on every data server: data epoch and live snapshots, then the hold
        of ``snapshot`` (0: none) ends."""
        await self._each_server(dp.Header(dp.SNAP_RESUME, version=snapshot, epoch=epoch),
                                msgpack.packb(sorted(live)))

    # ------------------------------------------------------------------ one target (tests, tools)
    async def read_target(self, tid: int, ino: int, index: int, offset: int = 0, length: int = MAX_CHUNK,
                          at: int | None = None) -> tuple[int, bytes]:
        """(version, bytes) from one target, whatever its role; raises on error (ChecksumError for a bad block).
        ``at``: as of the snapshot of that epoch."""
        h = dp.Header(dp.READ, flags=dp.F_ANY if at is None else dp.F_ANY | dp.F_SNAP, ino=ino, index=index,
                      offset=offset, arg=length, target=tid, epoch=at or 0)
        rh, rp = await self.call(self._addr(tid), h, b"", self.attempt_timeout)
        dp.raise_for(rh, rp)
        return rh.version, bytes(rp)

    async def stat_target(self, tid: int, ino: int, index: int) -> tuple[int, int, int, bytes] | None:
        """(version, committed, length, crcs) of a chunk on one target, or None."""
        h = dp.Header(dp.STAT, ino=ino, index=index, target=tid)
        rh, rp = await self.call(self._addr(tid), h, b"", self.attempt_timeout)
        if rh.status == E.ENOENT:
            return None
        dp.raise_for(rh, rp)
        v, c, n, crcs, *_ = msgpack.unpackb(bytes(rp))
        return v, c, n, crcs
