"""UNLINK and RMDIR: remove an entry (a file's link, or an empty directory).

Coordinated by the parent's shard. The entry and the parent live there; the
inode may live on another shard (a hard link from another directory, or any
subdirectory), whose link count (``LinkCount``) or deletion (``RemoveDir``)
is its part of the plan. A file losing its last link is deleted at commit
unless it is open (``Ctx.reap_unlinked``).

May import dfs.common, dfs.meta.schema and dfs.meta.ops.base, .actions only.
"""

from __future__ import annotations

import stat

from dfs.common import errors as err
from dfs.common import messages as m
from dfs.common.ids import shard_of
from dfs.common.records import Caller
from dfs.meta.ops import actions as A
from dfs.meta.ops.base import W_OK, X_OK, check_name, coordinate


def _done(req, res) -> m.Done:
    return m.Done()


async def _remove(coord, rid: bytes, caller: Caller, parent: int, name: bytes, want_dir: bool) -> m.ActionResult:
    check_name(name)
    ino, mode, attr = await coord.lookup(parent, name)
    is_dir = stat.S_ISDIR(mode)
    if want_dir and not is_dir:
        raise err.NotADirectory()
    if not want_dir and is_dir:
        raise err.IsADirectory()
    ps = shard_of(parent)
    plan = coord.plan()
    plan[ps] += [A.DirUsable(parent, W_OK | X_OK), A.StickyOk(parent, attr.uid), A.DeleteEntry(parent, name, ino)]
    if is_dir:
        plan[ps].append(A.DirLinkCount(parent, -1))
        plan[shard_of(ino)].append(A.RemoveDir(ino))
    else:
        plan[shard_of(ino)].append(A.LinkCount(ino, -1, False))
    return await coord.execute(rid, caller, coord.clock(), plan)


@coordinate(m.Rmdir, _done)
async def rmdir(coord, rid: bytes, caller: Caller, req: m.Rmdir) -> m.ActionResult:
    return await _remove(coord, rid, caller, req.parent, req.name, True)


@coordinate(m.Unlink, _done)
async def unlink(coord, rid: bytes, caller: Caller, req: m.Unlink) -> m.ActionResult:
    return await _remove(coord, rid, caller, req.parent, req.name, False)
