"""SETXATTR, REMOVEXATTR (logged) and GETXATTR, LISTXATTR (reads): extended attributes.

Namespaces as Linux: ``user.`` on regular files and directories with the
file's permission bits (and the sticky rule for directories), ``trusted.``
for root only (invisible to others), ``security.`` written by root; any other
namespace is EOPNOTSUPP.

May import dfs.common, dfs.meta.schema and dfs.meta.ops.base only.
"""

from __future__ import annotations

import errno as E
import stat

from dfs.common import errors as err
from dfs.common import messages as m
from dfs.common.limits import XATTR_NAME_MAX, XATTR_SIZE_MAX
from dfs.common.ops import XATTR_CREATE, XATTR_REPLACE
from dfs.meta import schema as S
from dfs.meta.ops.base import R_OK, W_OK, apply, check_access, read
from dfs.meta.schema import Inode


def check_xattr(ctx, i: Inode, name: bytes, write: bool) -> None:
    if not name or len(name) > XATTR_NAME_MAX or b"\0" in name:
        raise err.DfsError("xattr name", code=E.ERANGE if name else E.EINVAL)
    ns = name.split(b".", 1)[0]
    if b"." not in name:
        raise err.DfsError("xattr namespace", code=E.EOPNOTSUPP)
    if ns == b"user":
        if not (stat.S_ISREG(i.mode) or stat.S_ISDIR(i.mode)):
            raise err.NotPermitted("user xattrs only on files and directories") if write else err.NoData()
        if write and i.is_dir() and i.mode & stat.S_ISVTX and ctx.caller.uid not in (0, i.uid):
            raise err.NotPermitted()
        check_access(i, ctx.caller, W_OK if write else R_OK)
    elif ns == b"trusted":
        if ctx.caller.uid != 0:
            raise err.NotPermitted() if write else err.NoData()
    elif ns == b"security":
        if write and ctx.caller.uid != 0:
            raise err.NotPermitted()
    else:
        raise err.DfsError("xattr namespace", code=E.EOPNOTSUPP)


@apply(m.Setxattr)
def setxattr(ctx, req: m.Setxattr) -> m.Done:
    i = ctx.inode(req.ino)
    ctx.check_lock(S.lock_key_inode(req.ino), S.LockMode.SHARED)
    check_xattr(ctx, i, req.name, True)
    if len(req.value) > XATTR_SIZE_MAX:
        raise err.DfsError("xattr value", code=E.E2BIG)
    flags = req.flags
    if flags & ~(XATTR_CREATE | XATTR_REPLACE) or flags == XATTR_CREATE | XATTR_REPLACE:
        raise err.InvalidArgument("xattr flags")
    k = S.xattr_key(req.ino, req.name)
    exists = ctx.ov.get(k) is not None
    if flags & XATTR_CREATE and exists:
        raise err.Exists()
    if flags & XATTR_REPLACE and not exists:
        raise err.NoData()
    ctx.ov.put(k, req.value)
    i.ctime = ctx.ts
    i.flags |= S.FLAG_XATTRS
    ctx.put(i)
    return m.Done()


@apply(m.Removexattr)
def removexattr(ctx, req: m.Removexattr) -> m.Done:
    i = ctx.inode(req.ino)
    ctx.check_lock(S.lock_key_inode(req.ino), S.LockMode.SHARED)
    check_xattr(ctx, i, req.name, True)
    k = S.xattr_key(req.ino, req.name)
    if ctx.ov.get(k) is None:
        raise err.NoData()
    ctx.ov.delete(k)
    i.ctime = ctx.ts
    ctx.put(i)
    return m.Done()


@read(m.Getxattr)
def getxattr(ctx, req: m.Getxattr) -> m.XattrValue:
    i = ctx.inode(req.ino)
    check_xattr(ctx, i, req.name, False)
    v = ctx.ov.get(S.xattr_key(req.ino, req.name))
    if v is None:
        raise err.NoData()
    return m.XattrValue(v)


@read(m.Listxattr)
def listxattr(ctx, req: m.Listxattr) -> m.XattrNames:
    ctx.inode(req.ino)
    names = [S.xattr_name(k) for k, _ in ctx.ov.scan_prefix(S.xattr_prefix(req.ino))]
    if ctx.caller.uid != 0:
        names = [n for n in names if not n.startswith(b"trusted.")]
    return m.XattrNames(names)
