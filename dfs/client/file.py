"""The file I/O core: an open file's reads and writes, striped over chains.

``FileHandle`` turns byte ranges into chunk pieces (``dfs.common.layout``),
sends them to a ``ChunkIO`` (the data client over the data plane, or the
in-memory engine of the tests) in parallel, and keeps the metadata service
told about the size at the points close-to-open consistency needs: ``flush``,
``fsync``, ``close`` and ``truncate``.

* Write-behind: writes are buffered per chunk; a chunk's buffer is sent when
  it is full or when the buffered total passes the window, with at most
  ``max_inflight`` chunk writes on the wire. ``flush`` sends what is left and
  waits for all of it; the first failure is raised there (and by later
  calls), like a local file system's deferred write errors.
* Readahead: after two reads in sequence the handle prefetches the next
  chunks (up to ``readahead`` chunks) and serves later reads from them.
* Reads see this handle's own writes (it flushes overlapping buffers first).
  Holes and chunks never written read as zeros up to the file size.

* Inline files (``Attr.flags & FLAG_INLINE``, docs/design/data.md "Small
  files inline"): while every byte written lies below ``INLINE_MAX`` the
  handle sends nothing to the data servers; ``flush`` sends all its buffered
  runs, the size and mtime in one ``WRITEINLINE`` command, and reads fetch the
  stored bytes with one ``READINLINE`` (kept for the handle's later reads,
  with its unflushed writes laid over them). A write reaching past
  ``INLINE_MAX`` first migrates the file: the stored bytes are copied to
  chunks, then ``MIGRATE`` clears the flag (the inline bytes stay the truth
  until then), and the handle goes on as for any other file.

Memory is bounded by ``window`` (write buffers) plus ``readahead`` chunks per
handle. A close that does not wait for its data (lazy mode) leaves the handle's
buffers to a background flush; ``WriteBudget`` bounds what all such closes of a
client hold at once (the close of a file that would pass it waits until
earlier flushes are done: back-pressure, not an error).
Imports: dfs.common and this package only.
"""

from __future__ import annotations

import asyncio
import errno as E
from typing import Protocol

from dfs.common import errors as err
from dfs.common.layout import DEFAULT_LAYOUT, Layout, pieces
from dfs.common.limits import INLINE_MAX
from dfs.common.ops import inline_digest
from dfs.common.records import FLAG_INLINE, Attr


class ChunkIO(Protocol):
    """Where chunk bytes live (one implementation per engine)."""

    async def write(self, ino: int, index: int, offset: int, data: bytes | memoryview, layout: Layout) -> None: ...

    async def read(self, ino: int, index: int, offset: int, length: int, layout: Layout) -> bytes:
        """The stored bytes of the range; shorter (or empty) where the chunk ends."""

    async def truncate(self, ino: int, index: int, length: int, layout: Layout) -> None:
        """Cut chunk ``index`` to ``length`` bytes; 0 removes it."""


class SizeSink(Protocol):
    """The metadata side a file handle needs (MetaClient)."""

    async def extend(self, ino: int, size: int) -> Attr: ...

    async def setattr(self, ino: int, *, size: int | None = ...) -> Attr: ...

    # inline files only
    async def read_inline(self, ino: int) -> tuple[bytes, int]: ...

    async def write_inline(self, ino: int, runs: list[tuple[int, bytes]], size: int) -> Attr: ...

    async def migrate_inline(self, ino: int, expect: bytes | None) -> Attr: ...


class WriteBudget:
    """Bytes of write-behind that closes which do not wait may hold at once (a client's).

    ``take(n)`` waits while the budget would be passed (unless nothing is held: one file
    larger than the whole budget still goes, alone); ``give(n)`` returns them."""

    def __init__(self, limit: int) -> None:
        self.limit = max(1, int(limit))
        self.used = 0
        self._waiters: list[asyncio.Future] = []
        self.waited = 0  # how many takes had to wait (tests, stats)

    async def take(self, n: int) -> None:
        if self.used and self.used + n > self.limit:
            self.waited += 1
            loop = asyncio.get_running_loop()
            while self.used and self.used + n > self.limit:
                fut = loop.create_future()
                self._waiters.append(fut)
                await fut
        self.used += n

    def give(self, n: int) -> None:
        self.used -= n
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)


class MemoryChunks:
    """The in-memory ChunkIO: chunks in a dict (unit tests, the local engine)."""

    def __init__(self) -> None:
        self.chunks: dict[tuple[int, int], bytearray] = {}

    async def write(self, ino, index, offset, data, layout) -> None:
        if offset + len(data) > layout.chunk_size:
            raise err.InvalidArgument("write beyond the chunk")
        c = self.chunks.setdefault((ino, index), bytearray())
        if len(c) < offset:
            c.extend(bytes(offset - len(c)))
        c[offset:offset + len(data)] = data

    async def read(self, ino, index, offset, length, layout) -> bytes:
        c = self.chunks.get((ino, index))
        return b"" if c is None else bytes(c[offset:offset + length])

    async def truncate(self, ino, index, length, layout) -> None:
        if length == 0:
            self.chunks.pop((ino, index), None)
        elif (ino, index) in self.chunks:
            c = self.chunks[(ino, index)]
            if len(c) > length:
                del c[length:]

    async def remove_inode(self, ino, layout, size) -> None:
        for k in [k for k in self.chunks if k[0] == ino]:
            del self.chunks[k]


class FileHandle:
    def __init__(self, meta: SizeSink, data: ChunkIO, attr: Attr, *, writable: bool = True,
                 append: bool = False, window: int | None = None, max_inflight: int = 8,
                 readahead: int | None = None, layout: Layout | None = None,
                 inline_max: int | None = None) -> None:
        self.meta = meta
        self.data = data
        self.ino = attr.ino
        packed = getattr(attr, "layout", 0)
        self.layout = layout or (Layout.unpack(packed) if packed else DEFAULT_LAYOUT)
        self.cs = self.layout.chunk_size
        self.size = attr.size  # this handle's view: the size at open, grown by its writes
        self.writable = writable
        self.append = append
        self.window = window if window is not None else 4 * self.cs
        self.readahead = readahead if readahead is not None else self.layout.stripe
        self._sem = asyncio.Semaphore(max_inflight)
        self._bufs: dict[int, list[tuple[int, bytearray]]] = {}  # chunk -> [(offset, bytes)] coalesced runs
        self._buffered = 0
        self._sending = 0  # bytes of the chunk writes on the wire
        self._tasks: set[asyncio.Task] = set()
        self._error: BaseException | None = None
        self._dirty_size = False
        self._closed = False
        self._next_seq = -1  # offset a sequential reader would ask for next
        self._seq_hits = 0
        self._ra: dict[int, asyncio.Task] = {}  # chunk -> prefetch task
        # inline mode: bytes stay in the metadata shard while all writes end below inline_max
        # (a smaller inline_max, e.g. 0, moves the file to the data servers at its first write)
        self.inline_max = INLINE_MAX if inline_max is None else max(0, min(inline_max, INLINE_MAX))
        self.inline = bool(getattr(attr, "flags", 0) & FLAG_INLINE)
        self._inline_cache: bytes | None = None  # the stored bytes, as read_inline returned them
        self._inline_written = attr.size > 0  # the file may have a B record (see _migrate)
        self._version = (attr.size, attr.mtime_ns, attr.ctime_ns, attr.dver)  # the file as its last open saw it
        # reads of data version ``dver`` go through a cache in front of the data servers (the
        # node cache: ``data.versioned``) until this handle writes: its own writes are not
        # that version's bytes
        self.dver = attr.dver
        self._versioned = bool(getattr(data, "versioned", False))
        self._wrote = False

    def dirty(self) -> bool:
        """Whether writes or a size change of this handle are not published yet."""
        return bool(self._bufs or self._tasks or self._dirty_size)

    def pending_bytes(self) -> int:
        """Bytes this handle holds for writes not acknowledged yet (buffered or on the wire)."""
        return self._buffered + self._sending

    def idle(self) -> bool:
        """Nothing to send and no error to report: ``flush`` would do nothing."""
        return not (self._bufs or self._tasks or self._dirty_size) and self._error is None

    def refresh(self, attr: Attr, inline: bytes | None = None) -> None:
        """Another open found the file as ``attr`` (fresh: close-to-open). Unless this handle
        has unpublished writes, take its size and drop what was read of an older version.
        ``inline``: the bytes of the (inline) file as of ``attr``, which the open brought."""
        version = (attr.size, attr.mtime_ns, attr.ctime_ns, attr.dver)
        if self.dirty():
            return
        if version != self._version:
            self._version = version
            self.dver = attr.dver
            self._wrote = False
            self.size = attr.size
            self._inline_cache = None
            self._cancel_readahead()
            self.inline = bool(getattr(attr, "flags", 0) & FLAG_INLINE)
        if inline is not None and self.inline:
            self._inline_cache = inline

    def failed(self) -> bool:
        """Whether every later call raises (``fail``, or a write error not reported yet)."""
        return self._error is not None

    def fail(self, error: BaseException) -> None:
        """Make every later call raise ``error`` (the open was lost, see dfs.client.leases)."""
        if self._error is None:
            self._error = error

    # ------------------------------------------------------------------ writes
    async def pwrite(self, offset: int, data: bytes | bytearray | memoryview) -> int:
        self._check_open()
        if not self.writable:
            raise err.DfsError("not open for writing", code=9)  # EBADF
        self._raise_deferred()
        if self.append:
            offset = self.size
        if offset < 0:
            raise err.InvalidArgument("negative offset")
        n = len(data)
        if n == 0:
            return 0
        mv = memoryview(data).cast("B")
        if self.inline and offset + n > self.inline_max:
            await self._migrate()
        self._wrote = True
        self._drop_readahead(offset, n)
        for index, coff, length, boff in pieces(offset, n, self.cs):
            self._buffer(index, coff, mv[boff:boff + length])
        end = offset + n
        if end > self.size:
            self.size = end
        self._dirty_size = True
        if not self.inline:
            await self._push(full_only=self._buffered <= self.window)
        return n

    def _buffer(self, index: int, coff: int, data: memoryview) -> None:
        runs = self._bufs.setdefault(index, [])
        if not runs and coff == 0 and len(data) == self.cs and isinstance(data.obj, bytes):
            # a whole chunk of immutable bytes: send it as it is, no copy
            runs.append((0, data))
            self._buffered += len(data)
            return
        if runs:
            start, buf = runs[-1]
            if start + len(buf) == coff:  # the common case: appending to the last run
                buf += data
                self._buffered += len(data)
                return
        # overlapping or out-of-order: merge into the runs so later bytes win
        new = bytearray(data)
        merged: list[tuple[int, bytearray]] = []
        lo, hi = coff, coff + len(new)
        for s, b in runs:
            e = s + len(b)
            if e < lo or s > hi:
                merged.append((s, b))
                continue
            # overlap or adjacency: fold into [lo, hi)
            nlo, nhi = min(s, lo), max(e, hi)
            buf = bytearray(nhi - nlo)
            buf[s - nlo:e - nlo] = b
            buf[lo - nlo:hi - nlo] = new
            self._buffered -= len(b)
            lo, hi, new = nlo, nhi, buf
        merged.append((lo, new))
        merged.sort(key=lambda r: r[0])
        self._bufs[index] = merged
        self._buffered += len(new)

    async def _push(self, full_only: bool) -> None:
        """Send buffered chunks: only full ones while under the window, else all."""
        if self.inline:
            return  # the buffers go to the metadata shard at flush
        for index in sorted(self._bufs):
            runs = self._bufs[index]
            if full_only and not (len(runs) == 1 and runs[0][0] == 0 and len(runs[0][1]) == self.cs):
                continue
            del self._bufs[index]
            for start, buf in runs:
                self._buffered -= len(buf)
                self._sending += len(buf)
                await self._sem.acquire()
                t = asyncio.ensure_future(self._send(index, start, buf))
                self._tasks.add(t)
                t.add_done_callback(self._tasks.discard)

    async def _send(self, index: int, start: int, buf: bytearray) -> None:
        try:
            await self.data.write(self.ino, index, start, buf, self.layout)
        except BaseException as e:  # deferred: reported by the next call and by flush/close
            if self._error is None:
                self._error = e
        finally:
            self._sending -= len(buf)
            self._sem.release()

    async def flush(self) -> None:
        """Send every buffered write, wait for all, then publish the size (close-to-open)."""
        if self.idle():
            return
        if self.inline:
            if not (self._bufs or self._dirty_size):
                return
            try:  # data, size and mtime in one command
                await self.meta.write_inline(self.ino, self._inline_runs(), self.size)
            except err.DfsError as e:
                if e.errno == E.EFBIG:  # cannot happen from this handle's writes; be safe
                    await self._migrate()
                elif e.errno == E.ENOTSUP:  # another writer moved the file to the data servers
                    self.inline = False
                else:
                    raise
            else:
                self._bufs.clear()
                self._buffered = 0
                self._dirty_size = False
                self._inline_written = True
                self._inline_cache = None
                return
        await self._drain()
        self._raise_deferred()
        if self._dirty_size:
            await self.meta.extend(self.ino, self.size)
            self._dirty_size = False

    async def flush_data(self) -> int | None:
        """``flush`` without the publish: every buffered write sent and acknowledged, and
        the size the caller must publish with a command of its own (``setattr(grow=)``),
        or None when there is nothing to publish. Inline files flush as usual (their
        bytes travel in the metadata command). If that command fails, ``unpublished``."""
        if self.inline:
            await self.flush()
            return None
        await self._drain()
        self._raise_deferred()
        if not self._dirty_size:
            return None
        self._dirty_size = False
        return self.size

    def unpublished(self) -> None:
        """The size from ``flush_data`` did not reach the metadata service: publish it later."""
        self._dirty_size = True

    async def _drain(self) -> None:
        await self._push(full_only=False)
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def fsync(self) -> None:
        await self.flush()

    async def truncate(self, size: int) -> Attr:
        """Set the file's size (the metadata first: it is the truth of the size), then cut
        the chunks past it. Returns the attributes after the change."""
        self._check_open()
        if size < 0:
            raise err.InvalidArgument("negative size")
        self._wrote = True
        if self.inline:
            # Unsent writes below the new size survive it; the shard cuts its stored bytes.
            self._trim_buffers(size)
            old = self.size
            a = await self.meta.setattr(self.ino, size=size)
            self.size = size
            self._inline_cache = None
            self._dirty_size = bool(self._bufs)
            if getattr(a, "flags", 0) & FLAG_INLINE:
                return a
            # moved to the data servers by another writer meanwhile: cut its chunks too
            self.inline = False
            old = max(old, INLINE_MAX)
        else:
            await self._drain()
            self._raise_deferred()
            self._cancel_readahead()
            old = self.size
            a = await self.meta.setattr(self.ino, size=size)  # the metadata is the truth of the size
            self.size = size
            self._dirty_size = False
        if size < old:
            cs = self.cs
            first = size // cs
            cut = [(first, size - first * cs)] if size % cs else []
            gone = range(first + (1 if size % cs else 0), (old + cs - 1) // cs)
            await asyncio.gather(*(self.data.truncate(self.ino, i, n, self.layout) for i, n in cut),
                                 *(self.data.truncate(self.ino, i, 0, self.layout) for i in gone))
        return a

    async def close(self) -> None:
        if self._closed:
            return
        try:
            await self.flush()
        finally:
            self._closed = True
            self._cancel_readahead()

    # ------------------------------------------------------------------ reads
    async def pread(self, offset: int, length: int) -> bytes | bytearray:
        """Up to ``length`` bytes at ``offset`` (fewer at the end of the file)."""
        if offset < 0 or length < 0:
            raise err.InvalidArgument("negative offset or length")
        n = max(0, min(length, self.size - offset))
        whole = await self._prefetched_chunk(offset, n)
        if whole is not None:
            return whole
        buf = bytearray(n)
        got = await self.preadinto(offset, buf)
        return buf if got == n else buf[:got]

    async def _prefetched_chunk(self, offset: int, n: int):
        """A read of exactly one chunk that readahead already fetched: hand over
        the fetched buffer itself instead of copying it (sequential readers of
        whole chunks, e.g. model loading with 4 MiB reads)."""
        if n == 0 or offset % self.cs or n != min(self.cs, self.size - offset) or self._bufs or self._tasks:
            return None
        self._check_open()
        self._raise_deferred()
        index = offset // self.cs
        t = self._ra.get(index)
        if t is None or self.inline:
            return None
        try:
            got = await t
        except err.DfsError:
            return None
        obj = getattr(got, "obj", got)
        if not isinstance(obj, bytearray) or len(obj) != n or len(got) != n:
            return None
        self._ra.pop(index, None)
        self._note_access(offset, offset + n)
        return obj

    async def preadinto(self, offset: int, buf) -> int:
        """Read into ``buf`` (any writable buffer) at ``offset``; the byte count.

        Pieces are received from the data servers straight into ``buf``; holes
        are zero-filled."""
        self._check_open()
        if offset < 0:
            raise err.InvalidArgument("negative offset")
        out = memoryview(buf).cast("B")
        if self.inline:
            end = min(offset + len(out), self.size)
            if end <= offset:
                return 0
            if await self._inline_read(offset, end, out):
                return end - offset
        if self._bufs or self._tasks:
            await self._drain()  # reads see this handle's writes
        self._raise_deferred()
        end = min(offset + len(out), self.size)
        if end <= offset:
            return 0
        ps = pieces(offset, end - offset, self.cs)
        self._note_access(offset, end)
        await asyncio.gather(*(self._read_piece(i, co, out[boff:boff + n]) for i, co, n, boff in ps))
        return end - offset

    async def _read_piece(self, index: int, coff: int, dst: memoryview) -> None:
        n = len(dst)
        t = self._ra.get(index)
        if t is not None:
            try:
                whole = await t
            except err.DfsError:
                self._ra.pop(index, None)
            else:
                got = whole[coff:coff + n]
                dst[:len(got)] = got
                if len(got) < n:
                    dst[len(got):] = bytes(n - len(got))  # a hole or the chunk's end
                return
        if self._cached():
            got_n = await self.data.read_versioned_into(self.ino, index, coff, dst, self.layout, self.dver)
            if got_n < n:
                dst[got_n:] = bytes(n - got_n)
            return
        read_into = getattr(self.data, "read_into", None)
        if read_into is not None:
            got_n = await read_into(self.ino, index, coff, dst, self.layout)
        else:
            got = await self.data.read(self.ino, index, coff, n, self.layout)
            got_n = len(got)
            dst[:got_n] = got
        if got_n < n:
            dst[got_n:] = bytes(n - got_n)  # a hole or the chunk's end

    def _note_access(self, offset: int, end: int) -> None:
        if offset == self._next_seq:
            self._seq_hits += 1
        else:
            self._seq_hits = 0
            self._cancel_readahead()
        self._next_seq = end
        if self._seq_hits >= 1 and self.readahead > 0:
            first = end // self.cs
            last = min((self.size - 1) // self.cs, first + self.readahead)
            for done in [i for i in self._ra if i < first - 1]:
                self._ra.pop(done).cancel()
            for i in range(first, last + 1):
                if i not in self._ra:
                    if self._cached():
                        rd = self.data.read_versioned(self.ino, i, 0, self.cs, self.layout, self.dver)
                    else:
                        rd = self.data.read(self.ino, i, 0, self.cs, self.layout)
                    self._ra[i] = asyncio.ensure_future(rd)

    def _cached(self) -> bool:
        """Whether reads go through the cache of data version ``dver``: there is one, the file
        has a version (0: never written since versions exist) and this handle has not written
        since its open saw that version."""
        return self._versioned and self.dver > 0 and not self._wrote and not self.inline

    def _drop_readahead(self, offset: int, n: int) -> None:
        for i in range(offset // self.cs, (offset + n - 1) // self.cs + 1):
            t = self._ra.pop(i, None)
            if t is not None:
                t.cancel()

    def _cancel_readahead(self) -> None:
        for t in self._ra.values():
            t.cancel()
        self._ra.clear()

    # ------------------------------------------------------------------ inline files
    def _inline_runs(self) -> list[tuple[int, bytes]]:
        """The buffered writes as (file offset, bytes), in file order."""
        cs = self.cs
        return [(index * cs + start, bytes(buf)) for index in sorted(self._bufs) for start, buf in self._bufs[index]]

    def _trim_buffers(self, size: int) -> None:
        cs = self.cs
        for index in list(self._bufs):
            kept = []
            for start, buf in self._bufs[index]:
                off = index * cs + start
                if off + len(buf) > size:
                    cut = max(0, size - off)
                    self._buffered -= len(buf) - cut
                    del buf[cut:]
                if buf:
                    kept.append((start, buf))
            if kept:
                self._bufs[index] = kept
            else:
                del self._bufs[index]

    async def _inline_read(self, offset: int, end: int, out: memoryview) -> bool:
        """Bytes [offset, end) of an inline file into ``out`` (False: it is not inline any more)."""
        if self._inline_cache is None:
            try:
                data, _ = await self.meta.read_inline(self.ino)
            except err.DfsError as e:
                if e.errno != E.ENOTSUP:
                    raise
                self.inline = False  # another writer moved it to the data servers
                return False
            self._inline_cache = data
        d = self._inline_cache
        have = max(0, min(end, len(d)) - offset)
        if have:
            out[:have] = d[offset:offset + have]
        if have < end - offset:
            out[have:end - offset] = bytes(end - offset - have)  # zeros up to the size
        cs = self.cs
        for index, runs in self._bufs.items():  # this handle's unsent writes
            for start, b in runs:
                off = index * cs + start
                lo, hi = max(off, offset), min(off + len(b), end)
                if lo < hi:
                    out[lo - offset:hi - offset] = b[lo - off:hi - off]
        return True

    async def _migrate(self) -> None:
        """Move the file's bytes to the data servers: copy, then clear the flag (MIGRATE).

        Until MIGRATE commits the inline bytes stay the truth, so a crash anywhere
        leaves the file readable. A copy covers the bytes' high water (zeros past the
        current bytes), which overwrites whatever an earlier, failed copy left."""
        self._inline_cache = None
        if not self._inline_written:  # a file that never had inline bytes: nothing to copy
            try:
                await self.meta.migrate_inline(self.ino, None)
                self.inline = False
                return
            except err.DfsError as e:
                if e.errno != E.ECANCELED:
                    raise
                self._inline_written = True
        for _ in range(100):
            try:
                data, hw = await self.meta.read_inline(self.ino)
            except err.DfsError as e:
                if e.errno != E.ENOTSUP:
                    raise
                self.inline = False
                return
            copy = memoryview(bytes(data) + bytes(max(0, hw - len(data))))
            if len(copy):
                await asyncio.gather(*(self.data.write(self.ino, index, coff, copy[boff:boff + n], self.layout)
                                       for index, coff, n, boff in pieces(0, len(copy), self.cs)))
            try:
                # hw 0: no bytes were ever stored (no B record), nothing to compare
                await self.meta.migrate_inline(self.ino, inline_digest(data) if hw else None)
            except err.DfsError as e:
                if e.errno != E.ECANCELED:
                    raise
                continue  # written meanwhile: copy again
            self.inline = False
            return
        raise err.Unavailable("inline data keeps changing during migration")

    # ------------------------------------------------------------------ helpers
    def _check_open(self) -> None:
        if self._closed:
            raise err.DfsError("file is closed", code=9)  # EBADF

    def _raise_deferred(self) -> None:
        if self._error is not None:
            e = self._error
            raise e
