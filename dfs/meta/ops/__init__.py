"""The shard side of every metadata op: one module per op or small family.

    lookup     LOOKUP GETATTR GETATTRS READDIR READLINK STATFS     reads
    xattr      SETXATTR REMOVEXATTR GETXATTR LISTXATTR
    create     CREATE (files, symlinks, nodes; create-open)
    setattr    SETATTR EXTEND
    layout     SETLAYOUT
    inline     READINLINE WRITEINLINE MIGRATE                     small files in the shard
    handles    OPEN RENEW CLOSE EXPIREHANDLES                     open handles (logged)
    openread   OPENREAD RENEWREAD CLOSEREAD LOOKUPOPEN READMARK   read handles (leader memory)
    orphans    ORPHANS ORPHANDONE
    mkdir      MKDIR                                              coordinated (may span shards)
    remove     UNLINK RMDIR                                       coordinated
    rename     RENAME DIRPARENT RENAMEEPOCH                       coordinated
    link       LINK                                               coordinated
    twophase   ONEPHASE PREPARE COMMIT ABORT FORGET OPSTATUS REQSTATUS
    actions    the typed actions of cross-shard plans (no op of its own)

Each registers its handlers in ``HANDLERS`` (``dfs.meta.ops.base``) against
the request classes of ``dfs.common.messages``; importing this package loads
them all and checks that every request class has exactly one handler. To add
an op: a code in ``dfs.common.ops.Op``, its request and reply records in
``dfs.common.messages``, a module here (or a function in its family's), an
import below, then ``python scripts/gen_protocol.py``.

May import dfs.common, dfs.meta.schema and dfs.meta.readhandles.
"""

from __future__ import annotations

from dfs.common.messages import REQUESTS
from dfs.meta.ops import (  # noqa: F401 - each registers its handlers
    create,
    handles,
    inline,
    layout,
    link,
    lookup,
    mkdir,
    openread,
    orphans,
    remove,
    rename,
    setattr,
    twophase,
    xattr,
)
from dfs.meta.ops.base import HANDLERS, Handler, handler

__all__ = ["HANDLERS", "Handler", "handler"]

_missing = set(REQUESTS) - set(HANDLERS)
if _missing:  # every request class is served by exactly one module (registering twice raises)
    raise ImportError(f"ops without a handler: {sorted(op.name for op in _missing)}")
