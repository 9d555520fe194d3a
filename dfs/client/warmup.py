"""Warm-up: snapshot files fetched into the node-local cache ahead of a job (``Client.warmup``, `dfs warmup`).

Given paths (inside a snapshot-mode client, under ``PATH/.snap/NAME/``, or
live files), every regular file below them is opened (the access check a
read would have), and each of its chunks that the node cache
(dfs/client/nodecache.py) does not hold yet is fetched whole over the data
plane and stored, up to ``parallel`` chunks at once. A live file's chunks are
kept under its data version at the open (``Attr.dver``): a strict-mode read
of that version hits them, a later change of the file makes them unused. A snapshot-mode client's
packed small files are read through the pack reader instead (it keeps them in
the machine's pack cache). Running it again fetches nothing: each chunk is
looked up in the cache first.

Errors are per path: a missing path, a file that cannot be read, a chunk that
cannot be stored (a full cache disk), or a live file written before data
versions existed, is reported with its name and the rest goes on. ``evict=True`` drops
the files' chunks from the cache instead.

Imports: dfs.common and this package only; tqdm inside ``TqdmProgress``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import stat as S
import time
from typing import Any

from dfs.client.nodecache import CachedChunks
from dfs.client.snapdir import SNAP_BIT
from dfs.common import errors as err
from dfs.common.layout import DEFAULT_LAYOUT, Layout
from dfs.common.records import FLAG_INLINE, Attr

__all__ = ["Progress", "TqdmProgress", "WarmupResult", "find_cache", "warmup"]

DEFAULT_PARALLEL = 16
_PIECE = 16 << 20  # a packed file is read through the pack reader in pieces of this size at most


@dataclasses.dataclass(slots=True)
class WarmupResult:
    files: int = 0  # regular files warmed (or evicted)
    bytes: int = 0  # bytes of those files
    fetched: int = 0  # bytes fetched from the data servers (0 on a second run)
    chunks: int = 0  # chunks fetched (warm-up) or removed (evict)
    seconds: float = 0.0
    errors: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (path, why)

    @property
    def ok(self) -> bool:
        return not self.errors


class Progress:
    """What a warm-up reports as it goes (the default reports nothing)."""

    def start(self, files: int, nbytes: int) -> None: ...

    def advance(self, nbytes: int) -> None: ...

    def file_done(self) -> None: ...

    def error(self, path: str, why: str) -> None: ...

    def close(self) -> None: ...


class TqdmProgress(Progress):
    """A tqdm bar on stderr: bytes, rate and ETA, the files done in the postfix."""

    def __init__(self, desc: str = "warmup") -> None:
        self.desc = desc
        self.bar = None
        self.done = 0
        self.files = 0

    def start(self, files: int, nbytes: int) -> None:
        from tqdm import tqdm

        self.files = files
        self.bar = tqdm(total=nbytes, unit="B", unit_scale=True, unit_divisor=1024, desc=self.desc,
                        dynamic_ncols=True)
        self.bar.set_postfix_str(f"files 0/{files}")

    def advance(self, nbytes: int) -> None:
        if self.bar is not None:
            self.bar.update(nbytes)

    def file_done(self) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.set_postfix_str(f"files {self.done}/{self.files}", refresh=False)

    def error(self, path: str, why: str) -> None:
        from tqdm import tqdm

        tqdm.write(f"warmup: {path}: {why}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def find_cache(client: Any) -> CachedChunks | None:
    """The node cache in front of ``client``'s data path (an AsyncClient), or None."""
    return getattr(client, "node_cache", None)


def _why(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return e.strerror if not e.errno else f"{e.strerror} (errno {e.errno})"
    return str(e) or type(e).__name__


async def _list(client: Any, paths: list, res: WarmupResult, progress: Progress) -> list[tuple[str, Attr]]:
    """The regular files under ``paths`` (each path's own errors go to ``res``)."""
    out: list[tuple[str, Attr]] = []

    def bad(p: Any, e: BaseException) -> None:
        name = os.fsdecode(p)
        res.errors.append((name, _why(e)))
        progress.error(name, _why(e))

    async def walk(top: Any) -> None:
        try:
            entries = await client.scandir(top)
        except OSError as e:
            bad(top, e)
            return
        for e in entries:
            a = e.attr
            if a is None or S.S_ISLNK(a.mode):
                continue  # a symlink inside a tree is not followed (its target may be anywhere)
            if S.S_ISDIR(a.mode):
                await walk(e.path)
            elif S.S_ISREG(a.mode):
                out.append((os.fsdecode(e.path), a))

    for p in paths:
        try:
            a = await client.getattr(p)
        except OSError as e:
            bad(p, e)
            continue
        if S.S_ISDIR(a.mode):
            await walk(p)
        elif S.S_ISREG(a.mode):
            out.append((os.fsdecode(p), a))
        else:
            bad(p, err.InvalidArgument("not a regular file or a directory"))
    return out


def _where(client: Any, a: Attr) -> tuple[str, int, int]:
    """How a file's data is kept: ("chunks", snapshot, real inode), ("packed", 0, 0),
    ("inline", 0, 0) (in the metadata, nothing to cache) or ("live", 0, 0)."""
    mode = client.core.mode
    if a.flags & FLAG_INLINE and getattr(mode, "name", "") != "snapshot":
        return "inline", 0, 0
    if getattr(mode, "name", "") == "snapshot":
        m = mode.m
        n = m.node_of(a.ino)
        if m.packed(n) is not None:
            return "packed", 0, 0
        if a.flags & FLAG_INLINE:
            return "inline", 0, 0
        return "chunks", mode.snap, m.real_ino(n)
    if a.ino & SNAP_BIT:
        snap, real = client.core.data.ids.real(a.ino)
        return "chunks", snap, real
    return "live", 0, 0


async def warmup(client: Any, paths, *, parallel: int = DEFAULT_PARALLEL, evict: bool = False,
                 progress: Progress | None = None) -> WarmupResult:
    """Fetch (``evict``: drop) the chunks of every regular file under ``paths`` into (from)
    the node cache of ``client`` (an AsyncClient made with a ``cache_size``)."""
    if not isinstance(parallel, int) or parallel < 1:
        raise err.InvalidArgument(f"warmup: parallel must be a positive integer, not {parallel!r}")
    cache = find_cache(client)
    if cache is None:
        raise err.InvalidArgument("warmup: this client has no node cache (connect with cache_size=..., "
                                  "or `dfs warmup --cache-size`)")
    if isinstance(paths, (str, bytes, os.PathLike)):
        paths = [paths]
    progress = progress or Progress()
    res = WarmupResult()
    t0 = time.perf_counter()
    try:
        files = await _list(client, list(paths), res, progress)
        progress.start(len(files), sum(a.size for _, a in files))
        slots = asyncio.Semaphore(parallel)

        async def one_chunk(snap: int, real: int, index: int, layout: Layout, n: int, ver: int = 0) -> None:
            async with slots:
                if evict:
                    if await cache.forget(real, index, snap, ver):
                        res.chunks += 1
                else:
                    got = await cache.warm(real, index, layout, snap, ver)
                    if got:
                        res.chunks += 1
                        res.fetched += got
            progress.advance(n)

        async def packed(path: str, size: int) -> None:
            ref = await client.open_handle(path, os.O_RDONLY)
            try:
                buf = bytearray(min(size, _PIECE))
                off = 0
                while off < size:
                    async with slots:
                        got = await ref.preadinto(off, memoryview(buf)[:min(len(buf), size - off)])
                    if got <= 0:
                        break
                    off += got
                    progress.advance(got)
            finally:
                await ref.close()

        async def every_chunk(snap: int, real: int, a: Attr, ver: int = 0) -> None:
            layout = Layout.unpack(a.layout) if a.layout else DEFAULT_LAYOUT
            cs = layout.chunk_size
            await asyncio.gather(*(one_chunk(snap, real, i, layout, min(cs, a.size - i * cs), ver)
                                   for i in range(-(-a.size // cs))))

        async def live(path: str, a: Attr) -> None:
            """A live file at its data version now: its chunks fetched under that version while
            an open holds the file (the reads a strict-mode open of that version makes hit them)."""
            ref = None if evict else await client.open_handle(path, os.O_RDONLY)
            try:
                if ref is not None:
                    a = ref.attr
                if not a.dver:
                    if a.size:
                        raise err.InvalidArgument("written before data versions: not cached until written again")
                    return
                await every_chunk(0, a.ino, a, a.dver)
            finally:
                if ref is not None:
                    await ref.close()

        async def one_file(path: str, a: Attr) -> None:
            try:
                kind, snap, real = _where(client, a)
                if kind == "live":
                    await live(path, a)
                elif kind == "packed":
                    if not evict:  # the machine's pack cache keeps it
                        await packed(path, a.size)
                elif kind == "chunks":
                    if not evict:  # the access check a read of the file would have
                        ref = await client.open_handle(path, os.O_RDONLY)
                        await ref.close()
                    await every_chunk(snap, real, a)
                res.files += 1
                res.bytes += a.size
                progress.file_done()
            except (OSError, err.DfsError) as e:
                res.errors.append((path, _why(e)))
                progress.error(path, _why(e))

        # a few workers over the list: a tree of millions is not made into millions of tasks
        todo = iter(files)

        async def worker() -> None:
            for p, a in todo:
                await one_file(p, a)

        await asyncio.gather(*(worker() for _ in range(max(1, min(len(files), parallel * 4)))))
    finally:
        res.seconds = time.perf_counter() - t0
        progress.close()
    return res
