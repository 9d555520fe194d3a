"""READINLINE (read), WRITEINLINE, MIGRATE (logged): small files' bytes in the shard.

A FLAG_INLINE regular file keeps its bytes in its ``B`` record (Data-on-MDT):
the file is those bytes, then zeros up to its size. A writer flushes runs and
its size in one WRITEINLINE; once the bytes would pass INLINE_MAX it copies
them to the data servers and MIGRATE makes that copy the file's (refused,
ECANCELED, if the bytes changed since it was taken). See docs/design/data.md
"Small files inline".

May import dfs.common, dfs.meta.schema and dfs.meta.ops.base only.
"""

from __future__ import annotations

import errno as E
import stat

from dfs.common import errors as err
from dfs.common import messages as m
from dfs.common.limits import INLINE_MAX
from dfs.common.ops import inline_digest
from dfs.common.records import Caller
from dfs.meta import schema as S
from dfs.meta.ops.base import R_OK, W_OK, apply, check_access, read
from dfs.meta.schema import Inode

SIZE_MAX = 1 << 62


def inline_access(i: Inode, caller: Caller, mask: int) -> None:
    """Owner and root always (a writer's open checked, like EXTEND; a file created
    0444 stays writable through its creator's descriptor); others need the mode bits."""
    if caller.uid in (0, i.uid):
        return
    check_access(i, caller, mask)


def inline_inode(i: Inode) -> None:
    if i.is_dir():
        raise err.IsADirectory()
    if not stat.S_ISREG(i.mode):
        raise err.InvalidArgument("inline data of a non-regular file")
    if not i.flags & S.FLAG_INLINE:
        raise err.DfsError("not inline", code=E.ENOTSUP)


def cut_inline(ctx, ino: int, size: int) -> None:
    """A truncate of an inline file below its bytes' length drops the bytes past ``size``."""
    v = ctx.ov.get(S.inline_key(ino))
    if v is not None:
        data, hw = S.split_inline_value(v)
        if len(data) > size:
            ctx.ov.put(S.inline_key(ino), S.inline_value(data[:size], hw))


def clear_setid_on_write(ctx, i: Inode) -> None:
    """A write by a non-root caller clears set-user-id (and set-group-id if group-executable)."""
    if ctx.caller.uid != 0:
        i.mode &= ~stat.S_ISUID
        if i.mode & stat.S_IXGRP:
            i.mode &= ~stat.S_ISGID


@read(m.ReadInline)
def read_inline(ctx, req: m.ReadInline) -> m.InlineData:
    i = ctx.inode(req.ino)
    inline_inode(i)
    inline_access(i, ctx.caller, R_OK)
    v = ctx.ov.get(S.inline_key(req.ino))
    if v is None:
        return m.InlineData(b"", 0)
    data, hw = S.split_inline_value(v)
    return m.InlineData(data[:i.size], hw)


@apply(m.WriteInline)
def write_inline(ctx, req: m.WriteInline):
    """An inline file's writer flushes: its runs and its size in one command."""
    ino, size = req.ino, req.size
    i = ctx.inode(ino)
    ctx.check_lock(S.lock_key_inode(ino), S.LockMode.SHARED)
    inline_inode(i)
    inline_access(i, ctx.caller, W_OK)
    if size < 0 or size > SIZE_MAX:
        raise err.InvalidArgument("size")
    key = S.inline_key(ino)
    v = ctx.ov.get(key)
    data, hw = (b"", 0) if v is None else S.split_inline_value(v)
    if req.runs:
        buf = bytearray(data)
        for run in req.runs:
            off, b = run.offset, run.data
            if off < 0:
                raise err.InvalidArgument("inline run")
            end = off + len(b)
            if end > INLINE_MAX:
                raise err.DfsError(f"inline data ends at {end} > {INLINE_MAX}", code=E.EFBIG)
            if len(buf) < off:
                buf.extend(bytes(off - len(buf)))
            buf[off:end] = b
            size = max(size, end)
        # bytes past the size (a concurrent truncate) are not part of the file
        keep = max(size, i.size)
        ctx.ov.put(key, S.inline_value(bytes(buf[:keep]), hw))
    if size > i.size:
        i.size = size
    i.mtime = i.ctime = ctx.ts
    i.bump_data()
    clear_setid_on_write(ctx, i)
    ctx.put(i)
    return i


@apply(m.Migrate)
def migrate(ctx, req: m.Migrate):
    """The writer copied the inline bytes to the data servers: they are the file's now."""
    ino = req.ino
    i = ctx.inode(ino)
    ctx.check_lock(S.lock_key_inode(ino), S.LockMode.SHARED)
    if not stat.S_ISREG(i.mode):
        raise err.InvalidArgument("migrate of a non-regular file")
    inline_access(i, ctx.caller, W_OK)
    if not i.flags & S.FLAG_INLINE:
        return i  # another writer migrated it first
    key = S.inline_key(ino)
    v = ctx.ov.get(key)
    have = None
    if v is not None:
        data, hw = S.split_inline_value(v)
        have = inline_digest(data) if hw else None
    if have != req.expect:
        raise err.DfsError("inline data changed since it was copied", code=E.ECANCELED)
    if v is not None:
        ctx.ov.delete(key)
    i.flags &= ~S.FLAG_INLINE
    i.ctime = ctx.ts
    i.bump_data()
    ctx.put(i)
    return i
