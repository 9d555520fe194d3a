"""The chunk store of one target: chunk data in files, chunk meta in RocksDB.

A target is one directory on a local disk::

    target/
      meta/                                        RocksDB (dfs.kv.RocksKV): chunk id -> ChunkMeta,
                                                   (chunk id, epoch) -> Preserved
      chunks/xx/<ino:016x>.<index:08x>             the current version of a chunk, at most chunk_size bytes
      chunks/xx/<ino:016x>.<index:08x>@<t:08x>     a preserved version of it (written in epoch t)

``xx`` is two hex digits of a hash of the chunk id, so no directory grows past
1/256 of the target. Meta keys are ``b"C" + ino (u64 BE) + index (u32 BE)``,
so one inode's chunks are one prefix scan; values are ``version u64,
committed u64, length u32, epoch u32`` (little-endian) followed by the CRCs,
one CRC32C (u32 LE, ``dfs.common.blocks``) per ``block_size`` block of the
chunk up to ``length`` (a short last block is checksummed over its short
length). A store of the format before epochs (no ``epoch``) is rewritten
once when it is opened (its chunks get epoch 0: older than every snapshot).

Versions for snapshots: every chunk version carries the *epoch* it was written in, and a
mutation given ``keep`` first preserves the current version; the preserved versions (their
records, their files, how a snapshot reads them, their crash ordering) are
``dfs/data/versions.py``'s, whose methods ChunkStore inherits. The records both keep in
RocksDB are ``dfs/data/chunkmeta.py``'s.

What it guarantees:

* Every byte ``read``/``read_extent``/``scrub`` return or pass was checked
  against its block's CRC; a mismatch raises ``errors.ChecksumError`` (EIO,
  ``.block`` set). A chunk file that is shorter than its meta says (lost
  data) is a mismatch too.
* A write never blesses corruption: a block that a write changes only in
  part is verified before its CRC is recomputed (a bad one raises
  ``ChecksumError`` and nothing is changed; the caller repairs the chunk with
  ``install`` and retries).
* Bytes past the length are never referenced. A write or truncate that
  extends a chunk first cuts the file back to the length (dropping whatever a
  failed or torn write left there), so a hole reads as zeros and its blocks
  are checksummed as zeros.
* ENOSPC (from ``statvfs`` before an extending write, from
  ``posix_fallocate`` or from the write itself) raises ``errors.NoSpace``
  with the meta untouched, so everything acknowledged before reads back as
  before. ``posix_fallocate`` of the written range runs before the data is
  written, so a hole inside the chunk that a write fills (sparse file) fails
  there rather than half-way through the data. (A copy-on-write file system
  may still refuse an overwrite of allocated blocks; then the bytes written
  before the error are in place under the old CRCs, which the next read
  reports as a bad block, as after a crash.)

Crash ordering. Data first, then meta; meta writes are not synced unless
``sync=True`` (replication, not fsync, is what makes a write durable).
* write / truncate-grow: a crash after the data and before the meta leaves
  the new bytes under the old CRCs: the blocks touched read as bad, and the
  scrubber (or a reader going to another replica) repairs the chunk from a
  replica. Bytes written past the old length are simply unreferenced.
* truncate-shrink: meta first, then the file is cut; a crash between leaves
  unreferenced bytes past the length (cut by the next extending write).
* remove / remove_inode: meta first, then unlink; a crash between leaks the
  file (invisible, no meta) rather than resurrecting a removed chunk.
* install: the new data goes to a temporary file that is renamed over the
  chunk, then the meta; a crash before the rename leaves a ``*.tmp`` file
  (removed when the store opens), a crash after it leaves new data under old
  CRCs (bad blocks: repaired again).
* preserving a version first, install_version, drop: dfs/data/versions.py.

Concurrency. The data server calls the store from several threads. Every
operation on a chunk runs under a lock picked by a hash of the chunk id (a
fixed array of locks), so calls on one chunk never interleave (a read never
sees data written but meta not yet stored) and calls on different chunks
mostly run in parallel. Which of two concurrent calls on one chunk goes
first is the caller's job (the chain head orders writes per chunk).

File descriptors. Files are opened per call and closed before it returns,
except ``read_extent``: it returns a fresh read-only descriptor that the
caller owns and must close (after ``os.sendfile``). The descriptor keeps the
file's inode, so a later ``install`` or ``remove`` cannot change what it
sends; a later write to the same chunk can, which is why the server does not
serve reads of a chunk with a write in flight.

This module may import only ``dfs.common``, ``dfs.kv`` and its two parts
(dfs/data/chunkmeta.py, dfs/data/versions.py); it knows nothing of chains,
versions' meaning, snapshots beyond the epochs it is given, the network or
the metadata service.
"""

from __future__ import annotations

import errno as E
import os
import threading
from collections.abc import Iterator

from dfs.common import errors as err
from dfs.common.blocks import BLOCK_SIZE, block_crcs, first_bad_block
from dfs.data.chunkmeta import (
    _CHUNK_PREFIX,
    _FORMAT,
    _KEY,
    _SETTING_BLOCK_SIZE,
    _SETTING_FORMAT,
    _SETTING_TARGET_ID,
    _U32,
    _U64,
    _VAL,
    _VAL1,
    _VERSION_PREFIX,
    ChunkMeta,
    Preserved,
    _check_epoch,
    _check_id,
    _key,
    _pack,
    _ppack,
    _unpack,
    _vkey,
)
from dfs.data.versions import KeptVersions
from dfs.kv import RocksKV, WriteBatch, prefix_end

__all__ = ["ChunkMeta", "ChunkStore", "Preserved"]

_NLOCKS = 256
_SCRUB_PIECE = 1 << 20  # bytes read per step when scrubbing a chunk


def _bucket(ino: int, index: int) -> int:
    # A 64-bit multiplicative mix: consecutive chunks and inodes spread over
    # the 256 directories (and the lock array) instead of clustering.
    h = ((ino * 0x9E3779B97F4A7C15) ^ (index * 0xC2B2AE3D27D4EB4F)) & _U64
    h = ((h ^ (h >> 29)) * 0xBF58476D1CE4E5B9) & _U64
    return h >> 56


def _pread(fd: int, n: int, off: int) -> bytes:
    """Up to ``n`` bytes at ``off``; fewer only at end of file."""
    data = os.pread(fd, n, off)
    if len(data) == n or not data:
        return data
    parts = [data]
    got = len(data)
    while got < n:
        more = os.pread(fd, n - got, off + got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def _pwrite_all(fd: int, data: memoryview, off: int) -> None:
    while data:
        n = os.pwrite(fd, data, off)
        data = data[n:]
        off += n


class ChunkStore(KeptVersions):
    """The chunks of one target directory. See the module docstring."""

    def __init__(
        self,
        path: str,
        target_id: int,
        *,
        block_size: int = BLOCK_SIZE,
        reserve: int = 0,
        sync: bool = False,
    ) -> None:
        if block_size <= 0:
            raise err.InvalidArgument(f"bad block size {block_size}")
        self.path = path
        self.target_id = target_id
        self.block_size = block_size
        self.reserve = reserve
        self.sync = sync
        self._chunks = os.path.join(path, "chunks")
        for b in range(256):
            os.makedirs(os.path.join(self._chunks, f"{b:02x}"), exist_ok=True)
        self._kv = RocksKV(os.path.join(path, "meta"))
        self._closed = False
        try:
            self._check_settings()
        except BaseException:
            self._kv.close()
            raise
        self._locks = [threading.Lock() for _ in range(_NLOCKS)]
        self._zero_crc = block_crcs(bytes(block_size), block_size)
        self._stats_lock = threading.Lock()
        self.counters = {"checksum_errors": 0, "nospace": 0, "scrubbed_bytes": 0, "preserved": 0,
                         "preserved_bytes": 0, "dropped": 0, "dropped_bytes": 0,
                         "version_changes": 0}
        # preserved versions on the target: while there are none (no snapshot ever kept one here),
        # no operation looks for any
        self._nversions = sum(1 for _ in self._kv.scan_prefix(_VERSION_PREFIX))
        self._remove_temp_files()

    # ------------------------------------------------------------ plumbing

    def _check_settings(self) -> None:
        # The CRCs are only meaningful with the block size they were made
        # with, and a target directory mounted under the wrong id would serve
        # another target's chunks: refuse both.
        b = WriteBatch()
        for key, want in ((_SETTING_BLOCK_SIZE, self.block_size), (_SETTING_TARGET_ID, self.target_id)):
            have = self._kv.get(key)
            if have is None:
                b.put(key, _U32.pack(want))
            elif _U32.unpack(have)[0] != want:
                name = key[2:].decode()
                raise err.InvalidArgument(
                    f"target {self.path} has {name} {_U32.unpack(have)[0]}, opened with {want}"
                )
        if len(b):
            self._kv.write(b, sync=True)
        fmt = self._kv.get(_SETTING_FORMAT)
        if fmt is None:
            self._upgrade_meta()
        elif _U32.unpack(fmt)[0] > _FORMAT:
            raise err.InvalidArgument(f"target {self.path} has store format {_U32.unpack(fmt)[0]}, "
                                      f"this version reads {_FORMAT}")

    def _upgrade_meta(self) -> None:
        """Format 1 -> 2: every chunk gets epoch 0, in batches. A value is told
        apart by its size (its CRCs are ``ceil(length / block_size)`` u32s), so a
        crash half-way leaves nothing for the next open to misread."""
        bs = self.block_size
        b = WriteBatch()
        for k, v in self._kv.scan_prefix(_CHUNK_PREFIX):
            length = _VAL1.unpack_from(v)[2]
            if len(v) == _VAL.size + 4 * ((length + bs - 1) // bs):
                continue  # upgraded before a crash
            version, committed, length = _VAL1.unpack_from(v)
            b.put(k, _VAL.pack(version, committed, length, 0) + bytes(v[_VAL1.size:]))
            if len(b) >= 10_000:
                self._kv.write(b, sync=True)
                b = WriteBatch()
        b.put(_SETTING_FORMAT, _U32.pack(_FORMAT))
        self._kv.write(b, sync=True)

    def _remove_temp_files(self) -> None:
        for b in range(256):
            d = os.path.join(self._chunks, f"{b:02x}")
            with os.scandir(d) as it:
                for e in it:
                    if self._leftover(e.name):
                        try:
                            os.unlink(e.path)
                        except FileNotFoundError:
                            pass

    def _leftover(self, name: str) -> bool:
        """``*.tmp``: left by an install or a preserve that crashed before its rename;
        ``<chunk>@<t>`` without a record: by a preserve that crashed before its record,
        a remove before its batch, or a drop after it."""
        if name.endswith(".tmp"):
            return True
        if "@" not in name:
            return False
        if not self._nversions:
            return True
        try:
            base, t = name.split("@")
            ino, index = (int(x, 16) for x in base.split("."))
            return self._kv.get(_vkey(ino, index, int(t, 16))) is None
        except ValueError:
            return False  # not one of ours

    def _file(self, ino: int, index: int) -> str:
        return os.path.join(self._chunks, f"{_bucket(ino, index):02x}", f"{ino:016x}.{index:08x}")

    def _vfile(self, ino: int, index: int, epoch: int) -> str:
        return os.path.join(self._chunks, f"{_bucket(ino, index):02x}", f"{ino:016x}.{index:08x}@{epoch:08x}")

    def _open_rw(self, ino: int, index: int) -> int:
        # a chunk with meta and no file yet (an empty write made it) gets one here
        return os.open(self._file(ino, index), os.O_RDWR | os.O_CREAT, 0o644)

    def _create(self, ino: int, index: int) -> int:
        """A new chunk's file, read-write. A name left without meta (a crash in a
        remove) may share its inode with a preserved version: unlink it, never
        write through it."""
        path = self._file(ino, index)
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            os.unlink(path)
            return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)

    def _lock(self, ino: int, index: int) -> threading.Lock:
        return self._locks[_bucket(ino, index) % _NLOCKS]

    def _get(self, ino: int, index: int) -> ChunkMeta | None:
        v = self._kv.get(_key(ino, index))
        return None if v is None else _unpack(v)

    def _put(self, ino: int, index: int, m: ChunkMeta) -> None:
        b = WriteBatch()
        b.put(_key(ino, index), _pack(m))
        self._kv.write(b, sync=self.sync)

    def _count(self, name: str, n: int = 1) -> None:
        with self._stats_lock:
            self.counters[name] += n

    def _bad(self, ino: int, index: int, block: int, why: str = "checksum mismatch") -> err.ChecksumError:
        self._count("checksum_errors")
        return err.ChecksumError(f"{why}: chunk {ino:016x}.{index:08x} block {block}", block=block)

    def _free(self) -> int:
        st = os.statvfs(self.path)
        return max(0, st.f_bavail * st.f_frsize - self.reserve)

    def _nospace(self, what: str) -> err.NoSpace:
        self._count("nospace")
        return err.NoSpace(f"target {self.target_id}: {what}")

    def _verified(self, fd: int | None, ino: int, index: int, m: ChunkMeta, first: int, last: int) -> bytes:
        """The bytes of blocks ``first..last`` (up to the length), verified."""
        bs = self.block_size
        s0 = first * bs
        s1 = min(m.length, (last + 1) * bs)
        data = b"" if fd is None else _pread(fd, s1 - s0, s0)
        crcs = m.crcs[4 * first:4 * (last + 1)]
        whole = len(data) if len(data) == s1 - s0 else len(data) // bs * bs
        bad = first_bad_block(memoryview(data)[:whole], crcs, bs)
        if bad >= 0:
            raise self._bad(ino, index, first + bad)
        if whole < s1 - s0:  # the file ends before the length: lost data
            raise self._bad(ino, index, first + whole // bs, "chunk file too short")
        return data

    def _open_ro(self, ino: int, index: int) -> int | None:
        try:
            return os.open(self._file(ino, index), os.O_RDONLY)
        except FileNotFoundError:
            return None

    def _new_crcs(
        self, fd: int, ino: int, index: int, old: ChunkMeta, offset: int, data: memoryview, new_len: int
    ) -> bytes:
        """The CRCs of the chunk after ``data`` lands at ``offset`` and the
        length becomes ``new_len`` (bytes between the old length and
        ``new_len`` not covered by data are zeros). Only the blocks that
        change are computed; blocks changed in part are read back and
        verified first."""
        bs = self.block_size
        old_len = old.length
        end = offset + len(data)
        if new_len > old_len:
            lo, hi = min(offset, old_len), new_len
        else:
            lo, hi = offset, end
        first, last = lo // bs, (hi - 1) // bs
        out: list[bytes] = [old.crcs[:4 * first]]
        run = run_end = -1  # a run of blocks covered wholly by data: [run, run_end)
        for b in range(first, last + 2):
            bstart = b * bs
            bend = min(new_len, bstart + bs)
            if b <= last and offset <= bstart and bend <= end:
                if run < 0:
                    run = bstart
                run_end = bend
                continue
            if run >= 0:  # one block_crcs call over the whole run of data
                out.append(block_crcs(data[run - offset:run_end - offset], bs))
                run = -1
            if b > last:
                break
            if bstart >= old_len and bend - bstart == bs and (bend <= offset or bstart >= end):
                out.append(self._zero_crc)  # a whole block of hole
                continue
            buf = bytearray(bend - bstart)
            if bstart < old_len:
                keep = self._verified(fd, ino, index, old, b, b)
                buf[:len(keep)] = keep
            ds, de = max(offset, bstart), min(end, bend)
            if ds < de:
                buf[ds - bstart:de - bstart] = data[ds - offset:de - offset]
            out.append(block_crcs(buf, bs))
        out.append(old.crcs[4 * (last + 1):])
        return b"".join(out)

    def _replace(self, dst: str, fill) -> None:
        """A new file renamed over ``dst``: ``fill(fd)`` writes it (synced with ``sync``); on an
        error the temporary file goes and ENOSPC/EDQUOT become NoSpace (meta untouched)."""
        tmp = f"{dst}.{threading.get_ident():x}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                fill(fd)
                if self.sync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, dst)
        except OSError as e:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            if e.errno in (E.ENOSPC, E.EDQUOT):
                raise self._nospace(str(e)) from e
            raise

    # ------------------------------------------------------------ the API

    def stat(self, ino: int, index: int) -> ChunkMeta | None:
        _check_id(ino, index)
        return self._get(ino, index)

    def write(self, ino: int, index: int, offset: int, data, version: int, *, chunk_size: int, epoch: int = 0,
              keep: int = 0) -> ChunkMeta:
        """Apply ``data`` at ``offset`` as ``version`` written in ``epoch``; past the
        length it extends the chunk (a gap is a hole of zeros). ``committed`` is
        unchanged. An empty write only records the version. ``keep``: preserve
        the current version first if its epoch is ``<= keep`` (module docstring)."""
        _check_id(ino, index)
        mv = memoryview(data).cast("B")
        n = len(mv)
        if chunk_size <= 0 or offset < 0 or offset + n > min(chunk_size, 0xFFFFFFFF):
            raise err.InvalidArgument(f"write [{offset}, {offset + n}) outside chunk of {chunk_size}")
        if not 0 < version <= _U64:
            raise err.InvalidArgument(f"bad version {version}")
        self._check_keep(epoch, keep)
        with self._lock(ino, index):
            cur = self._get(ino, index)
            old = cur or ChunkMeta(0, 0, 0, b"", epoch)
            if n == 0:  # the content is as it was since its epoch: the version alone moves
                m = old._replace(version=version)
                self._put(ino, index, m)
                return m
            if self._keeps(cur, keep):
                self._preserve(ino, index, cur, epoch)
            end = offset + n
            old_len = old.length
            new_len = max(old_len, end)
            if new_len > old_len and self._free() < end - old_len:
                raise self._nospace(f"no room for {end - old_len} bytes")
            fd = self._open_rw(ino, index) if cur is not None else self._create(ino, index)
            try:
                crcs = self._new_crcs(fd, ino, index, old, offset, mv, new_len)
                if new_len > old_len and os.fstat(fd).st_size > old_len:
                    os.ftruncate(fd, old_len)  # so the hole [old_len, offset) reads as zeros
                try:
                    try:
                        os.posix_fallocate(fd, offset, n)
                    except OSError as e:
                        if e.errno not in (E.EOPNOTSUPP, E.EINVAL, E.ENOSYS):
                            raise
                    _pwrite_all(fd, mv, offset)
                    if self.sync:
                        os.fdatasync(fd)
                except OSError as e:
                    if new_len > old_len:  # give back the space; those bytes are not referenced
                        try:
                            os.ftruncate(fd, old_len)
                        except OSError:
                            pass
                    if e.errno in (E.ENOSPC, E.EDQUOT):
                        raise self._nospace(str(e)) from e
                    raise
            finally:
                os.close(fd)
            m = ChunkMeta(version, old.committed, new_len, crcs, epoch)
            self._put(ino, index, m)
            return m

    def _open_path(self, path: str | None) -> int | None:
        if path is None:
            return None
        try:
            return os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None

    def read(self, ino: int, index: int, offset: int, length: int, *, at: int | None = None) -> bytes:
        """Bytes ``[offset, min(offset + length, chunk length))``, every block
        verified; b"" past the end or for a chunk that does not exist. ``at``:
        as of snapshot ``at`` (the version it reads; b"" if there was none)."""
        _check_id(ino, index)
        if offset < 0 or length < 0:
            raise err.InvalidArgument(f"bad read range {offset}+{length}")
        with self._lock(ino, index):
            m, path = self._at(ino, index, at)
            if m is None or offset >= m.length or length == 0:
                return b""
            end = min(offset + length, m.length)
            bs = self.block_size
            first = offset // bs
            fd = self._open_path(path)
            try:
                data = self._verified(fd, ino, index, m, first, (end - 1) // bs)
            finally:
                if fd is not None:
                    os.close(fd)
            s0 = first * bs
            if offset == s0 and end - s0 == len(data):
                return data
            return data[offset - s0:end - s0]

    def read_extent(self, ino: int, index: int, offset: int, length: int, *, at: int | None = None) \
            -> tuple[int, int, int]:
        """``(fd, file offset, count)`` for ``os.sendfile`` after verifying the
        blocks of the range, as ``read`` does. The fd is new and the caller
        closes it. Nothing to send (past the end, no such chunk) is
        ``(-1, offset, 0)``."""
        _check_id(ino, index)
        if offset < 0 or length < 0:
            raise err.InvalidArgument(f"bad read range {offset}+{length}")
        with self._lock(ino, index):
            m, path = self._at(ino, index, at)
            if m is None or offset >= m.length or length == 0:
                return (-1, offset, 0)
            end = min(offset + length, m.length)
            bs = self.block_size
            fd = self._open_path(path)
            try:
                self._verified(fd, ino, index, m, offset // bs, (end - 1) // bs)
            except BaseException:
                if fd is not None:
                    os.close(fd)
                raise
            assert fd is not None  # a missing file fails verification (length > 0)
            return (fd, offset, end - offset)

    def block_extent(self, ino: int, index: int, offset: int, length: int, *, at: int | None = None):
        """For a zero-copy read checked by the reader: ``(meta, fd, start, count, crcs)``
        covering whole blocks from the block holding ``offset`` to the one holding
        the range's end (or the chunk's end), with the stored CRCs of exactly those
        blocks, or None when there is nothing to send. Nothing is verified here:
        the reader checks every block against ``crcs``. The fd is new; the caller
        closes it. ``at``: of the version snapshot ``at`` reads (``meta`` is then a
        ``Preserved`` when that is not the current one)."""
        _check_id(ino, index)
        if offset < 0 or length < 0:
            raise err.InvalidArgument(f"bad read range {offset}+{length}")
        with self._lock(ino, index):
            m, path = self._at(ino, index, at)
            if m is None or offset >= m.length or length == 0:
                return None
            bs = self.block_size
            first = offset // bs
            last = (min(offset + length, m.length) - 1) // bs
            start = first * bs
            count = min(m.length, (last + 1) * bs) - start
            fd = self._open_path(path)
            if fd is None:
                raise self._bad(ino, index, first, "chunk file missing")
            if os.fstat(fd).st_size < start + count:
                os.close(fd)
                raise self._bad(ino, index, first, "chunk file too short")
            return m, fd, start, count, m.crcs[4 * first:4 * (last + 1)]

    def commit(self, ino: int, index: int, version: int) -> None:
        """Record that ``version`` is committed (no-op for a missing chunk)."""
        _check_id(ino, index)
        with self._lock(ino, index):
            m = self._get(ino, index)
            if m is not None and version > m.committed:
                self._put(ino, index, m._replace(committed=version))

    def truncate(self, ino: int, index: int, length: int, version: int, *, chunk_size: int | None = None,
                 epoch: int = 0, keep: int = 0) -> ChunkMeta:
        """Set the length (growing leaves a hole) as ``version`` written in
        ``epoch``. A missing chunk is created with that length. ``keep``: as for
        ``write`` (a truncate to the same length changes nothing but the version)."""
        _check_id(ino, index)
        if length < 0 or (chunk_size is not None and length > chunk_size) or length > 0xFFFFFFFF:
            raise err.InvalidArgument(f"bad chunk length {length}")
        if not 0 < version <= _U64:
            raise err.InvalidArgument(f"bad version {version}")
        self._check_keep(epoch, keep)
        bs = self.block_size
        path = self._file(ino, index)
        with self._lock(ino, index):
            cur = self._get(ino, index)
            old = cur or ChunkMeta(0, 0, 0, b"", epoch)
            if length == old.length:
                m = old._replace(version=version)
                self._put(ino, index, m)
                return m
            if self._keeps(cur, keep):
                self._preserve(ino, index, cur, epoch)
            if length < old.length:
                nfull = length // bs
                crcs = old.crcs[:4 * nfull]
                if length % bs:
                    fd = self._open_ro(ino, index)
                    try:
                        keep_bytes = self._verified(fd, ino, index, old, nfull, nfull)
                    finally:
                        if fd is not None:
                            os.close(fd)
                    crcs += block_crcs(keep_bytes[:length % bs], bs)
                m = ChunkMeta(version, old.committed, length, crcs, epoch)
                self._put(ino, index, m)  # meta first: a crash leaves only unreferenced bytes
                try:
                    os.truncate(path, length)
                except FileNotFoundError:
                    pass
                return m
            fd = self._open_rw(ino, index) if cur is not None else self._create(ino, index)
            try:
                crcs = self._new_crcs(fd, ino, index, old, length, memoryview(b""), length)
                if os.fstat(fd).st_size > old.length:
                    os.ftruncate(fd, old.length)  # drop stale bytes so the hole is zeros
                os.ftruncate(fd, length)
            finally:
                os.close(fd)
            m = ChunkMeta(version, old.committed, length, crcs, epoch)
            self._put(ino, index, m)
            return m

    def remove(self, ino: int, index: int, *, epoch: int = 0, keep: int = 0) -> bool:
        """Remove a chunk (no error if it does not exist) in ``epoch``, preserving
        it first if its epoch is ``<= keep``. Returns whether the chunk still has
        preserved versions."""
        _check_id(ino, index)
        self._check_keep(epoch, keep)
        with self._lock(ino, index):
            return self._remove_locked(ino, index, epoch, keep)

    def _remove_locked(self, ino: int, index: int, epoch: int = 0, keep: int = 0) -> bool:
        b = WriteBatch()
        path = self._file(ino, index)
        added = None
        if keep:
            cur = self._get(ino, index)
            if self._keeps(cur, keep):
                p = Preserved(cur.epoch, epoch, cur.version, cur.length, cur.crcs)
                have = self._version(ino, index, cur.epoch)
                if have is None or have[2:] != p[2:]:
                    # the preserved name becomes a second link to the chunk's file: no copy
                    vpath = self._vfile(ino, index, cur.epoch)
                    tmp = f"{vpath}.{threading.get_ident():x}.tmp"
                    try:
                        os.link(path, tmp)
                    except FileNotFoundError:
                        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644))  # nothing written
                    os.rename(tmp, vpath)
                    added = None if have is not None else p
                b.put(_vkey(ino, index, cur.epoch), _ppack(p))
        b.delete(_key(ino, index))
        self._kv.write(b, sync=self.sync)  # meta first: a crash leaks a file, never resurrects a chunk
        if added is not None:
            self._added(added)
        if keep and len(b) > 1:
            self._changed()
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        return bool(self._nversions) and bool(self._versions(ino, index))

    def remove_inode(self, ino: int, *, epoch: int = 0, keep: int = 0) -> int:
        """Remove every chunk of ``ino`` (preserving, as ``remove`` does, those of
        epoch ``<= keep``); returns how many there were."""
        _check_id(ino, 0)
        self._check_keep(epoch, keep)
        indexes = [_KEY.unpack(k[1:])[1] for k, _ in self._kv.scan_prefix(_CHUNK_PREFIX + ino.to_bytes(8, "big"))]
        n = 0
        for index in indexes:
            with self._lock(ino, index):
                if self._kv.get(_key(ino, index)) is not None:
                    self._remove_locked(ino, index, epoch, keep)
                    n += 1
        return n

    def list_chunks(
        self, ino: int | None = None, *, start: tuple[int, int] | None = None
    ) -> Iterator[tuple[int, int, ChunkMeta]]:
        """``(ino, index, meta)`` of every chunk (or of ``ino``'s), in id order,
        from chunk id ``start`` on if given (to page through a long list).
        Current versions only (``list_versions`` for the preserved ones)."""
        prefix = _CHUNK_PREFIX if ino is None else _CHUNK_PREFIX + ino.to_bytes(8, "big")
        lo = prefix if start is None else max(prefix, _key(*start))
        for k, v in self._kv.scan(lo, prefix_end(prefix)):
            i, x = _KEY.unpack(k[1:])
            yield i, x, _unpack(v)

    def scrub(self, ino: int, index: int, *, preserved: int | None = None) -> list[int]:
        """Numbers of the blocks of the chunk whose data does not match its
        CRC (missing data counts as bad); [] for a chunk that does not exist.
        ``preserved``: of its preserved version of that epoch instead."""
        _check_id(ino, index)
        bs = self.block_size
        piece = max(bs, _SCRUB_PIECE // bs * bs)
        bad: list[int] = []
        with self._lock(ino, index):
            if preserved is None:
                m, path = self._get(ino, index), self._file(ino, index)
            else:
                m, path = self._version(ino, index, preserved), self._vfile(ino, index, preserved)
            if m is None or m.length == 0:
                return bad
            fd = self._open_path(path)
            try:
                for off in range(0, m.length, piece):
                    want = min(piece, m.length - off)
                    data = b"" if fd is None else _pread(fd, want, off)
                    b0 = off // bs
                    have = block_crcs(data, bs)
                    for j in range((want + bs - 1) // bs):
                        # a block the file does not hold in full is bad too (lost data)
                        if min(want, (j + 1) * bs) > len(data) or (
                            have[4 * j:4 * j + 4] != m.crcs[4 * (b0 + j):4 * (b0 + j) + 4]
                        ):
                            bad.append(b0 + j)
            finally:
                if fd is not None:
                    os.close(fd)
        self._count("scrubbed_bytes", m.length)
        if bad:
            self._count("checksum_errors", len(bad))
        return bad

    def _install_file(self, path: str, mv: memoryview) -> None:
        """``mv`` as the whole content of ``path``: a temporary file renamed over it."""
        n = len(mv)
        if self._free() < n:
            raise self._nospace(f"no room for {n} bytes")

        def write(fd: int) -> None:
            if n:
                try:
                    os.posix_fallocate(fd, 0, n)
                except OSError as e:
                    if e.errno not in (E.EOPNOTSUPP, E.EINVAL, E.ENOSYS):
                        raise
            _pwrite_all(fd, mv, 0)

        self._replace(path, write)

    def install(self, ino: int, index: int, data, version: int, *, committed: int | None = None,
                epoch: int = 0) -> ChunkMeta:
        """Replace the whole chunk with ``data`` as ``version`` written in
        ``epoch`` (committed = ``version`` unless given): resync and repair.
        Atomic for readers: a temporary file renamed over the chunk. Preserves
        nothing: the caller installs the chunk's preserved versions itself."""
        _check_id(ino, index)
        _check_epoch(epoch)
        mv = memoryview(data).cast("B")
        n = len(mv)
        if n > 0xFFFFFFFF or not 0 < version <= _U64:
            raise err.InvalidArgument(f"bad install of {n} bytes as version {version}")
        crcs = block_crcs(mv, self.block_size)
        with self._lock(ino, index):
            self._install_file(self._file(ino, index), mv)
            m = ChunkMeta(version, version if committed is None else committed, n, crcs, epoch)
            self._put(ino, index, m)
            return m

    def capacity(self) -> tuple[int, int]:
        """``(total, free)`` bytes of the target's file system; free is what
        writes may use (available to non-root, less the reserve)."""
        st = os.statvfs(self.path)
        return st.f_blocks * st.f_frsize, self._free()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._kv.close()
