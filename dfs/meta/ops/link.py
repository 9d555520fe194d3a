"""LINK: a hard link ``parent/name`` to an existing file.

Coordinated by the new parent's shard (the entry lives there); the file's
link count is on the inode's shard. Directories cannot be linked, nor files
that have no name left (as Linux linkat).

May import dfs.common, dfs.meta.schema and dfs.meta.ops.base, .actions only.
"""

from __future__ import annotations

import dataclasses
import stat

from dfs.common import errors as err
from dfs.common import messages as m
from dfs.common.ids import shard_of
from dfs.common.records import Attr, Caller
from dfs.meta.ops import actions as A
from dfs.meta.ops.base import W_OK, X_OK, check_name, coordinate


def _answer(req: m.Link, res: m.ActionResult | None) -> Attr:
    return A.touched_attr(res, (res.new_ino if res is not None else 0) or req.ino)


@coordinate(m.Link, _answer)
async def link(coord, rid: bytes, caller: Caller, req: m.Link) -> m.ActionResult:
    ino, parent, name = req.ino, req.parent, req.name
    check_name(name)
    attr = await coord.getattr(ino)
    if stat.S_ISDIR(attr.mode):
        raise err.NotPermitted("hard link to a directory")
    ts = coord.clock()
    plan = coord.plan()
    plan[shard_of(parent)] += [A.DirUsable(parent, W_OK | X_OK), A.PutEntry(parent, name, ino, attr.mode, 0)]
    plan[shard_of(ino)].append(A.LinkCount(ino, 1, True))

    def reply_of(new_ino: int) -> m.ActionResult:
        return m.ActionResult(0, [dataclasses.replace(attr, nlink=attr.nlink + 1, ctime_ns=ts)])

    return await coord.execute(rid, caller, ts, plan, reply_of)
