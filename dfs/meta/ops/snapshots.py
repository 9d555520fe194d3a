"""Snapshots on a shard (docs/design/snapshots.md): the epoch steps of the cut, pruning, the
state the coordinator waits on, and the two client ops the coordinator runs.

SNAPFENCE, SNAPBEGIN, SNAPEND and SNAPPRUNE are logged: every replica moves its
epochs (``dfs.kv.versioned.Epochs``, kept at ``M epochs``) at the same point
of its log. SNAPCREATE and SNAPDELETE are run by shard 0's leader
(``dfs.meta.snapshots.SnapshotCoordinator``); reads of a snapshot are the
ordinary read ops with their ``snap`` field (``MetaStore.reader``).
"""

from __future__ import annotations

import msgpack

from dfs.common import errors as err
from dfs.common import messages as m
from dfs.common.records import Caller
from dfs.meta import schema as S
from dfs.meta.ops.base import apply, lead, read
from dfs.meta.schema import OpState


def fence_of(ctx) -> tuple[int, int] | None:
    """(snapshot, until ns) of the fence up on this shard, or None."""
    v = ctx.ov.get(S.K_SNAP_FENCE)
    return None if v is None else tuple(msgpack.unpackb(v))


def check_fence(ctx) -> None:
    """For a PREPARE: Locked while a fence is up (PREPARE answers it as Conflict)."""
    f = fence_of(ctx)
    if f is not None and f[1] > ctx.ts:
        raise err.Locked(f"shard {ctx.store.shard} is cutting snapshot {f[0]}")


def _save_epochs(ctx) -> None:
    ctx.ov.put(S.K_EPOCHS, ctx.store.epochs.pack())


def _lift(ctx, snap: int) -> None:
    f = fence_of(ctx)
    if f is not None and f[0] == snap:
        ctx.ov.delete(S.K_SNAP_FENCE)


@apply(m.SnapFence)
def snap_fence(ctx, req: m.SnapFence) -> m.Done:
    if req.snap <= 0 or req.until < 0:
        raise err.InvalidArgument("bad snapshot fence")
    if req.snap in ctx.store.epochs.live:
        return m.Done()  # already begun here (a repeat after SNAPBEGIN)
    ctx.ov.put(S.K_SNAP_FENCE, msgpack.packb([req.snap, req.until]))
    return m.Done()


@apply(m.SnapBegin)
def snap_begin(ctx, req: m.SnapBegin) -> m.Done:
    e = ctx.store.epochs
    if req.snap <= 0:
        raise err.InvalidArgument("bad snapshot number")
    if req.snap not in e.live and req.snap < e.epoch - 1:
        raise err.Stale(f"snapshot {req.snap} is older than this shard's epoch {e.epoch}")
    _lift(ctx, req.snap)
    if e.begin(req.snap):
        _save_epochs(ctx)
    return m.Done()


@apply(m.SnapEnd)
def snap_end(ctx, req: m.SnapEnd) -> m.Done:
    e = ctx.store.epochs
    _lift(ctx, req.snap)
    if e.end(req.snap):
        _save_epochs(ctx)
    return m.Done()


@apply(m.SnapPrune)
def snap_prune(ctx, req: m.SnapPrune) -> m.Pruned:
    removed, cursor = ctx.ov.prune(req.cursor, max(1, min(int(req.limit), 10_000)))
    _save_epochs(ctx)  # a finished pass may clear "unpruned"
    return m.Pruned(removed, cursor)


@read(m.SnapStatus)
def snap_status(ctx, req: m.SnapStatus) -> m.SnapState:
    e = ctx.store.epochs
    f = fence_of(ctx)
    prepared = sum(1 for _, rec in ctx.store.pending_ops() if rec.state is OpState.PREPARED)
    return m.SnapState(e.epoch, list(e.live), f[0] if f else 0, prepared, e.unpruned)


@lead(m.SnapCreate)
async def snap_create(svc, rid: bytes, caller: Caller, req: m.SnapCreate) -> m.SnapNumber:
    return m.SnapNumber(await svc.snapshots.create(rid, caller, req))


@lead(m.SnapDelete)
async def snap_delete(svc, rid: bytes, caller: Caller, req: m.SnapDelete) -> m.Done:
    await svc.snapshots.delete(rid, caller, req)
    return m.Done()
