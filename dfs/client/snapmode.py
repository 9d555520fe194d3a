"""Snapshot mode: a read-only client of one snapshot, served from its manifest.

``dfs.connect(snapshot="PATH@NAME")`` and ``dfs mount --snapshot PATH@NAME``
build a ``Core`` whose ``Mode`` is ``SnapshotMode``: the snapshot's root is
the client's ``/``, and every lookup, getattr, readdir, readlink and xattr is
answered from the manifest (dfs/client/manifest.py) without a metadata
request. Reads of small files come from the packs the manifest names (live
files under ``/.dfs/snapshots/<S>/``, read over the data plane), the rest
from the snapshot's chunks (``read(..., at=S)``). Every change answers EROFS
before anything is sent. The kernel may cache names, attributes and pages
without expiry: nothing can change.

Where the manifest comes from (``load_manifest``), cheapest first:

1. the machine's cache, ``<cache_dir>/<cluster>/<S>-<created>.manifest``
   (default cache_dir ``$XDG_CACHE_HOME/dfs`` or ``~/.cache/dfs``): mapped
   read-only, shared through the page cache by every process of the
   machine;
2. dfs itself, ``/.dfs/snapshots/<S>/manifest``: read over the data plane,
   its checksum verified, written to the cache under a temporary name and
   renamed (a reader never sees a partial file);
3. neither: this client builds it (a walk of the snapshot through the
   metadata service, the small files read and packed), stores the packs
   under ``/.dfs/snapshots/<S>/<build>/`` and the manifest as
   ``manifest.<build>``, then renames it to ``manifest`` with
   RENAME_NOREPLACE: of two builders at once, both valid, the first rename
   wins and the other removes its files and loads the winner's.

A snapshot deleted under a snapshot-mode client: what it has loaded stays
(names, attributes, pages the kernel or the pack cache hold), reads of what
the data servers no longer keep answer ESTALE, and ``SnapshotMode.deleted``
turns true (the mount's status file says so).

Imports: numpy, dfs.common and this package only.
"""

from __future__ import annotations

import asyncio
import errno as E
import hashlib
import logging
import mmap
import os
import re
import stat
import tempfile
import time
import uuid
from collections import OrderedDict
from typing import Any

from dfs.client.file import FileHandle
from dfs.client.manifest import Manifest, PackSpec, build
from dfs.client.mode import KernelCache, Mode, OpenPlan
from dfs.client.nodecache import remove_tree
from dfs.client.snapdir import check_access, readonly
from dfs.common import errors as err
from dfs.common.clustermap import SnapshotInfo
from dfs.common.ids import ROOT_INO
from dfs.common.layout import DEFAULT_LAYOUT, Layout, pieces
from dfs.common.ops import RENAME_NOREPLACE
from dfs.common.records import FLAG_INLINE, Attr, Caller, DirEntry, StatFs

log = logging.getLogger("dfs.client")

__all__ = ["FOREVER", "SYSTEM_DIR", "PackReader", "SnapshotChunks", "SnapshotMode", "SnapshotSource",
           "default_cache_dir", "load_manifest", "manifest_dir", "snapshot_core"]

FOREVER = 365 * 86400.0
DIR_CACHE = 1 << 16  # directories whose entries / attributes a snapshot-mode client keeps made
SYSTEM_DIR = b".dfs"  # at the root: dfs's own files (snapshot manifests and packs)


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "dfs")


def manifest_dir(snap: int) -> bytes:
    return b"/" + SYSTEM_DIR + b"/snapshots/" + str(snap).encode()


def _writes(flags: int) -> bool:
    return flags & os.O_ACCMODE != os.O_RDONLY or bool(flags & os.O_TRUNC)


def _layout(a) -> Layout:
    return Layout.unpack(a) if a else DEFAULT_LAYOUT


# ---------------------------------------------------------------------- the mode
class SnapshotMode(Mode):
    """Every metadata read answered from ``manifest``; every change refused (EROFS)."""

    name = "snapshot"
    read_only = True  # nothing to flush, ever (the mount stops the kernel's FLUSHes)
    in_memory = True  # every namespace read is answered from the manifest, never waits (Client.now_or_run)
    immutable = True  # a snapshot: AsyncClient keeps the walks of directory paths
    checks_walks = True  # the service answers no lookup of the walk: check_walk checks

    def __init__(self, manifest: Manifest, snap: int, meta=None, data=None, *, pack_cache: int = 256 << 20,
                 pack_dir: str | None = None) -> None:
        self.m = manifest
        self.snap = snap
        self.deleted = False  # a read found the snapshot deleted (ESTALE)
        self.sizes = _ReadOnlySizes(self, meta)
        self.chunks = SnapshotChunks(self, data, pack_cache, pack_dir)
        # Every path walk goes through the same few directories: their entries and attributes
        # are kept as made (a snapshot never changes, Attr is frozen), up to DIR_CACHE each;
        # a file's are made per call (datasets have millions).
        self._is_dir = (manifest.nodes["mode"] & 0o170000) == stat.S_IFDIR  # S_IFMT, by node
        self._dir_entries: dict[tuple[int, bytes], int] = {}
        self._dir_attrs: dict[int, Attr] = {}

    def _node(self, ino: int) -> int:
        return self.m.node_of(ino)

    def entry(self, parent, name):
        key = (parent, name)
        ino = self._dir_entries.get(key)
        if ino is not None:
            return ino
        c = self.m.lookup(self._node(parent), name)
        if c is None:
            raise err.NotFound()
        if self._is_dir[c] and len(self._dir_entries) < DIR_CACHE:
            self._dir_entries[key] = c + 1
        return c + 1

    def attr(self, ino):
        a = self._dir_attrs.get(ino)
        if a is None:
            n = self._node(ino)
            a = self.m.attr(n)
            if self._is_dir[n] and len(self._dir_attrs) < DIR_CACHE:
                self._dir_attrs[ino] = a
        return a

    walk_attr = attr

    def link_target(self, ino):
        return self.m.readlink(self._node(ino))

    def listing(self, ino, cookie, limit, plus):
        return self.m.listing(self._node(ino), cookie, limit, plus)

    def xattr(self, ino, name):
        v = self.m.xattrs(self._node(ino)).get(name)
        if v is None:
            raise err.NoData("no such attribute")
        return v

    def xattr_names(self, ino):
        return list(self.m.xattrs(self._node(ino)))

    def statfs(self):
        blocks = (self.m.size_bytes + int(self.m.nodes["size"].sum())) // 4096 + 1
        return StatFs(4096, blocks, 0, len(self.m), 0)

    async def mutate(self, m, send):
        raise readonly("a snapshot-mode client is read-only")

    def open_plan(self, ino, flags):
        if _writes(flags) or (ino is None and flags & os.O_CREAT):
            raise readonly("a snapshot-mode client is read-only")
        return OpenPlan(revalidate=False, server_handle=False, close_waits=True)

    def check_open(self, attr, access, caller):
        if caller is not None:
            check_access(attr, caller, access)

    # the service sees no lookup and no listing of a snapshot-mode client: the mode checks
    # them (a file under a 0700 directory was readable by anyone who knew its path)
    def check_walk(self, dir_attr, caller):
        if caller is not None:
            check_access(dir_attr, caller, os.X_OK)

    def check_list(self, dir_attr, caller):
        if caller is not None:
            check_access(dir_attr, caller, os.R_OK)

    def read_now(self, a: Attr) -> bytearray | None:
        """The bytes of regular file ``a`` without waiting, on the calling thread: a packed
        file whose pack chunks are in the machine's cache (``PackReader.read_now``); None
        for any other (the caller reads it the usual way)."""
        p = self.m.packed(self.m.node_of(a.ino))
        if p is None:
            return None
        return self.chunks.packs.read_now(p[0], p[1], a.size)

    def file_io(self, meta, data):
        return self.sizes, self.chunks

    def kernel_cache(self):
        return KernelCache(FOREVER, FOREVER, FOREVER)

    def keep_cache(self, before, now, changing):
        return True

    def stale(self, e: err.DfsError) -> err.DfsError:
        """A read found the snapshot's data gone."""
        self.deleted = True
        return err.Stale(f"snapshot {self.snap} deleted: {e}")


class _ReadOnlySizes:
    """The metadata side of a FileHandle in snapshot mode: nothing is published."""

    def __init__(self, mode: SnapshotMode, meta) -> None:
        self.mode = mode
        self.meta = meta

    async def extend(self, ino, size):
        raise readonly()

    async def setattr(self, ino, **kw):
        raise readonly()

    async def write_inline(self, ino, runs, size):
        raise readonly()

    async def migrate_inline(self, ino, expect):
        raise readonly()

    async def read_inline(self, ino):
        """An inline file the manifest did not pack: asked of the service at the snapshot."""
        m = self.mode.m
        return await self.meta.read_inline(m.real_ino(m.node_of(ino)), snap=self.mode.snap)


class SnapshotChunks:
    """The chunk side in snapshot mode: packed files from their pack, others from the
    snapshot's chunks on the data servers (``at=S``)."""

    def __init__(self, mode: SnapshotMode, data, pack_cache: int, pack_dir: str | None = None) -> None:
        self.mode = mode
        self.data = data
        self.packs = PackReader(mode.m, data, pack_cache, disk=pack_dir)

    async def read(self, ino, index, offset, length, layout):
        m = self.mode.m
        n = m.node_of(ino)
        if m.packed(n) is None:  # the data client's own buffer, no copy (readahead of big files)
            try:
                return await self.data.read(m.real_ino(n), index, offset, length, layout, at=self.mode.snap)
            except err.DfsError as e:
                if e.errno == E.ESTALE:
                    raise self.mode.stale(e) from None
                raise
        buf = bytearray(length)
        got = await self.read_into(ino, index, offset, memoryview(buf), layout)
        return memoryview(buf)[:got]

    async def read_into(self, ino, index, offset, buf, layout):
        m = self.mode.m
        n = m.node_of(ino)
        p = m.packed(n)
        try:
            if p is not None:
                size = int(m.nodes["size"][n])
                start = index * layout.chunk_size + offset
                want = max(0, min(len(buf), size - start))
                if want:
                    await self.packs.read_into(p[0], p[1] + start, buf[:want])
                return want
            rd = getattr(self.data, "read_into", None)
            if rd is not None:
                return await rd(m.real_ino(n), index, offset, buf, layout, at=self.mode.snap)
            got = await self.data.read(m.real_ino(n), index, offset, len(buf), layout, at=self.mode.snap)
            buf[:len(got)] = got
            return len(got)
        except err.DfsError as e:
            if e.errno == E.ESTALE:
                raise self.mode.stale(e) from None
            raise

    async def write(self, *a, **kw):
        raise readonly()

    async def truncate(self, *a, **kw):
        raise readonly()


class PackReader:
    """Reads of the packs (live files under /.dfs/snapshots/<S>/).

    With ``disk`` (a directory of the machine's cache, shared by its processes): every
    pack chunk is fetched whole, once per machine, into ``disk/p<pack>-c<chunk>`` (a
    temporary name, then a rename), and reads are ``pread``s of those files: the page
    cache serves warm reads, and a shuffled epoch reads each 4 MiB chunk from the data
    servers once however many processes read it. Without: a file's range when reads come
    in no order, whole chunks (kept, LRU, up to ``cache`` bytes) and the next ones ahead
    when they come in pack order (the tree order the builder packed them in), or always
    when every pack fits ``cache``."""

    def __init__(self, manifest: Manifest, data, cache: int, ahead: int = 2, disk: str | None = None) -> None:
        self.m = manifest
        self.data = data
        self.cap = cache
        self.ahead = ahead
        self.disk = disk
        self.cached: OrderedDict[tuple[int, int], bytes] = OrderedDict()
        self.bytes = 0
        self.inflight: dict[tuple[int, int], asyncio.Task] = {}
        self.next: dict[int, int] = {}  # pack -> where a reader in pack order reads next
        self.requests = 0
        self._fds: OrderedDict[tuple[int, int], int] = OrderedDict()  # open chunk files of ``disk``
        self._chunk_sizes: dict[int, int] = {}  # pack -> its layout's chunk size (read_now's)
        # every pack fits the cache: a whole chunk fetched for one file serves its neighbours
        # later, whatever the order (a shuffled epoch then reads each pack chunk once)
        self.fits = cache > 0 and int(manifest.packs["size"].sum()) <= cache

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def _spec(self, p: int) -> tuple[PackSpec, Layout]:
        spec = self.m.pack(p)
        return spec, _layout(spec.layout)

    def _chunk_size(self, p: int) -> int:
        cs = self._chunk_sizes.get(p)
        if cs is None:
            cs = self._chunk_sizes[p] = self._spec(p)[1].chunk_size
        return cs

    def _path(self, p: int, i: int) -> str:
        return os.path.join(self.disk, f"p{p}-c{i}")

    def _disk_fd(self, p: int, i: int) -> int | None:
        key = (p, i)
        fd = self._fds.get(key)
        if fd is not None:
            self._fds.move_to_end(key)
            return fd
        try:
            fd = os.open(self._path(p, i), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        self._fds[key] = fd
        while len(self._fds) > 256:
            os.close(self._fds.popitem(last=False)[1])
        return fd

    def _store(self, p: int, i: int, data: bytes) -> None:
        """Into the machine's cache (runs in a thread: a 4 MiB write)."""
        try:
            os.makedirs(self.disk, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.disk, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.replace(tmp, self._path(p, i))
            except BaseException:
                with _quiet():
                    os.unlink(tmp)
                raise
        except OSError as e:
            log.warning("pack cache %s off: %s", self.disk, e)
            self.disk = None

    async def _chunk(self, p: int, i: int) -> bytes:
        key = (p, i)
        got = self.cached.get(key)
        if got is not None:
            self.cached.move_to_end(key)
            return got
        t = self.inflight.get(key)
        if t is None:
            t = self.inflight[key] = asyncio.ensure_future(self._fetch(p, i))
            t.add_done_callback(lambda _t, key=key: self.inflight.pop(key, None))
        return await asyncio.shield(t)

    async def _fetch(self, p: int, i: int) -> bytes:
        spec, layout = self._spec(p)
        cs = layout.chunk_size
        self.requests += 1
        want = min(cs, spec.size - i * cs)
        data = bytes(await self.data.read(spec.ino, i, 0, want, layout))
        if len(data) < want:
            raise self._gone(p, spec)
        if self.disk is not None:
            await asyncio.to_thread(self._store, p, i, data)
        elif self.cap > 0:
            self.cached[(p, i)] = data
            self.bytes += len(data)
            while self.bytes > self.cap and len(self.cached) > 1:  # the newest stays: its neighbours come next
                self.bytes -= len(self.cached.popitem(last=False)[1])
        return data

    def _ahead(self, p: int, last: int, spec: PackSpec, cs: int) -> None:
        for j in range(last + 1, min(last + 1 + self.ahead, (spec.size + cs - 1) // cs)):
            if (p, j) in self.cached or (p, j) in self.inflight or \
                    (self.disk is not None and (p, j) in self._fds):
                continue
            t = self.inflight[(p, j)] = asyncio.ensure_future(self._fetch(p, j))
            t.add_done_callback(lambda _t, key=(p, j): self.inflight.pop(key, None))

    def read_now(self, p: int, off: int, n: int) -> bytearray | None:
        """``n`` bytes of pack ``p`` at ``off`` (a buffer of their own) if every chunk they
        span is in the machine's cache, else None. Any thread (the sync client's caller: no trip to the loop thread):
        the chunk files are opened and closed here, never the loop's descriptors."""
        disk = self.disk
        if disk is None:
            return None
        if n == 0:
            return bytearray()
        out = bytearray(n)
        view = memoryview(out)
        for i, coff, ln, boff in pieces(off, n, self._chunk_size(p)):
            try:
                fd = os.open(f"{disk}/p{p}-c{i}", os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                return None
            try:
                if os.preadv(fd, [view[boff:boff + ln]], coff) < ln:
                    return None  # short: the usual read names what is wrong
            finally:
                os.close(fd)
        return out

    async def read_into(self, p: int, off: int, buf: memoryview) -> None:
        spec, layout = self._spec(p)
        cs = layout.chunk_size
        n = len(buf)
        in_order = self.next.get(p) == off
        self.next[p] = off + n
        ps = pieces(off, n, cs)
        if self.disk is not None:
            for i, coff, ln, boff in ps:
                fd = self._disk_fd(p, i)
                if fd is None:
                    c = await self._chunk(p, i)  # fetched whole, into the machine's cache
                    fd = self._disk_fd(p, i) if self.disk is not None else None
                    if fd is None:  # the cache failed: this once from memory
                        buf[boff:boff + ln] = c[coff:coff + ln]
                        continue
                # a pread of at most a small file from the machine's cache: short by construction
                if os.preadv(fd, [buf[boff:boff + ln]], coff) < ln:
                    raise self._gone(p, spec)
            if in_order:
                self._ahead(p, ps[-1][0], spec, cs)
            return
        whole = in_order or self.fits or all((p, i) in self.cached or (p, i) in self.inflight for i, _, _, _ in ps)
        if whole:
            for i, coff, ln, boff in ps:
                c = await self._chunk(p, i)
                if len(c) < coff + ln:
                    raise self._gone(p, spec)
                buf[boff:boff + ln] = c[coff:coff + ln]
            self._ahead(p, ps[-1][0], spec, cs)
            return
        for i, coff, ln, boff in ps:
            self.requests += 1
            rd = getattr(self.data, "read_into", None)
            if rd is not None:
                got = await rd(spec.ino, i, coff, buf[boff:boff + ln], layout)
            else:
                b = await self.data.read(spec.ino, i, coff, ln, layout)
                got = len(b)
                buf[boff:boff + got] = b
            if got < ln:
                raise self._gone(p, spec)

    @staticmethod
    def _gone(p: int, spec: PackSpec) -> err.DfsError:
        """A pack shorter than the manifest says: removed with its snapshot (snapshot_delete
        removes the manifest and the packs)."""
        return err.Stale(f"pack {p} (inode {spec.ino}) is gone: the snapshot was deleted")


class ManifestMeta:
    """The core's MetaClient in snapshot mode: the same answers as the mode, from the
    manifest (for the core's few unconditional requests), EROFS for any change."""

    def __init__(self, inner, mode: SnapshotMode) -> None:
        self.inner = inner
        self.mode = mode
        self.caller = getattr(inner, "caller", None)

    @property
    def nshards(self) -> int:
        return self.inner.nshards

    async def close(self) -> None:
        self.mode.chunks.packs.close()
        await self.inner.close()

    async def lookup(self, parent, name, *, caller=None):
        return self.mode.attr(self.mode.entry(parent, os.fsencode(name)))

    async def getattr(self, ino, *, caller=None):
        return self.mode.attr(ino)

    async def readdir(self, ino, cookie=0, limit=1000, *, plus=True, caller=None):
        return self.mode.listing(ino, cookie, limit, plus)

    async def readlink(self, ino, *, caller=None):
        return self.mode.link_target(ino)

    async def getxattr(self, ino, name, *, caller=None):
        return self.mode.xattr(ino, os.fsencode(name))

    async def listxattr(self, ino, *, caller=None):
        return self.mode.xattr_names(ino)

    async def statfs(self, *, caller=None):
        return self.mode.statfs()

    async def read_inline(self, ino, *, caller=None):
        return await self.mode.sizes.read_inline(ino)

    async def open_read(self, ino, lease_s=0, *, access=0, handle=None, caller=None, inline=False):
        a = self.mode.attr(ino)
        check_access(a, caller or self.caller, access)
        return (a, None, True, None) if inline else (a, None, True)

    async def lookup_open(self, parent, name, lease_s=0, *, access=0, caller=None, inline=False):
        a = await self.lookup(parent, name)
        return (a, None, True, None) if inline else (a, None, True)

    async def close_handles(self, pairs, **kw):
        return None

    close_read_handles = close_handles

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)

        async def refuse(*a, **kw):
            raise readonly("a snapshot-mode client is read-only")

        return refuse


# ---------------------------------------------------------------------- the source and the store
class SnapshotSource:
    """The builder's view of snapshot ``snap`` of ``root``: the metadata service's reads at the
    snapshot, the data servers' reads at it."""

    def __init__(self, meta, data, snap: int, root: int, *, caller: Caller | None = None) -> None:
        self.meta = meta
        self.data = data
        self.snap = snap
        self.root_ino = root

    async def root(self) -> Attr:
        return await self.meta.getattr(self.root_ino, snap=self.snap)

    async def entries(self, ino: int) -> list[DirEntry]:
        return await self.meta.listdir(ino, plus=True, snap=self.snap)

    async def readlink(self, ino: int) -> bytes:
        return await self.meta.readlink(ino, snap=self.snap)

    async def xattrs(self, ino: int) -> dict[bytes, bytes]:
        names = await self.meta.listxattr(ino, snap=self.snap)
        return {os.fsencode(n): await self.meta.getxattr(ino, n, snap=self.snap) for n in names}

    async def read_small(self, attr: Attr) -> bytes:
        if attr.flags & FLAG_INLINE:
            data, _ = await self.meta.read_inline(attr.ino, snap=self.snap)
            data = bytes(data[:attr.size])
            return data + bytes(attr.size - len(data))
        layout = _layout(attr.layout)
        out = bytearray(attr.size)
        for index, coff, n, boff in pieces(0, attr.size, layout.chunk_size):
            got = await self.data.read(attr.ino, index, coff, n, layout, at=self.snap)
            out[boff:boff + len(got)] = got
        return bytes(out)


def cluster_key(meta, data) -> str:
    """What names a cluster in the machine's cache: its mgmt addresses."""
    m = getattr(data, "map", None)
    addrs = sorted(getattr(m, "mgmt", None) or [])
    return hashlib.sha1(",".join(addrs).encode()).hexdigest()[:16] if addrs else "local"


async def _read_file(meta, data, path: bytes) -> bytes:
    a = await meta.resolve(path)
    fh = FileHandle(meta, data, a, writable=False)
    try:
        return bytes(await fh.pread(0, a.size))
    finally:
        await fh.close()


def _cache_path(cache_dir: str, key: str, info: SnapshotInfo) -> str:
    return os.path.join(cache_dir, key, f"{info.epoch}-{info.created}.manifest")


_CACHED = re.compile(r"(\d+)-(\d+)\.(manifest|packs)")  # _cache_path's names, and the packs beside


def prune_cache(cache_dir: str, key: str, gone) -> int:
    """Remove the manifests and packs the machine's cache ``cache_dir`` keeps for the cluster
    ``key`` of every snapshot ``gone(epoch, created)`` says is gone (deleted: never opened
    again); how many were removed. Blocking: run it in a thread."""
    d = os.path.join(cache_dir, key)
    try:
        names = os.listdir(d)
    except FileNotFoundError:
        return 0
    n = 0
    for name in names:
        m = _CACHED.fullmatch(name)
        if m is None or not gone(int(m.group(1)), int(m.group(2))):
            continue
        p = os.path.join(d, name)
        if m.group(3) == "packs":
            remove_tree(p)
        else:
            with _quiet():
                os.unlink(p)
        n += 1
    return n


def _map(path: str) -> Manifest:
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    return Manifest(mm)


def _install(cache_dir: str | None, key: str, info: SnapshotInfo, raw: bytes) -> Manifest:
    """Verify ``raw``, put it in the machine's cache (temp name, rename), map it from there."""
    Manifest(raw, verify=True)  # the one full check
    if not cache_dir:
        return Manifest(raw)
    path = _cache_path(cache_dir, key, info)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(raw)
            os.replace(tmp, path)
        except BaseException:
            with _quiet():
                os.unlink(tmp)
            raise
        return _map(path)
    except OSError as e:
        log.warning("manifest cache %s not written (%s): kept in memory", path, e)
        return Manifest(raw)


class _quiet:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return exc[0] is not None and issubclass(exc[0], OSError)


async def load_manifest(meta, data, info: SnapshotInfo, *, cache_dir: str | None = None, key: str | None = None,
                        build_ok: bool = True, stats: dict | None = None) -> Manifest:
    """Snapshot ``info``'s manifest: from the machine's cache, else from dfs, else built (and
    stored in both). ``meta``: the MetaClient (reads take ``snap=``); ``data``: the ChunkIO.
    ``stats`` (optional) gets where it came from and the seconds each step took."""
    st = stats if stats is not None else {}
    key = key or cluster_key(meta, data)
    t0 = time.perf_counter()
    if cache_dir:
        path = _cache_path(cache_dir, key, info)
        try:
            m = _map(path)
            if m.snap == info.epoch:
                st.update(source="cache", load_s=time.perf_counter() - t0)
                return m
        except (OSError, ValueError, err.DfsError) as e:
            if not isinstance(e, FileNotFoundError):
                log.warning("cached manifest %s unusable (%s): fetched again", path, e)
    where = manifest_dir(info.epoch)
    try:
        raw = await _read_file(meta, data, where + b"/manifest")
        st["source"] = "dfs"
    except err.NotFound:
        if not build_ok:
            raise
        t1 = time.perf_counter()
        raw = await build_and_store(meta, data, info)
        st.update(source="built", build_s=time.perf_counter() - t1)
    m = _install(cache_dir, key, info, raw)
    if m.snap != info.epoch:
        raise err.ChecksumError(f"the manifest stored for snapshot {info.epoch} is of snapshot {m.snap}")
    st["load_s"] = time.perf_counter() - t0
    return m


async def build_and_store(meta, data, info: SnapshotInfo, **kw) -> bytes:
    """Build snapshot ``info``'s manifest, store its packs and itself in dfs; the manifest
    stored (ours, or that of a builder whose rename came first)."""
    from dfs.client.core import Core
    from dfs.client.mode import StrictMode
    from dfs.client.paths import AsyncClient

    c = AsyncClient(core=Core(meta, data, StrictMode(0)))
    base = manifest_dir(info.epoch)
    build_id = uuid.uuid4().hex[:12].encode()
    mine = base + b"/" + build_id
    await c.makedirs(mine, 0o755, exist_ok=True)

    async def put_pack(k: int, blob: bytes) -> PackSpec:
        path = mine + b"/pack-%d" % k
        f = await c.open(path, "wb")
        try:
            await f.write(blob)
        finally:
            await f.close()
        a = await c.getattr(path)
        return PackSpec(a.ino, a.size, a.layout)

    try:
        skip = frozenset({SYSTEM_DIR}) if info.root == ROOT_INO else frozenset()
        raw = await build(SnapshotSource(meta, data, info.epoch, info.root), snap=info.epoch,
                          created=info.created, put_pack=put_pack, skip_root=skip, **kw)
        tmp = base + b"/manifest." + build_id
        await c.write_bytes(tmp, raw)
        try:
            await c.core.rename(*(await _split(c, tmp)), *(await _split(c, base + b"/manifest")),
                                RENAME_NOREPLACE)
        except err.Exists:
            log.info("snapshot %d: another builder's manifest came first; ours is dropped", info.epoch)
            await _remove_tree(c, mine)
            await c.remove(tmp)
            raw = await _read_file(meta, data, base + b"/manifest")
        return raw
    finally:
        await c.core.close()


async def _split(c, path: bytes) -> tuple[int, bytes]:
    head, _, name = path.rpartition(b"/")
    return (await c.getattr(head)).ino, name


async def _remove_tree(c, path: bytes) -> None:
    for e in await c.readdir(path, plus=False):
        p = path + b"/" + e.name
        if (e.type & 0o170000) == 0o040000:
            await _remove_tree(c, p)
        else:
            await c.remove(p)
    await c.rmdir(path)


async def remove_manifest(meta, data, snap: int) -> None:
    """Remove what dfs stores for snapshot ``snap`` (after it is deleted); nothing if none."""
    from dfs.client.core import Core
    from dfs.client.mode import StrictMode
    from dfs.client.paths import AsyncClient

    c = AsyncClient(core=Core(meta, data, StrictMode(0)))
    try:
        if await c.exists(manifest_dir(snap)):
            await _remove_tree(c, manifest_dir(snap))
    finally:
        await c.core.close()


async def snapshot_core(meta, data, info: SnapshotInfo, *, cache_dir: str | None = None, key: str | None = None,
                        stats: dict | None = None, pack_cache: int = 256 << 20, pack_disk: bool = True):
    """A ``Core`` in snapshot mode over snapshot ``info`` (its manifest loaded first). ``pack_disk``:
    keep the packs' chunks in the machine's cache too (``cache_dir``), shared by its processes."""
    from dfs.client.core import Core

    key = key or cluster_key(meta, data)
    cmap = getattr(data, "map", None)
    if cache_dir and cmap is not None:  # the machine keeps nothing of deleted snapshots
        await asyncio.to_thread(prune_cache, cache_dir, key, cmap.snapshot_gone)
    m = await load_manifest(meta, data, info, cache_dir=cache_dir, key=key, stats=stats)
    packs = _cache_path(cache_dir, key, info)[:-len(".manifest")] + ".packs" if cache_dir and pack_disk else None
    mode = SnapshotMode(m, info.epoch, meta, data, pack_cache=pack_cache, pack_dir=packs)
    return Core(ManifestMeta(meta, mode), data, mode)
