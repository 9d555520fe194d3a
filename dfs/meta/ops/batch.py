"""BATCH: logged ops of one shard applied in order, in one command (a lazy client's flush).

A lazy client (docs/design/writeback.md) sends what it changed as ordered
batches: a create, the size and bytes its close published, its chown and
utimes, one after another. ExecuteBatch hands each op to the log on its
own, and a retryable answer (a lock another client's cross-shard operation
holds) is retried after the items behind it already ran, so a batch there
is not ordered. BATCH is: its items run in order inside this one command,
each exactly as if it were a command of its own (its own request id and
idempotency record, its own caller, its own savepoint), and

* an item whose ``after`` items (the earlier ones it depends on) failed, or
  were not run, is not run: a setattr never reaches another client's file
  that took the name a failed create wanted;
* a retryable error stops the batch: that item and the rest are not run
  (answered None), and the client sends them again, in order.

Only logged, non-internal ops without a leader check (not SETLAYOUT) other than
BATCH may be items. The BATCH itself
carries no request id: a resend is answered item by item from their records.

May import dfs.common, dfs.meta.schema and dfs.meta.ops.base only.
"""

from __future__ import annotations

import errno as E
import logging

from dfs.common import errors as err
from dfs.common import messages as m
from dfs.common.messages import Kind, to_wire
from dfs.common.ops import Op
from dfs.common.records import Caller
from dfs.meta import schema as S
from dfs.meta.ops.base import HANDLERS, apply

log = logging.getLogger(__name__)

_BAD_ARGS = (TypeError, ValueError, KeyError, IndexError, OverflowError)


def _handler(op: int):
    h = HANDLERS.get(op)  # type: ignore[call-overload]
    # an op with a leader check before logging (SETLAYOUT) goes on its own: the check is
    # the leader's, outside the command
    if h is None or h.kind is not Kind.LOGGED or h.internal or h.op == Op.BATCH or h.admit is not None:
        raise err.InvalidArgument(f"op {op} cannot be an item of a batch")
    return h


@apply(m.Batch)
def batch(ctx, req: m.Batch) -> m.BatchReply:
    ov = ctx.ov
    # The items' savepoints are the command's overlay's, under the versioned view MetaStore
    # gives commands (dfs.kv.versioned.Versioned, which writes through and keeps no state).
    sp = ov.base if hasattr(ov, "epochs") else ov
    out: list[m.Outcome | None] = []
    ok: list[bool] = []  # per item: applied (now or before)
    stopped = False
    for k, it in enumerate(req.items):
        if stopped or any(not (0 <= a < k) or not ok[a] for a in it.after):
            out.append(None)
            ok.append(False)
            continue
        if it.rid:
            prev = ctx.recorded(it.rid)
            if prev is not None:  # a resend: the recorded answer
                status, payload = S.unpack(prev)
                out.append(m.Outcome(status, payload))
                ok.append(status == 0)
                continue
        sp.savepoint()
        sub = type(ctx)(ctx.store, ov, ctx.ts, Caller(it.uid, it.gid, tuple(it.groups)), it.rid)
        try:
            h = _handler(it.op)
            res = m.Outcome(0, to_wire(h.fn(sub, h.decode(it.args))))
        except err.Retryable:
            sp.rollback()
            out.append(None)
            ok.append(False)
            stopped = True  # this item and the rest go again, in order
            continue
        except err.DfsError as e:
            res = m.Outcome(e.errno, e.detail or "")
        except _BAD_ARGS as e:
            res = m.Outcome(E.EINVAL, f"bad arguments: {e}")
        except Exception as e:  # a bug: deterministic on every replica, so still consistent
            log.exception("batch item op %s failed", it.op)
            res = m.Outcome(E.EIO, repr(e))
        if res.status:
            sp.rollback()
        else:
            sp.release()
        if it.rid:
            sub.remember(it.rid, S.pack_result(res.status, res.payload))
        out.append(res)
        ok.append(res.status == 0)
    return m.BatchReply(out)
