"""SETLAZY: a directory's lazy policy (FLAG_LAZY).

Clients in the per-directory lazy mode (docs/design/client.md, "Lazy mode")
change the tree under a directory with this flag lazily and everything else
strictly; new subdirectories inherit it, like a layout (MKDIR copies the
parent's inherited flags), existing ones keep theirs. Owner or root;
directories only. Only the flag changes (and ctime): what is already in the
tree is not touched.

May import dfs.common, dfs.meta.schema and dfs.meta.ops.base only.
"""

from __future__ import annotations

from dfs.common import errors as err
from dfs.common import messages as m
from dfs.meta import schema as S
from dfs.meta.ops.base import apply


@apply(m.SetLazy)
def setlazy(ctx, req: m.SetLazy):
    i = ctx.inode(req.ino)
    ctx.check_lock(S.lock_key_inode(req.ino), S.LockMode.SHARED)
    if not i.is_dir():
        raise err.NotADirectory("the lazy policy is set on directories")
    if ctx.caller.uid not in (0, i.uid):
        raise err.NotPermitted("setlazy: owner or root only")
    i.flags = (i.flags | S.FLAG_LAZY) if req.lazy else (i.flags & ~S.FLAG_LAZY)
    i.ctime = ctx.ts
    ctx.put(i)
    return i
