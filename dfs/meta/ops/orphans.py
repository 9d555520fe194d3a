"""ORPHANS (read) and ORPHANDONE (logged): deleted files whose chunks are still to free.

The command that deletes a regular file with chunks writes its orphan record
(``Ctx.delete_inode``); the leader's orphan task (``ShardService.orphan_sweep``)
lists them, frees the chunks and forgets each record with ORPHANDONE. Both
internal: shard servers only.

May import dfs.common, dfs.meta.schema and dfs.meta.ops.base only.
"""

from __future__ import annotations

from dfs.common import messages as m
from dfs.meta import schema as S
from dfs.meta.ops.base import apply, read


@read(m.Orphans)
def orphans(ctx, req: m.Orphans) -> m.OrphansReply:
    return m.OrphansReply([m.Orphan(ino, layout, size) for ino, layout, size in ctx.store.orphans(req.limit)])


@apply(m.OrphanDone)
def orphan_done(ctx, req: m.OrphanDone) -> m.Done:
    ctx.ov.delete(S.orphan_key(req.ino))
    return m.Done()
