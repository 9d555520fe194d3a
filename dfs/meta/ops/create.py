"""CREATE: regular files, symlinks and device/fifo/socket nodes, and create-open.

A single-shard op: the entry and the new inode live on the parent's shard.
With a ``handle`` (regular files) the file is also opened in the same
command, so create-and-open is one Raft round; an existing regular file
(``excl`` false) is opened after an ``access`` check, an existing entry of
another type is answered, not opened. The reply carries the parent's
attributes after the command: a FUSE client answers the kernel's next
GETATTR of the directory (the kernel drops them on every create) without a
round trip. Directories are MKDIR's (dfs.meta.ops.mkdir).

A lazy client's CREATE carries the new inode's id (``ino``, delegated to its
``session``: dfs.meta.ops.delegate) and a regular file's ``layout`` (its
directory's, as the client saw it when it placed the file's data).

May import dfs.common, dfs.meta.schema and dfs.meta.ops.base, .handles, .delegate only.
"""

from __future__ import annotations

import stat

from dfs.common import errors as err
from dfs.common import messages as m
from dfs.common.ids import shard_of
from dfs.common.layout import DEFAULT_LAYOUT, Layout
from dfs.common.limits import SYMLINK_MAX
from dfs.meta import schema as S
from dfs.meta.ops.base import R_OK, W_OK, X_OK, apply, check_access, check_handle, check_name, \
    check_open_access, lease_ns
from dfs.meta.ops.delegate import check_delegated, use_delegated
from dfs.meta.ops.handles import set_handle, write_opened
from dfs.meta.schema import Inode

_TYPES = (stat.S_IFREG, stat.S_IFLNK, stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR, stat.S_IFBLK)


@apply(m.Create)
def create(ctx, req: m.Create) -> m.CreateReply:
    lease = 0
    if req.handle is not None:
        check_handle(req.handle)
        lease = lease_ns(req.lease_s)
    attr, created, ino = _create_entry(ctx, req)
    opened = req.handle is not None and attr is not None and stat.S_ISREG(attr.mode)
    if opened:
        if not created and req.access:
            check_open_access(req.access, R_OK | W_OK)
            check_access(attr, ctx.caller, req.access)
        ctx.check_lock(S.lock_key_inode(ino), S.LockMode.SHARED)
        # the creator may write what it created, whatever its mode (open(2) with O_CREAT)
        set_handle(ctx, ino, req.handle, ctx.ts + lease, R_OK | W_OK if created else req.access)
        if not created and req.access & W_OK:
            attr = write_opened(ctx, attr)
    return m.CreateReply(attr, created, ino, opened, ctx.dir(req.parent))


def _create_entry(ctx, req: m.Create):
    """(attr or None, created, ino): the new inode, or the existing one (None: on another shard)."""
    parent, name = req.parent, req.name
    check_name(name)
    fmt = stat.S_IFMT(req.mode) or stat.S_IFREG
    if fmt == stat.S_IFDIR:
        raise err.InvalidArgument("use MKDIR for directories")
    if fmt not in _TYPES:
        raise err.InvalidArgument("bad file type")
    p = ctx.dir(parent)
    ctx.check_lock(S.lock_key_dentry(parent, name), S.LockMode.EXCLUSIVE)
    ctx.check_lock(S.lock_key_inode(parent), S.LockMode.SHARED)
    existing = ctx.dentry(parent, name)
    if existing is not None:
        if req.excl or fmt != stat.S_IFREG:
            raise err.Exists()
        ino, _ = existing
        if shard_of(ino) != ctx.shard:
            return None, False, ino  # the caller fetches the remote inode
        return ctx.inode(ino), False, ino
    check_access(p, ctx.caller, W_OK | X_OK)
    if fmt in (stat.S_IFCHR, stat.S_IFBLK) and ctx.caller.uid != 0:
        raise err.NotPermitted("mknod of a device needs root")
    perm = 0o777 if fmt == stat.S_IFLNK else (req.mode & 0o7777 & ~req.umask)
    target = req.target
    if fmt == stat.S_IFLNK:
        if not target or len(target) > SYMLINK_MAX or b"\0" in target:
            raise err.NameTooLong() if target and len(target) > SYMLINK_MAX else err.InvalidArgument()
    gid = ctx.caller.gid
    if p.mode & stat.S_ISGID:
        gid = p.gid
    if perm & stat.S_ISGID and ctx.caller.uid != 0 and not ctx.caller.in_group(gid):
        perm &= ~stat.S_ISGID
    if req.ino:
        check_delegated(ctx, req.session, req.ino)
        use_delegated(ctx, req.session, req.ino)
        ino = req.ino
    else:
        ino = ctx.alloc_ino()
    size = len(target) if fmt == stat.S_IFLNK else 0
    # a regular file's layout is fixed here: the parent's default, made explicit (or the
    # layout a lazy client already placed the file's data by)
    layout = (req.layout or p.layout or DEFAULT_LAYOUT.pack()) if fmt == stat.S_IFREG else 0
    if req.layout:
        Layout.unpack(req.layout)  # EINVAL if malformed
    # A new regular file keeps its bytes inline until they reach past INLINE_MAX when
    # its directory says so (FLAG_INLINE on a directory: the policy), or the caller asks.
    inline = req.inline
    if inline is None:
        inline = bool(p.flags & S.FLAG_INLINE)
    flags = S.FLAG_INLINE if fmt == stat.S_IFREG and inline else 0
    rdev = req.rdev if fmt in (stat.S_IFCHR, stat.S_IFBLK) else 0
    # a regular file created open (for its creator, who may write it) starts at data version 1
    dver = 1 if fmt == stat.S_IFREG and req.handle is not None else 0
    i = Inode(ino, fmt | perm, 1, ctx.caller.uid, gid, rdev, size, ctx.ts, ctx.ts, ctx.ts, flags=flags, layout=layout,
              dver=dver)
    ctx.put(i)
    if fmt == stat.S_IFLNK:
        ctx.ov.put(S.symlink_key(ino), target)
    ctx.put_dentry(parent, name, ino, i.mode)
    ctx.touch_dir(p)
    ctx.count_inodes(1)
    return i, True, ino
