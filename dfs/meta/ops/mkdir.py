"""MKDIR: a new directory, whose inode lives on its home shard (a hash of parent and name).

The client sends it to that home shard, which coordinates: the parent's entry
and link count may live on another shard, so it is a cross-shard operation
(one ONEPHASE when both are here). The new directory inherits its parent's
default layout and its inline and lazy policies, read with the parent's
attributes. A lazy client's MKDIR carries the new directory's id (``ino``,
delegated to its ``session`` by the home shard: dfs.meta.ops.delegate).

May import dfs.common, dfs.meta.schema and dfs.meta.ops.base, .actions only.
"""

from __future__ import annotations

import stat

from dfs.common import errors as err
from dfs.common import messages as m
from dfs.common.ids import dir_home_shard, shard_of
from dfs.common.records import Attr, Caller
from dfs.meta import schema as S
from dfs.meta.ops import actions as A
from dfs.meta.ops.base import W_OK, X_OK, check_name, coordinate


def _answer(req: m.Mkdir, res: m.ActionResult | None) -> Attr:
    return A.touched_attr(res, res.new_ino if res is not None else 0)


@coordinate(m.Mkdir, _answer)
async def mkdir(coord, rid: bytes, caller: Caller, req: m.Mkdir) -> m.ActionResult:
    parent, name = req.parent, req.name
    check_name(name)
    p = await coord.getattr(parent)
    if not stat.S_ISDIR(p.mode):
        raise err.NotADirectory()
    n = coord.shards.nshards
    home = dir_home_shard(parent, name, n)
    if home != coord.shard and not any(dir_home_shard(parent, name, k) == coord.shard for k in range(1, n)):
        # Shard counts only grow (dfs admin add-meta-shard), so a client that has not
        # seen the newest map yet places by a smaller count: its choice is accepted.
        raise err.WrongShard(f"mkdir of this name is coordinated by shard {home}")
    if req.ino and shard_of(req.ino) != coord.shard:
        raise err.WrongShard(f"mkdir of inode {req.ino:#x} is coordinated by its shard")
    home = coord.shard  # the new directory lives where the client sent it
    perm = req.mode & 0o7777 & ~req.umask
    gid = caller.gid
    if p.mode & stat.S_ISGID:
        gid = p.gid
        perm |= stat.S_ISGID
    ts = coord.clock()
    layout = p.layout  # a new directory inherits its parent's default layout
    flags = p.flags & S.INHERITED_FLAGS  # and its inline-files and lazy policies
    plan = coord.plan()
    plan[home].append(A.MakeDir(req.ino, perm, caller.uid, gid, parent, layout, flags, req.session))
    plan[shard_of(parent)] += [A.DirUsable(parent, W_OK | X_OK), A.PutEntry(parent, name, req.ino, stat.S_IFDIR, 0),
                               A.DirLinkCount(parent, 1)]

    def reply_of(new_ino: int) -> m.ActionResult:
        return m.ActionResult(new_ino, [Attr(new_ino, stat.S_IFDIR | perm, 2, caller.uid, gid, 0, 0, ts, ts, ts,
                                             layout, flags)])

    return await coord.execute(rid, caller, ts, plan, reply_of)
