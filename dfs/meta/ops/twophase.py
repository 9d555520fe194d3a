"""ONEPHASE, PREPARE, COMMIT, ABORT, FORGET (logged) and OPSTATUS, REQSTATUS (reads):
the shard side of cross-shard operations. Internal: shard servers only.

ONEPHASE validates and commits a shard's actions (``dfs.meta.ops.actions``)
in one command, when every action of the operation is on this shard. Else
PREPARE validates them, takes their locks and writes the operation's record
(``P``, ``schema.OpRecord``; on the coordinator it is the intent, listing the
participants); COMMIT applies them and releases the locks (on the
coordinator it is the decision, kept with the client's reply and the
idempotency record of the client's request until FORGET); ABORT undoes a
prepared, undecided operation. Every step is idempotent: recovery repeats
them. See docs/design/metadata.md "Operations that span shards".

May import dfs.common, dfs.meta.schema and dfs.meta.ops.base, .actions only.
"""

from __future__ import annotations

from dfs.common import errors as err
from dfs.common import messages as m
from dfs.meta import schema as S
from dfs.meta.ops import actions as A
from dfs.meta.ops.base import apply, read
from dfs.meta.ops.snapshots import check_fence
from dfs.meta.schema import OpRecord, OpState


@apply(m.OnePhase)
def onephase(ctx, req: m.OnePhase) -> m.ActionResult:
    acts = A.decode(req.actions)
    state = A.PlanState(req.op_id, onephase=True)
    A.validate_all(ctx, acts, state)
    return m.ActionResult(state.new_ino, A.commit_all(ctx, acts, state))


@apply(m.Prepare)
def prepare(ctx, req: m.Prepare) -> m.Prepared:
    prev = ctx.op_record(req.op_id)
    if prev is not None:
        return m.Prepared(*prev.res)
    try:
        check_fence(ctx)  # a snapshot's cut: no 2PC may straddle it (docs/design/snapshots.md)
        acts = A.decode(req.actions)
        state = A.PlanState(req.op_id)
        locks = A.validate_all(ctx, acts, state)
        for k, mode in locks:
            ctx.take_lock(k, mode, req.op_id)
    except err.Locked as e:  # answered, not waited on: the coordinator holds locks elsewhere
        raise err.Conflict(e.detail) from None
    res = [state.new_ino]
    rec = OpRecord(req.coord, req.actions, ctx.ts, OpState.PREPARED, res, state.to_record(), locks, req.rid,
                   req.parts if req.coord == ctx.shard else None)
    ctx.put_op_record(req.op_id, rec)
    return m.Prepared(*res)


@apply(m.Commit)
def commit(ctx, req: m.Commit) -> m.Committed:
    op_id = req.op_id
    rec = ctx.op_record(op_id)
    if rec is None or rec.state is OpState.COMMITTED:
        return m.Committed(None)  # committed (and maybe forgotten) before: a repeat
    state = A.PlanState.from_record(rec.st, op_id)
    res = A.commit_all(ctx, A.decode(rec.actions), state)
    if rec.is_coordinator:
        # The coordinator keeps the rename lock until FORGET, i.e. until every
        # participant has committed; its other locks go now. It remembers the
        # decision until FORGET, and the client's request id (the operation id:
        # the coordinator's own PREPARE carries no request id of its command)
        # answers a retry with the decided reply, also after FORGET.
        keep = [x for x in rec.locks if x[0] == S.LOCK_RENAME]
        ctx.release_all(op_id, [x for x in rec.locks if x[0] != S.LOCK_RENAME])
        rec.state = OpState.COMMITTED
        rec.locks = keep
        wire = m.to_wire(req.reply)
        rec.reply, rec.has_reply = wire, True
        ctx.put_op_record(op_id, rec)
        ctx.remember(rec.rid or op_id, S.pack_result(0, wire))
    else:
        # Participants commit with shard 0 last, so shard 0 releasing the
        # rename lock here means every other participant has committed.
        ctx.release_all(op_id, rec.locks)
        ctx.delete_op_record(op_id)
    return m.Committed(res)


@apply(m.Abort)
def abort(ctx, req: m.Abort) -> m.AbortOutcome:
    rec = ctx.op_record(req.op_id)
    if rec is None:
        return m.AbortOutcome(OpState.ABORTED)
    if rec.state is OpState.COMMITTED:
        return m.AbortOutcome(OpState.COMMITTED)  # decided: too late to abort
    ctx.release_all(req.op_id, rec.locks)
    ctx.delete_op_record(req.op_id)
    return m.AbortOutcome(OpState.ABORTED)


@apply(m.Forget)
def forget(ctx, req: m.Forget) -> m.Done:
    rec = ctx.op_record(req.op_id)
    if rec is not None:
        ctx.release_all(req.op_id, rec.locks)
        ctx.delete_op_record(req.op_id)
    return m.Done()


@read(m.OpStatus)
def op_status(ctx, req: m.OpStatus) -> m.OpStatusReply:
    rec = ctx.op_record(req.op_id)
    return m.OpStatusReply(OpState.NONE if rec is None else rec.state)


@read(m.ReqStatus)
def req_status(ctx, req: m.ReqStatus) -> m.ReqStatusReply:
    res = ctx.recorded(req.request_id)
    return m.ReqStatusReply(None if res is None else m.from_wire(m.Outcome, S.unpack(res)))
