"""The metadata side of a FileHandle in lazy mode (``LazySizes``): a file's published size,
inline bytes and truncations queued in the lazy mode's ordered log behind the changes they
depend on (dfs/client/lazy.py builds it through ``LazyMode.file_io``).

Imports: dfs.common only (the mode is passed in).
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from dfs.common import errors as err
from dfs.common import messages as m
from dfs.common.ops import SET_SIZE
from dfs.common.records import FLAG_INLINE, Attr

__all__ = ["LazySizes"]


class LazySizes:
    """The metadata side of a FileHandle in lazy mode (a ``SizeSink``): a file's published
    size and bytes, and its truncations, are queued behind the changes they depend on (its
    create), in the same ordered log; reads of an inline file made here come from the view."""

    def __init__(self, mode: Any, meta) -> None:
        self.mode = mode
        self.meta = meta

    def _refused(self, ino: int, change) -> Attr | None:
        """``ino``'s view after ``change(attr)`` if its create was refused: the change goes
        nowhere (the file is not on the service; its close and the next barrier say why)."""
        a = self.mode._refused.get(ino)
        if a is None:
            return None
        self.mode._inline.pop(ino, None)
        a = self.mode._refused[ino] = change(a)
        return a

    async def extend(self, ino: int, size: int) -> Attr:
        mode = self.mode
        if (a := self._refused(ino, lambda a: replace(a, size=max(a.size, size)))) is not None:
            return a
        if not mode._lazy_file(ino):
            return await self.meta.extend(ino, size)
        await mode._engine().admit()
        a = await mode._inode_attr(ino)
        now = time.time_ns()
        new = replace(a, size=max(a.size, size), mtime_ns=now, ctime_ns=now)
        return await mode._size_change(ino, m.Extend(ino, size), new)

    async def setattr(self, ino: int, *, size: int | None = None) -> Attr:
        mode = self.mode
        if size is not None and (a := self._refused(ino, lambda a: replace(a, size=size))) is not None:
            return a
        if not mode._lazy_file(ino) or size is None:
            return await self.meta.setattr(ino, size=size)
        await mode._engine().admit()
        a = await mode._inode_attr(ino)
        if a.is_dir():
            raise err.IsADirectory()
        now = time.time_ns()
        new = replace(a, size=size, mtime_ns=now, ctime_ns=now)
        c = mode._inline.get(ino)
        if c is not None and len(c) > size:
            del c[size:]
        return await mode._size_change(ino, m.Setattr(ino, SET_SIZE, 0, 0, 0, size, 0, 0), new)

    async def read_inline(self, ino: int) -> tuple[bytes, int]:
        mode = self.mode
        c = mode._inline.get(ino)
        if c is not None:
            return bytes(c), len(c)
        if mode.engine is not None:
            await mode.engine.settle([("i", ino)])
        return await self.meta.read_inline(ino)

    async def write_inline(self, ino: int, runs: list[tuple[int, bytes]], size: int) -> Attr:
        mode = self.mode
        if (a := self._refused(ino, lambda a: replace(a, size=max(a.size, size)))) is not None:
            return a
        if not mode._lazy_file(ino):
            return await self.meta.write_inline(ino, runs, size)
        nbytes = sum(len(b) for _, b in runs)
        await mode._engine().admit(nbytes)
        a = await mode._inode_attr(ino)
        c = mode._inline.get(ino)
        if c is not None:
            for off, b in runs:
                if len(c) < off:
                    c.extend(bytes(off - len(c)))
                c[off:off + len(b)] = b
        now = time.time_ns()
        new = replace(a, size=max(a.size, size), mtime_ns=now, ctime_ns=now)
        req = m.WriteInline(ino, [m.InlineRun(off, bytes(b)) for off, b in runs], size)
        return await mode._size_change(ino, req, new, nbytes)

    async def migrate_inline(self, ino: int, expect: bytes | None) -> Attr:
        mode = self.mode
        if (a := self._refused(ino, lambda a: replace(a, flags=a.flags & ~FLAG_INLINE))) is not None:
            return a
        if not mode._lazy_file(ino):
            return await self.meta.migrate_inline(ino, expect)
        await mode._engine().admit()
        a = await mode._inode_attr(ino)
        mode._inline.pop(ino, None)
        new = replace(a, flags=a.flags & ~FLAG_INLINE)
        return await mode._size_change(ino, m.Migrate(ino, expect), new)
