"""SETATTR (chmod, chown, truncate, utimes) and EXTEND (a writer publishes its size).

Both logged single-shard mutations of one inode. EXTEND never shrinks a file
(two writers each publish what they wrote; truncation is SETATTR's);
SETATTR's ``grow`` runs an EXTEND first in the same command (a writer that
sets its open file's times publishes its size with them: tar, cp -a).

May import dfs.common, dfs.meta.schema and dfs.meta.ops.base, .inline only.
"""

from __future__ import annotations

import stat

from dfs.common import errors as err
from dfs.common import messages as m
from dfs.common.ops import (
    SET_ATIME,
    SET_ATIME_NOW,
    SET_CTIME,
    SET_GID,
    SET_MODE,
    SET_MTIME,
    SET_MTIME_NOW,
    SET_SIZE,
    SET_UID,
)
from dfs.meta import schema as S
from dfs.meta.ops.base import W_OK, apply, check_access
from dfs.meta.ops.inline import SIZE_MAX, clear_setid_on_write, cut_inline


def extend(ctx, ino: int, size: int):
    i = ctx.inode(ino)
    ctx.check_lock(S.lock_key_inode(ino), S.LockMode.SHARED)
    if not stat.S_ISREG(i.mode):
        raise err.InvalidArgument("extend of a non-regular file")
    if size < 0 or size > SIZE_MAX:
        raise err.InvalidArgument("size")
    if size > i.size:
        i.size = size
    i.mtime = i.ctime = ctx.ts
    i.bump_data()
    clear_setid_on_write(ctx, i)
    ctx.put(i)
    return i


@apply(m.Extend)
def extend_op(ctx, req: m.Extend):
    """Publish a writer's size on close/fsync: never shrinks."""
    return extend(ctx, req.ino, req.size)


@apply(m.Setattr)
def setattr_(ctx, req: m.Setattr):
    ino, valid = req.ino, req.valid
    if req.grow is not None:
        extend(ctx, ino, req.grow)
    i = ctx.inode(ino)
    ctx.check_lock(S.lock_key_inode(ino), S.LockMode.SHARED)
    c = ctx.caller
    root = c.uid == 0
    owner = root or c.uid == i.uid
    changed = False
    if valid & (SET_UID | SET_GID):
        new_uid = req.uid if valid & SET_UID else i.uid
        new_gid = req.gid if valid & SET_GID else i.gid
        if not root:
            if new_uid != i.uid or c.uid != i.uid:
                if new_uid != i.uid or not owner:
                    raise err.NotPermitted("chown")
            if new_gid != i.gid and not c.in_group(new_gid):
                raise err.NotPermitted("chgrp to a group the caller is not in")
        if new_uid != i.uid or new_gid != i.gid or not root:
            if not i.is_dir():
                # Linux: chown clears set-user-id, and set-group-id if group-executable
                if i.mode & stat.S_ISUID:
                    i.mode &= ~stat.S_ISUID
                if i.mode & stat.S_ISGID and i.mode & stat.S_IXGRP:
                    i.mode &= ~stat.S_ISGID
        i.uid, i.gid = new_uid, new_gid
        changed = True
    if valid & SET_MODE:
        if not owner:
            raise err.NotPermitted("chmod")
        new = req.mode & 0o7777
        if not root and new & stat.S_ISGID and not c.in_group(i.gid):
            new &= ~stat.S_ISGID
        i.mode = stat.S_IFMT(i.mode) | new
        changed = True
    if valid & SET_SIZE:
        size = req.size
        if i.is_dir():
            raise err.IsADirectory()
        if not stat.S_ISREG(i.mode):
            raise err.InvalidArgument("truncate of a special file")
        if size < 0 or size > SIZE_MAX:
            raise err.InvalidArgument("size")
        check_access(i, c, W_OK)
        if i.flags & S.FLAG_INLINE and size < i.size:
            cut_inline(ctx, ino, size)
        i.size = size
        i.mtime = ctx.ts
        i.bump_data()
        if not root:
            i.mode &= ~stat.S_ISUID
            if i.mode & stat.S_IXGRP:
                i.mode &= ~stat.S_ISGID
        changed = True
    if valid & (SET_ATIME | SET_MTIME | SET_ATIME_NOW | SET_MTIME_NOW):
        explicit = (valid & SET_ATIME and not valid & SET_ATIME_NOW) or (
            valid & SET_MTIME and not valid & SET_MTIME_NOW)
        if not owner:
            if explicit:
                raise err.NotPermitted("utimes")
            check_access(i, c, W_OK)
        if valid & SET_ATIME_NOW:
            i.atime = ctx.ts
        elif valid & SET_ATIME:
            i.atime = req.atime
        if valid & SET_MTIME_NOW:
            i.mtime = ctx.ts
        elif valid & SET_MTIME:
            i.mtime = req.mtime
        changed = True
    if changed or valid & SET_CTIME:
        i.ctime = ctx.ts
    ctx.put(i)
    return i
