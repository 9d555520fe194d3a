"""RENAME (renameat2: NOREPLACE, EXCHANGE), and the reads its ordering needs:
DIRPARENT and RENAMEEPOCH (internal).

Coordinated by the source parent's shard. A directory that moves to another
parent must not land under itself; two such renames could each pass a check
and together build a cycle, so they are ordered through shard 0: the plan
reads the rename epoch there, walks the new parent's ancestry (DIRPARENT,
which waits while a directory is being re-parented) and adds a
``RenameLock(epoch, walked, moved)`` action on shard 0, taken only if no
directory rename that completed since the read re-parented a directory on the
walked path (shard 0 remembers what each recent one moved). Renames that keep
the parent take no such lock.

May import dfs.common, dfs.meta.schema and dfs.meta.ops.base, .actions only.
"""

from __future__ import annotations

import stat

from dfs.common import errors as err
from dfs.common import messages as m
from dfs.common.ids import ROOT_INO, shard_of
from dfs.common.ops import RENAME_EXCHANGE, RENAME_NOREPLACE
from dfs.common.records import Caller
from dfs.meta import schema as S
from dfs.meta.ops import actions as A
from dfs.meta.ops.base import W_OK, X_OK, check_access_wire, check_name, coordinate, read

ANCESTRY_MAX = 100000  # hops of an ancestry walk before it is called a loop


def _done(req, res) -> m.Done:
    return m.Done()


@coordinate(m.Rename, _done)
async def rename(coord, rid: bytes, caller: Caller, req: m.Rename) -> m.ActionResult | None:
    sp, sname, dp, dname, flags = req.sparent, req.sname, req.dparent, req.dname, req.flags
    check_name(sname)
    check_name(dname)
    if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE) or flags == RENAME_NOREPLACE | RENAME_EXCHANGE:
        raise err.InvalidArgument("rename flags")
    exchange = bool(flags & RENAME_EXCHANGE)
    sino, smode, sattr = await coord.lookup(sp, sname)
    dst = await coord.maybe_lookup(dp, dname)
    dattr = await coord.getattr(dp)
    if not stat.S_ISDIR(dattr.mode):
        raise err.NotADirectory()
    if dst is not None and dst[0] == sino:
        # The same inode under both names: POSIX says do nothing. The two lookups were
        # made one after the other: that both names map to it at one moment is checked
        # where they live, under locks (a rename between the lookups moving the source to
        # the target, e.g., must not make this one succeed as well).
        plan = coord.plan()
        plan[shard_of(sp)] += [A.DirUsable(sp, W_OK | X_OK), A.EntryIs(sp, sname, sino)]
        plan[shard_of(dp)] += [A.DirUsable(dp, W_OK | X_OK), A.EntryIs(dp, dname, sino)]
        return await coord.execute(rid, caller, coord.clock(), plan)
    if flags & RENAME_NOREPLACE and dst is not None:
        raise err.Exists()
    if exchange and dst is None:
        raise err.NotFound()
    sdir = stat.S_ISDIR(smode)
    ddir = dst is not None and stat.S_ISDIR(dst[1])
    if dst is not None and not exchange:
        if sdir and not ddir:
            raise err.NotADirectory()
        if not sdir and ddir:
            raise err.IsADirectory()
    plan = coord.plan()
    ss, ds = shard_of(sp), shard_of(dp)
    plan[ss] += [A.DirUsable(sp, W_OK | X_OK), A.StickyOk(sp, sattr.uid)]
    plan[ds] += [A.DirUsable(dp, W_OK | X_OK)]
    if dst is not None:
        plan[ds].append(A.StickyOk(dp, dst[2].uid))
    moved_dirs = []  # directories whose parent changes
    if sp != dp:
        if sdir:
            moved_dirs.append((sino, sattr, dp))
        if exchange and ddir:
            moved_dirs.append((dst[0], dst[2], sp))
    for _, a, _ in moved_dirs:  # its '..' entry changes: needs write permission on it
        check_access_wire(a, caller, W_OK)
    if not exchange:
        plan[ss].append(A.DeleteEntry(sp, sname, sino))
        plan[ds].append(A.PutEntry(dp, dname, sino, smode, dst[0] if dst else 0,
                                   dst is None and not flags & RENAME_NOREPLACE))
        if dst is not None:
            if ddir:
                plan[shard_of(dst[0])].append(A.RemoveDir(dst[0]))
                plan[ds].append(A.DirLinkCount(dp, -1))
            else:
                plan[shard_of(dst[0])].append(A.LinkCount(dst[0], -1, False))
        if sdir and sp != dp:
            plan[ss].append(A.DirLinkCount(sp, -1))
            plan[ds].append(A.DirLinkCount(dp, 1))
    else:
        plan[ss].append(A.PutEntry(sp, sname, dst[0], dst[1], sino))
        plan[ds].append(A.PutEntry(dp, dname, sino, smode, dst[0]))
        if sp != dp and sdir != ddir:
            plan[ss].append(A.DirLinkCount(sp, 1 if ddir else -1))
            plan[ds].append(A.DirLinkCount(dp, 1 if sdir else -1))
    reparented = {ino for ino, _, _ in moved_dirs}
    for ino, _, newp in moved_dirs:
        plan[shard_of(ino)].append(A.Reparent(ino, newp))
    for ino in {sino} | ({dst[0]} if exchange else set()):
        if ino not in reparented:
            plan[shard_of(ino)].append(A.Touch(ino))
    if moved_dirs:
        # The ordering point: the rename epoch read before the ancestry walk
        # must still hold when the lock is taken (see docs/design/metadata.md).
        epoch = (await coord.call(0, m.RenameEpoch())).epoch
        walked: set[int] = set()
        for ino, _, newp in moved_dirs:
            walked |= await _check_not_ancestor(coord, ino, newp)
        plan[0].append(A.RenameLock(epoch, sorted(walked), sorted(reparented)))
    return await coord.execute(rid, caller, coord.clock(), plan)


async def _check_not_ancestor(coord, ino: int, start: int) -> set[int]:
    """EINVAL if directory ``ino`` is ``start`` or one of its ancestors; else the path from
    ``start`` up to the root (what a rename must not move before this one is ordered)."""
    p = start
    path = set()
    while True:
        if p == ino:
            raise err.InvalidArgument("a directory cannot move into its own subtree")
        path.add(p)
        if p == ROOT_INO:
            return path
        p = (await coord.call(shard_of(p), m.DirParent(p))).parent
        if len(path) > ANCESTRY_MAX:
            raise err.DfsError("ancestry loop")


@read(m.DirParent)
def dir_parent(ctx, req: m.DirParent) -> m.DirParentReply:
    ctx.check_lock(S.lock_key_inode(req.ino), S.LockMode.SHARED)
    return m.DirParentReply(ctx.dir(req.ino).parent)


@read(m.RenameEpoch)
def rename_epoch(ctx, req: m.RenameEpoch) -> m.RenameEpochReply:
    return m.RenameEpochReply(ctx.rename_epoch())
