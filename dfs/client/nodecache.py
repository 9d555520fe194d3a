"""The node-local data cache: chunks of immutable data on this machine's disk, shared by its processes.

Immutable data is what a snapshot holds: a chunk read at a snapshot's epoch
(``read(..., at=S)``: snapshot-mode clients and ``PATH/.snap/NAME``) never
changes, so it is kept here without revalidation, keyed by (snapshot epoch,
the snapshot's creation time, inode, chunk index) under a directory of the
cluster (its id and mgmt addresses). A live file's bytes are immutable too
once named by their data version (``Attr.dver``, which the metadata service
changes whenever they may change: a write open, a published write, a size
change, a vanished writer): its chunks are kept under ``live/`` keyed by
(inode, data version, chunk index), and a strict-mode open, which fetches the
attributes afresh anyway (close-to-open), revalidates them at no cost; an old
version's entries are never read again and age out. Every process of the machine that uses
dfs (mounts, library clients, `dfs warmup`) with the same ``cache_dir`` shares
it through the file system only:

* an entry is written under a temporary name and renamed into place, so a
  reader sees a whole entry or none; entries never change after that;
* a reader tolerates an entry removed under it (a miss; an open file of an
  unlinked entry still reads whole);
* every entry carries a CRC32C per 64 KiB block and one over its header,
  checked on every read: a bad entry is removed and counted, and the read
  goes to the data servers; it is never served;
* the total is bounded by ``capacity`` bytes: a process that passes it (by
  its own count, refreshed by a scan of the directory at the latest every
  ``capacity / 32`` bytes it writes) removes the least recently used entries
  (modification time, touched on every hit) down to 90 %;
* ``IDENTITY`` names the format and the cluster: a cache directory whose
  identity is missing (with entries in it), unreadable or another cluster's is
  emptied and rebuilt before anything is read from it.

``CachedChunks`` puts the cache in front of a ``ChunkIO`` (the data client):
reads with ``at`` and ``read_versioned*`` go through it, a missing chunk is
fetched whole (one data-plane read) and stored; everything else is passed
through.

Imports: dfs.common and the standard library only.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import errno as E
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import struct
import time
import uuid
from collections.abc import Iterator
from typing import Any

from dfs.common import errors as err
from dfs.common.checksum import crc32c

log = logging.getLogger("dfs.client")

__all__ = ["BLOCK", "FORMAT", "CacheKey", "CachedChunks", "NodeCache", "cache_identity", "parse_size", "remove_tree",
           "warming"]

FORMAT = 1
BLOCK = 64 << 10
MAGIC = b"DFC1"
# magic, data length, block size, CRC32C of those 16 bytes and of the block CRCs that follow
_HEAD = struct.Struct("<4sQII")
_IDENTITY = "IDENTITY"
LIVE_DIR = "live"  # the chunks of live files, by data version (CacheKey.live)
_STALE_TMP_S = 3600.0

# set by a warm-up: a chunk that cannot be stored fails the read (and is reported by the
# file's name) instead of being served from memory only
warming: contextvars.ContextVar[bool] = contextvars.ContextVar("dfs_cache_warming", default=False)


def parse_size(s: str | int) -> int:
    """Bytes from ``"50G"``, ``"512MiB"``, ``"1.5T"``, ``"4096"`` (binary units); EINVAL otherwise."""
    if isinstance(s, int):
        if s < 0:
            raise err.InvalidArgument(f"a size cannot be negative: {s}")
        return s
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(?:i?b)?\s*", str(s), re.IGNORECASE)
    if m is None:
        raise err.InvalidArgument(f"not a size: {s!r} (examples: 4096, 512M, 50G, 1.5T)")
    unit = 1 << (10 * ("kmgtp".find(m.group(2).lower()) + 1)) if m.group(2) else 1
    return int(float(m.group(1)) * unit)


def cache_identity(data: Any) -> str:
    """What names the cluster a data client talks to: its id and its mgmt addresses."""
    m = getattr(data, "map", None)
    cid = getattr(m, "cluster_id", "") or ""
    addrs = ",".join(sorted(getattr(m, "mgmt", None) or []))
    return f"{cid}@{addrs}"


@dataclasses.dataclass(frozen=True, slots=True)
class CacheKey:
    """One chunk of a snapshot: epoch and creation time (ns) of the snapshot, inode, chunk
    index; or (``ver``, with snap and created 0) one chunk of a live file at that data
    version (``Attr.dver``)."""

    snap: int
    created: int
    ino: int
    index: int
    ver: int = 0

    @classmethod
    def live(cls, ino: int, index: int, ver: int) -> CacheKey:
        return cls(0, 0, ino, index, ver)

    def dirname(self) -> str:
        return LIVE_DIR if self.ver else f"s{self.snap}-{self.created}"

    def filename(self) -> str:
        return f"{self.ino}-{self.ver}.{self.index}" if self.ver else f"{self.ino}.{self.index}"


@dataclasses.dataclass(slots=True)
class CacheStats:
    hits: int = 0
    misses: int = 0
    hit_bytes: int = 0  # bytes served from the cache
    stored: int = 0  # entries written
    stored_bytes: int = 0
    evictions: int = 0  # entries removed to stay under the capacity
    corrupt: int = 0  # entries found bad and removed
    store_errors: int = 0  # entries that could not be written (a full disk, ...)

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


class NodeCache:
    """The cache directory of one cluster under ``root`` (blocking calls: run them in a thread)."""

    def __init__(self, root: str, identity: str, capacity: int | None) -> None:
        """``capacity``: bytes at most (recorded in the identity file); None: the capacity
        recorded there by the last process that gave one (EINVAL if there is no cache yet)."""
        if capacity is not None and capacity <= 0:
            raise err.InvalidArgument(f"cache capacity must be positive, not {capacity}")
        self.identity = identity
        self.capacity = capacity or 0
        self.dir = os.path.join(root, "chunks-" + hashlib.sha1(identity.encode()).hexdigest()[:16])
        self.tmp = os.path.join(self.dir, "tmp")
        self.stats = CacheStats()
        self.used = 0  # bytes on disk, as of the last scan plus what this process wrote since
        self._since_scan = 0
        self._open(capacity)
        self._rescan = max(self.capacity // 32, 1 << 20)

    # ------------------------------------------------------------------ identity
    def _open(self, capacity: int | None) -> None:
        if capacity is None and not os.path.exists(os.path.join(self.dir, _IDENTITY)):
            raise err.InvalidArgument(f"no node cache of this cluster in {os.path.dirname(self.dir)} yet: "
                                      "give its size")
        os.makedirs(os.path.dirname(self.dir) or ".", exist_ok=True)
        with open(self.dir + ".lock", "a+b") as lk:  # one process checks (and rebuilds) at a time
            fcntl.flock(lk, fcntl.LOCK_EX)
            why, ident = self._check_identity()
            if why is not None:
                log.warning("cache %s %s: emptied and rebuilt", self.dir, why)
                if capacity is None:
                    self._rebuild(write=False)
                    raise err.InvalidArgument(f"the node cache {self.dir} {why}: emptied; give its size")
                self._rebuild()
            elif capacity is None:
                recorded = ident.get("capacity") if ident else None
                if not isinstance(recorded, int) or recorded <= 0:
                    raise err.InvalidArgument(f"the node cache {self.dir} records no size: give one")
                self.capacity = recorded
            elif ident is None or ident.get("capacity") != capacity:
                self._write_identity()  # the size the next process without one uses
            os.makedirs(self.tmp, exist_ok=True)
            self._scan(clean_tmp=True)

    def _check_identity(self) -> tuple[str | None, dict | None]:
        """(None if the directory is ours (or new and empty), else why not; its identity)."""
        try:
            with open(os.path.join(self.dir, _IDENTITY), "rb") as f:
                ident = json.loads(f.read())
        except FileNotFoundError:
            if not os.path.isdir(self.dir) or not any(n != "tmp" for n in os.listdir(self.dir)):
                return None, None
            return "has entries but no identity", None
        except (OSError, ValueError) as e:
            return f"has an unreadable identity ({e})", None
        if not isinstance(ident, dict) or ident.get("format") != FORMAT:
            return f"is of format {ident.get('format') if isinstance(ident, dict) else ident!r}, not {FORMAT}", None
        if ident.get("cluster") != self.identity:
            return f"belongs to cluster {ident.get('cluster')!r}, not {self.identity!r}", None
        return None, ident

    def _write_identity(self) -> None:
        os.makedirs(self.dir, exist_ok=True)
        tmp = os.path.join(self.dir, f".{_IDENTITY}.{uuid.uuid4().hex}")
        with open(tmp, "wb") as f:
            f.write(json.dumps({"format": FORMAT, "cluster": self.identity, "capacity": self.capacity}).encode())
        os.replace(tmp, os.path.join(self.dir, _IDENTITY))

    def _rebuild(self, write: bool = True) -> None:
        if os.path.isdir(self.dir):
            remove_tree(self.dir)  # at once: nothing is read from it any more
        if write:
            self._write_identity()

    # ------------------------------------------------------------------ entries
    def path(self, key: CacheKey) -> str:
        return os.path.join(self.dir, key.dirname(), key.filename())

    def contains(self, key: CacheKey) -> bool:
        return os.path.exists(self.path(key))

    def get(self, key: CacheKey, offset: int = 0, length: int | None = None) -> bytes | None:
        """Bytes ``[offset, offset + length)`` of the chunk (shorter where it ends), verified;
        None if the entry is missing or bad (a bad one is removed)."""
        out = self._hit(key, lambda fd: self._read(fd, offset, length))
        if out is not None:
            self.stats.hit_bytes += len(out)
        return out

    def get_into(self, key: CacheKey, offset: int, buf: memoryview) -> int | None:
        """``get`` straight into ``buf`` (no copy for a block-aligned ``offset``): how many
        bytes, or None for a missing or bad entry (``buf`` may then hold garbage)."""
        buf = memoryview(buf).cast("B")
        if offset % BLOCK:
            got = self.get(key, offset, len(buf))
            if got is not None:
                buf[:len(got)] = got
            return None if got is None else len(got)
        n = self._hit(key, lambda fd: self._read_into(fd, offset, buf))
        if n is not None:
            self.stats.hit_bytes += n
        return n

    def _hit(self, key: CacheKey, read):
        """``read(fd)`` of the entry of ``key``, counted a hit; None (a miss) if it is missing
        or ``read`` finds it bad (then it is removed). A hit makes the entry the most recent."""
        p = self.path(key)
        try:
            fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            self.stats.misses += 1
            return None
        try:
            out = read(fd)
            if out is None:
                self._drop_bad(p)
                self.stats.misses += 1
                return None
            try:
                os.utime(fd)  # least recently used = oldest modification time
            except OSError:
                pass
        finally:
            os.close(fd)
        self.stats.hits += 1
        return out

    def _read_into(self, fd: int, offset: int, buf: memoryview) -> int | None:
        hdr = self._header(fd)
        if hdr is None:
            return None
        size, block, crcs, base = hdr
        if block != BLOCK:
            got = self._read(fd, offset, len(buf))
            if got is not None:
                buf[:len(got)] = got
            return None if got is None else len(got)
        end = min(size, offset + len(buf))
        if offset >= end:
            return 0
        n = end - offset
        b0, b1 = offset // block, -(-end // block)
        full = min(size, b1 * block) - offset  # whole blocks (the chunk's last one may be short)
        if full <= len(buf):
            parts, tail = [buf[:full]], None
        else:  # the range ends inside a block: its whole block is read aside to be checked
            cut = (b1 - 1) * block - offset
            tail = bytearray(min(size, b1 * block) - (b1 - 1) * block)
            parts = [buf[:cut], tail] if cut else [tail]
        if os.preadv(fd, parts, base + offset) != full:
            return None
        for i in range(b0, b1):
            lo = (i - b0) * block
            piece = tail if tail is not None and i == b1 - 1 else buf[lo:min(lo + block, full)]
            if crc32c(piece) != int.from_bytes(crcs[4 * i:4 * i + 4], "little"):
                return None
        if tail is not None:
            cut = (b1 - 1) * block - offset
            buf[cut:n] = tail[:n - cut]
        return n

    def _header(self, fd: int) -> tuple[int, int, bytes, int] | None:
        """(data length, block size, block CRCs, where the data starts), checked; None if bad."""
        head = os.pread(fd, _HEAD.size, 0)
        if len(head) < _HEAD.size:
            return None
        magic, size, block, hcrc = _HEAD.unpack(head)
        if magic != MAGIC or block <= 0 or size > (1 << 32):
            return None
        n = -(-size // block)
        crcs = os.pread(fd, 4 * n, _HEAD.size)
        if len(crcs) != 4 * n or crc32c(crcs, crc32c(head[:16])) != hcrc:
            return None
        return size, block, crcs, _HEAD.size + 4 * n

    def _read(self, fd: int, offset: int, length: int | None) -> bytes | None:
        hdr = self._header(fd)
        if hdr is None:
            return None
        size, block, crcs, base = hdr
        end = size if length is None else min(size, offset + length)
        if offset >= end:
            return b""
        b0, b1 = offset // block, -(-end // block)
        raw = os.pread(fd, min(size, b1 * block) - b0 * block, base + b0 * block)
        if len(raw) != min(size, b1 * block) - b0 * block:
            return None
        mv = memoryview(raw)
        for i in range(b0, b1):
            piece = mv[(i - b0) * block:(i - b0 + 1) * block]
            if crc32c(piece) != int.from_bytes(crcs[4 * i:4 * i + 4], "little"):
                return None
        return raw[offset - b0 * block:end - b0 * block]

    def _drop_bad(self, p: str) -> None:
        self.stats.corrupt += 1
        log.warning("cache entry %s is corrupt: removed, read again from the data servers", p)
        try:
            os.unlink(p)
        except OSError:
            pass

    def put(self, key: CacheKey, data) -> None:
        """Store the whole chunk ``data`` (raises OSError, e.g. ENOSPC, if it cannot be written)."""
        mv = memoryview(data).cast("B")
        size = len(mv)
        crcs = b"".join(crc32c(mv[i:i + BLOCK]).to_bytes(4, "little") for i in range(0, size, BLOCK))
        head16 = _HEAD.pack(MAGIC, size, BLOCK, 0)[:16]
        head = head16 + crc32c(crcs, crc32c(head16)).to_bytes(4, "little")
        tmp = os.path.join(self.tmp, f"{os.getpid()}-{uuid.uuid4().hex}")
        try:
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            except FileNotFoundError:  # the tmp directory went with a rebuild: make it again
                os.makedirs(self.tmp, exist_ok=True)
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            try:
                _write_all(fd, head + crcs)
                _write_all(fd, mv)
            finally:
                os.close(fd)
            dst = self.path(key)
            try:
                os.replace(tmp, dst)
            except FileNotFoundError:
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                os.replace(tmp, dst)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            self.stats.store_errors += 1
            raise
        total = _HEAD.size + len(crcs) + size
        self.stats.stored += 1
        self.stats.stored_bytes += size
        self.used += total
        self._since_scan += total
        if self.used > self.capacity or self._since_scan > self._rescan:
            self._scan()
            if self.used > self.capacity:
                self.evict(int(self.capacity * 0.9))

    def remove(self, key: CacheKey) -> bool:
        try:
            os.unlink(self.path(key))
            return True
        except FileNotFoundError:
            return False

    # ------------------------------------------------------------------ the bound
    def _entries(self) -> Iterator[tuple[int, int, str]]:
        """(mtime_ns, bytes, path) of every entry (those removed meanwhile are skipped)."""
        try:
            dirs = list(os.scandir(self.dir))
        except FileNotFoundError:
            return
        for d in dirs:
            if d.name == "tmp" or not d.is_dir(follow_symlinks=False):
                continue
            try:
                files = list(os.scandir(d.path))
            except FileNotFoundError:
                continue
            for e in files:
                try:
                    st = e.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                yield st.st_mtime_ns, st.st_size, e.path

    def _scan(self, clean_tmp: bool = False) -> None:
        self.used = sum(size for _, size, _ in self._entries())
        self._since_scan = 0
        if clean_tmp:  # temporary files of processes that died while writing
            now = time.time()
            for e in os.scandir(self.tmp):
                try:
                    if now - e.stat().st_mtime > _STALE_TMP_S:
                        os.unlink(e.path)
                except OSError:
                    pass

    def evict(self, target: int) -> int:
        """Remove the least recently used entries until at most ``target`` bytes are left;
        how many were removed."""
        entries = sorted(self._entries())
        total = sum(size for _, size, _ in entries)
        n = 0
        for _, size, p in entries:
            if total <= target:
                break
            try:
                os.unlink(p)
                n += 1
            except FileNotFoundError:
                pass  # another process evicted it
            total -= size
        self.used = total
        self.stats.evictions += n
        return n

    def prune(self, gone) -> int:
        """Remove the entries of every snapshot ``gone(epoch, created)`` says is gone (deleted:
        nobody can open it again); how many snapshots' entries were removed."""
        n = 0
        try:
            dirs = list(os.scandir(self.dir))
        except FileNotFoundError:
            return 0
        for d in dirs:
            m = _SNAP_DIR.fullmatch(d.name)
            if m is None or not gone(int(m.group(1)), int(m.group(2))):
                continue
            remove_tree(d.path)
            n += 1
        if n:
            self._scan()
        return n

    def usage(self) -> tuple[int, int]:
        """(entries, bytes) on disk now."""
        n = b = 0
        for _, size, _ in self._entries():
            n += 1
            b += size
        return n, b


_SNAP_DIR = re.compile(r"s(\d+)-(\d+)")  # CacheKey.dirname()


def remove_tree(path: str) -> None:
    """``path`` gone at once (renamed aside, then removed): a reader sees all of it or none."""
    old = f"{path}.old-{uuid.uuid4().hex[:8]}"
    try:
        os.rename(path, old)
    except FileNotFoundError:
        return  # another process pruned it
    shutil.rmtree(old, ignore_errors=True)


def _write_all(fd: int, data) -> None:
    mv = memoryview(data)
    while mv:
        n = os.write(fd, mv)
        mv = mv[n:]


class CachedChunks:
    """A ``ChunkIO`` with the node cache in front of its reads at a snapshot (``at``).

    ``created(at)``: the creation time of snapshot ``at`` (None: unknown, not cached),
    by default from the inner data client's cluster map."""

    def __init__(self, inner: Any, cache: NodeCache, created=None) -> None:
        self.inner = inner
        self.cache = cache
        self._created = created
        self._inflight: dict[CacheKey, asyncio.Future] = {}
        self._fetched = 0  # fetches finished: a miss seen before the last one may be stale
        self._warned = False

    versioned = True  # FileHandle reads live files through read_versioned*

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    @property
    def stats(self) -> CacheStats:
        return self.cache.stats

    def key(self, ino: int, index: int, at: int) -> CacheKey | None:
        if self._created is not None:
            created = self._created(at)
        else:
            info = self.inner.map.snapshots.get(at)
            created = None if info is None else info.created
        return None if created is None else CacheKey(at, created, ino, index)

    async def read(self, ino, index, offset, length, layout, at=None):
        if at is None:
            return await self.inner.read(ino, index, offset, length, layout)
        key = self.key(ino, index, at)
        if key is None:
            return await self.inner.read(ino, index, offset, length, layout, at=at)
        return await self._read_key(key, offset, length, layout)

    async def read_versioned(self, ino, index, offset, length, layout, ver: int):
        """``read`` of a live file's chunk as its data version ``ver`` has it: the same bytes
        for every reader who opened that version, so they are kept (``CacheKey.live``)."""
        return await self._read_key(CacheKey.live(ino, index, ver), offset, length, layout)

    async def read_versioned_into(self, ino, index, offset, buf, layout, ver: int) -> int:
        """``read_versioned`` into ``buf``; the byte count."""
        return await self._read_key_into(CacheKey.live(ino, index, ver), offset, buf, layout)

    async def _read_key(self, key: CacheKey, offset, length, layout):
        seen = self._fetched
        got = await asyncio.to_thread(self.cache.get, key, offset, length)
        if got is None:
            chunk = await self.fill(key, layout, seen)
            got = chunk[offset:offset + length]
        return memoryview(got)

    async def read_into(self, ino, index, offset, buf, layout, at=None):
        if at is None or (key := self.key(ino, index, at)) is None:
            rd = getattr(self.inner, "read_into", None)
            kw = {} if at is None else {"at": at}
            if rd is not None:
                return await rd(ino, index, offset, buf, layout, **kw)
            got = await self.inner.read(ino, index, offset, len(buf), layout, **kw)
            buf[:len(got)] = got
            return len(got)
        return await self._read_key_into(key, offset, buf, layout)

    async def _read_key_into(self, key: CacheKey, offset, buf, layout) -> int:
        seen = self._fetched
        n = await asyncio.to_thread(self.cache.get_into, key, offset, buf)
        if n is not None:
            return n
        got = memoryview(await self.fill(key, layout, seen))[offset:offset + len(buf)]
        buf[:len(got)] = got
        return len(got)

    async def fill(self, key: CacheKey, layout, seen: int | None = None) -> bytes:
        """Chunk ``key`` fetched whole from the data servers and stored (one fetch for
        concurrent readers of this process). Its bytes.

        ``seen`` is ``_fetched`` when the caller found the chunk missing: if a fetch ended
        since, it may have been this chunk's (stored, and out of ``_inflight`` already),
        so the cache is asked again before fetching twice."""
        return (await self._fill(key, layout, seen))[0]

    async def _fill(self, key: CacheKey, layout, seen: int | None) -> tuple[bytes, bool]:
        """``fill``'s bytes, and whether they came from the data servers (False: the cache
        had them after all)."""
        fut = self._inflight.get(key)
        if fut is None and seen is not None and seen != self._fetched:
            got = await asyncio.to_thread(self.cache.get, key)
            if got is not None:
                return got, False
            fut = self._inflight.get(key)
        if fut is None:
            fut = self._inflight[key] = asyncio.ensure_future(self._fetch(key, layout))
            fut.add_done_callback(lambda _f, key=key: self._fetch_done(key))
        data, store_error = await asyncio.shield(fut)
        if store_error is not None and warming.get():
            raise store_error
        return data, True

    def _fetch_done(self, key: CacheKey) -> None:
        self._fetched += 1
        self._inflight.pop(key, None)

    async def _fetch(self, key: CacheKey, layout) -> tuple[bytes, BaseException | None]:
        at = {} if key.ver else {"at": key.snap}
        data = bytes(await self.inner.read(key.ino, key.index, 0, layout.chunk_size, layout, **at))
        try:
            await asyncio.to_thread(self.cache.put, key, data)
        except OSError as e:
            if not self._warned:
                self._warned = True
                log.warning("node cache %s: chunk not stored (%s); reads go on from the data servers",
                            self.cache.dir, e)
            code = e.errno or E.EIO
            return data, err.DfsError(f"node cache {self.cache.dir}: {e.strerror or e}", code=code)
        return data, None

    async def warm(self, ino: int, index: int, layout, at: int, ver: int = 0) -> int:
        """Chunk ``index`` of ``ino`` at snapshot ``at`` (``ver``: of live file ``ino`` at that
        data version) into the cache unless it is there; the bytes fetched (0 if it was cached)."""
        key = CacheKey.live(ino, index, ver) if ver else self.key(ino, index, at)
        if key is None:
            raise err.Stale(f"snapshot {at} is not in the cluster map")
        seen = self._fetched
        if await asyncio.to_thread(self.cache.contains, key):
            return 0
        token = warming.set(True)
        try:
            data, fetched = await self._fill(key, layout, seen)
            return len(data) if fetched else 0
        finally:
            warming.reset(token)

    async def forget(self, ino: int, index: int, at: int, ver: int = 0) -> bool:
        key = CacheKey.live(ino, index, ver) if ver else self.key(ino, index, at)
        return key is not None and await asyncio.to_thread(self.cache.remove, key)
