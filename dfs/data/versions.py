"""The versions of a target's chunks kept for snapshots: preserving the current version
before a mutation that would change it, reading a chunk as a snapshot saw it, installing,
listing and dropping the preserved versions, and what they cost per snapshot
(docs/design/snapshots.md).

Every chunk version
carries the *epoch* it was written in. A mutation given ``keep`` (the newest
snapshot older than its epoch that is still live, 0: none) first *preserves*
the current version when its epoch ``t <= keep``: the version becomes
``Preserved(t, until=epoch)``, a file and a meta record of its own
(``b"V" + ino + index + ~t (u32 BE)``: newest first per chunk; value
``version u64, length u32, until u32`` + CRCs), and is never changed again.
A write or truncate then applies to the current file as always, after the
old bytes were copied out (``os.copy_file_range``: one chunk copy, a reflink
where the file system has them); a remove hard-links the file to its
preserved name instead of copying. Reads ``at=S`` get the current version if
its epoch is ``<= S``, else the preserved one with ``t <= S < until``, else
nothing (the chunk did not exist at ``S``). An empty write or a truncate to
the same length changes only the version number, never the epoch: the
content it names is unchanged since ``t``. ``drop`` removes the preserved
versions no live snapshot reads. The store knows nothing else of snapshots:
which are live is its caller's.

Crash ordering (the store's own, for current versions, is in dfs/data/store.py):

* preserving (before a write or truncate): the bytes are copied to a
  temporary file renamed to the preserved name, then its meta record is
  written, then the mutation goes on as dfs/data/store.py says. A crash before
  the record leaves a preserved file without one (removed when the store opens);
  after it, the version is preserved and the mutation not applied (or torn, as
  the store says): the retry finds the version preserved already and does not copy
  it again.
* preserving for a remove: the file is hard-linked to its preserved name,
  then one batch writes the preserved record and deletes the chunk's, then
  the chunk's name is unlinked. A crash before the batch leaves an extra
  link without a record (removed when the store opens, or replaced by the
  retry); after it, a leaked name sharing the preserved file's inode, which
  is why a new chunk's file is created with ``O_EXCL`` (an old name is
  unlinked first, never written through).
* install_version: temporary file, rename, then the record, like install.
* drop: the record first, then the file (a crash leaks a file, removed when
  the store opens).

``KeptVersions`` is a part of ``dfs.data.store.ChunkStore`` (its base class): the methods
here are ChunkStore's API and run under its per-chunk locks, on its RocksDB and its chunk
files, through the plumbing ChunkStore defines (``_kv``, ``_lock``, ``_get``, ``_file``,
``_vfile``, ``_free``, ``_nospace``, ``_replace``, ``_verified``, ``_open_path``,
``_install_file``, ``_count``, ``_stats_lock``, ``counters``, ``_nversions``, ``sync``,
``block_size``).

This module may import only ``dfs.common``, ``dfs.kv`` and dfs/data/chunkmeta.py; it never
imports dfs.data.store (the store imports it), and it knows nothing of chains, snapshots
beyond the epochs it is given, the network or the metadata service.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Iterator

from dfs.common import errors as err
from dfs.common.blocks import block_crcs
from dfs.data.chunkmeta import (
    _U32MAX,
    _U64,
    _VERSION_PREFIX,
    ChunkMeta,
    Preserved,
    _check_epoch,
    _check_id,
    _ppack,
    _punpack,
    _vid,
    _vkey,
    _vprefix,
)
from dfs.kv import WriteBatch, prefix_end

_PAGE = 1024  # records read per step by the background scans (drop, usage)


def _reads(live: list[int], t: int, until: int) -> bool:
    """Whether a snapshot of sorted ``live`` reads a version of epochs ``[t, until)``."""
    i = bisect.bisect_left(live, t)
    return i < len(live) and live[i] < until


def _take(it, n: int) -> list:
    out = []
    for x in it:
        out.append(x)
        if len(out) == n:
            break
    return out


class KeptVersions:
    """The preserved versions of a ChunkStore's chunks (the module docstring): a base class of
    ChunkStore, never used alone."""

    # ------------------------------------------------------------ plumbing

    def _check_keep(self, epoch: int, keep: int) -> None:
        _check_epoch(epoch)
        _check_epoch(keep, "keep")
        if keep and keep >= epoch:
            raise err.InvalidArgument(f"keep {keep} is not older than epoch {epoch}")

    def _version(self, ino: int, index: int, epoch: int) -> Preserved | None:
        if not self._nversions:
            return None
        v = self._kv.get(_vkey(ino, index, epoch))
        return None if v is None else _punpack(epoch, v)

    def _versions(self, ino: int, index: int) -> list[Preserved]:
        if not self._nversions:
            return []
        out = []
        prefix = _vprefix(ino, index)
        for k, v in self._kv.scan(prefix, prefix_end(prefix)):
            out.append(_punpack(_vid(k)[2], v))
        return out

    def _at(self, ino: int, index: int, at: int | None):
        """(meta, path) of the version read at snapshot ``at`` (None: the current
        one), or (None, None) when there is none. Caller holds the chunk lock."""
        m = self._get(ino, index)
        if at is None or (m is not None and m.epoch <= at):
            return m, self._file(ino, index)
        if self._nversions and 0 <= at <= _U32MAX:
            # the newest version written at or before ``at`` (keys are newest first)
            prefix = _vprefix(ino, index)
            for k, v in self._kv.scan(_vkey(ino, index, at), prefix_end(prefix), 1):
                p = _punpack(_vid(k)[2], v)
                if at < p.until:
                    return p, self._vfile(ino, index, p.epoch)
        return None, None

    def _copy_out(self, src: str, dst: str, length: int) -> None:
        """``length`` bytes of ``src`` into a new file renamed to ``dst`` (fewer if ``src`` is short)."""
        try:
            fin = os.open(src, os.O_RDONLY)
        except FileNotFoundError:
            fin = None

        def copy(fout: int) -> None:
            done = 0
            while fin is not None and done < length:
                n = os.copy_file_range(fin, fout, length - done, done, done)
                if n == 0:
                    break  # the file is short: the copy's blocks will read as bad, as the original's
                done += n

        try:
            self._replace(dst, copy)
        finally:
            if fin is not None:
                os.close(fin)

    def _added(self, p: Preserved) -> None:
        with self._stats_lock:
            self._nversions += 1
            self.counters["preserved"] += 1
            self.counters["preserved_bytes"] += p.length

    def _changed(self) -> None:
        with self._stats_lock:
            self.counters["version_changes"] += 1

    def _preserve(self, ino: int, index: int, old: ChunkMeta, until: int) -> None:
        """Copy the current version out as ``Preserved(old.epoch, until)`` before it
        changes (caller holds the chunk lock). A version preserved already (by a
        mutation that failed after it, or crashed) is not copied again; its
        ``until`` becomes this mutation's epoch, the one that really ends it."""
        p = Preserved(old.epoch, until, old.version, old.length, old.crcs)
        have = self._version(ino, index, old.epoch)
        if have is not None and have[2:] == p[2:]:
            if have.until != until:
                self._put_version(ino, index, p)
            return
        if old.length and self._free() < old.length:
            raise self._nospace(f"no room to keep {old.length} bytes for a snapshot")
        self._copy_out(self._file(ino, index), self._vfile(ino, index, old.epoch), old.length)
        self._put_version(ino, index, p)
        if have is None:
            self._added(p)

    def _put_version(self, ino: int, index: int, p: Preserved) -> None:
        b = WriteBatch()
        b.put(_vkey(ino, index, p.epoch), _ppack(p))
        self._kv.write(b, sync=self.sync)
        self._changed()

    def _keeps(self, old: ChunkMeta | None, keep: int) -> bool:
        return old is not None and keep > 0 and old.epoch <= keep

    # ------------------------------------------------------------ the API

    def versions(self, ino: int, index: int) -> list[Preserved]:
        """The chunk's preserved versions, newest first."""
        _check_id(ino, index)
        return self._versions(ino, index)

    def version_at(self, ino: int, index: int, at: int) -> ChunkMeta | Preserved | None:
        """The version snapshot ``at`` reads: the current one, a preserved one, or None."""
        _check_id(ino, index)
        with self._lock(ino, index):
            return self._at(ino, index, at)[0]

    def has_versions(self) -> bool:
        """Whether the target holds any preserved version."""
        return self._nversions > 0

    def preserved_count(self) -> int:
        """How many preserved versions the target holds."""
        return self._nversions

    def list_versions(self, ino: int | None = None, *, start: tuple[int, int, int] | None = None) \
            -> Iterator[tuple[int, int, Preserved]]:
        """``(ino, index, preserved)`` of every preserved version (or of ``ino``'s),
        in chunk id order and newest first per chunk, from ``start`` = (ino,
        index, epoch) on if given."""
        if not self._nversions:
            return
        prefix = _VERSION_PREFIX if ino is None else _vprefix(ino)
        lo = prefix if start is None else max(prefix, _vkey(*start))
        for k, v in self._kv.scan(lo, prefix_end(prefix)):
            i, x, t = _vid(k)
            yield i, x, _punpack(t, v)

    def read_version(self, ino: int, index: int, epoch: int) -> tuple[Preserved, bytes] | None:
        """The preserved version of ``epoch`` and its bytes (verified), or None."""
        _check_id(ino, index)
        with self._lock(ino, index):
            p = self._version(ino, index, epoch)
            if p is None:
                return None
            if p.length == 0:
                return p, b""
            fd = self._open_path(self._vfile(ino, index, epoch))
            try:
                return p, self._verified(fd, ino, index, p, 0, (p.length - 1) // self.block_size)
            finally:
                if fd is not None:
                    os.close(fd)

    def install_version(self, ino: int, index: int, epoch: int, until: int, data, version: int) -> Preserved:
        """Set the preserved version of ``epoch`` (valid until ``until``) to
        ``data``, created or replaced whole: resync, repair, a predecessor's copy."""
        _check_id(ino, index)
        _check_epoch(epoch)
        _check_epoch(until, "until")
        if until <= epoch or not 0 < version <= _U64:
            raise err.InvalidArgument(f"bad preserved version {version} of epochs [{epoch}, {until})")
        mv = memoryview(data).cast("B")
        if len(mv) > 0xFFFFFFFF:
            raise err.InvalidArgument(f"bad install of {len(mv)} bytes")
        p = Preserved(epoch, until, version, len(mv), block_crcs(mv, self.block_size))
        with self._lock(ino, index):
            have = self._version(ino, index, epoch)
            self._install_file(self._vfile(ino, index, epoch), mv)
            self._put_version(ino, index, p)
            if have is None:
                self._added(p)
            return p

    def remove_version(self, ino: int, index: int, epoch: int) -> bool:
        """Remove the preserved version of ``epoch``; whether there was one."""
        _check_id(ino, index)
        with self._lock(ino, index):
            return self._remove_version_locked(ino, index, epoch) is not None

    def _remove_version_locked(self, ino: int, index: int, epoch: int) -> Preserved | None:
        p = self._version(ino, index, epoch)
        if p is None:
            return None
        b = WriteBatch()
        b.delete(_vkey(ino, index, epoch))
        self._kv.write(b, sync=self.sync)  # record first: a crash leaks a file, removed at the next open
        try:
            os.unlink(self._vfile(ino, index, epoch))
        except FileNotFoundError:
            pass
        with self._stats_lock:
            self._nversions -= 1
            self.counters["version_changes"] += 1
        return p

    def drop(self, live, epoch: int) -> tuple[int, int, list[tuple[int, int]]]:
        """Remove every preserved version no snapshot of ``live`` reads and that
        ended at or before ``epoch`` (a version ending later was made by a chain
        head ahead of the caller's view: the snapshots it is for may not be in
        ``live`` yet). Returns (versions, bytes, chunks left with no version at
        all: neither current nor preserved)."""
        live = sorted(live)
        n = nbytes = 0
        emptied: list[tuple[int, int]] = []
        start = None
        while self._nversions:
            page = _take(self.list_versions(start=start), _PAGE)
            for ino, index, p in page:
                if p.until > epoch or _reads(live, p.epoch, p.until):
                    continue
                with self._lock(ino, index):
                    q = self._version(ino, index, p.epoch)
                    if q is None or q.until != p.until:
                        continue
                    self._remove_version_locked(ino, index, p.epoch)
                    n += 1
                    nbytes += p.length
                    if self._get(ino, index) is None and not self._versions(ino, index):
                        emptied.append((ino, index))
            if len(page) < _PAGE:
                break
            ino, index, p = page[-1]
            if p.epoch == 0:
                start = (ino, index + 1, _U32MAX) if index < _U32MAX else (ino + 1, 0, _U32MAX)
            else:
                start = (ino, index, p.epoch - 1)
        if n:
            self._count("dropped", n)
            self._count("dropped_bytes", nbytes)
        return n, nbytes, emptied

    def usage(self, live) -> dict[int, tuple[int, int]]:
        """Per snapshot of ``live``: (exclusive, shared) bytes of the preserved
        versions it reads: read by it alone (what deleting it frees here), or by
        it and another live snapshot. Current versions are the live tree's and
        count for none."""
        live = sorted(live)
        out = {s: [0, 0] for s in live}
        for _ino, _index, p in self.list_versions():
            i = bisect.bisect_left(live, p.epoch)
            j = bisect.bisect_left(live, p.until)
            readers = live[i:j]
            if len(readers) == 1:
                out[readers[0]][0] += p.length
            else:
                for s in readers:
                    out[s][1] += p.length
        return {s: (a, b) for s, (a, b) in out.items()}
