"""A write overlay over a KV: reads see the overlay's own writes, nothing
reaches the base until it is turned into a write batch. State machines apply
a Raft entry in one overlay (written to the engine in one atomic batch with
the applied index) and each command under a savepoint (rolled back if the
command fails)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from sortedcontainers import SortedDict

from dfs.kv.base import WriteBatch


class Readable(Protocol):
    def get(self, key: bytes) -> bytes | None: ...
    def scan(self, start: bytes, end: bytes, limit: int | None = None) -> Iterator[tuple[bytes, bytes]]: ...


_END = object()


_ABSENT = object()


class Overlay:
    __slots__ = ("base", "w", "_undo")

    def __init__(self, base: Readable) -> None:
        self.base = base
        self.w: SortedDict = SortedDict()  # key -> value, or None for a delete
        self._undo: list | None = None

    # A savepoint lets one command write straight into the entry's overlay and
    # be undone if it fails, without a per-command overlay to merge.
    def savepoint(self) -> None:
        self._undo = []

    def release(self) -> None:
        self._undo = None

    def rollback(self) -> None:
        w = self.w
        for key, old in reversed(self._undo or ()):
            if old is _ABSENT:
                del w[key]
            else:
                w[key] = old
        self._undo = None

    def get(self, key: bytes) -> bytes | None:
        w = self.w
        if key in w:
            return w[key]
        return self.base.get(key)

    def put(self, key: bytes, value: bytes) -> None:
        if self._undo is not None:
            self._undo.append((key, self.w.get(key, _ABSENT)))
        self.w[key] = value

    def delete(self, key: bytes) -> None:
        if self._undo is not None:
            self._undo.append((key, self.w.get(key, _ABSENT)))
        self.w[key] = None

    def scan(self, start: bytes, end: bytes, limit: int | None = None) -> Iterator[tuple[bytes, bytes]]:
        mine = self.w.irange(start, end, inclusive=(True, False))
        base = self.base.scan(start, end)
        n = 0
        bk, bv = next(base, (_END, None))
        mk = next(mine, _END)
        while bk is not _END or mk is not _END:
            if limit is not None and n >= limit:
                return
            if mk is _END or (bk is not _END and bk < mk):
                k, v = bk, bv
                bk, bv = next(base, (_END, None))
            else:
                if bk is not _END and bk == mk:
                    bk, bv = next(base, (_END, None))
                k, v = mk, self.w[mk]
                mk = next(mine, _END)
            if v is not None:
                n += 1
                yield k, v

    def scan_prefix(self, prefix: bytes, limit: int | None = None) -> Iterator[tuple[bytes, bytes]]:
        from dfs.kv.base import prefix_end

        return self.scan(prefix, prefix_end(prefix), limit)

    def merge_into(self, parent: Overlay) -> None:
        parent.w.update(self.w)

    def to_batch(self) -> WriteBatch:
        b = WriteBatch()
        b.ops.extend(self.w.items())
        return b
